// A tiny raw-socket PostgreSQL v3 client for tests: sends hand-made (and malformed) bytes
// and reads the server's messages back one by one. No protocol smarts beyond framing;
// tests decide what is right.

import net from 'node:net';

export const PROTOCOL_3_0 = 3 << 16;
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/** One backend message: its type letter and body (without type byte and length). */
export interface PgMessage {
  type: string;
  body: Buffer;
}

export interface PgErrorFields {
  severity?: string;
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
  /** Every field by its one-letter code. */
  fields: Record<string, string>;
}

// ---- builders -----------------------------------------------------------------------

function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
}

/** A typed message: type byte, int32 length (incl. itself), body. */
export function typedMessage(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const hdr = Buffer.alloc(5);
  hdr[0] = type.charCodeAt(0);
  hdr.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([hdr, body]);
}

/** Untyped startup-phase packet: int32 length, int32 code, payload. */
export function untypedPacket(code: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const hdr = Buffer.alloc(8);
  hdr.writeInt32BE(8 + payload.length, 0);
  hdr.writeInt32BE(code, 4);
  return Buffer.concat([hdr, payload]);
}

/** StartupMessage with the given params; `version` defaults to 3.0 (major << 16 | minor). */
export function startupPacket(params: Record<string, string>, version = PROTOCOL_3_0): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v));
  parts.push(Buffer.from([0]));
  return untypedPacket(version, Buffer.concat(parts));
}

export function sslRequest(): Buffer {
  return untypedPacket(SSL_REQUEST_CODE);
}

export function gssEncRequest(): Buffer {
  return untypedPacket(GSSENC_REQUEST_CODE);
}

export function cancelRequestPacket(pid: number, secret: number): Buffer {
  const payload = Buffer.alloc(8);
  payload.writeInt32BE(pid | 0, 0);
  payload.writeInt32BE(secret | 0, 4);
  return untypedPacket(CANCEL_REQUEST_CODE, payload);
}

export function queryMsg(sql: string): Buffer {
  return typedMessage('Q', cstr(sql));
}

export function passwordMsg(password: string): Buffer {
  return typedMessage('p', cstr(password));
}

export function parseMsg(name: string, sql: string, paramTypes: number[] = []): Buffer {
  const n = Buffer.alloc(2 + 4 * paramTypes.length);
  n.writeInt16BE(paramTypes.length, 0);
  paramTypes.forEach((t, i) => n.writeInt32BE(t, 2 + 4 * i));
  return typedMessage('P', Buffer.concat([cstr(name), cstr(sql), n]));
}

/**
 * Bind (null = SQL NULL); text parameters and results unless `formats` says otherwise
 * (format codes as the protocol sends them: none = all text, one = for all, else one each).
 */
export function bindMsg(portal: string, stmt: string, params: Array<string | Buffer | null> = [], formats: { params?: number[]; results?: number[] } = {}): Buffer {
  const parts: Buffer[] = [cstr(portal), cstr(stmt)];
  const i16 = (v: number) => {
    const b = Buffer.alloc(2);
    b.writeInt16BE(v, 0);
    return b;
  };
  const i32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v, 0);
    return b;
  };
  const codes = (list: number[] = []) => [i16(list.length), ...list.map(i16)];
  parts.push(...codes(formats.params));
  parts.push(i16(params.length));
  for (const p of params) {
    if (p === null) parts.push(i32(-1));
    else {
      const v = typeof p === 'string' ? Buffer.from(p, 'utf8') : p;
      parts.push(i32(v.length), v);
    }
  }
  parts.push(...codes(formats.results));
  return typedMessage('B', Buffer.concat(parts));
}

export function describeMsg(kind: 'S' | 'P', name: string): Buffer {
  return typedMessage('D', Buffer.concat([Buffer.from(kind), cstr(name)]));
}

export function executeMsg(portal = '', maxRows = 0): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(maxRows, 0);
  return typedMessage('E', Buffer.concat([cstr(portal), b]));
}

export function syncMsg(): Buffer {
  return typedMessage('S');
}

