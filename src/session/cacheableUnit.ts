// Extended-protocol units as the query cache sees them: which are one statement bound and run
// once, up to and including its Sync (invalidation counts such a unit as one request), which
// of those the cache may answer, and what of their bytes goes into the key: the unit's shape
// and a digest of everything else that can change the reply.

import { createHash } from 'node:crypto';
import type { HeldMessage } from '../protocol/framer.js';
import { FrontendMsg } from '../protocol/messages.js';
import { volatileParameter } from '../routing/cacheability.js';

/** A client's named statement as the session keeps it (preparedStatements.ts ClientStatement). */
export interface KnownStatement {
  readonly query: string;
  /** Parse bytes after the query text: parameter type count and OIDs. */
  readonly rest: Buffer;
}

export interface CacheableUnit {
  /** The statement's text. */
  sql: string;
  /** For the key: the shape (message sequence) and a digest of parameter types, formats and values, result formats. */
  unit: string;
}

const NUL = 0;

/** One statement bound and run once, up to its Sync (oneStatementUnit). */
export interface StatementUnit {
  /** The named statement the Bind uses (no Parse in the unit), else null. */
  named: KnownStatement | null;
  /** The Parse whose text the unit runs (its text is decoded only when needed: unitText()). */
  parse: HeldMessage | null;
  textStart: number;
  textEnd: number;
  /** Parameter type count and OIDs (Parse bytes after the text). */
  types: Buffer;
  /** The message sequence: P, B, Ds / Dp (Describe statement / portal), E. */
  shape: string;
  bind: HeldMessage;
  /** Where the Bind's formats, values and result formats start. */
  bindTail: number;
  /** Its Parse names the statement. */
  namedParse: boolean;
  /** Its Execute has a row limit. */
  rowLimit: boolean;
}

/**
 * `held` as one statement bound and run once, or null: an optional Parse first, one Bind (of
 * that Parse's statement, or else of a named statement the session knows), Describes of that
 * statement or that portal, one Execute of that portal, and a Sync last; nothing else.
 */
export function oneStatementUnit(held: readonly HeldMessage[], statementOf: (name: string) => KnownStatement | undefined): StatementUnit | null {
  const n = held.length;
  if (n < 3 || held[n - 1]!.type !== FrontendMsg.Sync) return null;
  let shape = '';
  let known: KnownStatement | null = null;
  let parse: HeldMessage | null = null;
  let textStart = 0;
  let textEnd = 0;
  let types: Buffer | null = null;
  let statement: string | null = null; // the Parse's name once it defines one
  let namedParse = false;
  let portal: string | null = null;
  let bind: HeldMessage | null = null;
  let bindTail = 0;
  let executes = 0;
  let rowLimit = false;
  for (let i = 0; i < n - 1; i++) {
    const m = held[i]!;
    const { buf, end } = m;
    const body = m.start + 5;
    switch (m.type) {
      case FrontendMsg.Parse: {
        if (i !== 0) return null;
        const nm = cstrEnd(buf, body, end);
        const q = nm < 0 ? -1 : cstrEnd(buf, nm + 1, end);
        if (q < 0) return null;
        statement = buf.toString('utf8', body, nm);
        namedParse = statement !== '';
        parse = m;
        textStart = nm + 1;
        textEnd = q;
        types = buf.subarray(q + 1, end);
        shape += 'P';
        break;
      }
      case FrontendMsg.Bind: {
        if (bind !== null) return null;
        const p = cstrEnd(buf, body, end);
        const s = p < 0 ? -1 : cstrEnd(buf, p + 1, end);
        if (s < 0) return null;
        portal = buf.toString('utf8', body, p);
        const name = buf.toString('utf8', p + 1, s);
        if (statement === null) {
          const st = named(statementOf, name);
          if (st === undefined) return null;
          known = st;
          types = st.rest;
          statement = name;
        } else if (name !== statement) return null;
        bind = m;
        bindTail = s + 1;
        shape += 'B';
        break;
      }
      case FrontendMsg.Describe: {
        const kind = buf[body];
        const e = cstrEnd(buf, body + 1, end);
        if (e < 0) return null;
        const name = buf.toString('utf8', body + 1, e);
        if (kind === 0x53 /* S */) {
          if (statement === null) {
            const st = named(statementOf, name);
            if (st === undefined) return null;
            known = st;
            types = st.rest;
            statement = name;
          } else if (name !== statement) return null;
          shape += 'Ds';
        } else if (kind === 0x50 /* P */) {
          if (portal === null || name !== portal) return null;
          shape += 'Dp';
        } else return null;
        break;
      }
      case FrontendMsg.Execute: {
        const e = cstrEnd(buf, body, end);
        if (e < 0 || ++executes > 1 || portal === null || buf.toString('utf8', body, e) !== portal || e + 5 !== end) return null;
        rowLimit = buf.readInt32BE(e + 1) !== 0;
        shape += 'E';
        break;
      }
      default:
        return null; // a Flush, a Close, a second Sync, a Query...: not one unit
    }
  }
  if (bind === null || executes !== 1 || types === null) return null;
  return { named: known, parse, textStart, textEnd, types, shape, bind, bindTail, namedParse, rowLimit };
}

