// Transaction pooling: clients share few backends, each sees its own transactions and
// session settings, a vanished client leaves nothing behind, and waiting is bounded.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { firstError, queryMsg, RawClient, rows } from '../support/rawClient.js';
import { sleep } from '../support/wait.js';

/**
 * Only the primary as a node: these tests watch one pool and the backends it opens, so
 * reads must not be routed to replicas.
 */
function primaryOnly() {
  return { nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] };
}


let open: Array<pg.Client | RawClient> = [];
let proxies: TestProxy[] = [];

async function proxyWith(overrides: Parameters<typeof startProxy>[0]): Promise<TestProxy> {
  const p = await startProxy({ ...primaryOnly(), ...overrides });
  proxies.push(p);
  return p;
}

async function connect(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  c.on('error', () => {});
  open.push(c);
  return c;
}

let direct: pg.Client | null = null;
async function primary(): Promise<pg.Client> {
  direct ??= await pgClient(primaryPort(), { database: 'app' });
  return direct;
}

afterEach(async () => {
  for (const c of open) {
    if (c instanceof RawClient) c.destroy();
    else await c.end().catch(() => {});
  }
  open = [];
  for (const p of proxies) await p.close();
  proxies = [];
});

afterAll(async () => {
  await direct?.end();
});

async function idleInTransaction(appName: string): Promise<number> {
  const r = await (await primary()).query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
    [appName],
  );
  return r.rows[0].n;
}

/** Another session updates the row with lock_timeout 2s: throws if the row is still locked. */
async function updateRowDirectly(aid: number): Promise<void> {
  const c = await pgClient(primaryPort());
  try {
    await c.query("SET lock_timeout = '2s'");
    const r = await c.query('UPDATE pgbench_accounts SET abalance = abalance WHERE aid = $1', [aid]);
    expect(r.rowCount).toBe(1);
  } finally {
    await c.end();
  }
}

