// The settings schema: one row per setting, the only place its facts are written down.
//
// A row gives the YAML key (the environment variable is PGMUX_ + its upper case), the Config
// field, the default, the parser, how check-config and SHOW CONFIG write the value, the
// command-line flag if there is one, the PgBouncer / Pgpool-II settings that mean the same or
// nearly, whether RELOAD applies it, and the section of docs/configuration.md that explains
// it. Parsing (file, env, flags), DEFAULTS, check-config / SHOW CONFIG, `pgmux --help` and the
// importer's key order are derived from it; test/unit/config-schema.test.ts fails when the docs
// drift from it.
//
// A plain typed table rather than a schema library (zod, valibot, typebox): every parser
// already exists with the exact error texts users and tests rely on, and a library would
// wrap each of them in a custom refinement without removing a line.

import type { AuthMethod, Config, LogLevel, PoolMode, QueryCacheMode, ReadYourWrites } from './types.js';
import { CLIENT_TLS_MODES, SERVER_TLS_MODES } from '../net/tls.js';
import { checkTrustedEntry } from '../net/proxyProtocol.js';
import {
  Invalid, MiB, type Raw, asString, formatDuration, formatHostPort, formatSize, parseBoolean, parseDuration, parseDurationAtLeast, parseEnum,
  parseFraction, parseFunctionList, parseHostPort, parseHttp, parseInteger, parseName, parseNameList, parseNodes, parseTableList, parseOptionalLimit,
  parseOptionalString, parsePath, parseSize, parseTlsVersion, parseUserList, parseSocketDir, parseFileMode,
  MAX_PEER_ID, parsePeers, showPeers,
} from './values.js';
import { parseDatabases, parseUsers, showDatabases, showUsers } from './databases.js';

export const POOL_MODES: readonly PoolMode[] = ['transaction', 'session'];
export const AUTH_METHODS: readonly AuthMethod[] = ['trust', 'password', 'md5', 'scram-sha-256'];
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
export const READ_YOUR_WRITES: readonly ReadYourWrites[] = ['off', 'window', 'lsn'];
export const QUERY_CACHE_MODES: readonly QueryCacheMode[] = ['local', 'notify', 'triggers'];

/** The "### " sections of docs/configuration.md, in their order. */
export type DocSection =
  | 'Listening' | 'Nodes' | 'Pooling' | 'Authentication' | 'Timeouts' | 'Health checks and failover'
  | 'Read routing' | 'Query cache' | 'Databases and users' | 'Admin console and shutdown' | 'TLS and access' | 'Logging';

/** A flag of `start` and `check-config`; its --help line is built from it and the row. */
export interface FlagSpec {
  /** Commander's flags string; the CliFlags property is the camelCase of the long name. */
  name: string;
  /** What it is; "(env: ...; default: ...)" is appended. */
  help: string;
  /** Repeatable: each occurrence adds one value (joined with commas for the parser). */
  repeat?: true;
  /** Said after the env name in the help, e.g. ", comma-separated". */
  envNote?: string;
  /** The default as the help says it, when the shown value would not read well. */
  defaultText?: string;
}

export interface Setting<F extends keyof Config = keyof Config> {
  /** snake_case YAML key, also SHOW CONFIG's; the environment variable is envName(key). */
  key: string;
  field: F;
  /** Other spellings accepted everywhere the key is (PgBouncer's / Pgpool-II's same-meaning names). */
  aliases?: readonly string[];
  default: Config[F];
  /** One raw value (YAML scalar or object, or an env / flag string) -> the value; throws Invalid. `base` resolves relative paths. */
  parse(v: Raw, base: string): Config[F];
  /** The value as check-config and SHOW CONFIG write it, in a form parse reads back; default: as is. */
  show?(v: Config[F]): unknown;
  /** Masked ("********") in check-config and SHOW CONFIG. */
  secret?: true;
  /** Shows the value with its secret parts masked (a value that only holds secrets: `secret`). */
  showMasked?(v: Config[F]): unknown;
  /**
   * Takes effect only on restart: PgmuxServer.reload keeps the running listeners, and the supervisor
   * forks its workers once (a reloaded worker count still re-splits the limits).
   */
  restartOnly?: true;
  flag?: FlagSpec;
  /** PgBouncer / Pgpool-II settings with the same or the nearest meaning (unknown-key hints point from them here). */
  pgbouncer?: readonly string[];
  pgpool?: readonly string[];
  /** An unknown-key hint names the key this way (default: the key). */
  hintAs?: string;
  /** The section of docs/configuration.md whose table lists it. */
  doc: DocSection;
}