/** The statement text a unit runs. */
export function unitText(u: StatementUnit): string {
  return u.named !== null ? u.named.query : u.parse!.buf.toString('utf8', u.textStart, u.textEnd);
}

/**
 * The unit `held` when the query cache may answer it, else null: one statement run once
 * (oneStatementUnit) whose Parse, if any, is unnamed, with no row limit (PortalSuspended
 * leaves the portal open: not one answer) and no parameter value that may mean the current
 * time (volatileParameter). Names are left out of the key (two clients' "S_1" may be
 * different statements, and one statement may be "S_1" and "S_3"): the statement is keyed by
 * its text and types instead, and portal names that disagree never get this far.
 *
 * Why a named Parse is refused: a hit would have to define the statement without PostgreSQL
 * answering (an existing name must fail), and drivers send it once per statement anyway.
 */
export function cacheableUnit(held: readonly HeldMessage[], statementOf: (name: string) => KnownStatement | undefined): CacheableUnit | null {
  const u = oneStatementUnit(held, statementOf);
  if (u === null || u.namedParse || u.rowLimit) return null;
  const { buf, end } = u.bind;
  if (volatileParameters(buf, u.bindTail, end)) return null;
  // Lengths first: the parameter types' bytes cannot run into the Bind's.
  const digest = createHash('sha1')
    .update(`${u.types.length}:${end - u.bindTail}:`)
    .update(u.types)
    .update(buf.subarray(u.bindTail, end))
    .digest('base64');
  return { sql: unitText(u), unit: `${u.shape}:${digest}` };
}

/** No Parse in the unit: the statement must be one of the client's named ones (an unnamed one
 *  from an earlier request lived on another backend, or nowhere). */
function named(statementOf: (name: string) => KnownStatement | undefined, name: string): KnownStatement | undefined {
  return name === '' ? undefined : statementOf(name);
}

function cstrEnd(buf: Buffer, pos: number, end: number): number {
  const nul = buf.indexOf(NUL, pos);
  return nul < 0 || nul >= end ? -1 : nul;
}

/**
 * Walks a Bind's parameter part (formats, then values) and says whether a value may mean
 * the current time. A malformed one is refused too (PostgreSQL will say why).
 */
function volatileParameters(buf: Buffer, pos: number, end: number): boolean {
  if (pos + 2 > end) return true;
  const formats = buf.readInt16BE(pos);
  pos += 2 + 2 * formats;
  if (formats < 0 || pos + 2 > end) return true;
  const count = buf.readInt16BE(pos);
  pos += 2;
  if (count < 0) return true;
  for (let i = 0; i < count; i++) {
    if (pos + 4 > end) return true;
    const len = buf.readInt32BE(pos);
    pos += 4;
    if (len < 0) continue; // NULL
    if (pos + len > end || volatileParameter(buf, pos, pos + len)) return true;
    pos += len;
  }
  return false;
}
