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
//   writes or holds session state (built-in list below plus `writeFunctions`).
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

import { lex, type Comment, type Token } from './lexer.js';
import { EffectsBuilder, type SessionEffects } from './sessionEffects.js';

export type { ListenOp, SessionEffects } from './sessionEffects.js';

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
}

/** A function call as written: `schema.name(` or `name(` (schema null); unquoted names lowercased. */
export interface FunctionRef {
  readonly schema: string | null;
  readonly name: string;
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

/** Functions that write or hold session state, matched by exact name (any schema). */
const BUILTIN_WRITE_FUNCTIONS = [
  // sequences
  'nextval',
  'setval',
  'currval',
  'lastval',
  // transaction ids: assign one (a write on a standby is impossible)
  'txid_current',
  'txid_current_if_assigned',
  // session state and notifications
  'set_config',
  'setseed',
  'pg_notify',
  // large objects (server-side API without the lo_ prefix)
  'loread',
  'lowrite',
  // WAL and backup control
  'pg_switch_wal',
  'pg_switch_xlog',
  'pg_start_backup',
  'pg_stop_backup',
  'pg_drop_replication_slot',
  'pg_sync_replication_slots',
  'pg_log_standby_snapshot',
  // index maintenance and catalog writes
  'brin_summarize_new_values',
  'brin_summarize_range',
  'brin_desummarize_range',
  'gin_clean_pending_list',
  'pg_import_system_collations',
  // act on the node they run on: never meant for a random replica
  'pg_promote',
  'pg_cancel_backend',
  'pg_terminate_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  // per-node statistics and adminpack
  'pg_stat_statements_reset',
  'pg_file_write',
  'pg_file_rename',
  'pg_file_unlink',
  'pg_file_sync',
];

/** Functions that write or hold session state, matched by name prefix (any schema). */
const BUILTIN_WRITE_PREFIXES = [
  'pg_advisory_', // pg_advisory_lock, _xact_lock, _unlock, _unlock_all, _shared ...
  'pg_try_advisory_',
  'pg_current_xact_id', // pg_current_xact_id, pg_current_xact_id_if_assigned
  'pg_current_wal_', // pg_current_wal_lsn, _insert_lsn, _flush_lsn
  'pg_current_xlog_', // pre-10 names
  'lo_', // lo_create, lo_import, lo_open, lo_put, lo_unlink, lo_from_bytea ...
  'pg_create_', // pg_create_restore_point, pg_create_*_replication_slot
  'pg_copy_', // pg_copy_*_replication_slot
  'pg_logical_', // pg_logical_emit_message, pg_logical_slot_get_changes ...
  'pg_replication_', // pg_replication_origin_*, pg_replication_slot_advance
  'pg_wal_replay_', // standby-only controls: must never pick a random replica
  'pg_backup_', // pg_backup_start, pg_backup_stop
  'pg_stat_reset', // pg_stat_reset, pg_stat_reset_shared, ...
];

interface FunctionRule {
  schema: string | null;
  name: string;
}

/** A compiled set of function names (write_functions, read_only_functions). */
export class FunctionSet {
  private readonly exact = new Map<string, (string | null)[]>();
  private readonly prefixes: FunctionRule[] = [];
  /** First characters of the prefixes: most calls (count, coalesce, ...) skip the prefix loop. */
  private readonly prefixStarts = new Set<string>();

  add(schema: string | null, name: string, prefix: boolean): void {
    if (prefix) {
      this.prefixes.push({ schema, name });
      this.prefixStarts.add(name[0]!);
      return;
    }
    const list = this.exact.get(name);
    if (list) list.push(schema);
    else this.exact.set(name, [schema]);
  }

