// Read/write classification of the first statement(s) of a transaction.
//
// A message may go to a replica only when every statement in it is known to be read-only
// (SELECT, VALUES, TABLE, SHOW, EXPLAIN of a read, read-only WITH queries, BEGIN/START
// TRANSACTION ... READ ONLY). Everything else -- and everything not recognised -- goes to
// the primary. Rules, in the order a statement is examined:
//
// - `INSERT`/`UPDATE`/`DELETE`/`MERGE` and every statement kind not listed above (DDL,
//   SET/RESET/DISCARD, PREPARE/EXECUTE/DEALLOCATE, LISTEN/NOTIFY, COPY, LOCK, CALL, DO, ...).
// - Inside read statements: a locking clause `FOR UPDATE | SHARE | NO KEY UPDATE | KEY SHARE`
//   at any depth (except in the argument list of `substring(... FOR n)` / `overlay(...)`,
//   where FOR is part of the call syntax); `INTO` (SELECT INTO); a data-modifying CTE
//   (`WITH x AS (INSERT|UPDATE|DELETE|MERGE ...)`, also nested); a call of a function that
//   writes or holds session state (built-in list in functionLists.ts plus `writeFunctions`).
// - EXPLAIN follows the statement it explains: EXPLAIN of a write goes to the primary even
//   without ANALYZE (a plain EXPLAIN of a write would run on a hot standby, but it is rare,
//   cheap, and keeping "EXPLAIN X goes where X goes" avoids a class of mistakes). The options
//   list is parsed (`ANALYZE`, `ANALYZE true|on|1|false|off|0`) and reported in the reason.
// - BEGIN / START TRANSACTION: replica only with READ ONLY (and no READ WRITE) and not
//   ISOLATION LEVEL SERIALIZABLE, which a hot standby refuses.
// - COMMIT/END/ROLLBACK/ABORT/SAVEPOINT/RELEASE are neutral: they do not stop a message such
//   as `BEGIN READ ONLY; SELECT 1; COMMIT` from going to a replica; alone they go to the primary.
// - Multi-statement messages go to the primary when any statement does.
// - Input that ends inside a string, quoted identifier or block comment goes to the primary
//   (the server will reject it; a disagreement with its lexer must not send a write away).
// - A leading comment `/* pgmux:primary */`, `/* pgmux:replica */` (or `-- pgmux:...`)
//   overrides the target; `pgmux:max_lag_ms=N` is returned as `maxLagMs`. Several directives
//   may share a comment (`/* pgmux:replica max_lag_ms=500 */`); primary wins over replica.
//   A replica hint is obeyed even for a write: the replica will refuse it.
// - A read also reports the functions it calls (`calls`): whether one of them may write
//   depends on the database's catalog (src/routing/functionCatalog.ts), which routing checks.
//   Every statement that may change that catalog (CREATE/ALTER/DROP FUNCTION, PROCEDURE,
//   ROUTINE, AGGREGATE, EXTENSION, SCHEMA; DROP OWNED) is flagged `changesFunctions`.

import { lex } from './lexer.js';
import { compileWriteFunctions, DEFAULT_WRITE_FUNCTIONS, type FunctionRef, type FunctionSet } from './functionLists.js';
import { parseHints } from './hints.js';
import { EffectsBuilder, type SessionEffects } from './sessionEffects.js';
import { Analysis } from './statementAnalysis.js';
import { cacheVerdict, writtenTables, type CacheVerdict } from './cacheability.js';

export type Target = 'primary' | 'replica';

export interface Classification {
  target: Target;
  /** Short human-readable reason, e.g. 'read-only SELECT', 'calls nextval()'. */
  reason: string;
  /** From a leading `/* pgmux:max_lag_ms=N *\/` hint. */
  maxLagMs?: number;
  /** Number of (non-empty) statements in the message. */
  statements: number;
  /** True when a statement of the message is BEGIN / START TRANSACTION. */
  beginsTransaction?: boolean;
  /** What the message does to session state; absent when nothing (most queries). */
  session?: SessionEffects;
  /**
   * The functions a read calls (frozen, without duplicates), for the per-database volatility
   * check at routing time. Only on target 'replica' as the classifier decided it (not after a
   * hint, not in a transaction declared READ ONLY, where nothing can write anyway).
   */
  calls?: readonly FunctionRef[];
  /** A statement of the message may change which functions exist or how volatile they are. */
  changesFunctions?: true;
  /**
   * The message is one Pgpool-II pseudo-command `SHOW pool_<name>` (lower case, without the
   * `pool_`): what Pgpool-II users' health checks send on an application database.
   */
  pgpoolShow?: string;
  /**
   * For a message that writes: the tables it may change (schema-qualified when written so,
   * lower case), or '*' when that is unclear (DDL, data-modifying CTE, EXECUTE, ...). Query
   * cache invalidation uses it; absent for reads.
   */
  writesTables?: readonly string[] | '*';
}

