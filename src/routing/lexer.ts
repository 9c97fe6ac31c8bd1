// A hand-written tokenizer for PostgreSQL's lexical rules (src/backend/parser/scan.l), just
// precise enough to route statements: it must agree with the server on where strings,
// quoted identifiers, comments and statements begin and end, and it must never throw.
//
// Covered: whitespace [ \t\n\r\f\v]; `--` line comments; nested `/* */` block comments;
// standard strings with '' doubling (standard_conforming_strings = on, so a backslash is an
// ordinary character); E'' strings with backslash escapes; N'' strings; B'' and X'' bit
// strings; U&'' strings and U&"" identifiers (with an optional UESCAPE 'c'); string
// continuation across a newline ('a'\n'b' is one literal); dollar quoting $$..$$ and
// $tag$..$tag$; positional parameters $1; quoted identifiers with "" doubling; unquoted
// identifiers (ASCII-lowercased, non-ASCII characters are identifier characters, `$` may
// continue one); numbers (decimal, 0x/0o/0b, `_` separators, exponents); operators (a
// `--` or `/*` inside an operator starts a comment, as in the server).
//
// Unterminated strings, identifiers and comments end the token stream and clear
// `complete`. Every loop advances, so the lexer is linear in the input length.

export type TokenKind =
  | 'keyword' // unquoted word that is a PostgreSQL keyword (value lowercased)
  | 'ident' // other unquoted word (value lowercased)
  | 'quotedIdent' // "..." or U&"..." (value decoded, case kept)
  | 'string' // '...', E'...', N'...', B'...', X'...', U&'...', $$...$$ (value decoded)
  | 'number'
  | 'param' // $1
  | 'op' // operators, `::`, `:` and stray characters
  | 'punct'; // ( ) ; , [ ] .

export interface Token {
  kind: TokenKind;
  /** Offset of the first character in the input. */
  start: number;
  /** Offset just past the last character. */
  end: number;
  /**
   * keyword/ident: the ASCII-lowercased text; quotedIdent/string: the decoded contents;
   * number/param/op/punct: the text.
   */
  value: string;
}

export interface Comment {
  /** The comment body without its delimiters (`/*`, `*\/`, `--`). */
  text: string;
  start: number;
  end: number;
  block: boolean;
}

export interface LexResult {
  tokens: Token[];
  /** Comments that precede the first token (where routing hints live). */
  leadingComments: Comment[];
  /** False when an unterminated string, identifier or comment cut the input short. */
  complete: boolean;
}

// PostgreSQL's keyword list (reserved, type/function-name, column-name and the common
// unreserved ones). Informational only: the classifier matches words by value.
const KEYWORDS: ReadonlySet<string> = new Set(
  (
    'abort absolute access action add admin after aggregate all also alter always analyse analyze and any array as asc ' +
    'asensitive assertion assignment asymmetric at atomic attach attribute authorization backward before begin between ' +
    'bigint binary bit boolean both breadth by cache call called cascade cascaded case cast catalog chain char character ' +
    'characteristics check checkpoint class close cluster coalesce collate collation column columns comment comments ' +
    'commit committed compression concurrently conditional configuration conflict connection constraint constraints ' +
    'content continue conversion copy cost create cross csv cube current current_catalog current_date current_role ' +
    'current_schema current_time current_timestamp current_user cursor cycle data database day deallocate dec decimal ' +
    'declare default defaults deferrable deferred definer delete delimiter delimiters depends depth desc detach dictionary ' +
    'disable discard distinct do document domain double drop each else empty enable encoding encrypted end enum error ' +
    'escape event except exclude excluding exclusive execute exists explain expression extension external extract false ' +
    'family fetch filter finalize first float following for force foreign format forward freeze from full function ' +
    'functions generated global grant granted greatest group grouping groups handler having header hold hour identity if ' +
    'ilike immediate immutable implicit import in include including increment indent index indexes inherit inherits ' +
    'initially inline inner inout input insensitive insert instead int integer intersect interval into invoker is isnull ' +
    'isolation join json json_array json_arrayagg json_exists json_object json_objectagg json_query json_scalar ' +
    'json_serialize json_table json_value keep key keys label language large last lateral leading leakproof least left ' +
    'level like limit listen load local localtime localtimestamp location lock locked logged mapping match matched ' +
    'materialized maxvalue merge merge_action method minute minvalue mode month move name names national natural nchar ' +
    'nested new next nfc nfd nfkc nfkd no none normalize normalized not nothing notify notnull nowait null nullif nulls ' +
    'numeric object of off offset oids old omit on only operator option options or order ordinality others out outer ' +
    'over overlaps overlay overriding owned owner parallel parameter parser partial partition passing password path ' +
    'placing plan plans policy position preceding precision prepare prepared preserve primary prior privileges ' +
    'procedural procedure procedures program publication quote quotes range read real reassign recheck recursive ref ' +
    'references referencing refresh reindex relative release rename repeatable replace replica reset restart restrict ' +
    'return returning returns revoke right role rollback rollup routine routines row rows rule savepoint scalar schema ' +
    'schemas scroll search second security select sequence sequences serializable server session session_user set ' +
    'setof sets share show similar simple skip smallint snapshot some source sql stable standalone start statement ' +
    'statistics stdin stdout storage stored strict string strip subscription substring support symmetric sysid system ' +
    'system_user table tables tablesample tablespace target temp template temporary text then ties time timestamp to ' +
    'trailing transaction transform treat trigger trim true truncate trusted type types uescape unbounded uncommitted ' +
    'unconditional unencrypted union unique unknown unlisten unlogged until update user using vacuum valid validate ' +
    'validator value values varchar variadic varying verbose version view views volatile when where whitespace window ' +
    'with within without work wrapper write xml xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces ' +
    'xmlparse xmlpi xmlroot xmlserialize xmltable year yes zone'
  ).split(' '),
);

