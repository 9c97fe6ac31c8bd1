import { EventEmitter } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  ConfigError,
  DEFAULTS,
  configToObject,
  loadConfig,
  parseConfigObject,
  type CliFlags,
} from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { buildProgram, main } from '../../src/cli.js';
import { createLogger } from '../../src/observability/logger.js';
import { makeTestPki } from '../support/certs.js';

// Stand-ins for the server and the demo, so the CLI's start/demo wiring runs without them.
const fake = vi.hoisted(() => ({
  startError: null as Error | null,
  closeError: null as Error | null,
  started: [] as unknown[],
  demos: [] as unknown[],
  closed: [] as Array<string | undefined>,
}));
vi.mock('../../src/server/pgmux.js', () => ({
  startPgmux: async (config: unknown) => {
    if (fake.startError) throw fake.startError;
    fake.started.push(config);
    return {
      port: 6432,
      httpPort: null,
      close: async (reason?: string) => {
        fake.closed.push(reason);
        if (fake.closeError) throw fake.closeError;
      },
    };
  },
}));
vi.mock('../../src/embedded/demo.js', () => ({
  runDemo: async (opts: Record<string, unknown>) => {
    fake.demos.push(opts);
    return { close: async (reason?: string) => void fake.closed.push(reason) };
  },
}));

