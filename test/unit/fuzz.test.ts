// Property-based fuzzing of the code that reads untrusted bytes:
//   (a) FrameReader on arbitrary byte streams cut anywhere, against a reference framer;
//   (b) BackendScanner on valid backend streams cut anywhere, some messages hidden;
//   (c) a real ClientSession's startup / TLS-negotiation / authentication state machine,
//       driven by random, truncated and reordered client messages over a fake socket.
//
// FUZZ_RUNS (default 10000) sets the cases per target; FUZZ_SEED replays a run:
//   FUZZ_RUNS=1000000 npx vitest run test/unit/fuzz.test.ts
//   FUZZ_SEED=123456 FUZZ_RUNS=10000 npx vitest run test/unit/fuzz.test.ts
// A failure prints its seed and path (fast-check's own replay instructions).

import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { FrameError, FrameReader } from '../../src/protocol/framer.js';
import { BackendScanner, type ScanSink } from '../../src/protocol/backendScanner.js';
import {
  CANCEL_REQUEST_CODE,
  errorResponse,
  GSSENC_REQUEST_CODE,
  parameterStatus,
  passwordMessage,
  queryMessage,
  readyForQuery,
  saslInitialResponse,
  saslResponse,
  SSL_REQUEST_CODE,
} from '../../src/protocol/messages.js';
import { ClientSession, ClientState } from '../../src/session/clientSession.js';
import type { SessionContext } from '../../src/session/sessionContext.js';
import type { Config } from '../../src/config/types.js';
import { DEFAULTS } from '../../src/config/load.js';
import { ConnectionLimits } from '../../src/server/limits.js';
import { hbaRulesFor, matchHba } from '../../src/auth/hba.js';
import { StatementNames } from '../../src/session/preparedStatements.js';
import type { AuthEntry } from '../../src/auth/authFile.js';
import { md5Response, md5Secret } from '../../src/auth/md5.js';
import { formatScramVerifier, makeScramVerifier, ScramClientSession } from '../../src/auth/scram.js';
import { TrafficStats } from '../../src/observability/trafficStats.js';

const RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 10_000));
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined;
const PARAMS = { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}) };
/** Generous per-target budget that still scales with FUZZ_RUNS. */
const TIMEOUT_MS = 60_000 + RUNS * 10;

/** Cuts `stream` at the given positions (any order, duplicates and out-of-range allowed). */
function cut(stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, stream.length]) {
    if (p > prev) out.push(Buffer.from(stream.subarray(prev, p))); // a copy, as a socket read would be
    prev = p;
  }
  return out;
}

/** A cheap assertion for hot loops (expect() is slow at 10^5 calls per test). */
function check(cond: boolean, what: string, detail?: () => unknown): void {
  if (!cond) throw new Error(`${what}${detail ? `: ${JSON.stringify(detail())}` : ''}`);
}

function sameBuffers(a: Buffer[], b: Buffer[]): boolean {
  return a.length === b.length && a.every((x, i) => x.equals(b[i]!));
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n | 0, 0);
  return b;
}

// ---- (a) FrameReader --------------------------------------------------------------------

interface FrameModel {
  msgs: Buffer[];
  error: FrameError;
  errorLength: number;
  rest: number;
}

/** What a correct framer returns for the whole stream at once. */
function frameModel(stream: Buffer, max: number, untyped: number): FrameModel {
  const msgs: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const typed = msgs.length >= untyped;
    const hdr = typed ? 5 : 4;
    if (stream.length - pos < hdr) break;
    const len = stream.readInt32BE(pos + (typed ? 1 : 0));
    if (len < 4 || (!typed && len < 8)) return { msgs, error: FrameError.BadLength, errorLength: len, rest: 0 };
    if (len > max) return { msgs, error: FrameError.TooLarge, errorLength: len, rest: 0 };
    const total = (typed ? 1 : 0) + len;
    if (stream.length - pos < total) break;
    msgs.push(stream.subarray(pos, pos + total));
    pos += total;
  }
  return { msgs, error: FrameError.None, errorLength: 0, rest: stream.length - pos };
}

const frameSegment = fc.oneof(
  // A well-formed typed message.
  fc.record({ t: fc.integer({ min: 0, max: 255 }), body: fc.uint8Array({ maxLength: 80 }) }).map(({ t, body }) => Buffer.concat([Buffer.from([t]), int32(4 + body.length), body])),
  // A well-formed untyped (startup-phase) packet.
  fc.uint8Array({ minLength: 4, maxLength: 80 }).map((body) => Buffer.concat([int32(4 + body.length), body])),
  // A length field of any value (negative, < 4, huge, exact).
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }).map(int32),
  fc.constantFrom(int32(0), int32(3), int32(4), int32(7), int32(8), int32(2 ** 31 - 1), int32(-1)),
  // Raw noise.
  fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b)),
);

