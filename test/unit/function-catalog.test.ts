import { describe, expect, it } from 'vitest';
import { Classifier, classifySql } from '../../src/routing/classifier.js';
import type { FunctionRef } from '../../src/routing/functionLists.js';
import {
  FunctionCatalogs,
  readOnlyOverrides,
  DatabaseFunctions,
  writesVia,
  type CatalogLoader,
} from '../../src/routing/functionCatalog.js';

const calls = (sql: string): Array<[string | null, string]> | undefined => classifySql(sql).calls?.map((c) => [c.schema, c.name]);

describe('the classifier reports the functions a read calls', () => {
  it.each<[string, Array<[string | null, string]> | undefined]>([
    ['SELECT create_order()', [[null, 'create_order']]],
    ['SELECT Create_Order(1), create_order(2)', [[null, 'create_order']]],
    ['SELECT app.create_order($1)', [['app', 'create_order']]],
    ['SELECT "App"."Create Order"()', [['App', 'Create Order']]],
    ['SELECT * FROM make_rows(3) r', [[null, 'make_rows']]],
    ['SELECT * FROM generate_series(1, 3) AS g(i), t u(a), other.t AS v(c)', [[null, 'generate_series']]],
    ['SELECT DISTINCT ON (a) f() FROM t', [[null, 'f']]],
    ['SELECT * FROM t WHERE id IN (SELECT s.pick(x) FROM u)', [['s', 'pick']]],
    ['WITH a AS (SELECT f1()) SELECT f2() FROM a', [[null, 'f1'], [null, 'f2']]],
    ['SELECT (SELECT g() FROM (WITH b AS (SELECT h()) SELECT * FROM b) x)', [[null, 'g'], [null, 'h']]],
    ['EXPLAIN ANALYZE SELECT f()', [[null, 'f']]],
    ['SELECT 1; SELECT f()', [[null, 'f']]],
    ["/* action='x' */ SELECT f()", [[null, 'f']]],
    // Syntax, types and keywords before "(" are no calls.
    ["SELECT CAST(x AS numeric(10, 2)), coalesce(a, b), x IN (1), EXISTS (SELECT 1), ROW(1), '1'::varchar(3) FROM (VALUES (1)) AS v(x)", undefined],
    ['SELECT 1', undefined],
    // Clauses that open with "(" after an unreserved keyword are no calls either.
    ["SELECT count(*) OVER (PARTITION BY a ORDER BY (b)), sum(x) FILTER (WHERE y) OVER w, t AT TIME ZONE ('UTC') FROM a JOIN (SELECT 1) b ON true GROUP BY ROLLUP (a), GROUPING SETS ((a))", [[null, 'count'], [null, 'sum']]],
    // ... but the same words name functions elsewhere.
    ['SELECT zone(1), filter(2)', [[null, 'zone'], [null, 'filter']]],
    // Only for reads: the primary runs anything anyway.
    ['INSERT INTO t VALUES (f())', undefined],
    ["SELECT nextval('s')", undefined],
    // A hint decides alone; a transaction declared READ ONLY cannot write.
    ['/* pgmux:replica */ SELECT f()', undefined],
    ['BEGIN READ ONLY; SELECT f()', undefined],
  ])('%s', (sql, expected) => {
    expect(calls(sql)).toEqual(expected);
  });

  it('the list is frozen and cached with the classification', () => {
    const c = new Classifier();
    const a = c.classify('SELECT f()');
    expect(c.classify('SELECT f()').calls).toBe(a.calls);
    expect(Object.isFrozen(a.calls)).toBe(true);
    expect(Object.isFrozen(a.calls![0])).toBe(true);
  });

  it('flags statements that may change the function catalog', () => {
    for (const sql of [
      'CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$',
      'create or replace function f() returns int language sql begin atomic select 1; end',
      'CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$',
      'ALTER FUNCTION f() STABLE',
      'ALTER ROUTINE f() RENAME TO g',
      'DROP FUNCTION IF EXISTS f()',
      'DROP PROCEDURE p',
      'CREATE EXTENSION pgcrypto',
      'ALTER EXTENSION pgcrypto UPDATE',
      'DROP EXTENSION pgcrypto',
      'DROP SCHEMA s CASCADE',
      'ALTER SCHEMA s RENAME TO t',
      'DROP OWNED BY bob',
      'SELECT 1; CREATE AGGREGATE a (int) (sfunc = int4pl, stype = int)',
    ]) {
      expect(classifySql(sql).changesFunctions, sql).toBe(true);
    }
    for (const sql of ['SELECT f()', 'CREATE TABLE t (a int)', "COMMENT ON FUNCTION f() IS 'x'", 'GRANT EXECUTE ON FUNCTION f() TO bob']) {
      expect(classifySql(sql).changesFunctions, sql).toBeUndefined();
    }
  });
});

