// How the relations of each database hang together, for the query cache: which names' cached
// reads a write to a table can change (partition and inheritance ancestors and descendants,
// views over them, foreign-key cascades), and which reads cannot be cached at all (temporary
// tables, foreign tables, views that call functions or read what pgmux cannot see).
//
// Cache entries are indexed under the names their query text reads (a view's name, a parent's
// name); a write is expanded here to every name whose reads it can change, at invalidation
// time, by every path that invalidates (a write through this pgmux, another instance's NOTIFY,
// a trigger's NOTIFY, which names only the base table). Expanding at invalidation rather than
// indexing each entry under its base tables keeps entries small (a view over a table with a
// thousand partitions would otherwise carry a thousand index names per entry) and lets a
// NOTIFY carry only what was written.
//
// The graph is loaded once per database (the first cached read waits one round trip), again
// (reads wait for it) after anything invalidates a whole database (DDL through pgmux, another instance's DDL, the
// triggers' DDL event, a gap in the invalidation bus), and every `function_catalog_refresh`.
// While a database's graph is not current, reads there are not cached and writes there drop
// the whole database: never a stale entry.

import { catalogChanged, newCatalogLoadState, startCatalogLoad, type CatalogLoadState, type CatalogLog } from './catalogLoad.js';

/** A bare name (`t`, any schema) or `schema.t`, lower-case, as the classifier names tables. */
export type TableName = string;

/**
 * One row, one column: a JSON object of the user relations and their links. Relations are
 * [oid, schema ('pg_temp' for any session's temporary schema), name, relkind, temporary,
 * writes elsewhere (user triggers or non-SELECT rules: a write may change any table),
 * view calls a function that is not IMMUTABLE]. `i`: [child, parent] (partitions and
 * inheritance). `d`: [reader, relation read] (a view's or materialized view's query, a
 * row-level security policy's subqueries). `f`: [referencing, referenced] foreign keys.
 * Schema-qualified throughout: the backend may carry any client's search_path.
 */
export const RELATIONS_SQL = `SELECT pg_catalog.json_build_object(
 'r', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(c.oid::int8,
          CASE WHEN c.relpersistence = 't' THEN 'pg_temp' ELSE n.nspname END, c.relname, c.relkind, c.relpersistence = 't',
          EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgname <> 'pgmux_cache_invalidate')
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid AND w.ev_type <> '1'),
          c.relkind = 'v' AND EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w
            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
            JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
            WHERE w.ev_class = c.oid AND p.provolatile <> 'i'))), '[]')
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'),
 'i', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(inhrelid::int8, inhparent::int8)), '[]') FROM pg_catalog.pg_inherits),
 'd', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(x.reader::int8, x.reads::int8)), '[]') FROM (
         SELECT DISTINCT w.ev_class AS reader, d.refobjid AS reads FROM pg_catalog.pg_rewrite w
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
         WHERE w.ev_type = '1' AND d.refobjid <> w.ev_class
         UNION
         SELECT p.polrelid, d.refobjid FROM pg_catalog.pg_policy p
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
         WHERE d.refobjid <> p.polrelid) x),
 'f', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(conrelid::int8, confrelid::int8)), '[]') FROM pg_catalog.pg_constraint WHERE contype = 'f')
)::text`;

interface Relation {
  readonly oid: number;
  readonly schema: string;
  readonly name: string;
  /** relkind: r table, p partitioned table, v view, m materialized view, f foreign table. */
  readonly kind: string;
  readonly temporary: boolean;
  /** User triggers or rewrite rules on writes: a write to it may change tables pgmux cannot name. */
  readonly writesElsewhere: boolean;
  /** A view calling a function that is not IMMUTABLE (now(), a function reading tables). */
  readonly callsFunctions: boolean;
  /** A view or policy reads a relation outside the user relations (a system catalog, a sequence). */
  readsUnknown: boolean;
  readonly parents: Relation[];
  readonly children: Relation[];
  /** What its query (view, materialized view) or its policies read. */
  readonly reads: Relation[];
  /** Views and policy-bearing tables whose reads include this relation's rows (not materialized views: a snapshot). */
  readonly readBy: Relation[];
  /** Tables with a foreign key to it: a DELETE or UPDATE may cascade there. */
  readonly referencedBy: Relation[];
  /** Tables it has a foreign key to. */
  readonly references: Relation[];
}

/** Why a read may not be cached, or null: per name, for one query_cache_tables list. */
type ReadMemo = Map<TableName, string | null>;

const qualified = (r: Relation): string => `${r.schema}.${r.name}`.toLowerCase();