describe('fuzz: FrameReader', () => {
  it(`framed like the reference, never past the buffer, errors only BadLength/TooLarge (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.array(frameSegment, { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.integer({ min: 8, max: 200 }),
        fc.integer({ min: 0, max: 3 }),
        (segments, cuts, max, untyped) => {
          const stream = Buffer.concat(segments);
          const want = frameModel(stream, max, untyped);
          const r = new FrameReader(max, untyped === 0);
          const got: Buffer[] = [];
          for (const chunk of cut(stream, cuts)) {
            r.push(chunk);
            while (r.next()) {
              const typed = got.length >= untyped;
              const hdr = typed ? 5 : 4;
              // The message lies inside the buffer it points into, header and length consistent.
              check(r.msgStart >= 0 && r.end <= r.msg.length, 'message outside its buffer', () => [r.msgStart, r.end, r.msg.length]);
              check(r.bodyStart === r.msgStart + hdr, 'body start');
              const len = r.msg.readInt32BE(r.msgStart + (typed ? 1 : 0));
              check(r.end - r.msgStart === len + (typed ? 1 : 0), 'length');
              check(r.type === (typed ? r.msg[r.msgStart] : 0), 'type');
              got.push(r.msg.subarray(r.msgStart, r.end));
              if (got.length === untyped) r.setTyped(true);
            }
            check(r.error === FrameError.None || r.error === FrameError.BadLength || r.error === FrameError.TooLarge, 'error kind');
          }
          check(sameBuffers(got, want.msgs), 'messages differ from the reference framer', () => [got.map((b) => b.toString('hex')), want.msgs.map((b) => b.toString('hex'))]);
          check(r.error === want.error, 'error', () => [r.error, want.error]);
          if (want.error !== FrameError.None) {
            check(r.errorLength === want.errorLength, 'errorLength');
            check(!r.next(), 'an error is final');
          } else {
            check(r.pending === want.rest, 'pending', () => [r.pending, want.rest]);
          }
        },
      ),
      PARAMS,
    );
  }, TIMEOUT_MS);

  it(`pure random bytes never make it throw (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(), { maxLength: 8 }), fc.boolean(), (bytes, cuts, typed) => {
        const stream = Buffer.from(bytes);
        const r = new FrameReader(1 << 16, typed);
        let n = 0;
        for (const chunk of cut(stream, cuts)) {
          r.push(chunk);
          while (r.next()) n++;
        }
        check(n === frameModel(stream, 1 << 16, typed ? 0 : Infinity).msgs.length, 'message count');
      }),
      PARAMS,
    );
  }, TIMEOUT_MS);
});

// ---- (b) BackendScanner ---------------------------------------------------------------------

interface GenMsg {
  bytes: Buffer;
  type: number;
}

function typedMsg(type: string | number, body: Buffer): Buffer {
  const t = typeof type === 'string' ? type.charCodeAt(0) : type;
  return Buffer.concat([Buffer.from([t]), int32(4 + body.length), body]);
}

/** A valid DataRow body: int16 column count, then int32 length (-1 = NULL) and bytes per column. */
function dataRowBody(cols: Array<Uint8Array | null>): Buffer {
  const n = Buffer.alloc(2);
  n.writeInt16BE(cols.length, 0);
  return Buffer.concat([n, ...cols.flatMap((c) => (c === null ? [int32(-1)] : [int32(c.length), Buffer.from(c)]))]);
}

const backendMsg: fc.Arbitrary<GenMsg> = fc
  .oneof(
    fc.constantFrom('I', 'T', 'E').map((s) => readyForQuery(s as 'I' | 'T' | 'E')),
    fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 40 })).map(([k, v]) => parameterStatus(k.replace(/\0/g, ''), v.replace(/\0/g, ''))),
    fc
      .tuple(fc.constantFrom('ERROR', 'FATAL'), fc.stringMatching(/^[0-9A-Z]{5}$/), fc.string({ maxLength: 60 }))
      .map(([sev, code, msg]) => errorResponse({ severity: sev as 'ERROR', code, message: msg.replace(/\0/g, '') })),
    fc.array(fc.option(fc.uint8Array({ maxLength: 40 }), { freq: 5 }), { maxLength: 6 }).map((cols) => typedMsg('D', dataRowBody(cols))),
    fc.array(fc.uint8Array({ minLength: 300, maxLength: 2000 }), { minLength: 1, maxLength: 3 }).map((cols) => typedMsg('D', dataRowBody(cols))),
    fc.tuple(fc.constantFrom('T', 'C', 'N', 'A', '1', '2', '3', 'n', 's', 'G', 'H', 'd', 'c', 'K', 'R', 't', 'I'), fc.uint8Array({ maxLength: 60 })).map(([t, b]) =>
      typedMsg(t, Buffer.from(b)),
    ),
  )
  .map((bytes) => ({ bytes, type: bytes[0]! }));

