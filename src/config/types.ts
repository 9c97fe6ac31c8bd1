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
  /** Per-node overrides of the global lag limits (undefined = use the global one). */
  maxLagBytes?: number | null;
  maxLagMs?: number | null;
}

export type ReadYourWrites = 'off' | 'window' | 'lsn';
/** How the query cache hears of writes made elsewhere (src/cache/invalidationBus.ts). */
export type QueryCacheMode = 'local' | 'notify' | 'triggers';
/** TLS from clients: disable = answer SSLRequest 'N'; allow = TLS when asked; require = TLS only. */
export type ClientTlsMode = 'disable' | 'allow' | 'require';
/** TLS towards the nodes, libpq's sslmode names. */
export type ServerTlsMode = 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

/** Where a databases entry's statements run: read/write splitting, replicas only, or the primary only. */
export type DatabaseRoute = 'any' | 'replica' | 'primary';

/** One entry of the `databases:` section (PgBouncer's [databases]); null = the global value / the client's. */
export interface DatabaseEntry {
  /** The name clients connect to; '*' = every name no other entry has. */
  name: string;
  /** The database on the nodes (null: the entry's name; for '*' the name the client asked for). */
  dbname: string | null;
  /** Backend user for every client of the entry (null: the client's own). */
  user: string | null;
  /** Password of the entry's backend logins, used for this entry only. */
  password: string | null;
  poolSize: number | null;
  minPoolSize: number | null;
  poolMode: PoolMode | null;
  /** Backend connections per node for the entry (enforced in src/pool/); null = the global max_db_connections. */
  maxDbConnections: number | null;
  route: DatabaseRoute;
  /** query_cache for this entry (absent: the global setting). */
  queryCache?: boolean;
}

/** One entry of the `users:` section (PgBouncer's [users]), keyed by the client's user name. */
export interface UserEntry {
  name: string;
  poolMode: PoolMode | null;
  /** Backend connections per node for the user (enforced in src/pool/); null = the global max_user_connections. */
  maxUserConnections: number | null;
}

/** One `peers` entry: `ID=HOST:PORT`, or `dns:NAME[:PORT]` (a headless Service: ids unknown; port null = our listen port). */
export type PeerEntry = { id: number; host: string; port: number } | { dns: string; port: number | null };

export interface HostPort {
  host: string;
  port: number;
}

export interface Config {
  listen: HostPort;
  /** HTTP listener for /metrics and health; null = off. */
  http: HostPort | null;
  /** Directory of the Unix-domain socket `.s.PGSQL.<listen port>`; null = none. */
  unixSocketDir: string | null;
  /** Permission bits of the socket file (connecting needs write permission). */
  unixSocketMode: number;
  /** Group (name or gid) the socket file is given; null = the process's. */
  unixSocketGroup: string | null;
  nodes: NodeConfig[];

  poolMode: PoolMode;
  /** Backends per (node, database, user) pool. */
  poolSize: number;
  /** Idle backends kept open per pool once it has been used. */
  minPoolSize: number;
  /**
   * Experimental: requests each backend may carry at once when every backend of a pool is busy
   * (the running one plus those written behind it); 1 = off.
   */
  pipelineDepth: number;
  /** Query result cache (issue #17): off unless on here or for a database entry. */
  queryCache: boolean;
  /** Bytes of cached replies kept (LRU). */
  queryCacheBytes: number;
  /** Replies larger than this are not cached. */
  queryCacheMaxEntryBytes: number;
  /** Lifetime of a cached reply unless a hint says otherwise. */
  queryCacheTtlMs: number;
  maxClientConn: number;
  /** Backends per node for one database / one (backend) user, all pools together; 0 = unlimited (PgBouncer's meaning). */
  maxDbConnections: number;
  maxUserConnections: number;
  /** Worker processes sharing the listen port (start --workers); pool_size and max_client_conn are split across them. */
  workers: number;
  /** This instance's id among its peers (carried in cancel keys); null = peering off. */
  peerId: number | null;
  /** The other instances a CancelRequest for their key is forwarded to. */
  peers: readonly PeerEntry[];
  /** Divide the backend and client limits by the live peers (this instance included). */
  peerBudgets: boolean;

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
  /**
   * auth_query: users missing from the auth file are looked up on the primary, logged in as
   * this user (null = off).
   */
  authUser: string | null;
  /** Returns (user name, stored secret) for $1. */
  authQuery: string;
  /** Database the auth_query runs in. */
  authDbname: string;
  /** Password of auth_user (null: the auth file's entry for it, or none). */
  authUserPassword: string | null;

  // Timeouts, all in milliseconds; 0 disables.
  queryWaitTimeoutMs: number;
  serverIdleTimeoutMs: number;
  serverLifetimeMs: number;
  clientIdleTimeoutMs: number;
  idleTransactionTimeoutMs: number;
  serverConnectTimeoutMs: number;
  /** Cap of the delay between connect attempts of a pool whose connects keep failing (server_login_retry). */
  serverLoginRetryMs: number;
  /** Startup + authentication must finish within this. */
  clientLoginTimeoutMs: number;

