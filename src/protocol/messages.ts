// Builders and decoders for the few PostgreSQL v3 messages pgmux creates or must read.
// Everything that is only forwarded never comes through here.

import type { ErrorSpec } from './errors.js';

// Message type bytes (first byte of a typed message), one enum per direction: the same
// byte means different messages each way ('E' is Execute from a client, ErrorResponse from
// a server; 'S' Sync / ParameterStatus; 'H' Flush / CopyOutResponse).

/** Client -> server (what clients send pgmux, and what pgmux sends a backend). */
export enum FrontendMsg {
  Query = 0x51, // Q
  Parse = 0x50, // P
  Bind = 0x42, // B
  Describe = 0x44, // D
  Execute = 0x45, // E
  Sync = 0x53, // S
  Flush = 0x48, // H
  Close = 0x43, // C
  FunctionCall = 0x46, // F
  CopyData = 0x64, // d
  CopyDone = 0x63, // c
  CopyFail = 0x66, // f
  Terminate = 0x58, // X
  Password = 0x70, // p (also SASLInitialResponse, SASLResponse)
}

/** Server -> client (what backends send pgmux, and what pgmux sends clients). */
export enum BackendMsg {
  Authentication = 0x52, // R
  BackendKeyData = 0x4b, // K
  ParameterStatus = 0x53, // S
  ReadyForQuery = 0x5a, // Z
  ErrorResponse = 0x45, // E
  NoticeResponse = 0x4e, // N
  NotificationResponse = 0x41, // A
  CopyInResponse = 0x47, // G
  CopyOutResponse = 0x48, // H
  CopyBothResponse = 0x57, // W
  NegotiateProtocolVersion = 0x76, // v
}

export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

export enum AuthCode {
  Ok = 0,
  CleartextPassword = 3,
  MD5Password = 5,
  SASL = 10,
  SASLContinue = 11,
  SASLFinal = 12,
}

function typed(type: number, bodyLength: number): { buf: Buffer; pos: number } {
  const buf = Buffer.allocUnsafe(1 + 4 + bodyLength);
  buf[0] = type;
  buf.writeInt32BE(4 + bodyLength, 1);
  return { buf, pos: 5 };
}

function cstrLen(s: string): number {
  return Buffer.byteLength(s) + 1;
}

function writeCstr(buf: Buffer, pos: number, s: string): number {
  pos += buf.write(s, pos);
  buf[pos] = 0;
  return pos + 1;
}

// ---- backend -> client ------------------------------------------------------------

function fieldsMessage(type: number, e: ErrorSpec): Buffer {
  const fields: Array<[string, string]> = [
    ['S', e.severity],
    ['V', e.severity],
    ['C', e.code],
    ['M', e.message],
  ];
  if (e.detail) fields.push(['D', e.detail]);
  if (e.hint) fields.push(['H', e.hint]);
  let len = 1;
  for (const [, v] of fields) len += 1 + cstrLen(v);
  const { buf, pos: start } = typed(type, len);
  let pos = start;
  for (const [k, v] of fields) {
    buf[pos++] = k.charCodeAt(0);
    pos = writeCstr(buf, pos, v);
  }
  buf[pos] = 0;
  return buf;
}

export function errorResponse(e: ErrorSpec): Buffer {
  return fieldsMessage(BackendMsg.ErrorResponse, e);
}

export function noticeResponse(e: { code: string; message: string; detail?: string; hint?: string }): Buffer {
  return fieldsMessage(BackendMsg.NoticeResponse, { severity: 'NOTICE' as never, ...e });
}

const RFQ: Record<string, Buffer> = {};
for (const s of ['I', 'T', 'E']) {
  const { buf } = typed(BackendMsg.ReadyForQuery, 1);
  buf[5] = s.charCodeAt(0);
  RFQ[s] = buf;
}
export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return RFQ[status]!;
}

export function authenticationRequest(code: AuthCode, payload?: Buffer): Buffer {
  const { buf } = typed(BackendMsg.Authentication, 4 + (payload?.length ?? 0));
  buf.writeInt32BE(code, 5);
  if (payload) payload.copy(buf, 9);
  return buf;
}

export function authenticationSASL(mechanisms: string[]): Buffer {
  let len = 1;
  for (const m of mechanisms) len += cstrLen(m);
  const payload = Buffer.alloc(len);
  let pos = 0;
  for (const m of mechanisms) pos = writeCstr(payload, pos, m);
  return authenticationRequest(AuthCode.SASL, payload);
}