class FuzzSink implements ScanSink {
  out: Buffer[] = [];
  events: string[] = [];
  rows = 0;
  emptyForwards = 0;
  private i = 0;
  constructor(private readonly hide: boolean[]) {}
  forward(buf: Buffer, start: number, end: number): void {
    if (end <= start) this.emptyForwards++;
    this.out.push(buf.subarray(start, end)); // chunks are fresh copies: views stay valid
  }
  hiding(): boolean {
    return this.hide[this.i++] ?? false;
  }
  get starts(): number {
    return this.i;
  }
  onReadyForQuery(status: number, hidden: boolean): void {
    this.events.push(`Z${String.fromCharCode(status)}${hidden ? 'h' : ''}`);
  }
  onParameterStatus(name: string, value: string, hidden: boolean): void {
    this.events.push(`S${name}=${value}${hidden ? 'h' : ''}`);
  }
  onErrorResponse(fields: Map<string, string>, hidden: boolean): void {
    this.events.push(`E${fields.get('C')}${hidden ? 'h' : ''}`);
  }
  onHiddenDataRow(): void {
    this.rows++;
  }
}

function expectedEvent(m: GenMsg, hidden: boolean): string | null {
  const h = hidden ? 'h' : '';
  const body = m.bytes.subarray(5);
  switch (String.fromCharCode(m.type)) {
    case 'Z':
      return `Z${String.fromCharCode(body[0]!)}${h}`;
    case 'S': {
      const nul = body.indexOf(0);
      return `S${body.toString('utf8', 0, nul)}=${body.toString('utf8', nul + 1, body.length - 1)}${h}`;
    }
    case 'E': {
      const c = /(?:^|\0)C([^\0]*)\0/.exec(body.toString('latin1'));
      return `E${c ? c[1] : undefined}${h}`;
    }
    default:
      return null;
  }
}

describe('fuzz: BackendScanner', () => {
  it(`forwards exactly the visible messages' bytes wherever the stream is cut (${RUNS} cases)`, () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(backendMsg, fc.boolean()), { maxLength: 14 }),
        fc.array(fc.nat(), { maxLength: 16 }),
        fc.boolean(),
        (msgs, cuts, captureRows) => {
          const hide = msgs.map(([, h]) => h);
          const sink = new FuzzSink(hide);
          const scanner = new BackendScanner(sink);
          scanner.captureRows = captureRows;
          const stream = Buffer.concat(msgs.map(([m]) => m.bytes));
          for (const chunk of cut(stream, cuts)) scanner.scan(chunk);
          check(Buffer.concat(sink.out).equals(Buffer.concat(msgs.filter(([, h]) => !h).map(([m]) => m.bytes))), 'forwarded bytes differ from the visible messages');
          check(sink.emptyForwards === 0, 'empty forward');
          check(sink.starts === msgs.length, 'one hiding() per message', () => [sink.starts, msgs.length]);
          check(scanner.atBoundary, 'ends at a message boundary');
          const events = msgs.map(([m, h]) => expectedEvent(m, h)).filter((e) => e !== null);
          check(sink.events.length === events.length && sink.events.every((e, i) => e === events[i]), 'events', () => [sink.events, events]);
          const hiddenRows = msgs.filter(([m, h]) => h && m.type === 0x44).length;
          check(sink.rows === (captureRows ? hiddenRows : 0), 'hidden DataRows', () => [sink.rows, hiddenRows, captureRows]);
        },
      ),
      PARAMS,
    );
  }, TIMEOUT_MS);
});

// ---- (c) ClientSession startup and authentication ------------------------------------------

/** Enough of net.Socket for a ClientSession; 'data' respects pause() like a real socket. */
class FakeSocket extends EventEmitter {
  readonly writes: Buffer[] = [];
  writesAfterEnd = 0;
  ended = false;
  destroyed = false;
  paused = false;
  remoteAddress = '127.0.0.1';
  remotePort = 40000;
  private queue: Buffer[] = [];