export interface ClassifierOptions {
  /**
   * Extra functions treated as writes: `name`, `schema.name`, or a prefix `name*`.
   * Unquoted names are case-insensitive, "quoted" ones keep their case. A schema-qualified
   * entry also matches unqualified calls (search_path may resolve to it).
   */
  writeFunctions?: string[];
  /** Entries kept in the cache (at most); default 10000, 0 disables caching. */
  cacheSize?: number;
}

/** Queries longer than this are classified every time rather than cached. */
export const MAX_CACHED_SQL_LENGTH = 8192;

const compiledByList = new WeakMap<readonly string[], FunctionSet>();

function functionsFor(opts: ClassifierOptions | undefined): FunctionSet {
  const list = opts?.writeFunctions;
  if (list === undefined || list.length === 0) return DEFAULT_WRITE_FUNCTIONS;
  let set = compiledByList.get(list);
  if (set === undefined) {
    set = compileWriteFunctions(list);
    compiledByList.set(list, set);
  }
  return set;
}

/** A statement the analysis failed on may have changed anything: the client keeps its backend. */
const UNANALYSED: SessionEffects = Object.freeze({
  settings: Object.freeze([]) as readonly string[],
  resetsAll: true,
  pin: 'statement pgmux could not analyse',
  discardAll: false,
  dropsAllStatements: false,
  deallocate: null,
  sqlPrepared: false,
  dirtiesBackend: true,
  listen: null,
  onlyListen: false,
});

function classifyWith(sql: string, fns: FunctionSet): Classification {
  let result: Classification;
  try {
    result = analyze(sql, fns);
  } catch (err) {
    // Never let a query take the proxy down: unknown means primary.
    result = { target: 'primary', reason: `classifier error: ${(err as Error)?.message ?? String(err)}`, statements: 1, session: UNANALYSED };
  }
  return Object.freeze(result);
}

function analyze(sql: string, fns: FunctionSet): Classification {
  const { tokens, leadingComments, complete } = lex(sql);
  const a = new Analysis(tokens, fns);
  const ranges = a.split();
  const n = ranges.length / 2;

  let target: Target = 'primary';
  let reason: string;
  let begins = false;
  let firstWrite = -1;
  let firstWriteReason = '';
  let anyRead = false;
  let only = '';
  let changesFunctions = false;
  const effects = new EffectsBuilder(tokens);
  for (let k = 0; k < n; k++) {
    effects.statement(ranges[2 * k]!, ranges[2 * k + 1]!, n);
    if (!changesFunctions && a.changesFunctions(ranges[2 * k]!, ranges[2 * k + 1]!)) changesFunctions = true;
    const v = a.statement(ranges[2 * k]!, ranges[2 * k + 1]!, 0);
    if (v.begins) begins = true;
    if (v.kind === 'write' && firstWrite < 0) {
      firstWrite = k;
      firstWriteReason = v.reason;
    } else if (v.kind === 'read') anyRead = true;
    if (k === 0) only = v.reason;
  }

  if (!complete) {
    reason = 'unterminated string, identifier or comment';
  } else if (n === 0) {
    reason = 'empty query';
  } else if (firstWrite >= 0) {
    reason = n === 1 ? firstWriteReason : `multi-statement: statement ${firstWrite + 1} writes (${firstWriteReason})`;
  } else if (anyRead) {
    target = 'replica';
    reason = n === 1 ? only : `multi-statement: all ${n} statements read-only`;
  } else {
    reason = n === 1 ? only : 'multi-statement: transaction control only';
  }

  const result: Classification = { target, reason, statements: n };
  let hinted = false;
  if (leadingComments.length > 0) {
    const hints = parseHints(leadingComments);
    if (hints !== null) {
      if (hints.target !== undefined) {
        result.target = hints.target;
        result.reason = `hint ${hints.targetText}`;
        hinted = true;
      }
      if (hints.maxLagMs !== undefined) result.maxLagMs = hints.maxLagMs;
    }
  }
  if (firstWrite >= 0 && complete) result.writesTables = writtenTables(a, ranges);
  if (begins) result.beginsTransaction = true;
  // A hint decides alone; a transaction declared READ ONLY cannot write wherever it runs.
  if (target === 'replica' && !hinted && !begins && a.calls !== null) result.calls = Object.freeze(a.calls);
  if (changesFunctions) result.changesFunctions = true;
  if (n === 1 && complete) {
    const name = pgpoolShowName(tokens, ranges[0]!, ranges[1]!);
    if (name !== null) result.pgpoolShow = name;
  }
  // Unterminated input never runs: PostgreSQL rejects it, so it changes nothing.
  const session = complete ? effects.build() : null;
  if (session !== null) result.session = session;
  return result;
}