// Character classes, by UTF-16 code unit. Code units >= 0x80 count as identifier
// characters, as bytes \200-\377 do in the server's scanner.
const C_SPACE = 1;
const C_IDSTART = 2;
const C_IDCONT = 4;
const C_DIGIT = 8;
const C_OP = 16;
const C_HEX = 32;
const CLASS = new Uint8Array(128);
for (const c of ' \t\n\r\f\v') CLASS[c.charCodeAt(0)]! |= C_SPACE;
for (let c = 0; c < 128; c++) {
  const ch = String.fromCharCode(c);
  if (/[A-Za-z_]/.test(ch)) CLASS[c]! |= C_IDSTART | C_IDCONT;
  if (/[0-9]/.test(ch)) CLASS[c]! |= C_DIGIT | C_IDCONT | C_HEX;
  if (/[A-Fa-f]/.test(ch)) CLASS[c]! |= C_HEX;
  if ('~!@#^&|`?+-*/%<>='.includes(ch)) CLASS[c]! |= C_OP;
}
CLASS[36]! |= C_IDCONT; // '$' continues an identifier

function cls(c: number): number {
  return c < 128 ? CLASS[c]! : c >= 0x80 ? C_IDSTART | C_IDCONT : 0;
}
const isSpace = (c: number): boolean => c < 128 && (CLASS[c]! & C_SPACE) !== 0;
const isIdStart = (c: number): boolean => (cls(c) & C_IDSTART) !== 0;
const isIdCont = (c: number): boolean => (cls(c) & C_IDCONT) !== 0;
const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isHex = (c: number): boolean => c < 128 && (CLASS[c]! & C_HEX) !== 0;
const isOpChar = (c: number): boolean => c < 128 && (CLASS[c]! & C_OP) !== 0;

const SQ = 39; // '
const DQ = 34; // "
const BS = 92; // \
const DOLLAR = 36;
const NL = 10;
const CR = 13;

/** PostgreSQL downcases unquoted identifiers in ASCII only. */
export function asciiLower(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 65 && c <= 90) return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  }
  return s;
}

/** Whether `sql` at `i` continues a literal across a newline: 'a'<ws with \n>'b'. Returns the
 *  index of the next opening quote, or -1. */
function continuationQuote(sql: string, i: number): number {
  const n = sql.length;
  let sawNewline = false;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === NL || c === CR) {
      sawNewline = true;
      i++;
    } else if (isSpace(c)) {
      i++;
    } else if (c === 45 && sql.charCodeAt(i + 1) === 45) {
      // a `--` comment counts as whitespace here; it runs to a newline
      let j = i + 2;
      while (j < n && sql.charCodeAt(j) !== NL && sql.charCodeAt(j) !== CR) j++;
      if (j >= n) return -1;
      i = j;
    } else {
      return c === SQ && sawNewline ? i : -1;
    }
  }
  return -1;
}

