// The query cache's store (src/cache/queryCache.ts): LRU by bytes, entry bound, TTL,
// invalidation by table, key parts, and the epoch that keeps an overtaken reply out.
import { describe, expect, it } from 'vitest';
import { QueryCache, cacheKey } from '../../src/cache/queryCache.js';

function store(over: Partial<ConstructorParameters<typeof QueryCache>[0]> = {}) {
  let t = 1000;
  const clock = { advance: (ms: number) => void (t += ms) };
  const cache = new QueryCache({ maxBytes: 1 << 20, maxEntryBytes: 1 << 16, ttlMs: 60_000, now: () => t, ...over });
  return { cache, clock };
}

const reply = (n: number, fill = 1) => Buffer.alloc(n, fill);

describe('QueryCache', () => {
  it('returns what was stored, byte for byte, and counts hits and misses', () => {
    const { cache } = store();
    expect(cache.get('db', 'k')).toBeUndefined();
    const r = Buffer.from('reply bytes');
    expect(cache.set('db', 'k', ['t'], r, cache.epoch('db'))).toBe(true);
    r.fill(0); // the store keeps its own copy
    expect(cache.get('db', 'k')?.toString()).toBe('reply bytes');
    expect(cache.get('other', 'k')).toBeUndefined();
    const s = cache.stats();
    expect([s.entries, s.hits, s.misses]).toEqual([1, 1, 2]);
  });

  it('evicts the least recently used entries when over its byte bound', () => {
    const { cache } = store({ maxBytes: 3 * (1000 + 128 + 2) + 10 });
    for (const k of ['a', 'b', 'c']) expect(cache.set('db', k, ['t'], reply(1000), 0)).toBe(true);
    expect(cache.get('db', 'a')).toBeDefined(); // a is now the most recent
    cache.set('db', 'd', ['t'], reply(1000), 0);
    expect(cache.get('db', 'b')).toBeUndefined();
    expect(cache.get('db', 'a')).toBeDefined();
    expect(cache.get('db', 'c')).toBeDefined();
    expect(cache.get('db', 'd')).toBeDefined();
    const s = cache.stats();
    expect(s.evictions).toBe(1);
    expect(s.bytes).toBeLessThanOrEqual(3 * (1000 + 128 + 2) + 10);
  });

  it('does not store a reply above the entry bound', () => {
    const { cache } = store({ maxEntryBytes: 100 });
    expect(cache.set('db', 'big', ['t'], reply(101), 0)).toBe(false);
    expect(cache.set('db', 'ok', ['t'], reply(100), 0)).toBe(true);
    expect(cache.stats().entries).toBe(1);
  });

  it('expires entries after the TTL, or the per-entry TTL', () => {
    const { cache, clock } = store({ ttlMs: 1000 });
    cache.set('db', 'default', ['t'], reply(10), 0);
    cache.set('db', 'short', ['t'], reply(10), 0, 100);
    clock.advance(100);
    expect(cache.get('db', 'short')).toBeUndefined();
    expect(cache.get('db', 'default')).toBeDefined();
    clock.advance(900);
    expect(cache.get('db', 'default')).toBeUndefined();
    expect(cache.stats().entries).toBe(0);
  });

  it('invalidates the entries of the tables written, in that database only', () => {
    const { cache } = store();
    cache.set('db', 'q1', ['public.orders'], reply(10), 0);
    cache.set('db', 'q2', ['customers'], reply(10), 0);
    cache.set('db', 'q3', ['orders', 'customers'], reply(10), 0);
    cache.set('db2', 'q1', ['orders'], reply(10), 0);
    // Unqualified and qualified names meet on the bare name (the schema is search_path's call).
    expect(cache.invalidateTables('db', ['orders'])).toBe(2);
    expect(cache.get('db', 'q1')).toBeUndefined();
    expect(cache.get('db', 'q3')).toBeUndefined();
    expect(cache.get('db', 'q2')).toBeDefined();
    expect(cache.get('db2', 'q1')).toBeDefined();
    expect(cache.invalidateTables('db', '*')).toBe(1);
    expect(cache.get('db', 'q2')).toBeUndefined();
    expect(cache.stats().invalidations).toBe(3);
    expect(cache.clear()).toBe(1);
    expect(cache.stats()).toMatchObject({ entries: 0, bytes: 0, byTable: [] });
  });

  it('clear(database, table) and stats by table', () => {
    const { cache } = store();
    cache.set('db', 'q1', ['a'], reply(10), 0);
    cache.set('db', 'q2', ['a', 'b'], reply(10), 0);
    expect(cache.stats().byTable.map((r) => [r.database, r.table, r.entries])).toEqual([
      ['db', 'a', 2],
      ['db', 'b', 1],
    ]);
    expect(cache.clear('db', 'b')).toBe(1);
    expect(cache.stats().entries).toBe(1);
  });

  it('refuses a reply captured across an invalidation of its database', () => {
    const { cache } = store();
    const epoch = cache.epoch('db');
    cache.invalidateTables('db', ['unrelated']);
    expect(cache.set('db', 'k', ['t'], reply(10), epoch)).toBe(false);
    expect(cache.set('db', 'k', ['t'], reply(10), cache.epoch('db'))).toBe(true);
  });

  it('read_your_writes: an entry stored before notBefore is not served', () => {
    const { cache, clock } = store();
    cache.set('db', 'k', ['t'], reply(10), 0);
    clock.advance(5);
    expect(cache.get('db', 'k', 1006)).toBeUndefined();
    expect(cache.get('db', 'k', 1000)).toBeDefined();
  });

  it('configure (RELOAD): a smaller size evicts the least recently used at once, a smaller entry bound drops larger entries', () => {
    const { cache } = store();
    for (const k of ['a', 'b', 'c']) cache.set('db', k, ['t'], reply(1000), 0);
    cache.set('db', 'big', ['t'], reply(5000), 0);
    expect(cache.get('db', 'a')).toBeDefined(); // a is now the most recent
    cache.configure({ maxBytes: 1 << 20, maxEntryBytes: 4000, ttlMs: 60_000 });
    expect(cache.get('db', 'big')).toBeUndefined();
    expect(cache.stats().entries).toBe(3);
    cache.configure({ maxBytes: 2 * (1000 + 128 + 2) + 10, maxEntryBytes: 4000, ttlMs: 60_000 });
    expect(cache.get('db', 'b')).toBeUndefined();
    expect(cache.get('db', 'c')).toBeDefined();
    expect(cache.get('db', 'a')).toBeDefined();
    expect(cache.stats()).toMatchObject({ entries: 2, evictions: 2 });
    // The new bounds hold for what is stored next.
    expect(cache.set('db', 'e', ['t'], reply(4001), 0)).toBe(false);
  });

  it('configure (RELOAD): a shorter TTL shortens entries stored with the default TTL, not those with their own', () => {
    const { cache, clock } = store({ ttlMs: 60_000 });
    cache.set('db', 'default', ['t'], reply(10), 0);
    cache.set('db', 'hinted', ['t'], reply(10), 0, 30_000);
    clock.advance(2000);
    cache.configure({ maxBytes: 1 << 20, maxEntryBytes: 1 << 16, ttlMs: 1000 });
    expect(cache.get('db', 'default')).toBeUndefined();
    expect(cache.get('db', 'hinted')).toBeDefined();
    cache.set('db', 'next', ['t'], reply(10), 0);
    clock.advance(1000);
    expect(cache.get('db', 'next')).toBeUndefined();
  });

  it('clear() of everything voids replies in flight for a database that holds no entry', () => {
    const { cache } = store();
    const epoch = cache.epoch('empty');
    cache.clear();
    expect(cache.set('empty', 'k', ['t'], reply(10), epoch)).toBe(false);
    expect(cache.set('empty', 'k', ['t'], reply(10), cache.epoch('empty'))).toBe(true);
  });

  it('keys differ in every part that can change the answer', () => {
    const base = { user: 'u', settings: 'search_path=a', sql: 'SELECT $1', unit: 'PBDpE:digest' };
    const keys = new Set([
      cacheKey(base),
      cacheKey({ ...base, user: 'v' }),
      cacheKey({ ...base, settings: 'search_path=b' }),
      cacheKey({ ...base, sql: 'SELECT $1 ' }),
      cacheKey({ ...base, unit: 'BE:digest' }),
      cacheKey({ ...base, unit: 'PBDpE:other' }),
      // The simple protocol's key for the same text.
      cacheKey({ user: 'u', settings: 'search_path=a', sql: 'SELECT $1' }),
      // Length prefixes: moving a separator between parts cannot collide.
      cacheKey({ ...base, user: 'u|1', settings: 'search_path=a' }),
    ]);
    expect(keys.size).toBe(8);
    // The (user, settings) pair is named by a number in the key: equal pairs, equal keys.
    expect(cacheKey({ user: 'u', settings: 'search_path=a', sql: 'x' })).toBe(cacheKey({ user: 'u', settings: 'search_path=a', sql: 'x' }));
    expect(cacheKey({ user: 'u\0v', settings: 's', sql: 'x' })).not.toBe(cacheKey({ user: 'u', settings: '\0vs', sql: 'x' }));
    expect(cacheKey(base)).toBe(cacheKey({ ...base }));
  });
});

describe('tableListed (query_cache_exclude_tables)', () => {
  it('matches bare entries in any schema, and bare tables against qualified entries', async () => {
    const { tableListed } = await import('../../src/cache/queryCache.js');
    expect(tableListed(['audit'], 'audit')).toBe(true);
    expect(tableListed(['audit'], 'app.audit')).toBe(true);
    expect(tableListed(['app.audit'], 'audit')).toBe(true);
    expect(tableListed(['app.audit'], 'app.audit')).toBe(true);
    expect(tableListed(['app.audit'], 'other.audit')).toBe(false);
    expect(tableListed(['audit'], 'audits')).toBe(false);
    expect(tableListed([], 'audit')).toBe(false);
  });
});