  setNoDelay(): this {
    return this;
  }
  cork(): void {}
  uncork(): void {}
  write(data: Buffer | string): boolean {
    if (this.ended || this.destroyed) {
      this.writesAfterEnd++;
      return false;
    }
    this.writes.push(Buffer.from(data));
    return true;
  }
  end(data?: Buffer | string): this {
    if (data !== undefined) this.write(data);
    this.ended = true;
    return this;
  }
  destroy(): this {
    this.destroyed = true;
    return this;
  }
  pause(): this {
    this.paused = true;
    return this;
  }
  resume(): this {
    this.paused = false;
    queueMicrotask(() => this.pump());
    return this;
  }
  /** Bytes from the client. */
  feed(chunk: Buffer): void {
    this.queue.push(chunk);
    this.pump();
  }
  private pump(): void {
    while (!this.paused && !this.destroyed && this.queue.length > 0) this.emit('data', this.queue.shift()!);
  }
}

/** pgmux's writes as messages; 1-byte writes are SSLRequest / GSSENCRequest answers. */
function parseServerOutput(writes: Buffer[]): { messages: Array<{ type: string; body: Buffer }>; sslAnswers: string[]; framingErrors: number } {
  const messages: Array<{ type: string; body: Buffer }> = [];
  const sslAnswers: string[] = [];
  let framingErrors = 0;
  for (const w of writes) {
    if (w.length === 1) {
      sslAnswers.push(w.toString('latin1'));
      continue;
    }
    let pos = 0;
    while (pos < w.length) {
      if (w.length - pos < 5) {
        framingErrors++;
        break;
      }
      const len = w.readInt32BE(pos + 1);
      if (len < 4 || pos + 1 + len > w.length) {
        framingErrors++;
        break;
      }
      messages.push({ type: String.fromCharCode(w[pos]!), body: w.subarray(pos + 5, pos + 1 + len) });
      pos += 1 + len;
    }
  }
  return { messages, sslAnswers, framingErrors };
}

function errorFields(body: Buffer): Map<string, string> {
  const f = new Map<string, string>();
  let pos = 0;
  while (pos < body.length && body[pos] !== 0) {
    const nul = body.indexOf(0, pos + 1);
    if (nul < 0) break;
    f.set(String.fromCharCode(body[pos]!), body.toString('utf8', pos + 1, nul));
    pos = nul + 1;
  }
  return f;
}

// A Map: user names such as "valueOf" or "__proto__" must not find Object.prototype.
const PASSWORDS = new Map<string, string>([['alice', 'secret'], ['bob', 'pw'], ['carol', 'scrampw'], ['admin', 'adminpw']]);
const AUTH_ENTRIES = new Map<string, AuthEntry>([
  ['alice', { user: 'alice', secret: 'secret', kind: 'plain' }],
  ['bob', { user: 'bob', secret: md5Secret('bob', 'pw'), kind: 'md5' }],
  // One PBKDF2 iteration keeps thousands of SCRAM logins fast.
  ['carol', { user: 'carol', secret: formatScramVerifier(makeScramVerifier('scrampw', { iterations: 1 })), kind: 'scram' }],
  ['admin', { user: 'admin', secret: 'adminpw', kind: 'plain' }],
]);

const hbaDir = mkdtempSync(join(tmpdir(), 'pgmux-fuzz-'));
afterAll(() => rmSync(hbaDir, { recursive: true, force: true }));
const HBA_FILE = join(hbaDir, 'hba.conf');
writeFileSync(
  HBA_FILE,
  ['host all dave all reject', 'host pgmux all 127.0.0.1/32 password', 'host all carol all scram-sha-256', 'host all bob all md5', 'host sameuser all all trust', 'hostssl all all all trust', 'host app all 127.0.0.1/32 md5'].join('\n') + '\n',
);

/** proxy: the fake socket's 127.0.0.1 is a trusted PROXY protocol sender, or the list names someone else, or it is empty. */
type Variant = { auth: Config['auth']; hba: boolean; maxUser: number; clientTls: 'disable' | 'require'; proxy: 'off' | 'trusted' | 'untrusted' };

