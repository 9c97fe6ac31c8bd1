// `pgmux import`: pgbouncer.ini / pgpool.conf -> pgmux YAML. Every produced YAML is fed back
// through load.ts's parseConfigObject, so the keys and values are exactly what pgmux accepts.

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { detectKind, importConfig, ImportError, type ImportOptions } from '../../src/import/importConfig.js';
import { pgpoolAesDecrypt, pgpoolAesEncrypt } from '../../src/import/poolPasswd.js';
import { defaultSourceSecurity, weakenings } from '../../src/import/security.js';
import { matchHba, parseHba } from '../../src/auth/hba.js';
import { CONFIG_KEYS, loadConfig, parseConfigObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { main } from '../../src/cli.js';
import { makeTestPki, type TestPki } from '../support/certs.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');
const PGBOUNCER_INI = join(FIXTURES, 'pgbouncer.ini');
const PGPOOL_CONF = join(FIXTURES, 'pgpool.conf');
const pgbouncerText = readFileSync(PGBOUNCER_INI, 'utf8');
const pgpoolText = readFileSync(PGPOOL_CONF, 'utf8');

/**
 * The keys other #15 branches add to the schema (databases, users, the client limits, the
 * Unix socket) are checked on the emitted YAML until the schema knows them; this removes them
 * before load.ts reads the rest. Once merged, CONFIG_KEYS has them and nothing is removed.
 */

/** The produced YAML as pgmux reads it; throws (failing the test) if pgmux would refuse it. */
function load(yaml: string): Partial<Config> {
  return parseConfigObject(parse(yaml) as Record<string, unknown>, 'imported.yaml');
}

function run(text: string, kind?: ImportOptions | 'pgbouncer' | 'pgpool') {
  const r = importConfig(text, kind);
  return { ...r, config: load(r.yaml), raw: parse(r.yaml) as Record<string, unknown> };
}

const warningFor = (warnings: string[], setting: string) => warnings.filter((w) => w.startsWith(`${setting} = `));

describe('detectKind', () => {
  it('tells the two formats apart and refuses anything else', () => {
    expect(detectKind(pgbouncerText)).toBe('pgbouncer');
    expect(detectKind(pgpoolText)).toBe('pgpool');
    expect(detectKind('[pgbouncer]\nlisten_port = 6432\n')).toBe('pgbouncer');
    expect(detectKind('  [Databases]\nx = host=a\n')).toBe('pgbouncer');
    expect(detectKind("backend_hostname0 = 'db'\n")).toBe('pgpool');
    expect(detectKind("backend_clustering_mode = 'streaming_replication'\n#backend_hostname0 = 'host1'\n")).toBe('pgpool');
    expect(detectKind('# backend_hostname0 = commented out\nport = 9999\n')).toBeNull();
    expect(detectKind('{"name": "pgmux"}')).toBeNull();
    expect(() => importConfig('listen: 1.2.3.4:5432\n')).toThrow(ImportError);
    expect(() => importConfig('listen: 1.2.3.4:5432\n')).toThrow(/--kind pgbouncer\|pgpool/);
  });
});