describe('a client that vanishes mid-transaction', () => {
  it('pg client destroyed after BEGIN; UPDATE: no lock, no open transaction left', async () => {
    const proxy = await proxyWith({ poolSize: 2 });
    const app = `pgmux_kill_${process.pid}_a`;
    const c = await connect(proxy.port, { application_name: app });
    await c.query('BEGIN');
    await c.query('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 101');
    expect(await idleInTransaction(app)).toBe(1);
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await expect.poll(() => idleInTransaction(app), { timeout: 2000 }).toBe(0);
    await updateRowDirectly(101);
    // The pool keeps working for others.
    const d = await connect(proxy.port);
    expect((await d.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);
  });

  it('raw client destroyed while its UPDATE waits on a lock: cancelled, rolled back, lock freed', async () => {
    const proxy = await proxyWith({ poolSize: 2 });
    const app = `pgmux_kill_${process.pid}_b`;
    // A direct session holds the row; the proxied client blocks on it inside its transaction.
    const holder = await pgClient(primaryPort());
    open.push(holder);
    await holder.query('BEGIN');
    await holder.query('UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 102');
    const c = await RawClient.login(proxy.port, { application_name: app });
    open.push(c);
    expect(firstError(await c.query('BEGIN; UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 103'))).toBeUndefined();
    c.send(queryMsg('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 102'));
    const sessions = async (extra: string) =>
      ((await (await primary()).query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 ${extra}`, [app])).rows[0].n as number);
    await expect.poll(() => sessions("AND wait_event_type = 'Lock'"), { timeout: 5000 }).toBe(1); // the UPDATE waits on the lock
    c.destroy();
    await holder.query('COMMIT');
    await expect.poll(() => sessions(''), { timeout: 2000 }).toBe(0);
    await updateRowDirectly(102);
    await updateRowDirectly(103);
  });

  it('a client gone while idle in transaction after many statements: nothing left, pool reusable', async () => {
    const proxy = await proxyWith({ poolSize: 1 });
    const app = `pgmux_kill_${process.pid}_c`;
    const c = await RawClient.login(proxy.port, { application_name: app });
    open.push(c);
    await c.query('BEGIN');
    for (let i = 0; i < 5; i++) await c.query(`UPDATE pgbench_accounts SET abalance = abalance WHERE aid = ${110 + i}`);
    c.destroy();
    await expect.poll(() => idleInTransaction(app), { timeout: 2000 }).toBe(0);
    await updateRowDirectly(112);
    // poolSize 1: the only backend slot must have come back.
    const d = await connect(proxy.port);
    await d.query("SET lock_timeout = '2s'");
    await d.query('UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 110');
  });
});

describe('many clients, few backends', () => {
  it('200 concurrent clients over pool_size 2 all complete, never more than 2 backends', async () => {
    const proxy = await proxyWith({ poolSize: 2, queryWaitTimeoutMs: 30_000 });
    const table = `pool200_${process.pid}`;
    const d = await primary();
    await d.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (client int, n int); GRANT ALL ON ${table} TO app`);

    let maxPool = 0;
    let maxPg = 0;
    let sampling = true;
    const sampler = (async () => {
      const s = await pgClient(primaryPort(), { database: 'postgres' });
      while (sampling) {
        for (const p of proxy.proxy.allPools()) maxPool = Math.max(maxPool, p.size);
        const r = await s.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'");
        maxPg = Math.max(maxPg, r.rows[0].n);
        await sleep(10); // the sampling period
      }
      await s.end();
    })();

    const N = 200;
    const results = await Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const c = await connect(proxy.port, { user: 'app', password: 'apppass' });
        const a = await c.query('SELECT $1::int * 3 AS v', [i]);
        await c.query('BEGIN');
        await c.query(`INSERT INTO ${table} VALUES ($1, 1), ($1, 2)`, [i]);
        const mine = await c.query(`SELECT sum(n)::int AS s FROM ${table} WHERE client = $1`, [i]);
        await c.query('COMMIT');
        const b = await c.query(`SELECT count(*)::int AS k FROM ${table} WHERE client = $1`, [i]);
        await c.end();
        return { v: a.rows[0].v, s: mine.rows[0].s, k: b.rows[0].k };
      }),
    );
    sampling = false;
    await sampler;
    results.forEach((r, i) => expect(r).toEqual({ v: i * 3, s: 3, k: 2 }));
    expect((await d.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(2 * N);
    expect(maxPool).toBeGreaterThan(0);
    expect(maxPool).toBeLessThanOrEqual(2);
    expect(maxPg).toBeGreaterThan(0);
    expect(maxPg).toBeLessThanOrEqual(2);
    await d.query(`DROP TABLE ${table}`);
  }, 60_000);
});

describe('query_wait_timeout', () => {
  it('with the only backend held, another client gets 53300 within ~1 s; the holder goes on', async () => {
    const proxy = await proxyWith({ poolSize: 1, queryWaitTimeoutMs: 500 });
    const a = await connect(proxy.port);
    const b = await connect(proxy.port);
    await a.query('BEGIN');
    await a.query('SELECT 1');
    const t0 = Date.now();
    const err = await b.query('SELECT 2').then(
      () => null,
      (e: Error & { code?: string }) => e,
    );
    const elapsed = Date.now() - t0;
    expect(err).not.toBeNull();
    expect(err!.code).toBe('53300');
    expect(err!.message).toMatch(/time(d)? ?out|timeout/i);
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(1500);
    expect((await a.query('SELECT 3 AS x')).rows).toEqual([{ x: 3 }]);
    await a.query('COMMIT');
    const c = await connect(proxy.port);
    expect((await c.query('SELECT 4 AS x')).rows).toEqual([{ x: 4 }]);
  });
});

describe('a client that keeps sending while it waits for a backend', () => {
  it('is read up to a bound, not without limit, and every statement runs once a backend is free', async () => {
    const proxy = await proxyWith({ poolSize: 1, queryWaitTimeoutMs: 30_000 });
    const flood = await RawClient.login(proxy.port, { database: 'app' });
    open.push(flood);
    const holder = await connect(proxy.port);
    await holder.query('BEGIN');
    await holder.query('SELECT 1');
    // 120 pipelined queries of ~100 kB each (12 MB), sent while the only backend is taken.
    const pad = 'x'.repeat(100_000);
    const N = 120;
    for (let i = 0; i < N; i++) flood.send(queryMsg(`SELECT ${i} AS n /* ${pad} */`));
    await sleep(700); // deliberate: time enough for a reader without a bound to drain it all
    // pgmux holds at most ~256 kB of it and leaves the rest in the socket: the client's
    // own send buffer is still full.
    const unsent = flood.socket.writableLength;
    expect(unsent).toBeGreaterThan(1_000_000);
    await holder.query('COMMIT');
    const got = [];
    for (let i = 0; i < N; i++) got.push(...(await flood.readUntil('Z', 30_000)));
    expect(firstError(got)).toBeUndefined();
    expect(rows(got).map((r) => Number(r[0]))).toEqual([...Array(N).keys()]);
  }, 90_000);
});

describe('transaction pooling correctness over pool_size 1', () => {
  it('two clients interleave transactions on one backend and each sees its own data', async () => {
    const proxy = await proxyWith({ poolSize: 1 });
    const table = `interleave_${process.pid}`;
    const d = await primary();
    await d.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (who text, i int)`);
    const a = await connect(proxy.port);
    const b = await connect(proxy.port);
    const pids = new Set<number>();
    const run = async (c: pg.Client, who: string) => {
      for (let i = 0; i < 20; i++) {
        await c.query('BEGIN');
        await c.query(`INSERT INTO ${table} VALUES ($1, $2)`, [who, i]);
        const r = await c.query(`SELECT count(*)::int AS n, max(i) AS m, pg_backend_pid() AS pid FROM ${table} WHERE who = $1`, [who]);
        pids.add(r.rows[0].pid);
        expect(r.rows[0].n).toBe(i + 1);
        expect(r.rows[0].m).toBe(i);
        const s = await c.query('SELECT txid_current_if_assigned() IS NOT NULL AS tx');
        expect(s.rows[0].tx).toBe(true);
        await c.query(i % 5 === 4 ? 'ROLLBACK' : 'COMMIT');
        if (i % 5 === 4) await c.query(`INSERT INTO ${table} VALUES ($1, $2)`, [who, i]); // autocommit redo
      }
    };
    await Promise.all([run(a, 'a'), run(b, 'b')]);
    expect(pids.size).toBe(1);
    const r = await d.query(`SELECT who, count(*)::int AS n FROM ${table} GROUP BY who ORDER BY who`);
    expect(r.rows).toEqual([
      { who: 'a', n: 20 },
      { who: 'b', n: 20 },
    ]);
    await d.query(`DROP TABLE ${table}`);
  });

  it('an aborted transaction holds the backend until ROLLBACK and does not leak its state', async () => {
    const proxy = await proxyWith({ poolSize: 1, queryWaitTimeoutMs: 5000 });
    const a = await connect(proxy.port);
    const b = await connect(proxy.port);
    await a.query('BEGIN');
    await expect(a.query('SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
    let bDone = false;
    const bq = b.query('SELECT 7 AS x').then((r) => {
      bDone = true;
      return r;
    });
    await sleep(300); // deliberate: B must still be waiting after a while
    expect(bDone).toBe(false); // A's failed transaction still owns the only backend
    await expect(a.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
    await a.query('ROLLBACK');
    expect((await bq).rows).toEqual([{ x: 7 }]);
    expect((await a.query('SELECT 8 AS x')).rows).toEqual([{ x: 8 }]);
  });

  it('statement_timeout from startup options applies only to the client that asked for it', async () => {
    const proxy = await proxyWith({ poolSize: 1, queryWaitTimeoutMs: 10_000 });
    const s = await connect(proxy.port, { options: '-c statement_timeout=100' });
    const n = await connect(proxy.port);
    for (let round = 0; round < 2; round++) {
      await expect(s.query('SELECT pg_sleep(1)')).rejects.toMatchObject({ code: '57014' });
      const r = await n.query('SELECT pg_sleep(1), pg_backend_pid() AS pid');
      expect(r.rows).toHaveLength(1);
      expect((await s.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('100ms');
      expect((await n.query('SHOW statement_timeout')).rows[0].statement_timeout).toBe('0');
    }
    const pids = new Set([(await s.query('SELECT pg_backend_pid() AS p')).rows[0].p, (await n.query('SELECT pg_backend_pid() AS p')).rows[0].p]);
    expect(pids.size).toBe(1);
  });

  it('application_name and TimeZone stay per client while interleaving on one backend', async () => {
    const proxy = await proxyWith({ poolSize: 1 });
    const serverTz = (await (await primary()).query('SHOW TimeZone')).rows[0].TimeZone as string;
    const specs = [
      { app: 'alpha', tz: 'Asia/Tokyo', opts: { application_name: 'alpha', options: '-c TimeZone=Asia/Tokyo' } },
      { app: 'beta', tz: 'America/New_York', opts: { application_name: 'beta', options: '-c TimeZone=America/New_York' } },
      { app: 'gamma', tz: serverTz, opts: { application_name: 'gamma' } },
    ];
    const cs = await Promise.all(specs.map((sp) => connect(proxy.port, sp.opts)));
    const pids = new Set<number>();
    await Promise.all(
      cs.map(async (c, k) => {
        for (let i = 0; i < 15; i++) {
          const r = await c.query("SELECT current_setting('TimeZone') AS tz, current_setting('application_name') AS app, pg_backend_pid() AS pid");
          pids.add(r.rows[0].pid);
          expect(r.rows[0]).toMatchObject({ tz: specs[k]!.tz, app: specs[k]!.app });
          const show = await c.query('SHOW TimeZone');
          expect(show.rows[0].TimeZone).toBe(specs[k]!.tz);
          if (i % 3 === 0) {
            await c.query('BEGIN');
            const t = await c.query("SELECT to_char(timestamptz '2020-01-01 00:00:00+00', 'HH24') AS h");
            expect(t.rows[0].h).toBe(k === 0 ? '09' : k === 1 ? '19' : t.rows[0].h);
            await c.query('COMMIT');
          }
        }
      }),
    );
    expect(pids.size).toBe(1);
  });

  it('a client changing application_name with SET keeps it; others are unaffected', async () => {
    const proxy = await proxyWith({ poolSize: 1 });
    const a = await connect(proxy.port, { application_name: 'first' });
    const b = await connect(proxy.port, { application_name: 'other' });
    await a.query("SET application_name = 'renamed'");
    for (let i = 0; i < 3; i++) {
      expect((await b.query("SELECT current_setting('application_name') AS a")).rows[0].a).toBe('other');
      expect((await a.query("SELECT current_setting('application_name') AS a")).rows[0].a).toBe('renamed');
    }
  });
});

describe('SET of unreported parameters follows the client (track_extra_parameters)', () => {
  it('search_path, statement_timeout and role set by one client never leak to another over one backend', async () => {
    const { startProxy } = await import('../support/pgmux.js');
    const { pgClient } = await import('../support/cluster.js');
    const proxy = await startProxy({ poolSize: 1 });
    try {
      const a = await pgClient(proxy.port);
      const b = await pgClient(proxy.port);
      await a.query('CREATE SCHEMA IF NOT EXISTS track_s');
      await a.query("SET search_path = track_s, public");
      await a.query("SET statement_timeout = '150ms'");
      for (let i = 0; i < 3; i++) {
        // Hinted to the primary, so both clients share its single backend.
        const ra = await a.query("/* pgmux:primary */ SELECT current_setting('search_path') AS sp, current_setting('statement_timeout') AS st, pg_backend_pid() AS pid");
        const rb = await b.query("/* pgmux:primary */ SELECT current_setting('search_path') AS sp, current_setting('statement_timeout') AS st, pg_backend_pid() AS pid");
        expect(ra.rows[0].pid).toBe(rb.rows[0].pid); // one backend, shared
        expect(ra.rows[0]).toMatchObject({ sp: 'track_s, public', st: '150ms' });
        expect(rb.rows[0]).toMatchObject({ sp: '"$user", public', st: '0' });
      }
      await expect(a.query('/* pgmux:primary */ SELECT pg_sleep(1)')).rejects.toMatchObject({ code: '57014' });
      await b.query('/* pgmux:primary */ SELECT pg_sleep(0.3)'); // b has no timeout
      await a.query('RESET statement_timeout');
      await a.query('/* pgmux:primary */ SELECT pg_sleep(0.3)');
      await a.end();
      await b.end();
    } finally {
      await proxy.close();
    }
  });
});

describe('closing pgmux', () => {
  it('closes every idle backend (a pool closing skipped every other one)', async () => {
    const admin = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      await admin.query('DROP DATABASE IF EXISTS pool_close_db');
      await admin.query('CREATE DATABASE pool_close_db');
      const proxy = await startProxy({ poolSize: 10 });
      // Six writes at once: six backends on the primary, idle in one pool afterwards.
      await Promise.all(
        [...Array(6)].map(async () => {
          const c = await pgClient(proxy.port, { database: 'pool_close_db' });
          await c.query('SELECT pg_sleep(0.05), txid_current()');
          await c.end();
        }),
      );
      const count = async () => (await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'pool_close_db'`)).rows[0].n as number;
      expect(await count()).toBe(6);
      await proxy.close();
      await expect.poll(count, { timeout: 3000, interval: 50 }).toBe(0);
    } finally {
      await admin.end();
    }
  });
});
