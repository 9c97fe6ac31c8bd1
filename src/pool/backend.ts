// One PostgreSQL connection held by pgmux: login, then header-only scanning of what the
// backend sends, forwarded to whichever client is linked to it at the moment.

import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { BackendScanner, type ScanSink } from '../protocol/backendScanner.js';
import { FrameReader } from '../protocol/framer.js';
import {
  AuthCode,
  BackendMsg,
  parseFields,
  passwordMessage,
  queryMessage,
  saslInitialResponse,
  saslResponse,
  startupMessage,
  TERMINATE,
} from '../protocol/messages.js';
import { BackendError, PgmuxError, pgmuxError } from '../protocol/errors.js';
import { md5Response } from '../auth/md5.js';
import { ScramClientSession } from '../auth/scram.js';
import { scramKeyCache } from '../auth/scramCache.js';
import { connectTls, type BackendTls } from '../net/tls.js';
import { readLean, writeLean } from '../net/leanSocket.js';
import type { BackendPipeline } from './pipeline.js';

export interface NodeAddress {
  host: string;
  port: number;
  /** host:port, for logs and pool keys. */
  name: string;
}

/** What pgmux may use to log in to a backend as a given user. */
export interface BackendCredentials {
  password?: string | null;
  /** 'md5' + hex, as stored by PostgreSQL / an auth file. */
  md5Secret?: string | null;
  /**
   * SCRAM pass-through: the ClientKey a client proved against the user's stored verifier and
   * that verifier's ServerKey. Used for SCRAM when there is no password.
   */
  scramKeys?: { clientKey: Buffer; serverKey: Buffer };
}

/** The client side of a link; implemented by ClientSession. */
export interface BackendOwner {
  onBackendData(buf: Buffer, start: number, end: number): void;
  onBackendReady(status: number): void;
  onBackendParameter(name: string, value: string, hidden: boolean): void;
  onBackendHiddenError(fields: Map<string, string>): void;
  /** An ErrorResponse forwarded to the client (already on its way). */
  onBackendError?(fields: Map<string, string>): void;
  onBackendLost(backend: BackendConnection, reason: string): void;
  /** The backend socket drained: the client may send again. */
  onBackendDrain(): void;
}

export enum BackendState {
  Connecting = 'connecting',
  Idle = 'idle',
  Linked = 'linked',
  Internal = 'internal',
  Closed = 'closed',
}

export type BackendCloseReason =
  | 'idle_timeout'
  | 'lifetime'
  | 'dirty'
  | 'client_gone'
  | 'reset_failed'
  | 'node_gone'
  | 'server_closed'
  | 'shutdown'
  | 'recycled'
  /** KILL on the admin console. */
  | 'killed'
  /** Above pool_size after a RELOAD lowered it. */
  | 'pool_size'
  /** Idle, given up for another pool waiting under max_db_connections / max_user_connections. */
  | 'budget'
  | 'error';

let nextId = 1;

const PARSE_COMPLETE = 0x31; // '1'
const BIND_COMPLETE = 0x32; // '2'
const PARAMETER_DESCRIPTION = 0x74; // 't'
const NO_DATA = 0x6e; // 'n'
const NOTICE_RESPONSE = 0x4e; // 'N'
const ROW_DESCRIPTION = 0x54; // 'T'
const PARAMETER_STATUS = 0x53; // 'S'
const CLOSE_COMPLETE = 0x33; // '3'

/**
 * What a backend sends before a statement has a result: a re-run elsewhere sends it again,
 * so it does not count as an answer (see `answered`).
 */
function preamble(type: number): boolean {
  return (
    type === NOTICE_RESPONSE ||
    type === ROW_DESCRIPTION ||
    type === PARAMETER_STATUS ||
    type === PARSE_COMPLETE ||
    type === BIND_COMPLETE ||
    type === PARAMETER_DESCRIPTION ||
    type === NO_DATA
  );
}

export enum Expect {
  Parse = 1,
  ParseHidden = 2,
  Close = 3,
  CloseHidden = 4,
  /** ReadyForQuery (Sync, Query, FunctionCall). */
  Rfq = 5,
}

export interface ConnectOptions {
  node: NodeAddress;
  user: string;
  database: string;
  credentials: BackendCredentials;
  connectTimeoutMs: number;
  /** server_tls: negotiated with SSLRequest before the StartupMessage; absent = plaintext. */
  tls?: BackendTls;
  /** lean_io: after login a plaintext backend reads into the shared buffer (src/net/leanSocket.ts). */
  leanIo?: boolean;
}

