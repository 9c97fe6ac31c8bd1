// Whether a statement's result may be served from the query cache, and which tables a write
// touches (for invalidation). Conservative by construction: anything not understood is
// "not cacheable" for reads and "every table" ('*') for writes, because a wrong answer here
// is a stale result served to a client.

import { lex, type Token } from './lexer.js';
import { DEFAULT_WRITE_FUNCTIONS } from './functionLists.js';
import { parseCacheHints } from './hints.js';
import { Analysis } from './statementAnalysis.js';

export type CacheVerdict = { ok: true; tables: readonly string[]; ttlMs?: number } | { ok: false; why: string };

/**
 * Built-in functions whose result depends only on their arguments (IMMUTABLE in pg_proc and
 * not affected by settings that are outside the cache key). Anything else -- now(), random(),
 * nextval(), every user function -- makes a statement uncacheable.
 */
const IMMUTABLE_FUNCTIONS = new Set(
  (
    'lower upper coalesce nullif greatest least abs ceil ceiling floor round trunc sign mod sqrt cbrt power exp ln log ' +
    'length char_length character_length octet_length bit_length substr substring overlay position strpos trim btrim ' +
    'ltrim rtrim lpad rpad replace left right reverse repeat initcap concat concat_ws split_part md5 ascii chr ' +
    'starts_with array_length cardinality array_position array_append array_prepend array_cat count sum min max avg bool_and bool_or'
  ).split(' '),
);

/**
 * Words before `(` that are syntax, not a call: `IN (`, `EXISTS (`, `VALUES (`, `AS (`, type
 * modifiers such as `numeric(10, 2)`. Kept short on purpose: an unknown word is a call.
 */
const SYNTAX_BEFORE_PAREN = new Set(
  (
    'in exists values as any all some from join on using select where and or not when then else over filter within ' +
    'group by order partition having union intersect except distinct lateral into with ' +
    'numeric decimal dec varchar char character bit varying interval time timestamp float cast'
  ).split(' '),
);

/** SQL-standard functions written without parentheses: their value changes per session or call. */
const VOLATILE_WORDS = new Set(
  (
    'current_date current_time current_timestamp localtime localtimestamp current_user current_role session_user ' +
    'user system_user current_catalog current_schema'
  ).split(' '),
);

/** Date/time input strings that evaluate to the current time when cast. */
const VOLATILE_LITERALS = new Set(['now', 'today', 'tomorrow', 'yesterday']);

const READ_HEADS = new Set(['select', 'values', 'table', 'with']);

const isName = (t: Token | undefined): t is Token => t !== undefined && (t.kind === 'keyword' || t.kind === 'ident' || t.kind === 'quotedIdent');
const isPunct = (t: Token | undefined, p: string): boolean => t !== undefined && t.kind === 'punct' && t.value === p;

/** Lower-case name used for the cache's table index: quoted names keep their text, lowered
 *  (over-matching two tables that differ only in case is safe: it only invalidates more). */
const nameOf = (t: Token): string => t.value.toLowerCase();

/** Analyses `sql` for the query cache. Pure; never throws. */
export function cacheVerdict(sql: string): CacheVerdict {
  try {
    return analyzeForCache(sql);
  } catch (err) {
    return { ok: false, why: `analysis error: ${(err as Error)?.message ?? String(err)}` };
  }
}