export function parameterStatus(name: string, value: string): Buffer {
  const { buf, pos } = typed(BackendMsg.ParameterStatus, cstrLen(name) + cstrLen(value));
  writeCstr(buf, writeCstr(buf, pos, name), value);
  return buf;
}

export function backendKeyData(pid: number, secret: number): Buffer {
  const { buf } = typed(BackendMsg.BackendKeyData, 8);
  buf.writeInt32BE(pid | 0, 5);
  buf.writeInt32BE(secret | 0, 9);
  return buf;
}

export function negotiateProtocolVersion(newestMinor: number, unrecognized: string[]): Buffer {
  let len = 8;
  for (const o of unrecognized) len += cstrLen(o);
  const { buf, pos: start } = typed(BackendMsg.NegotiateProtocolVersion, len);
  buf.writeInt32BE(newestMinor, start);
  buf.writeInt32BE(unrecognized.length, start + 4);
  let pos = start + 8;
  for (const o of unrecognized) pos = writeCstr(buf, pos, o);
  return buf;
}

// ---- client -> backend (pgmux acting as a client) ---------------------------------

export function startupMessage(params: Record<string, string>): Buffer {
  let len = 4 + 4 + 1;
  for (const [k, v] of Object.entries(params)) len += cstrLen(k) + cstrLen(v);
  const buf = Buffer.alloc(len);
  buf.writeInt32BE(len, 0);
  buf.writeInt32BE(PROTOCOL_3_0, 4);
  let pos = 8;
  for (const [k, v] of Object.entries(params)) pos = writeCstr(buf, writeCstr(buf, pos, k), v);
  buf[pos] = 0;
  return buf;
}

export function cancelRequest(pid: number, secret: number): Buffer {
  const buf = Buffer.alloc(16);
  buf.writeInt32BE(16, 0);
  buf.writeInt32BE(CANCEL_REQUEST_CODE, 4);
  buf.writeInt32BE(pid | 0, 8);
  buf.writeInt32BE(secret | 0, 12);
  return buf;
}

export function passwordMessage(password: string): Buffer {
  const { buf, pos } = typed(FrontendMsg.Password, cstrLen(password));
  writeCstr(buf, pos, password);
  return buf;
}

export function saslInitialResponse(mechanism: string, data: string): Buffer {
  const dataLen = Buffer.byteLength(data);
  const { buf, pos: start } = typed(FrontendMsg.Password, cstrLen(mechanism) + 4 + dataLen);
  let pos = writeCstr(buf, start, mechanism);
  buf.writeInt32BE(dataLen, pos);
  buf.write(data, pos + 4);
  return buf;
}

export function saslResponse(data: string): Buffer {
  const { buf, pos } = typed(FrontendMsg.Password, Buffer.byteLength(data));
  buf.write(data, pos);
  return buf;
}

export function queryMessage(sql: string): Buffer {
  const { buf, pos } = typed(FrontendMsg.Query, cstrLen(sql));
  writeCstr(buf, pos, sql);
  return buf;
}

export const TERMINATE = Buffer.from([FrontendMsg.Terminate, 0, 0, 0, 4]);

// ---- decoders ---------------------------------------------------------------------

/** Reads a NUL-terminated string at `pos`; returns [value, positionAfterNul] or null. */
export function readCstr(buf: Buffer, pos: number, end: number): [string, number] | null {
  const nul = buf.indexOf(0, pos);
  if (nul < 0 || nul >= end) return null;
  return [buf.toString('utf8', pos, nul), nul + 1];
}

/** ErrorResponse / NoticeResponse body -> field code -> value. */
export function parseFields(buf: Buffer, start: number, end: number): Map<string, string> {
  const out = new Map<string, string>();
  let pos = start;
  while (pos < end && buf[pos] !== 0) {
    const code = String.fromCharCode(buf[pos]!);
    const s = readCstr(buf, pos + 1, end);
    if (!s) break;
    out.set(code, s[0]);
    pos = s[1];
  }
  return out;
}

/** Startup packet key/value list (after the 8-byte header). Null when malformed. */
export function parseStartupParams(buf: Buffer, start: number, end: number): Map<string, string> | null {
  const out = new Map<string, string>();
  let pos = start;
  for (;;) {
    if (pos >= end) return null;
    if (buf[pos] === 0) return pos + 1 === end ? out : null;
    const k = readCstr(buf, pos, end);
    if (!k) return null;
    const v = readCstr(buf, k[1], end);
    if (!v) return null;
    out.set(k[0], v[0]);
    pos = v[1];
  }
}

/** Quotes a string as a standard-conforming SQL literal. */
export function sqlLiteral(s: string): string {
  return "'" + s.replace(/'/g, "''") + "'";
}