export class BackendConnection implements ScanSink {
  readonly id = nextId++;
  state = BackendState.Connecting;
  pid = 0;
  secret = 0;
  /** Reported parameters as the backend last told us (ParameterStatus). */
  readonly params = new Map<string, string>();
  /** The same, as reported at login: this database's defaults for a client that sets nothing. */
  readonly defaults = new Map<string, string>();
  /**
   * Fingerprint of the client settings this backend was last aligned to; null once anything
   * may have changed them (a ParameterStatus, a reset).
   */
  syncedFingerprint: string | null = null;
  /** Its session state is not what pgmux recorded (a hidden query failed): close, don't pool. */
  discardOnRelease = false;
  /**
   * It carries session state pgmux cannot vouch for (a pinned client's temp tables, locks,
   * LISTEN, untracked settings): the pool resets it with server_reset_query before anyone
   * else gets it, or closes it.
   */
  needsReset = false;
  /** Times the pool reset it for the next client. */
  resets = 0;
  /** Unreported settings pgmux applied for clients (name -> value); RESET when not wanted. */
  readonly applied = new Map<string, string>();
  /** ReadyForQuery messages owed to the linked client (one per Query, Sync, FunctionCall). */
  pendingRfq = 0;
  /** ReadyForQuery messages owed to pgmux's own hidden queries; their responses are dropped. */
  hiddenRfq = 0;
  txStatus = 0x49; // 'I'
  owner: BackendOwner | null = null;
  readonly createdAt = Date.now();
  lastReleasedAt = Date.now();
  closeReason: BackendCloseReason | null = null;
  /** Opaque slot for the pool that owns this backend. */
  poolRef: unknown = null;
  /** Other clients' requests written behind the running one (pipeline_depth); null until first used. */
  pipeline: BackendPipeline | null = null;

  private scanner = new BackendScanner(this);
  private internal: { resolve: () => void; reject: (e: Error) => void; error: Map<string, string> | null } | null = null;
  /** First row of the running internal query (queryRow). */
  private capturedRow: Array<string | null> | null = null;

  /**
   * Proxy statement names prepared on this backend, least recently used first (a Map keeps
   * insertion order; use re-inserts).
   */
  readonly prepared = new Map<string, true>();
  // Expected responses, in order, to the Parse / Close / ReadyForQuery-producing messages
  // sent while a client tracks statements: says which ParseComplete / CloseComplete
  // belong to messages pgmux put in front of the client's and must be hidden.
  private expKind: number[] = [];
  private expName: Array<string | null> = [];
  private expHead = 0;
  private closeListeners: Array<(b: BackendConnection) => void> = [];

  private constructor(
    readonly socket: net.Socket,
    readonly node: NodeAddress,
    readonly user: string,
    readonly database: string,
  ) {}

  static connect(opts: ConnectOptions): Promise<BackendConnection> {
    const socket = net.connect({ host: opts.node.host, port: opts.node.port });
    socket.setNoDelay(true);
    const t = opts.tls;
    if (t === undefined || t.mode === 'disable') return new BackendConnection(socket, opts.node, opts.user, opts.database).login(opts, false);
    const started = Date.now();
    return connectTls(socket, { mode: t.mode, ca: t.ca, host: opts.node.host, timeoutMs: opts.connectTimeoutMs }).then(
      (s) => {
        const left = opts.connectTimeoutMs > 0 ? Math.max(1, opts.connectTimeoutMs - (Date.now() - started)) : 0;
        return new BackendConnection(s, opts.node, opts.user, opts.database).login({ ...opts, connectTimeoutMs: left }, true);
      },
      (err: Error) => {
        throw new PgmuxError(pgmuxError('backendUnavailable', { detail: `${opts.node.name}: ${err.message}` }));
      },
    );
  }

