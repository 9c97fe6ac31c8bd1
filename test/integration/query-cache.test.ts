// The query cache's visibility on a running pgmux: SHOW CACHE, CACHE CLEAR [table] on the
// admin console and the pgmux_query_cache_* series on /metrics. (Serving from the cache is
// not wired into client sessions yet: these tests fill the store directly.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
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