describe('pgbouncer.ini', () => {
  const r = run(pgbouncerText);

  it('produces YAML that parseConfigObject accepts, with the translated values', () => {
    expect(r.config).toEqual({
      listen: { host: '0.0.0.0', port: 6543 },
      unixSocketDir: '/var/run/postgresql',
      nodes: [
        { host: 'db1.internal', port: 5432, weight: 1 },
        { host: 'db2.internal', port: 5432, weight: 1 },
        { host: 'db3.internal', port: 5432, weight: 1 },
      ],
      poolMode: 'transaction',
      poolSize: 25,
      minPoolSize: 5,
      maxClientConn: 2000,
      auth: 'scram-sha-256',
      authFile: '/etc/pgbouncer/userlist.txt',
      clientTls: 'require',
      queryWaitTimeoutMs: 30_000,
      serverIdleTimeoutMs: 300_000,
      serverLifetimeMs: 1_800_000,
      clientIdleTimeoutMs: 0,
      idleTransactionTimeoutMs: 60_000,
      serverConnectTimeoutMs: 5000,
      serverLoginRetryMs: 3000,
      clientLoginTimeoutMs: 20_000,
      maxMessageBytes: 16_777_216,
      maxPreparedStatements: 100,
      serverResetQuery: 'DISCARD ALL',
      adminUsers: ['postgres', 'pgbouncer_admin'],
      statsUsers: ['monitoring'],
      databases: [
        { name: 'app', dbname: 'app', user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
        { name: 'app_ro', dbname: 'app', user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
        { name: 'reports', dbname: 'reports', user: null, password: null, poolSize: 5, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
        // Its password is its own (not a global server_password).
        { name: 'app_admin', dbname: null, user: 'admin', password: "s3cr'et", poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
        { name: '*', dbname: null, user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' },
      ],
      users: [{ name: 'batch', poolMode: 'session', maxUserConnections: null }],
    });
  });

  it('writes plain PgBouncer-style numbers (seconds) and pgmux key names', () => {
    expect(r.raw.query_wait_timeout).toBe(30);
    expect(r.raw.pool_size).toBe(25);
    expect(r.raw.max_message_size).toBe(16_777_216);
    expect(Object.keys(r.raw)).not.toContain('default_pool_size');
    expect(Object.keys(r.raw)).not.toContain('auth_type');
    expect(Object.keys(r.raw)[0]).toBe('listen');
  });

  it('warns about statement pooling, the servers behind [databases] and every setting it drops', () => {
    expect(r.warnings.some((w) => /^pool_mode = statement: .*using transaction/.test(w))).toBe(true);
    expect(r.warnings.some((w) => /^\[databases\]: the entries name 3 servers \(db1\.internal:5432, db2\.internal:5432, db3\.internal:5432\); all became nodes of one cluster/.test(w))).toBe(true);
    for (const s of ['reserve_pool_size', 'logfile', 'pidfile']) {
      expect(warningFor(r.warnings, s), s).toHaveLength(1);
      expect(warningFor(r.warnings, s)[0]).toMatch(/no pgmux equivalent.*not carried over$/);
    }
    expect(r.weakenings).toEqual([]);
    // Settings that were translated get no "no equivalent" line.
    for (const s of ['default_pool_size', 'listen_port', 'auth_file', 'max_packet_size', 'server_lifetime', 'unix_socket_dir', 'client_tls_sslmode']) {
      expect(warningFor(r.warnings, s), s).toHaveLength(0);
    }
  });

  it('never echoes a password in a warning', () => {
    expect(r.warnings.join('\n')).not.toMatch(/s3cr/);
  });

  it('puts a header comment with the warnings on top of the YAML', () => {
    expect(r.yaml.startsWith('# pgmux configuration imported from a PgBouncer pgbouncer.ini by `pgmux import`.\n')).toBe(true);
    expect(r.yaml).toContain(`# Not carried over or changed (${r.warnings.length}):`);
    expect(r.yaml).toContain('#   - pool_mode = statement:');
  });

  it('passes the full loadConfig validation once the auth file exists', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-import-'));
    try {
      writeFileSync(join(dir, 'userlist.txt'), '"app" "secret"\n');
      // TLS with certificates is round-tripped in 'round trip: TLS required + HBA'.
      const raw = parse(r.yaml.replace('/etc/pgbouncer/userlist.txt', 'userlist.txt')) as Record<string, unknown>;
      delete raw.client_tls;
      writeFileSync(join(dir, 'pgmux.yaml'), stringify(raw));
      const c = loadConfig({ config: join(dir, 'pgmux.yaml') }, {});
      expect(c.poolSize).toBe(25);
      expect(c.authFile).toBe(join(dir, 'userlist.txt'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps auth types without weakening; trust, cert and pam are weakenings', () => {
    const auth = (t: string) => run(`[pgbouncer]\nauth_type = ${t}\nauth_file = /etc/u.txt\n[databases]\n* = host=a\n`);
    for (const [t, want] of [['md5', 'md5'], ['plain', 'password'], ['scram-sha-256', 'scram-sha-256'], ['any', 'trust']] as const) {
      const x = auth(t);
      expect(x.config.auth, t).toBe(want);
      expect(x.weakenings, t).toEqual([]);
    }
    // PgBouncer's trust still needs the name in auth_file; pgmux's trust takes any name.
    expect(auth('trust').config.auth).toBe('trust');
    expect(auth('trust').weakenings).toEqual([
      'auth_type = trust: the source accepts only the user names in auth_file (or found by auth_query), without a password; ' +
        'the result (auth trust) accepts every user name without a password',
    ]);
    // With the auth file readable, an HBA file trusting exactly its users keeps PgBouncer's meaning.
    const ini = '[pgbouncer]\nauth_type = trust\nauth_file = /etc/u.txt\n[databases]\n* = host=a\n';
    const listed = run(ini, { readFile: (p) => (p === '/etc/u.txt' ? '"app" ""\n"o""brien" ""\n' : null), authFilePath: '/out/pgmux-userlist.txt' });
    expect(listed.weakenings).toEqual([]);
    expect(listed.config.auth).toBe('trust');
    expect(listed.config.hbaFile).toBe('/out/pgmux-hba.conf');
    const hba = listed.files.find((f) => f.path === '/out/pgmux-hba.conf')!.content;
    const rules = parseHba(hba, 'pgmux-hba.conf');
    const q = (user: string) => matchHba(rules, { ssl: false, database: 'db', user, address: '10.1.2.3' });
    expect(q('app')?.method).toBe('trust');
    expect(q('o"brien')?.method).toBe('trust');
    expect(q('intruder')).toBeNull();
    expect(matchHba(rules, { ssl: false, database: 'db', user: 'app', address: null })?.method).toBe('trust');
    for (const t of ['cert', 'pam']) {
      const x = auth(t);
      expect(x.config.auth, t).toBeUndefined();
      expect(x.weakenings, t).toHaveLength(1);
      expect(x.weakenings[0], t).toMatch(new RegExp(`^auth_type = ${t}: the source .*; the result \\(auth trust\\) accepts every user name without a password$`));
    }
    // No auth_type: PgBouncer's default md5 is carried, not pgmux's default trust.
    const none = run('[pgbouncer]\nauth_file = /etc/u.txt\n[databases]\n* = host=a\n');
    expect(none.config.auth).toBe('md5');
    expect(none.weakenings).toEqual([]);
  });

  it('handles multi-host entries, Unix sockets, bare listen_port and listen_addr lists', () => {
    const x = run(
      '[databases]\n' +
        "a = host=db1,db2 port=5433 password='p w'\n" +
        'b = host=/var/run/postgresql dbname=b\n' +
        'c = dbname=c\n' +
        'd = host=db2 port=5433\n' +
        '[pgbouncer]\nlisten_port = 7000\n',
    );
    expect(x.config.nodes).toEqual([
      { host: 'db1', port: 5433, weight: 1 },
      { host: 'db2', port: 5433, weight: 1 },
    ]);
    // A password= belongs to its entry only, never a global server_password.
    expect(x.config.serverPassword).toBeUndefined();
    expect((x.raw.databases as Record<string, unknown>).a).toEqual({ password: 'p w' });
    // PgBouncer without listen_addr took Unix-socket clients only: pgmux stays on loopback.
    expect(x.config.listen).toEqual({ host: '127.0.0.1', port: 7000 });
    expect(x.warnings.some((w) => /listen_addr is not set .*TCP 127\.0\.0\.1 \(loopback only\)/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /host=\/var\/run\/postgresql is a Unix socket directory/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /\[databases\] c: no host=/.test(w))).toBe(true);

    const y = run('[pgbouncer]\nlisten_addr = 10.0.0.1, 127.0.0.1\nlisten_port = 6432\n[databases]\nx = host=::1\n');
    expect(y.config.listen).toEqual({ host: '10.0.0.1', port: 6432 });
    expect(y.config.nodes).toEqual([{ host: '::1', port: 5432, weight: 1 }]);
    expect(y.raw.nodes).toEqual(['[::1]:5432']);
  });

  it('drops values pgmux refuses, with a warning, so the output still loads', () => {
    const x = run('[pgbouncer]\ndefault_pool_size = 0\nmin_pool_size = 50\nmax_packet_size = 12\n[databases]\nx = host=a\n');
    expect(x.config.poolSize).toBeUndefined();
    expect(x.config.maxMessageBytes).toBeUndefined();
    expect(x.warnings.some((w) => /^default_pool_size = 0: not carried over, pgmux refuses the value: pool_size: 0 is out of range/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /^max_packet_size = 12: not carried over/.test(w))).toBe(true);

    const y = run('[pgbouncer]\ndefault_pool_size = 10\nmin_pool_size = 50\n[databases]\nx = host=a\n');
    expect(y.config.poolSize).toBe(10);
    expect(y.config.minPoolSize).toBeUndefined();
    expect(y.warnings.some((w) => /min_pool_size 50 is larger than pool_size 10/.test(w))).toBe(true);
  });

  it('says when there are no nodes or auth lacks an auth file', () => {
    const x = run('[pgbouncer]\nauth_type = md5\n');
    expect(x.config.nodes).toBeUndefined();
    expect(x.warnings.some((w) => /no PostgreSQL server found: add nodes/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /auth md5 needs auth_file/.test(w))).toBe(true);
  });
});

describe('pgpool.conf', () => {
  const r = run(pgpoolText);

  it('produces YAML that parseConfigObject accepts, with the translated values', () => {
    expect(r.config).toEqual({
      listen: { host: '0.0.0.0', port: 9999 },
      unixSocketDir: '/var/run/postgresql',
      nodes: [
        { host: 'pg-primary', port: 5432, weight: 0 },
        { host: 'pg-replica1', port: 5433, weight: 1 },
        { host: 'pg-replica2', port: 5432, weight: 3 },
      ],
      maxClientConn: 64,
      serverIdleTimeoutMs: 600_000,
      clientIdleTimeoutMs: 300_000,
      serverConnectTimeoutMs: 10_000,
      clientLoginTimeoutMs: 30_000,
      logLevel: 'warn',
      healthCheckPeriodMs: 5000,
      healthCheckTimeoutMs: 20_000,
      healthCheckMaxRetries: 3,
      healthCheckUser: 'pgpool',
      healthCheckPassword: "hc'pass",
      healthCheckDatabase: 'postgres',
      maxLagBytes: 10_000_000,
      maxLagMs: 2500,
      writeFunctions: ['nextval', 'setval', 'my_writer'],
    });
    expect(r.raw.nodes).toEqual(['pg-primary:5432@0', 'pg-replica1:5433@1', 'pg-replica2:5432@3']);
  });

  it('explains what it changed or dropped', () => {
    const has = (re: RegExp) => expect(r.warnings.some((w) => re.test(w)), String(re)).toBe(true);
    has(/^backend_weight: pgmux weights are whole numbers; 0:0\.5:1\.5 became 0:1:3/);
    has(/^num_init_children = 64 -> max_client_conn: .*not process-per-client/);
    has(/^max_pool = 4: not carried over: .*up to 256 per node/);
    has(/^failover_command = .*pgmux never promotes.*on_role_change/);
    has(/^health_check_max_retries = 2 -> 3/);
    has(/^delay_threshold_by_time = 2500: read as milliseconds/);
    has(/^sr_check_period, sr_check_user, sr_check_password: note:/);
    has(/pool_mode transaction .* set pool_mode: session/);
    // memory_cache_enabled = off is pgmux's default too: nothing to say, nothing written.
    expect(warningFor(r.warnings, 'memory_cache_enabled')).toHaveLength(0);
    expect(r.raw.query_cache).toBeUndefined();
    for (const s of ['child_life_time', 'health_check_retry_delay', 'use_watchdog', 'wd_hostname', 'pcp_port']) {
      expect(warningFor(r.warnings, s), s).toHaveLength(1);
      expect(warningFor(r.warnings, s)[0], s).toMatch(/no pgmux equivalent.*not carried over$/);
    }
    expect(warningFor(r.warnings, 'backend_data_directory0')).toHaveLength(1);
    // Empty follow_primary_command and the default ALLOW_TO_FAILOVER flag need no words.
    expect(r.warnings.some((w) => w.startsWith('follow_primary_command'))).toBe(false);
    expect(r.warnings.some((w) => w.startsWith('backend_flag'))).toBe(false);
    expect(r.warnings.join('\n')).not.toMatch(/secret|hc'pass/);
  });

  it('load_balance_mode off: every weight 0 and reads fall back to the primary', () => {
    const x = run("backend_hostname0 = 'a'\nbackend_hostname1 = 'b'\nbackend_weight1 = 2\nload_balance_mode = off\n");
    expect(x.config.nodes).toEqual([
      { host: 'a', port: 5432, weight: 0 },
      { host: 'b', port: 5432, weight: 0 },
    ]);
    expect(x.config.fallbackToPrimary).toBe(true);
    expect(x.warnings.some((w) => /^load_balance_mode = off: every node got weight 0 .* all reads go to the current primary/.test(w))).toBe(true);
  });

  it('read_only_function_list and white_function_list become read_only_functions', () => {
    const x = run("backend_hostname0 = 'a'\nread_only_function_list = 'peek,app.look,^get_.*'\nwhite_function_list = 'peek,uuid_next'\n");
    expect(x.config.readOnlyFunctions).toEqual(['peek', 'app.look', 'uuid_next']);
    expect(x.warnings.some((w) => /^read_only_function_list: \^get_\.\*: regular expressions are not supported/.test(w))).toBe(true);
    expect(warningFor(x.warnings, 'white_function_list')).toHaveLength(0);
  });

  it('warns that a weighted primary takes reads, like Pgpool-II', () => {
    const x = run("backend_hostname0 = 'a'\nbackend_hostname1 = 'b'\n");
    expect(x.config.nodes?.map((n) => n.weight)).toEqual([1, 1]);
    expect(x.warnings.some((w) => /the primary takes reads too/.test(w))).toBe(true);
  });

  it('delay_threshold_by_time units, and 0 meaning off', () => {
    expect(run("backend_hostname0 = 'a'\ndelay_threshold_by_time = '10s'\n").config.maxLagMs).toBe(10_000);
    expect(run("backend_hostname0 = 'a'\ndelay_threshold_by_time = 1min\n").config.maxLagMs).toBe(60_000);
    const zero = run("backend_hostname0 = 'a'\ndelay_threshold_by_time = 0\ndelay_threshold = 0\n");
    expect(zero.config.maxLagMs).toBeUndefined();
    expect(zero.config.maxLagBytes).toBeNull();
    expect(zero.warnings.some((w) => /default max_lag_ms \(10s\) applies; set max_lag_ms: off/.test(w))).toBe(true);
  });

  it('health checks: 0 = off in Pgpool-II, sr_check login as the health check login', () => {
    const x = run(
      "backend_hostname0 = 'a'\nhealth_check_period = 0\nsr_check_user = 'mon'\nsr_check_password = 'pw'\nsr_check_database = 'postgres'\n",
    );
    expect(x.config.healthCheckPeriodMs).toBeUndefined();
    expect(x.config.healthCheckUser).toBe('mon');
    expect(x.config.healthCheckPassword).toBe('pw');
    expect(x.warnings.some((w) => /^health_check_period = 0 \(off in Pgpool-II\)/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /^sr_check_user\/password\/database -> health_check_\*/.test(w))).toBe(true);
  });

  it('listen defaults follow Pgpool-II (localhost:9999)', () => {
    expect(run("backend_hostname0 = 'a'\nport = 5433\n").config.listen).toEqual({ host: 'localhost', port: 5433 });
    expect(run("backend_hostname0 = 'a'\nlisten_addresses = '*'\n").config.listen).toEqual({ host: '0.0.0.0', port: 9999 });
    // Never pgmux's own default (every address): Pgpool-II's is localhost, and '' means no TCP at all.
    expect(run("backend_hostname0 = 'a'\n").config.listen).toEqual({ host: 'localhost', port: 9999 });
    expect(run("backend_hostname0 = 'a'\nlisten_addresses = ''\n").config.listen).toEqual({ host: '127.0.0.1', port: 9999 });
    // PgBouncer without listen_addr / listen_port took Unix-socket clients on 6432 only.
    expect(run('[databases]\n* = host=a\n').config.listen).toEqual({ host: '127.0.0.1', port: 6432 });
  });

  it('an explicit kind wins over detection', () => {
    const x = importConfig("[pgbouncer]\nbackend_hostname0 = 'a'\n", 'pgpool');
    expect(load(x.yaml).nodes).toEqual([{ host: 'a', port: 5432, weight: 1 }]);
  });
});

const IMPORT_FIXTURES = join(FIXTURES, 'import');
const POOL_KEY = 'pgmux-test-key';

/**
 * Imports a fixture as if its config directory had been copied to a fresh temporary directory
 * (`/etc/pgbouncer/` in the file points there), writes the YAML and the files the importer
 * produced next to each other, and loads the result with pgmux's own loader (loadConfig: every
 * key parsed, certificates, HBA and auth files read).
 */
function roundTrip(fixture: string, files: Record<string, string>, opts: Partial<ImportOptions> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'pgmux-import-rt-'));
  dirs.push(dir);
  for (const [name, from] of Object.entries(files)) copyFileSync(from, join(dir, name));
  const text = readFileSync(fixture, 'utf8').replaceAll('/etc/pgbouncer/', `${dir}/`);
  const r = importConfig(text, { sourceDir: dir, authFilePath: 'pgmux-userlist.txt', pgpoolKey: POOL_KEY, ...opts });
  for (const f of r.files) writeFileSync(resolve(dir, f.path), f.content, { mode: 0o600 });
  const raw = parse(r.yaml) as Record<string, unknown>;
  writeFileSync(join(dir, 'pgmux.yaml'), r.yaml);
  const config = loadConfig({ config: join(dir, 'pgmux.yaml') }, {});
  return { ...r, dir, raw, config };
}

const dirs: string[] = [];
let pki: TestPki;
beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => {
  pki?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('round trip: TLS required + HBA (pgbouncer-tls-hba.ini)', () => {
  const fixture = join(IMPORT_FIXTURES, 'pgbouncer-tls-hba.ini');
  const files = () => ({
    'server.crt': pki.server.cert, 'server.key': pki.server.key, 'ca.crt': pki.ca.cert,
    'pg_hba.conf': join(IMPORT_FIXTURES, 'pgbouncer_hba.conf'), 'userlist.txt': join(IMPORT_FIXTURES, 'userlist.txt'),
  });

  it('carries client TLS, server TLS, the HBA file and the admin users; pgmux loads it', () => {
    const x = roundTrip(fixture, files());
    expect(x.weakenings).toEqual([]);
    const c = x.config;
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 6432 });
    expect(c.nodes).toEqual([{ host: '10.0.0.11', port: 5432, weight: 1 }, { host: '10.0.0.12', port: 5432, weight: 1 }]);
    expect(c.clientTls).toBe('require');
    expect(c.clientTlsCertFile).toBe(join(x.dir, 'server.crt'));
    expect(c.clientTlsKeyFile).toBe(join(x.dir, 'server.key'));
    expect(c.clientTlsCaFile).toBe(join(x.dir, 'ca.crt'));
    expect(c.clientTlsMinVersion).toBe('TLSv1.2');
    expect(c.clientTlsCiphers).toBeNull();
    expect(c.serverTls).toBe('verify-full');
    expect(c.serverTlsCaFile).toBe(join(x.dir, 'ca.crt'));
    expect(c.hbaFile).toBe(join(x.dir, 'pg_hba.conf'));
    expect(c.authFile).toBe(join(x.dir, 'userlist.txt'));
    // hba_file picks the method per line; auth only applies without one.
    expect(c.auth).toBe('trust');
    expect(c.adminUsers).toEqual(['pgbouncer_admin']);
    expect(c.statsUsers).toEqual(['stats', 'monitoring']);
    expect(c.poolMode).toBe('transaction');
    expect(c.maxClientConn).toBe(500);
    expect(c.poolSize).toBe(20);
    expect(c.serverPassword).toBeNull();
    expect(x.warnings.some((w) => /^client_tls_ciphers = fast: a libtls keyword/.test(w))).toBe(true);
    for (const k of ['client_tls_sslmode', 'server_tls_sslmode', 'auth_hba_file', 'client_tls_protocols']) {
      expect(warningFor(x.warnings, k), k).toHaveLength(0);
    }
  });

  it('an HBA file pgmux reads differently (peer, cert, options) is refused with the reason', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-import-hba-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'pg_hba.conf'), 'local all all peer\nhostssl all all 0.0.0.0/0 cert\n');
    const x = run(`[pgbouncer]\nauth_type = hba\nauth_hba_file = pg_hba.conf\nauth_file = /etc/u.txt\nclient_tls_sslmode = require\n[databases]\n* = host=a\n`, {
      sourceDir: dir,
    });
    expect(x.raw.hba_file).toBeUndefined();
    // The fallback still checks passwords; it is reported all the same.
    expect(x.raw.auth).toBe('md5');
    expect(x.warnings.some((w) => w.startsWith(`auth_hba_file = pg_hba.conf: not carried over: pgmux reads this file differently: ${dir}/pg_hba.conf:1: authentication method "peer"`))).toBe(true);
    expect(x.weakenings).toEqual([
      'auth_type = hba: HBA rules (pg_hba.conf) dropped: the result would let every address, database and user try to log in',
    ]);
  });
});

describe('round trip: auth_query (pgbouncer-auth-query.ini)', () => {
  it('carries auth_user, auth_query, auth_dbname and scram; the * entry serves every database', () => {
    const x = roundTrip(join(IMPORT_FIXTURES, 'pgbouncer-auth-query.ini'), { 'userlist.txt': join(IMPORT_FIXTURES, 'userlist.txt') });
    expect(x.weakenings).toEqual([]);
    const c = x.config;
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 6432 });
    expect(c.nodes).toEqual([{ host: 'db.internal', port: 5433, weight: 1 }]);
    expect(c.auth).toBe('scram-sha-256');
    expect(c.authFile).toBe(join(x.dir, 'userlist.txt'));
    expect(c.authUser).toBe('pgbouncer_auth');
    expect(c.authQuery).toBe('SELECT rolname, CASE WHEN rolvaliduntil < pg_catalog.now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin');
    expect(c.authDbname).toBe('postgres');
    expect(c.serverTls).toBe('prefer');
    expect(c.poolMode).toBe('session');
    expect(c.serverResetQuery).toBe('DISCARD ALL');
    expect(warningFor(x.warnings, 'ignore_startup_parameters')).toHaveLength(1);
    for (const k of ['auth_user', 'auth_query', 'auth_dbname']) expect(warningFor(x.warnings, k), k).toHaveLength(0);
  });
});

