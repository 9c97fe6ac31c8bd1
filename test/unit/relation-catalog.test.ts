// The relation graph the query cache expands invalidations with (src/routing/relationCatalog.ts),
// fed synthetic catalog rows: which names a write reaches, which reads may be cached, and the
// loading of each database's graph (first read waits, whole-database invalidations reload).
import { describe, expect, it } from 'vitest';
import { RelationCatalogs, RelationGraph } from '../../src/routing/relationCatalog.js';

type Kind = 'r' | 'p' | 'v' | 'm' | 'f';
interface Rel {
  oid: number;
  schema?: string;
  name: string;
  kind?: Kind;
  temp?: boolean;
  writesElsewhere?: boolean;
  callsFunctions?: boolean;
}

/** RELATIONS_SQL's answer for these relations and links. */
function catalog(rels: Rel[], links: { i?: Array<[number, number]>; d?: Array<[number, number]>; f?: Array<[number, number]> } = {}): string {
  return JSON.stringify({
    r: rels.map((r) => [r.oid, r.schema ?? 'public', r.name, r.kind ?? 'r', r.temp ?? false, r.writesElsewhere ?? false, r.callsFunctions ?? false]),
    i: links.i ?? [],
    d: links.d ?? [],
    f: links.f ?? [],
  });
}

const sorted = (v: readonly string[] | '*'): string[] | '*' => (v === '*' ? '*' : [...v].sort());

// base <- v_base <- v_v ; base <- mv (materialized) <- v_mv ; meas partitioned into meas_1, meas_2
// (meas_2 itself partitioned into meas_2a) ; v_meas over meas ; ih_c inherits ih_a and ih_b ;
// fk_child references fk_parent ; audited has a trigger ; ft foreign ; v_ft over ft ; v_fn calls a function ;
// v_sys reads a system catalog ; s2.base another schema's base ; tmp temporary ; secured has a policy reading acl.
const GRAPH = RelationGraph.fromJson(
  catalog(
    [
      { oid: 1, name: 'base' },
      { oid: 2, name: 'v_base', kind: 'v' },
      { oid: 3, name: 'v_v', kind: 'v' },
      { oid: 4, name: 'mv', kind: 'm' },
      { oid: 5, name: 'v_mv', kind: 'v' },
      { oid: 10, name: 'meas', kind: 'p' },
      { oid: 11, name: 'meas_1' },
      { oid: 12, name: 'meas_2', kind: 'p' },
      { oid: 13, name: 'meas_2a' },
      { oid: 14, name: 'v_meas', kind: 'v' },
      { oid: 20, name: 'ih_a' },
      { oid: 21, name: 'ih_b' },
      { oid: 22, name: 'ih_c' },
      { oid: 30, name: 'fk_parent' },
      { oid: 31, name: 'fk_child' },
      { oid: 40, name: 'audited', writesElsewhere: true },
      { oid: 50, name: 'ft', kind: 'f' },
      { oid: 51, name: 'v_ft', kind: 'v' },
      { oid: 52, name: 'v_fn', kind: 'v', callsFunctions: true },
      { oid: 53, name: 'v_sys', kind: 'v' },
      { oid: 60, schema: 's2', name: 'base' },
      { oid: 70, schema: 'pg_temp', name: 'tmp', temp: true },
      { oid: 80, name: 'secured' },
      { oid: 81, name: 'acl' },
      { oid: 90, name: 'Mixed' },
    ],
    {
      i: [[11, 10], [12, 10], [13, 12], [22, 20], [22, 21]],
      d: [[2, 1], [3, 2], [4, 1], [5, 4], [14, 10], [51, 50], [53, 1259], [80, 81]],
      f: [[31, 30]],
    },
  ),
);