describe('writesVia', () => {
  const catalog = new DatabaseFunctions([
    ['public', 'create_order'],
    ['audit', 'create_order'],
    ['public', 'Mixed Case'],
    ['ext', 'uuid_generate_v4'],
    ['app', 'peek'],
  ]);
  const none = readOnlyOverrides([]);
  const ref = (schema: string | null, name: string): FunctionRef => ({ schema, name });

  it('an unqualified call matches a volatile function of that name in any schema', () => {
    expect(writesVia([ref(null, 'count'), ref(null, 'create_order')], catalog, none)).toBe('calls volatile function public.create_order()');
    expect(writesVia([ref(null, 'Mixed Case')], catalog, none)).toBe('calls volatile function public."Mixed Case"()');
    expect(writesVia([ref(null, 'mixed case')], catalog, none)).toBeNull();
  });

  it('a qualified call matches its schema only', () => {
    expect(writesVia([ref('audit', 'create_order')], catalog, none)).toBe('calls volatile function audit.create_order()');
    expect(writesVia([ref('other', 'create_order')], catalog, none)).toBeNull();
  });

  it('known harmless extension functions stay reads', () => {
    expect(writesVia([ref(null, 'uuid_generate_v4')], catalog, none)).toBeNull();
    expect(writesVia([ref('ext', 'uuid_generate_v4')], catalog, none)).toBeNull();
  });

  it('read_only_functions overrides, for every schema the call may resolve to', () => {
    expect(writesVia([ref(null, 'peek')], catalog, readOnlyOverrides(['peek']))).toBeNull();
    expect(writesVia([ref(null, 'peek')], catalog, readOnlyOverrides(['app.peek']))).toBeNull();
    expect(writesVia([ref(null, 'peek')], catalog, readOnlyOverrides(['pe*']))).toBeNull();
    // public.create_order is read-only, but an unqualified call may reach audit's.
    expect(writesVia([ref(null, 'create_order')], catalog, readOnlyOverrides(['public.create_order']))).toBe('calls volatile function audit.create_order()');
    expect(writesVia([ref('public', 'create_order')], catalog, readOnlyOverrides(['public.create_order']))).toBeNull();
    expect(writesVia([ref(null, 'Mixed Case')], catalog, readOnlyOverrides(['"Mixed Case"']))).toBeNull();
    expect(() => readOnlyOverrides(['a.b.c'])).toThrow(/invalid read_only_functions entry "a.b.c"/);
  });

  it('parses the catalog query answer: volatile functions, and every name to tell unknown calls', () => {
    const v = DatabaseFunctions.fromJson('{"builtin":["abs","count"],"user":[["public","f",true],["s","g",false],["public","f",true]]}');
    expect(v.size).toBe(1);
    expect([...v.schemasOf('f')!.keys()]).toEqual(['public']);
    expect(v.schemasOf('g')).toBeUndefined();
    for (const [schema, name] of [[null, 'abs'], ['pg_catalog', 'count'], [null, 'g'], ['s', 'g'], [null, 'f']] as const) expect(v.knows({ schema, name }), `${schema}.${name}`).toBe(true);
    for (const [schema, name] of [[null, 'h'], ['public', 'g'], ['pg_catalog', 'f']] as const) expect(v.knows({ schema, name }), `${schema}.${name}`).toBe(false);
    // A bare array (volatile functions only) knows every name.
    expect(DatabaseFunctions.fromJson('[]').knows({ schema: null, name: 'h' })).toBe(true);
  });

  it('parses the older answer: volatile functions only', () => {
    const v = DatabaseFunctions.fromJson('[["public","f"],["s","f"],["public","f"]]');
    expect(v.size).toBe(2);
    expect([...v.schemasOf('f')!.keys()]).toEqual(['public', 's']);
    expect(() => DatabaseFunctions.fromJson(null)).toThrow(/no row/);
    expect(() => DatabaseFunctions.fromJson('{"a":1}')).toThrow(/neither a JSON array/);
  });
});