describe('round trip: many [databases] entries and [users] (pgbouncer-databases.ini)', () => {
  const fixture = join(IMPORT_FIXTURES, 'pgbouncer-databases.ini');

  it('loads: every server became a node, limits in PgBouncer\'s meaning, no global server_password', () => {
    const x = roundTrip(fixture, { 'userlist.txt': join(IMPORT_FIXTURES, 'userlist.txt') });
    expect(x.weakenings).toEqual([]);
    const c = x.config;
    expect(c.nodes).toEqual([
      { host: 'pg-primary.internal', port: 5432, weight: 1 },
      { host: 'pg-replica1.internal', port: 5432, weight: 1 },
      { host: 'pg-replica2.internal', port: 5432, weight: 1 },
    ]);
    expect(c.serverPassword).toBeNull();
    expect(c.auth).toBe('md5');
    expect(c.adminUsers).toEqual(['postgres']);
    expect(c.poolSize).toBe(20);
    expect(c.maxClientConn).toBe(1000);
    expect(c.maxDbConnections).toBe(100);
    expect(c.maxUserConnections).toBe(50);
    expect(c.maxDbClientConnections).toBe(400);
    expect(c.maxUserClientConnections).toBe(200);
    expect(x.warnings.some((w) => /^\[databases\]: the entries name 3 servers .*run one pgmux per cluster; an entry that pointed at a replica for reads can say route: replica$/.test(w))).toBe(true);
    expect(x.warnings.some((w) => w === '[databases] forcedb: client_encoding=UNICODE datestyle=ISO connect_query=SELECT 1: no per-entry equivalent in pgmux; not carried over')).toBe(true);
    expect(x.warnings.some((w) => w === '[databases] nondefaultdb: reserve_pool=10: no per-entry equivalent in pgmux; not carried over')).toBe(true);
    expect(x.warnings.some((w) => /^\[databases\] legacy pool_mode = statement: .*using transaction$/.test(w))).toBe(true);
    expect(x.warnings.join('\n')).not.toMatch(/l3gacy|rep's pw/);
  });
});

// The keys the databases, unix and integrator branches add to the schema: checked on the
// emitted YAML until the loader knows them (then roundTrip() loads them like the rest).
describe('emitted keys other #15 branches add (YAML, not yet the loader)', () => {
  it('[databases] -> databases: each entry keeps its own dbname, user, password, pool settings', () => {
    const x = roundTrip(join(IMPORT_FIXTURES, 'pgbouncer-databases.ini'), { 'userlist.txt': join(IMPORT_FIXTURES, 'userlist.txt') });
    expect(x.raw.databases).toEqual({
      appdb: { dbname: 'appdb', pool_size: 40, min_pool_size: 5 },
      appdb_ro: { dbname: 'appdb', pool_size: 60, pool_mode: 'transaction' },
      reports: { dbname: 'analytics', user: 'reporter', password: "rep's pw", pool_mode: 'session', max_db_connections: 10 },
      legacy: { dbname: 'legacy', user: 'legacy_owner', password: 'l3gacy', pool_mode: 'transaction' },
      forcedb: { user: 'baz', password: 'foo' },
      nondefaultdb: { pool_size: 50 },
    });
    expect(x.raw.users).toEqual({ batch: { pool_mode: 'session', max_user_connections: 10 }, etl: { pool_mode: 'transaction' } });
  });

  it('unix_socket_dir / unix_socket_mode, and an empty unix_socket_dir meaning off', () => {
    const x = roundTrip(join(IMPORT_FIXTURES, 'pgbouncer-tls-hba.ini'), {
      'server.crt': pki.server.cert, 'server.key': pki.server.key, 'ca.crt': pki.ca.cert,
      'pg_hba.conf': join(IMPORT_FIXTURES, 'pgbouncer_hba.conf'), 'userlist.txt': join(IMPORT_FIXTURES, 'userlist.txt'),
    });
    expect(x.config.unixSocketDir).toBe('/var/run/postgresql');
    expect(x.config.unixSocketMode).toBe(0o770);
    expect(run('[pgbouncer]\nunix_socket_dir =\n[databases]\n* = host=a\n').raw.unix_socket_dir).toBe('off');
    const p = run(`socket_dir = '/var/run/pgpool'\nbackend_hostname0 = 'a'\n`, { sourceDir: FIXTURES });
    expect(p.raw.unix_socket_dir).toBe('/var/run/pgpool');
  });
});

describe('memory_cache_enabled and memqcache_* -> query_cache* (issue #17)', () => {
  /** The emitted YAML; the query_cache* keys another #17 branch adds are read from the text, the rest through the loader. */
  function runCache(text: string) {
    const r = importConfig("backend_hostname0 = 'a'\n" + text, 'pgpool');
    const raw = parse(r.yaml) as Record<string, unknown>;
    const known = Object.fromEntries(Object.entries(raw).filter(([k]) => CONFIG_KEYS.includes(k)));
    return { ...r, raw, config: parseConfigObject(known, 'imported.yaml') };
  }

  it('carries the cache settings over by name, with units', () => {
    const x = runCache(
      "memory_cache_enabled = on\nmemqcache_method = 'shmem'\nmemqcache_total_size = 128MB\nmemqcache_maxcache = 409600\n" +
        'memqcache_expire = 30\nmemqcache_auto_cache_invalidation = on\n',
    );
    expect(x.yaml).toMatch(/^query_cache: on$/m);
    expect(x.yaml).toMatch(/^query_cache_size: 128MB$/m);
    expect(x.yaml).toMatch(/^query_cache_max_entry: 409600$/m);
    expect(x.yaml).toMatch(/^query_cache_ttl: 30s$/m);
    expect(x.yaml).toMatch(/^query_cache_mode: notify$/m);
    expect(x.raw).toMatchObject({ query_cache: 'on', query_cache_size: '128MB', query_cache_max_entry: 409600, query_cache_ttl: '30s', query_cache_mode: 'notify' });
    // shmem is what pgmux does; none of these is reported as dropped.
    for (const k of ['memory_cache_enabled', 'memqcache_method', 'memqcache_total_size', 'memqcache_maxcache', 'memqcache_expire', 'memqcache_auto_cache_invalidation']) {
      expect(warningFor(x.warnings, k), k).toHaveLength(0);
    }
    expect(runCache("memory_cache_enabled = on\nmemqcache_expire = '2min'\n").raw.query_cache_ttl).toBe('2m');
  });

  it('expire 0 keeps pgmux\'s TTL; auto invalidation off -> local with the difference said; memcached -> a note', () => {
    const x = runCache("memory_cache_enabled = on\nmemqcache_expire = 0\nmemqcache_auto_cache_invalidation = off\nmemqcache_method = memcached\nmemqcache_memcached_host = 'mc1'\n");
    expect(x.raw.query_cache_ttl).toBeUndefined();
    expect(x.warnings.some((w) => /^memqcache_expire = 0 \(no expiry in Pgpool-II\): .*default query_cache_ttl \(60s\) applies/.test(w))).toBe(true);
    expect(x.raw.query_cache_mode).toBe('local');
    expect(x.warnings.some((w) => /^memqcache_auto_cache_invalidation = off -> query_cache_mode: local: pgmux always invalidates/.test(w))).toBe(true);
    expect(x.warnings.some((w) => /^memqcache_method = memcached: pgmux has no memcached/.test(w))).toBe(true);
    expect(warningFor(x.warnings, 'memqcache_memcached_host')).toHaveLength(0);
  });

  it('the table lists become query_cache_tables / query_cache_exclude_tables; regular expressions are dropped with a warning', () => {
    const x = runCache(
      "memory_cache_enabled = on\ncache_safe_memqcache_table_list = 'Hot_View,public.rates'\n" +
        "cache_unsafe_memqcache_table_list = 'audit,app.sessions,log_.*'\n",
    );
    expect(x.config.queryCacheTables).toEqual(['hot_view', 'public.rates']);
    expect(x.config.queryCacheExcludeTables).toEqual(['audit', 'app.sessions']);
    expect(x.warnings.some((w) => /^cache_unsafe_memqcache_table_list: log_\.\*: regular expressions .* not supported/.test(w))).toBe(true);
  });

  it('with the cache off nothing is written, and the cache settings it ignored are named', () => {
    const x = runCache("memory_cache_enabled = off\nmemqcache_total_size = 1GB\ncache_unsafe_memqcache_table_list = 'audit'\n");
    expect(Object.keys(x.raw).filter((k) => k.startsWith('query_cache'))).toEqual([]);
    expect(x.warnings).toContain('memory_cache_enabled = off: memqcache_total_size, cache_unsafe_memqcache_table_list not carried over (the cache is off, as in pgmux by default)');
  });
});

describe('query_cache_tables / query_cache_exclude_tables (settings)', () => {
  it('take lists or comma-separated strings of table names, lower-cased; refuse anything else', () => {
    expect(parseConfigObject({ query_cache_tables: 'A, s.B' }, 't').queryCacheTables).toEqual(['a', 's.b']);
    expect(parseConfigObject({ query_cache_exclude_tables: ['audit'] }, 't').queryCacheExcludeTables).toEqual(['audit']);
    expect(() => parseConfigObject({ query_cache_tables: ['log_.*'] }, 't')).toThrow(/not a table name for query_cache_tables/);
    expect(() => parseConfigObject({ query_cache_exclude_tables: 42 }, 't')).toThrow(/not a list of table names/);
  });
});

describe('Pgpool-II AES passwords (pool_passwd, pg_enc)', () => {
  it('decrypts what pg_enc wrote, and round-trips its own encryption', () => {
    // From test/fixtures/import/pgpool/pool_passwd, made with `pg_enc -k pgpoolkey "dave's pw:1"`.
    expect(pgpoolAesDecrypt('ybJik9jikZF9ZVrU6cOUTQ==', POOL_KEY)).toBe("dave's pw:1");
    const enc = pgpoolAesEncrypt('erin: ünïcode "pw"', 'another key');
    expect(pgpoolAesDecrypt(enc, 'another key')).toBe('erin: ünïcode "pw"');
    expect(() => pgpoolAesDecrypt(enc, 'wrong key')).toThrow();
  });

  it.skipIf(!existsSync('/usr/sbin/pg_enc'))('matches pg_enc byte for byte', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-pgenc-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'key'), 'k3y with spaces\n', { mode: 0o600 });
    const outText = execFileSync('/usr/sbin/pg_enc', ['-k', join(dir, 'key'), 'p@ss:word'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const aes = /pool_passwd string: AES(\S+)/.exec(outText)![1]!;
    expect(pgpoolAesEncrypt('p@ss:word', 'k3y with spaces')).toBe(aes);
    expect(pgpoolAesDecrypt(aes, 'k3y with spaces')).toBe('p@ss:word');
  });
});

