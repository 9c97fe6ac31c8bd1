// The validated, fully-defaulted configuration every module reads.
// Keys are camelCase here; in YAML and docs they are snake_case (PgBouncer's names where
// the meaning is the same). src/config/load.ts owns the mapping and the validation.

export type PoolMode = 'transaction' | 'session';
export type AuthMethod = 'trust' | 'password' | 'md5' | 'scram-sha-256';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface NodeConfig {
  host: string;
  port: number;
  /** Read weight for the balancer; 0 = never gets reads. Roles are discovered, not configured. */
  weight: number;
}

export interface HostPort {
  host: string;
  port: number;
}

export interface Config {
  listen: HostPort;
  /** HTTP listener for /metrics and health; null = off. */
  http: HostPort | null;
  nodes: NodeConfig[];

  poolMode: PoolMode;
  /** Backends per (node, database, user) pool. */
  poolSize: number;
  /** Idle backends kept open per pool once it has been used. */
  minPoolSize: number;
  maxClientConn: number;

  /** How clients authenticate to pgmux. */
  auth: AuthMethod;
  /** PgBouncer userlist.txt format: "user" "password-or-md5-or-SCRAM-verifier". */
  authFile: string | null;
  /**
   * Credentials pgmux uses towards the backends when the auth file holds only a verifier
   * (or there is no auth file): user -> plain password. Falls back to the client's
   * cleartext/plain auth-file password.
   */
  serverPassword: string | null;

  // Timeouts, all in milliseconds; 0 disables.
  queryWaitTimeoutMs: number;
  serverIdleTimeoutMs: number;
  serverLifetimeMs: number;
  clientIdleTimeoutMs: number;
  idleTransactionTimeoutMs: number;
  serverConnectTimeoutMs: number;
  /** Startup + authentication must finish within this. */
  clientLoginTimeoutMs: number;

  /** Largest message a client may send (bytes); larger gets 08P01 and a close. */
  maxMessageBytes: number;

  /** Session mode: query run on a backend before another client gets it. */
  serverResetQuery: string;

  logLevel: LogLevel;

  // Topology monitor (src/cluster/monitor.ts): one control connection per node.
  healthCheckPeriodMs: number;
  /** Connect and query timeout of one health check. */
  healthCheckTimeoutMs: number;
  /** Consecutive failed checks before a node is marked down. */
  healthCheckMaxRetries: number;
  healthCheckUser: string;
  healthCheckPassword: string | null;
  healthCheckDatabase: string;
  /** How long a transaction waits for a primary to appear (failover gap). */
  failoverTimeoutMs: number;
}