/**
 * `SHOW pool_nodes` -> 'nodes': Pgpool-II's SHOW commands are two words, the second an
 * unquoted identifier starting with pool_ (a quoted "pool_nodes" is PostgreSQL's business).
 */
function pgpoolShowName(tokens: ReturnType<typeof lex>['tokens'], s: number, e: number): string | null {
  if (e - s !== 2) return null;
  const verb = tokens[s]!;
  const what = tokens[s + 1]!;
  if (verb.kind !== 'keyword' || verb.value !== 'show' || (what.kind !== 'ident' && what.kind !== 'keyword') || !what.value.startsWith('pool_')) return null;
  return what.value.slice(5);
}

/** Classifies `sql` without a cache. Pure; never throws. */
export function classifySql(sql: string, opts?: ClassifierOptions): Classification {
  return classifyWith(sql, functionsFor(opts));
}

/** `target<TAB>reason`, plus `<TAB>max_lag_ms=N` when the query carried that hint. */
export function formatClassification(c: Classification): string {
  const base = `${c.target}\t${c.reason}`;
  return c.maxLagMs === undefined ? base : `${base}\tmax_lag_ms=${c.maxLagMs}`;
}

/**
 * A classifier with a bounded cache keyed by query text, so a repeated query costs a Map
 * lookup. Results are frozen and shared between callers.
 *
 * The cache is two generations of Maps rather than an exact LRU: an exact LRU deletes and
 * re-inserts on every hit and evicts by iterating from the oldest key, and V8's ordered
 * Maps make that iteration skip every deleted slot before the table is compacted. With
 * queries that carry literals (each text new, as pgbench -S sends them) that cost several
 * microseconds per query. Here a miss is two lookups and one insert; when the young
 * generation is full it becomes the old one and the previous old one is dropped whole;
 * an entry used again while old moves back to the young generation.
 */
export class Classifier {
  readonly #fns: FunctionSet;
  /** Entries per generation: both together hold at most the configured size. */
  readonly #generationSize: number;
  #young = new Map<string, Classification>();
  #old = new Map<string, Classification>();
  #hits = 0;
  #misses = 0;
  #verdicts = new Map<string, CacheVerdict>();

  constructor(opts: ClassifierOptions = {}) {
    const size = opts.cacheSize ?? 10_000;
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`cacheSize must be a non-negative integer, got ${size}`);
    this.#generationSize = size === 0 ? 0 : Math.max(1, size >> 1);
    this.#fns = compileWriteFunctions(opts.writeFunctions);
  }

  get cacheHits(): number {
    return this.#hits;
  }

  get cacheMisses(): number {
    return this.#misses;
  }

  /** Entries currently cached. */
  get cacheEntries(): number {
    return this.#young.size + this.#old.size;
  }

  classify(sql: string): Classification {
    const young = this.#young.get(sql);
    if (young !== undefined) {
      this.#hits++;
      return young;
    }
    const old = this.#old.size === 0 ? undefined : this.#old.get(sql);
    if (old !== undefined) {
      this.#hits++;
      this.#old.delete(sql);
      this.#remember(sql, old);
      return old;
    }
    this.#misses++;
    const result = classifyWith(sql, this.#fns);
    if (this.#generationSize > 0 && sql.length <= MAX_CACHED_SQL_LENGTH) this.#remember(sql, result);
    return result;
  }

  /**
   * Whether the result of `sql` may be cached, cached by text like classify(); asked only
   * when the query cache is on, so routing costs the same when it is off.
   */
  cacheVerdict(sql: string): CacheVerdict {
    let v = this.#verdicts.get(sql);
    if (v !== undefined) return v;
    v = Object.freeze(cacheVerdict(sql));
    if (this.#generationSize > 0 && sql.length <= MAX_CACHED_SQL_LENGTH) {
      if (this.#verdicts.size >= this.#generationSize * 2) this.#verdicts.clear();
      this.#verdicts.set(sql, v);
    }
    return v;
  }

  #remember(sql: string, c: Classification): void {
    if (this.#young.size >= this.#generationSize) {
      this.#old = this.#young;
      this.#young = new Map();
    }
    this.#young.set(sql, c);
  }
}