  /**
   * Whether a call of `schema.name(` (schema null when unqualified) is in the set. An
   * unqualified entry matches any schema; a qualified one its schema, and unqualified calls.
   */
  matches(schema: string | null, name: string): boolean {
    const schemas = this.exact.get(name);
    if (schemas !== undefined) {
      for (const s of schemas) if (s === null || schema === null || s === schema) return true;
    }
    if (!this.prefixStarts.has(name[0]!)) return false;
    for (const p of this.prefixes) {
      if (name.startsWith(p.name) && (p.schema === null || schema === null || p.schema === schema)) return true;
    }
    return false;
  }
}

/** Parses a function list entry: `name`, `schema.name`, `"Quoted"`, `prefix*`, optionally `()`. */
export function parseFunctionEntry(entry: string, setting = 'write_functions'): { schema: string | null; name: string; prefix: boolean } {
  const fail = (): never => {
    throw new Error(
      `invalid ${setting} entry ${JSON.stringify(entry)}: expected name, schema.name or a name prefix ending in *`,
    );
  };
  if (typeof entry !== 'string') fail();
  const { tokens, complete } = lex(entry);
  if (!complete) fail();
  const parts: string[] = [];
  let k = 0;
  for (;;) {
    const t = tokens[k];
    if (t === undefined || !(t.kind === 'ident' || t.kind === 'keyword' || t.kind === 'quotedIdent') || t.value === '') fail();
    parts.push(t!.value);
    k++;
    if (tokens[k]?.kind === 'punct' && tokens[k]!.value === '.') {
      k++;
      continue;
    }
    break;
  }
  let prefix = false;
  if (tokens[k]?.kind === 'op' && tokens[k]!.value === '*') {
    prefix = true;
    k++;
  }
  if (tokens[k]?.value === '(' && tokens[k + 1]?.value === ')') k += 2;
  if (k !== tokens.length || parts.length > 2) fail();
  return parts.length === 2 ? { schema: parts[0]!, name: parts[1]!, prefix } : { schema: null, name: parts[0]!, prefix };
}

function compileFunctions(extra: readonly string[] | undefined): FunctionSet {
  const set = new FunctionSet();
  for (const n of BUILTIN_WRITE_FUNCTIONS) set.add(null, n, false);
  for (const p of BUILTIN_WRITE_PREFIXES) set.add(null, p, true);
  if (extra !== undefined) {
    if (!Array.isArray(extra)) throw new Error('write_functions must be a list of function names');
    for (const e of extra) {
      const r = parseFunctionEntry(e);
      set.add(r.schema, r.name, r.prefix);
    }
  }
  return set;
}

/** A set of just the listed functions (`setting` names the list in error messages). */
export function compileFunctionList(entries: readonly string[], setting: string): FunctionSet {
  if (!Array.isArray(entries)) throw new Error(`${setting} must be a list of function names`);
  const set = new FunctionSet();
  for (const e of entries) {
    const r = parseFunctionEntry(e, setting);
    set.add(r.schema, r.name, r.prefix);
  }
  return set;
}

const DEFAULT_FUNCTIONS = compileFunctions(undefined);
const compiledByList = new WeakMap<readonly string[], FunctionSet>();

function functionsFor(opts: ClassifierOptions | undefined): FunctionSet {
  const list = opts?.writeFunctions;
  if (list === undefined || list.length === 0) return DEFAULT_FUNCTIONS;
  let set = compiledByList.get(list);
  if (set === undefined) {
    set = compileFunctions(list);
    compiledByList.set(list, set);
  }
  return set;
}

// ---------------------------------------------------------------------------------------

type VerdictKind = 'read' | 'write' | 'neutral';

interface Verdict {
  kind: VerdictKind;
  reason: string;
  /** A statement that itself modifies data (INSERT/UPDATE/DELETE/MERGE). */
  dml?: boolean;
  begins?: boolean;
}

const write = (reason: string, dml = false): Verdict => ({ kind: 'write', reason, dml });
const read = (reason: string): Verdict => ({ kind: 'read', reason });

/** Deeper nesting of WITH / EXPLAIN than this is classified as a write. */
const MAX_DEPTH = 64;

/** Words after `(UPDATE` that show `update` is a column name, not an UPDATE statement. */
const NOT_A_TABLE_AFTER_UPDATE = new Set([
  'and', 'or', 'not', 'is', 'isnull', 'notnull', 'in', 'between', 'like', 'ilike', 'similar', 'collate',
  'at', 'overlaps', 'as', 'asc', 'desc', 'from', 'then', 'else', 'end', 'when', 'nulls', 'using', 'over', 'filter',
]);

/** Statements that may appear nested: in a CTE, after WITH, after EXPLAIN. */
const NESTABLE = new Set(['select', 'values', 'table', 'with', 'insert', 'update', 'delete', 'merge']);

const DDL_VERBS = new Set(['create', 'alter', 'drop', 'refresh', 'import']);
const DDL_WORDS = new Set(
  (
    'or replace unique temp temporary unlogged global local materialized recursive table index view function ' +
    'procedure routine sequence schema type trigger extension role user group database domain policy publication ' +
    'subscription aggregate operator collation conversion rule statistics tablespace server foreign data wrapper ' +
    'text search event access method cast language transform concurrently default privileges large object owned ' +
    'system constraint'
  ).split(' '),
);

/**
 * Unquoted, unqualified words before `(` that are not function calls: PostgreSQL's reserved
 * and column-name keywords (which cannot name a function without quotes), e.g. `IN (`,
 * `EXISTS (`, `VALUES (`, `numeric(10, 2)`, `coalesce(`.
 */
const NOT_A_CALL = new Set(
  (
    'all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create ' +
    'current_catalog current_date current_role current_time current_timestamp current_user default deferrable desc ' +
    'distinct do else end except false fetch for foreign from grant group having in initially intersect into lateral ' +
    'leading limit localtime localtimestamp not null offset on only or order placing primary references returning ' +
    'select session_user some symmetric system_user table then to trailing true union unique user using variadic when ' +
    'where window with between bigint bit boolean char character coalesce dec decimal exists extract float greatest ' +
    'grouping inout int integer interval json json_array json_arrayagg json_exists json_object json_objectagg ' +
    'json_query json_scalar json_serialize json_table json_value least merge_action national nchar none normalize ' +
    'nullif numeric out overlay position precision real row setof smallint substring time timestamp treat trim values ' +
    'varchar xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize ' +
    'xmltable'
  ).split(' '),
);

/** Objects whose CREATE / ALTER / DROP may change the set of volatile functions. */
const FUNCTION_CATALOG_OBJECTS = new Set(['function', 'procedure', 'routine', 'aggregate', 'extension', 'schema', 'owned']);

const isWordTok = (t: Token | undefined): boolean => t !== undefined && (t.kind === 'keyword' || t.kind === 'ident');
const isNameTok = (t: Token | undefined): boolean =>
  t !== undefined && (t.kind === 'keyword' || t.kind === 'ident' || t.kind === 'quotedIdent');
const isPunct = (t: Token | undefined, p: string): boolean => t !== undefined && t.kind === 'punct' && t.value === p;

const EMPTY: number[] = [];

/** Analysis of one message's token stream. */
class Analysis {
  /** For each `(`: index of its `)` (or the statement end when unbalanced). Filled by split(),
   *  allocated only when the message has parentheses. */
  match: number[] = EMPTY;
  /** Functions called by the read statements scanned (allocated at the first call). */
  calls: FunctionRef[] | null = null;

