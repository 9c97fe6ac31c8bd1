// The query cache (query_cache) on a running pgmux: simple-protocol reads served from it
// byte for byte, writes through pgmux making the next read fresh, the key's parts (user,
// settings), hints, bounds, TTL; and SHOW CACHE, CACHE CLEAR [table] and /metrics.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, primaryPort, replicaPorts } from '../support/cluster.js';
import { queryMsg, RawClient, type PgMessage } from '../support/rawClient.js';
import { sleep } from '../support/wait.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { INSTALL_SQL } from '../../src/cache/cacheTriggers.js';
import { waitFor } from '../support/wait.js';

describe('query cache on the admin console and /metrics', () => {
  let proxy: TestProxy;
  const open: pg.Client[] = [];
  async function console(user: string): Promise<pg.Client> {
    const c = await pgClient(proxy.port, { database: 'pgbouncer', user });
    c.on('error', () => {});
    open.push(c);
    return c;
  }

  beforeAll(async () => {
    proxy = await startProxy({ adminUsers: ['postgres'], statsUsers: ['app'], http: { host: '127.0.0.1', port: 0 } });
    await waitFor(() => proxy.proxy.topology().primary !== null, 20_000, () => 'cluster up');
  });
  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await proxy?.close();
  });

  it('SHOW CACHE shows totals and entries by table; CACHE CLEAR table drops what read it; stats users may only look', async () => {
    const cache = proxy.proxy.queryCache;
    cache.set('app', 'k1', ['public.orders'], Buffer.alloc(100), cache.epoch('app'));
    cache.set('app', 'k2', ['orders', 'customers'], Buffer.alloc(50), cache.epoch('app'));
    cache.set('other', 'k1', ['orders'], Buffer.alloc(10), cache.epoch('other'));
    expect(cache.get('app', 'k1')).toBeDefined();
    expect(cache.get('app', 'nope')).toBeUndefined();

    const admin = await console('postgres');
    const show = (await admin.query('SHOW CACHE')).rows as Array<Record<string, unknown>>;
    expect(show[0]).toMatchObject({ database: '*', table: '*', entries: '3', hits: '1', misses: '1', hit_ratio: '0.5000' });
    expect(show.slice(1).map((r) => [r.database, r.table, r.entries])).toEqual([
      ['app', 'customers', '1'],
      ['app', 'orders', '2'],
      ['other', 'orders', '1'],
    ]);

    const stats = await console('app');
    expect((await stats.query('SHOW CACHE')).rows.length).toBe(4);
    await expect(stats.query('CACHE CLEAR')).rejects.toMatchObject({ code: '42501' });
    await expect(admin.query('CACHE FLUSH')).rejects.toMatchObject({ code: '42601' });

    const cleared = await admin.query('CACHE CLEAR customers');
    expect(cleared.command).toBe('CACHE');
    expect(cache.stats().entries).toBe(2);
    expect(cache.get('app', 'k1')).toBeDefined();

    const metrics = await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^pgmux_query_cache_entries 2$/m);
    expect(metrics).toMatch(/^pgmux_query_cache_invalidations_total 1$/m);
    expect(metrics).toMatch(/^pgmux_query_cache_hits_total 2$/m);

    await admin.query('CACHE CLEAR');
    expect(cache.stats()).toMatchObject({ entries: 0, bytes: 0, invalidations: 3 });
  });
});

/** query_cache_mode notify (the default): nothing is served or stored until the database's invalidation listener listens. */
async function coherent(p: TestProxy, database = 'app'): Promise<void> {
  await waitFor(() => p.proxy.cacheCoherent(database), 5000, () => `the cache invalidation listener of ${database}`);
}

const routedCount = (p: TestProxy): number => [...p.proxy.counters().transactions.values()].reduce((n, c) => n + c.read + c.write, 0);
const wire = (msgs: PgMessage[]): string => msgs.map((m) => `${m.type}:${m.body.toString('hex')}`).join('|');

