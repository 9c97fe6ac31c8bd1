import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DEFAULTS } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { BackendState, type BackendCloseReason, type BackendConnection, type ConnectOptions } from '../../src/pool/backend.js';
import { Pool, type PoolCounters, type PoolWaiter } from '../../src/pool/pool.js';
import { FIRST_RETRY_DELAY_MS } from '../../src/pool/connectRetry.js';
import { BackendError, PgmuxError, pgmuxError } from '../../src/protocol/errors.js';
import { captureLogger, LEVEL, type LogLine } from '../support/logCapture.js';

// The pool's rules without PostgreSQL: the pool's connect hook hands out fake backends, and
// each connect (and each reset query) is settled by the test when it wants. Only Date is
// faked (the pool reads Date.now() for backoff and lifetimes; it starts no timers).

/** What Pool touches of a backend, and nothing else. */
class FakeBackend {
  private static nextId = 1;
  readonly id = FakeBackend.nextId++;
  readonly pid = 1000 + this.id;
  state = BackendState.Idle;
  readonly createdAt = Date.now();
  lastReleasedAt = Date.now();
  needsReset = false;
  discardOnRelease = false;
  resets = 0;
  readonly applied = new Map<string, string>();
  readonly prepared = new Map<string, true>();
  syncedFingerprint: string | null = 'fp';
  poolRef: unknown = null;
  closeReason: BackendCloseReason | null = null;
  clean = true;
  /** Queries run through runInternal, each settled by the test. */
  readonly internal: Array<{ sql: string; resolve: () => void; reject: (e: Error) => void }> = [];
  private closeListeners: Array<(b: FakeBackend) => void> = [];

  onClose(fn: (b: FakeBackend) => void): void {
    this.closeListeners.push(fn);
  }

  close(reason: BackendCloseReason): void {
    if (this.state === BackendState.Closed) return;
    this.state = BackendState.Closed;
    this.closeReason = reason;
    for (const fn of this.closeListeners) fn(this);
  }

  runInternal(sql: string): Promise<void> {
    return new Promise((resolve, reject) => this.internal.push({ sql, resolve, reject }));
  }

  queryRow(_sql: string): Promise<Array<string | null> | null> {
    return Promise.resolve(['1']);
  }
}

interface PendingConnect {
  opts: ConnectOptions;
  settled: boolean;
  succeed(): FakeBackend;
  fail(err: Error): void;
}

class Waiter implements PoolWaiter {
  got: FakeBackend[] = [];
  errors: Error[] = [];
  onBackendAcquired(b: BackendConnection): void {
    this.got.push(b as unknown as FakeBackend);
  }
  onAcquireFailed(err: Error): void {
    this.errors.push(err);
  }
}

/** Lets settled promises' callbacks (the pool's .then handlers) run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

const T0 = Date.UTC(2026, 0, 1);

interface Harness {
  pool: Pool;
  cfg: Config;
  connects: PendingConnect[];
  lines: LogLine[];
  counters: PoolCounters;
  dropped: Pool[];
  /** A waiter that asked now. */
  ask(): Waiter;
  /** A backend in a client's hands: an idle one, else the first connect under way, succeeded. */
  busy(): Promise<FakeBackend>;
  release(b: FakeBackend): void;
}