  private login(opts: ConnectOptions, connected: boolean): Promise<BackendConnection> {
    return new Promise((resolve, reject) => {
      const socket = this.socket;
      const reader = new FrameReader(64 * 1024 * 1024, true);
      let scram: ScramClientSession | null = null;
      let settled = false;
      const timer = setTimeout(
        () => fail(new PgmuxError(pgmuxError('backendUnavailable', { detail: `connecting to ${this.node.name} timed out after ${opts.connectTimeoutMs} ms` }))),
        opts.connectTimeoutMs,
      );
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.state = BackendState.Closed;
        socket.removeAllListeners('data');
        socket.destroy();
        reject(err);
      };
      const needPassword = (what: string): string => {
        const p = opts.credentials.password;
        if (p == null) {
          throw new PgmuxError(
            pgmuxError('noBackendPassword', { args: { user: opts.user }, detail: `${this.node.name} asked for ${what} authentication.` }),
          );
        }
        return p;
      };
      const onMessage = (): void => {
        const buf = reader.msg;
        const s = reader.bodyStart;
        const e = reader.end;
        switch (reader.type) {
          case BackendMsg.Authentication: {
            const code = buf.readInt32BE(s);
            switch (code) {
              case AuthCode.Ok:
                break;
              case AuthCode.CleartextPassword:
                socket.write(passwordMessage(needPassword('password')));
                break;
              case AuthCode.MD5Password: {
                const salt = buf.subarray(s + 4, s + 8);
                const c = opts.credentials;
                const entry = c.md5Secret
                  ? { user: opts.user, secret: c.md5Secret, kind: 'md5' as const }
                  : { user: opts.user, secret: needPassword('md5'), kind: 'plain' as const };
                socket.write(passwordMessage(md5Response(entry, salt)));
                break;
              }
              case AuthCode.SASL: {
                const mechs = buf.toString('utf8', s + 4, e).split('\0');
                if (!mechs.includes('SCRAM-SHA-256')) {
                  throw new PgmuxError(pgmuxError('authMethodUnavailable', { detail: `backend offers SASL mechanisms ${mechs.filter(Boolean).join(', ')}` }));
                }
                const keys = opts.credentials.password == null ? opts.credentials.scramKeys : undefined;
                scram = new ScramClientSession(keys ?? needPassword('SCRAM-SHA-256'));
                socket.write(saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
                break;
              }
              case AuthCode.SASLContinue: {
                if (!scram) throw new PgmuxError(pgmuxError('protocolViolation', { detail: 'unexpected SASL continue from backend' }));
                // PBKDF2 for a password's first login runs on the threadpool: nothing else comes meanwhile.
                const reply = scram.respondToServerFirst(buf.toString('utf8', s + 4, e), scramKeyCache);
                if (typeof reply === 'string') socket.write(saslResponse(reply));
                else reply.then((r) => void (settled || socket.write(saslResponse(r))), fail);
                break;
              }
              case AuthCode.SASLFinal:
                if (!scram) throw new PgmuxError(pgmuxError('protocolViolation', { detail: 'unexpected SASL final from backend' }));
                scram.verifyServerFinal(buf.toString('utf8', s + 4, e));
                break;
              default:
                throw new PgmuxError(pgmuxError('authMethodUnavailable', { detail: `backend asked for unsupported authentication request ${code}` }));
            }
            break;
          }
          case BackendMsg.ParameterStatus: {
            const nul = buf.indexOf(0, s);
            this.params.set(buf.toString('utf8', s, nul), buf.toString('utf8', nul + 1, e - 1));
            break;
          }
          case BackendMsg.BackendKeyData:
            this.pid = buf.readInt32BE(s);
            this.secret = buf.readInt32BE(s + 4);
            break;
          case BackendMsg.ErrorResponse:
            throw new BackendError(parseFields(buf, s, e), Buffer.from(buf.subarray(reader.msgStart, e)));
          case BackendMsg.ReadyForQuery: {
            settled = true;
            clearTimeout(timer);
            this.txStatus = buf[s]!;
            this.state = BackendState.Idle;
            for (const [k, v] of this.params) this.defaults.set(k, v);
            socket.removeAllListeners('data');
            const scan = (chunk: Buffer): void => this.scanner.scan(chunk);
            // The scanner keeps nothing of a chunk (split headers and decoded bodies are
            // copied), so it may read the shared buffer; 'data' still delivers what the
            // standard path buffered before.
            socket.on('data', scan);
            if (opts.leanIo === true) this.lean = readLean(socket, scan);
            socket.on('drain', () => this.owner?.onBackendDrain());
            const rest = reader.takeRemaining();
            if (rest) this.scanner.scan(rest);
            resolve(this);
            return;
          }
          default:
            break; // NoticeResponse, NegotiateProtocolVersion: nothing to do
        }
      };
      const sendStartup = () => socket.write(startupMessage({ user: opts.user, database: opts.database }));
      if (connected) sendStartup();
      else socket.on('connect', sendStartup);
      socket.on('data', (chunk: Buffer) => {
        reader.push(chunk);
        try {
          while (!settled && reader.next()) onMessage();
        } catch (err) {
          fail(err as Error);
        }
      });
      socket.on('error', (err) => {
        if (!settled) {
          fail(new PgmuxError(pgmuxError('backendUnavailable', { detail: `${this.node.name}: ${err.message}` })));
        }
      });
      socket.on('close', () => {
        if (!settled) fail(new PgmuxError(pgmuxError('backendUnavailable', { detail: `${this.node.name} closed the connection during login` })));
        else this.onSocketClosed();
      });
    });
  }

