// What a client session may ask of the rest of pgmux: a few narrow services and shared
// tables, never the listener, the monitor or the pool registry itself.

import type { CacheVerdict } from '../routing/cacheability.js';
import type { RelationGraph } from '../routing/relationCatalog.js';
import type { QueryCache } from '../cache/queryCache.js';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { ErrorSpec } from '../protocol/errors.js';
import type { ClientAuth } from '../auth/authStore.js';
import type { NodeAddress } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import type { ClientSession } from './clientSession.js';
import type { Classification } from '../routing/classifier.js';
import type { FunctionRef } from '../routing/functionLists.js';
import type { StatementNames } from './preparedStatements.js';
import type { ConnectionLimits } from '../server/limits.js';
import type { NotificationHub } from './notifications.js';
import type { ClientConnections } from '../server/clientRegistry.js';
import type { NodeDirectory } from '../server/topologyView.js';
import type { DatabaseTarget } from '../config/databases.js';
import type { TrafficStats } from '../observability/trafficStats.js';

/** PAUSE / RESUME and the admin console, as a client session meets them. */
export interface AdminService {
  isPaused(database: string): boolean;
  /** Parks a client whose transaction waits for RESUME; RESUME calls its resumeFromPause(). */
  park(client: ClientSession): void;
  unpark(client: ClientSession): void;
  /** Why a login to `database` is refused now (DISABLE, SHUTDOWN WAIT_FOR_CLIENTS), else null. */
  loginRefusal(database: string): ErrorSpec | null;
  /** The console role of `user` (admin_users, stats_users), null for neither. */
  roleOf(user: string): 'admin' | 'stats' | null;
  /** Runs one console command; its reply without the ReadyForQuery. */
  run(sql: string, role: 'admin' | 'stats'): Promise<Buffer>;
  /** Pgpool-II's `SHOW pool_<name>` on an application database: the result set, or null when pgmux has no answer. */
  pgpoolShow(name: string): Buffer | null;
}

export interface SessionContext {
  config(): Config;
  /** The process logger; each session logs through its own child of it (ClientSession.log). */
  readonly logger: Logger;
  /** Coarse clock (ms) refreshed by the janitor: cheap enough for every event. */
  readonly clock: { now: number };
  /** Auth file, auth_query and what clients proved (src/auth/authStore.ts). */
  readonly auth: ClientAuth;
  /** Connections, max_client_conn and cancel keys (clientRegistry.ts). */
  readonly registry: ClientConnections;
  /** The cluster as routing sees it, and the waits for a node (topologyView.ts). */
  readonly nodes: NodeDirectory;
  /** The pool of backends for (node, databases entry, backend user) a client's target names. */
  pool(node: NodeAddress, target: DatabaseTarget): Pool;
  readonly shuttingDown: boolean;
  /** max_unauthenticated_connections, max_db_connections, max_user_connections bookkeeping. */
  readonly limits: ConnectionLimits;
  /** Shared names of prepared statements on backends, one per (text, types). */
  readonly statementNames: StatementNames;
  /** Shared LISTEN connections and notification fan-out (transaction mode). */
  readonly notifications: NotificationHub;

  // Statement analysis (src/routing/): decisions only, no sockets.
  classify(sql: string): Classification;
  /** Whether the result of `sql` may be cached (query_cache), cached by text. */
  cacheVerdict(sql: string): CacheVerdict;
  /** query_cache_mode notify / triggers: false while the database's invalidation listener is not listening. */
  cacheCoherent(database: string): boolean;
  /** A write through this client: drops the entries and tells the other instances. */
  invalidateCache(database: string, tables: readonly string[] | '*'): void;
  /** query_cache for `target`'s clients under the configuration as it is now (RELOAD included). */
  queryCacheOn(target: DatabaseTarget): boolean;
  /** The query result cache (used only when query_cache is on). */
  readonly queryCache: QueryCache;
  /**
   * query_cache: the target database's relation graph for a cacheable read: null when none is
   * current (do not cache), or a promise (never rejecting) to wait for, then ask again.
   */
  cacheRelations(target: DatabaseTarget): RelationGraph | null | Promise<void>;
  /**
   * A read calling `calls` in the target's database: why it must run on the primary (it calls a volatile
   * function), null if it need not, or a promise to wait for (the database's function
   * catalog is being loaded; it never rejects), then ask again.
   */
  volatileCall(target: DatabaseTarget, calls: readonly FunctionRef[]): string | null | Promise<void>;
  /** A transaction sends DDL that may change `database`'s functions (once per transaction). */
  functionsChanging(database: string): void;
  /** A transaction that may have changed `database`'s functions ended. */
  functionsChanged(database: string): void;
  /** Counts a transaction routed to a node (for SHOW NODES and metrics). */
  countRouted(node: NodeAddress, kind: 'read' | 'write', waitedMs: number): void;
  /** Per (database, user) traffic totals: a session takes its pair's record once, at login. */
  readonly traffic: TrafficStats;
  readonly stats: { bytesIn: number; bytesOut: number; clientLogins: number; clientLoginFailures: number; proxyHeaderRefusals: number; readRetries: number; pipelined: number };
  /** PAUSE / RESUME and the admin console. */
  readonly admin: AdminService;
}
