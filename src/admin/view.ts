// What the admin console, the HTTP endpoints and the metrics may see and do. They get this
// one read-mostly view of the running server and never touch sockets, pools or the monitor
// directly.

import type { Config } from '../config/types.js';
import type { TopologySnapshot } from '../cluster/snapshot.js';
import type { PoolStats } from '../pool/pool.js';
import type { TrafficStats } from '../observability/trafficStats.js';
import type { QueryCache } from '../cache/queryCache.js';

export interface ClientView {
  id: number;
  user: string;
  database: string;
  applicationName: string;
  state: string;
  remote: string;
  connectedAt: number;
  lastActiveAt: number;
  transactions: number;
  /** Backend currently linked (node name and backend pid), if any. */
  backendNode: string | null;
  backendPid: number | null;
  /** Named prepared statements the client has. */
  preparedStatements: number;
  /** Why the client keeps its backend between transactions (session state), or null. */
  pinned: string | null;
  /** The user its backends log in as: the databases entry's forced user, else its own. */
  poolUser: string;
}

export interface BackendView {
  id: number;
  node: string;
  database: string;
  user: string;
  state: string;
  pid: number;
  createdAt: number;
  lastReleasedAt: number;
  preparedStatements: number;
  /** Times reset for the next client (server_reset_query). */
  resets: number;
  /** Client id when linked. */
  clientId: number | null;
  /** Closed when released (RECONNECT, RELOAD, DISABLE): PgBouncer's close_needed. */
  closeNeeded: boolean;
  /** pgmux's end of the backend socket. */
  localAddr: string | null;
  localPort: number | null;
}

export interface PoolView {
  node: string;
  database: string;
  user: string;
  stats: PoolStats;
  totalConnects: number;
}

/**
 * Totals since start for one (database entry, user) pair: what PgBouncer's SHOW STATS family
 * and the labelled metrics report. `database` is the name clients connect to (the entry of
 * the databases section), not the database on the nodes. Times in microseconds.
 */
export interface TrafficTotals {
  database: string;
  user: string;
  /** Times a backend was linked to a client (PgBouncer's server_assignment_count). */
  serverAssignments: number;
  /** Transactions ended (COMMIT/ROLLBACK, or a statement outside a transaction). */
  xacts: number;
  /** Requests answered with ReadyForQuery (a simple Query, or a batch up to Sync). */
  queries: number;
  /** Bytes received from clients / sent to clients. */
  bytesReceived: number;
  bytesSent: number;
  /** Time spent in transactions / in queries, linked to a backend. */
  xactTimeUs: number;
  queryTimeUs: number;
  /** Time clients waited for a backend. */
  waitTimeUs: number;
  /** Parse messages from clients / Parse messages sent to backends / Bind messages. */
  clientParses: number;
  serverParses: number;
  binds: number;
  /** Errors sent to clients, by SQLSTATE class (two characters), e.g. '42' -> 3. */
  errorsByClass: Map<string, number>;
}

/**
 * One entry of the databases section as the console shows it (PgBouncer's SHOW DATABASES).
 * Without a databases section there is one implicit '*' entry.
 */
export interface DatabaseView {
  /** The name clients connect to; '*' = the fallback entry. */
  name: string;
  /** The database on the nodes (null for '*': the name the client asked for). */
  dbname: string | null;
  /** Backend user forced by the entry, or null (the client's user). */
  forceUser: string | null;
  poolSize: number;
  minPoolSize: number;
  poolMode: string;
  /** 'any' (read/write splitting), 'replica' (reads only, never the primary), 'primary'. */
  route: string;
  /** Backends per node for this entry, all users; 0 = unlimited. */
  maxDbConnections: number;
  /** Backends open now for this entry (all nodes, all users). */
  currentConnections: number;
  /** Client connections now for this entry. */
  clientConnections: number;
  /**
   * Connections the current primary has to this entry's database, whoever made them (every
   * pgmux instance, other applications), at its last health check; null when unknown ('*').
   */
  primaryConnectionsSeen: number | null;
  paused: boolean;
  disabled: boolean;
}

