import { describe, expect, it } from 'vitest';
import { parseLsn, type NodeSnapshot, type TopologySnapshot } from '../../src/cluster/snapshot.js';
import { syntheticNode, syntheticTopology } from '../support/snapshots.js';
import { ReadBalancer } from '../../src/routing/balancer.js';
import {
  afterAcquireFailure,
  decideRoute,
  loginNodeOf,
  LSN_UNKNOWN,
  MAX_ROUTE_ATTEMPTS,
  type RouteClass,
  type RouteClient,
  type RouteDecision,
  type RouteSettings,
} from '../../src/routing/policy.js';

// The routing policy fed synthetic snapshots (as balancer.test.ts builds them): where a
// transaction goes for each kind of command, client history and topology.

const node = (index: number, over: Partial<NodeSnapshot> = {}): NodeSnapshot => syntheticNode(index, { name: `n${index}`, ...over });
const topo = syntheticTopology;

const P = (over: Partial<NodeSnapshot> = {}) => node(0, { role: 'primary', weight: 0, ...over });
const READ: RouteClass = { target: 'replica', reason: 'read-only statement' };
const WRITE: RouteClass = { target: 'primary', reason: 'writes' };
const CFG: RouteSettings = { readYourWrites: 'off', readYourWritesWindowMs: 1000, fallbackToPrimary: true, failoverTimeoutMs: 5000 };
const NOW = 100_000;

function client(over: Partial<RouteClient> = {}): RouteClient {
  return { minLsn: null, lastWriteAt: -Infinity, avoidNode: null, attempts: 0, ...over };
}

interface Case {
  t: TopologySnapshot;
  route?: RouteClass | null;
  volatile?: string | null;
  client?: Partial<RouteClient>;
  cfg?: Partial<RouteSettings>;
  disabled?: string[];
  paused?: boolean;
  balancer?: ReadBalancer;
}

function decide(c: Case): RouteDecision {
  const cfg = { ...CFG, ...c.cfg };
  const balancer = c.balancer ?? new ReadBalancer(() => ({ fallbackToPrimary: cfg.fallbackToPrimary }));
  const view = { topology: c.t, disabledNodes: new Set(c.disabled ?? []), paused: c.paused ?? false, now: NOW };
  return decideRoute({ route: c.route === undefined ? READ : c.route, volatile: c.volatile ?? null }, client(c.client), view, cfg, balancer);
}

/** Where it goes, in one word: "n1 read", "n0 write", "wait 5000", "park", "error noReadNode". */
function where(d: RouteDecision): string {
  switch (d.kind) {
    case 'node':
      return `${d.node.name} ${d.write ? 'write' : 'read'}`;
    case 'waitForPrimary':
      return `wait ${d.timeoutMs}`;
    case 'park':
      return 'park';
    case 'error':
      return `error ${d.error}`;
  }
}

