import { describe, expect, it } from 'vitest';
import { deriveTopology } from '../../src/cluster/topology.js';
import { lagPolicyOf } from '../../src/cluster/replicaHealth.js';
import { parseLsn, type NodeSnapshot, type NodeState, type TopologySnapshot } from '../../src/cluster/snapshot.js';
import { ReadBalancer } from '../../src/routing/balancer.js';
import type { NodeConfig } from '../../src/config/types.js';

// The balancer reads states only: whether a replica is lagging is the topology's decision.
// Snapshots are built by hand here (the topology tests cover how states are derived).

function node(index: number, over: Partial<NodeSnapshot>): NodeSnapshot {
  return {
    index,
    name: `127.0.0.1:${5432 + index}`,
    host: '127.0.0.1',
    port: 5432 + index,
    weight: 1,
    role: 'replica',
    state: 'up',
    timeline: 1,
    systemId: '1',
    walLsn: parseLsn('0/3000000'),
    receiveLsn: null,
    lagBytes: 0,
    lagMs: 0,
    lagExclusions: 0,
    lastCheckAt: 1,
    lastOkAt: 1,
    consecutiveFailures: 0,
    ...over,
  };
}

function topo(nodes: NodeSnapshot[], primaryIndex: number | null): TopologySnapshot {
  return {
    version: 1,
    takenAt: 1,
    nodes,
    primary: primaryIndex === null ? null : nodes[primaryIndex]!,
    systemId: '1',
    primaryLostAt: primaryIndex === null ? 0 : null,
    fork: null,
  };
}

function picks(b: ReadBalancer, t: TopologySnapshot, n: number, minLsn: bigint | null = null, hint: number | null = null): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(b.choose(t, minLsn, hint).node?.name ?? 'none');
  return out;
}

const P = (over: Partial<NodeSnapshot> = {}) => node(0, { role: 'primary', weight: 0, ...over });

describe('ReadBalancer', () => {
  it('reads go to up replicas only: lagging, diverged, fenced, down and misconfigured get none', () => {
    const b = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    const states: NodeState[] = ['lagging', 'diverged', 'fenced', 'down', 'misconfigured'];
    for (const state of states) {
      const t = topo([P(), node(1, { state }), node(2, {})], 0);
      expect(new Set(picks(b, t, 10)), state).toEqual(new Set(['127.0.0.1:5434']));
    }
  });

  it('every replica lagging: fallback to the primary, or none with fallback_to_primary off', () => {
    const t = topo([P(), node(1, { state: 'lagging', lagMs: 20_000 }), node(2, { state: 'lagging', lagMs: 30_000 })], 0);
    const on = new ReadBalancer(() => ({ fallbackToPrimary: true })).choose(t);
    expect(on).toEqual({ node: t.primary, reason: 'every replica is over the lag limit: fallback to primary' });
    const off = new ReadBalancer(() => ({ fallbackToPrimary: false })).choose(t);
    expect(off).toEqual({ node: null, reason: 'every replica is over the lag limit' });
  });

  it('the pgmux:max_lag_ms hint replaces the limits for that statement: a lagging replica within it serves, an up one over it does not', () => {
    const b = new ReadBalancer(() => ({ fallbackToPrimary: false }));
    const t = topo([P(), node(1, { state: 'lagging', lagMs: 20_000 }), node(2, { lagMs: 900 })], 0);
    expect(new Set(picks(b, t, 10, null, 60_000))).toEqual(new Set(['127.0.0.1:5433', '127.0.0.1:5434']));
    expect(new Set(picks(b, t, 10, null, 500))).toEqual(new Set(['none']));
    // A replica whose lag is not measurable (e.g. read_without_primary_timeout passed) never qualifies.
    const stopped = topo([P({ state: 'down' }), node(1, { state: 'lagging', lagMs: null, lagBytes: null })], null);
    expect(b.choose(stopped, null, 1_000_000).node).toBeNull();
  });

  it('no primary: up replicas keep serving; read-your-writes still filters on the client\'s LSN', () => {
    const b = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    const t = topo(
      [P({ state: 'down' }), node(1, { walLsn: parseLsn('0/5000000') }), node(2, { walLsn: parseLsn('0/4000000'), lagBytes: 0x1000000 })],
      null,
    );
    expect(new Set(picks(b, t, 10))).toEqual(new Set(['127.0.0.1:5433', '127.0.0.1:5434']));
    expect(new Set(picks(b, t, 10, parseLsn('0/4800000')))).toEqual(new Set(['127.0.0.1:5433']));
    const none = b.choose(t, parseLsn('0/6000000'));
    expect(none).toEqual({ node: null, reason: "no replica has replayed this client's last write yet" });
    const allOut = topo([P({ state: 'down' }), node(1, { state: 'lagging', lagMs: null, lagBytes: null })], null);
    expect(b.choose(allOut).reason).toBe('no primary, and every replica is over the lag limit or past read_without_primary_timeout');
  });

  it('a primary with read weight serves reads only while it is the up primary', () => {
    const b = new ReadBalancer(() => ({ fallbackToPrimary: false }));
    const t = topo([P({ weight: 1 }), node(1, { state: 'lagging' })], 0);
    expect(picks(b, t, 3)).toEqual(['127.0.0.1:5432', '127.0.0.1:5432', '127.0.0.1:5432']);
  });

  it('end to end with derived snapshots: a replica paused far behind gets no reads until it is back under the hysteresis', () => {
    const nodes: NodeConfig[] = [0, 1, 2].map((i) => ({ host: '127.0.0.1', port: 5432 + i, weight: i === 0 ? 0 : 1 }));
    const policy = lagPolicyOf({ nodes, maxLagBytes: 1000, maxLagMs: null, lagHysteresis: 0.5, readWithoutPrimaryTimeoutMs: 0 });
    const probe = (t: number, p: number, r1: number) => [
      { index: 0, ok: true, inRecovery: false, timeline: 1, systemId: '1', walLsn: BigInt(p), at: t },
      { index: 1, ok: true, inRecovery: true, timeline: 1, systemId: '1', walLsn: BigInt(r1), at: t },
      { index: 2, ok: true, inRecovery: true, timeline: 1, systemId: '1', walLsn: BigInt(p), at: t },
    ];
    const b = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    let s = deriveTopology(null, probe(1000, 10_000, 8_000), 1000, { nodes, maxRetries: 1, lagPolicy: policy });
    expect(new Set(picks(b, s, 6))).toEqual(new Set(['127.0.0.1:5434']));
    s = deriveTopology(s, probe(2000, 10_000, 9_300), 2000, { nodes, maxRetries: 1, lagPolicy: policy }); // 700 > 500
    expect(new Set(picks(b, s, 6))).toEqual(new Set(['127.0.0.1:5434']));
    s = deriveTopology(s, probe(3000, 10_000, 9_600), 3000, { nodes, maxRetries: 1, lagPolicy: policy }); // 400 <= 500
    expect(new Set(picks(b, s, 6))).toEqual(new Set(['127.0.0.1:5433', '127.0.0.1:5434']));
  });
});
