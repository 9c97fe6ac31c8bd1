// A bounded set of backends for one (node, database, user), and the queue of clients
// waiting for one. Handing a backend over is synchronous (a method call on the waiter),
// so the transaction hot path allocates no promise.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { BackendConnection, BackendState, type BackendCloseReason, type BackendCredentials, type ConnectOptions, type NodeAddress } from './backend.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import { backendTlsFor } from '../net/tls.js';
import { connectFailureCode, connectFailureText, connectRetryDelayMs, isPermanentLoginFailure } from './connectRetry.js';
import type { BudgetMember, ConnectionBudget } from './connectionBudget.js';

export interface PoolWaiter {
  onBackendAcquired(backend: BackendConnection): void;
  onAcquireFailed(err: Error): void;
}

interface Waiting {
  waiter: PoolWaiter;
  since: number;
}

export interface PoolStats {
  idle: number;
  active: number;
  connecting: number;
  waiting: number;
  maxWaitMs: number;
}

/** Process-wide counters pools add to (they outlive any one pool). */
export interface PoolCounters {
  backendResets: number;
  backendConnectFailures: number;
  /** Backend connect attempts, whatever their outcome. */
  backendConnects: number;
}

export interface PoolHooks {
  /** The pool closed itself after a login failure retrying cannot fix: forget it. */
  onDrop?(pool: Pool): void;
  /** Failure text already logged for this (node, database, user) by a pool dropped before. */
  knownFailure?: string | null;
  /**
   * How a backend is opened; BackendConnection.connect unless given. Only unit tests pass
   * one (a fake backend), so the pool's rules run without PostgreSQL.
   */
  connect?(opts: ConnectOptions): Promise<BackendConnection>;
  /**
   * max_db_connections / max_user_connections: budgets this pool shares with the other pools
   * of its node and database / user, and those pools (src/pool/connectionBudget.ts).
   */
  budgets?: readonly ConnectionBudget[];
  budgetMembers?(budget: ConnectionBudget): Iterable<BudgetMember>;
}

const NO_BUDGETS: readonly ConnectionBudget[] = [];

export class Pool implements BudgetMember {
  private idle: BackendConnection[] = [];
  private readonly active = new Set<BackendConnection>();
  private connecting = 0;
  private waiters: Waiting[] = [];
  private closed = false;
  /**
   * ParameterStatus values a backend reports right after login, per set of client startup
   * settings already proven valid on this pool: lets a client log in without touching a
   * backend when another client with the same settings did before.
   */
  readonly welcomeBySettings = new Map<string, ReadonlyArray<readonly [string, string]>>();
  totalConnects = 0;
  /** Consecutive failed connects; 0 once one succeeds. Connects started together count once. */
  private connectFailures = 0;
  /** While connects fail: no new one starts before this (Date.now() ms). */
  private retryAt = 0;
  /** The failure last logged at warn: logged again only when the text changes. */
  private loggedFailure: string | null;
  /** min_pool_size refills only pools that have connected at least once. */
  private everConnected = false;
  private readonly budgets: readonly ConnectionBudget[];

  constructor(
    readonly node: NodeAddress,
    readonly database: string,
    readonly user: string,
    private config: () => Config,
    private credentials: () => BackendCredentials,
    private logger: Logger,
    private counters: PoolCounters = { backendResets: 0, backendConnectFailures: 0, backendConnects: 0 },
    private readonly hooks: PoolHooks = {},
  ) {
    this.loggedFailure = hooks.knownFailure ?? null;
    this.budgets = hooks.budgets ?? NO_BUDGETS;
  }

  /** Why connects to this pool fail, while they do (as logged); null when they succeed. */
  get lastFailure(): string | null {
    return this.loggedFailure;
  }

  get size(): number {
    return this.idle.length + this.active.size + this.connecting;
  }

  stats(now: number): PoolStats {
    return {
      idle: this.idle.length,
      active: this.active.size,
      connecting: this.connecting,
      waiting: this.waiters.length,
      maxWaitMs: this.waiters.length > 0 ? now - this.waiters[0]!.since : 0,
    };
  }

  /**
   * The backends in use when every backend is and no more may open (pipelining's only case),
   * else null. Also null while clients wait in the queue: a unit queued on a backend gets it
   * before any waiter, so joining then would let reads overtake (and starve) a waiting write.
   */
  busyWhenFull(): ReadonlySet<BackendConnection> | null {
    return this.idle.length === 0 && this.waiters.length === 0 && this.size >= this.config().poolSize && !this.closed ? this.active : null;
  }

  backends(): BackendConnection[] {
    return [...this.active, ...this.idle];
  }