  // ---- linking to a client ----------------------------------------------------------

  /**
   * Since link(): an answer went to the owner, i.e. a message other than NoticeResponse,
   * ParameterStatus, or the extended protocol's ParseComplete, BindComplete,
   * ParameterDescription, NoData and RowDescription, which come before any row or result.
   */
  answered = false;
  /** Type of the message the scanner is in now (the last one started). */
  lastType = 0;

  link(owner: BackendOwner): void {
    this.owner = owner;
    this.answered = false;
    this.state = BackendState.Linked;
  }

  unlink(): void {
    this.owner = null;
    if (this.state === BackendState.Linked) this.state = BackendState.Idle;
    // Nothing is owed any more: a Parse never confirmed means no such statement here.
    for (let i = this.expHead; i < this.expKind.length; i++) {
      const k = this.expKind[i];
      const name = this.expName[i];
      if (name != null && (k === Expect.Parse || k === Expect.ParseHidden)) this.prepared.delete(name);
    }
    this.expKind = [];
    this.expName = [];
    this.expHead = 0;
  }

  /** Reads land in the shared read buffer; writes go through writeLean. */
  lean = false;

  write(buf: Buffer): boolean {
    return this.lean ? writeLean(this.socket, buf) : this.socket.write(buf);
  }

  /**
   * Collects the writes until uncork() into one (standard path). On the lean path a corked
   * write of a read-buffer view would have to be copied, and a direct write is one syscall
   * anyway: no cork.
   */
  cork(): void {
    if (!this.lean) this.socket.cork();
  }

  uncork(): void {
    if (!this.lean) this.socket.uncork();
  }

  /**
   * Clean = nothing in flight and not inside a transaction: safe to hand to another client.
   * The pool's last check, on the backend's own counters (hidden queries and a message cut
   * mid-way included); when a client lets its backend go is the request tracker's rule.
   */
  get clean(): boolean {
    return (
      this.state !== BackendState.Closed &&
      this.txStatus === 0x49 &&
      this.pendingRfq === 0 &&
      this.hiddenRfq === 0 &&
      this.scanner.atBoundary
    );
  }

  /** Sends a query whose responses are hidden from any client (session parameters). */
  sendHidden(sql: string): void {
    this.hiddenRfq++;
    this.socket.write(queryMessage(sql));
  }

