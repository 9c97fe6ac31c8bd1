// One client connection: its messages, its transactions and its end. Startup and login are
// handshake.ts's, the admin console adminSession.ts's; what each message does on the linked
// backend, and when that backend may go back, requestTracker.ts's; where a transaction runs
// and how its backend goes back, transactionRouter.ts's. This file holds them together and
// handles what pgmux answers itself (LISTEN, local prepares).

import type net from 'node:net';
import { FrameError, FrameReader } from '../protocol/framer.js';
import { CANCEL_REQUEST_CODE, errorResponse, FrontendMsg, readyForQuery } from '../protocol/messages.js';
import { BackendError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import { BackendConnection, randomInt32, type BackendOwner } from '../pool/backend.js';
import type { Pool, PoolWaiter } from '../pool/pool.js';
import type { SessionContext } from './sessionContext.js';
import type { ClientView } from '../admin/view.js';
import type { Logger } from '../observability/logger.js';
import { alignSettings, ClientSettings } from './paramSync.js';
import type { NotificationSink } from './notifications.js';
import { ClientListens } from './clientListens.js';
import { StatementForwarder } from './statementForwarder.js';
import { RequestTracker, type RequestHost } from './requestTracker.js';
import { ReplayGuard } from './replayGuard.js';
import { AdminSession, type AdminHost } from './adminSession.js';
import { ClientHandshake, type HandshakeHost, type LoggedIn } from './handshake.js';
import { ADMIN_DATABASE, ClientState, type ClientCloseReason } from './clientState.js';
import { TransactionRouter, type RouterHost } from './transactionRouter.js';
import { ClientSocket } from './clientSocket.js';
import { isProxyTrusted, parseProxyHeader, PROXY_HEADER_AS_LENGTH } from '../net/proxyProtocol.js';
import { inReadBuffer } from '../net/leanSocket.js';
import { HeldMessages } from './heldMessages.js';
import { FunctionChanges } from './functionChanges.js';
import { expiredTimeout, fatalSpecOf, frameErrorSpec } from './clientErrors.js';
import { UNRESOLVED, type DatabaseTarget } from '../config/databases.js';
import { planListen } from './listenRequests.js';
import type { ListenOp } from '../routing/sessionEffects.js';
import { TrafficMeter } from '../observability/trafficStats.js';
import type { Classification } from '../routing/classifier.js';
import { SessionCache, WAIT_FOR_CATALOG, type SessionCacheHost } from './sessionCache.js';
import { headStarted, joinPipeline, pipelineTarget, queuedBehind, selfContainedUnit, type PipelineMember } from '../pool/pipeline.js';

export { ADMIN_DATABASE, ClientState, type ClientCloseReason };

let nextClientId = 1;
/** Classifier reasons that mean "one statement that writes, for certain" (refused locally on a replica-only entry). */
const SURE_WRITES: ReadonlySet<string> = new Set(['INSERT', 'UPDATE', 'DELETE', 'MERGE']);
const isListen = (op: ListenOp): boolean => op.kind === 'listen';
const NONE: readonly string[] = [];
const EMPTY_HEADER = Buffer.alloc(0);

/** Proxy-issued cancel pids: start --workers puts the worker index in the high bits so keys are unique per group. */
export const cancelPidSpace = { high: 0, mask: 0x7fffffff };

export class ClientSession implements BackendOwner, PoolWaiter, NotificationSink, PipelineMember, RouterHost {
  readonly id = nextClientId++;
  /** Where the client is in its life; changed only by setState(). */
  state = ClientState.Startup;
  /** Proxy-issued cancel key (BackendKeyData). */
  readonly pid = cancelPidSpace.high | (randomInt32() & cancelPidSpace.mask);
  readonly secret: number;
  user = '';
  /** The database the client asked for (HBA, limits, PAUSE and SHOW see this name). */
  database = '';
  /** What that name and user resolved to at login: entry, backend database and user, pool mode, route. */
  target: DatabaseTarget = UNRESOLVED;
  applicationName = '';
  /** Its session settings (reported and unreported), carried to every backend it uses. */
  readonly clientSettings = new ClientSettings();
  backend: BackendConnection | null = null;
  readonly connectedAt: number;
  lastActiveAt: number;
  closeReason: ClientCloseReason | null = null;
  transactions = 0;
  /** Times its requests and transactions into its (database, user) pair's totals (from login on). */
  readonly meter = new TrafficMeter();
  /**
   * This connection's logger, made on first use: a pino child per connection costs more
   * than the rest of a short connection's setup, and most connections never log.
   */
  get log(): Logger {
    return (this.logger ??= this.ctx.logger.child(this.logBindings));
  }
  private logger: Logger | null = null;
  private logBindings: { client: number; user?: string; db?: string };

  private readonly reader: FrameReader;
  /** Startup, TLS, authentication and login; afterwards what the connection counts against. */
  private readonly handshake: ClientHandshake;
  /** What the client sent while its transaction waits for a backend. */
  private readonly held = new HeldMessages();

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

  /** Where each transaction gets its backend and how it goes back (transactionRouter.ts). */
  private readonly router: TransactionRouter;
  /** Lone reads re-run elsewhere, stale-plan batches re-run here (replayGuard.ts). */
  private readonly replay = new ReplayGuard();
  /** DDL that may change the database's functions: told when sent and when its transaction ends. */
  private readonly functionChanges: FunctionChanges;
  /** A transaction's first message arrived; route it after the rest of the read chunk. */
  private beginPending = false;
  /** This client's named prepared statements (transaction mode). */
  private readonly stmts: StatementForwarder;
  /** Per message on the linked backend: release bookkeeping, session effects, forwarding. */
  private readonly requests: RequestTracker;
  /** Its part in the query cache (answers, captured replies, what its transactions write). */
  private readonly cache: SessionCache;
  /** Subscriptions on the shared listener, and notifications waiting for a transaction's end. */
  private readonly listens: ClientListens;

  /** The client's connection (plain, or TLS after the handshake upgraded it). */
  private readonly conn: ClientSocket;
  /** The waiting transaction is one self-contained unit (pipeline_depth > 1; src/pool/pipeline.ts). */
  pipelineUnit = false;
  /** Its unit is on this backend's wire behind other clients' (pipeline_depth). */
  private queuedOn: BackendConnection | null = null;
  /** The linked backend runs exactly one self-contained unit of this client: others may queue behind it. */
  private unitOpen = false;
  /** Nothing read yet: a TLS ClientHello now means direct TLS. */
  private firstData = true;
  /**
   * The sender is a trusted load balancer: its first bytes must be a PROXY header, buffered
   * here until whole (null when no header is expected, the case for every other connection).
   */
  private proxyHeader: Buffer | null = null;

  constructor(
    socket: net.Socket,
    private ctx: SessionContext,
    /** Accepted on the Unix-domain socket listener. */
    unix = false,
  ) {
    this.logBindings = { client: this.id };
    this.secret = ctx.registry.newSecret();
    this.reader = new FrameReader(ctx.config().maxMessageBytes, false);
    this.stmts = new StatementForwarder(ctx.statementNames, () => ctx.config().maxPreparedStatements, (msg) => this.requests.emit(msg), this.meter);
    this.requests = new RequestTracker(this.requestHost(), this.stmts, this.meter);
    this.cache = new SessionCache(ctx, this.requests, this.cacheHost());
    this.listens = new ClientListens(ctx.notifications, this, () => ({ database: this.target.dbname, user: this.target.backendUser }));
    this.router = new TransactionRouter(ctx, this);
    this.functionChanges = new FunctionChanges(ctx, () => this.target.dbname);
    this.connectedAt = this.lastActiveAt = ctx.clock.now;
    this.conn = new ClientSocket(socket, {
      data: (chunk) => this.onData(chunk),
      drain: () => void this.backend?.socket.resume(),
      gone: () => this.close('client_gone'),
    }, unix);
    ctx.registry.track(this);
    if (!unix && isProxyTrusted(ctx.config().proxyProtocolTrusted, this.conn.address)) this.proxyHeader = EMPTY_HEADER;
    const conn = this.conn;
    // Getters: a PROXY header replaces the address after the handshake is made.
    this.handshake = new ClientHandshake(ctx, this.handshakeHost(), this.reader, {
      id: this.id,
      get address() {
        return conn.address;
      },
      get remote() {
        return conn.remote;
      },
      pid: this.pid,
      secret: this.secret,
    });
  }

  get remote(): string {
    return this.conn.remote;
  }

  // ---- client -> pgmux ------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.proxyHeader !== null) {
      const rest = this.onProxyHeaderBytes(chunk);
      if (rest === null) return;
      chunk = rest;
    }
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
    this.meter.record.bytesReceived += chunk.length;
    this.reader.push(chunk);
    this.drain();
    if (inReadBuffer(chunk)) this.keepOutOfReadBuffer(chunk.buffer);
  }

  /**
   * Bytes from a trusted load balancer before the PostgreSQL stream: the PROXY header, which
   * may arrive in pieces or with the startup packet behind it. Returns what follows the
   * header (null: nothing yet, or the connection was refused). A trusted sender must send a
   * header: without one, a client that can reach pgmux past the balancer would pass for the
   * balancer and its address would decide HBA.
   */
  private onProxyHeaderBytes(chunk: Buffer): Buffer | null {
    // Before login every chunk is the socket's own (never the lean path's shared buffer): kept as is.
    const buf = this.proxyHeader!.length === 0 ? chunk : Buffer.concat([this.proxyHeader!, chunk]);
    const header = parseProxyHeader(buf);
    switch (header.kind) {
      case 'incomplete':
        this.proxyHeader = buf;
        return null;
      case 'absent':
        // A bare CancelRequest needs no address (only its key counts): a peer forwarding one
        // (peers) sends no header, and may well sit in the balancer's trusted range.
        if (buf.length < 8) {
          this.proxyHeader = buf;
          return null;
        }
        if (buf.readInt32BE(0) === 16 && buf.readInt32BE(4) === CANCEL_REQUEST_CODE) {
          this.proxyHeader = null;
          return buf;
        }
        this.refuseProxyHeader(pgmuxError('proxyHeaderMissing'), 'connection from a proxy_protocol_trusted address without a PROXY header refused');
        return null;
      case 'invalid':
        this.refuseProxyHeader(pgmuxError('proxyHeaderInvalid', { detail: header.problem }), 'invalid PROXY protocol header', header.problem);
        return null;
      case 'proxied':
        if (this.ctx.logger.isLevelEnabled('debug')) this.log.debug({ remote: `${header.address}:${header.port}`, via: this.remote }, 'client address from a PROXY header');
        this.conn.carry(header.address, header.port);
        break;
      case 'local':
        break;
    }
    this.proxyHeader = null;
    if (buf.length === header.length) return null;
    return buf.subarray(header.length);
  }

  /** A PROXY header refused: counted, logged with the sender's own address, FATAL 08P01. */
  private refuseProxyHeader(spec: ErrorSpec, message: string, problem?: string): void {
    this.ctx.stats.proxyHeaderRefusals++;
    this.log.warn({ remote: this.remote, problem }, message);
    this.fatal(spec, 'proxy_header');
  }

  /** The reader saw a PROXY header where a startup packet belongs: the sender is not trusted. */
  private onUntrustedProxyHeader(): void {
    // No address: the peer reset the connection before it was accepted (HAProxy ends its
    // health checks with a reset, its header already sent). Nobody is left to refuse or report.
    if (this.conn.address === '') {
      this.close('client_gone');
      return;
    }
    this.refuseProxyHeader(pgmuxError('proxyHeaderUntrusted'), 'PROXY protocol header from an address not in proxy_protocol_trusted refused');
  }

  /**
   * The chunk was a view of the lean path's shared read buffer, which the next read (of any
   * socket) overwrites: whatever still points into it is copied now. The unread tail of the
   * reader, messages waiting for a backend, and requests kept for a re-run; forwarded runs
   * were written already (writes copy what they cannot send at once).
   */
  private keepOutOfReadBuffer(memory: ArrayBufferLike): void {
    this.requests.flushRun();
    this.reader.keepOutOf(memory);
    this.held.keepOutOf(memory);
    this.replay.keepOutOf(memory);
  }

  /** Handles every whole message buffered, as far as the state allows. */
  private drain(): void {
    const r = this.reader;
    // One write per read chunk, even when pgmux adds or rewrites messages in it.
    const corked = this.backend;
    corked?.cork();
    let forwarded = false;
    while (this.state !== ClientState.Closed && !this.suspended && r.next()) {
      if (this.state === ClientState.Linked && this.mayForward(this.backend!)) {
        this.requests.forward(this.backend!, r.type, r.msg, r.msgStart, r.end);
        forwarded = true;
      } else this.handleMessage(r.type, r.msg, r.msgStart, r.bodyStart, r.end);
    }
    this.requests.flushRun();
    corked?.uncork();
    if (forwarded) {
      this.unitOpen = false; // more than one unit now: nobody queues behind it
      // A request sent after a lone read went to its backend too: the read may no longer run elsewhere.
      const held = this.replay.moreRequests();
      if (held !== null && this.state !== ClientState.Closed) this.conn.write(held);
    }
    if (this.beginPending) {
      this.beginPending = false;
      if (this.state === ClientState.Waiting) this.beginTransaction();
    }
    if (r.error !== FrameError.None && this.state !== ClientState.Closed) {
      if (this.state === ClientState.Startup) {
        if (PROXY_HEADER_AS_LENGTH.includes(r.errorLength)) this.onUntrustedProxyHeader();
        else this.handshake.onStartupFrameError(r.errorLength);
        return;
      }
      this.fatal(frameErrorSpec(r.error, r.errorLength, this.ctx.config().maxMessageBytes), 'protocol_error');
    }
  }

  /** Nothing held and no other client's unit on the wire behind this one's (pipelining keeps units whole). */
  private mayForward(b: BackendConnection): boolean {
    return queuedBehind(b) === 0 && this.held.list.length === 0;
  }

  /** An async step runs (login, auth_query lookup, admin command): later messages wait in the reader. */
  private suspended = false;

  private suspend(): void {
    this.suspended = true;
    this.conn.pauseReading();
  }

  /** The async step ended: handle what waited, unless the connection closed meanwhile. */
  private resume(): void {
    this.suspended = false;
    if (this.state === ClientState.Closed) return;
    this.conn.resumeReading();
    this.drain();
  }

  /** The admin console session, once logged in to it. */
  private admin: AdminSession | null = null;

  private adminHost(): AdminHost {
    return {
      write: (data) => this.conn.write(data),
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
        if (type === FrontendMsg.Terminate) {
          this.close('client_terminate');
          return;
        }
        // The route is chosen once everything already received is held (see drain()).
        this.held.hold({ type, buf, start, end });
        this.setState(ClientState.Waiting);
        this.beginPending = true;
        return;
      case ClientState.Waiting:
      case ClientState.Linked:
        if (this.state === ClientState.Waiting) this.pipelineUnit = false; // no longer alone: routing decides again
        // No backend yet, or other clients' units are on the wire behind this one's (they
        // must stay whole): what the client sends meanwhile waits here, up to a bound.
        this.held.hold({ type, buf, start, end });
        if (this.held.full) this.conn.pauseReading();
        return;
      case ClientState.Admin:
        this.admin!.onMessage(type, buf, bodyStart, end);
        return;
      default:
        return;
    }
  }

  private cacheHost(): SessionCacheHost {
    const session = this;
    return {
      get target() {
        return session.target;
      },
      get user() {
        return session.user;
      },
      clientSettings: this.clientSettings,
      lastWriteAt: () => this.router.lastWriteAt,
      routedWrite: () => this.router.routedWrite,
      knownStatement: (name) => this.stmts.statement(name),
      routeAfterCatalog: () => {
        if (this.state === ClientState.Waiting) this.beginTransaction();
      },
    };
  }

  private requestHost(): RequestHost {
    return {
      classify: (sql) => this.ctx.classify(sql),
      pauseReading: () => this.conn.pauseReading(),
      terminated: () => this.close('client_terminate'),
      listensOnBackend: (ops) => this.listens.movedToBackend(ops),
      functionsChanging: () => this.functionChanges.sent(),
      requestSent: (c) => this.cache.requestSent(c),
      discardedAll: () => this.listens.endAll(),
      log: (fields, msg) => this.log.info(fields, msg),
    };
  }

  // ---- startup and authentication (src/session/handshake.ts) -------------------------

  private handshakeHost(): HandshakeHost {
    const session = this;
    return {
      get state() {
        return session.state;
      },
      get log() {
        return session.log;
      },
      write: (data) => this.conn.write(data),
      fatal: (spec, reason) => this.fatal(spec, reason),
      close: (reason) => this.close(reason),
      failWith: (err, reason) => this.failWith(err, reason),
      swapSocket: (upgrade) => this.conn.swap(upgrade),
      identify: (who) => {
        this.user = who.user;
        this.database = who.database;
        this.applicationName = who.applicationName;
        this.clientSettings.reported = who.reported;
        this.clientSettings.settings = who.settings;
        this.logBindings = { client: this.id, user: who.user, db: who.database };
        this.logger = null;
      },
      register: () => {
        return this.ctx.registry.register(this);
      },
      resolved: (target) => {
        this.target = target;
        this.requests.tracking = target.poolMode === 'transaction';
      },
      setState: (state) => this.setState(state),
      suspend: () => this.suspend(),
      resume: () => this.resume(),
      poolFor: (node) => this.router.poolFor(node),
      loggedIn: (how) => this.loggedIn(how),
    };
  }

  private loggedIn(how: LoggedIn): void {
    this.suspended = false;
    this.ctx.stats.clientLogins++;
    this.meter.record = this.ctx.traffic.recordFor(this.database, this.user);
    if (how.kind === 'admin') {
      this.admin = new AdminSession(this.ctx, this.adminHost(), how.role);
      this.setState(ClientState.Admin);
    } else {
      this.clientSettings.welcome(how.welcome, how.fingerprint);
      this.setState(ClientState.Idle);
      // Logins (and TLS) stay on the standard path; forwarding may go lean from here.
      if (this.ctx.config().leanIo) this.conn.readLean();
      if (this.ctx.logger.isLevelEnabled('debug')) this.log.debug({ remote: this.remote }, 'client logged in');
    }
    this.conn.resumeReading();
    this.drain();
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
    if (this.router.lsnPending) return; // resumed once the last write's LSN is known
    if (this.requests.tracking && this.answerLocally()) return;
    const paused = this.ctx.admin.isPaused(this.database);
    // Paused, or session mode: the policy looks at no statement, so none is classified.
    const cfg = this.ctx.config();
    const route = paused || this.target.poolMode === 'session' ? null : this.requests.classifyFirst(this.held.list[0]!);
    this.cache.transactionStarting();
    this.pipelineUnit = cfg.pipelineDepth > 1 && route !== null && this.requests.selfContained && this.requests.pinned === null && selfContainedUnit(this.held.list);
    this.router.route(route, route !== null && this.requests.loneRead, paused);
  }

  // ---- RouterHost: the session is its router's host itself (no object and closures per client)

  get session(): ClientSession {
    return this;
  }

  get waiting(): boolean {
    return this.state === ClientState.Waiting;
  }

  routeAgain(): void {
    this.beginTransaction();
  }

  settingsChanged(): void {
    this.clientSettings.changed();
  }

  /** What pgmux answers itself at a transaction's start, without a backend. */
  private answerLocally(): boolean {
    const held = this.held.list;
    const m = held[0]!;
    // A lone simple Query's analysis, taken once and kept for forwarding (classifyFirst reads
    // it next) when nothing here answers it; null for anything else.
    const lone = held.length === 1 && m.type === FrontendMsg.Query ? this.requests.queryClass(m.buf, m.start, m.end) : null;
    if (lone !== null) this.requests.rememberFirst(lone, m);
    const reply =
      this.requests.prepareLocally(held) ??
      this.requests.refuseSqlPrepared(lone) ??
      this.answerPgpoolShow(lone) ??
      this.refuseReplicaWrite(lone) ??
      this.refuseReplicaListen(held, lone) ??
      this.cache.answer(held, lone);
    if (reply === WAIT_FOR_CATALOG) return true; // routed again once the relation catalog is loaded
    if (reply === null) return this.listens.answer(this.held, this.requests, (sql) => this.ctx.classify(sql), this.finishListen);
    this.held.take();
    this.setState(ClientState.Idle);
    this.conn.write(reply);
    this.conn.resumeReading();
    return true;
  }

  /** Pgpool-II's `SHOW pool_nodes` / `pool_version` sent alone, as Pgpool-II users' checks do. */
  private answerPgpoolShow(lone: Classification | null): Buffer | null {
    if (lone?.pgpoolShow === undefined) return null;
    this.requests.forgetFirst();
    const rows = this.ctx.admin.pgpoolShow(lone.pgpoolShow);
    const answer = rows ?? errorResponse(pgmuxError('pgpoolShowUnsupported', { args: { name: lone.pgpoolShow } }));
    return Buffer.concat([answer, readyForQuery('I')]);
  }

  /**
   * A lone statement the classifier is sure writes (its whole reason is INSERT, UPDATE,
   * DELETE or MERGE), on a replica-only entry: refused here with the replica's own SQLSTATE
   * and a message naming the entry. Anything less certain goes to the replica, which decides.
   */
  private refuseReplicaWrite(lone: Classification | null): Buffer | null {
    if (this.target.route !== 'replica' || lone === null || lone.statements !== 1 || !SURE_WRITES.has(lone.reason)) return null;
    this.requests.forgetFirst();
    return Buffer.concat([errorResponse(pgmuxError('replicaOnlyWrite', { args: { database: this.database } })), readyForQuery('I')]);
  }

  /**
   * LISTEN on a replica-only entry: notifications come from the primary, which this entry
   * never uses. UNLISTEN alone (drivers send `UNLISTEN *` on reset) is answered as usual.
   */
  private refuseReplicaListen(held: HeldMessages['list'], lone: Classification | null): Buffer | null {
    if (this.target.route !== 'replica') return null;
    const m = held[0]!;
    if (m.type === FrontendMsg.Query) {
      if (lone === null || lone.session?.onlyListen !== true || !lone.session.listen!.some(isListen)) return null;
    } else {
      const plan = planListen(held, (sql) => this.ctx.classify(sql), this.requests.listenStatements);
      if (plan === null || !plan.steps.some((s) => !Buffer.isBuffer(s) && isListen(s))) return null;
    }
    this.requests.forgetFirst();
    return Buffer.concat([errorResponse(pgmuxError('replicaOnlyListen', { args: { database: this.database } })), readyForQuery('I')]);
  }


  private readonly finishListen = (out: Buffer[]): void => {
    if (this.state !== ClientState.Waiting) return;
    this.setState(ClientState.Idle);
    out.push(readyForQuery('I'));
    this.conn.write(Buffer.concat(out));
    this.conn.resumeReading();
    this.drain();
  };

  /** A notification for this client: now if between messages, else after the transaction. */
  deliverNotification(msg: Buffer): void {
    if (this.state === ClientState.Closed) return;
    // Inside a transaction it waits for the transaction's end, as PostgreSQL's own would.
    if (this.state === ClientState.Linked && !this.requests.atTransactionBoundary(this.backend!)) this.listens.hold(msg);
    else this.conn.write(msg);
  }

  private readonly flushNotifications = (): void => {
    if (this.state !== ClientState.Closed) this.listens.flush(this.conn.write);
  };

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
      poolUser: this.target.backendUser || this.user,
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
    this.router.acquired(b);
    // Only a read that is still alone (nothing more arrived with it or while it waited).
    this.replay.arm(this.held.list, this.router.retryable, this.requests.tracking ? this.statementKnown : null);
    b.cork();
    alignSettings(this.clientSettings, b, this.clientSettings.fingerprint);
    const held = this.held.take();
    // One extended-protocol unit of one statement is one request: it runs what routing read.
    for (let i = 0; i < held.length && this.linked; i++) {
      const m = held[i]!;
      this.requests.forward(b, m.type, m.buf, m.start, m.end);
    }
    this.requests.flushRun();
    b.uncork();
    if (this.pipelineUnit && this.router.pipelineSafe && this.linked) {
      this.unitOpen = true;
      headStarted(b);
    }
    if (this.linked) {
      this.conn.resumeReading();
      this.drain();
    }
  }

  // ---- pipelining (pipeline_depth, experimental; src/pool/pipeline.ts) ---------------

  /** Others may write their unit behind this client's on its backend. */
  get pipelineHeadOpen(): boolean {
    return this.unitOpen && this.state === ClientState.Linked;
  }

  /** Every backend of `pool` is busy: the unit goes on the wire behind a running one, if one may take it. */
  joinPipeline(pool: Pool): boolean {
    const busy = pool.busyWhenFull();
    if (busy === null) return false;
    const b = pipelineTarget(busy, this.ctx.config().pipelineDepth, this.clientSettings.fingerprint);
    if (b === null) return false;
    const unit = this.held.take();
    this.cache.dropCapture(); // a queued unit's reply is not captured (kept simple: pipelining is experimental)
    // A read nothing answered yet: re-run elsewhere if the backend dies before its turn.
    this.replay.arm(unit, true, this.requests.tracking ? this.statementKnown : null);
    this.requests.forgetFirst();
    this.queuedOn = b;
    joinPipeline(b, this, unit);
    this.ctx.stats.pipelined++;
    let parses = 0;
    let binds = 0;
    for (const m of unit) {
      if (m.type === FrontendMsg.Parse) parses++;
      else if (m.type === FrontendMsg.Bind) binds++;
    }
    this.meter.unitSent(parses, binds);
    return true;
  }

  onPipelineTurn(b: BackendConnection): void {
    this.queuedOn = null;
    this.backend = b;
    b.link(this);
    this.setState(ClientState.Linked);
    this.transactions++;
    this.router.acquired(b);
    this.unitOpen = true;
    // Sent while it was queued: forwarded now unless units are queued behind this one too.
    if (this.held.list.length > 0 && queuedBehind(b) === 0) {
      const held = this.held.take();
      b.cork();
      for (const m of held) this.requests.forward(b, m.type, m.buf, m.start, m.end);
      this.requests.flushRun();
      b.uncork();
      this.unitOpen = false;
    }
    this.conn.resumeReading();
  }

  onPipelineLost(b: BackendConnection, why: string): void {
    this.queuedOn = null;
    this.meter.abandon();
    if (this.state === ClientState.Closed) return;
    const later = this.held.take();
    const read = this.replay.takeRead();
    if (read !== null && this.router.rerouteAfterLoss(b.node)) {
      this.log.info({ node: b.node.name, why }, 're-running a queued read on another node');
      this.ctx.stats.readRetries++;
      this.stmts.batchDone();
      for (const m of read.messages) this.held.hold(m);
      for (const m of later) this.held.hold(m);
      this.beginTransaction();
      return;
    }
    this.fatal(pgmuxError('backendLost', { detail: why }), 'backend_lost');
  }

  onAcquireFailed(err: Error): void {
    this.router.acquireFailed(err);
  }

  onBackendData(buf: Buffer, start: number, end: number): void {
    this.ctx.stats.bytesOut += end - start;
    this.meter.record.bytesSent += end - start;
    const out = this.replay.filter(start === 0 && end === buf.length ? buf : buf.subarray(start, end), this.backend);
    if (out === null) return;
    this.cache.replyData(out);
    if (!this.conn.write(out)) this.backend?.socket.pause();
  }

  onBackendReady(status: number): void {
    this.lastActiveAt = this.ctx.clock.now;
    this.meter.answered(status);
    this.stmts.batchDone();
    const b = this.backend;
    const batch = this.replay.takeReplay();
    // The request's reply is complete (its first ReadyForQuery); a re-run batch is not stored.
    this.cache.replyDone(batch === null, b !== null && b.node.name === this.ctx.nodes.topology().primary?.name);
    if (batch !== null && b !== null) {
      // Re-run the batch on the same backend: its statements now carry fresh proxy names,
      // so they are prepared again (hidden) with the new result type.
      this.log.info('re-running a batch whose prepared statement changed shape (DDL)');
      b.cork();
      for (const m of batch) this.requests.forward(b, m.type, m.buf, m.start, m.end);
      this.requests.flushRun();
      b.uncork();
      return;
    }
    if (b === null || !this.requests.atTransactionBoundary(b)) return;
    this.functionChanges.ended(); // committed or rolled back now
    this.cache.transactionEnded();
    if (this.requests.mayRelease(b)) {
      const settings = this.requests.settings.dirty ? this.requests.settings.take(this.clientSettings.settings, b.applied, this.ctx.config().trackExtraParameters) : NONE;
      this.letGo(b);
      this.router.release(b, settings);
      // Shutting down: the transaction is over, so this client's turn is too.
      if (this.ctx.shuttingDown && !this.router.lsnPending) this.fatal(pgmuxError('adminShutdown'), 'shutdown');
      // What it sent while others' units were queued behind its own starts its next transaction.
      else if (this.held.list.length > 0) this.replayHeld();
    } else if (this.requests.pinned !== null && this.listens.anyWaiting) {
      // The client keeps its backend; what the shared listener heard meanwhile goes out
      // after the ReadyForQuery now on its way.
      queueMicrotask(this.flushNotifications);
    }
  }

  /** Messages held while linked (pipelining) are handled as if they arrived now, while idle. */
  private replayHeld(): void {
    for (const m of this.held.take()) this.handleMessage(m.type, m.buf, m.start, m.start + 5, m.end);
    if (this.beginPending) {
      this.beginPending = false;
      if (this.state === ClientState.Waiting) this.beginTransaction();
    }
    if (this.state !== ClientState.Closed) this.conn.resumeReading();
  }

  /** The transaction is over: the client lets go of its backend (the router gives it back). */
  private letGo(b: BackendConnection): void {
    this.unitOpen = false;
    this.backend = null;
    this.requests.detach();
    this.setState(ClientState.Idle);
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    this.flushNotifications();
  }

  onBackendParameter(name: string, value: string): void {
    this.clientSettings.report(name, value);
  }

  onBackendDrain(): void {
    if (this.state === ClientState.Linked) this.conn.resumeReading();
  }

  /**
   * A visible error from the backend. "cached plan must not change result type": the
   * statements bound in this batch are stale on every backend; PostgreSQL's error reaches
   * the client once, and its retry prepares the statement afresh.
   */
  onBackendError(fields: Map<string, string>): void {
    this.meter.record.error(fields.get('C'));
    const held = this.replay.onError(fields, this.stmts.onError(fields));
    if (held !== null) this.conn.write(held);
  }

  private readonly statementKnown = (name: string): boolean => this.stmts.has(name);

  onBackendHiddenError(fields: Map<string, string>): void {
    // The settings pgmux tried to apply failed: its record of this backend is wrong.
    if (this.backend) this.backend.discardOnRelease = true;
    this.log.warn({ code: fields.get('C'), message: fields.get('M') }, 'applying client settings on a backend failed');
  }

  onBackendLost(b: BackendConnection, why: string): void {
    this.backend = null;
    this.cache.dropCapture();
    this.cache.transactionEnded(); // a COMMIT may have run before the connection died
    this.requests.detach();
    this.meter.abandon();
    if (this.state === ClientState.Closed) return;
    const read = this.replay.takeRead();
    if (read !== null && this.router.rerouteAfterLoss(b.node)) {
      // A lone read whose node died before any answer reached the client: run it elsewhere.
      this.log.info({ node: b.node.name, why }, 're-running a read on another node');
      this.ctx.stats.readRetries++;
      // The statement its Parse defined lived on the dead backend only: the re-run defines it.
      if (read.parsed !== null) this.stmts.forget(read.parsed);
      this.stmts.batchDone();
      // Held: what the client sent after it while others' units were queued behind (pipelining).
      const later = this.held.take();
      for (const m of read.messages) this.held.hold(m);
      for (const m of later) this.held.hold(m);
      this.setState(ClientState.Idle);
      this.beginTransaction();
      return;
    }
    this.fatal(pgmuxError('backendLost', { detail: why }), 'backend_lost');
  }

  /** The backend the client uses right now, if a query of its is running there. */
  get cancelTarget(): BackendConnection | null {
    const b = this.backend;
    // Not while other clients' units wait behind this one: the cancel could land as the
    // next one starts (pipelining). A queued unit has no backend yet: nothing to cancel.
    return b !== null && this.requests.queryRunning(b) && queuedBehind(b) === 0 ? b : null;
  }

  /** Timeouts (called by the janitor). */
  sweep(now: number): void {
    const b = this.backend;
    const idleInTransaction = this.state === ClientState.Linked && b !== null && this.requests.idleInTransaction(b);
    const expired = expiredTimeout(this.state, this.ctx.config(), now, this.connectedAt, this.lastActiveAt, idleInTransaction);
    if (expired === null) return;
    // A balancer that never finished its header is counted with the other bad headers.
    if (this.proxyHeader !== null) this.refuseProxyHeader(expired.spec, 'PROXY protocol header not received within client_login_timeout');
    else this.fatal(expired.spec, expired.reason);
  }

  // ---- ending -----------------------------------------------------------------------

  /** Sends an error built by pgmux; FATAL closes the connection. */
  fatal(spec: ErrorSpec, reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    if (!this.conn.destroyed) this.conn.write(errorResponse(spec));
    this.meter.record.error(spec.code);
    this.close(reason);
  }

  failWith(err: Error, reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    if (!(err instanceof BackendError) && !(err instanceof PgmuxError)) this.log.error({ err }, 'unexpected error in client session');
    this.fatal(fatalSpecOf(err), reason);
  }

  close(reason: ClientCloseReason): void {
    if (this.state === ClientState.Closed) return;
    const wasLoggedIn = this.state !== ClientState.Startup && this.state !== ClientState.Auth;
    this.setState(ClientState.Closed);
    this.closeReason = reason;
    this.held.take();
    this.requests.detach();
    this.meter.abandon();
    this.handshake.release();
    this.router.cancelWait();
    if (this.queuedOn !== null) {
      this.queuedOn.pipeline!.abandon(this);
      this.queuedOn = null;
    }
    const b = this.backend;
    if (b !== null) {
      const cancel = this.cancelTarget !== null;
      this.backend = null;
      this.router.returnOnClose(b, cancel);
    }
    // Its transaction ends with the connection (rolled back, or committed just before).
    this.functionChanges.ended();
    this.ctx.registry.unregister(this);
    this.ctx.registry.untrack(this);
    this.listens.endAll();
    this.ctx.admin.unpark(this);
    this.conn.end();
    if (wasLoggedIn && this.ctx.logger.isLevelEnabled('debug')) {
      this.log.debug({ reason, durationMs: this.ctx.clock.now - this.connectedAt, transactions: this.transactions }, 'client closed');
    }
  }
}
