// Which functions of each database may write: the VOLATILE ones outside pg_catalog and
// information_schema (user and extension functions, procedures), read from pg_proc.
//
// The classifier reports the functions a read calls (Classification.calls); whether one of
// them may write depends on the database, so the check happens at routing time against the
// set kept here, per database. The set is loaded once per database (the first transaction
// that needs it waits one round trip), again after a transaction that may have changed it
// ends (DDL seen through pgmux), when a read calls a name it does not have (a function made
// elsewhere since the load), and every `function_catalog_refresh` in the background.
// A load that fails leaves routing on the static lists (built-in writing functions,
// write_functions) until the next attempt, with back-off.
//
// Volatile but harmless built-ins (random(), now()-likes, gen_random_uuid()) live in
// pg_catalog and are not loaded; a few harmless extension functions are listed below.

import { compileFunctionList, type FunctionRef, type FunctionSet } from './functionLists.js';
import { catalogChanged, newCatalogLoadState, startCatalogLoad, type CatalogLoadState, type CatalogLog } from './catalogLoad.js';

/**
 * One row, one column, a JSON object:
 * - `builtin`: the names of every function in pg_catalog and information_schema;
 * - `user`: [schema, name, volatile] of every other function (overloads once; volatile when
 *   any overload is).
 * Every function is listed so that a call naming none of them (created since the load, by
 * another worker, another instance or a migration) is seen as unknown, not as harmless.
 * Schema-qualified throughout: the backend may carry any client's search_path.
 */
export const FUNCTION_CATALOG_SQL =
  'SELECT pg_catalog.json_build_object(' +
  "'builtin', (SELECT pg_catalog.json_agg(DISTINCT p.proname) FROM pg_catalog.pg_proc p " +
  'JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace ' +
  "WHERE n.nspname IN ('pg_catalog', 'information_schema')), " +
  "'user', COALESCE((SELECT pg_catalog.json_agg(pg_catalog.json_build_array(f.nspname, f.proname, f.volatile)) " +
  "FROM (SELECT n.nspname, p.proname, pg_catalog.bool_or(p.provolatile = 'v') AS volatile FROM pg_catalog.pg_proc p " +
  'JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace ' +
  "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') GROUP BY n.nspname, p.proname) f), '[]'))"

const SYSTEM_SCHEMAS: ReadonlySet<string> = new Set(['pg_catalog', 'information_schema']);

/** Volatile extension functions that do not write (uuid-ossp, pgcrypto): reads stay on replicas. */
export const HARMLESS_EXTENSION_FUNCTIONS: readonly string[] = Object.freeze([
  'uuid_generate_v1',
  'uuid_generate_v1mc',
  'uuid_generate_v4',
  'gen_random_bytes',
  'gen_salt',
  'gen_random_uuid',
]);

/**
 * The functions of one database: the volatile ones outside the system schemas (name ->
 * schema -> routing reason), and every function name, to tell a call the catalog does not
 * know from one it knows to be harmless.
 */
export class DatabaseFunctions {
  private readonly byName = new Map<string, Map<string, string>>();
  /** Names of the functions outside the system schemas, any schema. */
  private readonly userNames = new Set<string>();
  /** Number of volatile (schema, name) pairs. */
  readonly size: number;

  /**
   * `builtin`: the function names of the system schemas; `others`: schema -> names of the
   * other functions, volatile or not. Both null: every name counts as known (a catalog
   * listing only volatile functions).
   */
  constructor(
    volatile: Iterable<readonly [schema: string, name: string]>,
    private readonly builtin: ReadonlySet<string> | null = null,
    private readonly others: ReadonlyMap<string, ReadonlySet<string>> | null = null,
  ) {
    if (others !== null) for (const names of others.values()) for (const name of names) this.userNames.add(name);
    let n = 0;
    for (const [schema, name] of volatile) {
      let schemas = this.byName.get(name);
      if (schemas === undefined) this.byName.set(name, (schemas = new Map()));
      if (schemas.has(schema)) continue;
      // Built once here, so routing a read to the primary allocates nothing.
      schemas.set(schema, `calls volatile function ${quoteName(schema)}.${quoteName(name)}()`);
      n++;
    }
    this.size = n;
  }