  acquire(waiter: PoolWaiter, now: number): void {
    if (this.closed) {
      waiter.onAcquireFailed(new PgmuxError(pgmuxError('backendUnavailable', { detail: `the pool for ${this.node.name} was closed` })));
      return;
    }
    const b = this.takeIdle(now);
    if (b !== null) {
      this.active.add(b);
      waiter.onBackendAcquired(b);
      return;
    }
    this.waiters.push({ waiter, since: now });
    this.maybeConnect();
  }

  /**
   * Runs one of pgmux's own one-row queries on a backend of this pool, taken in turn like a
   * client's, and gives the backend back: no other login or credentials needed.
   */
  queryRow(sql: string): Promise<Array<string | null> | null> {
    return new Promise((resolve, reject) => {
      this.acquire(
        {
          onBackendAcquired: (b) => {
            b.queryRow(sql).then(
              (row) => {
                this.release(b);
                resolve(row);
              },
              (err: Error) => {
                if (b.clean) this.release(b);
                else this.discard(b, 'error');
                reject(err);
              },
            );
          },
          onAcquireFailed: reject,
        },
        Date.now(),
      );
    });
  }

  /** Forgets a waiter that left (client closed) before it got a backend. */
  cancelWait(waiter: PoolWaiter): void {
    const i = this.waiters.findIndex((w) => w.waiter === waiter);
    if (i >= 0) this.waiters.splice(i, 1);
  }

  /** Gives a clean backend back: straight to the next waiter, else to the idle list. */
  release(b: BackendConnection): void {
    // Requests of other clients already on the wire behind this one: the next of them gets it.
    if (b.pipeline && b.pipeline.handOver(b)) return;
    const cfg = this.config();
    // pool_size lowered (RELOAD): a backend above it closes as it comes back, before any
    // reset, and is never handed out again. A fresh one from connectOne is not counted yet.
    if (b.state !== BackendState.Closed && !this.closed && (this.active.has(b) ? this.size : this.size + 1) > cfg.poolSize) {
      this.discard(b, 'pool_size');
      return;
    }
    if (b.needsReset && b.state !== BackendState.Closed && !this.closed && !b.discardOnRelease) {
      this.reset(b);
      return;
    }
    this.active.delete(b);
    if (b.state === BackendState.Closed) {
      this.maybeConnect();
      return;
    }
    if (this.closed) {
      b.close('shutdown');
      return;
    }
    if (b.discardOnRelease) {
      b.close('dirty');
      this.maybeConnect();
      return;
    }
    if (b.createdAt <= this.recycleBefore || (cfg.serverLifetimeMs > 0 && Date.now() - b.createdAt > cfg.serverLifetimeMs)) {
      b.close(b.createdAt <= this.recycleBefore ? 'recycled' : 'lifetime');
      this.maybeConnect();
      return;
    }
    const next = this.waiters.shift();
    if (next !== undefined) {
      this.active.add(b);
      next.waiter.onBackendAcquired(b);
      return;
    }
    // Another pool of the same node waits for a max_db/max_user_connections slot: it gets this one.
    if (this.budgetWanted()) {
      b.close('budget');
      return;
    }
    b.lastReleasedAt = Date.now();
    this.idle.push(b);
  }

  /**
   * Nothing a client left on a backend reaches the next one: server_reset_query (DISCARD ALL
   * by default) runs first, still counted as active; a failed reset, or none configured,
   * closes the backend instead.
   */
  private reset(b: BackendConnection): void {
    const query = this.config().serverResetQuery;
    if (!query) {
      this.discard(b, 'reset_failed');
      return;
    }
    this.counters.backendResets++;
    b.resets++;
    b.runInternal(query).then(
      () => {
        b.needsReset = false;
        b.applied.clear();
        b.syncedFingerprint = null;
        b.prepared.clear();
        this.release(b);
      },
      (err: Error) => {
        this.logger.warn({ node: this.node.name, db: this.database, user: this.user, err: err.message }, 'server_reset_query failed; closing the backend');
        this.discard(b, 'reset_failed');
      },
    );
  }

  /** Backends created before this are closed when next released (RECONNECT). */
  private recycleBefore = 0;

  /** The backend is closed when released (RECONNECT, a changed role): PgBouncer's close_needed. */
  closeNeeded(b: BackendConnection): boolean {
    return b.discardOnRelease || b.createdAt <= this.recycleBefore;
  }

  /** Closes idle backends now and busy ones when they come back; new ones replace them. */
  recycle(before: number): void {
    this.recycleBefore = before;
    for (const b of this.idle.splice(0)) b.close('recycled');
  }

  /** Closes a backend that must not be reused (dirty, broken). */
  discard(b: BackendConnection, reason: BackendCloseReason): void {
    this.active.delete(b);
    const i = this.idle.indexOf(b);
    if (i >= 0) this.idle.splice(i, 1);
    b.close(reason);
    this.maybeConnect();
  }