/** End of the block comment opening at `i` (`/*`), or -1 if unterminated. Nesting counts. */
function blockCommentEnd(sql: string, i: number): number {
  const n = sql.length;
  let depth = 1;
  i += 2;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === 42 && sql.charCodeAt(i + 1) === 47) {
      i += 2;
      if (--depth === 0) return i;
    } else if (c === 47 && sql.charCodeAt(i + 1) === 42) {
      depth++;
      i += 2;
    } else {
      i++;
    }
  }
  return -1;
}

/** Skips whitespace and comments; returns the next position, or -1 on an unterminated comment. */
function skipTrivia(sql: string, i: number): number {
  const n = sql.length;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (isSpace(c)) i++;
    else if (c === 45 && sql.charCodeAt(i + 1) === 45) {
      while (i < n && sql.charCodeAt(i) !== NL && sql.charCodeAt(i) !== CR) i++;
    } else if (c === 47 && sql.charCodeAt(i + 1) === 42) {
      const e = blockCommentEnd(sql, i);
      if (e < 0) return -1;
      i = e;
    } else break;
  }
  return i;
}

type QuoteMode = 'std' | 'esc' | 'bits';

interface QuotedScan {
  /** Position after the closing quote (of the last continued part), or -1 if unterminated. */
  end: number;
  value: string;
}

/**
 * Scans a single-quoted literal whose opening quote is at `q`. `std` doubles quotes only,
 * `esc` also honours backslash escapes (E''), `bits` ends at the first quote (B'', X'').
 * Follows continuations across newlines in the same mode, as the server does.
 */
function scanQuoted(sql: string, q: number, mode: QuoteMode): QuotedScan {
  const n = sql.length;
  let value = '';
  for (;;) {
    let i = q + 1;
    let segStart = i;
    let closed = -1;
    while (i < n) {
      const c = sql.charCodeAt(i);
      if (c === SQ) {
        if (mode !== 'bits' && sql.charCodeAt(i + 1) === SQ) {
          value += sql.slice(segStart, i + 1);
          i += 2;
          segStart = i;
          continue;
        }
        closed = i;
        break;
      }
      if (c === BS && mode === 'esc') {
        value += sql.slice(segStart, i);
        const r = decodeBackslash(sql, i);
        value += r.text;
        i = r.next;
        segStart = i;
        continue;
      }
      i++;
    }
    if (closed < 0) return { end: -1, value };
    value += sql.slice(segStart, closed);
    const next = continuationQuote(sql, closed + 1);
    if (next < 0) return { end: closed + 1, value };
    q = next;
  }
}

/** Decodes one E'' backslash escape at `i` (the backslash). */
function decodeBackslash(sql: string, i: number): { text: string; next: number } {
  const c = sql.charCodeAt(i + 1);
  if (Number.isNaN(c)) return { text: '', next: i + 1 };
  switch (c) {
    case 98: // b
      return { text: '\b', next: i + 2 };
    case 102: // f
      return { text: '\f', next: i + 2 };
    case 110: // n
      return { text: '\n', next: i + 2 };
    case 114: // r
      return { text: '\r', next: i + 2 };
    case 116: // t
      return { text: '\t', next: i + 2 };
    case 120: {
      // \xh or \xhh
      let j = i + 2;
      while (j < i + 4 && isHex(sql.charCodeAt(j))) j++;
      if (j === i + 2) return { text: 'x', next: i + 2 };
      return { text: String.fromCharCode(parseInt(sql.slice(i + 2, j), 16)), next: j };
    }
    case 117: // \uXXXX
    case 85: {
      // \UXXXXXXXX
      const len = c === 117 ? 4 : 8;
      const hex = sql.slice(i + 2, i + 2 + len);
      if (hex.length === len && /^[0-9A-Fa-f]+$/.test(hex)) {
        const cp = parseInt(hex, 16);
        if (cp <= 0x10ffff) return { text: String.fromCodePoint(cp), next: i + 2 + len };
      }
      return { text: String.fromCharCode(c), next: i + 2 };
    }
    default: {
      if (c >= 48 && c <= 55) {
        // \o, \oo, \ooo
        let j = i + 1;
        while (j < i + 4 && sql.charCodeAt(j) >= 48 && sql.charCodeAt(j) <= 55) j++;
        return { text: String.fromCharCode(parseInt(sql.slice(i + 1, j), 8) & 0xff), next: j };
      }
      // Any other character stands for itself (including \' and \\). Keep surrogate pairs whole.
      const cp = sql.codePointAt(i + 1)!;
      return { text: String.fromCodePoint(cp), next: i + 1 + (cp > 0xffff ? 2 : 1) };
    }
  }
}

