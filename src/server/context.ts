// What a client session may ask of the rest of pgmux: a few narrow services and shared
// tables, never the listener, the monitor or the pool registry itself.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { ClientAuth } from '../auth/authStore.js';
import type { NodeAddress } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import type { ClientSession } from '../session/clientSession.js';
import type { Classification } from '../routing/classifier.js';
import type { FunctionRef } from '../routing/functionLists.js';
import type { StatementNames } from '../session/preparedStatements.js';
import type { ConnectionLimits } from './limits.js';
import type { NotificationHub } from '../session/notifications.js';
import type { ClientConnections } from './clientRegistry.js';
import type { NodeDirectory } from './topologyView.js';

export interface ProxyContext {
  config(): Config;
  readonly logger: Logger;
  /** Coarse clock (ms) refreshed by the janitor: cheap enough for every event. */
  readonly clock: { now: number };
  /** Auth file, auth_query and what clients proved (src/auth/authStore.ts). */
  readonly auth: ClientAuth;
  /** Connections, max_client_conn and cancel keys (clientRegistry.ts). */
  readonly registry: ClientConnections;
  /** The cluster as routing sees it, and the waits for a node (topologyView.ts). */
  readonly nodes: NodeDirectory;
  /** The pool of backends for (node, database, user). */
  pool(node: NodeAddress, database: string, user: string): Pool;
  readonly shuttingDown: boolean;
  /** max_unauthenticated_connections, max_db_connections, max_user_connections bookkeeping. */
  readonly limits: ConnectionLimits;
  /** Proxy names of prepared statements, shared by all clients. */
  readonly statementNames: StatementNames;
  /** Shared LISTEN connections and notification fan-out (transaction mode). */
  readonly notifications: NotificationHub;

  // Statement analysis (src/routing/): decisions only, no sockets.
  classify(sql: string): Classification;
  /**
   * A read calling `calls` in `database`: why it must run on the primary (it calls a volatile
   * function), null if it need not, or a promise to wait for (the database's function
   * catalog is being loaded; it never rejects), then ask again.
   */
  volatileCall(database: string, user: string, calls: readonly FunctionRef[]): string | null | Promise<void>;
  /** A transaction sends DDL that may change `database`'s functions (once per transaction). */
  functionsChanging(database: string): void;
  /** A transaction that may have changed `database`'s functions ended. */
  functionsChanged(database: string): void;
  /** Counts a transaction routed to a node (for SHOW NODES and metrics). */
  countRouted(node: NodeAddress, kind: 'read' | 'write', waitedMs: number): void;
  readonly stats: { bytesIn: number; bytesOut: number; clientLogins: number; clientLoginFailures: number; readRetries: number };

  // Admin console and operations.
  isPaused(database: string): boolean;
  /** Parks a client whose transaction waits for RESUME; the server calls resumeFromPause(). */
  park(client: ClientSession): void;
  unpark(client: ClientSession): void;
  adminRole(user: string): 'admin' | 'stats' | null;
  adminQuery(sql: string, role: 'admin' | 'stats'): Promise<Buffer>;
}