  private takeIdle(now: number): BackendConnection | null {
    const cfg = this.config();
    const lifetime = cfg.serverLifetimeMs;
    while (this.idle.length > 0) {
      const b = this.idle.pop()!; // most recently used first: warm caches
      if (b.state !== BackendState.Idle) continue;
      if (lifetime > 0 && now - b.createdAt > lifetime) {
        b.close('lifetime');
        continue;
      }
      if (this.size + 1 > cfg.poolSize) {
        b.close('pool_size'); // the popped one is no longer counted in size
        continue;
      }
      return b;
    }
    return null;
  }

  /**
   * Brings the pool to the current pool_size (RELOAD changes it under the pool): idle
   * backends above it close now, busy ones as they come back (release); waiters get new
   * connects at once when it grew.
   */
  fitToSize(): void {
    const poolSize = this.config().poolSize;
    while (this.size > poolSize && this.idle.length > 0) this.idle.shift()!.close('pool_size'); // least recently used first
    this.maybeConnect();
  }

  /** After a failed connect: only one at a time, and not before the backoff delay ran out. */
  private mayRetry(now: number): boolean {
    return this.connecting === 0 && now >= this.retryAt;
  }

  private maybeConnect(): void {
    if (this.connectFailures > 0 && !this.mayRetry(Date.now())) return;
    const cfg = this.config();
    while (!this.closed && this.waiters.length > this.connecting && this.size < cfg.poolSize) {
      const spent = this.spentBudget();
      if (spent !== null) {
        spent.wait(this, this.hooks.budgetMembers?.(spent) ?? []);
        return;
      }
      this.connectOne();
      // While connects fail, one probe at a time: the node sees one attempt per backoff step.
      if (this.connectFailures > 0) return;
    }
  }

  /** The first budget with no slot left, or null when a backend may open. */
  private spentBudget(): ConnectionBudget | null {
    for (const b of this.budgets) if (!b.hasRoom()) return b;
    return null;
  }

  sharesBudget(b: ConnectionBudget): boolean {
    return this.budgets.includes(b);
  }

  /** A backend coming back idle: does another pool wait for a slot of one of our budgets? */
  private budgetWanted(): boolean {
    let wanted = false;
    for (const x of this.budgets) {
      if (!x.hasWaiters) continue;
      x.leave(this); // nobody of ours waits (or release would have handed it over)
      if (x.hasWaiters) wanted = true;
    }
    return wanted;
  }

  // BudgetMember: the budgets ask the pools sharing them.
  giveUpIdle(): boolean {
    const b = this.idle.shift(); // least recently used
    if (b === undefined) return false;
    b.close('budget');
    return true;
  }

  onBudgetFreed(): void {
    for (const b of this.budgets) b.leave(this);
    if (!this.closed) this.maybeConnect();
  }

  /**
   * The slot goes back once the socket has closed, not when pgmux decides to close it: the
   * node counts the backend until its process exits, and the budget promises the node a count.
   */
  private giveBackWhenGone(b: BackendConnection): void {
    if (this.budgets.length === 0) return;
    const giveBack = () => {
      for (const x of this.budgets) x.give();
    };
    if (b.socket.closed) giveBack();
    else b.socket.once('close', giveBack);
  }

  private connectOne(): void {
    const cfg = this.config();
    for (const b of this.budgets) b.take();
    this.connecting++;
    this.totalConnects++;
    this.counters.backendConnects++;
    const failuresAtStart = this.connectFailures;
    (this.hooks.connect ?? BackendConnection.connect)({
      node: this.node,
      user: this.user,
      database: this.database,
      credentials: this.credentials(),
      connectTimeoutMs: cfg.serverConnectTimeoutMs,
      tls: backendTlsFor(cfg),
      leanIo: cfg.leanIo,
    }).then(
      (b) => {
        this.connecting--;
        b.poolRef = this;
        this.giveBackWhenGone(b);
        b.onClose((closed) => this.forget(closed));
        this.logger.debug({ node: this.node.name, db: this.database, user: this.user, backend: b.id, pid: b.pid }, 'backend connected');
        this.everConnected = true;
        const recovered = this.connectFailures > 0 || this.loggedFailure !== null;
        if (recovered) {
          if (this.loggedFailure !== null && !this.closed) {
            this.logger.info({ node: this.node.name, db: this.database, user: this.user, failures: this.connectFailures }, 'backend connect recovered');
          }
          this.connectFailures = 0;
          this.retryAt = 0;
          this.loggedFailure = null;
        }
        this.release(b);
        // Back to full speed: the other waiters need connects of their own now.
        if (recovered) this.maybeConnect();
      },
      (err: Error) => {
        this.connecting--;
        for (const x of this.budgets) x.give();
        this.counters.backendConnectFailures++;
        this.onConnectFailed(err, failuresAtStart);
      },
    );
  }