/** Decodes U&'' / U&"" escapes (\XXXX, \+XXXXXX, doubled escape char). Invalid escapes are kept. */
export function decodeUnicodeEscapes(raw: string, esc = '\\'): string {
  if (!raw.includes(esc)) return raw;
  let out = '';
  let i = 0;
  const n = raw.length;
  while (i < n) {
    const ch = raw[i]!;
    if (ch !== esc) {
      out += ch;
      i++;
      continue;
    }
    if (raw[i + 1] === esc) {
      out += esc;
      i += 2;
      continue;
    }
    let hex = '';
    let len = 0;
    if (raw[i + 1] === '+') {
      hex = raw.slice(i + 2, i + 8);
      len = 8;
    } else {
      hex = raw.slice(i + 1, i + 5);
      len = 5;
    }
    const want = len === 8 ? 6 : 4;
    if (hex.length === want && /^[0-9A-Fa-f]+$/.test(hex)) {
      let cp = parseInt(hex, 16);
      i += len;
      // A UTF-16 surrogate pair written as two escapes.
      if (cp >= 0xd800 && cp <= 0xdbff && raw[i] === esc) {
        const lo = raw.slice(i + 1, i + 5);
        if (/^[0-9A-Fa-f]{4}$/.test(lo)) {
          const l = parseInt(lo, 16);
          if (l >= 0xdc00 && l <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (l - 0xdc00);
            i += 5;
          }
        }
      }
      out += cp <= 0x10ffff ? String.fromCodePoint(cp) : '\ufffd';
    } else {
      out += ch;
      i++;
    }
  }
  return out;
}

/**
 * After a U&'' / U&"" literal ending at `i`: if `UESCAPE 'c'` follows, returns the escape
 * character and the position after it.
 */
function scanUescape(sql: string, i: number): { esc: string; next: number } | null {
  const j = skipTrivia(sql, i);
  if (j < 0 || j + 7 > sql.length) return null;
  if (sql.slice(j, j + 7).toLowerCase() !== 'uescape') return null;
  if (isIdCont(sql.charCodeAt(j + 7))) return null;
  const k = skipTrivia(sql, j + 7);
  if (k < 0 || sql.charCodeAt(k) !== SQ) return null;
  const s = scanQuoted(sql, k, 'std');
  if (s.end < 0) return null;
  return { esc: s.value.length === 1 ? s.value : '\\', next: s.end };
}