describe('round trip: pgpool.conf with pool_passwd (md5, SCRAM, TEXT, AES), pool_hba.conf and ssl', () => {
  const dir = join(IMPORT_FIXTURES, 'pgpool');
  const files = () => ({
    'pgpool.conf': join(dir, 'pgpool.conf'), pool_passwd: join(dir, 'pool_passwd'), 'pool_hba.conf': join(dir, 'pool_hba.conf'),
    'server.crt': pki.server.cert, 'server.key': pki.server.key,
  });

  it('writes the userlist (verifiers kept, TEXT and AES decrypted), carries the HBA and TLS; pgmux loads it', () => {
    const x = roundTrip(join(dir, 'pgpool.conf'), files());
    expect(x.weakenings).toEqual([]);
    expect(x.files).toHaveLength(1);
    expect(x.files[0]!.path).toBe('pgmux-userlist.txt');
    expect(x.files[0]!.content).toBe(
      '"alice" "md5e28bd24942d50bf9d9f9d7d72329ba97"\n' +
        '"bob" "SCRAM-SHA-256$4096:cGdtdXgtZml4dHVyZS1zYWx0$GNXJlaWz91BFlj4Qma4zRklj9QxylCttpWFDPEGEFVg=:XJ00BqwTBB+8+Q3KZ+uhysldWuVFkbgVSvQXZBY+xZ4="\n' +
        '"carol" "carol ""the"" pw"\n' +
        '"dave" "dave\'s pw:1"\n' +
        '"pgpool" "hc-secret"\n',
    );
    const c = x.config;
    expect(c.authFile).toBe(join(x.dir, 'pgmux-userlist.txt'));
    expect(c.hbaFile).toBe(join(x.dir, 'pool_hba.conf'));
    expect(c.clientTls).toBe('allow');
    expect(c.clientTlsCertFile).toBe(join(x.dir, 'server.crt'));
    expect(c.clientTlsKeyFile).toBe(join(x.dir, 'server.key'));
    expect(c.clientTlsCiphers).toBe('HIGH:MEDIUM:+3DES:!aNULL');
    expect(c.serverTls).toBe('prefer');
    expect(c.nodes).toEqual([{ host: 'pg-primary', port: 5432, weight: 1 }, { host: 'pg-replica', port: 5432, weight: 1 }]);
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 9999 });
    expect(c.maxClientConn).toBe(32);
    expect(c.clientLoginTimeoutMs).toBe(60_000);
    expect(c.healthCheckUser).toBe('pgpool');
    expect(c.healthCheckPassword).toBe('hc-secret');
    expect(c.healthCheckMaxRetries).toBe(4);
    expect(x.warnings.some((w) => /^pool_passwd -> auth_file pgmux-userlist\.txt .*1 md5, 1 SCRAM verifiers kept as they are, 3 plain passwords/.test(w))).toBe(true);
    expect(x.warnings.join('\n')).not.toMatch(/hc-secret|dave's|carol "the"/);
  });

  it('without pool_hba, pool_passwd decides: auth scram-sha-256 (md5 when every entry is md5)', () => {
    const text = readFileSync(join(dir, 'pgpool.conf'), 'utf8').replace('enable_pool_hba = on', 'enable_pool_hba = off');
    const x = run(text, { sourceDir: dir, pgpoolKey: POOL_KEY });
    expect(x.config.auth).toBe('scram-sha-256');
    expect(x.raw.hba_file).toBeUndefined();
    expect(x.weakenings).toEqual([]);
    const md5Only = run(text, { sourceDir: dir, readFile: (p) => (p.endsWith('pool_passwd') ? 'alice:md5e28bd24942d50bf9d9f9d7d72329ba97\n' : null) });
    expect(md5Only.config.auth).toBe('md5');
  });

  it('an AES entry without the key is left out (that user cannot log in), never guessed', () => {
    const x = run(readFileSync(join(dir, 'pgpool.conf'), 'utf8'), { sourceDir: dir, pgpoolKeyFrom: '/root/.pgpoolkey' });
    expect(x.files[0]!.content).not.toMatch(/"dave"|"pgpool"/);
    expect(x.warnings).toContain(
      `pool_passwd ${dir}/pool_passwd: line 4 (user dave): an AES password and no pool key (/root/.pgpoolkey not found; give --pgpool-key-file); that user cannot log in`,
    );
    expect(x.raw.health_check_password).toBeUndefined();
    const wrong = run(readFileSync(join(dir, 'pgpool.conf'), 'utf8'), { sourceDir: dir, pgpoolKey: 'not the key', pgpoolKeyFrom: 'k' });
    expect(wrong.warnings.some((w) => /line 4 \(user dave\): an AES password that k does not decrypt/.test(w))).toBe(true);
  });

  it('a pool_hba.conf with a method pgmux lacks (pam) is refused: HBA dropped is a weakening', () => {
    const x = run(readFileSync(join(dir, 'pgpool.conf'), 'utf8'), {
      sourceDir: dir,
      pgpoolKey: POOL_KEY,
      readFile: (p) => (p.endsWith('pool_hba.conf') ? 'host all all 0.0.0.0/0 pam\n' : readFileSync(p, 'utf8')),
    });
    expect(x.raw.hba_file).toBeUndefined();
    expect(x.raw.auth).toBe('scram-sha-256');
    expect(x.warnings.some((w) => /^enable_pool_hba = on \(.*pool_hba\.conf\): not carried over: pgmux reads this file differently: .*pool_hba\.conf:1: authentication method "pam"/.test(w))).toBe(true);
    expect(x.weakenings).toHaveLength(1);
    expect(x.weakenings[0]).toMatch(/^enable_pool_hba = on \(.*\): HBA rules \(.*pool_hba\.conf\) dropped/);
  });
});

