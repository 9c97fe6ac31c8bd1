// Where one client's transactions get their backend and how it goes back: asks the routing
// policy (src/routing/policy.ts) where the transaction runs and executes the decision
// (acquire from a pool, wait for a primary, park, fail), retries a failed connect, and at
// the transaction's end gives the backend back, after reading back what the client must
// carry to its next one (read-your-writes LSN, changed settings).
//
// The client session decides when (requestTracker.ts's release rule); this module decides
// where, and keeps what routing remembers of the client between transactions.

import type { BackendConnection, NodeAddress } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import { BackendError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import { parseLsn } from '../cluster/snapshot.js';
import { afterAcquireFailure, decideRoute, LSN_UNKNOWN, mayRetry, type RouteClass, type RouteClient, type RouteCommand, type RouteView } from '../routing/policy.js';
import type { SessionContext } from './sessionContext.js';
import type { ClientSession } from './clientSession.js';
import type { ClientCloseReason } from './clientState.js';
import { readBack } from './settingsTracker.js';
import { nowUs } from '../observability/trafficStats.js';

/** What the router needs from the client session. */
export interface RouterHost {
  /** The session as pools and PAUSE know it. */
  readonly session: ClientSession;
  /** The transaction still waits for its backend (the client may have closed meanwhile). */
  readonly waiting: boolean;
  fatal(spec: ErrorSpec, reason: ClientCloseReason): void;
  failWith(err: Error, reason: ClientCloseReason): void;
  /** Routes the waiting transaction again (another node, or the read-back ended). */
  routeAgain(): void;
  /** The read-back changed the client's settings: its fingerprint is stale. */
  settingsChanged(): void;
  /** The waiting transaction is one self-contained unit (pipeline_depth > 1; src/pool/pipeline.ts). */
  readonly pipelineUnit: boolean;
  /** Writes the unit behind a busy backend's running one when the pool is full; false when none may take it. */
  joinPipeline(pool: Pool): boolean;
}

export class TransactionRouter {
  private pool: Pool | null = null;
  private poolNode: NodeAddress | null = null;
  /** The node the current transaction was sent to. */
  private routedTo: NodeAddress | null = null;
  /** It went to the primary as a write (counted as one; read-your-writes tracks it). */
  routedWrite = true;
  /** A lone read that may run again elsewhere if its node dies before answering (replayGuard.ts). */
  retryable = false;
  /** What the routing policy remembers of this client (read-your-writes, failed attempts). */
  private readonly state: RouteClient = { minLsn: null, lastWriteAt: -Infinity, avoidNode: null, attempts: 0 };
  private readonly command: { -readonly [K in keyof RouteCommand]: RouteCommand[K] } = { route: null, volatile: null, only: 'any' };
  private view: { -readonly [K in keyof RouteView]: RouteView[K] } | null = null;
  /** The last write's LSN is being read: the next transaction waits for it. */
  lsnPending = false;
  /**
   * When the transaction started waiting for its backend (nowUs()): its first route(), so a
   * re-route after a failed connect or a function catalog load still counts from there.
   */
  private waitStartedUs = 0;
  private waitOpen = false;
  /** When the current route() began. */
  private routeStartedUs = 0;
  /** Inside route(): a backend acquired now was idle, and routeStartedUs is still current. */
  private routing = false;

  constructor(
    private readonly ctx: SessionContext,
    private readonly host: RouterHost,
  ) {}

  poolFor(node: NodeAddress): Pool {
    if (this.poolNode !== node || this.pool === null || this.pool.isClosed) {
      this.pool = this.ctx.pool(node, this.host.session.target);
      this.poolNode = node;
    }
    return this.pool;
  }

  /** The client leaves: it no longer waits in its pool's queue. */
  cancelWait(): void {
    this.pool?.cancelWait(this.host.session);
  }

  /**
   * Routes the transaction `route` describes (null: session mode, nothing classified).
   * `loneRead`: it is one read-only statement that may run again elsewhere.
   */
  route(route: RouteClass | null, loneRead: boolean, paused: boolean): void {
    const ctx = this.ctx;
    const session = this.host.session;
    this.retryable = loneRead;
    // A read calling a function the database's catalog says is VOLATILE may write.
    // Not for an entry with a fixed route: nothing would change where it runs.
    const only = session.target.route;
    const volatile = only === 'any' && route !== null && route.target === 'replica' && route.calls !== undefined ? ctx.volatileCall(session.target, route.calls) : null;
    const t = nowUs();
    if (!this.waitOpen) {
      this.waitStartedUs = t;
      this.waitOpen = true;
    }
    if (volatile !== null && typeof volatile === 'object') {
      void volatile.then(this.routeAgain); // the catalog is loading: once per database and after DDL
      return;
    }
    if (volatile !== null) this.retryable = false; // it may have written: never re-run
    // The policy's inputs are filled into objects this router keeps: nothing allocated per transaction for them.
    const cmd = this.command;
    cmd.route = route;
    cmd.volatile = volatile;
    cmd.only = only;
    const topology = ctx.nodes.topology();
    const view = (this.view ??= { topology, disabledNodes: ctx.nodes.disabledNodes, paused, now: ctx.clock.now });
    view.topology = topology;
    view.disabledNodes = ctx.nodes.disabledNodes;
    view.paused = paused;
    view.now = ctx.clock.now;
    const d = decideRoute(cmd, this.state, view, ctx.config(), ctx.nodes.readBalancer);
    if (ctx.logger.isLevelEnabled('debug')) session.log.debug({ decision: d.kind, node: d.kind === 'node' ? d.node.name : null, statement: route?.reason ?? null, reason: d.reason }, 'route');
    this.routeStartedUs = t;
    this.routing = true;
    try {
      this.execute(d);
    } finally {
      this.routing = false;
    }
  }

  private execute(d: ReturnType<typeof decideRoute>): void {
    const ctx = this.ctx;
    const session = this.host.session;
    switch (d.kind) {
      case 'park':
        ctx.admin.park(session); // the transaction starts on RESUME
        return;
      case 'error':
        this.host.fatal(pgmuxError(d.error, { detail: d.detail }), 'backend_lost');
        return;
      case 'node':
        this.routedWrite = d.write;
        this.acquireOn(ctx.nodes.nodeAddress(d.node));
        return;
      case 'waitForReplica':
        this.state.attempts++;
        ctx.nodes.replicaUp(d.timeoutMs).then(this.routeAgain, this.routeAgain);
        return;
      case 'waitForPrimary':
        this.routedWrite = true;
        ctx.nodes.primary(d.timeoutMs).then(
          (n) => this.acquireOn(n),
          (err: Error) => this.acquireFailed(err),
        );
        return;
    }
  }

  private readonly routeAgain = (): void => {
    if (this.host.waiting) this.host.routeAgain();
  };

  private acquireOn(n: NodeAddress | null): void {
    if (!this.host.waiting) return;
    if (n === null) {
      const waitedMs = this.ctx.config().failoverTimeoutMs;
      const detail = `This transaction needs the primary (a write, a read inside read_your_writes_window, or a read no replica can serve yet); pgmux waited failover_timeout (${waitedMs} ms) for one.`;
      this.host.failWith(new PgmuxError(pgmuxError('noPrimary', { detail })), 'backend_lost');
      return;
    }
    this.routedTo = n;
    const pool = this.poolFor(n);
    if (this.host.pipelineUnit && this.pipelineSafe && this.host.joinPipeline(pool)) return;
    pool.acquire(this.host.session, this.ctx.clock.now);
  }

  /**
   * The routed transaction may share a backend with other clients' (pipelining): it calls
   * no VOLATILE function (which may write or change settings), and its backend runs no
   * read-back query when it ends (that query would land behind the units queued after it).
   */
  get pipelineSafe(): boolean {
    return this.retryable && !(this.routedWrite && this.ctx.config().readYourWrites === 'lsn');
  }

  /** The transaction got its backend: counted for SHOW NODES and metrics. */
  acquired(b: BackendConnection): void {
    // An idle backend handed over within route() needs no second clock read.
    const t = this.routing ? this.routeStartedUs : nowUs();
    const waitedUs = t - this.waitStartedUs;
    this.waitOpen = false;
    this.ctx.countRouted(b.node, this.routedWrite ? 'write' : 'read', waitedUs / 1000);
    this.host.session.meter.linked(t, waitedUs);
  }

  acquireFailed(err: Error): void {
    if (!this.host.waiting) return;
    const failed = this.routedTo;
    // Unreachable, or a node shutting down / starting up: nothing was sent yet, try elsewhere.
    const unreachable =
      (err instanceof PgmuxError && err.spec.code === '08006') ||
      (err instanceof BackendError && (err.code === '57P01' || err.code === '57P02' || err.code === '57P03'));
    const d = afterAcquireFailure(this.state, failed?.name ?? null, this.routedWrite, unreachable, this.ctx.config());
    switch (d.kind) {
      case 'reroute':
        this.state.attempts++;
        this.state.avoidNode = d.avoidNode;
        this.host.routeAgain();
        return;
      case 'waitForNewPrimary':
        this.state.attempts++;
        this.ctx.nodes.primaryAfterFailure(failed!, d.timeoutMs).then(
          (n) => this.acquireOn(n),
          (e: Error) => this.host.failWith(e, 'backend_lost'),
        );
        return;
      case 'fail':
        this.host.failWith(err, err instanceof PgmuxError && err.spec.code === '53300' ? 'pool_timeout' : 'backend_lost');
        return;
    }
  }

  /** The backend of a lone read died before answering: true when the read may run again, avoiding that node. */
  rerouteAfterLoss(node: NodeAddress): boolean {
    if (!mayRetry(this.state)) return false;
    this.state.attempts++;
    this.state.avoidNode = node.name;
    return true;
  }

  /**
   * The transaction ended and the session let go of `b`: back to its pool, after reading
   * back what the client must carry when there is something (`settings`: unreported
   * settings its statements may have changed).
   */
  /** When this client's last write transaction ended (clock ms; -Infinity: none yet). */
  get lastWriteAt(): number {
    return this.state.lastWriteAt;
  }

  release(b: BackendConnection, settings: readonly string[]): void {
    this.state.attempts = 0;
    this.state.avoidNode = null;
    const needLsn = this.routedWrite && this.ctx.config().readYourWrites === 'lsn';
    if (needLsn || settings.length > 0) this.releaseAfterCapture(b, needLsn, settings);
    else {
      if (this.routedWrite) this.state.lastWriteAt = this.ctx.clock.now;
      (b.poolRef as Pool).release(b);
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
    const session = this.host.session;
    if (params.length > 0 && session.log.isLevelEnabled('debug')) {
      session.log.debug({ settings: params }, 'reading back settings the transaction may have changed');
    }
    this.lsnPending = true;
    const pool = b.poolRef as Pool;
    readBack(b, lsn, params, session.clientSettings.settings).then(
      (walLsn) => {
        if (walLsn !== null) this.state.minLsn = parseLsn(walLsn);
        if (params.length > 0) this.host.settingsChanged();
        pool.release(b);
      },
      () => {
        if (lsn) this.state.minLsn = LSN_UNKNOWN;
        // What the backend carries is no longer known: never hand it to another client.
        if (b.clean && params.length === 0) pool.release(b);
        else pool.discard(b, 'error');
      },
    ).finally(() => {
      this.lsnPending = false;
      if (this.host.waiting) this.host.routeAgain();
    });
  }

  /**
   * A client that leaves must leave nothing behind. Mid-transaction: its backend is closed
   * (PostgreSQL rolls back and frees locks), after a cancel if a query is still running.
   * Pinned (session state pgmux could not carry) or in session mode: the backend is reset
   * with server_reset_query before anyone else gets it, and closed if that fails or no
   * reset query is configured.
   */
  returnOnClose(b: BackendConnection, queryRunning: boolean): void {
    const pool = b.poolRef as Pool;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    if (!b.clean) {
      if (queryRunning) this.ctx.registry.cancelBackend(b);
      pool.discard(b, 'client_gone');
      return;
    }
    if (this.host.session.target.poolMode === 'session') {
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