function harness(over: Partial<Config> = {}): Harness {
  const cfg: Config = { ...DEFAULTS, poolSize: 2, minPoolSize: 0, serverLifetimeMs: 0, serverIdleTimeoutMs: 0, queryWaitTimeoutMs: 0, ...over };
  const connects: PendingConnect[] = [];
  const { logger, lines } = captureLogger('debug');
  const counters: PoolCounters = { backendResets: 0, backendConnectFailures: 0, backendConnects: 0 };
  const dropped: Pool[] = [];
  const connect = (opts: ConnectOptions) =>
    new Promise<BackendConnection>((resolve, reject) => {
      const c: PendingConnect = {
        opts,
        settled: false,
        succeed: () => {
          c.settled = true;
          const b = new FakeBackend();
          resolve(b as unknown as BackendConnection);
          return b;
        },
        fail: (err) => {
          c.settled = true;
          reject(err);
        },
      };
      connects.push(c);
    });
  const node = { name: 'n1', host: '127.0.0.1', port: 1 };
  const pool = new Pool(node, 'db', 'alice', () => cfg, () => ({ password: 'pw' }) as never, logger, counters, {
    onDrop: (p) => dropped.push(p),
    connect,
  });
  const h: Harness = {
    pool,
    cfg,
    connects,
    lines,
    counters,
    dropped,
    ask() {
      const w = new Waiter();
      pool.acquire(w, Date.now());
      return w;
    },
    async busy() {
      const w = h.ask();
      if (w.got.length === 0) {
        connects.find((c) => !c.settled)!.succeed();
        await settle();
      }
      expect(w.got).toHaveLength(1);
      return w.got[0]!;
    },
    release(b) {
      pool.release(b as unknown as BackendConnection);
    },
  };
  return h;
}

const warns = (lines: LogLine[]) => lines.filter((l) => l.level === LEVEL.warn).map((l) => l.msg);
const unavailable = (detail: string) => new PgmuxError(pgmuxError('backendUnavailable', { detail }));
const loginError = (code: string, message: string) =>
  new BackendError(
    new Map([
      ['S', 'FATAL'],
      ['C', code],
      ['M', message],
    ]),
    Buffer.alloc(0),
  );

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(T0);
});
afterEach(() => {
  vi.useRealTimers();
});

describe('Pool: handing out backends', () => {
  it('connects through the hook with the pool\'s node, database and user', async () => {
    const h = harness();
    h.ask();
    expect(h.connects).toHaveLength(1);
    expect(h.connects[0]!.opts).toMatchObject({ node: { name: 'n1' }, database: 'db', user: 'alice' });
  });

  it('an idle backend is handed over synchronously, most recently released first', async () => {
    const h = harness();
    const b1 = await h.busy();
    const b2 = await h.busy();
    h.release(b1);
    h.release(b2);
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 2, active: 0 });
    const w = h.ask();
    expect(w.got).toEqual([b2]); // no await in between: served inside acquire()
    expect(h.connects).toHaveLength(2);
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 1, active: 1, waiting: 0 });
  });

  it('waiters are served first come, first served as backends come back', async () => {
    const h = harness({ poolSize: 1 });
    const b = await h.busy();
    const [w1, w2, w3] = [h.ask(), h.ask(), h.ask()];
    expect(h.connects).toHaveLength(1);
    h.release(b);
    expect([w1.got, w2.got, w3.got]).toEqual([[b], [], []]);
    h.release(b);
    expect([w1.got, w2.got, w3.got]).toEqual([[b], [b], []]);
    h.release(b);
    expect([w1.got, w2.got, w3.got]).toEqual([[b], [b], [b]]);
    h.release(b);
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 1, active: 0, waiting: 0 });
  });

  it('never more than pool_size backends, connects under way counted', async () => {
    const h = harness({ poolSize: 2 });
    for (let i = 0; i < 5; i++) h.ask();
    expect(h.connects).toHaveLength(2);
    expect(h.pool.stats(Date.now())).toMatchObject({ connecting: 2, waiting: 5 });
    h.connects[0]!.succeed();
    await settle();
    expect(h.connects).toHaveLength(2);
    expect(h.pool.size).toBe(2);
    expect(h.pool.stats(Date.now())).toMatchObject({ connecting: 1, active: 1, waiting: 4 });
  });

  it('a waiter that leaves is not served', async () => {
    const h = harness({ poolSize: 1 });
    const b = await h.busy();
    const w1 = h.ask();
    const w2 = h.ask();
    h.pool.cancelWait(w1);
    h.release(b);
    expect(w1.got).toEqual([]);
    expect(w2.got).toEqual([b]);
  });
});

