// A bounded set of backends for one (node, database, user), and the queue of clients
// waiting for one. Handing a backend over is synchronous (a method call on the waiter),
// so the transaction hot path allocates no promise.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { BackendConnection, BackendState, type BackendCloseReason, type BackendCredentials, type NodeAddress } from './backend.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import { backendTlsFor } from '../server/tls.js';

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

export class Pool {
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

  constructor(
    readonly node: NodeAddress,
    readonly database: string,
    readonly user: string,
    private config: () => Config,
    private credentials: () => BackendCredentials,
    private logger: Logger,
    /** Process-wide counters this pool adds to (they outlive the pool). */
    private counters: { backendResets: number } = { backendResets: 0 },
  ) {}

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
    const cfg = this.config();
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
    const lifetime = this.config().serverLifetimeMs;
    while (this.idle.length > 0) {
      const b = this.idle.pop()!; // most recently used first: warm caches
      if (b.state !== BackendState.Idle) continue;
      if (lifetime > 0 && now - b.createdAt > lifetime) {
        b.close('lifetime');
        continue;
      }
      return b;
    }
    return null;
  }

  private maybeConnect(): void {
    const cfg = this.config();
    while (!this.closed && this.waiters.length > this.connecting && this.size < cfg.poolSize) {
      this.connectOne();
    }
  }

  private connectOne(): void {
    const cfg = this.config();
    this.connecting++;
    this.totalConnects++;
    BackendConnection.connect({
      node: this.node,
      user: this.user,
      database: this.database,
      credentials: this.credentials(),
      connectTimeoutMs: cfg.serverConnectTimeoutMs,
      tls: backendTlsFor(cfg),
    }).then(
      (b) => {
        this.connecting--;
        b.poolRef = this;
        b.onClose((closed) => this.forget(closed));
        this.logger.debug({ node: this.node.name, db: this.database, user: this.user, backend: b.id, pid: b.pid }, 'backend connected');
        this.release(b);
      },
      (err: Error) => {
        this.connecting--;
        this.logger.warn({ node: this.node.name, db: this.database, user: this.user, err: err.message }, 'backend connect failed');
        // With backends still in use, waiters are served when those come back; with
        // none, nobody will be: tell every waiter now, with the backend's own error.
        if (this.active.size === 0 && this.idle.length === 0) {
          const failed = this.waiters.splice(0, Math.max(0, this.waiters.length - this.connecting));
          for (const w of failed) w.waiter.onAcquireFailed(err);
        }
      },
    );
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
        w.waiter.onAcquireFailed(
          new PgmuxError(
            pgmuxError('poolWaitTimeout', {
              detail: `waited ${now - w.since} ms for a connection to ${this.node.name} (pool_size ${cfg.poolSize}, query_wait_timeout ${cfg.queryWaitTimeoutMs} ms)`,
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
    if (!this.closed && this.totalConnects > 0 && this.size < cfg.minPoolSize) this.connectOne();
  }

  /** Closes idle backends now and the rest as they come back; fails waiters. */
  close(reason: BackendCloseReason, waiterError?: Error): void {
    this.closed = true;
    for (const b of this.idle) b.close(reason);
    this.idle = [];
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