/** Plain counters, bumped on the hot path, read by /metrics and SHOW STATS. */
export interface ServerCounters {
  bytesIn: number;
  bytesOut: number;
  clientLogins: number;
  clientLoginFailures: number;
  /** Connections closed for a PROXY protocol header: missing, malformed, or from an untrusted sender. */
  proxyHeaderRefusals: number;
  /** Transactions by node name and route ('read' | 'write'). */
  transactions: Map<string, { read: number; write: number }>;
  /** Time clients waited for a backend: sum and count, plus histogram buckets (ms). */
  waitMsSum: number;
  waitCount: number;
  waitBucketsMs: readonly number[];
  waitBucketCounts: number[];
  failovers: number;
  readRetries: number;
  /** Requests written to a busy backend behind another client's (pipeline_depth). */
  pipelined: number;
  /** Backends reset with server_reset_query before reuse (pinned clients left, session mode). */
  backendResets: number;
  /** Failed backend connects (each attempt), whatever the reason. */
  backendConnectFailures: number;
  /** Backend connect attempts (each attempt, whatever the outcome). */
  backendConnects: number;
}

export interface ServerView {
  readonly version: string;
  readonly startedAt: number;
  config(): Config;
  /** Increases on every successful reload. */
  configVersion(): number;
  clients(): ClientView[];
  backends(): BackendView[];
  pools(): PoolView[];
  topology(): TopologySnapshot;
  counters(): ServerCounters;
  classifierStats(): { hits: number; misses: number; entries: number };
  /** Per (database entry, user) traffic totals since start. */
  trafficTotals(): TrafficTotals[];
  /** The records behind trafficTotals() (histogram buckets, the pair bound) for /metrics. */
  trafficStats(): TrafficStats;
  /** The databases section's entries (or the implicit '*'). */
  databases(): DatabaseView[];
  isPaused(database?: string): boolean;
  isReady(): boolean;
  /** Peering: live instances (this one included) and the cancels passed to / dropped for peers. */
  peerCounts(): { live: number; cancelsForwarded: number; cancelsDropped: number };
  /** Client connections per node and database from each node's last health check, whoever made them. */
  nodeConnectionsSeen(): Array<{ node: string; database: string; connections: number }>;
  readonly shuttingDown: boolean;
  /** The query result cache (query_cache): SHOW CACHE, CACHE CLEAR, the pgmux_query_cache_* metrics. */
  readonly queryCache: QueryCache;
  /** CACHE CLEAR [table]: every database's entries, or those a write to `table` would drop (views over it, ...). */
  clearCache(table?: string): number;

  // Actions (admin users only).
  /** Resolves once no transaction of the paused database(s) holds a backend. */
  pause(database: string | null): Promise<void>;
  resume(database: string | null): void;
  /** Re-reads the configuration; a refused one leaves the running one in place. */
  reload(): Promise<{ ok: boolean; message: string }>;
  /** Closes every backend (of one database) as soon as it is released (new ones use new settings). */
  reconnect(database?: string | null): void;
  /** WAIT_CLOSE: resolves once no backend (of the database) is waiting to be closed. */
  waitClose(database: string | null): Promise<void>;
  /**
   * KILL: closes the clients and backends of a database now (every database when null, the
   * console aside); its new transactions wait for RESUME.
   */
  kill(database: string | null): void;
  /** KILL_CLIENT: closes one client (and its backend); false when no client has that id. */
  killClient(id: number): boolean;
  /** SUSPEND: no transaction starts until RESUME. */
  suspend(): void;
  isSuspended(): boolean;
  /** SET key = value: one reloadable setting, parsed as in the file, applied as RELOAD applies. */
  set(key: string, value: string): Promise<{ ok: boolean; message: string; refused?: 'unknown' | 'restart' | 'invalid' }>;
  /** DISABLE db / ENABLE db: new clients of the database are refused. */
  disableDatabase(name: string): void;
  enableDatabase(name: string): boolean;
  isDatabaseDisabled(name: string): boolean;
  /** Drains a node: no new transactions, busy backends closed when released. */
  disableNode(name: string): boolean;
  isDisabled(name: string): boolean;
  enableNode(name: string): boolean;
  /**
   * SHUTDOWN: running transactions may finish, idle clients are closed now. wait_for_clients:
   * new clients are refused and the process ends once the last client left.
   */
  shutdown(mode?: 'wait_for_servers' | 'wait_for_clients'): void;
}