describe('security check: weakenings', () => {
  const base = '[pgbouncer]\nauth_type = md5\nauth_file = /etc/u.txt\n';
  const weak = (extra: string, dbs = '[databases]\n* = host=a\n') => importConfig(`${base}${extra}\n${dbs}`).weakenings;

  it('client TLS: require and verify-* are kept; a verified client certificate pgmux cannot demand is a weakening', () => {
    expect(weak('client_tls_sslmode = require\nclient_tls_cert_file = /c\nclient_tls_key_file = /k')).toEqual([]);
    expect(weak('client_tls_sslmode = prefer')).toEqual([]);
    expect(weak('client_tls_sslmode = verify-full\nclient_tls_ca_file = /ca')).toEqual([
      'client_tls_sslmode = verify-full: the source requires a verified client certificate; pgmux only checks a certificate a client chooses to present',
    ]);
    expect(weak('client_tls_sslmode = demand')).toEqual(['client_tls_sslmode = demand: the source requires TLS from clients; the result (client_tls disable) accepts plaintext']);
  });

  it('server TLS: allow becomes prefer; verify modes are carried', () => {
    expect(importConfig(`${base}server_tls_sslmode = allow\n[databases]\n* = host=a\n`).values.server_tls).toBe('prefer');
    expect(weak('server_tls_sslmode = verify-ca\nserver_tls_ca_file = /ca')).toEqual([]);
    // A mode pgmux's parser refuses is not carried: the TLS the source insisted on is then missing.
    expect(weak('server_tls_sslmode = verify-full\nserver_tls_ca_file = /ca')).toEqual([]);
    const src = { ...defaultSourceSecurity(), serverTls: 'verify-full' };
    expect(weakenings(src, new Map<string, unknown>([['server_tls', 'require']]))).toEqual([
      'server_tls_sslmode = verify-full: the result (server_tls require) connects to the nodes with less TLS checking',
    ]);
    expect(weakenings({ ...defaultSourceSecurity(), serverTls: 'prefer' }, new Map())).toEqual([]);
  });

  it('Pgpool-II relaying passwords to the nodes: trust is only as strong while pgmux holds no password to log in with', () => {
    const relay = { ...defaultSourceSecurity(), auth: 'relay' as const, authFrom: 'enable_pool_hba = off' };
    expect(weakenings(relay, new Map())).toEqual([]);
    expect(weakenings(relay, new Map([['auth_file', '/u.txt']]))).toEqual([
      'enable_pool_hba = off: the source leaves the password check to the PostgreSQL nodes; the result (auth trust) accepts every user name without a password',
    ]);
    expect(weakenings(relay, new Map<string, unknown>([['auth', 'scram-sha-256'], ['auth_file', '/u.txt']]))).toEqual([]);
  });

  it('databases: without a * entry only the listed names are served; dropping the section would open every name', () => {
    expect(weak('', '[databases]\napp = host=a\nreports = host=a dbname=r\n')).toEqual([]);
    const x = importConfig(`${base}\n[databases]\napp = host=a\n`);
    expect(Object.keys(x.values.databases as object)).toEqual(['app']);
    const src = { ...defaultSourceSecurity(), databases: ['app'] };
    expect(weakenings(src, new Map())).toEqual(['[databases]: the source serves only app; the result would also accept every other database name']);
    expect(weakenings(src, new Map([['databases', { app: {}, other: {} }]]))).toEqual([
      '[databases]: the source serves only app; the result would also accept other',
    ]);
    // An empty [databases] section (Debian's stock pgbouncer.ini): PgBouncer serves no database.
    expect(weak('', '[databases]\n;foodb =\n')).toEqual([
      '[databases]: the source serves no database ([databases] is empty); the result would also accept every other database name',
    ]);
  });

  it('admin_users / stats_users must be carried exactly', () => {
    expect(weak('admin_users = ops\nstats_users = mon')).toEqual([]);
    // The check reads the emitted keys, so any mapping that loses or moves a name is caught.
    const src = { ...defaultSourceSecurity(), adminUsers: ['ops'], statsUsers: ['mon'] };
    expect(weakenings(src, new Map<string, unknown>([['stats_users', ['mon']]]))).toEqual([
      'admin_users = ops: the result has none; admin console rights must be carried exactly',
    ]);
    expect(weakenings(src, new Map<string, unknown>([['admin_users', ['ops', 'mon']], ['stats_users', ['mon']]]))).toEqual([
      'admin_users = ops: the result has ops, mon; admin console rights must be carried exactly',
    ]);
    expect(weakenings(defaultSourceSecurity(), new Map<string, unknown>([['admin_users', ['x']]]))).toEqual([
      'admin_users: not set in the source; the result names x',
    ]);
  });
});