function analyzeForCache(sql: string): CacheVerdict {
  const { tokens, leadingComments, complete } = lex(sql);
  if (!complete) return { ok: false, why: 'unterminated string, identifier or comment' };
  const hints = leadingComments.length > 0 ? parseCacheHints(leadingComments) : null;
  if (hints?.nocache) return { ok: false, why: 'hint pgmux:nocache' };
  const a = new Analysis(tokens, DEFAULT_WRITE_FUNCTIONS);
  const ranges = a.split();
  if (ranges.length !== 2) return { ok: false, why: ranges.length === 0 ? 'empty query' : 'more than one statement' };
  const s = ranges[0]!;
  const e = ranges[1]!;
  const head = tokens[s]!;
  if (!isPunct(head, '(') && !(head.kind === 'keyword' && READ_HEADS.has(head.value))) return { ok: false, why: 'not a SELECT, VALUES, TABLE or WITH query' };
  const v = a.statement(s, e, 0);
  if (v.kind !== 'read') return { ok: false, why: v.reason };
  const tables: string[] = [];
  for (let i = s; i < e; i++) {
    const t = tokens[i]!;
    if (t.kind === 'string') {
      if (VOLATILE_LITERALS.has(t.value.trim().toLowerCase())) return { ok: false, why: `literal '${t.value}' means the current time` };
      continue;
    }
    if (!isName(t)) continue;
    const unquoted = t.kind !== 'quotedIdent';
    if (t.value.toLowerCase().startsWith('pg_') || t.value.toLowerCase() === 'information_schema') {
      return { ok: false, why: `reads the system catalog (${t.value})` };
    }
    if (isPunct(tokens[i + 1], '(')) {
      const qualified = isPunct(tokens[i - 1], '.');
      // `FROM t v(x)`, `AS v(x)`: an alias with its column names, as the classifier reads it.
      const prev = i > s ? tokens[i - 1]! : undefined;
      if (!qualified && prev !== undefined && (prev.kind === 'ident' || prev.kind === 'quotedIdent' || (prev.kind === 'keyword' && prev.value === 'as'))) continue;
      if (qualified || !unquoted || !(SYNTAX_BEFORE_PAREN.has(t.value) || IMMUTABLE_FUNCTIONS.has(t.value))) {
        return { ok: false, why: `calls ${t.value}() (only a few immutable built-ins are allowed)` };
      }
      continue;
    }
    if (unquoted && VOLATILE_WORDS.has(t.value) && !isPunct(tokens[i - 1], '.')) return { ok: false, why: `uses ${t.value}` };
    if (unquoted && (t.value === 'from' || t.value === 'join' || (t.value === 'table' && i === s))) {
      const why = fromItems(tokens, i + 1, e, tables, t.value !== 'from');
      if (why !== null) return { ok: false, why };
    }
  }
  const frozen = Object.freeze([...new Set(tables)]);
  return hints?.ttlMs !== undefined ? { ok: true, tables: frozen, ttlMs: hints.ttlMs } : { ok: true, tables: frozen };
}

/**
 * Reads the items of a FROM list (or the one item after JOIN / TABLE) starting at `i`,
 * appending table names to `out`. Subqueries in parentheses are skipped here: their own
 * FROM is met by the caller's scan. Returns why the list cannot be resolved, or null.
 */
function fromItems(tokens: Token[], i: number, e: number, out: string[], single: boolean): string | null {
  for (;;) {
    while (i < e && tokens[i]!.kind === 'keyword' && (tokens[i]!.value === 'lateral' || tokens[i]!.value === 'only')) i++;
    const t = tokens[i];
    if (isPunct(t, '(')) return null; // subquery or parenthesised join: scanned by the caller
    if (!isName(t)) return 'FROM item pgmux cannot resolve';
    let name = nameOf(t);
    let j = i + 1;
    if (isPunct(tokens[j], '.')) {
      const n2 = tokens[j + 1];
      if (!isName(n2)) return 'FROM item pgmux cannot resolve';
      name = `${name}.${nameOf(n2)}`;
      j += 2;
      if (isPunct(tokens[j], '.')) return 'three-part table name';
    }
    if (isPunct(tokens[j], '(')) return `calls ${name}() in FROM`;
    out.push(name);
    if (single) return null;
    // Skip an alias and its column list to reach a `,` that continues the list.
    if (tokens[j]?.kind === 'keyword' && tokens[j]!.value === 'as') j++;
    const alias = tokens[j];
    if (alias !== undefined && (alias.kind === 'ident' || alias.kind === 'quotedIdent')) j++;
    if (isPunct(tokens[j], '(')) {
      let depth = 0;
      for (; j < e; j++) {
        if (isPunct(tokens[j], '(')) depth++;
        else if (isPunct(tokens[j], ')') && --depth === 0) break;
      }
      j++;
    }
    if (j < e && isPunct(tokens[j], ',')) {
      i = j + 1;
      continue;
    }
    return null;
  }
}

/** Statements that change no table data (session state, locks, statistics). */
const NO_DATA_CHANGE = new Set(['begin', 'start', 'set', 'reset', 'discard', 'listen', 'unlisten', 'notify', 'deallocate', 'show', 'lock', 'vacuum', 'analyze', 'analyse', 'checkpoint', 'prepare', 'close']);

/**
 * Tables the statements in `tokens` may change: [] when none, '*' when any statement changes
 * data pgmux cannot pin to named tables (DDL, data-modifying CTEs, EXECUTE, CALL, DO, ...).
 * Targets of INSERT/UPDATE/DELETE/MERGE, TRUNCATE, COPY ... FROM and REFRESH MATERIALIZED VIEW
 * are listed by name (what else their rows show up in is the relation catalog's to say).
 */