  constructor(
    readonly tokens: Token[],
    readonly fns: FunctionSet,
  ) {}

  /** The unquoted word at `i` (lowercased), or '' when `i` is not an unquoted word. */
  w(i: number): string {
    const t = this.tokens[i];
    return t !== undefined && (t.kind === 'keyword' || t.kind === 'ident') ? t.value : '';
  }

  /** Splits on `;` (not inside CREATE FUNCTION ... BEGIN ATOMIC ... END, psql's heuristic)
   *  and fills `match`. Returns [start, end) pairs of non-empty statements. */
  split(): number[] {
    const { tokens } = this;
    let match = this.match;
    const ranges: number[] = [];
    const stack: number[] = [];
    let s = 0;
    let words = 0;
    let w0 = '';
    let w1 = '';
    let w2 = '';
    let w3 = '';
    let beginDepth = 0;
    const close = (e: number): void => {
      while (stack.length > 0) match[stack.pop()!] = e;
      if (e > s) ranges.push(s, e);
    };
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (t.kind === 'punct') {
        if (t.value === '(') {
          if (match === EMPTY) match = this.match = new Array<number>(tokens.length).fill(0);
          stack.push(i);
        } else if (t.value === ')') {
          if (stack.length > 0) match[stack.pop()!] = i;
        } else if (t.value === ';' && beginDepth === 0) {
          close(i);
          s = i + 1;
          words = 0;
          w0 = w1 = w2 = w3 = '';
        }
      } else if (t.kind === 'keyword' || t.kind === 'ident') {
        const v = t.value;
        if (words < 4) {
          const f = v === 'create' || v === 'function' || v === 'procedure' || v === 'or' || v === 'replace' ? v[0]! : '';
          if (words === 0) w0 = f;
          else if (words === 1) w1 = f;
          else if (words === 2) w2 = f;
          else w3 = f;
        }
        words++;
        if (
          w0 === 'c' &&
          (w1 === 'f' || w1 === 'p' || (w1 === 'o' && w2 === 'r' && (w3 === 'f' || w3 === 'p'))) &&
          stack.length === 0
        ) {
          if (v === 'begin') beginDepth++;
          else if (v === 'case') {
            if (beginDepth >= 1) beginDepth++;
          } else if (v === 'end' && beginDepth > 0) beginDepth--;
        }
      }
    }
    close(tokens.length);
    return ranges;
  }