describe('Pool: pool_size changed under the pool (RELOAD)', () => {
  it('lowered: busy backends above it close as they come back and are never handed out', async () => {
    const h = harness({ poolSize: 3 });
    const [b1, b2, b3] = [await h.busy(), await h.busy(), await h.busy()];
    const w = h.ask();
    h.cfg.poolSize = 1;
    h.release(b1);
    h.release(b2);
    expect([b1.closeReason, b2.closeReason]).toEqual(['pool_size', 'pool_size']);
    expect(w.got).toEqual([]);
    h.release(b3); // the one left within pool_size goes to the waiter
    expect(w.got).toEqual([b3]);
    expect(h.connects).toHaveLength(3);
    expect(h.pool.size).toBe(1);
  });

  it('lowered: fitToSize closes idle surplus now, least recently used first', async () => {
    const h = harness({ poolSize: 3 });
    const bs = [await h.busy(), await h.busy(), await h.busy()];
    for (const b of bs) h.release(b);
    h.cfg.poolSize = 1;
    h.pool.fitToSize();
    expect(bs.map((b) => b.closeReason)).toEqual(['pool_size', 'pool_size', null]);
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 1 });
  });

  it('lowered: an idle backend above it is closed instead of handed out', async () => {
    const h = harness({ poolSize: 3 });
    const bs = [await h.busy(), await h.busy(), await h.busy()];
    for (const b of bs.slice(0, 2)) h.release(b);
    h.cfg.poolSize = 2; // one busy plus two idle: one too many
    const w = h.ask();
    expect(w.got).toEqual([bs[0]]);
    expect(bs[1]!.closeReason).toBe('pool_size');
    expect(h.pool.size).toBe(2);
  });

  it('raised: fitToSize connects for the clients already waiting', async () => {
    const h = harness({ poolSize: 1 });
    await h.busy();
    h.ask();
    h.ask();
    h.ask();
    expect(h.connects).toHaveLength(1);
    h.cfg.poolSize = 3;
    h.pool.fitToSize();
    expect(h.connects).toHaveLength(3);
    h.cfg.poolSize = 10;
    h.pool.fitToSize();
    expect(h.connects).toHaveLength(4); // one per waiter, not up to pool_size
  });
});

describe('Pool: a backend that needs a reset', () => {
  it('runs server_reset_query before the next client gets it, and forgets the session state it recorded', async () => {
    const h = harness({ poolSize: 1, serverResetQuery: 'DISCARD ALL' });
    const b = await h.busy();
    const w = h.ask();
    b.needsReset = true;
    b.applied.set('work_mem', '1MB');
    b.prepared.set('s1', true);
    h.release(b);
    expect(b.internal.map((q) => q.sql)).toEqual(['DISCARD ALL']);
    expect(w.got).toEqual([]); // not before the reset finished
    expect(h.pool.stats(Date.now())).toMatchObject({ active: 1 });
    expect([h.counters.backendResets, b.resets]).toEqual([1, 1]);
    b.internal[0]!.resolve();
    await settle();
    expect(w.got).toEqual([b]);
    expect(b.needsReset).toBe(false);
    expect([b.applied.size, b.prepared.size, b.syncedFingerprint]).toEqual([0, 0, null]);
  });

  it('a failed reset closes the backend (with a warning) and a new one is connected for the waiter', async () => {
    const h = harness({ poolSize: 1, serverResetQuery: 'DISCARD ALL' });
    const b = await h.busy();
    const w = h.ask();
    b.needsReset = true;
    h.release(b);
    b.internal[0]!.reject(new Error('terminating connection'));
    await settle();
    expect(b.closeReason).toBe('reset_failed');
    expect(w.got).toEqual([]);
    expect(warns(h.lines)).toEqual(['server_reset_query failed; closing the backend']);
    expect(h.connects).toHaveLength(2);
    const fresh = h.connects[1]!.succeed();
    await settle();
    expect(w.got).toEqual([fresh]);
  });

  it('with no server_reset_query configured it is closed, not reused', async () => {
    const h = harness({ poolSize: 1, serverResetQuery: '' });
    const b = await h.busy();
    b.needsReset = true;
    h.release(b);
    expect(b.internal).toEqual([]);
    expect(b.closeReason).toBe('reset_failed');
    expect(h.pool.size).toBe(0);
  });

  it('a backend marked discardOnRelease is closed, not reset', async () => {
    const h = harness({ serverResetQuery: 'DISCARD ALL' });
    const b = await h.busy();
    b.needsReset = true;
    b.discardOnRelease = true;
    h.release(b);
    expect(b.internal).toEqual([]);
    expect(b.closeReason).toBe('dirty');
  });
});

