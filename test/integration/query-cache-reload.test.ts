// RELOAD of the query cache's settings on a running pgmux: query_cache_size,
// query_cache_max_entry and query_cache_ttl apply at once, query_cache off drops everything
// (also for clients connected before), query_cache_mode starts and stops the listener.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import type { Config } from '../../src/config/types.js';
import { pgClient, primaryPort } from '../support/cluster.js';
import { RawClient, type PgMessage } from '../support/rawClient.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { sleep, waitFor } from '../support/wait.js';

const T = `qc_reload_${process.pid}`;

/** The primary alone: every reply may be stored at once (no replica lag bound to wait out). */
const primaryOnly = (): Pick<Config, 'nodes'> => ({ nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] as Config['nodes'] });

async function reload(p: TestProxy, change: Partial<Config>): Promise<void> {
  const next = { ...p.proxy.config(), logLevel: p.proxy.logger.level as Config['logLevel'], ...change };
  p.proxy.reloadSource = () => next;
  const r = await p.proxy.reload();
  expect(r.ok, r.message).toBe(true);
}

const firstValue = (msgs: PgMessage[]): string => msgs.find((m) => m.type === 'D')!.body.toString('hex');

describe('query cache settings on RELOAD', () => {
  const raws: RawClient[] = [];
  const clients: pg.Client[] = [];
  const proxies: TestProxy[] = [];

  async function raw(p: TestProxy): Promise<RawClient> {
    const c = await RawClient.connect(p.port);
    raws.push(c);
    const login = await c.startup({ user: 'postgres', database: 'app' });
    expect(login.some((m) => m.type === 'E')).toBe(false);
    return c;
  }

  async function proxy(over: Partial<Config>): Promise<TestProxy> {
    const p = await startProxy({ ...primaryOnly(), queryCache: true, queryCacheMode: 'local', ...over });
    proxies.push(p);
    return p;
  }

  /** Reads `sql` until it is a hit (stored replies of the primary are kept at once). */
  async function cached(p: TestProxy, c: RawClient, sql: string): Promise<void> {
    await c.query(sql);
    const hits = p.proxy.queryCache.stats().hits;
    await c.query(sql);
    expect(p.proxy.queryCache.stats().hits).toBe(hits + 1);
  }

  beforeAll(async () => {
    const admin = await pgClient(primaryPort());
    clients.push(admin);
    await admin.query(`DROP TABLE IF EXISTS ${T}; CREATE TABLE ${T} (id int PRIMARY KEY, v text); INSERT INTO ${T} SELECT g, repeat('x', 10) FROM generate_series(1, 300) g;`);
  });
  afterEach(async () => {
    for (const c of raws.splice(0)) c.destroy();
    for (const p of proxies.splice(0)) await p.close();
  });
  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {});
  });

  it('query_cache_size: a smaller size evicts the least recently used entries at once', async () => {
    const p = await proxy({});
    const c = await raw(p);
    for (let i = 1; i <= 5; i++) await cached(p, c, `SELECT v FROM ${T} WHERE id = ${i}`);
    await c.query(`SELECT v FROM ${T} WHERE id = 1`); // 1 is now the most recent
    const s = p.proxy.queryCache.stats();
    expect(s.entries).toBe(5);
    const perEntry = s.bytes / s.entries;
    await reload(p, { queryCacheBytes: Math.floor(perEntry * 2.5) });
    expect(p.proxy.queryCache.stats()).toMatchObject({ entries: 2, evictions: s.evictions + 3 });
    const hits = p.proxy.queryCache.stats().hits;
    await c.query(`SELECT v FROM ${T} WHERE id = 1`);
    await c.query(`SELECT v FROM ${T} WHERE id = 5`);
    expect(p.proxy.queryCache.stats().hits).toBe(hits + 2);
  });

  it('query_cache_max_entry: larger entries go at once and larger replies are not stored after', async () => {
    const p = await proxy({});
    const c = await raw(p);
    const small = `SELECT v FROM ${T} WHERE id = 1`;
    const large = `SELECT v FROM ${T} WHERE id <= 200 ORDER BY id`;
    await cached(p, c, small);
    await cached(p, c, large);
    await reload(p, { queryCacheMaxEntryBytes: 1024 });
    expect(p.proxy.queryCache.stats().entries).toBe(1);
    const hits = p.proxy.queryCache.stats().hits;
    await c.query(large);
    await c.query(large);
    await c.query(small);
    expect(p.proxy.queryCache.stats()).toMatchObject({ entries: 1, hits: hits + 1 });
  });

  it('query_cache_ttl: a shorter TTL applies to entries already stored and to new ones', async () => {
    const p = await proxy({ queryCacheTtlMs: 60_000 });
    const c = await raw(p);
    const old = `SELECT v FROM ${T} WHERE id = 1`;
    await cached(p, c, old);
    await sleep(400);
    await reload(p, { queryCacheTtlMs: 300 });
    let hits = p.proxy.queryCache.stats().hits;
    await c.query(old); // stored 400 ms ago: expired under the new TTL (stored again now)
    expect(p.proxy.queryCache.stats().hits).toBe(hits);
    await c.query(old);
    expect(p.proxy.queryCache.stats().hits).toBe(hits + 1);
    await sleep(400);
    hits = p.proxy.queryCache.stats().hits;
    await c.query(old);
    expect(p.proxy.queryCache.stats().hits).toBe(hits);
  });

  it('query_cache off drops everything and stops serving clients connected before; a write made while off is seen once on again', async () => {
    const p = await proxy({});
    const c = await raw(p);
    const sql = `SELECT v FROM ${T} WHERE id = 7`;
    await cached(p, c, sql);
    const before = firstValue(await c.query(sql));
    await reload(p, { queryCache: false });
    expect(p.proxy.queryCache.stats().entries).toBe(0);
    const hits = p.proxy.queryCache.stats().hits;
    // Written through pgmux while off: nothing is invalidated for it.
    await c.query(`UPDATE ${T} SET v = 'changed' WHERE id = 7`);
    const whileOff = firstValue(await c.query(sql));
    expect(whileOff).not.toBe(before);
    expect(p.proxy.queryCache.stats().hits).toBe(hits);
    await reload(p, { queryCache: true });
    expect(firstValue(await c.query(sql))).toBe(whileOff);
    expect(firstValue(await c.query(sql))).toBe(whileOff);
    expect(p.proxy.queryCache.stats().hits).toBe(hits + 1);
    await pgClient(primaryPort()).then(async (a) => {
      await a.query(`UPDATE ${T} SET v = repeat('x', 10) WHERE id = 7`);
      await a.end();
    });
  });

  it('query_cache_mode: notify starts the invalidation listener, local stops it (and the entries go)', async () => {
    const p = await proxy({ queryCacheMode: 'local' });
    const other = await proxy({ queryCacheMode: 'notify' });
    expect(p.proxy.cacheBus).toBeNull();
    const c = await raw(p);
    const sql = `SELECT count(*) FROM ${T} WHERE id > 0`;
    await cached(p, c, sql);
    await reload(p, { queryCacheMode: 'notify' });
    expect(p.proxy.queryCache.stats().entries).toBe(0);
    expect(p.proxy.cacheBus).not.toBeNull();
    await waitFor(() => p.proxy.cacheCoherent('app') && other.proxy.cacheCoherent('app'), 5000, () => 'both listeners listening');
    const n0 = firstValue(await c.query(sql));
    await cached(p, c, sql);
    // A write through the other instance reaches this one over NOTIFY now.
    const w = await raw(other);
    await w.query(`INSERT INTO ${T} VALUES (${1000 + Math.floor(Math.random() * 1000)}, 'n')`);
    await waitFor(async () => firstValue(await c.query(sql)) !== n0, 2000, () => 'a fresh read after the other instance wrote');

    const pid = p.proxy.cacheBus!.stats()[0]!.pid;
    expect(pid).not.toBeNull();
    await reload(p, { queryCacheMode: 'local' });
    expect(p.proxy.cacheBus).toBeNull();
    const admin = clients[0]!;
    await waitFor(async () => (await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [pid])).rows[0].n === 0, 5000, () => 'the listener connection closed');
  });
});