describe('RelationGraph.affectedBy: the names whose cached reads a write may change', () => {
  it('a base table: itself and the views over it, transitively; not a materialized view (a snapshot)', () => {
    expect(sorted(GRAPH.affectedBy(['base']))).toEqual(['base', 'public.base', 'public.v_base', 'public.v_v', 's2.base']);
    expect(sorted(GRAPH.affectedBy(['public.base']))).toEqual(['public.base', 'public.v_base', 'public.v_v']);
    expect(sorted(GRAPH.affectedBy(['s2.base']))).toEqual(['s2.base']);
  });

  it('REFRESH of a materialized view: it and the views over it', () => {
    expect(sorted(GRAPH.affectedBy(['mv']))).toEqual(['mv', 'public.mv', 'public.v_mv']);
  });

  it('a write through a view reaches what it is over, and what else reads that', () => {
    expect(sorted(GRAPH.affectedBy(['v_v']))).toEqual(['public.base', 'public.v_base', 'public.v_v', 'v_v']);
  });

  it('partitions: a leaf reaches its ancestors and views over them; a parent its descendants; siblings stay', () => {
    expect(sorted(GRAPH.affectedBy(['meas_2a']))).toEqual(['meas_2a', 'public.meas', 'public.meas_2', 'public.meas_2a', 'public.v_meas']);
    expect(sorted(GRAPH.affectedBy(['meas_1']))).toEqual(['meas_1', 'public.meas', 'public.meas_1', 'public.v_meas']);
    expect(sorted(GRAPH.affectedBy(['meas']))).toEqual(['meas', 'public.meas', 'public.meas_1', 'public.meas_2', 'public.meas_2a', 'public.v_meas']);
  });

  it('inheritance: a write through one parent reaches the children and so every parent they have', () => {
    expect(sorted(GRAPH.affectedBy(['ih_a']))).toEqual(['ih_a', 'public.ih_a', 'public.ih_b', 'public.ih_c']);
    expect(sorted(GRAPH.affectedBy(['ih_c']))).toEqual(['ih_c', 'public.ih_a', 'public.ih_b', 'public.ih_c']);
  });

  it('foreign keys: a write to the referenced table may cascade to the referencing one, not the reverse', () => {
    expect(sorted(GRAPH.affectedBy(['fk_parent']))).toEqual(['fk_parent', 'public.fk_child', 'public.fk_parent']);
    expect(sorted(GRAPH.affectedBy(['fk_child']))).toEqual(['fk_child', 'public.fk_child']);
  });

  it('a table with triggers or rules may write anywhere: the whole database', () => {
    expect(GRAPH.affectedBy(['audited'])).toBe('*');
    expect(GRAPH.affectedBy(['base', 'audited'])).toBe('*');
    expect(GRAPH.affectedBy(['*'])).toBe('*');
  });

  it('a policy reading another table: a write there reaches the table with the policy', () => {
    expect(sorted(GRAPH.affectedBy(['acl']))).toEqual(['acl', 'public.acl', 'public.secured']);
  });

  it('an unknown name stands for itself; names are matched lower-case; several names are merged', () => {
    expect(GRAPH.affectedBy(['nothing'])).toEqual(['nothing']);
    expect(sorted(GRAPH.affectedBy(['mixed']))).toEqual(['mixed', 'public.mixed']);
    expect(sorted(GRAPH.affectedBy(['fk_child', 'mv']))).toEqual(['fk_child', 'mv', 'public.fk_child', 'public.mv', 'public.v_mv']);
  });

  it('answers the same when asked again (memoized answers are not consumed)', () => {
    for (let i = 0; i < 3; i++) expect(sorted(GRAPH.affectedBy(['meas_1']))).toEqual(['meas_1', 'public.meas', 'public.meas_1', 'public.v_meas']);
    for (let i = 0; i < 3; i++) expect(GRAPH.uncacheableRead(['v_ft'], [])).toMatch(/foreign table/);
  });
});