/** Tokenizes `sql`. Never throws; linear in the input length. */
export function lex(sql: string): LexResult {
  const tokens: Token[] = [];
  const leadingComments: Comment[] = [];
  const n = sql.length;
  let complete = true;
  let i = 0;

  scan: while (i < n) {
    const c = sql.charCodeAt(i);

    if (isSpace(c)) {
      i++;
      continue;
    }

    // Comments.
    if (c === 45 && sql.charCodeAt(i + 1) === 45) {
      let j = i + 2;
      while (j < n && sql.charCodeAt(j) !== NL && sql.charCodeAt(j) !== CR) j++;
      if (tokens.length === 0) leadingComments.push({ text: sql.slice(i + 2, j), start: i, end: j, block: false });
      i = j;
      continue;
    }
    if (c === 47 && sql.charCodeAt(i + 1) === 42) {
      const e = blockCommentEnd(sql, i);
      if (e < 0) {
        complete = false;
        break;
      }
      if (tokens.length === 0) leadingComments.push({ text: sql.slice(i + 2, e - 2), start: i, end: e, block: true });
      i = e;
      continue;
    }

    // Quoted identifier.
    if (c === DQ) {
      const e = scanQuotedIdent(sql, i);
      if (e.end < 0) {
        complete = false;
        break;
      }
      tokens.push({ kind: 'quotedIdent', start: i, end: e.end, value: e.value });
      i = e.end;
      continue;
    }

    // Standard string.
    if (c === SQ) {
      const s = scanQuoted(sql, i, 'std');
      if (s.end < 0) {
        complete = false;
        break;
      }
      tokens.push({ kind: 'string', start: i, end: s.end, value: s.value });
      i = s.end;
      continue;
    }

    // Words, and the prefixed literals E'' N'' B'' X'' U&'' U&"".
    if (isIdStart(c)) {
      const c1 = sql.charCodeAt(i + 1);
      if (c1 === SQ) {
        const lc = c | 0x20;
        const mode: QuoteMode | null = lc === 101 ? 'esc' : lc === 110 ? 'std' : lc === 98 || lc === 120 ? 'bits' : null;
        if (mode !== null) {
          const s = scanQuoted(sql, i + 1, mode);
          if (s.end < 0) {
            complete = false;
            break;
          }
          tokens.push({ kind: 'string', start: i, end: s.end, value: s.value });
          i = s.end;
          continue;
        }
      } else if ((c | 0x20) === 117 && c1 === 38) {
        const c2 = sql.charCodeAt(i + 2);
        if (c2 === SQ || c2 === DQ) {
          const raw = c2 === SQ ? scanQuoted(sql, i + 2, 'std') : scanQuotedIdent(sql, i + 2);
          if (raw.end < 0) {
            complete = false;
            break;
          }
          let end = raw.end;
          let esc = '\\';
          const u = scanUescape(sql, end);
          if (u) {
            esc = u.esc;
            end = u.next;
          }
          const kind = c2 === SQ ? 'string' : 'quotedIdent';
          tokens.push({ kind, start: i, end, value: decodeUnicodeEscapes(raw.value, esc) });
          i = end;
          continue;
        }
      }
      // Scan the word, noting upper-case and non-ASCII characters to lowercase cheaply.
      let upper = c >= 65 && c <= 90;
      let nonAscii = c >= 0x80;
      let j = i + 1;
      for (; j < n; j++) {
        const cj = sql.charCodeAt(j);
        if (cj < 128) {
          if ((CLASS[cj]! & C_IDCONT) === 0) break;
          if (cj >= 65 && cj <= 90) upper = true;
        } else nonAscii = true;
      }
      const text = sql.slice(i, j);
      const value = !upper ? text : nonAscii ? asciiLower(text) : text.toLowerCase();
      tokens.push({ kind: KEYWORDS.has(value) ? 'keyword' : 'ident', start: i, end: j, value });
      i = j;
      continue;
    }

    // Dollar quotes and parameters.
    if (c === DOLLAR) {
      const c1 = sql.charCodeAt(i + 1);
      if (isDigit(c1)) {
        let j = i + 2;
        while (j < n && isDigit(sql.charCodeAt(j))) j++;
        tokens.push({ kind: 'param', start: i, end: j, value: sql.slice(i, j) });
        i = j;
        continue;
      }
      // $tag$ where tag is empty or [A-Za-z\200-\377_][A-Za-z\200-\377_0-9]*
      let j = i + 1;
      if (j < n && isIdStart(sql.charCodeAt(j))) {
        j++;
        while (j < n) {
          const cj = sql.charCodeAt(j);
          if (cj === DOLLAR || !isIdCont(cj)) break;
          j++;
        }
      }
      if (sql.charCodeAt(j) === DOLLAR) {
        const delim = sql.slice(i, j + 1);
        const bodyStart = j + 1;
        const close = sql.indexOf(delim, bodyStart);
        if (close < 0) {
          complete = false;
          break;
        }
        tokens.push({ kind: 'string', start: i, end: close + delim.length, value: sql.slice(bodyStart, close) });
        i = close + delim.length;
        continue;
      }
      tokens.push({ kind: 'op', start: i, end: i + 1, value: '$' });
      i++;
      continue;
    }

    // Numbers.
    if (isDigit(c) || (c === 46 && isDigit(sql.charCodeAt(i + 1)))) {
      const j = scanNumber(sql, i);
      tokens.push({ kind: 'number', start: i, end: j, value: sql.slice(i, j) });
      i = j;
      continue;
    }

    switch (c) {
      case 40: // (
      case 41: // )
      case 59: // ;
      case 44: // ,
      case 91: // [
      case 93: // ]
        tokens.push({ kind: 'punct', start: i, end: i + 1, value: sql[i]! });
        i++;
        continue scan;
      case 46: // . or ..
        if (sql.charCodeAt(i + 1) === 46) {
          tokens.push({ kind: 'op', start: i, end: i + 2, value: '..' });
          i += 2;
        } else {
          tokens.push({ kind: 'punct', start: i, end: i + 1, value: '.' });
          i++;
        }
        continue scan;
      case 58: {
        // : :: :=
        const c1 = sql.charCodeAt(i + 1);
        const len = c1 === 58 || c1 === 61 ? 2 : 1;
        tokens.push({ kind: 'op', start: i, end: i + len, value: sql.slice(i, i + len) });
        i += len;
        continue scan;
      }
    }

    if (isOpChar(c)) {
      const j = scanOperator(sql, i);
      tokens.push({ kind: 'op', start: i, end: j, value: sql.slice(i, j) });
      i = j;
      continue;
    }

    // Anything else (backslash, braces, stray characters): one-character token.
    const cp = sql.codePointAt(i)!;
    const w = cp > 0xffff ? 2 : 1;
    tokens.push({ kind: 'op', start: i, end: i + w, value: sql.slice(i, i + w) });
    i += w;
  }

  return { tokens, leadingComments, complete };
}

