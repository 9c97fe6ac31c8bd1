// Query-cache analysis in src/routing/cacheability.ts (via the classifier): which reads may be
// cached and the tables they read, and which tables a write invalidates.
import { describe, expect, it } from 'vitest';
import { Classifier, classifySql } from '../../src/routing/classifier.js';
import { cacheVerdict, formatCacheVerdict } from '../../src/routing/cacheability.js';

describe('cacheVerdict', () => {
  it.each([
    ['SELECT * FROM orders WHERE id = $1', ['orders']],
    ['select a.x, b.y from public.a a join s."B" b on a.id = b.id', ['public.a', 's.b']],
    ['SELECT lower(name) FROM users u, accounts AS acc(x, y) WHERE u.id = 3', ['users', 'accounts']],
    ['SELECT * FROM (SELECT id FROM t1) s JOIN t2 USING (id)', ['t1', 't2']],
    ['WITH x AS (SELECT * FROM t1) SELECT * FROM x', ['t1', 'x']],
    ['TABLE t3', ['t3']],
    ['VALUES (1), (2)', []],
    ['SELECT coalesce(a, 0) FROM t WHERE b IN (1, 2) AND EXISTS (SELECT 1 FROM u)', ['t', 'u']],
  ])('cacheable: %s', (sql, tables) => {
    const v = cacheVerdict(sql);
    expect(v).toEqual({ ok: true, tables });
  });

  it.each([
    ['SELECT now()', 'now()'],
    ['SELECT random() FROM t', 'random()'],
    ['SELECT current_user', 'current_user'],
    ['SELECT current_timestamp FROM t', 'current_timestamp'],
    ["SELECT 'now'::timestamptz", 'current time'],
    ["SELECT nextval('s')", 'nextval'],
    ['SELECT my_func(1) FROM t', 'my_func()'],
    ['SELECT public.lower(x) FROM t', 'lower()'],
    ['SELECT * FROM t FOR UPDATE', 'locking clause'],
    ['SELECT * FROM t FOR SHARE', 'locking clause'],
    ['SELECT * FROM pg_class', 'system catalog'],
    ['SELECT * FROM information_schema.tables', 'system catalog'],
    ['SELECT * FROM generate_series(1, 3)', 'generate_series'],
    ['SELECT 1; SELECT 2', 'more than one statement'],
    ['INSERT INTO t VALUES (1)', 'not a SELECT'],
    ['SELECT * FROM t AS x(a, b) WHERE f(a)', 'f()'],
    ['WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'data-modifying'],
    ['SHOW search_path', 'not a SELECT'],
    ['EXPLAIN SELECT 1', 'not a SELECT'],
    ['SELECT * INTO t2 FROM t', 'INTO'],
    ['/* pgmux:nocache */ SELECT * FROM t', 'nocache'],
    ["SELECT 'x", 'unterminated'],
  ])('not cacheable: %s', (sql, why) => {
    const v = cacheVerdict(sql);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.why).toContain(why);
  });

  it('reads the ttl hint', () => {
    expect(cacheVerdict('/* pgmux:cache ttl=30s */ SELECT * FROM t')).toEqual({ ok: true, tables: ['t'], ttlMs: 30_000 });
    expect(cacheVerdict('/* pgmux:cache ttl=250ms */ SELECT 1')).toEqual({ ok: true, tables: [], ttlMs: 250 });
    // The hint cannot make an uncacheable statement cacheable.
    expect(cacheVerdict('/* pgmux:cache ttl=30s */ SELECT now()').ok).toBe(false);
  });

  it('is cached by text in the Classifier and leaves classify() results alone', () => {
    const c = new Classifier();
    const v = c.cacheVerdict('SELECT * FROM t');
    expect(c.cacheVerdict('SELECT * FROM t')).toBe(v);
    expect(c.classify('SELECT * FROM t').writesTables).toBeUndefined();
  });

  it('formats for pgmux classify --cache', () => {
    expect(formatCacheVerdict(cacheVerdict('SELECT * FROM t'))).toBe('cache\ttables=t');
    expect(formatCacheVerdict(cacheVerdict('SELECT now()'))).toMatch(/^nocache\tcalls now\(\)/);
    expect(formatCacheVerdict(cacheVerdict('DELETE FROM t'), classifySql('DELETE FROM t').writesTables)).toMatch(/\tinvalidates=t$/);
  });
});

describe('Classification.writesTables', () => {
  it.each([
    ['INSERT INTO orders VALUES (1)', ['orders']],
    ['UPDATE ONLY public.Orders SET x = 1', ['public.orders']],
    ['DELETE FROM "Items" WHERE id = 1', ['items']],
    ['MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE', ['t']],
    ['TRUNCATE TABLE a, ONLY b', ['a', 'b']],
    ['COPY t (a, b) FROM STDIN', ['t']],
    ['INSERT INTO a VALUES (1); UPDATE b SET x = 1', ['a', 'b']],
    ['SET search_path = x', []],
    ['LOCK TABLE t', []],
  ])('%s -> %j', (sql, tables) => {
    expect(classifySql(sql).writesTables).toEqual(tables);
  });

  it.each([
    'CREATE TABLE t (a int)',
    'ALTER TABLE t ADD COLUMN b int',
    'DROP TABLE t',
    'WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d',
    "SELECT nextval('s')",
    'EXECUTE stmt(1)',
    'CALL proc()',
    'DO $$ BEGIN END $$',
    'TRUNCATE a CASCADE',
    'INSERT INTO a VALUES (1); DROP TABLE b',
  ])('%s -> *', (sql) => {
    expect(classifySql(sql).writesTables).toBe('*');
  });

  it('is absent for reads, empty for transaction control', () => {
    expect(classifySql('SELECT * FROM t').writesTables).toBeUndefined();
    expect(classifySql('BEGIN').writesTables).toEqual([]);
  });
});