/** One database's relations and their links, as RELATIONS_SQL returned them. Immutable; answers memoized. */
export class RelationGraph {
  private readonly byName = new Map<string, Relation[]>();
  readonly size: number;
  private readonly affectedMemo = new Map<TableName, readonly string[] | '*'>();
  private readonly dependsMemo = new Map<TableName, readonly string[]>();
  private readMemo: ReadMemo = new Map();
  private readMemoList: readonly string[] | null = null;

  private constructor(relations: Relation[]) {
    for (const r of relations) {
      const key = r.name.toLowerCase();
      let list = this.byName.get(key);
      if (list === undefined) this.byName.set(key, (list = []));
      list.push(r);
    }
    this.size = relations.length;
  }

  /** Parses RELATIONS_SQL's answer; throws on anything else. */
  static fromJson(text: string | null): RelationGraph {
    if (text === null) throw new Error('the relation catalog query returned no row');
    const doc = JSON.parse(text) as Record<string, unknown>;
    const rows = (k: string): unknown[][] => {
      const v = doc?.[k];
      if (!Array.isArray(v) || !v.every(Array.isArray)) throw new Error(`the relation catalog has no list "${k}"`);
      return v as unknown[][];
    };
    const byOid = new Map<number, Relation>();
    for (const r of rows('r')) {
      const [oid, schema, name, kind, temporary, writesElsewhere, callsFunctions] = r;
      if (typeof oid !== 'number' || typeof schema !== 'string' || typeof name !== 'string' || typeof kind !== 'string') throw new Error('unexpected relation row');
      byOid.set(oid, {
        oid, schema, name, kind,
        temporary: temporary === true,
        writesElsewhere: writesElsewhere === true,
        callsFunctions: callsFunctions === true,
        readsUnknown: false,
        parents: [], children: [], reads: [], readBy: [], referencedBy: [], references: [],
      });
    }
    const pairs = (k: string, link: (a: Relation | undefined, b: Relation | undefined) => void): void => {
      for (const [a, b] of rows(k)) {
        if (typeof a !== 'number' || typeof b !== 'number') throw new Error(`unexpected row in "${k}"`);
        link(byOid.get(a), byOid.get(b));
      }
    };
    pairs('i', (child, parent) => {
      if (child === undefined || parent === undefined) return; // system relations: none of ours
      child.parents.push(parent);
      parent.children.push(child);
    });
    pairs('d', (reader, read) => {
      if (reader === undefined) return;
      if (read === undefined) {
        reader.readsUnknown = true;
        return;
      }
      reader.reads.push(read);
      if (reader.kind !== 'm') read.readBy.push(reader);
    });
    pairs('f', (referencing, referenced) => {
      if (referencing === undefined || referenced === undefined) return;
      referencing.references.push(referenced);
      referenced.referencedBy.push(referencing);
    });
    return new RelationGraph([...byOid.values()]);
  }

  /** The relations `name` may resolve to: that name in every schema when bare (search_path is not known), else that schema's. Read-only. */
  private resolve(name: TableName): readonly Relation[] {
    const dot = name.lastIndexOf('.');
    const all = this.byName.get(dot < 0 ? name : name.slice(dot + 1)) ?? [];
    if (dot < 0) return all;
    const schema = name.slice(0, dot);
    return all.filter((r) => r.schema.toLowerCase() === schema);
  }

  /**
   * Why reads of `tables` may not be cached, or null. `listed` (query_cache_tables): relations
   * whose reads are cached although pgmux cannot see all they depend on (foreign tables,
   * views calling functions or reading system catalogs); never temporary tables.
   */
  uncacheableRead(tables: readonly TableName[], listed: readonly string[]): string | null {
    if (listed !== this.readMemoList) {
      this.readMemo = new Map();
      this.readMemoList = listed;
    }
    for (let k = 0; k < tables.length; k++) {
      const t = tables[k]!;
      let why = this.readMemo.get(t);
      if (why === undefined) {
        why = this.whyNotCached(t, listed);
        this.readMemo.set(t, why);
      }
      if (why !== null) return why;
    }
    return null;
  }

