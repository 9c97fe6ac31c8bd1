// One client connection: its transactions, each run on a backend taken from a pool when the
// transaction starts and given back when it ends. Startup and login are delegated to
// handshake.ts, the admin console to adminSession.ts.
//
// What each message does on the linked backend, and when that backend may go back, is
// requestTracker.ts's; this file acts on it: it takes a backend when a transaction starts
// (routing), gives it back at the transaction boundary (after reading back what the client
// must carry), and handles what pgmux answers itself (LISTEN, local prepares).

import type net from 'node:net';
import { FrameError, FrameReader, type HeldMessage } from '../protocol/framer.js';
import { errorResponse, Msg, readCstr, readyForQuery } from '../protocol/messages.js';
import { BackendError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import { BackendConnection, randomInt32, type BackendOwner, type NodeAddress } from '../pool/backend.js';
import type { Pool, PoolWaiter } from '../pool/pool.js';
import type { ProxyContext } from '../server/context.js';
import type { ClientView } from '../admin/view.js';
import { buildSyncSql, settingsSignature } from './paramSync.js';
import { parseLsn } from '../cluster/topology.js';
import type { NotificationSink } from './notifications.js';
import { planListen, runListenPlan } from './listenRequests.js';
import { ClientListens } from './clientListens.js';
import { readBack } from './settingsTracker.js';
import { StatementForwarder } from './statementForwarder.js';
import { RequestTracker, type RequestHost } from './requestTracker.js';
import { ReplayGuard } from './replayGuard.js';
import { parseParse } from './preparedStatements.js';
import { AdminSession, type AdminHost } from './adminSession.js';
import { ClientHandshake, type HandshakeHost, type LoggedIn } from './handshake.js';
import { ADMIN_DATABASE, ClientState, type ClientCloseReason } from './clientState.js';
import { afterAcquireFailure, decideRoute, mayRetry, type RouteClient } from '../routing/policy.js';

export { ADMIN_DATABASE, ClientState, type ClientCloseReason };

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
const NONE: readonly string[] = [];

/** Proxy-issued cancel pids: start --workers puts the worker index in the high bits so keys are unique per group. */
export const cancelPidSpace = { high: 0, mask: 0x7fffffff };

/** What a client may send while it waits for a backend before pgmux stops reading it. */
const MAX_HELD_BYTES = 256 * 1024;


export class ClientSession implements BackendOwner, PoolWaiter, NotificationSink {
  readonly id = nextClientId++;
  /** Where the client is in its life; changed only by setState(). */
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
  private held: HeldMessage[] = [];
  /** Bytes in `held`: reading stops above MAX_HELD_BYTES while no backend is free. */
  private heldBytes = 0;

  /**
   * The one place the client's state changes (as PgBouncer's change_client_state): a
   * closed client never comes back, which every asynchronous continuation relies on.
   */
  private setState(next: ClientState): void {
    if (this.state === ClientState.Closed) return;
    this.state = next;
  }

  /** Still linked (forwarding may have closed the client). */
  private get linked(): boolean {
    return this.state === ClientState.Linked;
  }

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
  /** Lone reads re-run elsewhere, stale-plan batches re-run here (replayGuard.ts). */
  private readonly replay = new ReplayGuard();
  /** What the routing policy remembers of this client (read-your-writes, failed attempts). */
  private readonly routeState: RouteClient = { minLsn: null, lastWriteAt: -Infinity, avoidNode: null, attempts: 0 };
  private lsnPending = false;
  /** This transaction sent DDL that may change the database's functions: say so when it ends. */
  private functionsChanging = false;
  /** A transaction's first message arrived; route it after the rest of the read chunk. */
  private beginPending = false;
  private waitStartedAt = 0;
  /** This client's named prepared statements (transaction mode). */
  private readonly stmts: StatementForwarder;
  /** Per message on the linked backend: release bookkeeping, session effects, forwarding. */
  private readonly requests: RequestTracker;
  /** Subscriptions on the shared listener, and notifications waiting for a transaction's end. */
  private readonly listens: ClientListens;

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
    this.stmts = new StatementForwarder(ctx.statementNames, () => ctx.config().maxPreparedStatements, (msg) => this.requests.emit(msg));
    this.requests = new RequestTracker(this.requestHost(), this.stmts);
    this.listens = new ClientListens(ctx.notifications, this, () => this);
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
    let forwarded = false;
    while (this.state !== ClientState.Closed && !this.suspended && r.next()) {
      if (this.state === ClientState.Linked) {
        this.requests.forward(this.backend!, r.type, r.msg, r.msgStart, r.end);
        forwarded = true;
      } else this.handleMessage(r.type, r.msg, r.msgStart, r.bodyStart, r.end);
    }
    this.requests.flushRun();
    corked?.uncork();
    if (forwarded) {
      // A request sent after a lone read went to its backend too: the read may no longer run elsewhere.
      const held = this.replay.moreRequests();
      if (held !== null && this.state !== ClientState.Closed) this.socket.write(held);
    }
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
        this.setState(ClientState.Waiting);
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

  private requestHost(): RequestHost {
    return {
      classify: (sql) => this.ctx.classify(sql),
      pauseReading: () => this.pauseReading(),
      terminated: () => this.close('client_terminate'),
      listensOnBackend: (ops) => this.listens.movedToBackend(ops),
      functionsChanging: () => {
        this.functionsChanging = true;
      },
      discardedAll: () => this.listens.endAll(),
      log: (fields, msg) => this.ctx.logger.info({ client: this.id, user: this.user, db: this.database, ...fields }, msg),
    };
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
        this.requests.tracking = this.ctx.config().poolMode === 'transaction';
        return true;
      },
      setState: (state) => {
        this.setState(state);
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
      this.setState(ClientState.Admin);
      this.ctx.stats.clientLogins++;
    } else {
      this.reported = new Map(how.welcome);
      this.fingerprint = null;
      this.setState(ClientState.Idle);
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
    this.setState(ClientState.Waiting);
    this.routeTransaction();
    // Waiting for a backend does not stop reading from the client: a client that waits
    // sends nothing more (or little, held above), and pausing and resuming its socket cost
    // two epoll_ctl calls plus Node's stream bookkeeping on every transaction that waits,
    // which with 1000 clients over a pool of 20 is nearly all of them.
  }

  private routeTransaction(): void {
    if (this.lsnPending) return; // resumed once the last write's LSN is known
    if (this.requests.tracking && this.answerLocally()) return;
    const ctx = this.ctx;
    const cfg = ctx.config();
    const paused = ctx.isPaused(this.database);
    // Paused, or session mode: the policy looks at no statement, so none is classified.
    const route = paused || cfg.poolMode === 'session' ? null : this.requests.classifyFirst(this.held[0]!);
    this.retryable = route !== null && this.requests.loneRead;
    // A read calling a function the database's catalog says is VOLATILE may write.
    const volatile = route !== null && route.target === 'replica' && route.calls !== undefined ? ctx.volatileCall(this.database, this.user, route.calls) : null;
    if (volatile !== null && typeof volatile === 'object') {
      void volatile.then(this.routeAgain); // the catalog is loading: once per database and after DDL
      return;
    }
    if (volatile !== null) this.retryable = false; // it may have written: never re-run
    const view = { topology: ctx.topology(), disabledNodes: ctx.disabledNodes, paused, now: ctx.clock.now };
    const d = decideRoute({ route, volatile }, this.routeState, view, cfg, ctx.readBalancer);
    if (ctx.logger.isLevelEnabled('debug')) ctx.logger.debug({ client: this.id, decision: d.kind, node: d.kind === 'node' ? d.node.name : null, reason: d.reason }, 'route');
    this.waitStartedAt = ctx.clock.now;
    switch (d.kind) {
      case 'park':
        ctx.park(this); // the transaction starts on RESUME
        return;
      case 'error':
        this.fatal(pgmuxError(d.error, { detail: d.detail }), 'backend_lost');
        return;
      case 'node':
        this.routedWrite = d.write;
        this.acquireOn(ctx.nodeAddress(d.node));
        return;
      case 'waitForPrimary':
        this.routedWrite = true;
        ctx.primary(d.timeoutMs).then(
          (n) => this.acquireOn(n),
          (err: Error) => this.onAcquireFailed(err),
        );
        return;
    }
  }

  private readonly routeAgain = (): void => {
    if (this.state === ClientState.Waiting) this.routeTransaction();
  };

  private acquireOn(n: NodeAddress | null): void {
    if (this.state !== ClientState.Waiting) return;
    if (n === null) {
      const waitedMs = this.ctx.config().failoverTimeoutMs;
      const detail = `This transaction needs the primary (a write, a read inside read_your_writes_window, or a read no replica can serve yet); pgmux waited failover_timeout (${waitedMs} ms) for one.`;
      this.failWith(new PgmuxError(pgmuxError('noPrimary', { detail })), 'backend_lost');
      return;
    }
    this.routedTo = n;
    this.poolFor(n).acquire(this, this.ctx.clock.now);
  }

  /** What pgmux answers itself at a transaction's start, without a backend. */
  private answerLocally(): boolean {
    const reply = this.requests.prepareLocally(this.held) ?? this.requests.refuseSqlPrepared(this.held);
    if (reply === null) return this.handleListen();
    this.clearHeld();
    this.setState(ClientState.Idle);
    this.socket.write(reply);
    this.resumeReading();
    return true;
  }

  /**
   * LISTEN / UNLISTEN alone at a transaction's start, simple or extended protocol: the
   * subscription lives on pgmux's shared listener connection, not on a pooled backend
   * (src/session/notifications.ts); pgmux answers as PostgreSQL would.
   */
  private handleListen(): boolean {
    const plan = planListen(this.held, (sql) => this.ctx.classify(sql), this.requests.listenStatements);
    if (plan === null) return false;
    this.clearHeld();
    this.requests.forgetFirst();
    // Named like any other statement, so a later batch that mixes it with others still works.
    if (plan.parsed.length > 0) this.requests.remember(plan.parsed.filter((p) => !this.stmts.has(p.name)));
    runListenPlan(plan, this.listens.change, (out) => this.finishListen(out));
    return true;
  }

  private finishListen(out: Buffer[]): void {
    if (this.state !== ClientState.Waiting) return;
    this.setState(ClientState.Idle);
    out.push(readyForQuery('I'));
    this.socket.write(Buffer.concat(out));
    this.resumeReading();
    this.drain();
  }

  /** A notification for this client: now if between messages, else after the transaction. */
  deliverNotification(msg: Buffer): void {
    if (this.state === ClientState.Closed) return;
    // Inside a transaction it waits for the transaction's end, as PostgreSQL's own would.
    if (this.state === ClientState.Linked && !this.requests.atTransactionBoundary(this.backend!)) this.listens.hold(msg);
    else this.socket.write(msg);
  }

  private readonly flushNotifications = (): void => {
    const out = this.state === ClientState.Closed ? null : this.listens.take();
    if (out !== null) this.socket.write(out);
  };

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
    return this.state === ClientState.Linked && b !== null && !this.requests.atTransactionBoundary(b);
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
      pinned: this.requests.pinned,
    };
  }

  onBackendAcquired(b: BackendConnection): void {
    if (this.state !== ClientState.Waiting) {
      (b.poolRef as Pool).release(b);
      return;
    }
    this.backend = b;
    b.link(this);
    this.setState(ClientState.Linked);
    this.transactions++;
    this.ctx.countRouted(b.node, this.routedWrite ? 'write' : 'read', this.ctx.clock.now - this.waitStartedAt);
    // Only a read that is still alone (nothing more arrived with it or while it waited).
    this.replay.arm(this.held, this.retryable, this.requests.tracking ? this.statementKnown : null);
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
    for (let i = 0; i < held.length && this.linked; i++) {
      const m = held[i]!;
      this.requests.forward(b, m.type, m.buf, m.start, m.end);
    }
    this.requests.flushRun();
    sock.uncork();
    if (this.linked) {
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
    const d = afterAcquireFailure(this.routeState, failed?.name ?? null, this.routedWrite, unreachable, this.ctx.config());
    switch (d.kind) {
      case 'reroute':
        this.routeState.attempts++;
        this.routeState.avoidNode = d.avoidNode;
        this.beginTransaction();
        return;
      case 'waitForNewPrimary':
        this.routeState.attempts++;
        this.ctx.primaryAfterFailure(failed!, d.timeoutMs).then(
          (n) => this.acquireOn(n),
          (e: Error) => this.failWith(e, 'backend_lost'),
        );
        return;
      case 'fail':
        this.failWith(err, err instanceof PgmuxError && err.spec.code === '53300' ? 'pool_timeout' : 'backend_lost');
        return;
    }
  }

  onBackendData(buf: Buffer, start: number, end: number): void {
    this.ctx.stats.bytesOut += end - start;
    const out = this.replay.filter(start === 0 && end === buf.length ? buf : buf.subarray(start, end), this.backend);
    if (out === null) return;
    if (!this.socket.write(out)) this.backend?.socket.pause();
  }

  onBackendReady(status: number): void {
    this.lastActiveAt = this.ctx.clock.now;
    this.stmts.batchDone();
    const b = this.backend;
    const batch = this.replay.takeReplay();
    if (batch !== null && b !== null) {
      // Re-run the batch on the same backend: its statements now carry fresh proxy names,
      // so they are prepared again (hidden) with the new result type.
      this.ctx.logger.info({ client: this.id }, 're-running a batch whose prepared statement changed shape (DDL)');
      b.socket.cork();
      for (const m of batch) this.requests.forward(b, m.type, m.buf, m.start, m.end);
      this.requests.flushRun();
      b.socket.uncork();
      return;
    }
    if (b === null || !this.requests.atTransactionBoundary(b)) return;
    if (this.functionsChanging) {
      // Committed (or rolled back) now: others see the change from here on, not before.
      this.functionsChanging = false;
      this.ctx.functionsChanged(this.database);
    }
    if (this.requests.mayRelease(b)) {
      const cfg = this.ctx.config();
      const needLsn = this.routedWrite && cfg.readYourWrites === 'lsn';
      const settings = this.requests.settings.dirty ? this.requests.settings.take(this.settings, b.applied, cfg.trackExtraParameters) : NONE;
      if (needLsn || settings.length > 0) this.releaseAfterCapture(b, needLsn, settings);
      else {
        if (this.routedWrite) this.routeState.lastWriteAt = this.ctx.clock.now;
        this.releaseBackend(b);
      }
    } else if (this.requests.pinned !== null && this.listens.anyWaiting) {
      // The client keeps its backend; what the shared listener heard meanwhile goes out
      // after the ReadyForQuery now on its way.
      queueMicrotask(this.flushNotifications);
    }
  }

  /**
   * Before the backend goes back, one hidden query on it learns what the client needs
   * carried to its next backend:
   * - read_your_writes=lsn: how far the primary's WAL is (covers this client's commit);
   *   later reads only go to replicas that replayed that far;
   * - after a SET / RESET / set_config(): the current values of the unreported settings it
   *   named (search_path, statement_timeout, custom GUCs, ...), which PostgreSQL does not
   *   report (src/session/settingsTracker.ts).
   * The client's next transaction waits for the answer (one round trip).
   */
  private releaseAfterCapture(b: BackendConnection, lsn: boolean, params: readonly string[]): void {
    if (params.length > 0 && this.ctx.logger.isLevelEnabled('debug')) {
      this.ctx.logger.debug({ client: this.id, settings: params }, 'reading back settings the transaction may have changed');
    }
    this.backend = null;
    this.requests.detach();
    this.setState(ClientState.Idle);
    this.routeState.attempts = 0;
    this.routeState.avoidNode = null;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    this.flushNotifications();
    this.lsnPending = true;
    const pool = b.poolRef as Pool;
    readBack(b, lsn, params, this.settings).then(
      (walLsn) => {
        if (walLsn !== null) this.routeState.minLsn = parseLsn(walLsn);
        if (params.length > 0) this.fingerprint = null;
        pool.release(b);
      },
      () => {
        if (lsn) {
          this.routeState.minLsn = null;
          this.routeState.lastWriteAt = this.ctx.clock.now;
        }
        // What the backend carries is no longer known: never hand it to another client.
        if (b.clean && params.length === 0) pool.release(b);
        else pool.discard(b, 'error');
      },
    ).finally(() => {
      this.lsnPending = false;
      if (this.state === ClientState.Waiting) this.beginTransaction();
    });
  }

  private releaseBackend(b: BackendConnection): void {
    this.backend = null;
    this.requests.detach();
    this.setState(ClientState.Idle);
    this.routeState.attempts = 0;
    this.routeState.avoidNode = null;
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
    const held = this.replay.onError(fields, this.stmts.onError(fields));
    if (held !== null) this.socket.write(held);
  }

  private readonly statementKnown = (name: string): boolean => this.stmts.has(name);

  onBackendHiddenError(fields: Map<string, string>): void {
    // The settings pgmux tried to apply failed: its record of this backend is wrong.
    if (this.backend) this.backend.discardOnRelease = true;
    this.ctx.logger.warn({ client: this.id, code: fields.get('C'), message: fields.get('M') }, 'applying client settings on a backend failed');
  }

  onBackendLost(b: BackendConnection, why: string): void {
    this.backend = null;
    this.requests.detach();
    if (this.state === ClientState.Closed) return;
    const read = this.replay.takeRead();
    if (read !== null && mayRetry(this.routeState)) {
      // A lone read whose node died before any answer reached the client: run it elsewhere.
      this.ctx.logger.info({ client: this.id, node: b.node.name, why }, 're-running a read on another node');
      this.ctx.stats.readRetries++;
      this.routeState.attempts++;
      // The statement its Parse defined lived on the dead backend only: the re-run defines it.
      if (read.parsed !== null) this.stmts.forget(read.parsed);
      this.stmts.batchDone();
      this.clearHeld();
      for (const m of read.messages) this.hold(m);
      this.routeState.avoidNode = b.node.name;
      this.setState(ClientState.Idle);
      this.beginTransaction();
      return;
    }
    this.fatal(pgmuxError('backendLost', { detail: why }), 'backend_lost');
  }

  /** The backend the client uses right now, if a query of its is running there. */
  get cancelTarget(): BackendConnection | null {
    const b = this.backend;
    return b !== null && this.requests.queryRunning(b) ? b : null;
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
          this.requests.idleInTransaction(b) &&
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
    this.setState(ClientState.Closed);
    this.closeReason = reason;
    this.clearHeld();
    this.requests.detach();
    this.handshake.release();
    if (this.pool) this.pool.cancelWait(this);
    const b = this.backend;
    if (b !== null) {
      this.backend = null;
      this.returnBackend(b);
    }
    this.ctx.unregister(this);
    this.ctx.untrack(this);
    this.listens.endAll();
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
   * A client that leaves must leave nothing behind. Mid-transaction: its backend is closed
   * (PostgreSQL rolls back and frees locks), after a cancel if a query is still running.
   * Pinned (session state pgmux could not carry) or in session mode: the backend is reset
   * with server_reset_query before anyone else gets it, and closed if that fails or no
   * reset query is configured.
   */
  private returnBackend(b: BackendConnection): void {
    const pool = b.poolRef as Pool;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    if (!b.clean) {
      if (this.requests.queryRunning(b)) this.ctx.cancelBackend(b);
      pool.discard(b, 'client_gone');
      return;
    }
    if (this.ctx.config().poolMode === 'session') {
      // Session mode: PgBouncer's rule, the reset query runs when one is configured.
      if (this.ctx.config().serverResetQuery) b.needsReset = true;
      else {
        b.applied.clear();
        b.syncedFingerprint = null;
      }
    }
    pool.release(b); // resets first when needsReset (pinned, or session mode)
  }
}