  /** Classifies the statement in tokens [s, e): a top-level statement, or a nested query (a
   *  CTE body, the main statement of a WITH, an EXPLAINed statement) when `depth` > 0. */
  statement(s: number, e: number, depth: number): Verdict {
    if (s >= e) return write('empty statement');
    if (depth > MAX_DEPTH) return write('nesting too deep to classify');
    const t = this.tokens[s]!;
    if (isPunct(t, '(')) return this.readScan(s, e, depth, 'read-only SELECT');
    if (!isWordTok(t)) return write('unrecognized statement');
    const v = t.value;
    if (depth > 0 && !NESTABLE.has(v)) return write(this.commandName(s, e));
    switch (v) {
      case 'select':
        return this.readScan(s, e, depth, 'read-only SELECT');
      case 'values':
        return this.readScan(s, e, depth, 'read-only VALUES');
      case 'table':
        return this.readScan(s, e, depth, 'read-only TABLE');
      case 'with':
        return this.withQuery(s, e, depth);
      case 'show':
        return read('SHOW');
      case 'explain':
        return this.explain(s, e, depth);
      case 'begin':
        return this.begin(this.w(s + 1) === 'work' || this.w(s + 1) === 'transaction' ? s + 2 : s + 1, e, 'BEGIN');
      case 'start':
        if (this.w(s + 1) === 'transaction') return this.begin(s + 2, e, 'START TRANSACTION');
        return write('START');
      case 'commit':
      case 'rollback':
        // COMMIT PREPARED / ROLLBACK PREPARED act on two-phase state held by the primary.
        if (this.w(s + 1) === 'prepared') return write(`${v.toUpperCase()} PREPARED`);
        return { kind: 'neutral', reason: `transaction control (${v.toUpperCase()})` };
      case 'end':
      case 'abort':
      case 'savepoint':
      case 'release':
        return { kind: 'neutral', reason: `transaction control (${v.toUpperCase()})` };
      case 'insert':
      case 'update':
      case 'delete':
      case 'merge':
        return write(v.toUpperCase(), true);
      default:
        return write(this.commandName(s, e));
    }
  }

  /** 'CREATE TABLE', 'DROP INDEX', 'SET', ...: the leading keywords of a statement, for reasons. */
  commandName(s: number, e: number): string {
    let name = this.tokens[s]!.value.toUpperCase();
    if (!DDL_VERBS.has(this.tokens[s]!.value)) return name;
    for (let i = s + 1; i < e && i < s + 5; i++) {
      const t = this.tokens[i]!;
      if (t.kind !== 'keyword' || !DDL_WORDS.has(t.value)) break;
      name += ' ' + t.value.toUpperCase();
    }
    return name;
  }