export function writtenTables(a: Analysis, ranges: readonly number[]): readonly string[] | '*' {
  const out: string[] = [];
  for (let k = 0; k < ranges.length; k += 2) {
    const s = ranges[k]!;
    const e = ranges[k + 1]!;
    const v = a.statement(s, e, 0);
    if (v.kind !== 'write') continue;
    const verb = a.w(s);
    if (NO_DATA_CHANGE.has(verb)) continue;
    let i = s + 1;
    switch (verb) {
      case 'insert':
      case 'merge':
        if (a.w(i) !== 'into') return '*';
        i++;
        break;
      case 'delete':
        if (a.w(i) !== 'from') return '*';
        i++;
        break;
      case 'update':
        break;
      case 'truncate':
        if (a.w(i) === 'table') i++;
        break;
      case 'copy':
        break;
      case 'refresh':
        // REFRESH MATERIALIZED VIEW [CONCURRENTLY] name: it rewrites that one relation.
        if (a.w(i) !== 'materialized' || a.w(i + 1) !== 'view') return '*';
        i += 2;
        if (a.w(i) === 'concurrently') i++;
        break;
      default:
        return '*';
    }
    if (a.w(i) === 'only') i++;
    for (;;) {
      const t = a.tokens[i];
      if (!isName(t)) return '*';
      let name = nameOf(t);
      i++;
      if (isPunct(a.tokens[i], '.')) {
        const n2 = a.tokens[i + 1];
        if (!isName(n2)) return '*';
        name = `${name}.${nameOf(n2)}`;
        i += 2;
      }
      if (verb === 'copy') {
        // COPY t [(cols)] FROM ...: a write; COPY t TO is a read the classifier sends to the primary.
        if (isPunct(a.tokens[i], '(')) i = a.match[i]! + 1;
        if (a.w(i) === 'from') out.push(name);
        else if (a.w(i) !== 'to') return '*';
        break;
      }
      out.push(name);
      if (verb === 'truncate' && isPunct(a.tokens[i], ',')) {
        i++;
        if (a.w(i) === 'only') i++;
        continue;
      }
      if (verb === 'truncate' && (a.w(i) === 'cascade')) return '*';
      break;
    }
  }
  return Object.freeze([...new Set(out)]);
}

/** Tables the message `sql` may change (see writtenTables); '*' when it cannot be analysed. */
export function writesTablesOf(sql: string): readonly string[] | '*' {
  try {
    const { tokens, complete } = lex(sql);
    if (!complete) return Object.freeze([]);
    const a = new Analysis(tokens, DEFAULT_WRITE_FUNCTIONS);
    return writtenTables(a, a.split());
  } catch {
    return '*';
  }
}

/** `cache<TAB>tables=a,b[<TAB>ttl_ms=N]` or `nocache<TAB>why`, plus `<TAB>invalidates=...` for a write. */
export function formatCacheVerdict(v: CacheVerdict, writes?: readonly string[] | '*'): string {
  let line = v.ok ? `cache\ttables=${v.tables.join(',')}${v.ttlMs !== undefined ? `\tttl_ms=${v.ttlMs}` : ''}` : `nocache\t${v.why}`;
  if (writes !== undefined) line += `\tinvalidates=${writes === '*' ? '*' : writes.join(',')}`;
  return line;
}

/**
 * A parameter value (bytes of a Bind) that may be read as the current time: whatever type the
 * statement gives the parameter, 'now', 'today', 'tomorrow' and 'yesterday' are evaluated when
 * the value is converted, so the statement is no longer a function of its text and values.
 * Found in any case and anywhere in the value (`' Now'`, binary text cast later): a false
 * alarm costs a miss, a missed one a stale result.
 */
export function volatileParameter(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = buf[i]! | 0x20; // ASCII lower case
    if ((c === 0x6e || c === 0x74 || c === 0x79) && volatileWordAt(buf, i, end)) return true; // n, t, y
  }
  return false;
}

function volatileWordAt(buf: Buffer, at: number, end: number): boolean {
  outer: for (const word of VOLATILE_LITERALS) {
    if (at + word.length > end) continue;
    for (let j = 0; j < word.length; j++) if ((buf[at + j]! | 0x20) !== word.charCodeAt(j)) continue outer;
    return true;
  }
  return false;
}
