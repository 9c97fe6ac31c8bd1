// The admin console on the shared cluster: every command through a real pgmux, checked
// against traffic sent through the same proxy by ordinary clients.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, psqlBin, runPg } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { ConfigError } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { sleep, waitFor } from '../support/wait.js';


type Row = Record<string, string | number | null>;

let open: pg.Client[] = [];

async function connect(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  c.on('error', () => {});
  open.push(c);
  return c;
}

async function rows(c: pg.Client, sql: string): Promise<Row[]> {
  return (await c.query(sql)).rows as Row[];
}

async function failure(p: Promise<unknown>): Promise<pg.DatabaseError> {
  try {
    await p;
  } catch (e) {
    return e as pg.DatabaseError;
  }
  throw new Error('expected the query to fail');
}

/** Waits until the proxy sees a primary and every configured node up. */
async function clusterUp(proxy: TestProxy, nodes: number): Promise<void> {
  const t = () => proxy.proxy.topology();
  await waitFor(
    () => t().primary !== null && t().nodes.length === nodes && t().nodes.every((n) => n.state === 'up' && n.lagMs !== null),
    20_000,
    () => `cluster up: ${JSON.stringify(t().nodes.map((n) => [n.name, n.state, n.role]))}`,
  );
}

afterEach(async () => {
  for (const c of open) await c.end().catch(() => {});
  open = [];
});