  /** Parses FUNCTION_CATALOG_SQL's answer (or a bare array of volatile [schema, name]); throws on anything else. */
  static fromJson(text: string | null): DatabaseFunctions {
    if (text === null) throw new Error('the function catalog query returned no row');
    const parsed = JSON.parse(text) as unknown;
    if (Array.isArray(parsed)) return new DatabaseFunctions(pairsOf(parsed));
    const o = parsed as { builtin?: unknown; user?: unknown } | null;
    if (o === null || typeof o !== 'object' || !Array.isArray(o.user) || (o.builtin !== null && !Array.isArray(o.builtin))) {
      throw new Error('the function catalog query returned neither a JSON array nor {builtin, user}');
    }
    const builtin = new Set<string>();
    for (const name of (o.builtin ?? []) as unknown[]) if (typeof name === 'string') builtin.add(name);
    const others = new Map<string, Set<string>>();
    const volatile: Array<[string, string]> = [];
    for (const r of o.user as unknown[]) {
      if (!Array.isArray(r) || typeof r[0] !== 'string' || typeof r[1] !== 'string') throw new Error('unexpected row in the function catalog');
      let names = others.get(r[0]);
      if (names === undefined) others.set(r[0], (names = new Set()));
      names.add(r[1]);
      if (r[2] === true) volatile.push([r[0], r[1]]);
    }
    return new DatabaseFunctions(volatile, builtin, others);
  }

  /** The schemas with a volatile function of this exact name, each with its routing reason. */
  schemasOf(name: string): ReadonlyMap<string, string> | undefined {
    return this.byName.get(name);
  }

  /** Whether some function could be what the call names (unqualified: in any schema). */
  knows(call: FunctionRef): boolean {
    if (this.builtin === null || this.others === null) return true;
    if (call.schema !== null) {
      return SYSTEM_SCHEMAS.has(call.schema) ? this.builtin.has(call.name) : this.others.get(call.schema)?.has(call.name) === true;
    }
    return this.builtin.has(call.name) || this.userNames.has(call.name);
  }
}

function pairsOf(rows: unknown[]): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  for (const r of rows) {
    if (!Array.isArray(r) || typeof r[0] !== 'string' || typeof r[1] !== 'string') throw new Error('unexpected row in the function catalog');
    pairs.push([r[0], r[1]]);
  }
  return pairs;
}

function callKey(c: FunctionRef): string {
  return c.schema === null ? c.name : `${c.schema}\0${c.name}`;
}