/** A row, type-checked against its field. */
function setting<F extends keyof Config>(s: Setting<F>): Setting<F> {
  return s;
}

type DurationField = { [K in keyof Config]: Config[K] extends number ? K : never }[keyof Config];

/** A duration in ms (shown in its largest exact unit); `more` overrides the parser or adds names. */
function duration<F extends DurationField>(key: string, field: F, def: number, doc: DocSection, more: Partial<Setting<F>> = {}): Setting<F> {
  return { key, field, default: def, parse: parseDuration, show: formatDuration, doc, ...more } as Setting<F>;
}

const list = (v: readonly string[]): string[] => [...v];

/** proxy_protocol_trusted: a list (or comma-separated string) of IP addresses and CIDRs. */
function parseProxyTrusted(v: Raw): string[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid('expected a list of IP addresses or CIDRs');
  return items
    .map((x) => {
      if (typeof x !== 'string') throw new Invalid('expected a list of IP addresses or CIDRs');
      const entry = x.trim();
      const checked = entry === '' ? entry : checkTrustedEntry(entry);
      if (typeof checked === 'string' && checked !== '') throw new Invalid(checked);
      return entry;
    })
    .filter((x) => x !== '');
}
const frozen = <T>(v: T[]): T[] => Object.freeze(v) as unknown as T[];