  /** Largest message a client may send (bytes); larger gets 08P01 and a close. */
  maxMessageBytes: number;

  /**
   * Settings read back, besides those the client's statements named, whenever a
   * transaction's settings are read back (transaction mode). Every SET / RESET /
   * set_config() with a literal name is tracked without it.
   */
  trackExtraParameters: string[];
  /** Transaction mode: prepared statements kept per backend before the least recently used is closed; 0 = no cap. */
  maxPreparedStatements: number;
  /** Plaintext sockets read into one shared buffer and write it straight to the fd (src/net/leanSocket.ts); new connections. */
  leanIo: boolean;

  /** Session mode: query run on a backend before another client gets it. */
  serverResetQuery: string;

  logLevel: LogLevel;

  /** Users who may run every admin console command (virtual database "pgmux"). */
  adminUsers: string[];
  /** Users who may run the admin console's SHOW commands only. */
  statsUsers: string[];
  /** SIGTERM/SHUTDOWN: how long running transactions may take before their clients are cut off. */
  shutdownTimeoutMs: number;

  // Topology monitor (src/cluster/monitor.ts): one control connection per node.
  healthCheckPeriodMs: number;
  /** Connect and query timeout of one health check. */
  healthCheckTimeoutMs: number;
  /** Consecutive failed checks before a node is marked down. */
  healthCheckMaxRetries: number;
  /**
   * Login of the health checks; null = a login pgmux already has (auth_user, else the auth
   * file's first plain-text user, else postgres without a password): src/cluster/healthCheckLogin.ts.
   */
  healthCheckUser: string | null;
  /** Password of health_check_user (null: its auth-file entry, if any). */
  healthCheckPassword: string | null;
  healthCheckDatabase: string;
  /** How long a transaction waits for a primary to appear (failover gap). */
  failoverTimeoutMs: number;
  /** Shell command (/bin/sh -c) the monitor runs on role changes, env PGMUX_EVENT/NODE/OLD_ROLE/NEW_ROLE; null = none. */
  onRoleChange: string | null;

  // Read routing (src/routing/).
  /** Replicas whose replay lags the primary by more than this many bytes get no reads; null = no limit. */
  maxLagBytes: number | null;
  /** Replicas whose data is older than this get no reads; null = no limit. */
  maxLagMs: number | null;
  /** A lagging replica serves again once under (1 - this) x the limit. */
  lagHysteresis: number;
  /** With no primary for this long, replicas stop serving reads; 0 = no limit. */
  readWithoutPrimaryTimeoutMs: number;
  /** With no eligible replica, reads go to the primary (else: an error). */
  fallbackToPrimary: boolean;
  readYourWrites: ReadYourWrites;
  /** read_your_writes=window: reads go to the primary this long after a client's write. */
  readYourWritesWindowMs: number;
  /** Extra functions that write or keep session state: statements calling them go to the primary. */
  writeFunctions: string[];
  /** Functions that stay reads even when the database's catalog says VOLATILE. */
  readOnlyFunctions: string[];
  /** How often each database's list of volatile functions is reloaded; 0 = only after DDL. */
  functionCatalogRefreshMs: number;
  /** local: own writes only; notify: also other pgmux instances' (NOTIFY on the primary); triggers: also writers outside pgmux. */
  queryCacheMode: QueryCacheMode;
  /** Views (and tables) whose reads the query cache may keep, bounded by its TTL alone: a write to their base tables does not name them. */
  queryCacheTables: string[];
  /** Tables whose reads the query cache never keeps. */
  queryCacheExcludeTables: string[];

  // TLS and access (src/net/tls.ts, src/auth/hba.ts, src/server/limits.ts).
  clientTls: ClientTlsMode;
  clientTlsCertFile: string | null;
  clientTlsKeyFile: string | null;
  /** CA for client certificates: clients presenting one that does not verify are refused. */
  clientTlsCaFile: string | null;
  clientTlsMinVersion: TlsMinVersion;
  /** OpenSSL cipher string; null = Node's default. */
  clientTlsCiphers: string | null;
  serverTls: ServerTlsMode;
  /** CA bundle for server_tls verify-ca / verify-full; null = Node's built-in roots. */
  serverTlsCaFile: string | null;
  /** pg_hba.conf-format file deciding who may connect and how they authenticate; null = no check. */
  hbaFile: string | null;
  /** Load balancers allowed (and required) to send a PROXY protocol header; empty = PROXY protocol off. */
  proxyProtocolTrusted: readonly string[];
  /** Client connections per database / per user (authenticated, until they close); 0 = unlimited. */
  maxDbClientConnections: number;
  maxUserClientConnections: number;
  /** The databases section in file order; empty = no section: every name passes through as it is. */
  databases: DatabaseEntry[];
  /** Per-user overrides (users section). */
  users: UserEntry[];
  /** Connections that have not finished authentication; more are refused at accept. 0 = unlimited. */
  maxUnauthenticatedConnections: number;
}