/** `name` as SQL would need it written: quoted unless a plain lower-case identifier. */
export function quoteName(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/** read_only_functions plus the harmless extension functions: calls that stay reads. */
export function readOnlyOverrides(readOnlyFunctions: readonly string[]): FunctionSet {
  return compileFunctionList([...HARMLESS_EXTENSION_FUNCTIONS, ...readOnlyFunctions], 'read_only_functions');
}

/**
 * Why a read that calls `calls` must run on the primary, or null. A qualified call matches
 * its schema; an unqualified one any schema with a volatile function of that name (any
 * overload: search_path is not known here, so the check is conservative). An override
 * keeps a call a read only when it covers every schema the call may resolve to.
 */
export function writesVia(calls: readonly FunctionRef[], catalog: DatabaseFunctions, overrides: FunctionSet): string | null {
  for (let k = 0; k < calls.length; k++) {
    const c = calls[k]!;
    const schemas = catalog.schemasOf(c.name);
    if (schemas === undefined) continue;
    if (c.schema !== null) {
      const reason = schemas.get(c.schema);
      if (reason !== undefined && !overrides.matches(c.schema, c.name)) return reason;
      continue;
    }
    for (const [schema, reason] of schemas) if (!overrides.matches(schema, c.name)) return reason;
  }
  return null;
}

/** Runs FUNCTION_CATALOG_SQL in `database` (as `user`) and resolves its one value. */
export type CatalogLoader = (database: string, user: string) => Promise<string | null>;

export interface CatalogOptions {
  readOnlyFunctions: readonly string[];
  /** Background reload period; 0 = only after DDL seen through pgmux. */
  refreshMs: number;
  /** A load that takes longer counts as failed (waiting transactions go on with the static lists). */
  loadTimeoutMs: number;
}

/**
 * A transaction that may change the catalog is under way: until it ends, the catalog cannot
 * say whether a call names a function it is creating, so reads calling user functions go to
 * the primary. An end that never comes (a worker died) stops counting after this long.
 */
const MAX_PENDING_CHANGE_MS = 60_000;
const CHANGE_PENDING_REASON = "a transaction that may change this database's functions is under way";

/**
 * A call the catalog does not know names a function made since the load (through another
 * worker, another instance, a migration) or none at all: one more load tells, at most this
 * often per database; until then such reads go to the primary.
 */
const PROBE_INTERVAL_MS = 1000;
/** Bound on the unknown calls remembered per database (a client inventing names). */
const MAX_UNKNOWN_CALLS = 1000;

/** `stale`: a transaction that may have changed the catalog ended after the last load started. */
interface DatabaseCatalog extends CatalogLoadState {
  functions: DatabaseFunctions | null;
  /** Transactions seen sending such DDL (here or in another worker) that have not ended yet. */
  pendingChanges: number;
  /** When pendingChanges last went above 0. */
  pendingSince: number;
  /** Calls found unknown since the last load started: the next load says whether they exist. */
  asked: Map<string, FunctionRef>;
  /** Calls the last load (started after they were asked) found in no schema: no function, no write. */
  absent: Set<string>;
  /** When a load was last started to look for unknown calls. */
  probedAt: number;
}

/** The volatile-function sets of every database clients use, and their loading. */
export class FunctionCatalogs {
  private readonly byDatabase = new Map<string, DatabaseCatalog>();
  private overrides: FunctionSet;
  private opts: CatalogOptions;
  /** Loads started (tests, diagnostics). */
  loads = 0;

  constructor(
    private readonly load: CatalogLoader,
    private readonly log: CatalogLog,
    opts: CatalogOptions,
  ) {
    this.opts = opts;
    this.overrides = readOnlyOverrides(opts.readOnlyFunctions);
  }

  /** RELOAD: new overrides and refresh period (entries were validated with the configuration). */
  configure(opts: CatalogOptions): void {
    if (JSON.stringify(opts.readOnlyFunctions) !== JSON.stringify(this.opts.readOnlyFunctions)) {
      this.overrides = readOnlyOverrides(opts.readOnlyFunctions);
    }
    this.opts = opts;
  }

  /**
   * For a read that calls `calls` in `database`: why it must run on the primary, null when
   * it may run on a replica, or a promise (never rejecting) to wait for when the
   * database's catalog is not known yet or changed; then ask again.
   */
  check(database: string, user: string, calls: readonly FunctionRef[], now: number): string | null | Promise<void> {
    let d = this.byDatabase.get(database);
    if (d === undefined) d = this.entry(database);
    if (d.pendingChanges > 0) {
      if (now - d.pendingSince < MAX_PENDING_CHANGE_MS) return CHANGE_PENDING_REASON;
      d.pendingChanges = 0; // its end was lost: load afresh
      d.stale = true;
    }
    const current = d.functions !== null && !d.stale;
    if (d.loading !== null) {
      if (!current) return d.loading;
    } else if (!current) {
      if (now >= d.retryAt) {
        for (let k = 0; k < calls.length && d.asked.size < MAX_UNKNOWN_CALLS; k++) d.asked.set(callKey(calls[k]!), calls[k]!);
        return this.start(d, database, user);
      }
      // The last load failed: what was known before (if anything) until the next attempt.
    } else if (this.opts.refreshMs > 0 && now - d.loadedAt >= this.opts.refreshMs && now >= d.retryAt) {
      void this.start(d, database, user); // in the background: the current set serves meanwhile
    }
    if (d.functions === null) return null;
    return writesVia(calls, d.functions, this.overrides) ?? this.checkUnknown(d, database, user, calls, now);
  }

  /** null when every call is a function the catalog knows or one a load found absent; else see PROBE_INTERVAL_MS. */
  private checkUnknown(d: DatabaseCatalog, database: string, user: string, calls: readonly FunctionRef[], now: number): string | null | Promise<void> {
    const functions = d.functions!;
    let unknown: FunctionRef | null = null;
    for (let k = 0; k < calls.length; k++) {
      const c = calls[k]!;
      if (functions.knows(c)) continue;
      const key = callKey(c);
      if (d.absent.has(key)) continue;
      if (d.asked.size < MAX_UNKNOWN_CALLS) d.asked.set(key, c);
      unknown ??= c;
    }
    if (unknown === null) return null;
    if (d.loading === null && now - d.probedAt >= PROBE_INTERVAL_MS && now >= d.retryAt) {
      d.probedAt = now;
      return this.start(d, database, user);
    }
    return `calls ${unknown.schema === null ? '' : quoteName(unknown.schema) + '.'}${quoteName(unknown.name)}(), not in the function catalog yet`;
  }

  /**
   * A transaction sent DDL that may change `database`'s functions. Told when the DDL is
   * sent, not when it commits: other sessions (and workers, by a message that overtakes the
   * DDL's own round trip) stop trusting the catalog before the change can be visible.
   */
  changing(database: string, now: number): void {
    const d = this.byDatabase.get(database) ?? this.entry(database);
    if (d.pendingChanges === 0) d.pendingSince = now;
    d.pendingChanges++;
  }

  /** A transaction that may have changed `database`'s functions ended (committed or not). */
  changed(database: string): void {
    const d = this.byDatabase.get(database);
    if (d === undefined) return; // never loaded: the first read loads it anyway
    if (d.pendingChanges > 0) d.pendingChanges--;
    catalogChanged(d);
    d.absent.clear(); // the change may have created them
  }

  private entry(database: string): DatabaseCatalog {
    const d: DatabaseCatalog = { ...newCatalogLoadState(), functions: null, pendingChanges: 0, pendingSince: 0, asked: new Map(), absent: new Set(), probedAt: -Infinity };
    this.byDatabase.set(database, d);
    return d;
  }

  /** What is known of a database (tests, diagnostics). */
  known(database: string): DatabaseFunctions | null {
    return this.byDatabase.get(database)?.functions ?? null;
  }

  private start(d: DatabaseCatalog, database: string, user: string): Promise<void> {
    // Only calls asked before the load began can be found absent by it.
    const confirming = d.asked;
    d.asked = new Map();
    this.loads++;
    return startCatalogLoad(
      d,
      () => this.load(database, user).then(DatabaseFunctions.fromJson),
      this.opts.loadTimeoutMs,
      (functions, recovered) => {
        d.functions = functions;
        d.absent = new Set();
        for (const [key, c] of confirming) if (!functions.knows(c)) d.absent.add(key);
        if (recovered) this.log.info({ db: database, volatileFunctions: functions.size }, 'function catalog loaded again');
        else this.log.debug({ db: database, volatileFunctions: functions.size }, 'function catalog loaded');
      },
      (err, firstOfStreak) => {
        for (const [key, c] of confirming) if (d.asked.size < MAX_UNKNOWN_CALLS) d.asked.set(key, c);
        // Once per streak of failures: routing falls back to the static lists meanwhile.
        if (firstOfStreak) {
          this.log.warn(
            { db: database, user, err: err.message },
            'cannot load the function catalog: reads calling user functions are routed by the built-in list and write_functions only',
          );
        }
      },
    );
  }
}