const dir = mkdtempSync(join(tmpdir(), 'pgmux-config-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCounter = 0;
function writeTemp(name: string, text: string): string {
  const p = join(dir, `${fileCounter++}-${name}`);
  writeFileSync(p, text);
  return p;
}

const userlist = writeTemp('userlist.txt', '"app" "secret"\n');
const hbaFile = writeTemp('hba.conf', 'hostssl all all 0.0.0.0/0 scram-sha-256\n');
const pki = makeTestPki();
afterAll(() => pki.cleanup());
const NODE = { node: ['db1:5432'] } satisfies CliFlags;

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

/** parseConfigObject of a one-key object, field value. */
function yamlValue(key: string, value: unknown): unknown {
  const out = parseConfigObject({ [key]: value }, 'test.yaml') as Record<string, unknown>;
  return Object.values(out)[0];
}

describe('DEFAULTS', () => {
  it('has the documented values', () => {
    expect(DEFAULTS).toEqual({
      listen: { host: '0.0.0.0', port: 6432 },
      http: null,
      unixSocketDir: '/tmp',
      unixSocketMode: 0o777,
      unixSocketGroup: null,
      nodes: [],
      poolMode: 'transaction',
      poolSize: 20,
      minPoolSize: 0,
      pipelineDepth: 1,
      queryCache: false,
      queryCacheBytes: 64 * 1024 * 1024,
      queryCacheMaxEntryBytes: 1024 * 1024,
      queryCacheTtlMs: 60_000,
      maxClientConn: 10000,
      workers: 1,
      peerId: null,
      peers: [],
      peerBudgets: false,
      auth: 'trust',
      authFile: null,
      serverPassword: null,
      authUser: null,
      authQuery: 'SELECT usename, passwd FROM pg_shadow WHERE usename = $1',
      authDbname: 'postgres',
      authUserPassword: null,
      queryWaitTimeoutMs: 120_000,
      serverIdleTimeoutMs: 600_000,
      serverLifetimeMs: 3_600_000,
      clientIdleTimeoutMs: 0,
      idleTransactionTimeoutMs: 0,
      serverConnectTimeoutMs: 15_000,
      serverLoginRetryMs: 15_000,
      clientLoginTimeoutMs: 60_000,
      maxMessageBytes: 64 * 1024 * 1024,
      serverResetQuery: 'DISCARD ALL',
      maxPreparedStatements: 200,
      leanIo: true,
      trackExtraParameters: [],
      adminUsers: [],
      statsUsers: [],
      shutdownTimeoutMs: 30_000,
      logLevel: 'info',
      healthCheckPeriodMs: 1000,
      healthCheckTimeoutMs: 5000,
      healthCheckMaxRetries: 3,
      healthCheckUser: null,
      healthCheckPassword: null,
      healthCheckDatabase: 'postgres',
      failoverTimeoutMs: 30_000,
      onRoleChange: null,
      maxLagBytes: null,
      maxLagMs: 10_000,
      lagHysteresis: 0.2,
      readWithoutPrimaryTimeoutMs: 0,
      fallbackToPrimary: true,
      readYourWrites: 'off',
      readYourWritesWindowMs: 1000,
      writeFunctions: [],
      readOnlyFunctions: [],
      functionCatalogRefreshMs: 60_000,
      queryCacheMode: 'notify',
      queryCacheTables: [],
      queryCacheExcludeTables: [],
      clientTls: 'disable',
      clientTlsCertFile: null,
      clientTlsKeyFile: null,
      clientTlsCaFile: null,
      clientTlsMinVersion: 'TLSv1.2',
      clientTlsCiphers: null,
      serverTls: 'disable',
      serverTlsCaFile: null,
      hbaFile: null,
      proxyProtocolTrusted: [],
      maxDbConnections: 0,
      maxUserConnections: 0,
      maxDbClientConnections: 0,
      maxUserClientConnections: 0,
      maxUnauthenticatedConnections: 1000,
      databases: [],
      users: [],
    } satisfies Config);
    expect(Object.isFrozen(DEFAULTS)).toBe(true);
  });

  it('is what loadConfig gives with only a node', () => {
    const c = loadConfig(NODE, {});
    expect(c).toEqual({ ...DEFAULTS, nodes: [{ host: 'db1', port: 5432, weight: 1 }] });
    // A fresh object: mutating it leaves DEFAULTS alone.
    c.listen.port = 1;
    expect(DEFAULTS.listen.port).toBe(6432);
  });
});

describe('YAML file', () => {
  it('reads every key', () => {
    const file = writeTemp(
      'full.yaml',
      `
listen: 127.0.0.1:7000
http: 0.0.0.0:9187
unix_socket_dir: sockets
unix_socket_mode: 0770
unix_socket_group: pgmux
nodes:
  - db1:5432@2
  - { host: db2, port: 5433, weight: 0 }
pool_mode: session
pool_size: 30
min_pool_size: 5
pipeline_depth: 4
query_cache: on
query_cache_size: 8MB
query_cache_max_entry: 64kB
query_cache_ttl: 30s
max_client_conn: 500
workers: 4
peer_id: 2
peers: ['1=10.0.0.1:6432', '2=10.0.0.2:6432']
peer_budgets: on
auth: md5
auth_file: ${userlist}
server_password: hunter2
auth_user: pgmux_auth
auth_query: SELECT usename, passwd FROM pgmux.user_lookup($1)
auth_dbname: app
auth_user_password: authpw
query_wait_timeout: 30
server_idle_timeout: 10m
server_lifetime: 1h
client_idle_timeout: 0.5
idle_transaction_timeout: 250ms
server_connect_timeout: 5s
server_login_retry: 2s
client_login_timeout: 1m
max_message_size: 16MB
server_reset_query: ''
max_prepared_statements: 50
admin_users: [admin, ops]
stats_users: grafana
shutdown_timeout: 5s
log_level: debug
health_check_period: 500ms
health_check_timeout: 2
health_check_max_retries: 5
health_check_user: monitor
health_check_password: mpw
health_check_database: app
failover_timeout: 1m
on_role_change: /usr/local/bin/notify "$PGMUX_EVENT"
max_lag_bytes: 16MB
max_lag_ms: off
lag_hysteresis: 0.5
read_without_primary_timeout: 45s
fallback_to_primary: off
read_your_writes: lsn
read_your_writes_window: 250ms
write_functions: [audit_log, App.Bump, 'queue_*']
read_only_functions: [uuid_next, '"Audit".Peek', '"Mixed Case"()']
function_catalog_refresh: 5m
query_cache_mode: triggers
query_cache_tables: [hot_view]
query_cache_exclude_tables: audit
client_tls: require
client_tls_cert_file: ${pki.server.cert}
client_tls_key_file: ${pki.server.key}
client_tls_ca_file: ${pki.ca.cert}
client_tls_min_version: TLSv1.3
client_tls_ciphers: HIGH:!aNULL
server_tls: verify-full
server_tls_ca_file: ${pki.ca.cert}
hba_file: ${hbaFile}
proxy_protocol_trusted: [10.0.0.0/8, "::1"]
max_db_connections: 100
max_user_connections: 20
max_db_client_connections: 30
max_user_client_connections: 4
max_unauthenticated_connections: 50
databases:
  appdb:
  appdb_ro: "dbname=appdb pool_size=5 route=replica"
  reporting: { dbname: appdb, user: report, password: s3cret, pool_size: 5, min_pool_size: 1, pool_mode: session, max_db_connections: 10 }
  '*': {}
users:
  batch: { pool_mode: session, max_user_connections: 5 }
`,
    );
    expect(loadConfig({ config: file }, {})).toEqual({
      listen: { host: '127.0.0.1', port: 7000 },
      http: { host: '0.0.0.0', port: 9187 },
      unixSocketDir: join(dirname(file), 'sockets'),
      unixSocketMode: 0o770,
      unixSocketGroup: 'pgmux',
      nodes: [
        { host: 'db1', port: 5432, weight: 2 },
        { host: 'db2', port: 5433, weight: 0 },
      ],
      poolMode: 'session',
      poolSize: 30,
      minPoolSize: 5,
      pipelineDepth: 4,
      queryCache: true,
      queryCacheBytes: 8 * 1024 * 1024,
      queryCacheMaxEntryBytes: 64 * 1024,
      queryCacheTtlMs: 30_000,
      maxClientConn: 500,
      workers: 4,
      peerId: 2,
      peers: [{ id: 1, host: '10.0.0.1', port: 6432 }, { id: 2, host: '10.0.0.2', port: 6432 }],
      peerBudgets: true,
      auth: 'md5',
      authFile: userlist,
      serverPassword: 'hunter2',
      authUser: 'pgmux_auth',
      authQuery: 'SELECT usename, passwd FROM pgmux.user_lookup($1)',
      authDbname: 'app',
      authUserPassword: 'authpw',
      queryWaitTimeoutMs: 30_000,
      serverIdleTimeoutMs: 600_000,
      serverLifetimeMs: 3_600_000,
      clientIdleTimeoutMs: 500,
      idleTransactionTimeoutMs: 250,
      serverConnectTimeoutMs: 5000,
      serverLoginRetryMs: 2000,
      clientLoginTimeoutMs: 60_000,
      maxMessageBytes: 16 * 1024 * 1024,
      serverResetQuery: '',
      maxPreparedStatements: 50,
      leanIo: true,
      trackExtraParameters: [],
      adminUsers: ['admin', 'ops'],
      statsUsers: ['grafana'],
      shutdownTimeoutMs: 5000,
      logLevel: 'debug',
      healthCheckPeriodMs: 500,
      healthCheckTimeoutMs: 2000,
      healthCheckMaxRetries: 5,
      healthCheckUser: 'monitor',
      healthCheckPassword: 'mpw',
      healthCheckDatabase: 'app',
      failoverTimeoutMs: 60_000,
      onRoleChange: '/usr/local/bin/notify "$PGMUX_EVENT"',
      maxLagBytes: 16 * 1024 * 1024,
      maxLagMs: null,
      lagHysteresis: 0.5,
      readWithoutPrimaryTimeoutMs: 45_000,
      fallbackToPrimary: false,
      readYourWrites: 'lsn',
      readYourWritesWindowMs: 250,
      writeFunctions: ['audit_log', 'app.bump', 'queue_*'],
      readOnlyFunctions: ['uuid_next', '"Audit".peek', '"Mixed Case"'],
      functionCatalogRefreshMs: 300_000,
      queryCacheMode: 'triggers',
      queryCacheTables: ['hot_view'],
      queryCacheExcludeTables: ['audit'],
      clientTls: 'require',
      clientTlsCertFile: pki.server.cert,
      clientTlsKeyFile: pki.server.key,
      clientTlsCaFile: pki.ca.cert,
      clientTlsMinVersion: 'TLSv1.3',
      clientTlsCiphers: 'HIGH:!aNULL',
      serverTls: 'verify-full',
      serverTlsCaFile: pki.ca.cert,
      hbaFile,
      proxyProtocolTrusted: ['10.0.0.0/8', '::1'],
      maxDbConnections: 100,
      maxUserConnections: 20,
      maxDbClientConnections: 30,
      maxUserClientConnections: 4,
      maxUnauthenticatedConnections: 50,
      databases: [
        { name: 'appdb', dbname: null, user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
        { name: 'appdb_ro', dbname: 'appdb', user: null, password: null, poolSize: 5, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'replica' },
        { name: 'reporting', dbname: 'appdb', user: 'report', password: 's3cret', poolSize: 5, minPoolSize: 1, poolMode: 'session', maxDbConnections: 10, route: 'any' },
        { name: '*', dbname: null, user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
      ],
      users: [{ name: 'batch', poolMode: 'session', maxUserConnections: 5 }],
    } satisfies Config);
  });

  it('accepts PgBouncer aliases default_pool_size and auth_type', () => {
    expect(parseConfigObject({ default_pool_size: 7, auth_type: 'scram-sha-256' }, 'x.yaml')).toEqual({
      poolSize: 7,
      auth: 'scram-sha-256',
    });
  });

  it('treats an empty file as no settings', () => {
    const file = writeTemp('empty.yaml', '# nothing here\n');
    expect(loadConfig({ ...NODE, config: file }, {}).poolSize).toBe(20);
  });

  it('resolves a relative auth_file against the config file directory', () => {
    const sub = join(dir, 'sub');
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, 'users.txt'), '"a" "b"\n');
    const file = join(sub, 'pgmux.yaml');
    writeFileSync(file, 'auth: password\nauth_file: users.txt\nnodes: [db1]\n');
    expect(loadConfig({ config: file }, {}, { cwd: '/' }).authFile).toBe(join(sub, 'users.txt'));
  });

  it.each([
    ['missing file', () => join(dir, 'nope.yaml'), /^--config: cannot read .*nope\.yaml: no such file$/],
    ['bad YAML', () => writeTemp('bad.yaml', 'pool_size: [1, 2\n'), /^--config: .*bad\.yaml is not valid YAML: /],
    ['a list at the top', () => writeTemp('list.yaml', '- a\n- b\n'), /list\.yaml: expected a mapping of settings .* got a list$/],
  ])('reports %s under key config', (_name, makePath, message) => {
    const e = configError(() => loadConfig({ ...NODE, config: makePath() }, {}));
    expect(e.key).toBe('config');
    expect(e.message).toMatch(message);
    expect(e.message).not.toContain('\n');
  });
});

describe('precedence: defaults < file < env < flags', () => {
  const file = writeTemp('prec.yaml', 'pool_size: 5\nlog_level: warn\nnodes: [file1:5432, file2:5432]\n');

  it.each<[string, CliFlags, NodeJS.ProcessEnv, number, string[]]>([
    ['file only', { config: file }, {}, 5, ['file1', 'file2']],
    ['env beats file', { config: file }, { PGMUX_POOL_SIZE: '6', PGMUX_NODES: 'env1:5432' }, 6, ['env1']],
    ['flags beat env', { config: file, poolSize: '7', node: ['flag1', 'flag2:5433'] }, { PGMUX_POOL_SIZE: '6', PGMUX_NODES: 'env1' }, 7, ['flag1', 'flag2']],
    ['PGMUX_CONFIG names the file', {}, { PGMUX_CONFIG: file }, 5, ['file1', 'file2']],
    ['empty env var counts as unset', { config: file }, { PGMUX_POOL_SIZE: '', PGMUX_NODES: '' }, 5, ['file1', 'file2']],
  ])('%s', (_name, flags, env, poolSize, hosts) => {
    const c = loadConfig(flags, env);
    expect(c.poolSize).toBe(poolSize);
    expect(c.nodes.map((n) => n.host)).toEqual(hosts);
    expect(c.logLevel).toBe('warn'); // untouched keys keep the file's value
  });

  it('--config wins over PGMUX_CONFIG', () => {
    const other = writeTemp('other.yaml', 'pool_size: 9\nnodes: [db1]\n');
    expect(loadConfig({ config: other }, { PGMUX_CONFIG: file }).poolSize).toBe(9);
  });

  it('reads every env var', () => {
    const c = loadConfig({}, {
      PGMUX_LISTEN: '127.0.0.1:7001',
      PGMUX_HTTP: ':9000',
      PGMUX_UNIX_SOCKET_DIR: 'off',
      PGMUX_UNIX_SOCKET_MODE: '0o700',
      PGMUX_UNIX_SOCKET_GROUP: '1000',
      PGMUX_NODES: 'a:1@2, b:2',
      PGMUX_POOL_MODE: 'Session',
      PGMUX_DEFAULT_POOL_SIZE: '3',
      PGMUX_MIN_POOL_SIZE: '1',
      PGMUX_PIPELINE_DEPTH: '2',
      PGMUX_QUERY_CACHE: 'on',
      PGMUX_QUERY_CACHE_SIZE: '2MB',
      PGMUX_QUERY_CACHE_MAX_ENTRY: '2kB',
      PGMUX_QUERY_CACHE_TTL: '5s',
      PGMUX_MAX_CLIENT_CONN: '50',
      PGMUX_WORKERS: '3',
      PGMUX_PEER_ID: '0',
      PGMUX_PEERS: 'dns:pgmux-peers.default.svc:6432',
      PGMUX_PEER_BUDGETS: 'off',
      PGMUX_AUTH_TYPE: 'md5',
      PGMUX_AUTH_FILE: userlist,
      PGMUX_SERVER_PASSWORD: 'pw',
      PGMUX_AUTH_USER: 'au',
      PGMUX_AUTH_QUERY: 'SELECT 1',
      PGMUX_AUTH_DBNAME: 'adb',
      PGMUX_AUTH_USER_PASSWORD: 'apw',
      PGMUX_QUERY_WAIT_TIMEOUT: '1',
      PGMUX_SERVER_IDLE_TIMEOUT: '2s',
      PGMUX_SERVER_LIFETIME: '3m',
      PGMUX_CLIENT_IDLE_TIMEOUT: '4h',
      PGMUX_IDLE_TRANSACTION_TIMEOUT: '5ms',
      PGMUX_SERVER_CONNECT_TIMEOUT: '6',
      PGMUX_SERVER_LOGIN_RETRY: '500ms',
      PGMUX_CLIENT_LOGIN_TIMEOUT: '7',
      PGMUX_MAX_MESSAGE_SIZE: '1MB',
      PGMUX_SERVER_RESET_QUERY: 'RESET ALL',
      PGMUX_MAX_PREPARED_STATEMENTS: '0',
      PGMUX_LEAN_IO: 'off',
      PGMUX_TRACK_EXTRA_PARAMETERS: 'work_mem',
      PGMUX_ADMIN_USERS: 'a',
      PGMUX_STATS_USERS: 's1, s2',
      PGMUX_SHUTDOWN_TIMEOUT: '1',
      PGMUX_LOG_LEVEL: 'ERROR',
      PGMUX_HEALTH_CHECK_PERIOD: '2',
      PGMUX_HEALTH_CHECK_TIMEOUT: '1500ms',
      PGMUX_HEALTH_CHECK_MAX_RETRIES: '1',
      PGMUX_HEALTH_CHECK_USER: 'u',
      PGMUX_HEALTH_CHECK_PASSWORD: 'p',
      PGMUX_HEALTH_CHECK_DATABASE: 'd',
      PGMUX_FAILOVER_TIMEOUT: '0',
      PGMUX_ON_ROLE_CHANGE: 'true',
      PGMUX_MAX_LAG_BYTES: '1MB',
      PGMUX_MAX_LAG_MS: '2s',
      PGMUX_LAG_HYSTERESIS: '0',
      PGMUX_READ_WITHOUT_PRIMARY_TIMEOUT: '2m',
      PGMUX_FALLBACK_TO_PRIMARY: 'false',
      PGMUX_READ_YOUR_WRITES: 'window',
      PGMUX_READ_YOUR_WRITES_WINDOW: '3s',
      PGMUX_WRITE_FUNCTIONS: 'f1,s.f2',
      PGMUX_READ_ONLY_FUNCTIONS: 'r1, S.R2',
      PGMUX_FUNCTION_CATALOG_REFRESH: '0',
      PGMUX_QUERY_CACHE_MODE: 'local',
      PGMUX_QUERY_CACHE_TABLES: 'public.hot_view',
      PGMUX_QUERY_CACHE_EXCLUDE_TABLES: 'Audit, app.sessions',
      PGMUX_CLIENT_TLS: 'Allow',
      PGMUX_CLIENT_TLS_CERT_FILE: pki.server.cert,
      PGMUX_CLIENT_TLS_KEY_FILE: pki.server.key,
      PGMUX_CLIENT_TLS_CA_FILE: pki.ca.cert,
      PGMUX_CLIENT_TLS_MIN_VERSION: '1.2',
      PGMUX_CLIENT_TLS_CIPHERS: 'ECDHE+AESGCM',
      PGMUX_SERVER_TLS: 'prefer',
      PGMUX_SERVER_TLS_CA_FILE: pki.otherCa.cert,
      PGMUX_HBA_FILE: hbaFile,
      PGMUX_PROXY_PROTOCOL_TRUSTED: '10.0.0.1, fd00::/8',
      PGMUX_MAX_DB_CONNECTIONS: '0',
      PGMUX_MAX_USER_CONNECTIONS: '7',
      PGMUX_MAX_DB_CLIENT_CONNECTIONS: '9',
      PGMUX_MAX_USER_CLIENT_CONNECTIONS: '0',
      PGMUX_MAX_UNAUTHENTICATED_CONNECTIONS: '0',
      PGMUX_DATABASES: '{"ro": {"dbname": "app", "route": "replica"}}',
      PGMUX_USERS: '{"batch": "pool_mode=session"}',
      PGMUX_SOMETHING_ELSE: 'ignored',
      PGMUX_EVENT: 'role_change', // set by the monitor for its hook; not a setting
    });
    expect(c).toEqual({
      listen: { host: '127.0.0.1', port: 7001 },
      http: { host: '0.0.0.0', port: 9000 },
      unixSocketDir: null,
      unixSocketMode: 0o700,
      unixSocketGroup: '1000',
      nodes: [{ host: 'a', port: 1, weight: 2 }, { host: 'b', port: 2, weight: 1 }],
      poolMode: 'session',
      poolSize: 3,
      minPoolSize: 1,
      pipelineDepth: 2,
      queryCache: true,
      queryCacheBytes: 2 * 1024 * 1024,
      queryCacheMaxEntryBytes: 2 * 1024,
      queryCacheTtlMs: 5_000,
      maxClientConn: 50,
      workers: 3,
      peerId: 0,
      peers: [{ dns: 'pgmux-peers.default.svc', port: 6432 }],
      peerBudgets: false,
      auth: 'md5',
      authFile: userlist,
      serverPassword: 'pw',
      authUser: 'au',
      authQuery: 'SELECT 1',
      authDbname: 'adb',
      authUserPassword: 'apw',
      queryWaitTimeoutMs: 1000,
      serverIdleTimeoutMs: 2000,
      serverLifetimeMs: 180_000,
      clientIdleTimeoutMs: 14_400_000,
      idleTransactionTimeoutMs: 5,
      serverConnectTimeoutMs: 6000,
      serverLoginRetryMs: 500,
      clientLoginTimeoutMs: 7000,
      maxMessageBytes: 1024 * 1024,
      serverResetQuery: 'RESET ALL',
      maxPreparedStatements: 0,
      leanIo: false,
      trackExtraParameters: ['work_mem'],
      adminUsers: ['a'],
      statsUsers: ['s1', 's2'],
      shutdownTimeoutMs: 1000,
      logLevel: 'error',
      healthCheckPeriodMs: 2000,
      healthCheckTimeoutMs: 1500,
      healthCheckMaxRetries: 1,
      healthCheckUser: 'u',
      healthCheckPassword: 'p',
      healthCheckDatabase: 'd',
      failoverTimeoutMs: 0,
      onRoleChange: 'true',
      maxLagBytes: 1024 * 1024,
      maxLagMs: 2000,
      lagHysteresis: 0,
      readWithoutPrimaryTimeoutMs: 120_000,
      fallbackToPrimary: false,
      readYourWrites: 'window',
      readYourWritesWindowMs: 3000,
      writeFunctions: ['f1', 's.f2'],
      readOnlyFunctions: ['r1', 's.r2'],
      functionCatalogRefreshMs: 0,
      queryCacheMode: 'local',
      queryCacheTables: ['public.hot_view'],
      queryCacheExcludeTables: ['audit', 'app.sessions'],
      clientTls: 'allow',
      clientTlsCertFile: pki.server.cert,
      clientTlsKeyFile: pki.server.key,
      clientTlsCaFile: pki.ca.cert,
      clientTlsMinVersion: 'TLSv1.2',
      clientTlsCiphers: 'ECDHE+AESGCM',
      serverTls: 'prefer',
      serverTlsCaFile: pki.otherCa.cert,
      hbaFile,
      proxyProtocolTrusted: ['10.0.0.1', 'fd00::/8'],
      maxDbConnections: 0,
      maxUserConnections: 7,
      maxDbClientConnections: 9,
      maxUserClientConnections: 0,
      maxUnauthenticatedConnections: 0,
      databases: [{ name: 'ro', dbname: 'app', user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'replica' }],
      users: [{ name: 'batch', poolMode: 'session', maxUserConnections: null }],
    } satisfies Config);
  });

  it('reads every flag', () => {
    const c = loadConfig({
      listen: '[::1]:0',
      node: ['a:1@2', 'b'],
      poolMode: 'session',
      poolSize: '4',
      auth: 'scram-sha-256',
      authFile: userlist,
      http: '127.0.0.1:0',
      logLevel: 'silent',
      workers: '2',
    }, {});
    expect(c).toMatchObject({
      listen: { host: '::1', port: 0 },
      nodes: [{ host: 'a', port: 1, weight: 2 }, { host: 'b', port: 5432, weight: 1 }],
      poolMode: 'session',
      poolSize: 4,
      auth: 'scram-sha-256',
      authFile: userlist,
      http: { host: '127.0.0.1', port: 0 },
      logLevel: 'silent',
      workers: 2,
    });
  });

  it('--http off overrides a file http', () => {
    const f = writeTemp('http.yaml', 'http: 127.0.0.1:9187\nnodes: [db1]\n');
    expect(loadConfig({ config: f }, {}).http).toEqual({ host: '127.0.0.1', port: 9187 });
    expect(loadConfig({ config: f, http: 'off' }, {}).http).toBeNull();
  });
});

describe('durations', () => {
  it.each<[unknown, number]>([
    [30, 30_000],
    [0, 0],
    [0.5, 500],
    ['10', 10_000],
    ['1.5', 1500],
    ['500ms', 500],
    ['500 ms', 500],
    ['2s', 2000],
    ['1.5s', 1500],
    ['5m', 300_000],
    ['5min', 300_000],
    ['1h', 3_600_000],
    ['1d', 86_400_000],
    ['0.0001', 1], // a non-zero value never rounds to "disabled"
    ['24d', 24 * 86_400_000],
  ])('%j -> %d ms', (raw, ms) => {
    expect(yamlValue('query_wait_timeout', raw)).toBe(ms);
  });

  it.each<[unknown, RegExp]>([
    ['abc', /^server_lifetime: "abc" is not a duration \(expected seconds like 30 or 0\.5, or a number with a unit: 500ms, 2s, 5m, 1h, 1d; 0 disables\) \(in test\.yaml\)$/],
    ['5x', /"5x" is not a duration/],
    ['-1', /"-1" is not a duration/],
    [-1, /-1 is negative/],
    [true, /true is not a duration/],
    ['25d', /"25d" is too long \(at most 24d/],
  ])('%j is rejected', (raw, message) => {
    const e = configError(() => parseConfigObject({ server_lifetime: raw }, 'test.yaml'));
    expect(e.key).toBe('server_lifetime');
    expect(e.message).toMatch(message);
  });
});

describe('sizes', () => {
  it.each<[unknown, number]>([
    [1024, 1024],
    ['2048', 2048],
    ['512kB', 512 * 1024],
    ['512KB', 512 * 1024],
    ['64MB', 64 * 1024 * 1024],
    ['64MiB', 64 * 1024 * 1024],
    ['1GB', 1024 * 1024 * 1024],
    ['1.5MB', 1.5 * 1024 * 1024],
    ['4096B', 4096],
  ])('%j -> %d bytes', (raw, bytes) => {
    expect(yamlValue('max_message_size', raw)).toBe(bytes);
  });

  it.each<[unknown, RegExp]>([
    ['lots', /^max_message_size: "lots" is not a size \(expected bytes or a number with a unit: 512kB, 64MB, 1GB; 1024B\.\.2GB-1\) \(in test\.yaml\)$/],
    ['10XB', /"10XB" is not a size/],
    [100, /100 is out of range/],
    ['2GB', /"2GB" is out of range/],
    ['1000.5', /"1000\.5" is not a whole number of bytes/],
  ])('%j is rejected', (raw, message) => {
    const e = configError(() => parseConfigObject({ max_message_size: raw }, 'test.yaml'));
    expect(e.key).toBe('max_message_size');
    expect(e.message).toMatch(message);
  });
});

describe('nodes', () => {
  it.each<[string, unknown, Array<{ host: string; port: number; weight: number }>]>([
    ['host:port', ['db1:5432'], [{ host: 'db1', port: 5432, weight: 1 }]],
    ['host:port@weight', ['db1:5433@3'], [{ host: 'db1', port: 5433, weight: 3 }]],
    ['host alone', ['db1'], [{ host: 'db1', port: 5432, weight: 1 }]],
    ['host@weight', ['db1@0'], [{ host: 'db1', port: 5432, weight: 0 }]],
    ['IPv6', ['[::1]:5432@2', '[fe80::1]'], [{ host: '::1', port: 5432, weight: 2 }, { host: 'fe80::1', port: 5432, weight: 1 }]],
    ['objects', [{ host: 'a', port: 1, weight: 4 }, { host: 'b' }], [{ host: 'a', port: 1, weight: 4 }, { host: 'b', port: 5432, weight: 1 }]],
    ['object with string port', [{ host: 'a', port: '6000' }], [{ host: 'a', port: 6000, weight: 1 }]],
    ['comma-separated string', 'a:1, b:2@5', [{ host: 'a', port: 1, weight: 1 }, { host: 'b', port: 2, weight: 5 }]],
    ['a single object', { host: 'a', port: 1 }, [{ host: 'a', port: 1, weight: 1 }]],
    ['empty list', [], []],
  ])('%s', (_name, raw, nodes) => {
    expect(yamlValue('nodes', raw)).toEqual(nodes);
  });

  it.each<[string, unknown, RegExp]>([
    ['port 0', ['db1:0'], /^nodes: "db1:0": port 0 is out of range \(expected 1\.\.65535\) \(in test\.yaml\)$/],
    ['port too big', ['db1:70000'], /port 70000 is out of range \(expected 1\.\.65535\)/],
    ['port not a number', ['db1:x'], /"db1:x" has no valid port \(expected 1\.\.65535\)/],
    ['negative weight', ['db1:5432@-1'], /"db1:5432@-1": weight "-1" is not a whole number >= 0/],
    ['fractional weight', [{ host: 'a', weight: 1.5 }], /weight 1\.5 is not a whole number >= 0/],
    ['bare IPv6', ['::1:5432'], /"::1:5432" is ambiguous: write IPv6 addresses in brackets/],
    ['duplicate', ['db1', 'db1:5432@2'], /db1:5432 is listed twice/],
    ['unknown object key', [{ hostname: 'a' }], /has unknown key "hostname" \(expected "host:port\[@weight\]" or \{host, port, weight\}\)/],
    ['not a node', [42], /42 is not a node/],
    ['empty host', [':5432'], /":5432" has no valid host/],
  ])('rejects %s', (_name, raw, message) => {
    const e = configError(() => parseConfigObject({ nodes: raw }, 'test.yaml'));
    expect(e.key).toBe('nodes');
    expect(e.message).toMatch(message);
  });

  it('--node errors name the flag', () => {
    const e = configError(() => loadConfig({ node: ['db1:99999'] }, {}));
    expect(e.key).toBe('nodes');
    expect(e.message).toBe('--node: "db1:99999": port 99999 is out of range (expected 1..65535)');
  });

  it('at least one node is required', () => {
    const e = configError(() => loadConfig({}, {}));
    expect(e.key).toBe('nodes');
    expect(e.message).toMatch(/^nodes: at least one --node HOST:PORT is required/);
    expect(loadConfig({}, {}, { requireNodes: false }).nodes).toEqual([]);
  });
});

describe('listen and http', () => {
  it.each<[string, unknown, unknown]>([
    ['listen', '127.0.0.1:6433', { host: '127.0.0.1', port: 6433 }],
    ['listen', 'localhost:0', { host: 'localhost', port: 0 }],
    ['listen', '[::1]:6432', { host: '::1', port: 6432 }],
    ['listen', '[::]:6432', { host: '::', port: 6432 }],
    ['listen', '7000', { host: '0.0.0.0', port: 7000 }],
    ['listen', 7000, { host: '0.0.0.0', port: 7000 }],
    ['listen', ':7000', { host: '0.0.0.0', port: 7000 }],
    ['http', '[::1]:9187', { host: '::1', port: 9187 }],
    ['http', null, null],
    ['http', false, null],
    ['http', 'off', null],
  ])('%s %j', (key, raw, expected) => {
    expect(yamlValue(key, raw)).toEqual(expected);
  });

  it.each<[string, unknown, RegExp]>([
    ['listen', 'localhost', /^listen: "localhost" has no port \(expected HOST:PORT\) \(in test\.yaml\)$/],
    ['listen', '1.2.3.4:65536', /port 65536 is out of range \(expected 0\.\.65535, 0 = any free port\)/],
    ['listen', '::1:6432', /ambiguous: write IPv6 addresses in brackets, e\.g\. \[::1\]:6432/],
    ['listen', '[::1]', /"\[::1\]" has no port/],
    ['listen', '[nothex]:1', /is not HOST:PORT \(IPv6 as \[::1\]:6432\)/],
    ['listen', ['a'], /a list is not HOST:PORT/],
    ['http', 'x:-1', /"x:-1" has no valid port/],
    ['peers', ['1=a:1', '1=b:2'], /peer id 1 is listed twice/],
    ['peers', ['dns:svc', '1=b:2'], /a dns: entry must be the only peer entry/],
    ['peers', ['a:1'], /is not a peer \(expected "ID=HOST:PORT" or "dns:NAME\[:PORT\]"\)/],
    ['peers', ['4096=a:1'], /out of range \(expected 0\.\.4095\)/],
    ['peer_id', 4096, /out of range \(expected 0\.\.4095\)/],
  ])('%s %j is rejected', (key, raw, message) => {
    const e = configError(() => parseConfigObject({ [key]: raw }, 'test.yaml'));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(message);
  });

  it('peers or peer_budgets without peer_id is rejected', () => {
    for (const env of [{ PGMUX_PEERS: '1=a:1' }, { PGMUX_PEER_BUDGETS: 'on' }]) {
      const e = configError(() => loadConfig(NODE, env));
      expect(e.key).toBe('peer_id');
      expect(e.message).toMatch(/needs this instance's peer_id/);
    }
    expect(loadConfig(NODE, { PGMUX_PEER_ID: '3', PGMUX_PEERS: 'dns:pgmux-peers' }).peers).toEqual([{ dns: 'pgmux-peers', port: null }]);
  });

  it('http on the listen port is rejected', () => {
    const e = configError(() => loadConfig({ ...NODE, listen: '127.0.0.1:7000', http: '0.0.0.0:7000' }, {}));
    expect(e.key).toBe('http');
    expect(e.message).toBe('http: 0.0.0.0:7000 clashes with listen 127.0.0.1:7000 (expected another port)');
    expect(loadConfig({ ...NODE, listen: '127.0.0.1:0', http: '127.0.0.1:0' }, {}).http).toEqual({ host: '127.0.0.1', port: 0 });
  });
});

describe('validation errors name the key', () => {
  it.each<[string, Record<string, unknown>, string, string]>([
    ['pool_size not a number', { pool_size: 'abc' }, 'pool_size', 'pool_size: "abc" is not a whole number (expected 1..10000) (in test.yaml)'],
    ['pool_size 0', { pool_size: 0 }, 'pool_size', 'pool_size: 0 is out of range (expected 1..10000) (in test.yaml)'],
    ['pool_size fractional', { pool_size: 2.5 }, 'pool_size', 'pool_size: 2.5 is not a whole number (expected 1..10000) (in test.yaml)'],
    ['default_pool_size alias', { default_pool_size: -3 }, 'pool_size', 'default_pool_size: -3 is out of range (expected 1..10000) (in test.yaml)'],
    ['min_pool_size', { min_pool_size: 'x' }, 'min_pool_size', 'min_pool_size: "x" is not a whole number (expected 0..10000) (in test.yaml)'],
    ['max_client_conn', { max_client_conn: 0 }, 'max_client_conn', 'max_client_conn: 0 is out of range (expected 1..1000000) (in test.yaml)'],
    ['workers', { workers: 65 }, 'workers', 'workers: 65 is out of range (expected 1..64) (in test.yaml)'],
    ['pool_mode', { pool_mode: 'statement' }, 'pool_mode', 'pool_mode: "statement" is not supported (statement pooling breaks multi-statement transactions and is not offered; expected one of transaction, session) (in test.yaml)'],
    ['auth', { auth: 'ldap' }, 'auth', 'auth: "ldap" is not supported (expected one of trust, password, md5, scram-sha-256) (in test.yaml)'],
    ['auth_type alias', { auth_type: 'scram' }, 'auth', 'auth_type: "scram" is not supported (write it as scram-sha-256; expected one of trust, password, md5, scram-sha-256) (in test.yaml)'],
    ['log_level', { log_level: 'verbose' }, 'log_level', 'log_level: "verbose" is not supported (expected one of fatal, error, warn, info, debug, trace, silent) (in test.yaml)'],
    ['log_level missing', { log_level: null }, 'log_level', 'log_level: an empty value is not supported (expected one of fatal, error, warn, info, debug, trace, silent) (in test.yaml)'],
    ['server_reset_query', { server_reset_query: ['x'] }, 'server_reset_query', 'server_reset_query: a list is not an SQL string (in test.yaml)'],
    ['auth_file', { auth_file: { a: 1 } }, 'auth_file', 'auth_file: a mapping is not a file path (in test.yaml)'],
    ['health_check_period 0', { health_check_period: 0 }, 'health_check_period', 'health_check_period: 0 is too short (at least 100ms) (in test.yaml)'],
    ['health_check_timeout', { health_check_timeout: '50ms' }, 'health_check_timeout', 'health_check_timeout: "50ms" is too short (at least 100ms) (in test.yaml)'],
    ['server_login_retry', { server_login_retry: '10ms' }, 'server_login_retry', 'server_login_retry: "10ms" is too short (at least 100ms) (in test.yaml)'],
    ['health_check_max_retries', { health_check_max_retries: 0 }, 'health_check_max_retries', 'health_check_max_retries: 0 is out of range (expected 1..1000) (in test.yaml)'],
    ['health_check_user empty', { health_check_user: '' }, 'health_check_user', 'health_check_user: "" is not a user name (expected a non-empty string) (in test.yaml)'],
    ['health_check_database', { health_check_database: null }, 'health_check_database', 'health_check_database: an empty value is not a database name (expected a non-empty string) (in test.yaml)'],
    ['failover_timeout', { failover_timeout: 'soon' }, 'failover_timeout', expect.stringMatching(/^failover_timeout: "soon" is not a duration/) as unknown as string],
    ['on_role_change', { on_role_change: ['a'] }, 'on_role_change', 'on_role_change: a list is not a shell command (in test.yaml)'],
    ['alias and name both', { pool_size: 1, default_pool_size: 2 }, 'pool_size', 'default_pool_size: given twice, also as pool_size (in test.yaml); keep one'],
  ])('%s', (_name, obj, key, message) => {
    const e = configError(() => parseConfigObject(obj, 'test.yaml'));
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('ConfigError');
    expect(e.key).toBe(key);
    expect(e.message).toEqual(message);
  });

  it.each<[string, CliFlags, NodeJS.ProcessEnv, string, string]>([
    ['env var named', NODE, { PGMUX_POOL_SIZE: 'abc' }, 'pool_size', 'PGMUX_POOL_SIZE: "abc" is not a whole number (expected 1..10000)'],
    ['flag named', { ...NODE, poolSize: 'abc' }, {}, 'pool_size', '--pool-size: "abc" is not a whole number (expected 1..10000)'],
    ['flag pool mode', { ...NODE, poolMode: 'stmt' }, {}, 'pool_mode', '--pool-mode: "stmt" is not supported (expected one of transaction, session)'],
    ['env alias and name', NODE, { PGMUX_AUTH: 'md5', PGMUX_AUTH_TYPE: 'md5' }, 'auth', 'PGMUX_AUTH_TYPE: given twice, also as PGMUX_AUTH; keep one'],
    ['min above pool', { ...NODE, poolSize: '5' }, { PGMUX_MIN_POOL_SIZE: '6' }, 'min_pool_size', 'min_pool_size: 6 is larger than pool_size 5 (expected 0..5)'],
    ['auth without file', { ...NODE, auth: 'md5' }, {}, 'auth_file', 'auth_file: auth md5 needs an auth file (set auth_file, PGMUX_AUTH_FILE or --auth-file) or auth_user for auth_query, or use auth trust'],
    ['missing auth file', { ...NODE, authFile: '/nonexistent/users.txt' }, {}, 'auth_file', 'auth_file: "/nonexistent/users.txt" does not exist (expected a readable userlist file)'],
    ['auth file is a directory', { ...NODE, authFile: dir }, {}, 'auth_file', `auth_file: ${JSON.stringify(dir)} is not a file (expected a readable userlist file)`],
  ])('%s', (_name, flags, env, key, message) => {
    const e = configError(() => loadConfig(flags, env));
    expect(e.key).toBe(key);
    expect(e.message).toBe(message);
  });

  it('auth_user (auth_query) stands in for an auth file', () => {
    expect(loadConfig({ ...NODE, auth: 'scram-sha-256' }, { PGMUX_AUTH_USER: 'pgmux_auth' }).authUser).toBe('pgmux_auth');
  });

  it('relative --auth-file resolves against cwd', () => {
    expect(loadConfig({ ...NODE, authFile: userlist.slice(dir.length + 1), auth: 'md5' }, {}, { cwd: dir }).authFile).toBe(userlist);
  });
});

describe('unknown keys', () => {
  it.each<[string, string]>([
    ['pool_szie', 'pool_szie: unknown key (in test.yaml); did you mean pool_size?'],
    ['poolSize', 'poolSize: unknown key (in test.yaml); did you mean pool_size?'],
    ['max-client-conn', 'max-client-conn: unknown key (in test.yaml); did you mean max_client_conn?'],
    ['server_idle_timout', 'server_idle_timout: unknown key (in test.yaml); did you mean server_idle_timeout?'],
    ['listen_port', 'listen_port: unknown key (in test.yaml); did you mean listen ("host:port")?'],
    ['default_pool_sz', 'default_pool_sz: unknown key (in test.yaml); did you mean default_pool_size?'],
    ['node', 'node: unknown key (in test.yaml); did you mean nodes?'],
    ['failover_command', 'failover_command: unknown key (in test.yaml); did you mean on_role_change?'],
    ['health_check_retries', 'health_check_retries: unknown key (in test.yaml); did you mean health_check_max_retries?'],
  ])('%s', (name, message) => {
    const e = configError(() => parseConfigObject({ [name]: 1 }, 'test.yaml'));
    expect(e.key).toBe(name);
    expect(e.message).toBe(message);
  });

  it('lists the known keys when nothing is close', () => {
    const e = configError(() => parseConfigObject({ frobnicate_everything: 1 }, 'test.yaml'));
    expect(e.message).toMatch(/^frobnicate_everything: unknown key \(in test\.yaml\); known keys: listen, http, unix_socket_dir, unix_socket_mode, unix_socket_group, nodes, pool_mode, pool_size, /);
  });
});

describe('TLS and access', () => {
  const load = (env: NodeJS.ProcessEnv) => loadConfig(NODE, env);

  it('client_tls allow/require needs a certificate and key', () => {
    const e = configError(() => load({ PGMUX_CLIENT_TLS: 'require' }));
    expect(e.key).toBe('client_tls_cert_file');
    expect(e.message).toBe('client_tls_cert_file: client_tls require needs a certificate and its key (set client_tls_cert_file and client_tls_key_file), or use client_tls disable');
    expect(configError(() => load({ PGMUX_CLIENT_TLS: 'allow', PGMUX_CLIENT_TLS_CERT_FILE: pki.server.cert })).key).toBe('client_tls_key_file');
    // Files are not read while client_tls is disable.
    expect(load({ PGMUX_CLIENT_TLS_CERT_FILE: join(dir, 'none.crt') }).clientTlsCertFile).toBe(join(dir, 'none.crt'));
  });

  it('unreadable or mismatched certificate files fail loading, naming the key', () => {
    const tlsEnv = { PGMUX_CLIENT_TLS: 'require', PGMUX_CLIENT_TLS_CERT_FILE: pki.server.cert, PGMUX_CLIENT_TLS_KEY_FILE: pki.server.key };
    let e = configError(() => load({ ...tlsEnv, PGMUX_CLIENT_TLS_CERT_FILE: join(dir, 'none.crt') }));
    expect(e.key).toBe('client_tls_cert_file');
    expect(e.message).toMatch(/^client_tls_cert_file: cannot read ".*none\.crt": no such file$/);
    e = configError(() => load({ ...tlsEnv, PGMUX_CLIENT_TLS_KEY_FILE: pki.ca.key }));
    expect(e.key).toBe('client_tls_key_file');
    expect(e.message).toMatch(/is not a usable private key/);
    e = configError(() => load({ ...tlsEnv, PGMUX_CLIENT_TLS_CIPHERS: 'NOPE' }));
    expect(e.key).toBe('client_tls_ciphers');
    e = configError(() => load({ PGMUX_SERVER_TLS: 'verify-ca', PGMUX_SERVER_TLS_CA_FILE: userlist }));
    expect(e.key).toBe('server_tls_ca_file');
    expect(e.message).toMatch(/holds no PEM certificate/);
  });

  it('hba_file is parsed at load; its errors name the file and line', () => {
    const bad = writeTemp('bad-hba.conf', 'host all all all trust\nhost all +grp all md5\n');
    const e = configError(() => load({ PGMUX_HBA_FILE: bad }));
    expect(e.key).toBe('hba_file');
    expect(e.message).toBe(`hba_file: ${bad}:2: "+grp": group membership (+role) is not supported by pgmux; list the user names instead`);
    expect(configError(() => load({ PGMUX_HBA_FILE: join(dir, 'none.conf') })).message).toMatch(/none\.conf:0: cannot read the HBA file: no such file/);
  });

  it('an hba_file method other than trust/reject needs auth_file', () => {
    const e = configError(() => load({ PGMUX_HBA_FILE: hbaFile }));
    expect(e.key).toBe('auth_file');
    expect(e.message).toBe(`auth_file: ${hbaFile}:1 uses scram-sha-256, which needs an auth file (set auth_file, PGMUX_AUTH_FILE or --auth-file)`);
    expect(load({ PGMUX_HBA_FILE: hbaFile, PGMUX_AUTH_FILE: userlist }).hbaFile).toBe(hbaFile);
  });

  it('resolves relative TLS and HBA paths against the config file directory', () => {
    const sub = join(dir, 'tls-sub');
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, 'hba.conf'), 'host all all all trust\n');
    const file = join(sub, 'pgmux.yaml');
    writeFileSync(file, 'hba_file: hba.conf\nserver_tls_ca_file: ca.crt\nnodes: [db1]\n');
    const c = loadConfig({ config: file }, {}, { cwd: '/' });
    expect(c.hbaFile).toBe(join(sub, 'hba.conf'));
    expect(c.serverTlsCaFile).toBe(join(sub, 'ca.crt')); // server_tls disable: not read
  });

  it.each<[string, unknown, RegExp]>([
    ['client_tls', 'prefer', /"prefer" is not supported \(write it as allow; expected one of disable, allow, require\)/],
    ['client_tls', 'verify-full', /pgmux does not verify client certificates; use require/],
    ['server_tls', 'allow', /use prefer or disable/],
    ['client_tls_min_version', 'TLSv1.1', /"TLSv1.1" is too old \(expected TLSv1.2 or TLSv1.3\)/],
    ['client_tls_min_version', 'SSLv3', /is not a TLS version/],
    ['max_user_connections', -1, /out of range \(expected 0..1000000\)/],
    ['max_unauthenticated_connections', 'many', /not a whole number/],
    ['read_only_functions', ['a.b.c'], /"a.b.c" is not a function name \(expected name, schema.name, "Quoted" or a prefix ending in \*\)/],
    ['write_functions', ['f(1)'], /"f\(1\)" is not a function name/],
    ['function_catalog_refresh', 'often', /not a duration/],
    ['query_cache_mode', 'shared', /local/],
  ])('%s: %j is refused', (key, value, message) => {
    expect(() => yamlValue(key, value)).toThrow(message);
  });

  it('accepts TLS versions as 1.3, tlsv1.3 or a number', () => {
    expect(yamlValue('client_tls_min_version', 1.3)).toBe('TLSv1.3');
    expect(yamlValue('client_tls_min_version', 'tlsv1.2')).toBe('TLSv1.2');
  });

  it('points PgBouncer spellings at the pgmux keys', () => {
    expect(configError(() => parseConfigObject({ client_tls_sslmode: 'require' }, 't.yaml')).message).toMatch(/did you mean client_tls\?/);
    expect(configError(() => parseConfigObject({ auth_hba_file: 'x' }, 't.yaml')).message).toMatch(/did you mean hba_file\?/);
  });
});

describe('configToObject', () => {
  it('round-trips through parseConfigObject and masks the server password', () => {
    const c = loadConfig({ ...NODE, listen: '[::1]:7000', http: '127.0.0.1:0' }, {
      PGMUX_SERVER_PASSWORD: 'pw',
      PGMUX_HEALTH_CHECK_PASSWORD: 'hpw',
      PGMUX_ON_ROLE_CHANGE: 'logger "$PGMUX_EVENT"',
      PGMUX_IDLE_TRANSACTION_TIMEOUT: '1500ms',
      PGMUX_MAX_MESSAGE_SIZE: '1536',
    });
    const shown = configToObject(c);
    expect(shown.server_password).toBe('********');
    expect(shown.health_check_password).toBe('********');
    expect(shown.listen).toBe('[::1]:7000');
    expect(shown.query_wait_timeout).toBe('2m');
    expect(shown.idle_transaction_timeout).toBe('1500ms');
    expect(shown.max_message_size).toBe(1536);
    expect({ ...DEFAULTS, ...parseConfigObject(configToObject(c, { reveal: true }), 'x') }).toEqual(c);
  });
});

describe('CLI', () => {
  function capture() {
    const io = { outText: '', errText: '', out: (s: string) => void (io.outText += s), err: (s: string) => void (io.errText += s), env: {} as NodeJS.ProcessEnv };
    return io;
  }

  // In the settings schema's order (docs/configuration.md's sections).
  const FLAGS = ['--config', '--listen', '--http', '--node', '--pool-mode', '--pool-size', '--workers', '--auth', '--auth-file', '--log-level'];
  const ENVS = ['PGMUX_CONFIG', 'PGMUX_LISTEN', 'PGMUX_NODES', 'PGMUX_POOL_MODE', 'PGMUX_POOL_SIZE', 'PGMUX_AUTH', 'PGMUX_AUTH_FILE', 'PGMUX_HTTP', 'PGMUX_LOG_LEVEL'];
  const DEFAULT_TEXTS = ['default: 0.0.0.0:6432', 'default: transaction', 'default: 20', 'default: trust', 'default: info', 'default: off'];

  it.each([[['--help']], [['start', '--help']], [['help', 'start']]])('%j lists every flag, env var and default', async (argv) => {
    const io = capture();
    expect(await main(argv, io)).toBe(0);
    const text = io.outText.replace(/\s+/g, ' '); // help wraps to the terminal width
    for (const s of [...FLAGS, ...ENVS, ...DEFAULT_TEXTS]) expect(text).toContain(s);
  });

  it('--help lists the commands and the demo options', async () => {
    const io = capture();
    await main(['--help'], io);
    const text = io.outText.replace(/\s+/g, ' ');
    for (const s of ['start', 'demo', 'check-config', '--replicas', 'default: 127.0.0.1:6432', 'default: 2)']) expect(text).toContain(s);
  });

  it('buildProgram has the three commands, start by default', () => {
    const program = buildProgram({});
    expect(program.name()).toBe('pgmux');
    expect(program.commands.map((c) => c.name())).toEqual(['start', 'demo', 'check-config', 'import', 'classify', 'cache']);
    const start = program.commands[0]!;
    expect(start.options.map((o) => o.long)).toEqual(FLAGS);
  });

  it('check-config prints the merged YAML with the password masked', async () => {
    const io = capture();
    io.env = { PGMUX_SERVER_PASSWORD: 'hunter2', PGMUX_HEALTH_CHECK_PASSWORD: 'hunter3', PGMUX_POOL_SIZE: '8' };
    expect(await main(['check-config', '--node', 'db1:5432@2', '--node', '[::1]:5433'], io)).toBe(0);
    expect(io.errText).toBe('');
    const printed = parseYaml(io.outText) as Record<string, unknown>;
    expect(printed).toMatchObject({ pool_size: 8, server_password: '********', nodes: ['db1:5432@2', '[::1]:5433@1'], listen: '0.0.0.0:6432' });
    expect(printed.health_check_password).toBe('********');
    expect(io.outText).not.toMatch(/hunter[23]/);
  });

  it.each<[string, string[], NodeJS.ProcessEnv, number, RegExp]>([
    ['config error', ['check-config', '--node', 'db1', '--pool-size', 'abc'], {}, 2, /^pgmux: --pool-size: "abc" is not a whole number \(expected 1\.\.10000\)\n$/],
    ['env config error', ['check-config', '--node', 'db1'], { PGMUX_LOG_LEVEL: 'loud' }, 2, /^pgmux: PGMUX_LOG_LEVEL: "loud" is not supported/],
    ['no node', ['check-config'], {}, 2, /^pgmux: nodes: at least one --node HOST:PORT is required/],
    ['unknown option', ['check-config', '--pool-sise', '3'], {}, 2, /^pgmux: unknown option '--pool-sise'.*--pool-size/],
    ['missing option value', ['check-config', '--listen'], {}, 2, /^pgmux: option '--listen <host:port>' argument missing\n$/],
    ['unknown command', ['strat'], {}, 2, /^pgmux: unknown command 'strat' \(did you mean start\?\); see pgmux --help\n$/],
    ['demo replicas', ['demo', '--replicas', 'many'], {}, 2, /^pgmux: --replicas: "many" is not a whole number in range \(expected 0\.\.10\)\n$/],
    ['demo listen', ['demo', '--listen', 'nope'], {}, 2, /^pgmux: --listen: "nope" has no port \(expected HOST:PORT\)\n$/],
  ])('%s: one line on stderr, exit %d', async (_name, argv, env, code, message) => {
    const io = capture();
    io.env = env;
    expect(await main(argv, io)).toBe(code);
    expect(io.errText).toMatch(message);
    expect(io.errText.trimEnd().split('\n')).toHaveLength(1);
  });

  describe('long-running commands', () => {
    function reset() {
      fake.startError = null;
      fake.closeError = null;
      fake.started.length = 0;
      fake.demos.length = 0;
      fake.closed.length = 0;
    }

    async function runUntil(signal: string, argv: string[], io: ReturnType<typeof capture>): Promise<number> {
      const signals = new EventEmitter();
      const done = main(argv, { ...io, signals });
      await vi.waitFor(() => expect(signals.listenerCount('SIGTERM')).toBe(1));
      expect(signals.listenerCount('SIGINT')).toBe(1);
      signals.emit(signal, signal);
      const code = await done;
      expect(signals.listenerCount('SIGINT') + signals.listenerCount('SIGTERM')).toBe(0);
      return code;
    }

    it.each(['SIGTERM', 'SIGINT'])('start serves until %s, closes, exits 0', async (signal) => {
      reset();
      const io = capture();
      io.env = { PGMUX_POOL_SIZE: '3' };
      expect(await runUntil(signal, ['--node', 'db1', '--log-level', 'silent'], io)).toBe(0);
      expect(fake.started).toEqual([{ ...DEFAULTS, poolSize: 3, logLevel: 'silent', nodes: [{ host: 'db1', port: 5432, weight: 1 }] }]);
      expect(fake.closed).toEqual([signal]);
      expect(io.errText).toBe('');
    });

    it('a failing close exits 1', async () => {
      reset();
      fake.closeError = new Error('stuck');
      expect(await runUntil('SIGTERM', ['start', '--node', 'db1', '--log-level', 'silent'], capture())).toBe(1);
    });

    it('a failing start prints one line and exits 1', async () => {
      reset();
      fake.startError = new Error('listen EADDRINUSE: address already in use 0.0.0.0:6432');
      const io = capture();
      expect(await main(['start', '--node', 'db1', '--log-level', 'silent'], io)).toBe(1);
      expect(io.errText).toBe('pgmux: listen EADDRINUSE: address already in use 0.0.0.0:6432\n');
    });

    it('a ConfigError from start exits 2', async () => {
      reset();
      fake.startError = new ConfigError('auth_file', 'auth_file: line 3 is not "user" "secret"');
      const io = capture();
      expect(await main(['start', '--node', 'db1', '--log-level', 'silent'], io)).toBe(2);
      expect(io.errText).toBe('pgmux: auth_file: line 3 is not "user" "secret"\n');
    });

    it('demo takes PGMUX_* settings as start does, its flags win, and it listens on loopback by default', async () => {
      reset();
      const io = capture();
      const file = writeTemp('demo.yaml', 'listen: 0.0.0.0:7777\nmax_client_conn: 77\n');
      io.env = { PGMUX_POOL_SIZE: '9', PGMUX_POOL_MODE: 'transaction', PGMUX_CONFIG: file, PGMUX_UNIX_SOCKET_DIR: 'off' };
      expect(await runUntil('SIGINT', ['demo', '--replicas', '3', '--pool-mode', 'session', '--log-level', 'silent'], io)).toBe(0);
      expect(fake.demos).toHaveLength(1);
      const demo = fake.demos[0] as { replicas: number; config: Config; logger: { info: unknown } };
      expect(demo.replicas).toBe(3);
      expect(demo.config).toMatchObject({ listen: { host: '127.0.0.1', port: 6432 }, poolMode: 'session', poolSize: 9, maxClientConn: 77, unixSocketDir: null });
      expect(typeof demo.logger.info).toBe('function');
      expect(fake.closed).toEqual(['SIGINT']);
      // PGMUX_LISTEN (like --listen) moves it.
      reset();
      io.env = { PGMUX_LISTEN: '127.0.0.1:7001' };
      expect(await runUntil('SIGINT', ['demo', '--log-level', 'silent'], io)).toBe(0);
      expect((fake.demos[0] as { config: Config }).config.listen).toEqual({ host: '127.0.0.1', port: 7001 });
    });
  });

  it('--version prints the version', async () => {
    const io = capture();
    expect(await main(['--version'], io)).toBe(0);
    expect(io.outText).toMatch(/^\d+\.\d+\.\d+/);
  });
});

describe('logger', () => {
  function sink() {
    const stream = new PassThrough();
    const lines: string[] = [];
    stream.on('data', (d: Buffer) => lines.push(...d.toString().split('\n').filter(Boolean)));
    return { stream, lines };
  }

  it('writes JSON lines at or above the level, with secrets redacted', async () => {
    const { stream, lines } = sink();
    const log = createLogger('info', { destination: stream });
    log.debug('hidden');
    log.info({ password: 'p1', user: { name: 'u', password: 'p2' }, secret: 's', config: { serverPassword: 'p3', healthCheckPassword: 'p4' } }, 'hello');
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(1);
    const rec = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(rec).toMatchObject({ level: 30, msg: 'hello', password: '[redacted]', user: { name: 'u', password: '[redacted]' }, secret: '[redacted]', config: { serverPassword: '[redacted]', healthCheckPassword: '[redacted]' } });
    expect(typeof rec.time).toBe('string');
    expect(lines[0]).not.toMatch(/p1|p2|p3|p4|"s"/);
  });

  it('pretty output is not JSON and still redacts', async () => {
    const { stream, lines } = sink();
    const log = createLogger('debug', { destination: stream, pretty: true });
    log.debug({ password: 'p1' }, 'pretty hello');
    // pino-pretty writes asynchronously.
    await expect.poll(() => lines.join('\n')).toContain('pretty hello');
    const text = lines.join('\n');
    expect(text).toContain('DEBUG');
    expect(text).not.toContain('p1');
    expect(() => JSON.parse(lines[0]!)).toThrow();
  });
});