describe('RelationGraph.dependenciesOf: the inverse (what a write to may change a read)', () => {
  it('for every relation, the names it depends on are exactly those whose writes reach it', () => {
    const names = ['base', 'v_base', 'v_v', 'mv', 'v_mv', 'meas', 'meas_1', 'meas_2', 'meas_2a', 'v_meas', 'ih_a', 'ih_b', 'ih_c', 'fk_parent', 'fk_child', 'secured', 'acl'];
    for (const read of names) {
      const deps = new Set(GRAPH.dependenciesOf([read]).map((n) => n.replace(/^public\./, '')));
      for (const write of names) {
        const reached = GRAPH.affectedBy([write]);
        const reaches = reached === '*' || reached.some((n) => n.replace(/^public\./, '') === read);
        expect(deps.has(write), `${write} -> ${read}`).toBe(reaches);
      }
    }
  });
});

describe('RelationGraph.uncacheableRead', () => {
  it('tables, views, partitions, materialized views are cacheable', () => {
    for (const t of ['base', 'public.base', 'v_v', 'meas', 'meas_2a', 'v_meas', 'ih_a', 'mv', 'v_mv', 'secured']) expect(GRAPH.uncacheableRead([t], []), t).toBeNull();
  });

  it('unknown relations, temporary tables, foreign tables, views calling functions or reading system catalogs are not', () => {
    expect(GRAPH.uncacheableRead(['nothing'], [])).toMatch(/not a relation pgmux knows/);
    expect(GRAPH.uncacheableRead(['tmp'], [])).toMatch(/temporary table/);
    expect(GRAPH.uncacheableRead(['ft'], [])).toMatch(/foreign table/);
    expect(GRAPH.uncacheableRead(['v_ft'], [])).toMatch(/foreign table \(public\.ft\)/);
    expect(GRAPH.uncacheableRead(['v_fn'], [])).toMatch(/calling functions/);
    expect(GRAPH.uncacheableRead(['v_sys'], [])).toMatch(/system relations/);
    expect(GRAPH.uncacheableRead(['base', 'ft'], [])).toMatch(/foreign table/);
    expect(GRAPH.uncacheableRead(['s2.tmp'], [])).toMatch(/not a relation pgmux knows/);
  });

  it('query_cache_tables lets listed relations (and what reads them) be cached; never a temporary table', () => {
    expect(GRAPH.uncacheableRead(['v_ft'], ['ft'])).toBeNull();
    expect(GRAPH.uncacheableRead(['v_ft'], ['public.v_ft'])).toBeNull();
    expect(GRAPH.uncacheableRead(['v_fn'], ['v_fn'])).toBeNull();
    expect(GRAPH.uncacheableRead(['v_fn'], ['other.v_fn'])).toMatch(/calling functions/);
    expect(GRAPH.uncacheableRead(['tmp'], ['tmp'])).toMatch(/temporary table/);
    expect(GRAPH.uncacheableRead(['v_ft'], [])).toMatch(/foreign table/); // a new list: answers again
  });

  it('a permanent parent with a temporary inheritance child is not cacheable (other sessions do not see it)', () => {
    const g = RelationGraph.fromJson(catalog([{ oid: 1, name: 'p' }, { oid: 2, schema: 'pg_temp', name: 'c', temp: true }], { i: [[2, 1]] }));
    expect(g.uncacheableRead(['p'], [])).toMatch(/temporary table \(c\)/);
  });

  it('refuses a catalog answer of another shape', () => {
    expect(() => RelationGraph.fromJson(null)).toThrow(/no row/);
    expect(() => RelationGraph.fromJson('{"r": []}')).toThrow(/no list "i"/);
    expect(() => RelationGraph.fromJson('{"r": [["x"]], "i": [], "d": [], "f": []}')).toThrow(/unexpected relation row/);
  });
});