describe('routing policy', () => {
  const healthy = topo([P(), node(1), node(2)], 0);

  it('reads go to the replicas in weighted turns, writes to the primary', () => {
    const balancer = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    const reads = [1, 2, 3, 4].map(() => where(decide({ t: healthy, balancer })));
    expect(reads).toEqual(['n1 read', 'n2 read', 'n1 read', 'n2 read']);
    expect(where(decide({ t: healthy, route: WRITE }))).toBe('n0 write');
  });

  it('every decision says why', () => {
    for (const c of [{ t: healthy }, { t: healthy, route: WRITE }, { t: topo([P(), node(1)], null), route: WRITE }, { t: healthy, paused: true }]) {
      expect(decide(c).reason).not.toBe('');
    }
    expect(decide({ t: healthy, route: WRITE }).reason).toContain('writes');
  });

  it('lagging, diverged, fenced, down and misconfigured replicas get no reads', () => {
    for (const state of ['lagging', 'diverged', 'fenced', 'down', 'misconfigured'] as const) {
      const t = topo([P(), node(1, { state }), node(2)], 0);
      expect([1, 2, 3].map(() => where(decide({ t }))), state).toEqual(['n2 read', 'n2 read', 'n2 read']);
    }
  });

  it('no replica may serve a read: fallback_to_primary sends it to the primary as a read, else it fails', () => {
    const t = topo([P(), node(1, { state: 'lagging' }), node(2, { state: 'down' })], 0);
    expect(where(decide({ t }))).toBe('n0 read');
    const d = decide({ t, cfg: { fallbackToPrimary: false } });
    expect(where(d)).toBe('error noReadNode');
    expect(d.kind === 'error' && d.detail).toContain('lag limit');
  });

  it('a statement max_lag_ms hint replaces the lag limits for that statement', () => {
    const t = topo([P(), node(1, { state: 'lagging', lagMs: 800 }), node(2, { lagMs: 300 })], 0);
    expect(where(decide({ t, route: { ...READ, maxLagMs: 100 } }))).toBe('n0 read'); // both over the hint: fallback
    expect(where(decide({ t, route: { ...READ, maxLagMs: 500 } }))).toBe('n2 read');
    const both = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    const loose = { ...READ, maxLagMs: 1000 };
    expect([1, 2].map(() => where(decide({ t, route: loose, balancer: both })))).toEqual(['n1 read', 'n2 read']);
  });

  it('read_your_writes=lsn: only replicas that replayed the last write; ignored in other modes', () => {
    const t = topo([P(), node(1, { walLsn: parseLsn('0/2000000') }), node(2, { walLsn: parseLsn('0/5000000') })], 0);
    const wrote = { minLsn: parseLsn('0/4000000') };
    expect([1, 2, 3].map(() => where(decide({ t, client: wrote, cfg: { readYourWrites: 'lsn' } })))).toEqual(['n2 read', 'n2 read', 'n2 read']);
    const none = topo([P(), node(1, { walLsn: parseLsn('0/2000000') })], 0);
    expect(where(decide({ t: none, client: wrote, cfg: { readYourWrites: 'lsn' } }))).toBe('n0 read');
    expect(where(decide({ t: none, client: wrote, cfg: { readYourWrites: 'lsn', fallbackToPrimary: false } }))).toBe('error noReadNode');
    expect(where(decide({ t: none, client: wrote, cfg: { readYourWrites: 'off' } }))).toBe('n1 read');
  });

  it('read_your_writes=lsn, position of the last write unknown: no replica qualifies, however far it replayed', () => {
    const far = topo([P(), node(1, { walLsn: parseLsn('FFFFFFFF/FFFFFFFE') })], 0);
    const lost = { minLsn: LSN_UNKNOWN };
    expect(where(decide({ t: far, client: lost, cfg: { readYourWrites: 'lsn' } }))).toBe('n0 read');
    const noPrimary = topo([P({ role: 'unknown', state: 'down' }), node(1, { walLsn: parseLsn('FFFFFFFF/FFFFFFFE') })], null);
    expect(where(decide({ t: noPrimary, client: lost, cfg: { readYourWrites: 'lsn' } }))).toBe('wait 5000');
  });

  it('read_your_writes=window: reads go to the primary for the window after a write, then to replicas', () => {
    const cfg = { readYourWrites: 'window' as const, readYourWritesWindowMs: 1000 };
    expect(where(decide({ t: healthy, cfg, client: { lastWriteAt: NOW - 500 } }))).toBe('n0 write');
    expect(where(decide({ t: healthy, cfg, client: { lastWriteAt: NOW - 1000 } }))).toBe('n1 read');
    expect(where(decide({ t: healthy, client: { lastWriteAt: NOW - 500 } }))).toBe('n1 read'); // mode off
  });

  it('no primary: reads still go to replicas, writes wait for a primary up to failover_timeout', () => {
    const t = topo([P({ role: 'unknown', state: 'down' }), node(1), node(2)], null);
    expect(where(decide({ t }))).toBe('n1 read');
    expect(where(decide({ t, route: WRITE }))).toBe('wait 5000');
    expect(where(decide({ t, route: WRITE, cfg: { failoverTimeoutMs: 0 } }))).toBe('wait 0');
  });

  it('no primary: a read no replica has replayed far enough waits for a primary (fallback) or fails', () => {
    const t = topo([P({ role: 'unknown', state: 'down' }), node(1, { walLsn: parseLsn('0/2000000') })], null);
    const c = { t, client: { minLsn: parseLsn('0/4000000') }, cfg: { readYourWrites: 'lsn' as const } };
    expect(where(decide(c))).toBe('wait 5000');
    expect(where(decide({ ...c, cfg: { ...c.cfg, fallbackToPrimary: false } }))).toBe('error noReadNode');
  });

  it('avoidNode: a read that failed to reach a node goes to another one, the primary as a last resort', () => {
    expect([1, 2, 3].map(() => where(decide({ t: healthy, client: { avoidNode: 'n1' } })))).toEqual(['n2 read', 'n2 read', 'n2 read']);
    const one = topo([P(), node(1)], 0);
    expect(where(decide({ t: one, client: { avoidNode: 'n1' } }))).toBe('n0 read');
  });

  it('disabled nodes get no new reads', () => {
    expect([1, 2].map(() => where(decide({ t: healthy, disabled: ['n2'] })))).toEqual(['n1 read', 'n1 read']);
  });

  it('a read calling a volatile function goes to the primary as a write', () => {
    const d = decide({ t: healthy, route: { ...READ, calls: [{ schema: null, name: 'nextval' }] }, volatile: 'calls volatile function nextval' });
    expect(where(d)).toBe('n0 write');
    expect(d.reason).toContain('nextval');
  });

  it('session pool mode: nothing is classified, everything goes to the primary', () => {
    expect(where(decide({ t: healthy, route: null }))).toBe('n0 write');
  });

  it('a paused database parks the transaction, whatever it is', () => {
    expect(where(decide({ t: healthy, paused: true }))).toBe('park');
    expect(where(decide({ t: topo([node(1)], null), route: WRITE, paused: true }))).toBe('park');
  });
});

