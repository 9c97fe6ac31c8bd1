// What a client session may ask of the rest of the proxy. Sessions get this one object and
// never reach into the listener, the monitor or the pool registry directly.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { AuthEntry } from '../auth/authFile.js';
import type { BackendConnection, NodeAddress } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import type { ClientSession } from '../session/clientSession.js';
import type { Classification, FunctionRef } from '../routing/classifier.js';
import type { StatementNames } from '../session/preparedStatements.js';
import type { ConnectionLimits } from './limits.js';
import type { NotificationHub } from '../session/notifications.js';
import type { NodeSnapshot, TopologySnapshot } from '../cluster/topology.js';
import type { ReadBalancer } from '../routing/balancer.js';

export interface ProxyContext {
  config(): Config;
  readonly logger: Logger;
  /** Coarse clock (ms) refreshed by the janitor: cheap enough for every event. */
  readonly clock: { now: number };
  authEntry(user: string): AuthEntry | undefined;
  /** Remembers a cleartext password a client proved, for logging in to backends as that user. */
  learnPassword(user: string, password: string): void;
  /** Remembers the SCRAM keys a client proved against a stored verifier (pass-through login). */
  learnScramKeys(user: string, clientKey: Buffer, serverKey: Buffer): void;
  /**
   * auth_query: the stored secret of a user not in the auth file, looked up on the primary
   * (cached). undefined = no such user; rejects when the lookup cannot be done.
   */
  lookupAuthEntry(user: string): Promise<AuthEntry | undefined>;
  /**
   * A node to log in through (ParameterStatus values, startup settings, auth_query): the
   * primary when there is one now, else an up replica whatever its lag; else waits up to
   * `timeoutMs` for either. Logins need no primary: reads go on during a failover.
   */
  loginNode(timeoutMs: number): Promise<NodeAddress | null>;
  /** The node that takes writes now, waiting up to `timeoutMs` for one during a failover. */
  primary(timeoutMs: number): Promise<NodeAddress | null>;
  pool(node: NodeAddress, database: string, user: string): Pool;
  /** Every connection from accept to close (timeouts apply before login too). */
  track(client: ClientSession): void;
  untrack(client: ClientSession): void;
  /** A logged-in client (counts against max_client_conn, owns a cancel key). */
  register(client: ClientSession): boolean;
  unregister(client: ClientSession): void;
  /** A client's CancelRequest (proxy-issued key): reaches the backend it uses now, if any. */
  cancel(pid: number, secret: number): void;
  /** Cancels whatever runs on this backend (its real key). */
  cancelBackend(backend: BackendConnection): void;
  readonly shuttingDown: boolean;
  /** max_unauthenticated_connections, max_db_connections, max_user_connections bookkeeping. */
  readonly limits: ConnectionLimits;
  /** Proxy names of prepared statements, shared by all clients. */
  readonly statementNames: StatementNames;
  /** Shared LISTEN connections and notification fan-out (transaction mode). */
  readonly notifications: NotificationHub;

  // Routing (src/routing/): decisions only, no sockets.
  classify(sql: string): Classification;
  /**
   * A read calling `calls` in `database`: why it must run on the primary (it calls a volatile
   * function), null if it need not, or a promise to wait for (the database's function
   * catalog is being loaded; it never rejects), then ask again.
   */
  volatileCall(database: string, user: string, calls: readonly FunctionRef[]): string | null | Promise<void>;
  /** A transaction that may have changed `database`'s functions ended. */
  functionsChanged(database: string): void;
  // What the routing policy (src/routing/policy.ts) decides from.
  topology(): TopologySnapshot;
  /** Nodes disabled on the admin console: no new reads. */
  readonly disabledNodes: ReadonlySet<string>;
  /** The read balancer's round-robin position, shared by every client. */
  readonly readBalancer: ReadBalancer;
  /** One address object per node: sessions compare nodes by identity. */
  nodeAddress(n: NodeSnapshot): NodeAddress;
  /** After a failed connect to the primary: the next primary (failover), or null at the deadline. */
  primaryAfterFailure(failed: NodeAddress, timeoutMs: number): Promise<NodeAddress | null>;
  /** Counts a transaction routed to a node (for SHOW NODES and metrics). */
  countRouted(node: NodeAddress, kind: 'read' | 'write', waitedMs: number): void;
  readonly stats: { bytesIn: number; bytesOut: number; clientLogins: number; clientLoginFailures: number; readRetries: number };

  // Admin console and operations.
  isPaused(database: string): boolean;
  /** Parks a client whose transaction waits for RESUME; the proxy calls resumeFromPause(). */
  park(client: ClientSession): void;
  unpark(client: ClientSession): void;
  adminRole(user: string): 'admin' | 'stats' | null;
  adminQuery(sql: string, role: 'admin' | 'stats'): Promise<Buffer>;
}
