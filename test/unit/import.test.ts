// `pgmux import`: pgbouncer.ini / pgpool.conf -> pgmux YAML. Every produced YAML is fed back
// through load.ts's parseConfigObject, so the keys and values are exactly what pgmux accepts.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { detectKind, importConfig, ImportError } from '../../src/import/importConfig.js';
import { loadConfig, parseConfigObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { main } from '../../src/cli.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');
const PGBOUNCER_INI = join(FIXTURES, 'pgbouncer.ini');
const PGPOOL_CONF = join(FIXTURES, 'pgpool.conf');
const pgbouncerText = readFileSync(PGBOUNCER_INI, 'utf8');
const pgpoolText = readFileSync(PGPOOL_CONF, 'utf8');

/** The produced YAML as pgmux reads it; throws (failing the test) if pgmux would refuse it. */
function load(yaml: string): Partial<Config> {
  return parseConfigObject(parse(yaml), 'imported.yaml');
}

function run(text: string, kind?: 'pgbouncer' | 'pgpool') {
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
      serverPassword: "s3cr'et",
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

  it('warns about statement pooling, per-database routing and every setting it drops', () => {
    expect(r.warnings.some((w) => /^pool_mode = statement: .*using transaction/.test(w))).toBe(true);
    expect(r.warnings.some((w) => /5 entries became 3 nodes; per-database routing and aliases are not carried over: pgmux pools by the database name/.test(w))).toBe(true);
    expect(r.warnings.some((w) => /per-database settings not carried over: .*reports \(dbname=reports pool_size=5\).*app_admin \(user=admin\)/.test(w))).toBe(true);
    expect(r.warnings.some((w) => w.startsWith('[users] batch = pool_mode=session: per-user settings are not carried over'))).toBe(true);
    for (const s of ['unix_socket_dir', 'reserve_pool_size', 'logfile', 'pidfile', 'client_tls_sslmode']) {
      expect(warningFor(r.warnings, s), s).toHaveLength(1);
      expect(warningFor(r.warnings, s)[0]).toMatch(/no pgmux equivalent.*not carried over$/);
    }
    expect(warningFor(r.warnings, 'client_tls_sslmode')[0]).toMatch(/TLS is not supported/);
    // Settings that were translated get no "no equivalent" line.
    for (const s of ['default_pool_size', 'listen_port', 'auth_file', 'max_packet_size', 'server_lifetime']) {
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
      writeFileSync(join(dir, 'pgmux.yaml'), r.yaml.replace('/etc/pgbouncer/userlist.txt', 'userlist.txt'));
      const c = loadConfig({ config: join(dir, 'pgmux.yaml') }, {});
      expect(c.poolSize).toBe(25);
      expect(c.authFile).toBe(join(dir, 'userlist.txt'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps auth types; hba/cert/pam/any are left out with a warning', () => {
    const auth = (t: string) => run(`[pgbouncer]\nauth_type = ${t}\nauth_file = /etc/u.txt\n[databases]\nx = host=a\n`);
    expect(auth('md5').config.auth).toBe('md5');
    expect(auth('plain').config.auth).toBe('password');
    expect(auth('trust').config.auth).toBe('trust');
    expect(auth('scram-sha-256').config.auth).toBe('scram-sha-256');
    for (const t of ['hba', 'cert', 'pam', 'any']) {
      const x = auth(t);
      expect(x.config.auth, t).toBeUndefined();
      expect(warningFor(x.warnings, 'auth_type')[0], t).toMatch(/auth is left out, which means pgmux's default trust/);
    }
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
    expect(x.config.serverPassword).toBe('p w');
    expect(x.config.listen).toEqual({ host: '0.0.0.0', port: 7000 });
    expect(x.warnings.some((w) => /listen_addr is not set/.test(w))).toBe(true);
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
    for (const s of ['child_life_time', 'health_check_retry_delay', 'memory_cache_enabled', 'use_watchdog', 'wd_hostname', 'socket_dir', 'pcp_port']) {
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
  });

  it('an explicit kind wins over detection', () => {
    const x = importConfig("[pgbouncer]\nbackend_hostname0 = 'a'\n", 'pgpool');
    expect(load(x.yaml).nodes).toEqual([{ host: 'a', port: 5432, weight: 1 }]);
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
    const expected = importConfig(pgpoolText);
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