describe('admin console', () => {
  let proxy: TestProxy;
  let admin: pg.Client;
  let primary: string;
  let replicas: string[];
  const port = (name: string) => Number(name.split(':').pop());

  beforeAll(async () => {
    proxy = await startProxy({
      // Reads go to the replicas only (node0 is the harness's primary).
      nodes: testConfig().nodes.map((n, i) => ({ ...n, weight: i === 0 ? 0 : 1 })),
      adminUsers: ['postgres'],
      statsUsers: ['app'],
      http: { host: '127.0.0.1', port: 0 },
      serverPassword: 'sekrit-server-pw',
    });
    await clusterUp(proxy, 3);
    primary = proxy.proxy.topology().primary!.name;
    replicas = proxy.proxy.topology().nodes.map((n) => n.name).filter((n) => n !== primary);
    const setup = await pgClient(proxy.port);
    await setup.query('CREATE TABLE IF NOT EXISTS admin_t (id serial primary key, v int)');
    await setup.end();
  });
  afterAll(async () => {
    await proxy?.close();
  });

  async function adminClient(): Promise<pg.Client> {
    admin = await connect(proxy.port, { database: 'pgmux' });
    return admin;
  }

  it('answers SHOW HELP / SHOW VERSION, case-insensitively with or without ";"', async () => {
    const a = await adminClient();
    const help = await rows(a, 'SHOW HELP');
    const cmds = help.map((r) => r.command);
    for (const c of ['SHOW POOLS', 'SHOW CLIENTS', 'SHOW SERVERS', 'SHOW NODES', 'SHOW STATS', 'SHOW CONFIG', 'PAUSE [db]', 'RESUME [db]', 'RELOAD', 'RECONNECT [db]', 'SHUTDOWN', 'KILL [db]', 'SET <key> = <value>']) {
      expect(cmds).toContain(c);
    }
    const r = await a.query('show version;');
    expect(r.command).toBe('SHOW');
    expect(r.rows).toEqual([{ version: `pgmux ${proxy.proxy.version}` }]);
    expect((await rows(a, '  Show   Version ;; '))[0]!.version).toMatch(/^pgmux /);
  });

  it('answers an empty query with EmptyQueryResponse and an unknown command with 42601', async () => {
    const a = await adminClient();
    const empty = await a.query('');
    expect(empty.rows).toEqual([]);
    expect(empty.command).toBeNull();
    const e = await failure(a.query('SHOW BANANAS'));
    expect(e.code).toBe('42601');
    expect(e.message).toContain('SHOW BANANAS');
    expect(e.hint).toContain('SHOW POOLS');
    expect((await failure(a.query('SELECT 1'))).code).toBe('42601');
    // The session is still usable.
    expect((await rows(a, 'SHOW VERSION')).length).toBe(1);
  });

  it('shows pools, clients, servers, nodes and stats that match the traffic sent', async () => {
    const a = await adminClient();
    const statsOf = async () => {
      const m = new Map<string, Row>();
      for (const r of await rows(a, 'SHOW NODE_STATS')) m.set(r.node!, r);
      return m;
    };
    const before = await statsOf();
    const app = await connect(proxy.port, { application_name: 'admin-test-app' });
    const WRITES = 4;
    const READS = 7;
    for (let i = 0; i < WRITES - 1; i++) await app.query('INSERT INTO admin_t (v) VALUES ($1)', [i]);
    // An explicit transaction: one write transaction, whatever it contains.
    await app.query('BEGIN');
    await app.query('SELECT count(*) FROM admin_t');
    await app.query('COMMIT');
    for (let i = 0; i < READS; i++) await app.query('SELECT inet_server_port() AS port');

    const after = await statsOf();
    const delta = (node: string, col: string) => Number(after.get(node)?.[col] ?? 0) - Number(before.get(node)?.[col] ?? 0);
    expect(delta(primary, 'xact_write')).toBe(WRITES);
    expect(delta(primary, 'xact_read')).toBe(0);
    expect(replicas.reduce((s, r) => s + delta(r, 'xact_read'), 0)).toBe(READS);
    expect(replicas.reduce((s, r) => s + delta(r, 'xact_write'), 0)).toBe(0);
    expect(delta('total', 'xact_total')).toBe(WRITES + READS);
    const total = after.get('total')!;
    expect(Number(total.bytes_in)).toBeGreaterThan(0);
    expect(Number(total.bytes_out)).toBeGreaterThan(0);
    expect(Number(total.logins)).toBeGreaterThanOrEqual(3);
    expect(Number(total.classifier_cache_hits) + Number(total.classifier_cache_misses)).toBeGreaterThan(0);
    expect(Number(total.avg_wait_ms)).toBeGreaterThanOrEqual(0);

    // SHOW POOLS as PgBouncer: one row per (database, user); the idle client counts as cl_active.
    const pool = (await rows(a, 'SHOW POOLS')).find((p) => p.database === 'app' && p.user === 'postgres');
    expect(pool).toMatchObject({ cl_waiting: 0, pool_mode: 'transaction', sv_login: 0 });
    expect(Number(pool!.cl_active)).toBeGreaterThanOrEqual(1);
    expect(Number(pool!.nodes)).toBeGreaterThanOrEqual(2);

    const pools = await rows(a, 'SHOW NODE_POOLS');
    const pp = pools.find((p) => p.node === primary && p.database === 'app' && p.user === 'postgres');
    expect(pp).toBeDefined();
    expect(Number(pp!.sv_idle) + Number(pp!.sv_active)).toBeGreaterThanOrEqual(1);
    expect(pp!.pool_mode).toBe('transaction');
    expect(Number(pp!.cl_waiting)).toBe(0);
    expect(pools.some((p) => replicas.includes(p.node!) && p.database === 'app')).toBe(true);

    const clients = await rows(a, 'SHOW CLIENTS');
    const me = clients.find((c) => c.application_name === 'admin-test-app');
    expect(me).toBeDefined();
    expect(me).toMatchObject({ type: 'C', user: 'postgres', database: 'app', state: 'idle', transactions: String(WRITES + READS), node: null, backend_pid: null, link: '' });
    expect(me!.connect_time).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
    expect(me!.addr).toBe('127.0.0.1');
    expect(Number(me!.port)).toBeGreaterThan(0);
    // The admin session itself is listed too.
    expect(clients.some((c) => c.database === 'pgmux' && c.pgmux_state === 'admin')).toBe(true);

    const servers = await rows(a, 'SHOW SERVERS');
    const onPrimary = servers.filter((s) => s.node === primary && s.database === 'app' && s.user === 'postgres');
    expect(onPrimary.length).toBeGreaterThanOrEqual(1);
    for (const s of onPrimary) {
      expect(Number(s.remote_pid)).toBeGreaterThan(0);
      expect(s.state).toBe('idle');
      expect(s.link).toBe('');
      expect(s.close_needed).toBe(0);
      expect(`${s.addr}:${s.port}`).toBe(primary);
      expect(s.connect_time).toMatch(/ UTC$/);
    }

    const nodes = await rows(a, 'SHOW NODES');
    expect(nodes.length).toBe(3);
    expect(nodes.filter((n) => n.role === 'primary').map((n) => n.name)).toEqual([primary]);
    expect(nodes.filter((n) => n.role === 'replica').map((n) => n.name).sort()).toEqual([...replicas].sort());
    for (const n of nodes) {
      expect(n.state).toBe('up');
      expect(n.disabled).toBe('f');
      expect(n.last_check).not.toBeNull();
      expect(n.reason).toBeNull();
    }
    expect(Number(nodes.find((n) => n.name === primary)!.writes)).toBe(Number(after.get(primary)!.xact_write));
    expect(nodes.find((n) => n.name === primary)!.lag_bytes).toBe('0');
  });

  it('shows the configuration with snake_case keys and passwords masked', async () => {
    const a = await adminClient();
    const r = await a.query('SHOW CONFIG');
    expect(r.fields.map((f) => f.name)).toEqual(['key', 'value', 'default', 'changeable']);
    const cfg = new Map((r.rows as Row[]).map((x) => [x.key!, x.value]));
    expect(cfg.get('pool_size')).toBe('5');
    expect(cfg.get('pool_mode')).toBe('transaction');
    expect(cfg.get('admin_users')).toBe('postgres');
    expect(cfg.get('stats_users')).toBe('app');
    expect(cfg.get('server_password')).toBe('********');
    expect(cfg.has('max_lag_ms')).toBe(true);
    expect(JSON.stringify(r.rows)).not.toContain('sekrit');
  });

  it('lets a stats user run SHOW only', async () => {
    const s = await connect(proxy.port, { user: 'app', database: 'pgmux' });
    expect((await rows(s, 'SHOW POOLS')).length).toBeGreaterThanOrEqual(0);
    expect((await rows(s, 'SHOW NODES')).length).toBe(3);
    for (const cmd of ['PAUSE', 'RESUME', 'RELOAD', 'RECONNECT', 'SHUTDOWN', `DISABLE ${replicas[0]}`]) {
      const e = await failure(s.query(cmd));
      expect(e.code).toBe('42501');
      expect(e.message).toBe(`permission denied for admin command ${cmd.split(' ')[0]}`);
      expect(e.hint).toContain('admin_users');
    }
    expect(proxy.proxy.isPaused()).toBe(false);
  });

  it('works from psql', async () => {
    const psql = (sql: string) =>
      runPg(psqlBin(), ['-X', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', '-d', 'pgmux', '-v', 'ON_ERROR_STOP=1', '-c', sql]);
    const nodes = await psql('SHOW NODES');
    expect(nodes.stderr).toBe('');
    expect(nodes.code).toBe(0);
    expect(nodes.stdout).toMatch(/name\s+\|\s+address\s+\|\s+role/);
    expect(nodes.stdout).toContain(primary);
    expect(nodes.stdout).toContain('(3 rows)');
    const unknown = await psql('SHOW NOTHING');
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('unknown admin command');
    // `psql -p 6432 pgbouncer`, as PgBouncer's runbooks say.
    const asBouncer = await runPg(psqlBin(), ['-X', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', 'SHOW POOLS', 'pgbouncer']);
    expect(asBouncer.stderr).toBe('');
    expect(asBouncer.stdout).toMatch(/database\s+\|\s+user\s+\|\s+cl_active\s+\|\s+cl_waiting/);
  });

  it('refuses a user in neither admin_users nor stats_users with 28000', async () => {
    const e = await failure(pgClient(proxy.port, { user: 'app_md5', database: 'pgmux' }));
    expect(e.code).toBe('28000');
    expect(e.message).toContain('may not use the admin console');
  });

  it('PAUSE waits for running transactions, holds new ones until RESUME', async () => {
    const a = await adminClient();
    const inTx = await connect(proxy.port);
    const other = await connect(proxy.port, { application_name: 'paused-client' });
    await inTx.query('BEGIN');
    await inTx.query('INSERT INTO admin_t (v) VALUES (100)');
    let paused = false;
    const pause = a.query('PAUSE').then((r) => {
      paused = true;
      return r;
    });
    await sleep(300); // deliberate: PAUSE must still be waiting after a while
    expect(paused).toBe(false); // a transaction still holds a backend
    await inTx.query('COMMIT');
    expect((await pause).command).toBe('PAUSE');
    expect(proxy.proxy.isPaused()).toBe(true);

    let done = false;
    const q = other.query('SELECT 42 AS x').then((r) => {
      done = true;
      return r;
    });
    // Held: pgmux shows it waiting, and it has no answer.
    await expect.poll(async () => (await rows(a, 'SHOW CLIENTS')).find((c) => c.application_name === 'paused-client')?.state, { timeout: 5000 }).toBe('waiting');
    expect(done).toBe(false);
    const res = await a.query('RESUME');
    expect(res.command).toBe('RESUME');
    expect((await q).rows).toEqual([{ x: 42 }]);
    expect(proxy.proxy.isPaused()).toBe(false);
  });

  it('PAUSE db pauses that database only', async () => {
    const a = await adminClient();
    const app = await connect(proxy.port);
    const pg2 = await connect(proxy.port, { database: 'postgres' });
    await a.query('PAUSE app');
    expect(proxy.proxy.isPaused('app')).toBe(true);
    expect(proxy.proxy.isPaused('postgres')).toBe(false);
    expect((await pg2.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    let done = false;
    const q = app.query('SELECT 2 AS two').then((r) => {
      done = true;
      return r;
    });
    await sleep(300); // deliberate: the query must still be held after a while
    expect(done).toBe(false);
    await a.query('RESUME app');
    expect((await q).rows).toEqual([{ two: 2 }]);
  });

  it('RELOAD without a configuration source is refused with F0000', async () => {
    const a = await adminClient();
    const v = proxy.proxy.configVersion();
    const e = await failure(a.query('RELOAD'));
    expect(e.code).toBe('F0000');
    expect(e.message).toContain('no configuration source');
    expect(proxy.proxy.configVersion()).toBe(v);
  });

  it('DISABLE takes a replica out of read routing, ENABLE puts it back', async () => {
    const a = await adminClient();
    const app = await connect(proxy.port);
    const [r1] = replicas as [string, string];
    expect((await a.query(`DISABLE ${r1}`)).command).toBe('DISABLE');
    expect((await rows(a, 'SHOW NODES')).find((n) => n.name === r1)!.disabled).toBe('t');
    const ports = new Set<number>();
    for (let i = 0; i < 40; i++) ports.add((await app.query('SELECT inet_server_port() AS port')).rows[0].port);
    expect(ports.has(port(r1))).toBe(false);
    expect(ports.has(port(primary))).toBe(false);
    expect((await failure(a.query('DISABLE 10.255.255.1:1'))).code).toBe('42704');
    expect((await failure(a.query('DISABLE'))).code).toBe('42601');

    expect((await a.query(`ENABLE "${r1}"`)).command).toBe('ENABLE');
    expect((await rows(a, 'SHOW NODES')).find((n) => n.name === r1)!.disabled).toBe('f');
    let seen = false;
    for (let i = 0; i < 200 && !seen; i++) seen = (await app.query('SELECT inet_server_port() AS port')).rows[0].port === port(r1);
    expect(seen).toBe(true);
  });

  it('RECONNECT replaces every backend', async () => {
    const a = await adminClient();
    const app = await connect(proxy.port);
    for (let i = 0; i < 3; i++) {
      await app.query('INSERT INTO admin_t (v) VALUES (1)');
      await app.query('SELECT 1');
    }
    const before = new Set((await rows(a, 'SHOW SERVERS')).map((s) => s.remote_pid));
    expect(before.size).toBeGreaterThan(0);
    const pidBefore = (await app.query('BEGIN; SELECT pg_backend_pid() AS pid; COMMIT')) as unknown as pg.QueryResult[];
    expect(before.has(pidBefore[1]!.rows[0].pid)).toBe(true);

    expect((await a.query('RECONNECT')).command).toBe('RECONNECT');
    // Idle backends are closed at once.
    await expect.poll(async () => (await rows(a, 'SHOW SERVERS')).every((s) => !before.has(s.remote_pid)), { timeout: 5000 }).toBe(true);
    for (let i = 0; i < 3; i++) {
      await app.query('INSERT INTO admin_t (v) VALUES (2)');
      await app.query('SELECT 1');
    }
    const pidAfter = (await app.query('BEGIN; SELECT pg_backend_pid() AS pid; COMMIT')) as unknown as pg.QueryResult[];
    expect(before.has(pidAfter[1]!.rows[0].pid)).toBe(false);
    const after = (await rows(a, 'SHOW SERVERS')).map((s) => s.remote_pid);
    expect(after.length).toBeGreaterThan(0);
    expect(after.filter((p) => before.has(p))).toEqual([]);
  });
});

describe('admin RELOAD with a configuration source', () => {
  let proxy: TestProxy;
  let all: Config['nodes'];
  beforeAll(async () => {
    all = testConfig().nodes.map((n) => ({ ...n }));
    // Start without the last node; RELOAD adds it.
    proxy = await startProxy({ adminUsers: ['postgres'], nodes: all.slice(0, 2) });
    await clusterUp(proxy, 2);
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('adds a node and changes weights while a client stays mid-transaction', async () => {
    const a = await connect(proxy.port, { database: 'pgmux' });
    const notices: string[] = [];
    a.on('notice', (n) => notices.push(n.message ?? ''));
    const primary = proxy.proxy.topology().primary!.name;
    const names = all.map((n) => `${n.host}:${n.port}`);
    const newNode = names[2]!;
    const oldReplica = names.slice(0, 2).find((n) => n !== primary)!;

    const tx = await connect(proxy.port);
    await tx.query('CREATE TABLE IF NOT EXISTS admin_reload_t (id int)');
    await tx.query('DELETE FROM admin_reload_t');
    await tx.query('BEGIN');
    await tx.query('INSERT INTO admin_reload_t VALUES (1)');

    const v = proxy.proxy.configVersion();
    proxy.proxy.reloadSource = () => ({
      ...proxy.proxy.config(),
      logLevel: (process.env.PGMUX_TEST_LOG ?? 'silent') as Config['logLevel'],
      // The old replica (and the primary) get no reads any more; the new node gets them all.
      nodes: all.map((n) => ({ ...n, weight: `${n.host}:${n.port}` === newNode ? 1 : 0 })),
    });
    const r = await a.query('RELOAD');
    expect(r.command).toBe('RELOAD');
    expect(notices.some((m) => m.includes(`configuration ${v + 1} loaded`))).toBe(true);
    expect(proxy.proxy.configVersion()).toBe(v + 1);

    // The open transaction keeps its backend and commits.
    await tx.query('INSERT INTO admin_reload_t VALUES (2)');
    await tx.query('COMMIT');
    const committed = await tx.query('/* pgmux:primary */ SELECT count(*)::int AS n FROM admin_reload_t');
    expect(committed.rows[0].n).toBe(2);

    await clusterUp(proxy, 3);
    const nodes = await rows(a, 'SHOW NODES');
    expect(nodes.map((n) => n.name).sort()).toEqual([...names].sort());
    expect(nodes.find((n) => n.name === oldReplica)!.weight).toBe('0');
    const cfg = new Map((await rows(a, 'SHOW CONFIG')).map((x) => [x.key, x.value]));
    expect(cfg.get('nodes')).toContain(`${oldReplica}@0`);

    const ports = new Map<number, number>();
    for (let i = 0; i < 30; i++) {
      const p = (await tx.query('SELECT inet_server_port() AS port')).rows[0].port as number;
      ports.set(p, (ports.get(p) ?? 0) + 1);
    }
    expect(ports.get(Number(newNode.split(':')[1]))).toBe(30);
  });

  it('refuses an invalid configuration and keeps serving the old one', async () => {
    const a = await connect(proxy.port, { database: 'pgmux' });
    const app = await connect(proxy.port);
    const v = proxy.proxy.configVersion();
    const cfgBefore = proxy.proxy.config();
    proxy.proxy.reloadSource = () => {
      throw new ConfigError('pool_size', 'pool_size: "lots" is not a whole number (expected 1..10000)');
    };
    const e = await failure(a.query('RELOAD;'));
    expect(e.code).toBe('F0000');
    expect(e.message).toContain('pool_size: "lots" is not a whole number');
    expect(proxy.proxy.configVersion()).toBe(v);
    expect(proxy.proxy.config()).toBe(cfgBefore);
    expect((await app.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect((await app.query('INSERT INTO admin_reload_t VALUES (3) RETURNING id')).rows).toEqual([{ id: 3 }]);
  });
});

describe('admin SHUTDOWN', () => {
  it('shuts the proxy down gracefully', async () => {
    const proxy = await startProxy({ adminUsers: ['postgres'], shutdownTimeoutMs: 5000 });
    try {
      const a = await connect(proxy.port, { database: 'pgmux' });
      const app = await connect(proxy.port);
      expect((await app.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      const ended = new Promise<void>((resolve) => app.on('end', () => resolve()));
      const r = await a.query('SHUTDOWN');
      expect(r.command).toBe('SHUTDOWN');
      // Idle clients are disconnected; no new connections are accepted.
      await ended;
      await expect.poll(() => proxy.proxy.shuttingDown, { timeout: 2000 }).toBe(true);
      await expect(pgClient(proxy.port, { connectionTimeoutMillis: 2000 })).rejects.toThrow();
    } finally {
      await proxy.close();
    }
  });
});