describe('FunctionCatalogs', () => {
  function setup(answers: Array<string | Error>) {
    const started: string[] = [];
    const warnings: string[] = [];
    const pending: Array<() => void> = [];
    const load: CatalogLoader = (db) => {
      started.push(db);
      const a = answers.shift() ?? new Error('no more answers');
      return new Promise((resolve, reject) => pending.push(() => (a instanceof Error ? reject(a) : resolve(a))));
    };
    const log = { warn: (_f: Record<string, unknown>, m: string) => void warnings.push(m), info: () => {}, debug: () => {} };
    const catalogs = new FunctionCatalogs(load, log, { readOnlyFunctions: [], refreshMs: 0, loadTimeoutMs: 5000 });
    const answerNext = async () => {
      pending.shift()!();
      await new Promise((r) => setTimeout(r, 0));
    };
    return { catalogs, started, warnings, answerNext };
  }
  const f = [{ schema: null, name: 'f' }];

  it('the first read waits for one load shared by concurrent sessions, then checks synchronously', async () => {
    const { catalogs, started, answerNext } = setup(['[["public","f"]]']);
    const a = catalogs.check('app', 'u1', f, 0);
    const b = catalogs.check('app', 'u2', f, 0);
    expect(a).toBeInstanceOf(Promise);
    expect(b).toBe(a);
    expect(started).toEqual(['app']);
    await answerNext();
    expect(catalogs.check('app', 'u1', f, 1)).toBe('calls volatile function public.f()');
    expect(catalogs.check('app', 'u1', [{ schema: null, name: 'g' }], 1)).toBeNull();
    expect(started).toHaveLength(1);
  });

  it('after DDL, the next read waits for a reload; a load that began before the change does not count', async () => {
    const { catalogs, started, answerNext } = setup(['[]', '[]', '[["public","f"]]']);
    void catalogs.check('app', 'u', f, 0);
    await answerNext();
    expect(catalogs.check('app', 'u', f, 0)).toBeNull();
    catalogs.changed('app');
    const waiting = catalogs.check('app', 'u', f, 0);
    expect(waiting).toBeInstanceOf(Promise);
    catalogs.changed('app'); // another commit while that load runs
    await answerNext();
    const again = catalogs.check('app', 'u', f, 0);
    expect(again).toBeInstanceOf(Promise);
    await answerNext();
    expect(catalogs.check('app', 'u', f, 0)).toBe('calls volatile function public.f()');
    expect(started).toHaveLength(3);
  });

  it('while DDL that may change functions is under way (here or in another worker), reads calling user functions go to the primary', async () => {
    const { catalogs, started, answerNext } = setup(['[]', '[["public","f"]]']);
    void catalogs.check('app', 'u', f, 0);
    await answerNext();
    expect(catalogs.check('app', 'u', f, 0)).toBeNull();
    catalogs.changing('app', 100); // two transactions send CREATE FUNCTION
    catalogs.changing('app', 150);
    expect(catalogs.check('app', 'u', f, 200)).toMatch(/under way/);
    catalogs.changed('app'); // one ends: the other may still create f
    expect(catalogs.check('app', 'u', f, 300)).toMatch(/under way/);
    catalogs.changed('app');
    expect(catalogs.check('app', 'u', f, 400)).toBeInstanceOf(Promise); // reload after the last one ended
    await answerNext();
    expect(catalogs.check('app', 'u', f, 500)).toBe('calls volatile function public.f()');
    expect(started).toHaveLength(2);
  });

  it('a change whose end never arrives (its worker died) stops counting after a minute', async () => {
    const { catalogs, answerNext } = setup(['[]', '[]']);
    void catalogs.check('app', 'u', f, 0);
    await answerNext();
    catalogs.changing('app', 1000);
    expect(catalogs.check('app', 'u', f, 30_000)).toMatch(/under way/);
    expect(catalogs.check('app', 'u', f, 61_001)).toBeInstanceOf(Promise); // reloads instead
    await answerNext();
    expect(catalogs.check('app', 'u', f, 61_002)).toBeNull();
  });

  it('a failed load warns once, falls back to the static lists and backs off', async () => {
    const { catalogs, started, warnings, answerNext } = setup([new Error('boom'), new Error('boom')]);
    const t0 = Date.now();
    void catalogs.check('app', 'u', f, t0);
    await answerNext();
    expect(warnings).toHaveLength(1);
    expect(catalogs.check('app', 'u', f, t0)).toBeNull();
    expect(catalogs.check('app', 'u', f, t0 + 10)).toBeNull();
    expect(started).toHaveLength(1);
    expect(catalogs.check('app', 'u', f, t0 + 1500)).toBeInstanceOf(Promise); // retry after the back-off
    await answerNext();
    expect(warnings).toHaveLength(1);
    expect(started).toHaveLength(2);
  });

  const catalogJson = (volatile: string[], other: string[] = []) =>
    JSON.stringify({ builtin: ['abs'], user: [...volatile.map((n) => ['public', n, true]), ...other.map((n) => ['public', n, false])] });

  it('a call the catalog does not know is looked for by one more load before it reaches a replica (made by another worker or instance)', async () => {
    const { catalogs, started, answerNext } = setup([catalogJson([]), catalogJson(['f'])]);
    void catalogs.check('app', 'u', [{ schema: null, name: 'abs' }], 0);
    await answerNext();
    expect(catalogs.check('app', 'u', [{ schema: null, name: 'abs' }], 10)).toBeNull();
    const waiting = catalogs.check('app', 'u', f, 20);
    expect(waiting).toBeInstanceOf(Promise);
    await answerNext();
    expect(catalogs.check('app', 'u', f, 30)).toBe('calls volatile function public.f()');
    expect(started).toHaveLength(2);
  });

  it('a name no schema has is looked for once; more unknown names within a second go to the primary without a load', async () => {
    const { catalogs, started, answerNext } = setup([catalogJson([]), catalogJson([]), catalogJson([], ['h'])]);
    const g = [{ schema: null, name: 'g' }];
    const h = [{ schema: 'public', name: 'h' }];
    void catalogs.check('app', 'u', g, 0);
    await answerNext(); // the first load already looked for g
    expect(catalogs.check('app', 'u', g, 10)).toBeNull();
    expect(catalogs.check('app', 'u', g, 20)).toBeNull();
    expect(started).toHaveLength(1);
    expect(catalogs.check('app', 'u', h, 30)).toBeInstanceOf(Promise);
    await answerNext();
    expect(catalogs.check('app', 'u', h, 40)).toBeNull(); // absent at that load
    expect(catalogs.check('app', 'u', f, 50)).toBe('calls f(), not in the function catalog yet');
    expect(started).toHaveLength(2);
    // DDL through pgmux may create any of them: looked for again.
    catalogs.changed('app');
    expect(catalogs.check('app', 'u', [...g, ...h], 60)).toBeInstanceOf(Promise);
    await answerNext();
    expect(catalogs.check('app', 'u', h, 70)).toBeNull(); // now known (not volatile)
    expect(catalogs.check('app', 'u', g, 80)).toBeNull(); // absent again
    expect(started).toHaveLength(3);
  });

  it('a name first asked while a load runs is not taken as absent by that load', async () => {
    const { catalogs, started, answerNext } = setup([catalogJson([]), catalogJson([]), catalogJson(['f'])]);
    void catalogs.check('app', 'u', [{ schema: null, name: 'g' }], 0);
    await answerNext();
    expect(catalogs.check('app', 'u', [{ schema: null, name: 'g2' }], 2000)).toBeInstanceOf(Promise); // probe for g2
    expect(catalogs.check('app', 'u', f, 2001)).toBe('calls f(), not in the function catalog yet');
    await answerNext();
    expect(catalogs.check('app', 'u', f, 2002)).toBe('calls f(), not in the function catalog yet'); // next probe not before 3000
    expect(catalogs.check('app', 'u', f, 3000)).toBeInstanceOf(Promise);
    await answerNext();
    expect(catalogs.check('app', 'u', f, 3001)).toBe('calls volatile function public.f()');
    expect(started).toHaveLength(3);
  });

  it('refreshes in the background every refresh period, serving the current set meanwhile', async () => {
    const { catalogs, started, answerNext } = setup(['[]', '[["public","f"]]']);
    catalogs.configure({ readOnlyFunctions: [], refreshMs: 1000, loadTimeoutMs: 5000 });
    const t0 = Date.now();
    void catalogs.check('app', 'u', f, t0);
    await answerNext();
    expect(catalogs.check('app', 'u', f, t0 + 500)).toBeNull();
    expect(started).toHaveLength(1);
    expect(catalogs.check('app', 'u', f, t0 + 5000)).toBeNull(); // starts the refresh, does not wait
    expect(started).toHaveLength(2);
    await answerNext();
    expect(catalogs.check('app', 'u', f, t0 + 5001)).toBe('calls volatile function public.f()');
    catalogs.configure({ readOnlyFunctions: ['f'], refreshMs: 1000, loadTimeoutMs: 5000 });
    expect(catalogs.check('app', 'u', f, t0 + 5002)).toBeNull();
  });
});