  /**
   * Scans a SELECT / VALUES / TABLE statement (or a parenthesised one) for anything that
   * makes it a write: locking clauses, INTO, data-modifying CTEs, write-function calls.
   */
  readScan(s: number, e: number, depth: number, label: string): Verdict {
    const { tokens } = this;
    // Innermost-first paren kinds: 1 = argument list of substring()/overlay(), 0 = other.
    const parens: number[] = [];
    for (let i = s; i < e; i++) {
      const t = tokens[i]!;
      if (t.kind === 'punct') {
        if (t.value === '(') {
          if (this.w(i + 1) === 'with') {
            const end = Math.min(this.match[i]!, e);
            const v = this.statement(i + 1, end, depth + 1);
            if (v.kind !== 'read') return v.dml ? write('data-modifying CTE') : write(v.reason);
            i = end; // continue after the group's ')'
            continue;
          }
          const dml = this.dmlAt(i + 1);
          if (dml) return write('data-modifying CTE');
          const prev = this.w(i - 1);
          parens.push(i > s && (prev === 'substring' || prev === 'overlay') ? 1 : 0);
        } else if (t.value === ')') {
          parens.pop();
        }
        continue;
      }
      if (t.kind === 'keyword' || t.kind === 'ident' || t.kind === 'quotedIdent') {
        if (i + 1 < e && isPunct(tokens[i + 1], '(')) {
          const schema = i - 2 >= s && isPunct(tokens[i - 1], '.') && isNameTok(tokens[i - 2]) ? tokens[i - 2]!.value : null;
          if (this.fns.matches(schema, t.value)) return write(`calls ${t.value}()`);
          if (schema !== null || t.kind === 'quotedIdent' || !NOT_A_CALL.has(t.value)) {
            // `FROM t v(x)`, `AS v(x)`: an alias with its column names. (After `)` it may be
            // either: `DISTINCT ON (a) f()` is a call, so it counts as one.)
            const prevTok = i > s ? tokens[i - 1]! : undefined;
            const alias = schema === null && prevTok !== undefined && (prevTok.kind === 'ident' || prevTok.kind === 'quotedIdent' || this.w(i - 1) === 'as');
            if (!alias) this.noteCall(schema, t.value);
          }
        }
        if (t.kind === 'quotedIdent') continue;
        if (t.value === 'for') {
          if (parens.length > 0 && parens[parens.length - 1] === 1) continue;
          const lock = this.lockingClause(i + 1, e);
          if (lock !== null) return write(`locking clause FOR ${lock}`);
        } else if (t.value === 'into') {
          return write('SELECT INTO');
        }
      }
    }
    return read(label);
  }

  noteCall(schema: string | null, name: string): void {
    const calls = (this.calls ??= []);
    for (const c of calls) if (c.name === name && c.schema === schema) return;
    calls.push(Object.freeze({ schema, name }));
  }

  /** Whether the statement in [s, e) may change which functions exist or how volatile they are. */
  changesFunctions(s: number, e: number): boolean {
    const v = this.w(s);
    if (v !== 'create' && v !== 'alter' && v !== 'drop') return false;
    for (let i = s + 1; i < e && i < s + 6; i++) {
      const w = this.w(i);
      if (FUNCTION_CATALOG_OBJECTS.has(w)) return true;
      if (!DDL_WORDS.has(w)) return false;
    }
    return false;
  }

  /** The lock strength after FOR at `i`, or null when this FOR is not a locking clause. */
  lockingClause(i: number, e: number): string | null {
    const a = i < e ? this.w(i) : '';
    if (a === 'update') return 'UPDATE';
    if (a === 'share') return 'SHARE';
    if (a === 'no' && i + 2 < e && this.w(i + 1) === 'key' && this.w(i + 2) === 'update') return 'NO KEY UPDATE';
    if (a === 'key' && i + 1 < e && this.w(i + 1) === 'share') return 'KEY SHARE';
    return null;
  }

  /** Whether a data-modifying statement starts at `i` (just after a `(`). */
  dmlAt(i: number): boolean {
    const v = this.w(i);
    switch (v) {
      case 'insert':
      case 'merge':
        return this.w(i + 1) === 'into';
      case 'delete':
        return this.w(i + 1) === 'from';
      case 'update': {
        const n = this.tokens[i + 1];
        if (n === undefined) return false;
        if (n.kind === 'quotedIdent') return true;
        return isWordTok(n) && !NOT_A_TABLE_AFTER_UPDATE.has(n.value);
      }
      default:
        return false;
    }
  }