function fakeContext(v: Variant): { ctx: SessionContext; tracked: Set<unknown>; registered: Set<unknown> } {
  const cfg: Config = {
    ...DEFAULTS,
    auth: v.auth,
    authFile: '/dev/null',
    hbaFile: v.hba ? HBA_FILE : null,
    maxUserClientConnections: v.maxUser,
    clientTls: v.clientTls,
    adminUsers: ['admin'],
    maxMessageBytes: 4096,
    failoverTimeoutMs: 0,
    proxyProtocolTrusted: v.proxy === 'trusted' ? ['127.0.0.0/8'] : v.proxy === 'untrusted' ? ['10.9.0.0/16'] : [],
  };
  const tracked = new Set<unknown>();
  const registered = new Set<unknown>();
  const unused = (what: string) => () => {
    throw new Error(`fuzz context: ${what} must not be reached without a backend`);
  };
  const ctx = {
    config: () => cfg,
    logger: pino({ level: 'silent' }),
    clock: { now: Date.now() },
    auth: {
      authEntry: (user: string) => AUTH_ENTRIES.get(user),
      learnPassword: () => {},
      learnScramKeys: () => {},
      lookupAuthEntry: async () => undefined,
    },
    registry: {
      track: (c: unknown) => void tracked.add(c),
      untrack: (c: unknown) => void tracked.delete(c),
      register: (c: unknown) => (registered.add(c), true),
      unregister: (c: unknown) => void registered.delete(c),
      cancel: () => {},
      newSecret: () => 0x1234,
      cancelBackend: unused('cancelBackend()'),
    },
    // No node ever answers: logins end at the login-node wait.
    nodes: { loginNode: async () => null },
    pool: unused('pool()'),
    shuttingDown: false,
    limits: new ConnectionLimits(),
    statementNames: new StatementNames(),
    notifications: { unsubscribe: () => {} },
    classify: unused('classify()'),
    countRouted: () => {},
    traffic: new TrafficStats(),
    stats: { bytesIn: 0, bytesOut: 0, clientLogins: 0, clientLoginFailures: 0, proxyHeaderRefusals: 0, readRetries: 0, pipelined: 0 },
    admin: {
      isPaused: () => false,
      park: () => {},
      unpark: () => {},
      loginRefusal: () => null,
      roleOf: (user: string) => (user === 'admin' ? 'admin' : null),
      run: async () => typedMsg('C', Buffer.from('SHOW\0')),
    },
  };
  return { ctx: ctx as unknown as SessionContext, tracked, registered };
}

function startupBytes(version: number, params: Array<[string, string]>): Buffer {
  const parts: Buffer[] = [int32(version)];
  for (const [k, v] of params) parts.push(Buffer.from(`${k}\0${v}\0`));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(4 + body.length), body]);
}

/** One client action. 'answer' is computed from what pgmux asked last (a correct login step). */
type Action =
  | { kind: 'startup'; user: string; database: string; version: number; extra: Array<[string, string]> }
  | { kind: 'ssl' | 'gss' | 'terminate' | 'answer' }
  | { kind: 'cancel'; pid: number; secret: number; short: boolean }
  | { kind: 'password'; text: string }
  | { kind: 'saslInitial'; mech: string; data: string; badLength: boolean }
  | { kind: 'saslResponse'; data: string }
  | { kind: 'query'; sql: string }
  | { kind: 'typed'; type: number; body: Uint8Array }
  | { kind: 'raw'; bytes: Uint8Array };

const nameArb = fc.oneof(fc.constantFrom('alice', 'bob', 'carol', 'admin', 'dave', 'app', '', '__proto__', 'constructor'), fc.string({ maxLength: 12 }));
const actionArb: fc.Arbitrary<{ action: Action; keep: number | null }> = fc.record({
  action: fc.oneof(
    { weight: 5, arbitrary: fc.record({
      kind: fc.constant('startup' as const),
      user: nameArb,
      database: fc.oneof(fc.constantFrom('app', 'pgmux', '', 'alice', 'bob'), fc.string({ maxLength: 8 })),
      version: fc.constantFrom(3 << 16, (3 << 16) | 2, 2 << 16, SSL_REQUEST_CODE, 0, -1),
      extra: fc.array(
        fc.tuple(fc.constantFrom('application_name', 'options', 'replication', 'TimeZone', 'search_path', '_pq_.x', 'client_encoding', 'x'), fc.string({ maxLength: 16 })),
        { maxLength: 3 },
      ),
    }) },
    { weight: 2, arbitrary: fc.constantFrom({ kind: 'ssl' as const }, { kind: 'gss' as const }, { kind: 'terminate' as const }) },
    { weight: 6, arbitrary: fc.constant({ kind: 'answer' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pid: fc.integer(), secret: fc.integer(), short: fc.boolean() }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('password' as const), text: fc.oneof(fc.constantFrom('secret', 'pw', 'md5', ''), fc.string({ maxLength: 40 })) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('saslInitial' as const), mech: fc.constantFrom('SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', 'PLAIN', ''), data: fc.oneof(fc.constant('n,,n=,r=abc'), fc.string({ maxLength: 40 })), badLength: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('saslResponse' as const), data: fc.oneof(fc.constant('c=biws,r=x,p=AAAA'), fc.string({ maxLength: 60 })) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('query' as const), sql: fc.constantFrom('SHOW POOLS', 'SELECT 1', '') }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('typed' as const), type: fc.integer({ min: 0, max: 255 }), body: fc.uint8Array({ maxLength: 40 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('raw' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 24 }) }) },
  ),
  // Truncate this action's bytes to `keep` (null = whole).
  keep: fc.option(fc.nat({ max: 40 }), { freq: 6 }),
});