describe('query cache in client sessions (simple protocol)', () => {
  const T = `qc_items_${process.pid}`;
  const S = `qc_schema_${process.pid}`;
  let proxy: TestProxy;
  let off: TestProxy;
  const raws: RawClient[] = [];
  const clients: pg.Client[] = [];

  async function raw(p: TestProxy, user = 'postgres', options?: string): Promise<RawClient> {
    const c = await RawClient.connect(p.port);
    raws.push(c);
    const params: Record<string, string> = { user, database: 'app' };
    if (options !== undefined) params.options = options;
    const login = await c.startup(params);
    expect(login.some((m) => m.type === 'E')).toBe(false);
    return c;
  }

  beforeAll(async () => {
    const admin = await pgClient(primaryPort());
    clients.push(admin);
    await admin.query(`DROP TABLE IF EXISTS ${T}; DROP SCHEMA IF EXISTS ${S} CASCADE;
      CREATE TABLE ${T} (id int PRIMARY KEY, name text, owner text);
      INSERT INTO ${T} VALUES (1, 'one', 'app'), (2, 'two', 'postgres'), (3, 'three', 'nobody');
      ALTER TABLE ${T} ENABLE ROW LEVEL SECURITY;
      CREATE POLICY own ON ${T} USING (owner = current_user);
      GRANT SELECT, INSERT ON ${T} TO app;
      CREATE SCHEMA ${S}; CREATE TABLE ${S}.${T} (id int, name text); INSERT INTO ${S}.${T} VALUES (9, 'other schema');
      GRANT USAGE ON SCHEMA ${S} TO app; GRANT SELECT ON ${S}.${T} TO app;`);
    // The replicas have the tables before any read can go there.
    for (const port of replicaPorts()) {
      const r = await pgClient(port);
      clients.push(r);
      for (let i = 0; i < 100; i++) {
        if ((await r.query(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = '${S}'`)).rows[0].n === 1) break;
        await sleep(50);
      }
    }
    // A small lag bound: a reply is stored once the last write is max_lag_ms + one health check old.
    proxy = await startProxy({ queryCache: true, maxLagMs: 100, queryCacheMaxEntryBytes: 4096, queryCacheTtlMs: 60_000 });
    off = await startProxy({ maxLagMs: 100 });
    await coherent(proxy);
  });
  afterAll(async () => {
    for (const c of raws) c.destroy();
    for (const c of clients) await c.end().catch(() => {});
    await proxy?.close();
    await off?.close();
  });

  it('serves a repeated read from the cache, byte for byte as the backend sent it, without a backend', async () => {
    const c = await raw(proxy);
    const sql = `SELECT id, name FROM ${T} ORDER BY id`;
    const before = proxy.proxy.queryCache.stats();
    const first = await c.query(sql);
    expect(first.map((m) => m.type).join('')).toMatch(/^TD+CZ$/);
    const routed = routedCount(proxy);
    const second = await c.query(sql);
    expect(wire(second)).toBe(wire(first));
    const after = proxy.proxy.queryCache.stats();
    expect(after.hits - before.hits).toBe(1);
    expect(routedCount(proxy)).toBe(routed); // no backend taken for the hit
    // The same bytes as a pgmux without the cache sends.
    const plain = await raw(off);
    expect(wire(await plain.query(sql))).toBe(wire(first));
    expect(off.proxy.queryCache.stats()).toMatchObject({ entries: 0, hits: 0, misses: 0 });
  });

  it('a write through another pgmux instance makes the next read fresh (NOTIFY on the primary)', async () => {
    const other = await startProxy({ queryCache: true, maxLagMs: 100 });
    try {
      await coherent(other);
      const c = await raw(proxy);
      const sql = `SELECT count(*) FROM ${T} WHERE name <> 'other-instance'`;
      const countOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.toString('hex');
      const n0 = countOf(await c.query(sql));
      // Cached once the lag bound has passed since the last write to the table.
      await waitFor(async () => {
        const hits = proxy.proxy.queryCache.stats().hits;
        await c.query(sql);
        return proxy.proxy.queryCache.stats().hits > hits;
      }, 5000, () => 'a cache hit');
      const w = await raw(other);
      await w.query(`INSERT INTO ${T} VALUES (${5000 + Math.floor(Math.random() * 1000)}, 'x', 'nobody')`);
      await waitFor(async () => countOf(await c.query(sql)) !== n0, 1000, () => 'a fresh read after the other instance wrote');
    } finally {
      await other.close();
    }
  });

  it('a write through pgmux makes the next read fresh', async () => {
    const c = await raw(proxy);
    const sql = `SELECT count(*) FROM ${T}`;
    const n0 = (await c.query(sql)).find((m) => m.type === 'D')!.body.toString('hex');
    expect(wire(await c.query(sql))).toContain(n0);
    const hits = proxy.proxy.queryCache.stats().hits;
    expect(hits).toBeGreaterThan(0);
    await c.query(`INSERT INTO ${T} VALUES (10, 'ten', 'postgres')`);
    // The entry is gone at once; the read itself may meet a replica that has not replayed the
    // INSERT yet (as without the cache), so it is repeated until it has.
    const countOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.toString('hex');
    await waitFor(async () => countOf(await c.query(sql)) !== n0, 3000, () => 'a read with the new row');
    expect(proxy.proxy.queryCache.stats().hits).toBe(hits);
  });

  it('query_cache_exclude_tables keeps reads of those tables out', async () => {
    const ex = await startProxy({ queryCache: true, maxLagMs: 100, queryCacheExcludeTables: [T] });
    try {
      await coherent(ex);
      const c = await raw(ex);
      const sql = `SELECT id FROM ${T} WHERE id = 1`;
      for (let i = 0; i < 3; i++) await c.query(sql);
      expect(ex.proxy.queryCache.stats()).toMatchObject({ hits: 0, entries: 0 });
    } finally {
      await ex.close();
    }
  });

  it("the primary's reply is stored right after a write (it has every committed write); a replica's waits for the lag bound", async () => {
    const solo = await startProxy({ queryCache: true, nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] });
    try {
      await coherent(solo);
      const c = await raw(solo);
      const sql = `SELECT count(*) FROM ${T} WHERE id >= 0`;
      await c.query(`INSERT INTO ${T} VALUES (${9000 + Math.floor(Math.random() * 900)}, 'p', 'nobody')`);
      const first = await c.query(sql); // the primary answers: stored although max_lag_ms is off
      const hits = solo.proxy.queryCache.stats().hits;
      expect(wire(await c.query(sql))).toBe(wire(first));
      expect(solo.proxy.queryCache.stats().hits).toBe(hits + 1);
    } finally {
      await solo.close();
    }
    // With replicas and max_lag_ms off, a read right after a write is not stored (it may be stale).
    const spread = await startProxy({ queryCache: true, nodes: clusterInfo().nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 })) });
    try {
      await coherent(spread);
      const c = await raw(spread);
      const sql = `SELECT count(*) FROM ${T} WHERE id >= 1`;
      await c.query(`INSERT INTO ${T} VALUES (${9900 + Math.floor(Math.random() * 90)}, 'r', 'nobody')`);
      await c.query(sql);
      await c.query(sql);
      expect(spread.proxy.queryCache.stats().hits).toBe(0);
    } finally {
      await spread.close();
    }
  });

  it('a write sent behind a read on the same backend (no replica: both on the primary) makes the read fresh', async () => {
    const solo = await startProxy({ queryCache: true, maxLagMs: 100, nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] });
    try {
      await coherent(solo);
      await sleep(400);
      const c = await raw(solo);
      const sql = `SELECT count(*) FROM ${T} WHERE id > 0`;
      const countOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.toString('hex');
      // The read waits on a lock, so the INSERT arrives while it runs and follows it on its backend.
      const locker = await pgClient(primaryPort());
      clients.push(locker);
      await locker.query(`BEGIN; LOCK TABLE ${T} IN ACCESS EXCLUSIVE MODE`);
      c.send(queryMsg(sql));
      await sleep(300);
      c.send(queryMsg(`INSERT INTO ${T} VALUES (${20 + Math.floor(Math.random() * 1000)}, 'x', 'nobody')`));
      await sleep(100);
      await locker.query('COMMIT');
      const before = countOf(await c.readUntil('Z'));
      await c.readUntil('Z');
      await sleep(50);
      expect(countOf(await c.query(sql))).not.toBe(before);
    } finally {
      await solo.close();
    }
  });

  it('two users with different row-level security never see each other\'s rows', async () => {
    await sleep(400); // past the lag bound of the last test's write
    const sql = `SELECT id FROM ${T} ORDER BY id`;
    const su = await raw(proxy, 'postgres');
    const app = await raw(proxy, 'app');
    const h = proxy.proxy.queryCache.stats().hits;
    for (let i = 0; i < 2; i++) {
      const all = (await su.query(sql)).filter((m) => m.type === 'D').length;
      const own = (await app.query(sql)).filter((m) => m.type === 'D');
      expect(all).toBeGreaterThanOrEqual(3);
      expect(own.length).toBe(1); // only owner = 'app'
    }
    expect(proxy.proxy.queryCache.stats().hits).toBe(h + 2); // both served from the cache the second time
  });

  it('search_path and TimeZone are part of the key', async () => {
    await sleep(400);
    const a = await raw(proxy, 'postgres');
    const b = await raw(proxy, 'postgres', `-c search_path=${S}`);
    const sql = `SELECT name FROM ${T} ORDER BY id LIMIT 1`;
    const h = proxy.proxy.queryCache.stats().hits;
    for (let i = 0; i < 2; i++) {
      expect((await a.query(sql)).find((m) => m.type === 'D')!.body.toString()).toContain('one');
      expect((await b.query(sql)).find((m) => m.type === 'D')!.body.toString()).toContain('other schema');
    }
    // Changed by SET within the session (pgmux carries it to the next backends), then by SET ROLE.
    const c = await raw(proxy, 'postgres');
    expect((await c.query(sql)).find((m) => m.type === 'D')!.body.toString()).toContain('one');
    await c.query(`SET search_path = ${S}`);
    expect((await c.query(sql)).find((m) => m.type === 'D')!.body.toString()).toContain('other schema');
    await c.query('RESET search_path');
    const rowsOf = async (q: string) => (await c.query(q)).filter((m) => m.type === 'D').length;
    const all = `SELECT id FROM ${T} ORDER BY id`;
    expect(await rowsOf(all)).toBeGreaterThanOrEqual(3);
    // pgmux does not carry a SET ROLE to the client's next backend (pg_settings has no role
    // row to read it back from), so after one the cache keeps out of this client's way.
    const stats0 = proxy.proxy.queryCache.stats();
    await c.query('SET ROLE app');
    await rowsOf(all);
    await c.query('RESET ROLE');
    await rowsOf(all);
    const stats1 = proxy.proxy.queryCache.stats();
    expect([stats1.hits, stats1.misses]).toEqual([stats0.hits, stats0.misses]);
    const tzSql = `SELECT '2020-01-01 00:00:00+00'::timestamptz::text AS t FROM ${T} LIMIT 1`;
    const utc = await raw(proxy, 'postgres', '-c TimeZone=UTC');
    const tokyo = await raw(proxy, 'postgres', '-c TimeZone=Asia/Tokyo');
    for (let i = 0; i < 2; i++) {
      expect((await utc.query(tzSql)).find((m) => m.type === 'D')!.body.toString()).toContain('2020-01-01 00:00:00+00');
      expect((await tokyo.query(tzSql)).find((m) => m.type === 'D')!.body.toString()).toContain('2020-01-01 09:00:00+09');
    }
    expect(proxy.proxy.queryCache.stats().hits).toBeGreaterThanOrEqual(h + 4);
  });

  it('nocache hint, uncacheable reads and replies above query_cache_max_entry are not stored', async () => {
    await sleep(400);
    const c = await raw(proxy);
    const count = () => proxy.proxy.queryCache.stats().entries;
    const e0 = count();
    await c.query(`/* pgmux:nocache */ SELECT id FROM ${T}`);
    await c.query(`SELECT id, now() FROM ${T}`);
    await c.query(`SELECT repeat('x', 5000) FROM ${T} LIMIT 1`);
    expect(count()).toBe(e0);
    await c.query(`SELECT repeat('x', 50) FROM ${T} LIMIT 1`);
    expect(count()).toBe(e0 + 1);
  });

  it('an entry expires after its TTL (hint)', async () => {
    await sleep(400);
    const c = await raw(proxy);
    const sql = `/* pgmux:cache ttl=300ms */ SELECT name FROM ${T} WHERE id = 1`;
    await c.query(sql);
    const h = proxy.proxy.queryCache.stats().hits;
    await c.query(sql);
    expect(proxy.proxy.queryCache.stats().hits).toBe(h + 1);
    await sleep(1500);
    await c.query(sql);
    expect(proxy.proxy.queryCache.stats().hits).toBe(h + 1);
  });
});

describe('query_cache_mode: triggers (writers that bypass pgmux)', () => {
  const DB = `qc_trg_${process.pid}`;
  let admin: pg.Client;
  let proxy: TestProxy | null = null;

  beforeAll(async () => {
    admin = await pgClient(primaryPort(), { database: 'postgres' });
    await admin.query(`DROP DATABASE IF EXISTS ${DB}`);
    await admin.query(`CREATE DATABASE ${DB}`);
    const d = await pgClient(primaryPort(), { database: DB });
    await d.query('CREATE TABLE items (id int PRIMARY KEY)');
    await d.query('INSERT INTO items VALUES (1)');
    await d.query(INSTALL_SQL);
    await d.end();
  });
  afterAll(async () => {
    await proxy?.close();
    await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`).catch(() => {});
    await admin.end();
  });

  it('an INSERT made directly on the primary makes the next read through pgmux fresh within 1 s', async () => {
    // The primary alone: its reply is stored at once, so only the invalidation is under test.
    proxy = await startProxy({ queryCache: true, queryCacheMode: 'triggers', nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] });
    await coherent(proxy, DB);
    const c = await pgClient(proxy.port, { database: DB });
    try {
      const count = async () => (await c.query('SELECT count(*)::int AS n FROM items')).rows[0].n as number;
      expect(await count()).toBe(1);
      const hits = proxy.proxy.queryCache.stats().hits;
      expect(await count()).toBe(1);
      expect(proxy.proxy.queryCache.stats().hits).toBe(hits + 1); // served from the cache
      const direct = await pgClient(primaryPort(), { database: DB });
      await direct.query('INSERT INTO items VALUES (2)');
      await direct.end();
      const started = Date.now();
      await waitFor(async () => (await count()) === 2, 1000, () => 'the direct INSERT seen through pgmux');
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      await c.end();
    }
  });
});