  /** WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (body) [SEARCH ...] [CYCLE ...], ... main */
  withQuery(s: number, e: number, depth: number): Verdict {
    const { tokens } = this;
    let i = s + 1;
    if (this.w(i) === 'recursive') i++;
    for (;;) {
      if (i >= e || !isNameTok(tokens[i])) return write('unrecognized WITH clause');
      i++;
      if (i < e && isPunct(tokens[i], '(')) i = this.match[i]! + 1; // column list
      if (i >= e || this.w(i) !== 'as') return write('unrecognized WITH clause');
      i++;
      if (this.w(i) === 'not') i++;
      if (this.w(i) === 'materialized') i++;
      if (i >= e || !isPunct(tokens[i], '(')) return write('unrecognized WITH clause');
      const end = this.match[i]!;
      if (end >= e) return write('unterminated WITH clause');
      const body = this.statement(i + 1, end, depth + 1);
      if (body.kind !== 'read') return write(body.dml ? 'data-modifying CTE' : body.reason);
      i = end + 1;
      // SEARCH {BREADTH|DEPTH} FIRST BY cols SET col / CYCLE cols SET col [TO v DEFAULT v] USING col
      for (;;) {
        const kw = this.w(i);
        if (kw !== 'search' && kw !== 'cycle') break;
        const stop = kw === 'search' ? 'set' : 'using';
        let j = i + 1;
        while (j < e && this.w(j) !== stop) j++;
        if (j + 1 >= e) return write('unrecognized WITH clause');
        i = j + 2;
      }
      if (i < e && isPunct(tokens[i], ',')) {
        i++;
        continue;
      }
      break;
    }
    if (i >= e) return write('WITH without a main statement');
    const main = this.statement(i, e, depth + 1);
    if (main.kind === 'read') return read('read-only WITH query');
    return main.dml ? main : write(main.reason);
  }

  /** EXPLAIN [ANALYZE] [VERBOSE] stmt | EXPLAIN (option [value], ...) stmt */
  explain(s: number, e: number, depth: number): Verdict {
    const { tokens } = this;
    let i = s + 1;
    let analyze = false;
    const q = this.w(i + 1);
    if (isPunct(tokens[i], '(') && !(q === 'select' || q === 'with' || q === 'values' || q === 'table' || isPunct(tokens[i + 1], '('))) {
      const close = Math.min(this.match[i]!, e);
      let j = i + 1;
      while (j < close) {
        const optStart = j;
        while (j < close && !isPunct(tokens[j], ',')) j = isPunct(tokens[j], '(') ? Math.min(this.match[j]!, close) + 1 : j + 1;
        const name = tokens[optStart];
        if (name !== undefined && isNameTok(name) && (name.value === 'analyze' || name.value === 'analyse')) {
          analyze = this.optionBoolean(optStart + 1, j);
        }
        j++;
      }
      i = close + 1;
    } else {
      const a = this.w(i);
      if (a === 'analyze' || a === 'analyse') {
        analyze = true;
        i++;
      }
      if (this.w(i) === 'verbose') i++;
    }
    const what = analyze ? 'EXPLAIN ANALYZE' : 'EXPLAIN';
    if (i >= e) return write(`${what} without a statement`);
    const inner = this.statement(i, e, depth + 1);
    if (inner.kind === 'read') return read(`${what} of ${inner.reason}`);
    return write(`${what} of a write (${inner.reason})`);
  }

  /** An EXPLAIN option's boolean value in tokens [a, b): absent, true/on/1, false/off/0. */
  optionBoolean(a: number, b: number): boolean {
    if (a >= b) return true;
    const t = this.tokens[a]!;
    if (b - a === 1) {
      const v = t.kind === 'string' ? t.value.toLowerCase() : t.value;
      if (t.kind === 'number') {
        if (v === '0') return false;
        return true;
      }
      if (v === 'false' || v === 'off') return false;
    }
    return true; // true/on/1, or anything the server would reject: assume the worst
  }