export function flushMsg(): Buffer {
  return typedMessage('H');
}

export function terminateMsg(): Buffer {
  return typedMessage('X');
}

// ---- decoders -----------------------------------------------------------------------

/** ErrorResponse / NoticeResponse body -> fields. */
export function parseErrorFields(body: Buffer): PgErrorFields {
  const fields: Record<string, string> = {};
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const code = String.fromCharCode(body[pos]!);
    const nul = body.indexOf(0, pos + 1);
    if (nul < 0) break;
    fields[code] = body.toString('utf8', pos + 1, nul);
    pos = nul + 1;
  }
  return { severity: fields.V ?? fields.S, code: fields.C, message: fields.M, detail: fields.D, hint: fields.H, fields };
}

/** ParameterStatus body -> [name, value]. */
export function parseParameterStatus(body: Buffer): [string, string] {
  const nul = body.indexOf(0);
  return [body.toString('utf8', 0, nul), body.toString('utf8', nul + 1, body.indexOf(0, nul + 1))];
}

/** DataRow body -> text values (null for SQL NULL). */
export function parseDataRow(body: Buffer): Array<string | null> {
  const n = body.readInt16BE(0);
  const out: Array<string | null> = [];
  let pos = 2;
  for (let i = 0; i < n; i++) {
    const len = body.readInt32BE(pos);
    pos += 4;
    if (len < 0) out.push(null);
    else {
      out.push(body.toString('utf8', pos, pos + len));
      pos += len;
    }
  }
  return out;
}

// ---- the client ---------------------------------------------------------------------

