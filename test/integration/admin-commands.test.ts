// PgBouncer's process-controlling commands on pgmux's admin console (database "pgbouncer"):
// KILL, KILL_CLIENT, SUSPEND / RESUME, RECONNECT db + WAIT_CLOSE, SET, DISABLE db, SHUTDOWN
// WAIT_FOR_CLIENTS, and Pgpool-II's SHOW POOL_NODES. Each checked against what ordinary
// clients of the same pgmux see.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { sleep, waitFor } from '../support/wait.js';

type Row = Record<string, unknown>;

let open: pg.Client[] = [];

async function connect(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  c.on('error', () => {});
  open.push(c);
  return c;
}

async function failure(p: Promise<unknown>): Promise<pg.DatabaseError> {
  try {
    await p;
  } catch (e) {
    return e as pg.DatabaseError;
  }
  throw new Error('expected a failure');
}

/** Resolves with the query's result, and tells whether it has yet. */
function track<T>(p: Promise<T>): { done: () => boolean; result: Promise<T> } {
  let done = false;
  const result = p.finally(() => (done = true));
  result.catch(() => {});
  return { done: () => done, result };
}

afterEach(async () => {
  for (const c of open) await c.end().catch(() => {});
  open = [];
});

describe('admin commands', () => {
  let proxy: TestProxy;
  let admin: pg.Client;
  const rows = async (sql: string) => (await admin.query(sql)).rows as Row[];

  beforeAll(async () => {
    proxy = await startProxy({ adminUsers: ['postgres'], statsUsers: ['app'] });
    await waitFor(() => proxy.proxy.topology().primary !== null && proxy.proxy.topology().nodes.every((n) => n.state === 'up'), 20_000, () => 'cluster up');
  });
  afterAll(async () => {
    await proxy?.close();
  });
  afterEach(async () => {
    proxy.proxy.resume(null);
  });

  async function adminClient(): Promise<pg.Client> {
    admin = await connect(proxy.port, { database: 'pgbouncer' });
    return admin;
  }

  it('KILL db closes that database\'s clients and backends; its new transactions wait for RESUME', async () => {
    await adminClient();
    const victim = await connect(proxy.port, { application_name: 'kill-victim' });
    const ended = new Promise<void>((resolve) => victim.on('end', () => resolve()));
    const errors: Array<{ code?: string }> = [];
    victim.on('error', (e) => errors.push(e as { code?: string }));
    const other = await connect(proxy.port, { database: 'postgres' });
    await victim.query('SELECT 1');
    await other.query('SELECT 1');
    expect((await rows('SHOW SERVERS')).some((s) => s.database === 'app')).toBe(true);

    expect((await admin.query('KILL app')).command).toBe('KILL');
    await ended;
    expect(errors.map((e) => e.code)).toContain('57P01');
    expect((await rows('SHOW SERVERS')).filter((s) => s.database === 'app')).toEqual([]);
    expect((await other.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);

    const late = await connect(proxy.port);
    const q = track(late.query('SELECT 3 AS three'));
    await sleep(300); // deliberate: the killed database holds new transactions until RESUME
    expect(q.done()).toBe(false);
    await admin.query('RESUME app');
    expect((await q.result).rows).toEqual([{ three: 3 }]);
  });

  it('KILL_CLIENT closes one client by its SHOW CLIENTS id', async () => {
    await adminClient();
    const victim = await connect(proxy.port, { application_name: 'kill-one' });
    const bystander = await connect(proxy.port, { application_name: 'kill-bystander' });
    const ended = new Promise<void>((resolve) => victim.on('end', () => resolve()));
    const id = (await rows('SHOW CLIENTS')).find((c) => c.application_name === 'kill-one')!.id as number;
    // PgBouncer's tag KILL_CLIENT; node-postgres reads a tag up to the first non-letter.
    expect((await admin.query(`KILL_CLIENT ${id}`)).command).toBe('KILL');
    await ended;
    expect((await rows('SHOW CLIENTS')).some((c) => c.id === id)).toBe(false);
    expect((await bystander.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect((await failure(admin.query('KILL_CLIENT 99999999'))).code).toBe('42704');
    expect((await failure(admin.query('KILL_CLIENT abc'))).code).toBe('42601');
  });

  it('SUSPEND holds every new transaction until RESUME; SHOW STATE says so', async () => {
    await adminClient();
    const app = await connect(proxy.port);
    await app.query('SELECT 1');
    expect((await admin.query('SUSPEND')).command).toBe('SUSPEND');
    const state = async () => Object.fromEntries((await rows('SHOW STATE')).map((r) => [r.key, r.value]));
    expect(await state()).toEqual({ active: 'no', paused: 'no', suspended: 'yes' });
    const q = track(app.query('SELECT 4 AS four'));
    await sleep(300); // deliberate: still held after a while
    expect(q.done()).toBe(false);
    expect((await admin.query('RESUME')).command).toBe('RESUME');
    expect((await q.result).rows).toEqual([{ four: 4 }]);
    expect(await state()).toEqual({ active: 'yes', paused: 'no', suspended: 'no' });
  });

  it('RECONNECT db marks that database\'s backends close_needed; WAIT_CLOSE returns once they are gone', async () => {
    await adminClient();
    const inTx = await connect(proxy.port);
    const other = await connect(proxy.port, { database: 'postgres' });
    await other.query('SELECT 1');
    await inTx.query('BEGIN');
    const pid = (await inTx.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    const otherPids = (await rows('SHOW SERVERS')).filter((s) => s.database === 'postgres').map((s) => s.remote_pid);
    expect(otherPids.length).toBeGreaterThan(0);

    expect((await admin.query('RECONNECT app')).command).toBe('RECONNECT');
    const servers = await rows('SHOW SERVERS');
    expect(servers.find((s) => s.remote_pid === pid)).toMatchObject({ close_needed: 1, state: 'active' });
    expect(servers.filter((s) => s.database === 'postgres').every((s) => s.close_needed === 0)).toBe(true);

    const admin2 = await connect(proxy.port, { database: 'pgbouncer' });
    const wait = track(admin2.query('WAIT_CLOSE app'));
    await sleep(300); // deliberate: the transaction still holds the marked backend
    expect(wait.done()).toBe(false);
    await inTx.query('COMMIT');
    expect((await wait.result).command).toBe('WAIT'); // WAIT_CLOSE, as read by node-postgres
    const after = await rows('SHOW SERVERS');
    expect(after.some((s) => s.remote_pid === pid)).toBe(false);
    // The other database's backends were left alone.
    expect(after.filter((s) => s.database === 'postgres').map((s) => s.remote_pid)).toEqual(otherPids);
  });

  it('SET changes a reloadable setting as the file would; others are refused with the right SQLSTATE', async () => {
    await adminClient();
    const v = proxy.proxy.configVersion();
    const value = async (key: string) => (await rows('SHOW CONFIG')).find((r) => r.key === key)!.value;
    expect((await admin.query('SET pool_size = 7')).command).toBe('SET');
    expect(await value('pool_size')).toBe('7');
    expect(proxy.proxy.config().poolSize).toBe(7);
    expect(proxy.proxy.configVersion()).toBe(v + 1);
    // PgBouncer's name and a quoted value, as in its docs.
    await admin.query("SET default_pool_size = '5'");
    expect(proxy.proxy.config().poolSize).toBe(5);

    const bad = await failure(admin.query("SET pool_size = 'lots'"));
    expect(bad.code).toBe('22023');
    expect(bad.message).toContain('pool_size');
    const restart = await failure(admin.query("SET listen = '127.0.0.1:1'"));
    expect(restart.code).toBe('55P02');
    expect((await failure(admin.query('SET no_such_setting = 1'))).code).toBe('42704');
    expect((await failure(admin.query('SET pool_size'))).code).toBe('42601');
    expect(proxy.proxy.config().poolSize).toBe(5);
    expect(proxy.proxy.configVersion()).toBe(v + 2);
    // Stats users may not.
    const s = await connect(proxy.port, { user: 'app', database: 'pgbouncer' });
    expect((await failure(s.query('SET pool_size = 9'))).code).toBe('42501');
    // As in PgBouncer, file descriptors are for admin users only.
    expect((await failure(s.query('SHOW FDS'))).code).toBe('42501');
    expect((await admin.query('SHOW FDS')).rows).toEqual([]);
  });

  it('DISABLE db refuses new clients of that database with 55000; ENABLE db lets them in', async () => {
    await adminClient();
    const existing = await connect(proxy.port);
    expect((await admin.query('DISABLE app')).command).toBe('DISABLE');
    expect((await rows('SHOW DATABASES')).length).toBeGreaterThan(0);
    const refused = await failure(connect(proxy.port));
    expect(refused.code).toBe('55000');
    expect(refused.message).toContain('"app"');
    // Clients already in, and other databases, go on.
    expect((await existing.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await connect(proxy.port, { database: 'postgres' });
    expect((await admin.query('ENABLE app')).command).toBe('ENABLE');
    const back = await connect(proxy.port);
    expect((await back.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });

  it('SHOW POOL_NODES has Pgpool-II 4.3\'s columns and one row per node', async () => {
    await adminClient();
    const r = await admin.query('SHOW POOL_NODES');
    expect(r.fields.map((f) => f.name)).toEqual([
      'node_id', 'hostname', 'port', 'status', 'pg_status', 'lb_weight', 'role', 'pg_role', 'select_cnt', 'load_balance_node', 'replication_delay',
      'replication_state', 'replication_sync_state', 'last_status_change',
    ]);
    const topo = proxy.proxy.topology();
    expect(r.rows.length).toBe(topo.nodes.length);
    const primary = (r.rows as Row[]).find((x) => x.role === 'primary')!;
    expect(`${primary.hostname}:${primary.port}`).toBe(topo.primary!.name);
    expect((r.rows as Row[]).filter((x) => x.role === 'standby').every((x) => x.status === 'up' && x.replication_state === 'streaming')).toBe(true);
  });

  it('SHOW pool_nodes and pool_version on an application database, as Pgpool-II answers them; other pool_* get 0A000', async () => {
    await adminClient();
    const viaConsole = (await admin.query('SHOW POOL_NODES')).rows;
    const app = await connect(proxy.port, { user: 'app', password: 'apppass' }); // no console role needed
    // What Pgpool-II users' health checks send: psql -c, sqlcommenter comments, any case.
    for (const sql of ['SHOW pool_nodes', 'show POOL_NODES;', "/* check='health' */ SHOW pool_nodes"]) {
      const r = await app.query(sql);
      expect(r.fields.map((f) => f.name)[0], sql).toBe('node_id');
      expect(r.rows.map((x: Row) => `${x.hostname}:${x.port}:${x.role}`), sql).toEqual(viaConsole.map((x: Row) => `${x.hostname}:${x.port}:${x.role}`));
    }
    expect((await app.query('SHOW pool_version')).rows[0].pool_version).toMatch(/^pgmux /);
    const e = await failure(app.query('SHOW pool_processes'));
    expect(e.code).toBe('0A000');
    expect(e.hint).toMatch(/admin console/);
    // The session goes on; an ordinary SHOW still goes to PostgreSQL.
    expect((await app.query('SHOW server_version_num')).rows[0].server_version_num).toMatch(/^\d+$/);
    // In a multi-statement string it is PostgreSQL's (which knows no such parameter).
    expect((await failure(app.query('SHOW pool_nodes; SELECT 1'))).code).toBe('42704');
  });
});

describe('SHUTDOWN WAIT_FOR_CLIENTS', () => {
  it('refuses new clients and ends once the last client left', async () => {
    const proxy = await startProxy({ adminUsers: ['postgres'] });
    try {
      const admin = await connect(proxy.port, { database: 'pgbouncer' });
      const app = await connect(proxy.port);
      expect((await admin.query('SHUTDOWN WAIT_FOR_CLIENTS')).command).toBe('SHUTDOWN');
      await sleep(100);
      expect((await failure(connect(proxy.port))).code).toBe('57P01');
      // The client already in works on; pgmux waits for it.
      expect((await app.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await sleep(300); // deliberate: still running while a client is connected
      expect(proxy.proxy.shuttingDown).toBe(false);
      await app.end();
      await waitFor(() => proxy.proxy.shuttingDown, 5000, () => 'shutdown after the last client');
    } finally {
      await proxy.close();
    }
  });
});