  private whyNotCached(table: TableName, listed: readonly string[]): string | null {
    const found = this.resolve(table);
    if (found.length === 0) return `${table} is not a relation pgmux knows (created since its catalog was read, or temporary)`;
    const seen = new Set<Relation>();
    const stack = [...found];
    while (stack.length > 0) {
      const r = stack.pop()!;
      if (seen.has(r)) continue;
      seen.add(r);
      if (r.temporary) return `${table} reads a temporary table (${r.name}): each backend has its own`;
      if (isListed(listed, r)) continue; // cached as the list says; what it reads is not looked at
      if (r.kind === 'f') return `${table} reads a foreign table (${qualified(r)}): written elsewhere`;
      if (r.callsFunctions) return `${table} reads a view calling functions (${qualified(r)})`;
      if (r.readsUnknown) return `${table} reads a view or policy over system relations (${qualified(r)})`;
      // A parent's reads include its children's rows; a view's, what its query reads; a
      // materialized view's, only its own snapshot.
      stack.push(...r.children);
      if (r.kind !== 'm') stack.push(...r.reads);
    }
    return null;
  }

  /**
   * Every name whose cached reads a write to `tables` may change, qualified and lower-case,
   * the written names included; '*' when a write may reach tables pgmux cannot name (user
   * triggers, rules). A name the graph does not know stands for itself.
   */
  affectedBy(tables: readonly TableName[]): readonly string[] | '*' {
    if (tables.length === 1 && tables[0] !== '*') return this.affectedOne(tables[0]!); // the usual write: nothing allocated
    const out = new Set<string>();
    for (const t of tables) {
      if (t === '*') return '*';
      const names = this.affectedOne(t);
      if (names === '*') return '*';
      for (const n of names) out.add(n);
    }
    return [...out];
  }

  private affectedOne(table: TableName): readonly string[] | '*' {
    let names = this.affectedMemo.get(table);
    if (names === undefined) {
      names = this.affected(table);
      this.affectedMemo.set(table, names);
    }
    return names;
  }

  private affected(table: TableName): readonly string[] | '*' {
    // Rows that may change: the table, its descendants (a write through a parent reaches
    // them), the relations under a written view (an updatable view writes its base), and
    // tables a foreign key cascades to.
    const changed = new Set<Relation>();
    const stack = [...this.resolve(table)];
    while (stack.length > 0) {
      const r = stack.pop()!;
      if (changed.has(r)) continue;
      if (r.writesElsewhere) return '*';
      changed.add(r);
      stack.push(...r.children, ...r.referencedBy);
      if (r.kind === 'v') stack.push(...r.reads);
    }
    // Reads that see those rows: ancestors (a parent's reads include its children's rows),
    // views and policy-bearing tables over any of them, transitively.
    const affected = new Set<Relation>(changed);
    const up = [...changed];
    while (up.length > 0) {
      const r = up.pop()!;
      for (const next of [...r.parents, ...r.readBy]) {
        if (affected.has(next)) continue;
        affected.add(next);
        up.push(next);
      }
    }
    const names = new Set<string>([table]);
    for (const r of affected) names.add(qualified(r));
    return Object.freeze([...names]);
  }

  /**
   * The inverse of affectedBy: every name a write to which may change reads of `tables`
   * (for how long ago a replica's answer may have missed a write). Unknown names stand for
   * themselves.
   */
  dependenciesOf(tables: readonly TableName[]): readonly string[] {
    if (tables.length === 1) return this.dependencies(tables[0]!);
    const out = new Set<string>();
    for (const t of tables) for (const n of this.dependencies(t)) out.add(n);
    return [...out];
  }

  private dependencies(table: TableName): readonly string[] {
    let names = this.dependsMemo.get(table);
    if (names !== undefined) return names;
    // What the read sees: the relation, its descendants, what views and policies read.
    const read = new Set<Relation>();
    const stack = [...this.resolve(table)];
    while (stack.length > 0) {
      const r = stack.pop()!;
      if (read.has(r)) continue;
      read.add(r);
      stack.push(...r.children);
      if (r.kind !== 'm') stack.push(...r.reads);
    }
    // Whatever a write to which changes those rows: ancestors, views written through, referenced tables.
    const writers = new Set<Relation>(read);
    const more = [...read];
    while (more.length > 0) {
      const r = more.pop()!;
      for (const next of [...r.parents, ...r.readBy.filter((v) => v.kind === 'v'), ...r.references]) {
        if (writers.has(next)) continue;
        writers.add(next);
        more.push(next);
      }
    }
    const set = new Set<string>([table]);
    for (const r of writers) set.add(qualified(r));
    names = Object.freeze([...set]);
    this.dependsMemo.set(table, names);
    return names;
  }
}

/** On query_cache_tables: a bare entry matches the name in every schema. */
function isListed(listed: readonly string[], r: Relation): boolean {
  if (listed.length === 0) return false;
  const name = r.name.toLowerCase();
  const q = qualified(r);
  for (const e of listed) if (e === name || e === q) return true;
  return false;
}