const ROWS = [
  // Listening
  setting({
    key: 'listen', field: 'listen', default: Object.freeze({ host: '0.0.0.0', port: 6432 }), doc: 'Listening', restartOnly: true,
    parse: (v) => parseHostPort(asString(v, 'HOST:PORT'), { allowZeroPort: true, defaultHost: '0.0.0.0' }),
    show: formatHostPort,
    flag: { name: '--listen <host:port>', help: 'address clients connect to; port 0 = any free port' },
    pgbouncer: ['listen_addr', 'listen_port'], pgpool: ['listen_addresses', 'port'], hintAs: 'listen ("host:port")',
  }),
  setting({
    key: 'http', field: 'http', default: null, doc: 'Listening', restartOnly: true,
    parse: parseHttp, show: (v) => (v === null ? null : formatHostPort(v)),
    flag: { name: '--http <host:port>', help: 'HTTP listener for /metrics and health checks; "off" disables', defaultText: 'off' },
  }),
  setting({
    key: 'unix_socket_dir', field: 'unixSocketDir', default: '/tmp', doc: 'Listening', restartOnly: true,
    parse: parseSocketDir, show: (v) => v ?? 'off', pgbouncer: ['unix_socket_dir'], pgpool: ['socket_dir', 'unix_socket_directories'],
  }),
  setting({
    key: 'unix_socket_mode', field: 'unixSocketMode', default: 0o777, doc: 'Listening', restartOnly: true,
    parse: parseFileMode, show: (v) => `0${v.toString(8)}`, pgbouncer: ['unix_socket_mode'], pgpool: ['unix_socket_permissions'],
  }),
  setting({
    key: 'unix_socket_group', field: 'unixSocketGroup', default: null, doc: 'Listening', restartOnly: true,
    parse: (v) => parseOptionalString(v, 'a group name or id'), pgbouncer: ['unix_socket_group'], pgpool: ['unix_socket_group'],
  }),
  // Nodes
  setting({
    key: 'nodes', field: 'nodes', default: frozen([]), doc: 'Nodes',
    parse: parseNodes, show: (v) => v.map((n) => `${formatHostPort(n)}@${n.weight}`),
    flag: {
      name: '--node <host:port[@weight]>', repeat: true, envNote: ', comma-separated', defaultText: 'none, at least one required',
      help: 'a PostgreSQL node (primary or replica, discovered); repeat for each node; replaces nodes from the file and env; ' +
        'port defaults to 5432, weight (share of reads) to 1',
    },
  }),
  // Pooling
  setting({
    key: 'pool_mode', field: 'poolMode', default: 'transaction', doc: 'Pooling',
    parse: (v) => parseEnum(v, POOL_MODES, { statement: 'statement pooling breaks multi-statement transactions and is not offered' }),
    flag: { name: '--pool-mode <mode>', help: POOL_MODES.join(' or ') },
    pgbouncer: ['pool_mode'],
  }),
  setting({
    key: 'pool_size', field: 'poolSize', aliases: ['default_pool_size'], default: 20, doc: 'Pooling',
    parse: (v) => parseInteger(v, 1, 10000),
    flag: { name: '--pool-size <n>', help: 'backends per (node, database, user) pool, 1..10000' },
    // Pgpool-II's max_pool caches connections per child: the nearest knob, not the same one.
    pgbouncer: ['default_pool_size'], pgpool: ['max_pool'],
  }),
  // Experimental (issue #14): cross-client pipelining onto busy backends; src/pool/pipeline.ts.
  setting({ key: 'pipeline_depth', field: 'pipelineDepth', default: 1, doc: 'Pooling', parse: (v) => parseInteger(v, 1, 64) }),
  // Backends per node for one database / one user, all their pools together: PgBouncer's meaning.
  setting({
    key: 'max_db_connections', field: 'maxDbConnections', default: 0, doc: 'Pooling',
    parse: (v) => parseInteger(v, 0, 1_000_000), pgbouncer: ['max_db_connections'],
  }),
  setting({
    key: 'max_user_connections', field: 'maxUserConnections', default: 0, doc: 'Pooling',
    parse: (v) => parseInteger(v, 0, 1_000_000), pgbouncer: ['max_user_connections'],
  }),
  setting({ key: 'min_pool_size', field: 'minPoolSize', default: 0, doc: 'Pooling', parse: (v) => parseInteger(v, 0, 10000), pgbouncer: ['min_pool_size'] }),
  setting({
    key: 'max_client_conn', field: 'maxClientConn', default: 10000, doc: 'Pooling', parse: (v) => parseInteger(v, 1, 1_000_000),
    pgbouncer: ['max_client_conn'], pgpool: ['num_init_children'],
  }),
  setting({
    // The supervisor forks its workers once, at start.
    key: 'workers', field: 'workers', default: 1, doc: 'Pooling', restartOnly: true, parse: (v) => parseInteger(v, 1, 64),
    flag: { name: '--workers <n>', help: 'worker processes sharing the listen port, 1..64; pool_size and max_client_conn are split across them' },
  }),
  setting({
    // Restart only: the id is baked into the cancel keys of the clients already connected.
    key: 'peer_id', field: 'peerId', default: null, doc: 'Pooling', restartOnly: true,
    parse: (v) => (v === null || v === '' ? null : parseInteger(v, 0, MAX_PEER_ID)),
  }),
  setting({ key: 'peers', field: 'peers', default: frozen([]), doc: 'Pooling', parse: parsePeers, show: showPeers }),
  setting({ key: 'peer_budgets', field: 'peerBudgets', default: false, doc: 'Pooling', parse: parseBoolean }),
  setting({
    key: 'server_reset_query', field: 'serverResetQuery', default: 'DISCARD ALL', doc: 'Pooling',
    parse: (v) => (v === null ? '' : asString(v, 'an SQL string')),
    pgbouncer: ['server_reset_query'], pgpool: ['reset_query_list'],
  }),
  setting({
    // Every SET / RESET / set_config() is tracked by name now; this only adds names to read back.
    key: 'track_extra_parameters', field: 'trackExtraParameters', default: frozen([]), doc: 'Pooling',
    parse: parseNameList, show: list, pgbouncer: ['track_extra_parameters'],
  }),
  setting({
    // 64 MiB: far above any sane single query or row, small enough that one misbehaving
    // client cannot make pgmux buffer a gigabyte. PostgreSQL itself stops at 1 GiB per field.
    key: 'max_message_size', field: 'maxMessageBytes', default: 64 * MiB, doc: 'Pooling',
    parse: parseSize, show: formatSize, pgbouncer: ['max_packet_size'],
  }),
  setting({
    key: 'max_prepared_statements', field: 'maxPreparedStatements', default: 200, doc: 'Pooling',
    parse: (v) => parseInteger(v, 0, 100000), pgbouncer: ['max_prepared_statements'],
  }),
  setting({ key: 'lean_io', field: 'leanIo', default: true, doc: 'Pooling', parse: parseBoolean, show: (v) => (v ? 'on' : 'off') }),
  // Authentication
  setting({
    key: 'auth', field: 'auth', aliases: ['auth_type'], default: 'trust', doc: 'Authentication',
    parse: (v) => parseEnum(v, AUTH_METHODS, {
      scram: 'write it as scram-sha-256',
      plain: 'use password',
      cert: 'TLS client certificates are not supported',
      hba: 'hba files are not supported',
      any: 'use trust',
    }),
    flag: { name: '--auth <method>', help: `how clients authenticate: ${AUTH_METHODS.join(', ')}; all but trust need --auth-file or auth_user` },
    pgbouncer: ['auth_type'],
  }),
  setting({
    key: 'auth_file', field: 'authFile', default: null, doc: 'Authentication', parse: parsePath,
    flag: { name: '--auth-file <file>', help: 'PgBouncer-style userlist.txt: "user" "password, md5 or SCRAM secret"' },
    pgbouncer: ['auth_file'], pgpool: ['pool_passwd'],
  }),
  setting({ key: 'server_password', field: 'serverPassword', default: null, doc: 'Authentication', secret: true, parse: (v) => parseOptionalString(v, 'a password') }),
  setting({ key: 'auth_user', field: 'authUser', default: null, doc: 'Authentication', parse: (v) => parseOptionalString(v, 'a user name'), pgbouncer: ['auth_user'] }),
  setting({
    key: 'auth_query', field: 'authQuery', default: 'SELECT usename, passwd FROM pg_shadow WHERE usename = $1', doc: 'Authentication',
    parse: (v) => parseName(v, 'an SQL query'), pgbouncer: ['auth_query'],
  }),
  setting({ key: 'auth_dbname', field: 'authDbname', default: 'postgres', doc: 'Authentication', parse: (v) => parseName(v, 'a database name'), pgbouncer: ['auth_dbname'] }),
  setting({ key: 'auth_user_password', field: 'authUserPassword', default: null, doc: 'Authentication', secret: true, parse: (v) => parseOptionalString(v, 'a password') }),
  // Timeouts
  duration('query_wait_timeout', 'queryWaitTimeoutMs', 120_000, 'Timeouts', { pgbouncer: ['query_wait_timeout'] }),
  duration('server_idle_timeout', 'serverIdleTimeoutMs', 600_000, 'Timeouts', { pgbouncer: ['server_idle_timeout'], pgpool: ['connection_life_time'] }),
  duration('server_lifetime', 'serverLifetimeMs', 3_600_000, 'Timeouts', { pgbouncer: ['server_lifetime'] }),
  duration('client_idle_timeout', 'clientIdleTimeoutMs', 0, 'Timeouts', { pgbouncer: ['client_idle_timeout'], pgpool: ['client_idle_limit'] }),
  duration('idle_transaction_timeout', 'idleTransactionTimeoutMs', 0, 'Timeouts', { pgbouncer: ['idle_transaction_timeout'] }),
  duration('server_connect_timeout', 'serverConnectTimeoutMs', 15_000, 'Timeouts', { pgbouncer: ['server_connect_timeout'], pgpool: ['connect_timeout'] }),
  duration('server_login_retry', 'serverLoginRetryMs', 15_000, 'Timeouts', { parse: (v) => parseDurationAtLeast(v, 100), pgbouncer: ['server_login_retry'] }),
  duration('client_login_timeout', 'clientLoginTimeoutMs', 60_000, 'Timeouts', { pgbouncer: ['client_login_timeout'], pgpool: ['authentication_timeout'] }),
  // Health checks and failover
  duration('health_check_period', 'healthCheckPeriodMs', 1000, 'Health checks and failover', { parse: (v) => parseDurationAtLeast(v, 100), pgpool: ['health_check_period'] }),
  duration('health_check_timeout', 'healthCheckTimeoutMs', 5000, 'Health checks and failover', { parse: (v) => parseDurationAtLeast(v, 100), pgpool: ['health_check_timeout'] }),
  setting({
    key: 'health_check_max_retries', field: 'healthCheckMaxRetries', default: 3, doc: 'Health checks and failover',
    parse: (v) => parseInteger(v, 1, 1000), pgpool: ['health_check_max_retries'],
  }),
  setting({
    key: 'health_check_user', field: 'healthCheckUser', default: null, doc: 'Health checks and failover',
    parse: (v) => (v === null ? null : parseName(v, 'a user name')), pgpool: ['health_check_user', 'sr_check_user'],
  }),
  setting({
    key: 'health_check_password', field: 'healthCheckPassword', default: null, doc: 'Health checks and failover', secret: true,
    parse: (v) => parseOptionalString(v, 'a password'), pgpool: ['health_check_password', 'sr_check_password'],
  }),
  setting({
    key: 'health_check_database', field: 'healthCheckDatabase', default: 'postgres', doc: 'Health checks and failover',
    parse: (v) => parseName(v, 'a database name'), pgpool: ['health_check_database', 'sr_check_database'],
  }),
  duration('failover_timeout', 'failoverTimeoutMs', 30_000, 'Health checks and failover'),
  setting({
    key: 'on_role_change', field: 'onRoleChange', default: null, doc: 'Health checks and failover',
    parse: (v) => parseOptionalString(v, 'a shell command'),
    // Only roughly: Pgpool-II's commands act (promote, re-point); pgmux's hook only reports.
    pgpool: ['failover_command', 'follow_primary_command'],
  }),
  // Read routing
  setting({
    key: 'max_lag_bytes', field: 'maxLagBytes', aliases: ['delay_threshold'], default: null, doc: 'Read routing',
    parse: (v) => parseOptionalLimit(v, parseSize), show: (v) => (v === null ? 'off' : formatSize(v)), pgpool: ['delay_threshold'],
  }),
  setting({
    key: 'max_lag_ms', field: 'maxLagMs', default: 10_000, doc: 'Read routing',
    parse: (v) => parseOptionalLimit(v, parseDuration), show: (v) => (v === null ? 'off' : formatDuration(v)), pgpool: ['delay_threshold_by_time'],
  }),
  setting({ key: 'lag_hysteresis', field: 'lagHysteresis', default: 0.2, doc: 'Read routing', parse: parseFraction }),
  duration('read_without_primary_timeout', 'readWithoutPrimaryTimeoutMs', 0, 'Read routing'),
  setting({ key: 'fallback_to_primary', field: 'fallbackToPrimary', default: true, doc: 'Read routing', parse: parseBoolean }),
  setting({ key: 'read_your_writes', field: 'readYourWrites', default: 'off', doc: 'Read routing', parse: (v) => parseEnum(v, READ_YOUR_WRITES) }),
  duration('read_your_writes_window', 'readYourWritesWindowMs', 1000, 'Read routing'),
  setting({
    key: 'write_functions', field: 'writeFunctions', default: frozen([]), doc: 'Read routing',
    parse: (v) => parseFunctionList(v, 'write_functions'), show: list, pgpool: ['write_function_list', 'black_function_list'],
  }),
  setting({
    key: 'read_only_functions', field: 'readOnlyFunctions', default: frozen([]), doc: 'Read routing',
    parse: (v) => parseFunctionList(v, 'read_only_functions'), show: list, pgpool: ['read_only_function_list', 'white_function_list'],
  }),
  duration('function_catalog_refresh', 'functionCatalogRefreshMs', 60_000, 'Read routing'),
  // Query result cache (issue #17): src/cache/queryCache.ts, src/routing/cacheability.ts.
  setting({ key: 'query_cache', field: 'queryCache', default: false, doc: 'Query cache', parse: parseBoolean, show: (v) => (v ? 'on' : 'off') }),
  setting({ key: 'query_cache_size', field: 'queryCacheBytes', default: 64 * MiB, doc: 'Query cache', parse: parseSize, show: formatSize }),
  setting({ key: 'query_cache_max_entry', field: 'queryCacheMaxEntryBytes', default: MiB, doc: 'Query cache', parse: parseSize, show: formatSize }),
  duration('query_cache_ttl', 'queryCacheTtlMs', 60_000, 'Query cache'),
  setting({ key: 'query_cache_mode', field: 'queryCacheMode', default: 'notify', doc: 'Query cache', parse: (v) => parseEnum(v, QUERY_CACHE_MODES) }),
  // Read by the query cache (issue #17); here so `pgmux import` can carry Pgpool-II's lists over.
  setting({
    key: 'query_cache_tables', field: 'queryCacheTables', default: frozen([]), doc: 'Query cache',
    parse: (v) => parseTableList(v, 'query_cache_tables'), show: list, pgpool: ['cache_safe_memqcache_table_list', 'white_memqcache_table_list'],
  }),
  setting({
    key: 'query_cache_exclude_tables', field: 'queryCacheExcludeTables', default: frozen([]), doc: 'Query cache',
    parse: (v) => parseTableList(v, 'query_cache_exclude_tables'), show: list, pgpool: ['cache_unsafe_memqcache_table_list', 'black_memqcache_table_list'],
  }),
  // Databases and users (src/config/databases.ts)
  setting({
    key: 'databases', field: 'databases', default: frozen([]), doc: 'Databases and users',
    parse: parseDatabases, show: (v) => showDatabases(v, true), showMasked: (v) => showDatabases(v, false),
  }),
  setting({ key: 'users', field: 'users', default: frozen([]), doc: 'Databases and users', parse: parseUsers, show: showUsers }),
  // Admin console and shutdown
  setting({ key: 'admin_users', field: 'adminUsers', default: frozen([]), doc: 'Admin console and shutdown', parse: parseUserList, show: list, pgbouncer: ['admin_users'] }),
  setting({ key: 'stats_users', field: 'statsUsers', default: frozen([]), doc: 'Admin console and shutdown', parse: parseUserList, show: list, pgbouncer: ['stats_users'] }),
  duration('shutdown_timeout', 'shutdownTimeoutMs', 30_000, 'Admin console and shutdown', { pgbouncer: ['shutdown_wait_timeout'] }),
  // TLS and access
  setting({
    key: 'client_tls', field: 'clientTls', default: 'disable', doc: 'TLS and access',
    parse: (v) => parseEnum(v, CLIENT_TLS_MODES, { prefer: 'write it as allow', 'verify-ca': 'pgmux does not verify client certificates; use require', 'verify-full': 'pgmux does not verify client certificates; use require' }),
    pgbouncer: ['client_tls_sslmode'],
  }),
  setting({ key: 'client_tls_cert_file', field: 'clientTlsCertFile', default: null, doc: 'TLS and access', parse: parsePath, pgbouncer: ['client_tls_cert_file'] }),
  setting({ key: 'client_tls_key_file', field: 'clientTlsKeyFile', default: null, doc: 'TLS and access', parse: parsePath, pgbouncer: ['client_tls_key_file'] }),
  setting({ key: 'client_tls_ca_file', field: 'clientTlsCaFile', default: null, doc: 'TLS and access', parse: parsePath, pgbouncer: ['client_tls_ca_file'] }),
  setting({ key: 'client_tls_min_version', field: 'clientTlsMinVersion', default: 'TLSv1.2', doc: 'TLS and access', parse: parseTlsVersion, pgbouncer: ['client_tls_protocols'] }),
  setting({
    key: 'client_tls_ciphers', field: 'clientTlsCiphers', default: null, doc: 'TLS and access',
    parse: (v) => parseOptionalString(v, 'an OpenSSL cipher list'), pgbouncer: ['client_tls_ciphers'],
  }),
  setting({
    key: 'server_tls', field: 'serverTls', default: 'disable', doc: 'TLS and access',
    parse: (v) => parseEnum(v, SERVER_TLS_MODES, { allow: 'use prefer or disable' }), pgbouncer: ['server_tls_sslmode'],
  }),
  setting({ key: 'server_tls_ca_file', field: 'serverTlsCaFile', default: null, doc: 'TLS and access', parse: parsePath, pgbouncer: ['server_tls_ca_file'] }),
  setting({ key: 'hba_file', field: 'hbaFile', default: null, doc: 'TLS and access', parse: parsePath, pgbouncer: ['auth_hba_file'] }),
  setting({
    key: 'proxy_protocol_trusted', field: 'proxyProtocolTrusted', default: frozen([]), doc: 'TLS and access',
    parse: parseProxyTrusted, show: list, hintAs: 'proxy_protocol_trusted (load balancer addresses / CIDRs)',
  }),
  // Client connections per database / user: PgBouncer 1.24's names for exactly this.
  setting({
    key: 'max_db_client_connections', field: 'maxDbClientConnections', default: 0, doc: 'TLS and access',
    parse: (v) => parseInteger(v, 0, 1_000_000), pgbouncer: ['max_db_client_connections'],
  }),
  setting({
    key: 'max_user_client_connections', field: 'maxUserClientConnections', default: 0, doc: 'TLS and access',
    parse: (v) => parseInteger(v, 0, 1_000_000), pgbouncer: ['max_user_client_connections'],
  }),
  setting({
    key: 'max_unauthenticated_connections', field: 'maxUnauthenticatedConnections', default: 1000, doc: 'TLS and access',
    parse: (v) => parseInteger(v, 0, 1_000_000),
  }),
  // Logging
  setting({
    key: 'log_level', field: 'logLevel', default: 'info', doc: 'Logging',
    parse: (v) => parseEnum(v, LOG_LEVELS, { warning: 'write it as warn' }),
    flag: { name: '--log-level <level>', help: LOG_LEVELS.join(', ') },
    pgbouncer: ['verbose'], pgpool: ['log_min_messages'],
  }),
] as const;