describe('Pool: recycling and lifetimes', () => {
  it('recycle(before) closes idle backends now, busy ones when they come back, and spares newer ones', async () => {
    const h = harness({ poolSize: 3 });
    const idle = await h.busy();
    const busy = await h.busy();
    h.release(idle);
    vi.setSystemTime(T0 + 10);
    h.pool.recycle(T0);
    expect(idle.closeReason).toBe('recycled');
    expect(busy.closeReason).toBeNull();
    const newer = await h.busy();
    h.release(busy);
    expect(busy.closeReason).toBe('recycled');
    h.release(newer);
    expect(newer.closeReason).toBeNull();
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 1, active: 0 });
  });

  it('server_lifetime: an old backend is closed when released, when taken from idle, and by the sweep', async () => {
    const h = harness({ poolSize: 4, serverLifetimeMs: 1000 });
    const [a, c, d] = [await h.busy(), await h.busy(), await h.busy()];
    vi.setSystemTime(T0 + 500);
    const b = await h.busy();
    h.release(d);
    h.release(b);
    h.release(c); // idle, most recent last: d (old), b (newer), c (old)
    vi.setSystemTime(T0 + 1001);
    h.release(a);
    expect(a.closeReason).toBe('lifetime');
    const w = h.ask(); // c is the most recent idle one, but too old: closed, and b handed out
    expect(c.closeReason).toBe('lifetime');
    expect(w.got).toEqual([b]);
    expect(d.closeReason).toBeNull();
    h.pool.sweep(Date.now());
    expect(d.closeReason).toBe('lifetime');
    expect(b.closeReason).toBeNull();
    expect(h.pool.size).toBe(1);
    expect(h.connects).toHaveLength(4);
  });

  it('server_idle_timeout closes backends idle too long, down to min_pool_size', async () => {
    const h = harness({ poolSize: 3, minPoolSize: 1, serverIdleTimeoutMs: 500 });
    const bs = [await h.busy(), await h.busy()];
    for (const b of bs) h.release(b);
    h.pool.sweep(T0 + 400);
    expect(bs.map((b) => b.closeReason)).toEqual([null, null]);
    h.pool.sweep(T0 + 600);
    expect(bs.filter((b) => b.closeReason === 'idle_timeout')).toHaveLength(1);
    expect(h.pool.size).toBe(1);
  });
});