/** Runs RELATIONS_SQL in `database` (as `user`) and resolves its one value. */
export type RelationLoader = (database: string, user: string) => Promise<string | null>;

export interface RelationCatalogOptions {
  /** Background reload period; 0 = only after whole-database invalidations. */
  refreshMs: number;
  /** A load that takes longer counts as failed. */
  loadTimeoutMs: number;
}

/** `stale`: a whole-database invalidation (DDL, a gap) came after the last load started. */
interface DatabaseRelations extends CatalogLoadState {
  graph: RelationGraph | null;
}

/**
 * A read waits this long at most for a load (the pool may be busy, the primary slow): past
 * it, it goes on uncached. Caching is an optimisation; a read must not stall for it.
 */
const MAX_READ_WAIT_MS = 1000;

/** The relation graphs of the databases whose reads are cached, and their loading. */
export class RelationCatalogs {
  private readonly byDatabase = new Map<string, DatabaseRelations>();
  /** Loads started (tests, diagnostics). */
  loads = 0;

  constructor(
    private readonly load: RelationLoader,
    private readonly log: CatalogLog,
    private opts: RelationCatalogOptions,
  ) {}

  configure(opts: RelationCatalogOptions): void {
    this.opts = opts;
  }

  /**
   * For a cacheable read in `database`: the current graph; a promise (never rejecting) to
   * wait for, then ask again, while it is first loaded or reloaded after a whole-database
   * invalidation; null after a failed load until the next attempt (do not cache).
   */
  forRead(database: string, user: string, now: number): RelationGraph | null | Promise<void> {
    let d = this.byDatabase.get(database);
    if (d === undefined) {
      d = { ...newCatalogLoadState(), graph: null };
      this.byDatabase.set(database, d);
      return this.waitBriefly(this.start(d, database, user));
    }
    if (d.graph === null || d.stale) {
      // Not known, or changed: wait (one round trip, shared by every read meanwhile), unless
      // the last load failed: then not cached until the next attempt.
      if (d.loading === null) {
        if (now < d.retryAt) return null;
        void this.start(d, database, user);
      }
      return this.waitBriefly(d.loading!);
    }
    if (d.loading === null && this.opts.refreshMs > 0 && now - d.loadedAt >= this.opts.refreshMs && now >= d.retryAt) {
      void this.start(d, database, user); // in the background: the current graph serves meanwhile
    }
    return d.graph;
  }

  /**
   * For a write to `database`: the graph to expand it with, or null: no current graph
   * (drop the whole database). `undefined`: no read there was ever cached through a graph,
   * so no entry can read a table there: the written names alone do.
   */
  forWrite(database: string): RelationGraph | null | undefined {
    const d = this.byDatabase.get(database);
    if (d === undefined) return undefined;
    return d.graph !== null && !d.stale ? d.graph : null;
  }

  /** `database` was invalidated as a whole (DDL, a gap): its relations may have changed. */
  changed(database: string): void {
    const d = this.byDatabase.get(database);
    if (d === undefined) return;
    catalogChanged(d);
  }

  /** Every graph goes (the cache was off: DDL went unseen); each database loads again on its next cached read. */
  forget(): void {
    for (const d of this.byDatabase.values()) d.generation++; // a load in flight does not bring one back
    this.byDatabase.clear();
  }

  /** The graph as last loaded, current or not (tests, diagnostics). */
  known(database: string): RelationGraph | null {
    return this.byDatabase.get(database)?.graph ?? null;
  }

  private waitBriefly(loading: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | null = null;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.min(MAX_READ_WAIT_MS, this.opts.loadTimeoutMs));
      timer.unref();
    });
    return Promise.race([loading, bound]).finally(() => {
      if (timer !== null) clearTimeout(timer);
    });
  }

  private start(d: DatabaseRelations, database: string, user: string): Promise<void> {
    this.loads++;
    return startCatalogLoad(
      d,
      () => this.load(database, user).then(RelationGraph.fromJson),
      this.opts.loadTimeoutMs,
      (graph, recovered) => {
        d.graph = graph;
        if (recovered) this.log.info({ db: database, relations: graph.size }, 'relation catalog loaded again');
        else this.log.debug({ db: database, relations: graph.size }, 'relation catalog loaded');
      },
      (err, firstOfStreak) => {
        if (firstOfStreak) this.log.warn({ db: database, user, err: err.message }, 'cannot load the relation catalog: reads of tables are not cached meanwhile');
      },
    );
  }
}
