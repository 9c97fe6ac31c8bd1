// Protocol-level named prepared statements under transaction pooling.
//
// A client's statement names mean nothing to the backend it happens to get, so pgmux keeps
// each client's statements (client name -> query text and parameter types) and gives each
// distinct (text, types) one proxy name, shared by every client that prepares the same
// thing. Messages naming a statement are rewritten to the proxy name; when a backend lacks
// the statement, its Parse is put in front, and that Parse's ParseComplete is hidden from
// the client (see ResponseQueue in src/pool/backend.ts). Unnamed statements and portals
// are forwarded untouched.

import { FrontendMsg } from '../protocol/messages.js';

export interface ClientStatement {
  /** (query text, parameter types): the identity shared between clients. */
  readonly key: string;
  /** Proxy-chosen name used on every backend (changes when the statement goes stale). */
  proxyName: string;
  /** A Parse message for `proxyName`, ready to put in front of a Bind/Describe. */
  parse: Buffer;
  readonly query: string;
  readonly rest: Buffer;
}

/** One per process: (query text, parameter types) -> proxy name. */
export class StatementNames {
  private readonly byKey = new Map<string, string>();
  private next = 1;

  nameFor(key: string): string {
    let n = this.byKey.get(key);
    if (n === undefined) {
      n = `pgmux_${(this.next++).toString(36)}`;
      this.byKey.set(key, n);
    }
    return n;
  }

  /** The name now in use for `key` (differs from an old one after invalidate). */
  current(key: string): string | undefined {
    return this.byKey.get(key);
  }

  /**
   * The statement behind `proxyName` is stale everywhere (its result type changed under
   * DDL): the next use of its key gets a fresh name, so every backend prepares it anew.
   */
  invalidate(key: string, proxyName: string): void {
    if (this.byKey.get(key) === proxyName) this.byKey.delete(key);
  }

  get size(): number {
    return this.byKey.size;
  }
}

/** PostgreSQL's error for a prepared statement whose result columns changed under DDL. */
export function isStalePlanError(fields: Map<string, string>): boolean {
  return fields.get('C') === '0A000' && /cached plan must not change result type/.test(fields.get('M') ?? '');
}

/** A name no statement ever has: closing it is a harmless no-op (CloseComplete). */
export const NO_SUCH_STATEMENT = 'pgmux_none';

function cstrEnd(buf: Buffer, pos: number, end: number): number {
  const nul = buf.indexOf(0, pos);
  return nul < 0 || nul >= end ? -1 : nul;
}

function typed(type: number, parts: Array<Buffer | string>): Buffer {
  let len = 4;
  const bufs = parts.map((p) => (typeof p === 'string' ? Buffer.from(p + '\0') : p));
  for (const b of bufs) len += b.length;
  const out = Buffer.allocUnsafe(1 + len);
  out[0] = type;
  out.writeInt32BE(len, 1);
  let pos = 5;
  for (const b of bufs) pos += b.copy(out, pos);
  return out;
}

export interface ParsedParse {
  name: string;
  query: string;
  /** Bytes after the query string: parameter type count and OIDs. */
  rest: Buffer;
}

/** Parse body: name\0 query\0 int16 n, n x int32. Null when malformed. */
export function parseParse(buf: Buffer, start: number, end: number): ParsedParse | null {
  const body = start + 5;
  const n1 = cstrEnd(buf, body, end);
  if (n1 < 0) return null;
  const n2 = cstrEnd(buf, n1 + 1, end);
  if (n2 < 0) return null;
  return { name: buf.toString('utf8', body, n1), query: buf.toString('utf8', n1 + 1, n2), rest: buf.subarray(n2 + 1, end) };
}

export function buildParse(name: string, query: string, rest: Buffer): Buffer {
  return typed(FrontendMsg.Parse, [name, query, Buffer.from(rest)]);
}

export function statementKey(query: string, rest: Buffer): string {
  return rest.length <= 2 ? query + '\0' : query + '\0' + rest.toString('hex');
}

/** Name of the statement a Bind uses (after the portal name), with its position. */
export function bindStatement(buf: Buffer, start: number, end: number): { name: string; nameStart: number; nameEnd: number } | null {
  const p = cstrEnd(buf, start + 5, end);
  if (p < 0) return null;
  const s = cstrEnd(buf, p + 1, end);
  if (s < 0) return null;
  return { name: buf.toString('utf8', p + 1, s), nameStart: p + 1, nameEnd: s };
}

/** Replaces buf[nameStart..nameEnd) (a name inside a message) with `name`. */
export function renameIn(type: number, buf: Buffer, start: number, end: number, nameStart: number, nameEnd: number, name: string): Buffer {
  return typed(type, [buf.subarray(start + 5, nameStart), Buffer.from(name), buf.subarray(nameEnd, end)]);
}

/** Describe/Close: kind byte ('S' statement / 'P' portal) and the name. */
export function targetOf(buf: Buffer, start: number, end: number): { kind: number; name: string; nameStart: number; nameEnd: number } | null {
  const kind = buf[start + 5];
  if (kind === undefined) return null;
  const e = cstrEnd(buf, start + 6, end);
  if (e < 0) return null;
  return { kind, name: buf.toString('utf8', start + 6, e), nameStart: start + 6, nameEnd: e };
}

export function closeStatement(name: string): Buffer {
  return typed(FrontendMsg.Close, ['S' + name]);
}