export class RawClient {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  /** From BackendKeyData after login. */
  pid = 0;
  secret = 0;
  /** ParameterStatus values seen so far. */
  readonly params = new Map<string, string>();
  private closedPromise: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.wake();
    });
    this.closedPromise = new Promise((resolve) => {
      socket.on('close', () => {
        this.closed = true;
        this.wake();
        resolve();
      });
    });
    socket.on('error', () => {
      /* a reset by the server is a normal outcome in these tests; 'close' follows */
    });
  }

  /** `localAddress`: the source address (any 127/8 address reaches loopback on Linux). */
  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port, localAddress });
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawClient(s));
      });
      s.once('error', reject);
    });
  }

  /** Connects and logs in (trust, or cleartext password if asked); returns after ReadyForQuery. */
  static async login(port: number, params: Record<string, string> = {}, opts: { password?: string } = {}): Promise<RawClient> {
    const c = await RawClient.connect(port);
    const msgs = await c.startup({ user: 'postgres', database: 'app', ...params }, opts);
    const err = msgs.find((m) => m.type === 'E');
    if (err) {
      c.destroy();
      const f = parseErrorFields(err.body);
      throw Object.assign(new Error(`login failed: ${f.code} ${f.message}`), { fields: f });
    }
    return c;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }

  private waitData(deadline: number): Promise<boolean> {
    return new Promise((resolve) => {
      const ms = deadline - Date.now();
      if (ms <= 0) return resolve(false);
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((f) => f !== fn);
        resolve(false);
      }, ms);
      const fn = () => {
        clearTimeout(t);
        resolve(true);
      };
      this.waiters.push(fn);
    });
  }

  send(data: Buffer | string): void {
    this.socket.write(data);
  }

  /** Number of bytes received and not yet read. */
  get buffered(): number {
    return this.buf.length;
  }

  /** Reads exactly n raw bytes (e.g. the 'N' answer to SSLRequest). */
  async readBytes(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed while waiting for ${n} bytes (have ${this.buf.length})`);
      if (!(await this.waitData(deadline))) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /**
   * Reads the next typed message. Resolves null if the connection closed cleanly at a
   * message boundary; throws on timeout.
   */
  async read(timeoutMs = 5000): Promise<PgMessage | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (this.buf.length >= 1 + len) {
          const type = String.fromCharCode(this.buf[0]!);
          const body = this.buf.subarray(5, 1 + len);
          this.buf = this.buf.subarray(1 + len);
          return { type, body };
        }
      }
      if (this.closed) {
        if (this.buf.length === 0) return null;
        throw new Error(`connection closed inside a message (${this.buf.length} bytes left)`);
      }
      if (!(await this.waitData(deadline))) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for a message (${this.buf.length} bytes buffered)`);
      }
    }
  }

  /** Reads messages until one of type `type` (inclusive). */
  async readUntil(type: string, timeoutMs = 5000): Promise<PgMessage[]> {
    const deadline = Date.now() + timeoutMs;
    const out: PgMessage[] = [];
    for (;;) {
      const m = await this.read(Math.max(1, deadline - Date.now()));
      if (m === null) throw new Error(`connection closed before a "${type}" message; got ${out.map((x) => x.type).join('')}`);
      out.push(m);
      this.note(m);
      if (m.type === type) return out;
    }
  }

  /** Reads everything until the server closes; returns the messages. */
  async readAll(timeoutMs = 5000): Promise<PgMessage[]> {
    const deadline = Date.now() + timeoutMs;
    const out: PgMessage[] = [];
    for (;;) {
      const m = await this.read(Math.max(1, deadline - Date.now()));
      if (m === null) return out;
      this.note(m);
      out.push(m);
    }
  }

  private note(m: PgMessage): void {
    if (m.type === 'K') {
      this.pid = m.body.readInt32BE(0);
      this.secret = m.body.readInt32BE(4);
    } else if (m.type === 'S') {
      const [k, v] = parseParameterStatus(m.body);
      this.params.set(k, v);
    }
  }

  /**
   * Sends a startup packet and reads until ReadyForQuery or an ErrorResponse. Answers a
   * cleartext password request with opts.password. Returns all messages read.
   */
  async startup(params: Record<string, string>, opts: { password?: string; version?: number; timeoutMs?: number } = {}): Promise<PgMessage[]> {
    this.send(startupPacket(params, opts.version));
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    const out: PgMessage[] = [];
    for (;;) {
      const m = await this.read(Math.max(1, deadline - Date.now()));
      if (m === null) return out;
      out.push(m);
      this.note(m);
      if (m.type === 'R') {
        const code = m.body.readInt32BE(0);
        if (code === 3) {
          if (opts.password === undefined) throw new Error('server asked for a password and none was given');
          this.send(passwordMsg(opts.password));
        } else if (code !== 0) {
          throw new Error(`RawClient cannot do authentication request ${code}`);
        }
      }
      if (m.type === 'Z' || m.type === 'E') return out;
    }
  }

  /** Simple query: sends Q, returns every message up to and including ReadyForQuery. */
  async query(sql: string, timeoutMs = 10_000): Promise<PgMessage[]> {
    this.send(queryMsg(sql));
    return this.readUntil('Z', timeoutMs);
  }

  /** Resolves true once the server has closed the connection, false after timeoutMs. */
  async waitClosed(timeoutMs = 3000): Promise<boolean> {
    if (this.closed) return true;
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closedPromise.then(() => true),
      new Promise<boolean>((resolve) => (t = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(t);
    return r;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Sends Terminate and closes. */
  end(): void {
    if (!this.closed && this.socket.writable) this.socket.end(terminateMsg());
    else this.socket.destroy();
  }
}

/** The first ErrorResponse among `msgs`, parsed; undefined if none. */
export function firstError(msgs: PgMessage[]): PgErrorFields | undefined {
  const e = msgs.find((m) => m.type === 'E');
  return e ? parseErrorFields(e.body) : undefined;
}

/** DataRow values of every row among `msgs`. */
export function rows(msgs: PgMessage[]): Array<Array<string | null>> {
  return msgs.filter((m) => m.type === 'D').map((m) => parseDataRow(m.body));
}

/** Sends a CancelRequest on a fresh connection and waits for the server to close it. */
export async function sendCancel(port: number, pid: number, secret: number): Promise<void> {
  const c = await RawClient.connect(port);
  c.send(cancelRequestPacket(pid, secret));
  await c.waitClosed(3000);
  c.destroy();
}