describe('pgmux import (CLI): refusing a weaker result, --allow-weaker, --output', () => {
  function io() {
    const o = { stdout: '', stderr: '' };
    return { o, io: { out: (s: string) => void (o.stdout += s), err: (s: string) => void (o.stderr += s), env: { HOME: '/nonexistent' } } };
  }
  const tmp = () => {
    const d = mkdtempSync(join(tmpdir(), 'pgmux-import-cli-'));
    dirs.push(d);
    return d;
  };

  it('exit 3 naming each weakening and writing nothing; --allow-weaker writes it with the weakenings in the header', async () => {
    const d = tmp();
    const ini = join(d, 'pgbouncer.ini');
    writeFileSync(ini, '[databases]\n* = host=a\n[pgbouncer]\nauth_type = cert\nclient_tls_sslmode = verify-ca\nclient_tls_cert_file = /c\nclient_tls_key_file = /k\n');
    const a = io();
    expect(await main(['import', ini], a.io)).toBe(3);
    expect(a.o.stdout).toBe('');
    expect(a.o.stderr).toContain(`pgmux: import: ${ini}: refused: the result would be weaker than the source (2):\n`);
    expect(a.o.stderr).toMatch(/\n {2}- auth_type = cert: the source requires a verified TLS client certificate naming the user; the result \(auth trust\) accepts every user name without a password\n/);
    expect(a.o.stderr).toMatch(/\n {2}- client_tls_sslmode = verify-ca: the source requires a verified client certificate/);
    expect(a.o.stderr).toContain('pass --allow-weaker');

    const b = io();
    expect(await main(['import', '--allow-weaker', ini], b.io)).toBe(0);
    expect(b.o.stdout).toContain('# WEAKER THAN THE SOURCE (imported with --allow-weaker) (2):');
    expect(b.o.stderr).toMatch(/^# WEAKER than the source \(--allow-weaker\): auth_type = cert/m);
    expect(load(b.o.stdout).clientTls).toBe('require');
  });

  it('--output writes the YAML and the converted pool_passwd next to it (mode 0600); pgmux loads the pair', async () => {
    const d = tmp();
    for (const f of ['pgpool.conf', 'pool_passwd', 'pool_hba.conf', 'pgpoolkey']) copyFileSync(join(IMPORT_FIXTURES, 'pgpool', f), join(d, f));
    copyFileSync(pki.server.cert, join(d, 'server.crt'));
    copyFileSync(pki.server.key, join(d, 'server.key'));
    const outDir = tmp();
    const c = io();
    expect(await main(['import', join(d, 'pgpool.conf'), '--output', join(outDir, 'pgmux.yaml'), '--pgpool-key-file', join(d, 'pgpoolkey')], c.io)).toBe(0);
    expect(c.o.stdout).toBe('');
    expect(c.o.stderr).toContain(`# wrote ${join(outDir, 'pgmux-userlist.txt')}: auth_file (from pool_passwd: 5 users)\n`);
    expect(statSync(join(outDir, 'pgmux-userlist.txt')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(outDir, 'pgmux-userlist.txt'), 'utf8')).toContain('"dave" "dave\'s pw:1"');
    const raw = parse(readFileSync(join(outDir, 'pgmux.yaml'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(outDir, 'pgmux.yaml'), stringify(raw));
    const cfg = loadConfig({ config: join(outDir, 'pgmux.yaml') }, {});
    expect(cfg.authFile).toBe(join(outDir, 'pgmux-userlist.txt'));
    expect(cfg.hbaFile).toBe(join(d, 'pool_hba.conf'));
  });

  it('a named key file that cannot be read is an error, not a silent skip', async () => {
    const e = io();
    expect(await main(['import', PGPOOL_CONF, '--pgpool-key-file', '/nonexistent/key'], e.io)).toBe(2);
    expect(e.o.stderr).toBe('pgmux: import: cannot read the key file /nonexistent/key: no such file\n');
  });

  it('--help names the options and the exit codes', async () => {
    const h = io();
    await main(['import', '--help'], h.io);
    const help = h.o.stdout + h.o.stderr;
    for (const s of ['--allow-weaker', '--pgpool-key-file', '--output', '3 refused']) expect(help).toContain(s);
  });
});

describe('pgmux import (CLI)', () => {
  function io() {
    const o = { stdout: '', stderr: '' };
    return { o, io: { out: (s: string) => void (o.stdout += s), err: (s: string) => void (o.stderr += s), env: {} } };
  }

  it('prints the YAML on stdout and one "# warning:" line per warning on stderr', async () => {
    const { o, io: x } = io();
    expect(await main(['import', PGPOOL_CONF], x)).toBe(0);
    const expected = importConfig(pgpoolText, { sourceDir: FIXTURES, authFilePath: join(process.cwd(), 'pgmux-userlist.txt') });
    expect(o.stdout).toBe(expected.yaml);
    expect(o.stderr).toBe(expected.warnings.map((w) => `# warning: ${w}\n`).join(''));
    expect(load(o.stdout).nodes).toHaveLength(3);
  });

  it('--kind forces the format', async () => {
    const { o, io: x } = io();
    expect(await main(['import', '--kind', 'pgbouncer', PGBOUNCER_INI], x)).toBe(0);
    expect(load(o.stdout).poolSize).toBe(25);
  });

  it.each([
    ['missing file', ['import', '/nonexistent/pgbouncer.ini'], /^pgmux: import: cannot read \/nonexistent\/pgbouncer\.ini: no such file\n$/],
    ['directory', ['import', FIXTURES], /^pgmux: import: cannot read .*: is a directory\n$/],
    ['unknown format', ['import', join(import.meta.dirname, 'import.test.ts')], /^pgmux: import: .*cannot tell what this file is: .*\n$/],
    ['bad kind', ['import', '--kind', 'odyssey', PGBOUNCER_INI], /^pgmux: --kind: "odyssey" is not supported \(expected pgbouncer or pgpool\)\n$/],
    ['no file', ['import'], /^pgmux: missing required argument 'file'\n$/],
  ])('%s: exit 2 with one line', async (_name, argv, re) => {
    const { o, io: x } = io();
    expect(await main(argv, x)).toBe(2);
    expect(o.stderr).toMatch(re);
    expect(o.stderr.trim().split('\n')).toHaveLength(1);
    expect(o.stdout).toBe('');
  });
});