describe('RelationCatalogs: loading per database', () => {
  const log = { warn: () => {}, info: () => {}, debug: () => {} };
  const opts = { refreshMs: 0, loadTimeoutMs: 1000 };

  it('the first read waits for the load; whole-database invalidations make the next read wait for a reload', async () => {
    let answer = catalog([{ oid: 1, name: 'base' }]);
    const catalogs = new RelationCatalogs(async () => answer, log, opts);
    expect(catalogs.forWrite('app')).toBeUndefined(); // no read cached there: written names alone
    const first = catalogs.forRead('app', 'u', 0);
    expect(first).toBeInstanceOf(Promise);
    expect(catalogs.forWrite('app')).toBeNull(); // loading: whole database
    await first;
    const g = catalogs.forRead('app', 'u', 0);
    expect(g).toBeInstanceOf(RelationGraph);
    expect(catalogs.forWrite('app')).toBe(g);
    answer = catalog([{ oid: 1, name: 'base' }, { oid: 2, name: 'v', kind: 'v' }], { d: [[2, 1]] });
    catalogs.changed('app');
    expect(catalogs.forWrite('app')).toBeNull();
    const again = catalogs.forRead('app', 'u', 0);
    expect(again).toBeInstanceOf(Promise);
    await again;
    expect(sorted((catalogs.forRead('app', 'u', 0) as RelationGraph).affectedBy(['base']))).toEqual(['base', 'public.base', 'public.v']);
    expect(catalogs.loads).toBe(2);
  });

  it('a load overtaken by a change does not make the graph current', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const catalogs = new RelationCatalogs(async () => (await gate, catalog([{ oid: 1, name: 'base' }])), log, opts);
    const first = catalogs.forRead('app', 'u', 0) as Promise<void>;
    catalogs.changed('app'); // DDL committed while the load ran
    release();
    await first;
    expect(catalogs.forWrite('app')).toBeNull();
    expect(catalogs.forRead('app', 'u', 0)).toBeInstanceOf(Promise);
  });

  it('a failed load: not cached (no wait) until the retry time, then loaded again', async () => {
    let fail = true;
    const catalogs = new RelationCatalogs(async () => (fail ? Promise.reject(new Error('down')) : catalog([])), log, opts);
    await catalogs.forRead('app', 'u', 0);
    expect(catalogs.forRead('app', 'u', Date.now())).toBeNull();
    expect(catalogs.forWrite('app')).toBeNull();
    fail = false;
    const retry = catalogs.forRead('app', 'u', Date.now() + 1500);
    expect(retry).toBeInstanceOf(Promise);
    await retry;
    expect(catalogs.forRead('app', 'u', Date.now() + 1500)).toBeInstanceOf(RelationGraph);
  });

  it('a read waits one second at most for a load that hangs (then goes on uncached)', async () => {
    const catalogs = new RelationCatalogs(() => new Promise<string>(() => {}), log, { refreshMs: 0, loadTimeoutMs: 30_000 });
    const started = Date.now();
    await catalogs.forRead('app', 'u', 0);
    expect(Date.now() - started).toBeLessThan(2500);
    expect(catalogs.forWrite('app')).toBeNull();
  });

  it('forget (the cache was switched off or on): every database loads afresh; a load in flight brings nothing back', async () => {
    const catalogs = new RelationCatalogs(async () => catalog([]), log, opts);
    await catalogs.forRead('app', 'u', 0);
    const inFlight = (catalogs.changed('app'), catalogs.forRead('app', 'u', 0)) as Promise<void>;
    catalogs.forget();
    await inFlight;
    expect(catalogs.forWrite('app')).toBeUndefined();
    expect(catalogs.forRead('app', 'u', 0)).toBeInstanceOf(Promise);
    expect(catalogs.loads).toBe(3);
  });

  it('refreshes in the background every refreshMs, serving the current graph meanwhile', async () => {
    const catalogs = new RelationCatalogs(async () => catalog([]), log, { refreshMs: 1000, loadTimeoutMs: 1000 });
    await catalogs.forRead('app', 'u', 0);
    const now = Date.now();
    expect(catalogs.forRead('app', 'u', now)).toBeInstanceOf(RelationGraph);
    expect(catalogs.loads).toBe(1);
    expect(catalogs.forRead('app', 'u', now + 2000)).toBeInstanceOf(RelationGraph);
    expect(catalogs.loads).toBe(2);
  });
});