  /** Transaction modes after BEGIN [WORK|TRANSACTION] / START TRANSACTION, from `i`. */
  begin(i: number, e: number, label: string): Verdict {
    let readOnly = false;
    let readWrite = false;
    let serializable = false;
    let unknown = false;
    while (i < e) {
      if (isPunct(this.tokens[i], ',')) {
        i++;
        continue;
      }
      const v = this.w(i);
      if (v === 'isolation' && this.w(i + 1) === 'level') {
        const l = this.w(i + 2);
        const l2 = this.w(i + 3);
        if (l === 'serializable') {
          serializable = true;
          i += 3;
        } else if ((l === 'repeatable' && l2 === 'read') || (l === 'read' && (l2 === 'committed' || l2 === 'uncommitted'))) {
          i += 4;
        } else {
          unknown = true;
          break;
        }
      } else if (v === 'read' && this.w(i + 1) === 'only') {
        readOnly = true;
        i += 2;
      } else if (v === 'read' && this.w(i + 1) === 'write') {
        readWrite = true;
        i += 2;
      } else if (v === 'deferrable') {
        i++;
      } else if (v === 'not' && this.w(i + 1) === 'deferrable') {
        i += 2;
      } else {
        unknown = true;
        break;
      }
    }
    let verdict: Verdict;
    if (unknown) verdict = write(`${label} with an unrecognized transaction mode`);
    else if (!readOnly || readWrite) verdict = write(`${label} without READ ONLY`);
    else if (serializable) verdict = write(`${label} READ ONLY SERIALIZABLE (hot standbys refuse serializable)`);
    else verdict = read(`${label} READ ONLY`);
    verdict.begins = true;
    return verdict;
  }
}

// ---------------------------------------------------------------------------------------

interface Hints {
  target?: Target;
  targetText?: string;
  maxLagMs?: number;
}

/** Splits a hint comment body into lowercased items: separators are whitespace, `,` and `;`;
 *  `key = value` is joined into `key=value`; a `pgmux:` prefix is dropped from each item. */
function hintItems(body: string): string[] {
  const items: string[] = [];
  const lower = body.toLowerCase();
  let joinNext = false;
  let start = -1;
  const n = lower.length;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? lower.charCodeAt(i) : 32;
    const sep = c === 32 || (c >= 9 && c <= 13) || c === 44 || c === 59 || c === 61; // ws , ; =
    if (!sep) {
      if (start < 0) start = i;
      continue;
    }
    if (start >= 0) {
      let item = lower.slice(start, i);
      if (item.startsWith('pgmux:')) item = item.slice(6);
      if (joinNext && items.length > 0) items[items.length - 1] += item;
      else items.push(item);
      joinNext = false;
      start = -1;
    }
    if (c === 61 && items.length > 0) {
      items[items.length - 1] += '=';
      joinNext = true;
    }
  }
  return items;
}

/** Parses `pgmux:` directives from the leading comments. */
function parseHints(comments: Comment[]): Hints | null {
  let hints: Hints | null = null;
  for (const c of comments) {
    const body = c.text.trimStart();
    if (body.length < 6 || body.slice(0, 6).toLowerCase() !== 'pgmux:') continue;
    hints ??= {};
    for (const item of hintItems(body)) {
      if (item === 'primary' || item === 'replica') {
        if (hints.target === undefined || item === 'primary') {
          hints.target = item;
          hints.targetText = c.block ? `/* pgmux:${item} */` : `-- pgmux:${item}`;
        }
      } else if (hints.maxLagMs === undefined && item.startsWith('max_lag_ms=')) {
        const v = item.slice(11);
        if (v.length > 0 && v.length <= 15 && isDigits(v)) hints.maxLagMs = Number(v);
      }
    }
  }
  return hints;
}

function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
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
  if (begins) result.beginsTransaction = true;
  // A hint decides alone; a transaction declared READ ONLY cannot write wherever it runs.
  if (target === 'replica' && !hinted && !begins && a.calls !== null) result.calls = Object.freeze(a.calls);
  if (changesFunctions) result.changesFunctions = true;
  // Unterminated input never runs: PostgreSQL rejects it, so it changes nothing.
  const session = complete ? effects.build() : null;
  if (session !== null) result.session = session;
  return result;
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

  constructor(opts: ClassifierOptions = {}) {
    const size = opts.cacheSize ?? 10_000;
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`cacheSize must be a non-negative integer, got ${size}`);
    this.#generationSize = size === 0 ? 0 : Math.max(1, size >> 1);
    this.#fns = compileFunctions(opts.writeFunctions);
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

  #remember(sql: string, c: Classification): void {
    if (this.#young.size >= this.#generationSize) {
      this.#old = this.#young;
      this.#young = new Map();
    }
    this.#young.set(sql, c);
  }
}