describe('Pool: failed connects', () => {
  it('back off: no second attempt before the delay, then one probe at a time', async () => {
    const h = harness({ poolSize: 3, serverLoginRetryMs: 15_000 });
    const w1 = h.ask();
    h.connects[0]!.fail(unavailable('n1: connect ECONNREFUSED'));
    await settle();
    expect(h.counters.backendConnectFailures).toBe(1);
    const w2 = h.ask();
    const w3 = h.ask();
    h.pool.sweep(Date.now());
    vi.setSystemTime(T0 + FIRST_RETRY_DELAY_MS - 1);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(1);
    vi.setSystemTime(T0 + FIRST_RETRY_DELAY_MS);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(2); // two waiters, one probe
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(2);
    // The second failure doubles the delay.
    h.connects[1]!.fail(unavailable('n1: connect ECONNREFUSED'));
    await settle();
    vi.setSystemTime(T0 + FIRST_RETRY_DELAY_MS + 2 * FIRST_RETRY_DELAY_MS - 1);
    const w4 = h.ask();
    const w5 = h.ask();
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(2);
    vi.setSystemTime(T0 + 3 * FIRST_RETRY_DELAY_MS);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(3);
    // Success: back to full speed, a connect for the other waiter at once.
    const b = h.connects[2]!.succeed();
    await settle();
    expect(w4.got).toEqual([b]);
    expect(h.connects).toHaveLength(4);
    const b2 = h.connects[3]!.succeed();
    await settle();
    expect(w5.got).toEqual([b2]);
    expect([w1.errors.length, w2.errors.length, w3.errors.length]).toEqual([1, 1, 1]);
    expect(h.lines.filter((l) => l.msg === 'backend connect recovered')).toHaveLength(1);
    expect(h.pool.lastFailure).toBeNull();
  });

  it('connects that fail together count as one step of backoff', async () => {
    const h = harness({ poolSize: 3 });
    h.ask();
    h.ask();
    expect(h.connects).toHaveLength(2);
    h.connects[0]!.fail(unavailable('n1: refused'));
    h.connects[1]!.fail(unavailable('n1: refused'));
    await settle();
    h.ask();
    vi.setSystemTime(T0 + FIRST_RETRY_DELAY_MS); // a second step would need 200 ms
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(3);
  });

  it('one warning per reason: the same failure again is debug only, a new one warns again', async () => {
    const h = harness({ poolSize: 1 });
    const fail = async (err: Error) => {
      h.ask();
      vi.setSystemTime(Date.now() + 60_000);
      h.pool.sweep(Date.now());
      h.connects.at(-1)!.fail(err);
      await settle();
    };
    await fail(unavailable('n1: connect ECONNREFUSED'));
    await fail(unavailable('n1: connect ECONNREFUSED'));
    await fail(unavailable('n1: connect ECONNREFUSED'));
    await fail(unavailable('n1: timeout'));
    expect(h.connects).toHaveLength(4);
    expect(warns(h.lines)).toEqual(['backend connect failed; retrying in 100 ms', 'backend connect failed; retrying in 800 ms']);
    expect(h.lines.filter((l) => l.msg === 'backend connect failed again')).toHaveLength(2);
    expect(h.pool.lastFailure).toBe('could not connect to the database node: n1: timeout');
  });

  it('with no backend at all, waiters fail at once with the backend\'s own error', async () => {
    const h = harness({ poolSize: 1 });
    const [w1, w2] = [h.ask(), h.ask()];
    const err = loginError('53300', 'sorry, too many clients already');
    h.connects[0]!.fail(err);
    await settle();
    expect(w1.errors).toEqual([err]);
    expect(w2.errors).toEqual([err]);
    expect(h.pool.stats(Date.now()).waiting).toBe(0);
    expect(h.pool.isClosed).toBe(false);
  });

  it('with backends in use, waiters keep waiting for one to come back', async () => {
    const h = harness({ poolSize: 2 });
    const b = await h.busy();
    const w = h.ask();
    h.connects[1]!.fail(unavailable('n1: refused'));
    await settle();
    expect(w.errors).toEqual([]);
    h.release(b);
    expect(w.got).toEqual([b]);
  });

  it('a login that cannot succeed (3D000) drops the pool: waiters get the error, onDrop is told', async () => {
    const h = harness();
    const w = h.ask();
    const err = loginError('3D000', 'database "db" does not exist');
    h.connects[0]!.fail(err);
    await settle();
    expect(h.dropped).toEqual([h.pool]);
    expect(h.pool.isClosed).toBe(true);
    expect(w.errors).toEqual([err]);
    expect(warns(h.lines)).toEqual(['backend connect failed; pool dropped until a client asks for it again']);
    const late = h.ask();
    expect(late.errors).toHaveLength(1);
    expect(h.connects).toHaveLength(1);
  });

  it('a permanent login failure with backends still in use does not drop the pool', async () => {
    const h = harness();
    await h.busy();
    h.ask();
    h.connects[1]!.fail(loginError('3D000', 'database "db" does not exist'));
    await settle();
    expect(h.dropped).toEqual([]);
    expect(h.pool.isClosed).toBe(false);
  });

  it('a pool created after a dropped one does not warn again for the same failure', async () => {
    const text = 'could not connect to the database node: n1: refused';
    const { logger, lines } = captureLogger('debug');
    const connects: Array<(e: Error) => void> = [];
    const pool = new Pool({ name: 'n1', host: '127.0.0.1', port: 1 }, 'db', 'alice', () => ({ ...DEFAULTS }), () => ({}) as never, logger, undefined, {
      knownFailure: text,
      connect: () => new Promise((_, reject) => connects.push(reject)),
    });
    expect(pool.lastFailure).toBe(text);
    pool.acquire(new Waiter(), Date.now());
    connects[0]!(unavailable('n1: refused'));
    await settle();
    expect(warns(lines)).toEqual([]);
  });
});

