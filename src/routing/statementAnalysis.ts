// Read/write analysis of a message's statements, token by token: the rules listed at the top
// of classifier.ts, which combines the verdicts of a message's statements.

import type { Token } from './lexer.js';
import type { FunctionRef, FunctionSet } from './functionLists.js';

export type VerdictKind = 'read' | 'write' | 'neutral';

export interface Verdict {
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
export class Analysis {
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
          if (schema !== null || t.kind === 'quotedIdent' || (!NOT_A_CALL.has(t.value) && !this.clauseBeforeParen(i, s))) {
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

  /**
   * Unreserved keywords that open a clause with `(` in their usual place (they could name a
   * function elsewhere): `) OVER (`, `) FILTER (`, `ORDER BY (`, `AT TIME ZONE (`,
   * `GROUPING SETS (`, `GROUP BY ROLLUP (`, and `JOIN (`.
   */
  private clauseBeforeParen(i: number, s: number): boolean {
    const t = this.tokens[i]!;
    if (t.kind !== 'keyword' && t.kind !== 'ident') return false;
    const prev = i > s ? this.w(i - 1) : null;
    switch (t.value) {
      case 'over':
      case 'filter':
        return i > s && isPunct(this.tokens[i - 1], ')');
      case 'by':
        return prev === 'order' || prev === 'group' || prev === 'partition';
      case 'zone':
        return prev === 'time';
      case 'sets':
        return prev === 'grouping';
      case 'rollup':
      case 'cube':
        return prev === 'by';
      case 'join':
        return true;
      default:
        return false;
    }
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