  /**
   * Runs pgmux's own query while no client is linked (reset in session mode). Resolves on
   * its ReadyForQuery; rejects with the backend's error if it failed.
   */
  runInternal(sql: string): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.state === BackendState.Closed) {
        reject(new Error('backend closed'));
        return;
      }
      this.state = BackendState.Internal;
      this.internal = { resolve, reject, error: null };
      this.sendHidden(sql);
    });
  }

  /** Runs pgmux's own one-row query while no client is linked; resolves its first row. */
  async queryRow(sql: string): Promise<Array<string | null> | null> {
    this.capturedRow = null;
    this.scanner.captureRows = true;
    try {
      await this.runInternal(sql);
      return this.capturedRow;
    } finally {
      this.scanner.captureRows = false;
    }
  }

  onHiddenDataRow(body: Buffer, start: number, end: number): void {
    if (this.capturedRow !== null || end - start < 2) return;
    const n = body.readInt16BE(start);
    const row: Array<string | null> = [];
    let pos = start + 2;
    for (let i = 0; i < n && pos + 4 <= end; i++) {
      const len = body.readInt32BE(pos);
      pos += 4;
      if (len < 0) row.push(null);
      else {
        row.push(body.toString('utf8', pos, pos + len));
        pos += len;
      }
    }
    this.capturedRow = row;
  }

  onClose(fn: (b: BackendConnection) => void): void {
    this.closeListeners.push(fn);
  }

  close(reason: BackendCloseReason): void {
    if (this.state === BackendState.Closed) return;
    this.closeReason = reason;
    this.state = BackendState.Closed;
    if (!this.socket.destroyed) {
      this.socket.end(TERMINATE);
      this.socket.destroySoon?.();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    this.finishClose('closed by pgmux');
  }

  private onSocketClosed(): void {
    if (this.state !== BackendState.Closed) {
      this.closeReason = 'server_closed';
      this.state = BackendState.Closed;
    }
    this.finishClose('the database closed the connection');
  }

  private finished = false;
  private finishClose(why: string): void {
    if (this.finished) return;
    this.finished = true;
    if (this.internal) {
      this.internal.reject(new Error(why));
      this.internal = null;
    }
    const owner = this.owner;
    this.owner = null;
    if (owner) owner.onBackendLost(this, why);
    for (const fn of this.closeListeners) fn(this);
    this.closeListeners = [];
  }

  // ---- ScanSink: the backend -> client stream ---------------------------------------

  forward(buf: Buffer, start: number, end: number): void {
    const owner = this.owner;
    if (owner !== null) owner.onBackendData(buf, start, end);
  }

  hiding(type: number): boolean {
    this.lastType = type;
    if (this.hiddenRfq > 0 || this.owner === null) return true;
    if (this.expHead < this.expKind.length && (type === PARSE_COMPLETE || type === CLOSE_COMPLETE)) {
      const k = this.expKind[this.expHead]!;
      if (type === PARSE_COMPLETE ? k === Expect.Parse || k === Expect.ParseHidden : k === Expect.Close || k === Expect.CloseHidden) {
        this.expHead++;
        // A hidden CloseComplete never reaches the client: it is no answer.
        if (k === Expect.ParseHidden || k === Expect.CloseHidden) return true;
      }
    }
    if (!this.answered && !preamble(type)) this.answered = true;
    return false;
  }

  /** Records the response a message just forwarded will produce (statement tracking). */
  expect(kind: Expect, statement: string | null = null): void {
    this.expKind.push(kind);
    this.expName.push(statement);
  }

  /**
   * Drops expectations that will never be answered: after an error the backend skips
   * everything up to Sync (stopAtRfq), and at ReadyForQuery the batch is over. A Parse
   * that was never confirmed means the statement does not exist here.
   */
  private dropExpected(stopAtRfq: boolean): void {
    const kinds = this.expKind;
    let i = this.expHead;
    for (; i < kinds.length; i++) {
      const k = kinds[i]!;
      if (k === Expect.Rfq) {
        if (!stopAtRfq) i++;
        break;
      }
      const name = this.expName[i];
      if (name != null && (k === Expect.Parse || k === Expect.ParseHidden)) this.prepared.delete(name);
    }
    this.expHead = i;
    if (this.expHead >= kinds.length) {
      this.expKind = [];
      this.expName = [];
      this.expHead = 0;
    }
  }

  onReadyForQuery(status: number, hidden: boolean): void {
    this.txStatus = status;
    if (this.hiddenRfq > 0) {
      this.hiddenRfq--;
      if (this.hiddenRfq === 0 && this.internal) {
        const w = this.internal;
        this.internal = null;
        if (this.state === BackendState.Internal) this.state = BackendState.Idle;
        if (w.error) w.reject(new BackendError(w.error, Buffer.alloc(0)));
        else w.resolve();
      }
      return;
    }
    if (hidden) return; // stray (no client linked): nothing owed to anyone
    if (this.pendingRfq > 0) this.pendingRfq--;
    if (this.expHead < this.expKind.length) this.dropExpected(false);
    const owner = this.owner;
    if (owner !== null) owner.onBackendReady(status);
  }

  onParameterStatus(name: string, value: string, hidden: boolean): void {
    if (this.params.get(name) !== value) {
      this.params.set(name, value);
      if (!hidden) this.syncedFingerprint = null;
    }
    const owner = this.owner;
    if (owner !== null) owner.onBackendParameter(name, value, hidden);
  }

  onErrorResponse(fields: Map<string, string>, hidden: boolean): void {
    if (!hidden) {
      // The client sees it as PostgreSQL sent it; statement bookkeeping skips to Sync too.
      if (this.expHead < this.expKind.length) this.dropExpected(true);
      this.owner?.onBackendError?.(fields);
      return;
    }
    if (this.internal && !this.internal.error) this.internal.error = fields;
    const owner = this.owner;
    if (owner !== null && this.hiddenRfq > 0) owner.onBackendHiddenError(fields);
  }
}

/**
 * Random 32-bit value for proxy-issued cancel keys, from a CSPRNG block refilled every
 * 1,024 keys: a randomBytes call per key cost two getpid syscalls and an allocation.
 */
const randomPool = Buffer.alloc(4096);
let randomPoolAt = randomPool.length;
export function randomInt32(): number {
  if (randomPoolAt === randomPool.length) {
    randomFillSync(randomPool);
    randomPoolAt = 0;
  }
  const v = randomPool.readInt32BE(randomPoolAt);
  randomPoolAt += 4;
  return v;
}