  /**
   * A failed connect backs the pool off (connectRetryDelayMs) and is logged when its reason
   * changes, not per attempt. With backends still in use, waiters are served when those
   * come back; with none, nobody will be: every waiter is told now, with the backend's own
   * error. A login that cannot succeed until someone fixes the database or its roles (no
   * such database, role or privilege) drops the pool: the next client asks afresh.
   */
  private onConnectFailed(err: Error, failuresAtStart: number): void {
    if (this.closed) return;
    // Connects started in one burst fail together: one step of backoff, not one each.
    if (failuresAtStart === this.connectFailures) this.connectFailures++;
    const delayMs = connectRetryDelayMs(this.connectFailures, this.config().serverLoginRetryMs);
    this.retryAt = Date.now() + delayMs;
    const noBackends = this.active.size === 0 && this.idle.length === 0;
    const drop = noBackends && isPermanentLoginFailure(err);
    const text = connectFailureText(err);
    const fields = { node: this.node.name, db: this.database, user: this.user, code: connectFailureCode(err), err: text, failures: this.connectFailures };
    if (text !== this.loggedFailure) {
      this.loggedFailure = text;
      this.logger.warn(fields, drop ? 'backend connect failed; pool dropped until a client asks for it again' : `backend connect failed; retrying in ${delayMs} ms`);
    } else {
      this.logger.debug(fields, 'backend connect failed again');
    }
    if (drop) {
      this.close('error', err);
      this.hooks.onDrop?.(this);
      return;
    }
    if (noBackends) {
      const failed = this.waiters.splice(0, Math.max(0, this.waiters.length - this.connecting));
      for (const w of failed) w.waiter.onAcquireFailed(err);
    }
  }

  private forget(b: BackendConnection): void {
    this.active.delete(b);
    const i = this.idle.indexOf(b);
    if (i >= 0) this.idle.splice(i, 1);
    if (!this.closed) this.maybeConnect();
  }

  /** Janitor: wait timeouts, idle and lifetime limits, min pool size. */
  sweep(now: number): void {
    const cfg = this.config();
    if (cfg.queryWaitTimeoutMs > 0) {
      while (this.waiters.length > 0 && now - this.waiters[0]!.since > cfg.queryWaitTimeoutMs) {
        const w = this.waiters.shift()!;
        const spent = this.size < cfg.poolSize ? this.spentBudget() : null;
        const limit = spent !== null ? `${spent.name} is ${spent.max}` : `pool_size ${cfg.poolSize}`;
        w.waiter.onAcquireFailed(
          new PgmuxError(
            pgmuxError('poolWaitTimeout', {
              detail: `waited ${now - w.since} ms for a connection to ${this.node.name} (${limit}, query_wait_timeout ${cfg.queryWaitTimeoutMs} ms)`,
            }),
          ),
        );
      }
    }
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const b = this.idle[i]!;
      const tooOld = cfg.serverLifetimeMs > 0 && now - b.createdAt > cfg.serverLifetimeMs;
      const idleTooLong = cfg.serverIdleTimeoutMs > 0 && now - b.lastReleasedAt > cfg.serverIdleTimeoutMs && this.size > cfg.minPoolSize;
      if (tooOld || idleTooLong) {
        this.idle.splice(i, 1);
        b.close(tooOld ? 'lifetime' : 'idle_timeout');
      }
    }
    if (this.closed) return;
    this.fitToSize(); // also the retry, once the backoff ran out, for clients still waiting
    // min_pool_size: only for a pool whose connects work (or whose backoff ran out).
    if (this.everConnected && this.size < cfg.minPoolSize && (this.connectFailures === 0 || this.mayRetry(now)) && this.spentBudget() === null) this.connectOne();
  }

  /** Closes idle backends now and the rest as they come back; fails waiters. */
  close(reason: BackendCloseReason, waiterError?: Error): void {
    this.closed = true;
    for (const b of this.budgets) b.leave(this);
    // Each close takes the backend out of `idle` (forget): iterate a detached list.
    for (const b of this.idle.splice(0)) b.close(reason);
    const err = waiterError ?? new PgmuxError(pgmuxError('backendUnavailable', { detail: `the pool for ${this.node.name} was closed` }));
    for (const w of this.waiters.splice(0)) w.waiter.onAcquireFailed(err);
  }

  /** Closes even the backends in use (node gone, shutdown deadline). */
  closeAll(reason: BackendCloseReason): void {
    this.close(reason);
    for (const b of [...this.active]) b.close(reason);
  }

  get isClosed(): boolean {
    return this.closed;
  }
}