describe('routing policy after a failed acquire', () => {
  it('an unreachable replica: the read goes elsewhere, avoiding it', () => {
    expect(afterAcquireFailure(client(), 'n1', false, true, CFG)).toEqual({ kind: 'reroute', avoidNode: 'n1' });
  });

  it('an unreachable primary: the write waits for the next primary', () => {
    expect(afterAcquireFailure(client(), 'n0', true, true, CFG)).toEqual({ kind: 'waitForNewPrimary', timeoutMs: 5000 });
  });

  it('other errors, or too many attempts, fail the client', () => {
    expect(afterAcquireFailure(client(), 'n1', false, false, CFG).kind).toBe('fail');
    expect(afterAcquireFailure(client(), null, true, true, CFG).kind).toBe('fail');
    expect(afterAcquireFailure(client({ attempts: MAX_ROUTE_ATTEMPTS - 1 }), 'n1', false, true, CFG).kind).toBe('reroute');
    expect(afterAcquireFailure(client({ attempts: MAX_ROUTE_ATTEMPTS }), 'n1', false, true, CFG).kind).toBe('fail');
  });
});

describe('login node', () => {
  it('the primary, else an enabled healthy replica (lagging will do), else a disabled one, else none', () => {
    expect(loginNodeOf(topo([P(), node(1)], 0), new Set())?.name).toBe('n0');
    const noPrimary = [P({ role: 'unknown', state: 'down' }), node(1, { state: 'lagging' }), node(2)];
    expect(loginNodeOf(topo(noPrimary, null), new Set())?.name).toBe('n1');
    expect(loginNodeOf(topo(noPrimary, null), new Set(['n1']))?.name).toBe('n2');
    expect(loginNodeOf(topo(noPrimary, null), new Set(['n1', 'n2']))?.name).toBe('n1');
    expect(loginNodeOf(topo([P({ role: 'unknown', state: 'down' }), node(1, { state: 'down' })], null), new Set())).toBeNull();
  });
});