// Every Config field has exactly one row: a field without one fails to compile here.
type Covered = (typeof ROWS)[number]['field'];
const everyFieldHasARow: [Exclude<keyof Config, Covered>] extends [never] ? true : never = true;
void everyFieldHasARow;

/** Every setting, in the order of docs/configuration.md (also SHOW CONFIG's, check-config's and the importer's order). */
export const SETTINGS: readonly Setting[] = ROWS as unknown as readonly Setting[];

/** Every default (frozen; loadConfig returns fresh copies). */
export const DEFAULTS: Config = Object.freeze(Object.fromEntries(SETTINGS.map((s) => [s.field, s.default])) as unknown as Config);

export function envName(key: string): string {
  return `PGMUX_${key.toUpperCase()}`;
}

/** The CliFlags property commander gives a flag: the camelCase of its long name. */
export function flagProp(flag: FlagSpec): string {
  return /^--([a-z-]+)/.exec(flag.name)![1]!.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** The flag's --help text: what it is, its environment variable and default. */
export function flagHelp(s: Setting): string {
  const f = s.flag!;
  const shown = s.show ? s.show(s.default) : s.default;
  return `${f.help} (env: ${envName(s.key)}${f.envNote ?? ''}; default: ${f.defaultText ?? (shown === null ? 'none' : String(shown))})`;
}

/** A setting's position in SETTINGS (unknown keys after every known one): the importer sorts its output by it. */
export function settingRank(key: string): number {
  const i = SETTINGS.findIndex((s) => s.key === key);
  return i < 0 ? SETTINGS.length : i;
}

/** The keys RELOAD does not apply (see PgmuxServer.reload). */
export const RESTART_ONLY_KEYS: readonly string[] = SETTINGS.filter((s) => s.restartOnly).map((s) => s.key);