/** A plausible login (optionally after SSLRequest/GSSENCRequest), then anything: reaches deep states. */
const loginScriptArb: fc.Arbitrary<Array<{ action: Action; keep: number | null }>> = fc
  .tuple(
    fc.array(fc.constantFrom<Action>({ kind: 'ssl' }, { kind: 'gss' }), { maxLength: 2 }),
    fc.record({
      kind: fc.constant('startup' as const),
      user: fc.constantFrom('alice', 'bob', 'carol', 'admin', 'dave'),
      database: fc.constantFrom('app', 'pgmux', '', 'bob'),
      version: fc.constantFrom(3 << 16, (3 << 16) | 2),
      extra: fc.array(fc.tuple(fc.constantFrom('application_name', 'TimeZone', '_pq_.x'), fc.constantFrom('x', 'UTC', '')), { maxLength: 2 }),
    }),
    fc.integer({ min: 1, max: 3 }),
    fc.array(actionArb, { maxLength: 4 }),
    fc.option(fc.nat({ max: 12 }), { freq: 8 }),
  )
  .map(([prefix, startup, answers, tail, truncateAt]) => {
    const script = [
      ...prefix.map((action) => ({ action, keep: null })),
      { action: startup as Action, keep: null },
      ...Array.from({ length: answers }, () => ({ action: { kind: 'answer' } as Action, keep: null })),
      ...tail,
    ];
    // Sometimes one step of the script is cut short.
    if (truncateAt !== null) {
      const i = truncateAt % script.length;
      script[i] = { ...script[i]!, keep: truncateAt };
    }
    return script;
  });

interface Conversation {
  user: string;
  scram: ScramClientSession | null;
  /** Correct answers computed so far (password, md5 response, SCRAM client-final). */
  secrets: Buffer[];
}

/** The bytes for an action, given what pgmux has said so far. */
function actionBytes(a: Action, sock: FakeSocket, conv: Conversation): Buffer {
  const { bytes, proves } = actionBytesAndSecret(a, sock, conv);
  // The proof itself, without framing: a truncated message completed by the next one's
  // bytes still proves the password, so the oracle looks for the proof in all bytes sent.
  if (proves) conv.secrets.push(bytes.subarray(5, bytes[bytes.length - 1] === 0 ? bytes.length - 1 : bytes.length));
  return bytes;
}