function scanQuotedIdent(sql: string, q: number): QuotedScan {
  const n = sql.length;
  let value = '';
  let i = q + 1;
  let segStart = i;
  while (i < n) {
    if (sql.charCodeAt(i) === DQ) {
      if (sql.charCodeAt(i + 1) === DQ) {
        value += sql.slice(segStart, i + 1);
        i += 2;
        segStart = i;
        continue;
      }
      return { end: i + 1, value: value + sql.slice(segStart, i) };
    }
    i++;
  }
  return { end: -1, value };
}

function scanNumber(sql: string, i: number): number {
  const n = sql.length;
  const c0 = sql.charCodeAt(i);
  if (c0 === 48) {
    const p = sql.charCodeAt(i + 1) | 0x20;
    const base = p === 120 ? 16 : p === 111 ? 8 : p === 98 ? 2 : 0; // x o b
    if (base !== 0) {
      let j = i + 2;
      const ok = (c: number) => c === 95 || (base === 16 ? isHex(c) : base === 8 ? c >= 48 && c <= 55 : c === 48 || c === 49);
      if (ok(sql.charCodeAt(j))) {
        while (j < n && ok(sql.charCodeAt(j))) j++;
        return j;
      }
    }
  }
  let j = i;
  while (j < n && (isDigit(sql.charCodeAt(j)) || sql.charCodeAt(j) === 95)) j++;
  // A '.' continues the number unless it starts '..' (e.g. array slices 1..2 in PL/pgSQL).
  if (sql.charCodeAt(j) === 46 && sql.charCodeAt(j + 1) !== 46) {
    j++;
    while (j < n && (isDigit(sql.charCodeAt(j)) || sql.charCodeAt(j) === 95)) j++;
  }
  const e = sql.charCodeAt(j) | 0x20;
  if (e === 101) {
    const s = sql.charCodeAt(j + 1);
    if (isDigit(s)) j += 1;
    else if ((s === 43 || s === 45) && isDigit(sql.charCodeAt(j + 2))) j += 2;
    else return j;
    while (j < n && (isDigit(sql.charCodeAt(j)) || sql.charCodeAt(j) === 95)) j++;
  }
  return j;
}

/** Operator at `i` following scan.l: stops before an embedded `--` or `/*`; a multi-character
 *  operator may not end in + or - unless it contains one of ~ ! @ # % ^ & | ` ?. */
function scanOperator(sql: string, i: number): number {
  const n = sql.length;
  let j = i + 1;
  while (j < n && isOpChar(sql.charCodeAt(j))) {
    const c = sql.charCodeAt(j);
    if ((c === 45 && sql.charCodeAt(j + 1) === 45) || (c === 47 && sql.charCodeAt(j + 1) === 42)) break;
    j++;
  }
  if (j - i > 1) {
    let special = false;
    for (let k = i; k < j; k++) {
      const c = sql.charCodeAt(k);
      if (c === 126 || c === 33 || c === 64 || c === 35 || c === 94 || c === 38 || c === 124 || c === 96 || c === 63 || c === 37) {
        special = true;
        break;
      }
    }
    if (!special) {
      while (j - i > 1 && (sql.charCodeAt(j - 1) === 43 || sql.charCodeAt(j - 1) === 45)) j--;
    }
  }
  return j;
}
