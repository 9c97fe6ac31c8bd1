// One client connection: its transactions, each run on a backend taken from a pool when the
// transaction starts and given back when it ends. Startup and login are delegated to
// handshake.ts, the admin console to adminSession.ts.
//
// Transaction boundaries come from counting: every Query, Sync and FunctionCall forwarded
// owes one ReadyForQuery. The backend goes back to its pool on ReadyForQuery 'I' when none
// is owed and no extended-protocol batch is open (Parse/Bind/... sent without their Sync):
// a pipelining client still expects answers on the same backend.

import type net from 'node:net';
import { FrameError, FrameReader } from '../protocol/framer.js';
import {
  errorResponse,
  Msg,
  readCstr,
  sqlLiteral,
  queryMessage,
  readyForQuery,
} from '../protocol/messages.js';
import { BackendError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import { BackendConnection, Expect, randomInt32, type BackendOwner, type NodeAddress } from '../pool/backend.js';
import type { Pool, PoolWaiter } from '../pool/pool.js';
import type { ProxyContext } from '../server/context.js';
import type { ClientView } from '../admin/view.js';
import { buildSyncSql, settingsSignature } from './paramSync.js';
import { parseLsn } from '../cluster/topology.js';
import { parseListenCommand, type NotificationSink } from './notifications.js';
import { StatementForwarder } from './statementForwarder.js';
import { commandComplete } from '../protocol/resultSet.js';
import { bindStatement, isSqlPrepared, parseParse, targetOf } from './preparedStatements.js';
import { AdminSession, type AdminHost } from './adminSession.js';
import { ClientHandshake, type HandshakeHost, type LoggedIn } from './handshake.js';
import { ADMIN_DATABASE, ClientState, type ClientCloseReason } from './clientState.js';

export { ADMIN_DATABASE, ClientState, type ClientCloseReason };

/** A client message that arrived while no backend was linked. */
interface HeldMessage {
  type: number;
  buf: Buffer;
  start: number;
  end: number;
}

/** After blanks, a d/D: the cheap gate before looking for DEALLOCATE / DISCARD. */
function startsWithD(buf: Buffer, pos: number, end: number): boolean {
  pos = skipBlanks(buf, pos, end);
  return buf[pos] === 0x64 || buf[pos] === 0x44;
}

/** Position of the first byte after spaces, tabs and line breaks. */
function skipBlanks(buf: Buffer, pos: number, end: number): number {
  while (pos < end && (buf[pos] === 0x20 || buf[pos] === 0x0a || buf[pos] === 0x09 || buf[pos] === 0x0d)) pos++;
  return pos;
}

/** First word SET or RESET (case-insensitive, after blanks): a byte check, no string. */
function startsWithSetOrReset(buf: Buffer, pos: number, end: number): boolean {
  pos = skipBlanks(buf, pos, end);
  let c = buf[pos]! | 0x20;
  if (c === 0x72 /* r */) {
    if (((buf[pos + 1]! | 0x20) !== 0x65) || ((buf[pos + 2]! | 0x20) !== 0x73)) return false;
    pos += 2;
    c = buf[pos]! | 0x20;
  }
  return c === 0x73 && (buf[pos + 1]! | 0x20) === 0x65 && (buf[pos + 2]! | 0x20) === 0x74 && (buf[pos + 3] === 0x20 || buf[pos + 3] === 0x09 || buf[pos + 3] === 0x0a);
}

/**
 * Byte prefilter for statements that may create session state: the text contains
 * "temp", "advisory", "hold" or "listen" in any case. Only then is the regex run.
 */
function mayKeepSessionState(buf: Buffer, pos: number, end: number): boolean {
  for (let i = pos; i < end - 3; i++) {
    const c = buf[i]! | 0x20;
    if (c === 0x74 /* t */) {
      if ((buf[i + 1]! | 0x20) === 0x65 && (buf[i + 2]! | 0x20) === 0x6d && (buf[i + 3]! | 0x20) === 0x70) return true;
    } else if (c === 0x61 /* a */) {
      if ((buf[i + 1]! | 0x20) === 0x64 && (buf[i + 2]! | 0x20) === 0x76 && (buf[i + 3]! | 0x20) === 0x69) return true;
    } else if (c === 0x68 /* h */) {
      if ((buf[i + 1]! | 0x20) === 0x6f && (buf[i + 2]! | 0x20) === 0x6c && (buf[i + 3]! | 0x20) === 0x64) return true;
    } else if (c === 0x6c /* l */) {
      if ((buf[i + 1]! | 0x20) === 0x69 && (buf[i + 2]! | 0x20) === 0x73 && (buf[i + 3]! | 0x20) === 0x74) return true;
    }
  }
  return false;
}

const SESSION_STATE =
  /\bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\s+(?:table|view|sequence)\b|\binto\s+temp(?:orary)?\b|\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(|\bwith\s+hold\b|^\s*listen\b/i;

/** One string object per distinct settings fingerprint (cheap identity comparisons). */
const fingerprints = new Map<string, string>();
function interned(s: string): string {
  let v = fingerprints.get(s);
  if (v === undefined) {
    if (fingerprints.size > 10_000) fingerprints.clear();
    fingerprints.set(s, s);
    v = s;
  }
  return v;
}

let nextClientId = 1;
/** Re-routes of one transaction (failover waits, reads moved off a dead replica). */
const MAX_ROUTE_ATTEMPTS = 3;
const ERROR_RESPONSE = 0x45; // 'E'
const PARSE_COMPLETE = Buffer.from([0x31, 0, 0, 0, 4]);

/** Proxy-issued cancel pids: start --workers puts the worker index in the high bits so keys are unique per group. */
export const cancelPidSpace = { high: 0, mask: 0x7fffffff };

/** What a client may send while it waits for a backend before pgmux stops reading it. */
const MAX_HELD_BYTES = 256 * 1024;

const MALFORMED_PARSE = { target: 'primary', reason: 'malformed Parse' } as const;
const UNKNOWN_STATEMENT = { target: 'primary', reason: 'unknown statement' } as const;

export class ClientSession implements BackendOwner, PoolWaiter, NotificationSink {
  readonly id = nextClientId++;
  state = ClientState.Startup;
  /** Proxy-issued cancel key (BackendKeyData). */
  readonly pid = cancelPidSpace.high | (randomInt32() & cancelPidSpace.mask);
  readonly secret = randomInt32();
  user = '';
  database = '';
  applicationName = '';
  /** Reported parameters as this client knows them. */
  reported = new Map<string, string>();
  /** Unreported startup settings (statement_timeout, search_path, custom GUCs, ...). */
  settings = new Map<string, string>();
  backend: BackendConnection | null = null;
  readonly connectedAt: number;
  lastActiveAt: number;
  closeReason: ClientCloseReason | null = null;
  transactions = 0;

  private readonly reader: FrameReader;
  /** Startup, TLS, authentication and login; afterwards what the connection counts against. */
  private readonly handshake: ClientHandshake;
  private extendedOpen = false;
  private held: HeldMessage[] = [];
  /** Bytes in `held`: reading stops above MAX_HELD_BYTES while no backend is free. */
  private heldBytes = 0;

  private hold(m: HeldMessage): void {
    this.held.push(m);
    this.heldBytes += m.end - m.start;
  }

  private clearHeld(): void {
    this.held = [];
    this.heldBytes = 0;
  }
  private pool: Pool | null = null;
  private poolNode: NodeAddress | null = null;
  // Routing of the current transaction.
  private routedTo: NodeAddress | null = null;
  private routedWrite = true;
  private retryable = false;
  /** Copy of the transaction's messages while it may still be re-run elsewhere. */
  private retry: HeldMessage[] | null = null;
  /** A batch that may be re-run once if its statement turns out stale (DDL), and its state. */
  private replayBatch: HeldMessage[] | null = null;
  private replayBuf: Buffer[] = [];
  private replaying = false;
  /** Response bytes held back while `retry` is set (no answer yet). */
  private heldReply: Buffer[] = [];
  private attempts = 0;
  private avoidNode: string | null = null;
  /** Named statements -> where their Parse was classified (routes a later Bind). */
  private readonly statementTargets = new Map<string, 'primary' | 'replica'>();
  // Read-your-writes.
  private lastWriteAt = -Infinity;
  private minLsn: bigint | null = null;
  private lsnPending = false;
  /** Transaction mode: named prepared statements are tracked and moved between backends. */
  private tracking = false;
  /** A transaction's first message arrived; route it after the rest of the read chunk. */
  private beginPending = false;
  private waitStartedAt = 0;
  /** A SET/RESET ran in this transaction: re-read tracked unreported parameters at its end. */
  private settingsDirty = false;
  /** Why this client keeps its backend between transactions (session state), or null. */
  pinned: string | null = null;
  /** This client's named prepared statements (transaction mode). */
  private readonly stmts: StatementForwarder;
  // Contiguous run of client bytes to forward with one write.
  private runBuf: Buffer | null = null;
  private runStart = 0;
  private runEnd = 0;

  /** The client connection: the accepted socket, or the TLS socket over it after SSLRequest. */
  private socket: net.Socket;
  /** The client's address as accepted (a TLS socket over a stream has none of its own). */
  private readonly peerAddress: string;
  private readonly peerPort: number;
  /** Nothing read yet: a TLS ClientHello now means direct TLS. */
  private firstData = true;

  constructor(
    socket: net.Socket,
    private ctx: ProxyContext,
  ) {
    this.socket = socket;
    this.peerAddress = socket.remoteAddress ?? '';
    this.peerPort = socket.remotePort ?? 0;
    this.reader = new FrameReader(ctx.config().maxMessageBytes, false);
    this.stmts = new StatementForwarder(ctx.statementNames, () => ctx.config().maxPreparedStatements, (msg) => this.emit(msg));
    this.connectedAt = this.lastActiveAt = ctx.clock.now;
    ctx.track(this);
    this.handshake = new ClientHandshake(ctx, this.handshakeHost(), this.reader, {
      id: this.id,
      address: this.peerAddress,
      remote: this.remote,
      pid: this.pid,
      secret: this.secret,
    });
    socket.setNoDelay(true);
    this.listen(socket);
  }

  private readonly onSocketData = (chunk: Buffer): void => this.onData(chunk);
  private readonly onSocketDrain = (): void => void this.backend?.socket.resume();
  private readonly onSocketGone = (): void => this.close('client_gone');

  private listen(socket: net.Socket): void {
    socket.on('data', this.onSocketData);
    socket.on('drain', this.onSocketDrain);
    socket.on('error', this.onSocketGone);
    socket.on('close', this.onSocketGone);
  }

  private unlisten(socket: net.Socket): void {
    socket.off('data', this.onSocketData);
    socket.off('drain', this.onSocketDrain);
    socket.off('error', this.onSocketGone);
    socket.off('close', this.onSocketGone);
  }

  get remote(): string {
    return `${this.peerAddress}:${this.peerPort}`;
  }

  // ---- client -> pgmux ------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.firstData) {
      this.firstData = false;
      // 0x16: a TLS handshake record where a startup packet's length would be.
      if (chunk[0] === 0x16 && this.state === ClientState.Startup) {
        this.handshake.onDirectTls(chunk);
        return;
      }
    }
    this.lastActiveAt = this.ctx.clock.now;
    this.ctx.stats.bytesIn += chunk.length;
    this.reader.push(chunk);
    this.drain();
  }

  /** Handles every whole message buffered, as far as the state allows. */
  private drain(): void {
    const r = this.reader;
    // One write per read chunk, even when pgmux adds or rewrites messages in it.
    const corked = this.backend?.socket ?? null;
    corked?.cork();
    while (this.state !== ClientState.Closed && !this.suspended && r.next()) {
      if (this.state === ClientState.Linked) this.forwardMessage(r.type, r.msg, r.msgStart, r.end);
      else this.handleMessage(r.type, r.msg, r.msgStart, r.bodyStart, r.end);
    }
    this.flushRun();
    corked?.uncork();
    if (this.beginPending) {
      this.beginPending = false;
      if (this.state === ClientState.Waiting) this.beginTransaction();
    }
    if (r.error !== FrameError.None && this.state !== ClientState.Closed) {
      if (this.state === ClientState.Startup) {
        this.handshake.onStartupFrameError(r.errorLength);
        return;
      }
      const tooLarge = r.error === FrameError.TooLarge;
      this.fatal(
        tooLarge
          ? pgmuxError('messageTooLarge', { detail: `message of ${r.errorLength} bytes exceeds max_message_size (${this.ctx.config().maxMessageBytes} bytes)` })
          : pgmuxError('protocolViolation', { message: 'invalid message length', detail: `declared length ${r.errorLength}` }),
        'protocol_error',
      );
    }
  }

  /** An async step runs (login, auth_query lookup, admin command): later messages wait in the reader. */
  private suspended = false;

  private suspend(): void {
    this.suspended = true;
    this.pauseReading();
  }

  /** The async step ended: handle what waited, unless the connection closed meanwhile. */
  private resume(): void {
    this.suspended = false;
    if (this.state === ClientState.Closed) return;
    this.resumeReading();
    this.drain();
  }

  /** The admin console session, once logged in to it. */
  private admin: AdminSession | null = null;

  private adminHost(): AdminHost {
    return {
      write: (data) => this.socket.write(data),
      close: (reason) => this.close(reason),
      suspend: () => this.suspend(),
      resume: () => this.resume(),
    };
  }

  private handleMessage(type: number, buf: Buffer, start: number, bodyStart: number, end: number): void {
    switch (this.state) {
      case ClientState.Startup:
        this.handshake.onStartupPacket(buf, start, end);
        return;
      case ClientState.Auth:
        this.handshake.onAuthMessage(type, buf, bodyStart, end);
        return;
      case ClientState.Idle:
        if (type === Msg.Terminate) {
          this.close('client_terminate');
          return;
        }
        // The route is chosen once everything already received is held (see drain()).
        this.hold({ type, buf, start, end });
        this.state = ClientState.Waiting;
        this.beginPending = true;
        return;
      case ClientState.Waiting:
        // No backend yet: what the client sends meanwhile waits here, up to a bound.
        this.hold({ type, buf, start, end });
        if (this.heldBytes > MAX_HELD_BYTES) this.pauseReading();
        return;
      case ClientState.Admin:
        this.admin!.onMessage(type, buf, bodyStart, end);
        return;
      default:
        return;
    }
  }

  /** Hot path: bookkeeping by type, then extend the current forward run. */
  private forwardMessage(type: number, buf: Buffer, start: number, end: number): void {
    const b = this.backend!;
    const tracking = this.tracking;
    switch (type) {
      case Msg.Query:
        b.pendingRfq++;
        if (tracking) {
          if (startsWithSetOrReset(buf, start + 5, end)) this.settingsDirty = true;
          if (this.pinned === null && mayKeepSessionState(buf, start + 5, end)) this.pinIfSessionState(buf.toString('utf8', start + 5, end - 1));
          if (startsWithD(buf, start + 5, end) && this.onDeallocate(b, this.stmts.deallocate(b, buf.toString('utf8', start + 5, end - 1), queryMessage, Expect.Rfq))) return;
          b.expect(Expect.Rfq);
        }
        break;
      case Msg.FunctionCall:
        b.pendingRfq++;
        if (tracking) b.expect(Expect.Rfq);
        break;
      case Msg.Sync:
        b.pendingRfq++;
        this.extendedOpen = false;
        if (tracking) b.expect(Expect.Rfq);
        break;
      case Msg.Parse:
        this.extendedOpen = true;
        if (tracking) {
          if (this.pinned === null && mayKeepSessionState(buf, start + 5, end)) this.pinIfSessionState(buf.toString('utf8', start + 5, end));
          if (buf[start + 5] !== 0) {
            this.flushRun();
            const p = parseParse(buf, start, end);
            if (p !== null && !this.stmts.has(p.name)) this.statementTargets.set(p.name, this.ctx.classify(p.query).target);
            this.stmts.parse(b, buf, start, end, p);
            return;
          }
          // Drivers (psycopg) also send DEALLOCATE through the extended protocol.
          if (startsWithD(buf, start + 6, end) && this.onDeallocate(b, this.stmts.deallocateParse(b, buf, start, end))) return;
          b.expect(Expect.Parse);
        }
        break;
      case Msg.Bind:
        this.extendedOpen = true;
        // Unnamed portal + unnamed statement (the common case) is forwarded as is.
        if (tracking && !(buf[start + 5] === 0 && buf[start + 6] === 0)) {
          const st = bindStatement(buf, start, end);
          if (st !== null && st.name !== '' && this.stmts.has(st.name)) {
            this.flushRun();
            this.stmts.rewrite(b, type, buf, start, end, st.nameStart, st.nameEnd, st.name);
            return;
          }
        }
        break;
      case Msg.Describe:
      case Msg.Close:
        this.extendedOpen = true;
        if (tracking) {
          if (buf[start + 5] === 0x53 /* S */ && buf[start + 6] !== 0) {
            const t = targetOf(buf, start, end);
            if (t !== null && this.stmts.has(t.name)) {
              this.flushRun();
              if (type === Msg.Close) this.stmts.close(b, buf, start, end, t.nameStart, t.nameEnd, t.name);
              else this.stmts.rewrite(b, type, buf, start, end, t.nameStart, t.nameEnd, t.name);
              return;
            }
          }
          if (type === Msg.Close) b.expect(Expect.Close);
        }
        break;
      case Msg.Execute:
      case Msg.Flush:
        this.extendedOpen = true;
        break;
      case Msg.Terminate:
        this.flushRun();
        this.close('client_terminate');
        return;
      default:
        break; // CopyData / CopyDone / CopyFail: part of a running statement
    }
    if (this.runBuf === buf && this.runEnd === start) {
      this.runEnd = end;
      return;
    }
    this.flushRun();
    this.runBuf = buf;
    this.runStart = start;
    this.runEnd = end;
  }

  /**
   * Session state pgmux cannot move between backends (temporary tables, session advisory
   * locks, WITH HOLD cursors, LISTEN inside a transaction): rather than break silently, the
   * client keeps its backend from now on, as in session mode, until DISCARD ALL or it
   * disconnects. Counted in pgmux_pinned_clients and shown by SHOW CLIENTS.
   */
  private pinIfSessionState(sql: string): void {
    const m = SESSION_STATE.exec(sql);
    if (m === null) return;
    this.pinned = m[0].replace(/\s+/g, ' ').toLowerCase();
    this.ctx.logger.info({ client: this.id, user: this.user, db: this.database, reason: this.pinned }, 'client pinned to its backend (session state)');
  }

  private unpin(): void {
    if (this.pinned === null) return;
    this.ctx.logger.info({ client: this.id, reason: this.pinned }, 'client unpinned');
    this.pinned = null;
  }

  /** After stmts.deallocate(): true when the message was written (nothing more to do). */
  private onDeallocate(b: BackendConnection, r: 'sent' | 'drops-all' | 'discard-all' | null): boolean {
    if (r === 'discard-all') {
      // DISCARD ALL also resets settings and drops temporary state.
      this.unpin();
      b.applied.clear();
      b.syncedFingerprint = null;
    }
    return r === 'sent';
  }

  /** Writes a message pgmux built (after what is pending, keeping order). */
  private emit(msg: Buffer): void {
    this.flushRun();
    if (!this.backend!.write(msg)) this.pauseReading();
  }

  private flushRun(): void {
    const buf = this.runBuf;
    if (buf === null) return;
    this.runBuf = null;
    const b = this.backend;
    if (b === null) return;
    const out = this.runStart === 0 && this.runEnd === buf.length ? buf : buf.subarray(this.runStart, this.runEnd);
    if (!b.write(out)) this.pauseReading();
  }

  // ---- startup and authentication (src/session/handshake.ts) -------------------------

  private handshakeHost(): HandshakeHost {
    const session = this;
    return {
      get state() {
        return session.state;
      },
      write: (data) => this.socket.write(data),
      fatal: (spec, reason) => this.fatal(spec, reason),
      close: (reason) => this.close(reason),
      failWith: (err, reason) => this.failWith(err, reason),
      swapSocket: (upgrade) => {
        const plain = this.socket;
        this.unlisten(plain);
        // Errors of the accepted socket surface on the TLS socket; none may go unhandled.
        plain.on('error', () => {});
        this.socket = upgrade(plain);
        this.listen(this.socket);
      },
      identify: (who) => {
        this.user = who.user;
        this.database = who.database;
        this.applicationName = who.applicationName;
        this.reported = who.reported;
        this.settings = who.settings;
      },
      register: () => {
        if (!this.ctx.register(this)) return false;
        this.tracking = this.ctx.config().poolMode === 'transaction';
        return true;
      },
      setState: (state) => {
        this.state = state;
      },
      suspend: () => this.suspend(),
      resume: () => this.resume(),
      poolFor: (node) => this.poolFor(node),
      loggedIn: (how) => this.loggedIn(how),
    };
  }

  private loggedIn(how: LoggedIn): void {
    this.suspended = false;
    if (how.kind === 'admin') {
      this.admin = new AdminSession(this.ctx, this.adminHost(), how.role);
      this.state = ClientState.Admin;
      this.ctx.stats.clientLogins++;
    } else {
      this.reported = new Map(how.welcome);
      this.fingerprint = null;
      this.state = ClientState.Idle;
      this.ctx.stats.clientLogins++;
      this.ctx.logger.debug({ client: this.id, user: this.user, db: this.database, remote: this.remote }, 'client logged in');
    }
    this.resumeReading();
    this.drain();
  }

  private poolFor(node: NodeAddress): Pool {
    if (this.poolNode !== node || this.pool === null || this.pool.isClosed) {
      this.pool = this.ctx.pool(node, this.database, this.user);
      this.poolNode = node;
    }
    return this.pool;
  }

  // ---- transactions -----------------------------------------------------------------

  /**
   * Picks the node for the transaction whose first message is held[0]: reads (by the
   * classifier) to a replica chosen by the balancer, everything else to the primary.
   */
  private beginTransaction(): void {
    this.state = ClientState.Waiting;
    this.routeTransaction();
    // Waiting for a backend does not stop reading from the client: a client that waits
    // sends nothing more (or little, held above), and pausing and resuming its socket cost
    // two epoll_ctl calls plus Node's stream bookkeeping on every transaction that waits,
    // which with 1000 clients over a pool of 20 is nearly all of them.
  }

  private routeTransaction(): void {
    if (this.lsnPending) return; // resumed once the last write's LSN is known
    if (this.tracking && (this.answerPrepareLocally() || this.refuseSqlPrepared() || this.handleListen())) return;
    if (this.ctx.isPaused(this.database)) {
      this.ctx.park(this); // PAUSE: the transaction starts on RESUME
      return;
    }
    this.waitStartedAt = this.ctx.clock.now;
    const cfg = this.ctx.config();
    this.retryable = false;
    const route = cfg.poolMode === 'session' ? null : this.classifyFirst();
    if (route !== null && route.target === 'replica' && !this.mustReadFromPrimary(cfg)) {
      const choice = this.ctx.chooseRead(cfg.readYourWrites === 'lsn' ? this.minLsn : null, route.maxLagMs ?? null, this.avoidNode);
      if (this.ctx.logger.isLevelEnabled('debug')) {
        this.ctx.logger.debug({ client: this.id, node: choice.node?.name ?? null, reason: `${route.reason}; ${choice.reason}` }, 'route');
      }
      if (choice.node === null) {
        this.fatal(pgmuxError('noReadNode', { detail: choice.reason }), 'backend_lost');
        return;
      }
      this.routedTo = choice.node;
      this.routedWrite = false;
      this.poolFor(choice.node).acquire(this, this.ctx.clock.now);
      return;
    }
    this.routedWrite = true;
    const node = this.ctx.currentPrimary();
    if (node !== null) {
      this.routedTo = node;
      this.poolFor(node).acquire(this, this.ctx.clock.now);
      return;
    }
    // Failover in progress: wait for a primary rather than fail the client.
    this.ctx.primary(cfg.failoverTimeoutMs).then(
      (n) => this.acquireOn(n),
      (err: Error) => this.onAcquireFailed(err),
    );
  }

  private acquireOn(n: NodeAddress | null): void {
    if (this.state !== ClientState.Waiting) return;
    if (n === null) {
      this.failWith(new PgmuxError(pgmuxError('noPrimary')), 'backend_lost');
      return;
    }
    this.routedTo = n;
    this.poolFor(n).acquire(this, this.ctx.clock.now);
  }

  /**
   * A batch of only named Parse messages and a Sync, outside a transaction (libpq's
   * PQprepare, pgbench -M prepared, psycopg's prepare): pgmux records the statements and
   * answers ParseComplete itself; the Parse runs on a backend when a Bind or Describe
   * first needs it there. Taking a backend for it would make a synchronous prepare wait
   * for the pool while the same client program holds a backend in another connection's
   * open transaction: a deadlock with more clients than backends. The cost: an invalid
   * statement reports PostgreSQL's error at its first use instead of at Parse.
   */
  private answerPrepareLocally(): boolean {
    const held = this.held;
    const n = held.length;
    if (n < 2 || held[n - 1]!.type !== Msg.Sync) return false;
    const parsed = [];
    for (let i = 0; i < n - 1; i++) {
      const m = held[i]!;
      if (m.type !== Msg.Parse || m.buf[m.start + 5] === 0) return false;
      const p = parseParse(m.buf, m.start, m.end);
      if (p === null || this.stmts.has(p.name)) return false; // PostgreSQL must answer
      parsed.push(p);
    }
    // Remembered for routing: a later Bind of a read statement may go to a replica.
    for (const p of parsed) this.statementTargets.set(p.name, this.ctx.classify(p.query).target);
    this.stmts.remember(parsed);
    const out = Buffer.allocUnsafe(parsed.length * 5 + 6);
    for (let i = 0; i < parsed.length; i++) PARSE_COMPLETE.copy(out, i * 5);
    readyForQuery('I').copy(out, parsed.length * 5);
    this.clearHeld();
    this.state = ClientState.Idle;
    this.socket.write(out);
    this.resumeReading();
    return true;
  }

  /**
   * SQL-level PREPARE / EXECUTE / DEALLOCATE outside a transaction, in transaction mode:
   * the statement would live on one backend and the next EXECUTE land on another, so
   * pgmux says so up front (protocol-level prepared statements do work).
   */
  private refuseSqlPrepared(): boolean {
    const m = this.held[0]!;
    if (this.held.length !== 1 || m.type !== Msg.Query) return false;
    const sql = m.buf.toString('utf8', m.start + 5, m.end - 1);
    if (!isSqlPrepared(sql)) return false;
    this.clearHeld();
    this.state = ClientState.Idle;
    this.socket.write(
      Buffer.concat([
        errorResponse(
          pgmuxError('featureNotSupported', {
            message: 'SQL-level PREPARE, EXECUTE and DEALLOCATE are not supported in transaction pooling mode',
            detail: 'The prepared statement would stay on one database connection while the next transaction may run on another.',
            hint: 'Use protocol-level prepared statements (your driver\'s prepare/named statements), run them inside one transaction, or use pool_mode session.',
          }),
        ),
        readyForQuery('I'),
      ]),
    );
    this.resumeReading();
    return true;
  }

  /**
   * LISTEN / UNLISTEN as a whole simple Query, in transaction mode: the subscription lives
   * on pgmux's shared listener connection, not on a pooled backend (src/session/notifications.ts).
   */
  private handleListen(): boolean {
    const m = this.held[0]!;
    if (this.held.length !== 1 || m.type !== Msg.Query) return false;
    const cmd = parseListenCommand(m.buf.toString('utf8', m.start + 5, m.end - 1));
    if (cmd === null) return false;
    this.clearHeld();
    const done = (out: Buffer) => {
      if (this.state !== ClientState.Waiting) return;
      this.state = ClientState.Idle;
      this.socket.write(Buffer.concat([out, readyForQuery('I')]));
      this.resumeReading();
      this.drain();
    };
    if (cmd.kind === 'unlisten') {
      this.ctx.notifications.unsubscribe(this, this.database, this.user, cmd.channel);
      if (cmd.channel === null) this.listening = false;
      done(commandComplete('UNLISTEN'));
      return true;
    }
    this.listening = true;
    this.ctx.notifications.subscribe(this, this.database, this.user, cmd.channel!).then(
      () => done(commandComplete('LISTEN')),
      (err: Error) =>
        done(errorResponse(err instanceof PgmuxError ? { ...err.spec, severity: 'ERROR' } : pgmuxError('backendUnavailable', { detail: err.message }))),
    );
    return true;
  }

  private listening = false;
  private pendingNotifications: Buffer[] = [];

  /** A notification for this client: now if between messages, else after the transaction. */
  deliverNotification(msg: Buffer): void {
    if (this.state === ClientState.Closed) return;
    if (this.state === ClientState.Linked) this.pendingNotifications.push(msg);
    else this.socket.write(msg);
  }

  private flushNotifications(): void {
    if (this.pendingNotifications.length === 0 || this.state === ClientState.Closed) return;
    const out = Buffer.concat(this.pendingNotifications);
    this.pendingNotifications = [];
    this.socket.write(out);
  }

  private readPaused = false;

  private pauseReading(): void {
    if (!this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
  }

  private resumeReading(): void {
    if (this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  /** RESUME: the parked transaction goes on. */
  resumeFromPause(): void {
    if (this.state === ClientState.Waiting) this.beginTransaction();
  }

  /** True while a transaction holds (or waits for) a backend. */
  get inTransaction(): boolean {
    if (this.state === ClientState.Waiting) return true;
    const b = this.backend;
    // Session mode keeps a backend linked while idle: only a running transaction counts.
    return this.state === ClientState.Linked && b !== null && (b.txStatus !== 0x49 || b.pendingRfq > 0 || this.extendedOpen);
  }

  view(): ClientView {
    return {
      id: this.id,
      user: this.user,
      database: this.database,
      applicationName: this.applicationName,
      state: this.state,
      remote: this.remote,
      connectedAt: this.connectedAt,
      lastActiveAt: this.lastActiveAt,
      transactions: this.transactions,
      backendNode: this.backend?.node.name ?? null,
      backendPid: this.backend?.pid ?? null,
      preparedStatements: this.stmts.size,
      pinned: this.pinned,
    };
  }

  /** read_your_writes=window: reads stay on the primary for a while after a write. */
  private mustReadFromPrimary(cfg: ReturnType<ProxyContext['config']>): boolean {
    return cfg.readYourWrites === 'window' && this.ctx.clock.now - this.lastWriteAt < cfg.readYourWritesWindowMs;
  }

  /**
   * Classifies the first held message: Query text, Parse text, or a named statement's class.
   * A lone read sets `this.retryable` as a side result (no object per transaction for it).
   */
  private classifyFirst(): { readonly target: 'primary' | 'replica'; readonly reason: string; readonly maxLagMs?: number } {
    const m = this.held[0]!;
    const body = m.start + 5;
    switch (m.type) {
      case Msg.Query: {
        const c = this.ctx.classify(m.buf.toString('utf8', body, m.end - 1));
        // A lone read outside a transaction may be re-run elsewhere if its replica dies
        // before answering; nothing else may (onBackendAcquired checks it is still alone).
        this.retryable = c.target === 'replica' && c.statements === 1 && !c.beginsTransaction;
        return c;
      }
      case Msg.Parse: {
        const name = readCstr(m.buf, body, m.end);
        const query = name && readCstr(m.buf, name[1], m.end);
        if (!name || !query) return MALFORMED_PARSE;
        const c = this.ctx.classify(query[0]);
        if (name[0] !== '') this.statementTargets.set(name[0], c.target);
        return c;
      }
      case Msg.Bind: {
        const portal = readCstr(m.buf, body, m.end);
        const stmt = portal && readCstr(m.buf, portal[1], m.end);
        const target = stmt ? this.statementTargets.get(stmt[0]) : undefined;
        return target ? { target, reason: `prepared statement "${stmt![0]}"` } : UNKNOWN_STATEMENT;
      }
      default:
        return { target: 'primary', reason: `starts with message "${String.fromCharCode(m.type)}"` };
    }
  }

  onBackendAcquired(b: BackendConnection): void {
    if (this.state !== ClientState.Waiting) {
      (b.poolRef as Pool).release(b);
      return;
    }
    this.backend = b;
    b.link(this);
    this.state = ClientState.Linked;
    this.transactions++;
    this.ctx.countRouted(b.node, this.routedWrite ? 'write' : 'read', this.ctx.clock.now - this.waitStartedAt);
    // Only a read that is still alone (nothing more arrived with it or while it waited).
    this.retry = this.retryable && this.held.length === 1 ? this.held.slice() : null;
    this.replayBatch = this.retry === null && this.tracking && this.replayEligible() ? this.held.slice() : null;
    const sock = b.socket;
    sock.cork();
    // Fast path: the backend already carries exactly these settings (clients with the same
    // settings share one fingerprint string).
    const fp = this.settingsFingerprint();
    if (b.syncedFingerprint !== fp) {
      const sql = buildSyncSql(this, b);
      if (sql !== null) b.sendHidden(sql);
      b.syncedFingerprint = fp;
    }
    const held = this.held;
    this.clearHeld();
    for (let i = 0; i < held.length && this.state === ClientState.Linked; i++) {
      const m = held[i]!;
      this.forwardMessage(m.type, m.buf, m.start, m.end);
    }
    this.flushRun();
    sock.uncork();
    if (this.state === ClientState.Linked) {
      this.resumeReading();
      this.drain();
    }
  }

  onAcquireFailed(err: Error): void {
    if (this.state !== ClientState.Waiting) return;
    const failed = this.routedTo;
    // Unreachable, or a node shutting down / starting up: nothing was sent yet, try elsewhere.
    const unreachable =
      (err instanceof PgmuxError && err.spec.code === '08006') ||
      (err instanceof BackendError && (err.code === '57P01' || err.code === '57P02' || err.code === '57P03'));
    if (unreachable && failed !== null && this.attempts < MAX_ROUTE_ATTEMPTS) {
      this.attempts++;
      if (!this.routedWrite) {
        // A read whose node cannot be reached: any other eligible node will do.
        this.avoidNode = failed.name;
        this.beginTransaction();
        return;
      }
      // The primary cannot be reached: a failover may be under way. Nothing was sent yet,
      // so the transaction can wait for the next primary.
      this.ctx.primaryAfterFailure(failed, this.ctx.config().failoverTimeoutMs).then(
        (n) => this.acquireOn(n),
        (e: Error) => this.failWith(e, 'backend_lost'),
      );
      return;
    }
    this.failWith(err, err instanceof PgmuxError && err.spec.code === '53300' ? 'pool_timeout' : 'backend_lost');
  }

  onBackendData(buf: Buffer, start: number, end: number): void {
    this.ctx.stats.bytesOut += end - start;
    let out = start === 0 && end === buf.length ? buf : buf.subarray(start, end);
    if (this.replayBatch !== null) {
      if (this.replaying) return; // the failed attempt's tail, up to its ReadyForQuery
      // An ErrorResponse may be the stale-plan error that the batch is re-run for: hold it
      // until onBackendError has read it. Anything else means the batch is under way.
      if (this.backend !== null && this.backend.lastType === ERROR_RESPONSE) {
        this.replayBuf.push(Buffer.from(out));
        return;
      }
      this.replayBatch = null;
      if (this.replayBuf.length > 0) {
        out = Buffer.concat([...this.replayBuf, out]);
        this.replayBuf = [];
      }
    }
    if (this.retry !== null) {
      // A lone read that may still be re-run elsewhere: hold back what is not an answer
      // yet (notices, RowDescription), so a re-run does not show the client two.
      if (this.backend !== null && !this.backend.answered) {
        this.heldReply.push(Buffer.from(out));
        return;
      }
      this.retry = null; // the client sees an answer now: never re-run
      if (this.heldReply.length > 0) {
        out = Buffer.concat([...this.heldReply, out]);
        this.heldReply = [];
      }
    }
    if (!this.socket.write(out)) this.backend?.socket.pause();
  }

  onBackendReady(status: number): void {
    this.lastActiveAt = this.ctx.clock.now;
    this.stmts.batchDone();
    const b = this.backend;
    if (this.replaying && b !== null) {
      // Re-run the batch on the same backend: its statements now carry fresh proxy names,
      // so they are prepared again (hidden) with the new result type.
      const batch = this.replayBatch!;
      this.replaying = false;
      this.replayBatch = null;
      this.ctx.logger.info({ client: this.id }, 're-running a batch whose prepared statement changed shape (DDL)');
      b.socket.cork();
      for (const m of batch) this.forwardMessage(m.type, m.buf, m.start, m.end);
      this.flushRun();
      b.socket.uncork();
      return;
    }
    this.replayBatch = null;
    if (
      b !== null &&
      status === 0x49 &&
      b.pendingRfq === 0 &&
      !this.extendedOpen &&
      this.pinned === null &&
      this.ctx.config().poolMode === 'transaction'
    ) {
      const cfg = this.ctx.config();
      const needLsn = this.routedWrite && cfg.readYourWrites === 'lsn';
      const needSettings = this.settingsDirty && cfg.trackExtraParameters.length > 0;
      if (needLsn || needSettings) this.releaseAfterCapture(b, needLsn, needSettings ? cfg.trackExtraParameters : []);
      else {
        if (this.routedWrite) this.lastWriteAt = this.ctx.clock.now;
        this.releaseBackend(b);
      }
    }
  }

  /**
   * Before the backend goes back, one hidden query on it learns what the client needs
   * carried to its next backend:
   * - read_your_writes=lsn: how far the primary's WAL is (covers this client's commit);
   *   later reads only go to replicas that replayed that far;
   * - after a SET/RESET: the current values of the tracked unreported parameters
   *   (search_path, statement_timeout, ...), which PostgreSQL does not report.
   * The client's next transaction waits for the answer (one round trip).
   */
  private releaseAfterCapture(b: BackendConnection, lsn: boolean, params: readonly string[]): void {
    this.backend = null;
    this.state = ClientState.Idle;
    this.attempts = 0;
    this.avoidNode = null;
    this.settingsDirty = false;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    this.flushNotifications();
    this.lsnPending = true;
    const pool = b.poolRef as Pool;
    // NULL when the parameter is at the database's default (its reset value).
    const cols = params.map(
      (p) => `(SELECT CASE WHEN current_setting(${sqlLiteral(p)}, true) IS DISTINCT FROM reset_val THEN current_setting(${sqlLiteral(p)}, true) END FROM pg_settings WHERE name = ${sqlLiteral(p)})`,
    );
    if (lsn) cols.unshift('pg_current_wal_insert_lsn()');
    b.queryRow(`SELECT ${cols.join(', ')}`).then(
      (row) => {
        if (row !== null) {
          let i = 0;
          if (lsn) {
            const v = row[i++];
            if (v) this.minLsn = parseLsn(v);
          }
          for (const p of params) {
            const v = row[i++];
            // Carried to the client's next backends; this backend already has it.
            if (v == null) {
              this.settings.delete(p);
              b.applied.delete(p);
            } else {
              this.settings.set(p, v);
              b.applied.set(p, v);
            }
          }
          this.fingerprint = null;
          b.syncedFingerprint = null;
        }
        pool.release(b);
      },
      () => {
        if (lsn) {
          this.minLsn = null;
          this.lastWriteAt = this.ctx.clock.now;
        }
        if (b.clean) pool.release(b);
        else pool.discard(b, 'error');
      },
    ).finally(() => {
      this.lsnPending = false;
      if (this.state === ClientState.Waiting) this.beginTransaction();
    });
  }

  private releaseBackend(b: BackendConnection): void {
    this.backend = null;
    this.state = ClientState.Idle;
    this.attempts = 0;
    this.avoidNode = null;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    (b.poolRef as Pool).release(b);
    this.flushNotifications();
    // Shutting down: the transaction is over, so this client's turn is too.
    if (this.ctx.shuttingDown) this.fatal(pgmuxError('adminShutdown'), 'shutdown');
  }

  onBackendParameter(name: string, value: string): void {
    if (this.reported.get(name) !== value) {
      this.reported.set(name, value);
      this.fingerprint = null;
    }
  }

  /** Identifies this client's session settings; equal strings mean equal settings. */
  private fingerprint: string | null = null;
  private settingsFingerprint(): string {
    this.fingerprint ??= interned(settingsSignature(this.reported) + '\x01' + settingsSignature(this.settings));
    return this.fingerprint;
  }

  onBackendDrain(): void {
    if (this.state === ClientState.Linked) this.resumeReading();
  }

  /**
   * A visible error from the backend. "cached plan must not change result type": the
   * statements bound in this batch are stale on every backend; PostgreSQL's error reaches
   * the client once, and its retry prepares the statement afresh.
   */
  onBackendError(fields: Map<string, string>): void {
    const stale = this.stmts.onError(fields);
    if (this.replayBatch === null || this.replaying) return;
    if (stale) {
      // Nothing reached the client: drop the error, re-run the batch at ReadyForQuery.
      this.replaying = true;
      this.replayBuf = [];
      return;
    }
    const held = this.replayBuf;
    this.replayBatch = null;
    this.replayBuf = [];
    if (held.length > 0) this.socket.write(Buffer.concat(held));
  }

  /**
   * "cached plan must not change result type" can be hidden only when the client will see
   * the new shape: a whole batch, outside a transaction, that binds one of its named
   * statements and asks for a fresh description (node-postgres describes every execution).
   */
  private replayEligible(): boolean {
    const held = this.held;
    const n = held.length;
    if (n < 3 || held[0]!.type !== Msg.Bind || held[n - 1]!.type !== Msg.Sync) return false;
    let describe = false;
    for (let i = 0; i < n; i++) {
      const t = held[i]!.type;
      if (t === Msg.Describe) describe = true;
      else if (t === Msg.Parse || t === Msg.Query || (t === Msg.Sync && i !== n - 1)) return false;
    }
    if (!describe) return false;
    const m = held[0]!;
    const st = bindStatement(m.buf, m.start, m.end);
    return st !== null && this.stmts.has(st.name);
  }

  onBackendHiddenError(fields: Map<string, string>): void {
    // The settings pgmux tried to apply failed: its record of this backend is wrong.
    if (this.backend) this.backend.discardOnRelease = true;
    this.ctx.logger.warn({ client: this.id, code: fields.get('C'), message: fields.get('M') }, 'applying client settings on a backend failed');
  }

  onBackendLost(b: BackendConnection, why: string): void {
    this.backend = null;
    if (this.state === ClientState.Closed) return;
    if (this.retry !== null && this.attempts < MAX_ROUTE_ATTEMPTS) {
      // A lone read whose node died before any answer reached the client: run it elsewhere.
      this.ctx.logger.info({ client: this.id, node: b.node.name, why }, 're-running a read on another node');
      this.ctx.stats.readRetries++;
      this.attempts++;
      this.clearHeld();
      for (const m of this.retry) this.hold(m);
      this.retry = null;
      this.heldReply = []; // from the dead node: the re-run answers anew
      this.avoidNode = b.node.name;
      this.state = ClientState.Idle;
      this.beginTransaction();
      return;
    }
    this.fatal(pgmuxError('backendLost', { detail: why }), 'backend_lost');
  }

  /** The backend the client uses right now, if a query of its is running there. */
  get cancelTarget(): BackendConnection | null {
    const b = this.backend;
    return b !== null && b.pendingRfq > 0 ? b : null;
  }

  // ---- timeouts (called by the janitor) ---------------------------------------------

  sweep(now: number): void {
    const cfg = this.ctx.config();
    switch (this.state) {
      case ClientState.Startup:
      case ClientState.Auth:
      case ClientState.Login:
        if (cfg.clientLoginTimeoutMs > 0 && now - this.connectedAt > cfg.clientLoginTimeoutMs) {
          this.fatal(pgmuxError('loginTimeout', { detail: `client_login_timeout is ${cfg.clientLoginTimeoutMs} ms` }), 'login_timeout');
        }
        return;
      case ClientState.Idle:
        if (cfg.clientIdleTimeoutMs > 0 && now - this.lastActiveAt > cfg.clientIdleTimeoutMs) {
          this.fatal(pgmuxError('clientIdleTimeout'), 'idle_timeout');
        }
        return;
      case ClientState.Linked: {
        const b = this.backend;
        if (
          cfg.idleTransactionTimeoutMs > 0 &&
          b !== null &&
          b.pendingRfq === 0 &&
          b.txStatus !== 0x49 &&
          now - this.lastActiveAt > cfg.idleTransactionTimeoutMs
        ) {
          this.fatal(pgmuxError('idleInTransactionTimeout'), 'idle_transaction_timeout');
        }
        return;
      }
      default:
        return;
    }
  }

  // ---- ending -----------------------------------------------------------------------

  /** Sends an error built by pgmux; FATAL closes the connection. */
  fatal(spec: ErrorSpec, reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    if (!this.socket.destroyed) this.socket.write(errorResponse(spec));
    this.close(reason);
  }

  private failWith(err: Error, reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    if (err instanceof BackendError) {
      // The backend's own error, as FATAL: the client's login or transaction cannot go on.
      const f = err.fields;
      const spec: ErrorSpec = { severity: 'FATAL', code: f.get('C') ?? 'XX000', message: f.get('M') ?? 'backend error' };
      if (f.has('D')) spec.detail = f.get('D');
      if (f.has('H')) spec.hint = f.get('H');
      this.fatal(spec, reason);
    } else if (err instanceof PgmuxError) {
      this.fatal(err.spec, reason);
    } else {
      this.ctx.logger.error({ client: this.id, err }, 'unexpected error in client session');
      this.fatal(pgmuxError('backendUnavailable', { detail: err.message }), reason);
    }
  }

  close(reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    const wasLoggedIn = this.state !== ClientState.Startup && this.state !== ClientState.Auth;
    this.state = ClientState.Closed;
    this.closeReason = reason;
    this.clearHeld();
    this.runBuf = null;
    this.handshake.release();
    if (this.pool) this.pool.cancelWait(this);
    const b = this.backend;
    if (b !== null) {
      this.backend = null;
      this.returnBackend(b);
    }
    this.ctx.unregister(this);
    this.ctx.untrack(this);
    if (this.listening) this.ctx.notifications.unsubscribe(this, this.database, this.user, null);
    this.ctx.unpark(this);
    if (!this.socket.destroyed) {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 5000).unref();
    }
    if (wasLoggedIn) {
      this.ctx.logger.debug(
        { client: this.id, user: this.user, db: this.database, reason, durationMs: this.ctx.clock.now - this.connectedAt, transactions: this.transactions },
        'client closed',
      );
    }
  }

  /**
   * A client that leaves mid-transaction must leave nothing behind: its backend is closed
   * (PostgreSQL rolls back and frees locks), after a cancel if a query is still running.
   */
  private returnBackend(b: BackendConnection): void {
    const pool = b.poolRef as Pool;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    if (!b.clean) {
      if (b.pendingRfq > 0) this.ctx.cancelBackend(b);
      pool.discard(b, 'client_gone');
      return;
    }
    if (this.ctx.config().poolMode === 'session') {
      const reset = this.ctx.config().serverResetQuery;
      if (!reset) {
        b.applied.clear();
        b.syncedFingerprint = null;
        pool.release(b);
        return;
      }
      b.runInternal(reset).then(
        () => {
          b.applied.clear();
          b.syncedFingerprint = null;
          b.prepared.clear();
          pool.release(b);
        },
        () => pool.discard(b, 'reset_failed'),
      );
      return;
    }
    pool.release(b);
  }
}