function actionBytesAndSecret(a: Action, sock: FakeSocket, conv: Conversation): { bytes: Buffer; proves: boolean } {
  switch (a.kind) {
    case 'startup':
      conv.user = a.user;
      return { bytes: startupBytes(a.version, [['user', a.user], ['database', a.database], ...a.extra]), proves: false };
    case 'ssl':
      return { bytes: Buffer.concat([int32(8), int32(SSL_REQUEST_CODE)]), proves: false };
    case 'gss':
      return { bytes: Buffer.concat([int32(8), int32(GSSENC_REQUEST_CODE)]), proves: false };
    case 'terminate':
      return { bytes: typedMsg('X', Buffer.alloc(0)), proves: false };
    case 'cancel':
      return { bytes: Buffer.concat([int32(a.short ? 12 : 16), int32(CANCEL_REQUEST_CODE), int32(a.pid), ...(a.short ? [] : [int32(a.secret)])]), proves: false };
    case 'password':
      return { bytes: passwordMessage(a.text.replace(/\0/g, '')), proves: false };
    case 'saslInitial': {
      const b = saslInitialResponse(a.mech, a.data);
      if (a.badLength) b.writeInt32BE(0x7ffffff0, 5 + a.mech.length + 1);
      return { bytes: b, proves: false };
    }
    case 'saslResponse':
      return { bytes: saslResponse(a.data), proves: false };
    case 'query':
      return { bytes: queryMessage(a.sql), proves: false };
    case 'typed':
      return { bytes: typedMsg(a.type, Buffer.from(a.body)), proves: false };
    case 'raw':
      return { bytes: Buffer.from(a.bytes), proves: false };
    case 'answer': {
      // Answer the last authentication request correctly, for the last user named.
      const auth = parseServerOutput(sock.writes).messages.filter((m) => m.type === 'R');
      const last = auth[auth.length - 1];
      const password = PASSWORDS.get(conv.user) ?? 'nobody-knows';
      if (!last) return { bytes: passwordMessage(password), proves: false };
      const code = last.body.readInt32BE(0);
      switch (code) {
        case 3:
          return { bytes: passwordMessage(password), proves: true };
        case 5:
          return { bytes: passwordMessage(md5Response({ user: conv.user, secret: password, kind: 'plain' }, last.body.subarray(4, 8))), proves: true };
        case 10:
          conv.scram = new ScramClientSession(password);
          return { bytes: saslInitialResponse('SCRAM-SHA-256', conv.scram.clientFirst()), proves: false };
        case 11:
          if (conv.scram === null) return { bytes: saslResponse('c=biws'), proves: false };
          try {
            return { bytes: saslResponse(conv.scram.handleServerFirst(last.body.toString('utf8', 4))), proves: true };
          } catch {
            return { bytes: saslResponse('garbage'), proves: false };
          }
        default:
          return { bytes: passwordMessage(password), proves: false };
      }
    }
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
}

const variantArb: fc.Arbitrary<Variant> = fc.record({
  auth: fc.constantFrom('trust', 'password', 'md5', 'scram-sha-256'),
  hba: fc.boolean(),
  maxUser: fc.constantFrom(0, 1),
  clientTls: fc.constantFrom('disable', 'disable', 'require'),
  proxy: fc.constantFrom('off', 'off', 'trusted', 'untrusted'),
});

const V2_SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

function v2Header(verCmd: number, fam: number, body: Buffer): Buffer {
  const head = Buffer.from([verCmd, fam, body.length >> 8, body.length & 0xff]);
  return Buffer.concat([V2_SIG, head, body]);
}

/** What a balancer (or an impostor) puts first: the address it carries (null: the sender's own), and its bytes. */
const proxyHeaderArb: fc.Arbitrary<{ carried: string | null; bytes: Buffer }> = fc.oneof(
  fc.constant({ carried: '10.1.2.3', bytes: Buffer.from('PROXY TCP4 10.1.2.3 127.0.0.1 5000 6432\r\n') }),
  fc.constant({ carried: '127.0.0.1', bytes: Buffer.from('PROXY TCP4 127.0.0.1 127.0.0.1 5000 6432\r\n') }),
  fc.constant({ carried: null, bytes: Buffer.from('PROXY UNKNOWN\r\n') }),
  fc.constant({ carried: '10.1.2.3', bytes: v2Header(0x21, 0x11, Buffer.from([10, 1, 2, 3, 127, 0, 0, 1, 0x13, 0x88, 0x19, 0x20, 0x05, 0, 2, 0x61, 0x62])) }),
  fc.constant({ carried: null, bytes: v2Header(0x20, 0x00, Buffer.alloc(0)) }),
  fc.uint8Array({ maxLength: 120 }).map((b) => ({ carried: null, bytes: Buffer.concat([Buffer.from('PROXY '), Buffer.from(b)]) })),
  fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 60 }))
    .map(([vc, fam, b]) => ({ carried: null, bytes: v2Header(vc, fam, Buffer.from(b)) })),
);

const SQLSTATE = /^[0-9A-Z]{5}$/;
const SETTLED = new Set<string>([ClientState.Closed, ClientState.Startup, ClientState.Auth, ClientState.Admin]);