describe('Pool: min_pool_size', () => {
  it('refills only a pool that connected at least once, one connect per sweep', async () => {
    const h = harness({ poolSize: 3, minPoolSize: 2 });
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(0);
    h.ask();
    h.connects[0]!.fail(unavailable('n1: refused'));
    await settle();
    vi.setSystemTime(T0 + 60_000);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(1); // still only the failed one: never connected
    const b = await h.busy();
    h.release(b);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(3);
    h.pool.sweep(Date.now());
    expect(h.connects).toHaveLength(3); // one under way: size 2 = min_pool_size
    h.connects[2]!.succeed();
    await settle();
    expect(h.pool.stats(Date.now())).toMatchObject({ idle: 2 });
  });
});

describe('Pool: close', () => {
  it('close() closes idle backends and fails waiters now; busy ones close as they come back; no new acquire', async () => {
    const h = harness({ poolSize: 2 });
    const idle = await h.busy();
    const busy = await h.busy();
    h.release(idle);
    h.pool.close('shutdown');
    expect(idle.closeReason).toBe('shutdown');
    expect(busy.closeReason).toBeNull();
    h.release(busy);
    expect(busy.closeReason).toBe('shutdown');
    const late = h.ask();
    expect(late.errors).toHaveLength(1);
    expect((late.errors[0] as PgmuxError).spec.code).toBe('08006');
    expect(h.connects).toHaveLength(2);
    // Waiters (only while nothing is idle) are told at once.
    const h2 = harness({ poolSize: 1 });
    await h2.busy();
    const w = h2.ask();
    h2.pool.close('shutdown');
    expect(w.errors).toHaveLength(1);
    expect((w.errors[0] as PgmuxError).spec.code).toBe('08006');
    expect(h2.pool.stats(Date.now()).waiting).toBe(0);
  });

  it('closeAll() closes the busy backends too', async () => {
    const h = harness({ poolSize: 2 });
    const idle = await h.busy();
    const busy = await h.busy();
    h.release(idle);
    h.pool.closeAll('node_gone');
    expect([idle.closeReason, busy.closeReason]).toEqual(['node_gone', 'node_gone']);
    expect(h.pool.size).toBe(0);
  });

  it('a backend the database closed is forgotten and replaced for a waiter', async () => {
    const h = harness({ poolSize: 1 });
    const b = await h.busy();
    const w = h.ask();
    b.close('server_closed');
    expect(h.pool.size).toBe(1); // the replacement connect
    expect(h.connects).toHaveLength(2);
    const fresh = h.connects[1]!.succeed();
    await settle();
    expect(w.got).toEqual([fresh]);
  });
});