describe('fuzz: client startup and authentication', () => {
  it(`random, truncated and reordered login messages: no exception, a sane end state, valid SQLSTATEs, no login without the password (${RUNS} cases)`, async () => {
    let logins = 0;
    let closed = 0;
    const codes = new Map<string, number>();
    const states = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        variantArb,
        fc.oneof({ weight: 1, arbitrary: fc.array(actionArb, { minLength: 1, maxLength: 8 }) }, { weight: 2, arbitrary: loginScriptArb }),
        fc.array(fc.nat(), { maxLength: 6 }),
        fc.boolean(),
        fc.option(proxyHeaderArb, { freq: 2 }),
        async (variant, actions, cuts, settleEach, proxyHeader) => {
          const { ctx, tracked, registered } = fakeContext(variant);
          const sock = new FakeSocket();
          const session = new ClientSession(sock as unknown as net.Socket, ctx);
          const conv: Conversation = { user: '', scram: null, secrets: [] };
          const allSent: Buffer[] = [];
          // A header is read only from a trusted sender; a valid one decides the address HBA sees.
          let hbaAddress = '127.0.0.1';
          if (proxyHeader !== null) {
            for (const chunk of cut(proxyHeader.bytes, cuts)) sock.feed(chunk);
            if (proxyHeader.carried !== null) hbaAddress = proxyHeader.carried;
          }
          for (const { action, keep } of actions) {
            if (sock.ended || sock.destroyed) break;
            const bytes = actionBytes(action, sock, conv);
            const sent = keep === null || keep >= bytes.length ? bytes : bytes.subarray(0, keep);
            allSent.push(sent);
            for (const chunk of cut(sent, cuts)) sock.feed(chunk);
            if (settleEach || action.kind === 'answer') await settle();
          }
          await settle();

          const out = parseServerOutput(sock.writes);
          // Whole messages only, and nothing written after the connection was ended.
          expect(out.framingErrors).toBe(0);
          expect(sock.writesAfterEnd).toBe(0);
          expect(out.sslAnswers.every((a) => a === 'N')).toBe(true);
          // Every error carries a real SQLSTATE; a FATAL is the last thing sent and closes.
          const errors = out.messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body));
          for (const f of errors) {
            codes.set(f.get('C')!, (codes.get(f.get('C')!) ?? 0) + 1);
            expect(f.get('C')).toMatch(SQLSTATE);
            expect(['ERROR', 'FATAL']).toContain(f.get('S'));
            expect(f.get('V')).toBe(f.get('S'));
            expect(f.get('M')).toBeTruthy();
          }
          const lastMsg = out.messages[out.messages.length - 1];
          if (errors.some((f) => f.get('S') === 'FATAL')) {
            expect(lastMsg?.type).toBe('E');
            expect(errorFields(lastMsg!.body).get('S')).toBe('FATAL');
            expect(session.state).toBe(ClientState.Closed);
          }
          // Settled: closed, or waiting for more input (never stuck mid-login).
          expect(SETTLED.has(session.state)).toBe(true);
          states.set(session.state, (states.get(session.state) ?? 0) + 1);
          expect(sock.ended || sock.destroyed).toBe(session.state === ClientState.Closed);
          // No AuthenticationOk without the password, unless the method was trust.
          const authOk = out.messages.some((m) => m.type === 'R' && m.body.readInt32BE(0) === 0);
          if (authOk) {
            logins++;
            const rules = hbaRulesFor(ctx.config());
            const method = rules === null
              ? ctx.config().auth
              : matchHba(rules, { ssl: false, database: session.database, user: session.user, address: hbaAddress })?.method;
            if (method !== 'trust') {
              const stream = Buffer.concat(allSent);
              const plain = PASSWORDS.get(session.user);
              const known = [...conv.secrets, ...(plain !== undefined ? [Buffer.from(plain)] : [])];
              expect(known.some((k) => stream.includes(k))).toBe(true);
            }
            expect(AUTH_ENTRIES.has(session.user) || method === 'trust').toBe(true);
          }
          if (variant.clientTls === 'require') expect(authOk).toBe(false); // no TLS on a fake socket
          // No login past the PROXY rules: a trusted sender needs a header, anyone else must not send one.
          if (variant.proxy === 'trusted' && proxyHeader === null) expect(authOk).toBe(false);
          if (variant.proxy !== 'trusted' && proxyHeader !== null) expect(authOk).toBe(false);
          // The client goes away: every counter is back to zero.
          sock.emit('close');
          await settle();
          if (session.state === ClientState.Closed) closed++;
          expect(session.state).toBe(ClientState.Closed);
          expect(tracked.size).toBe(0);
          expect(registered.size).toBe(0);
          expect(ctx.limits.unauthenticated).toBe(0);
          expect(ctx.limits.userCount(session.user)).toBe(0);
          expect(ctx.limits.databaseCount(session.database)).toBe(0);
        },
      ),
      PARAMS,
    );
    if (process.env.FUZZ_VERBOSE) {
      console.log(`session fuzz: ${RUNS} cases, ${logins} reached AuthenticationOk; end states ${JSON.stringify(Object.fromEntries(states))}; SQLSTATEs sent ${JSON.stringify(Object.fromEntries([...codes].sort()))}`);
    }
    // The generator must actually reach logins, or the properties above prove little.
    expect(logins).toBeGreaterThan(RUNS / 100);
    expect(closed).toBe(RUNS);
  }, TIMEOUT_MS);
});
