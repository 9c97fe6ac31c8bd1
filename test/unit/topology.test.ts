import { describe, expect, it } from 'vitest';
import { deriveTopology, emptyTopology, type DeriveOptions } from '../../src/cluster/topology.js';
import { lagPolicyOf, type LagPolicy } from '../../src/cluster/replicaHealth.js';
import { currentRole, formatLsn, parseLsn, type ProbeResult, type TopologySnapshot } from '../../src/cluster/snapshot.js';
import type { NodeConfig } from '../../src/config/types.js';

const NODES: NodeConfig[] = [
  { host: '127.0.0.1', port: 5432, weight: 1 },
  { host: '127.0.0.1', port: 5433, weight: 1 },
  { host: '127.0.0.1', port: 5434, weight: 2 },
];
const SYS = '7000000000000000001';
const OPTS = { nodes: NODES, maxRetries: 3 };

function primary(index: number, at: number, over: Partial<ProbeResult> = {}): ProbeResult {
  return { index, ok: true, inRecovery: false, timeline: 1, systemId: SYS, walLsn: parseLsn('0/3000000'), receiveLsn: null, replayLagMs: null, at, ...over };
}

function replica(index: number, at: number, over: Partial<ProbeResult> = {}): ProbeResult {
  return {
    index,
    ok: true,
    inRecovery: true,
    timeline: 1,
    systemId: SYS,
    walLsn: parseLsn('0/3000000'),
    receiveLsn: parseLsn('0/3000000'),
    replayLagMs: null,
    at,
    ...over,
  };
}

function fail(index: number, at: number, error = 'connect ECONNREFUSED'): ProbeResult {
  return { index, ok: false, error, at };
}

/** Feed rounds one after the other; returns every snapshot. */
function rounds(...probeRounds: ProbeResult[][]): TopologySnapshot[] {
  const out: TopologySnapshot[] = [];
  let prev: TopologySnapshot | null = null;
  probeRounds.forEach((probes, i) => {
    prev = deriveTopology(prev, probes, 1000 * (i + 1), OPTS);
    out.push(prev);
  });
  return out;
}

function healthy(t: number): ProbeResult[] {
  return [primary(0, t), replica(1, t), replica(2, t)];
}

describe('parseLsn / formatLsn', () => {
  it('parses the hi/lo hex halves', () => {
    expect(parseLsn('16/B374D848')).toBe(0x16b374d848n);
    expect(parseLsn('0/0')).toBe(0n);
    expect(parseLsn('0/3000000')).toBe(0x3000000n);
    expect(parseLsn('FFFFFFFF/FFFFFFFF')).toBe(0xffffffffffffffffn);
    expect(parseLsn('a/b')).toBe((10n << 32n) | 11n);
  });
  it('differences are byte distances', () => {
    expect(parseLsn('1/0') - parseLsn('0/FFFFFFFF')).toBe(1n);
  });
  it('rejects garbage', () => {
    for (const bad of ['', '16', '16/', '/1', 'x/1', '1/2/3', '123456789/0']) expect(() => parseLsn(bad)).toThrow(/invalid LSN/);
  });
  it('round-trips', () => {
    expect(formatLsn(parseLsn('16/B374D848'))).toBe('16/B374D848');
    expect(formatLsn(0n)).toBe('0/0');
  });
});

describe('deriveTopology', () => {
  it('starts empty: every node unknown and down, no primary', () => {
    const s = emptyTopology(NODES, 5);
    expect(s.version).toBe(0);
    expect(s.primary).toBeNull();
    expect(s.nodes.map((n) => [n.name, n.role, n.state])).toEqual([
      ['127.0.0.1:5432', 'unknown', 'down'],
      ['127.0.0.1:5433', 'unknown', 'down'],
      ['127.0.0.1:5434', 'unknown', 'down'],
    ]);
  });

  it('single primary, two replicas', () => {
    const [s] = rounds(healthy(1000));
    expect(s!.version).toBe(1);
    expect(s!.primary?.name).toBe('127.0.0.1:5432');
    expect(s!.primary).toBe(s!.nodes[0]);
    expect(s!.systemId).toBe(SYS);
    expect(s!.nodes.map((n) => [n.role, n.state])).toEqual([
      ['primary', 'up'],
      ['replica', 'up'],
      ['replica', 'up'],
    ]);
    expect(s!.nodes[2]!.weight).toBe(2);
    expect(s!.nodes[1]!.lagBytes).toBe(0);
    expect(s!.nodes[1]!.lagMs).toBe(0);
    expect(Object.isFrozen(s)).toBe(true);
    expect(Object.isFrozen(s!.nodes)).toBe(true);
    expect(Object.isFrozen(s!.nodes[0])).toBe(true);
  });

  it('version increases every round, takenAt is now', () => {
    const ss = rounds(healthy(1000), healthy(2000), healthy(3000));
    expect(ss.map((s) => s.version)).toEqual([1, 2, 3]);
    expect(ss.map((s) => s.takenAt)).toEqual([1000, 2000, 3000]);
  });

  it('a primary is not down before maxRetries failures, then primary is null', () => {
    const ss = rounds(
      healthy(1000),
      [fail(0, 2000), replica(1, 2000), replica(2, 2000)],
      [fail(0, 3000), replica(1, 3000), replica(2, 3000)],
      [fail(0, 4000), replica(1, 4000), replica(2, 4000)],
    );
    expect(ss[1]!.primary?.index).toBe(0);
    expect(ss[1]!.nodes[0]).toMatchObject({ state: 'up', role: 'primary', consecutiveFailures: 1, lastCheckAt: 2000 });
    expect(ss[2]!.primary?.index).toBe(0);
    expect(ss[2]!.nodes[0]!.consecutiveFailures).toBe(2);
    expect(ss[3]!.primary).toBeNull();
    expect(ss[3]!.nodes[0]).toMatchObject({ state: 'down', role: 'primary', consecutiveFailures: 3, reason: 'connect ECONNREFUSED', timeline: 1 });
  });

  it('a node that answers again resets its failure count', () => {
    const ss = rounds(healthy(1000), [primary(0, 2000), fail(1, 2000), replica(2, 2000)], healthy(3000));
    expect(ss[1]!.nodes[1]).toMatchObject({ state: 'up', consecutiveFailures: 1 });
    expect(ss[2]!.nodes[1]).toMatchObject({ state: 'up', consecutiveFailures: 0 });
  });

  it('a down replica comes back up', () => {
    const down = [primary(0, 0), fail(1, 0), replica(2, 0)];
    const ss = rounds(healthy(1000), down, down, down, healthy(5000));
    expect(ss[3]!.nodes[1]!.state).toBe('down');
    expect(ss[4]!.nodes[1]).toMatchObject({ state: 'up', role: 'replica', consecutiveFailures: 0 });
    expect(ss[4]!.nodes[1]!.reason).toBeUndefined();
  });

  it('a never-seen node that fails is down at once', () => {
    const [s] = rounds([primary(0, 1000), fail(1, 1000), replica(2, 1000)]);
    expect(s!.nodes[1]).toMatchObject({ role: 'unknown', state: 'down', consecutiveFailures: 1 });
  });

  it('nodes without a probe this round keep their state', () => {
    const ss = rounds(healthy(1000), [primary(0, 2000)]);
    expect(ss[1]!.nodes[1]).toMatchObject({ state: 'up', role: 'replica', lastCheckAt: 1000, consecutiveFailures: 0 });
  });

  it('promotion: old primary down, a replica not in recovery becomes primary', () => {
    const ss = rounds(
      healthy(1000),
      [fail(0, 2000), replica(1, 2000), replica(2, 2000)],
      [fail(0, 3000), replica(1, 3000), replica(2, 3000)],
      [fail(0, 4000), replica(1, 4000), replica(2, 4000)],
      [fail(0, 5000), primary(1, 5000, { timeline: 2, walLsn: parseLsn('0/3000100') }), replica(2, 5000, { timeline: 2 })],
    );
    expect(ss[3]!.primary).toBeNull();
    const s = ss[4]!;
    expect(s.primary?.index).toBe(1);
    expect(s.primary).toMatchObject({ role: 'primary', state: 'up', timeline: 2 });
    expect(s.nodes[0]!.state).toBe('down');
    expect(s.nodes[2]!.lagBytes).toBe(0x100);
  });

  it('promotion seen before the old primary is counted down: newer timeline wins, the old one is fenced', () => {
    const ss = rounds(healthy(1000), [fail(0, 2000), primary(1, 2000, { timeline: 2 }), replica(2, 2000)]);
    const s = ss[1]!;
    expect(s.primary?.index).toBe(1);
    expect(s.nodes[0]!.state).toBe('fenced');
    expect(s.nodes[0]!.consecutiveFailures).toBe(1);
  });

  it('old primary returns as primary on the older timeline -> fenced, and stays fenced until it is a replica', () => {
    const down = (t: number) => [fail(0, t), primary(1, t, { timeline: 2 }), replica(2, t, { timeline: 2 })];
    const back = (t: number) => [primary(0, t, { timeline: 1 }), primary(1, t, { timeline: 2 }), replica(2, t, { timeline: 2 })];
    const ss = rounds(healthy(1000), down(2000), down(3000), down(4000), back(5000), back(6000), [
      replica(0, 7000, { timeline: 2 }),
      primary(1, 7000, { timeline: 2 }),
      replica(2, 7000, { timeline: 2 }),
    ]);
    expect(ss[3]!.nodes[0]!.state).toBe('down');
    const s = ss[4]!;
    expect(s.primary?.index).toBe(1);
    expect(s.nodes[0]).toMatchObject({ state: 'fenced', role: 'primary', timeline: 1 });
    expect(s.nodes[0]!.reason).toMatch(/127\.0\.0\.1:5433/);
    expect(s.nodes[0]!.reason).toMatch(/timeline 1/);
    expect(s.nodes[0]!.reason).toMatch(/timeline 2/);
    expect(s.nodes[0]!.lagMs).toBeNull();
    expect(ss[5]!.nodes[0]!.state).toBe('fenced');
    expect(ss[6]!.nodes[0]).toMatchObject({ state: 'up', role: 'replica' });
    expect(ss[6]!.primary?.index).toBe(1);
  });

  it('fenced stays fenced even once it is the only node claiming primary', () => {
    const ss = rounds(
      healthy(1000),
      [primary(0, 2000), primary(1, 2000, { timeline: 2 }), replica(2, 2000, { timeline: 2 })],
      [primary(0, 3000), fail(1, 3000), replica(2, 3000, { timeline: 2 })],
      [primary(0, 4000), fail(1, 4000), replica(2, 4000, { timeline: 2 })],
      [primary(0, 5000), fail(1, 5000), replica(2, 5000, { timeline: 2 })],
    );
    expect(ss[1]!.nodes[0]!.state).toBe('fenced');
    expect(ss[4]!.nodes[1]!.state).toBe('down');
    expect(ss[4]!.nodes[0]!.state).toBe('fenced');
    expect(ss[4]!.primary).toBeNull();
  });

  it('a primary on an older timeline than a known (even down) node is fenced', () => {
    // node1 was promoted (tli 2), then went down; node0 comes back on tli 1: not the primary.
    const ss = rounds(
      [fail(0, 1000), primary(1, 1000, { timeline: 2 }), replica(2, 1000, { timeline: 2 })],
      [primary(0, 2000), fail(1, 2000), fail(2, 2000)],
      [primary(0, 3000), fail(1, 3000), fail(2, 3000)],
      [primary(0, 4000), fail(1, 4000), fail(2, 4000)],
    );
    expect(ss[3]!.nodes[1]!.state).toBe('down');
    expect(ss[3]!.nodes[0]!.state).toBe('fenced');
    expect(ss[3]!.primary).toBeNull();
  });

  it('two primaries on the same timeline: the previous primary keeps it', () => {
    const ss = rounds(
      [replica(0, 1000), primary(1, 1000), replica(2, 1000)],
      [primary(0, 2000), primary(1, 2000), replica(2, 2000)],
    );
    expect(ss[1]!.primary?.index).toBe(1);
    expect(ss[1]!.nodes[0]!.state).toBe('fenced');
  });

  it('two primaries on the same timeline, neither was primary: the former replica wins', () => {
    const ss = rounds(
      [fail(0, 1000), replica(1, 1000), replica(2, 1000)],
      [primary(0, 2000), primary(1, 2000), replica(2, 2000)],
    );
    expect(ss[1]!.primary?.index).toBe(1);
    expect(ss[1]!.nodes[0]!.state).toBe('fenced');
  });

  it('different system identifier -> misconfigured, never primary', () => {
    // node2 is the primary of some other cluster that happens to answer on that address.
    const [s] = rounds([primary(0, 1000), replica(1, 1000), primary(2, 1000, { systemId: '999' })]);
    expect(s!.systemId).toBe(SYS);
    expect(s!.primary?.index).toBe(0);
    expect(s!.nodes[2]).toMatchObject({ state: 'misconfigured', role: 'primary', lagMs: null, lagBytes: null });
    expect(s!.nodes[2]!.reason).toMatch(/999/);
    expect(s!.nodes[2]!.reason).toMatch(new RegExp(SYS));
  });

  it('the cluster system identifier is remembered (first seen primary)', () => {
    const ss = rounds(healthy(1000), [primary(0, 2000), replica(1, 2000, { systemId: '42' }), replica(2, 2000)]);
    expect(ss[1]!.systemId).toBe(SYS);
    expect(ss[1]!.nodes[1]).toMatchObject({ state: 'misconfigured', role: 'replica', lagMs: null, lagBytes: null });
    // a whole new cluster answering on the primary's address later is misconfigured too
    const s = deriveTopology(ss[1]!, [primary(0, 3000, { systemId: '42' }), replica(1, 3000, { systemId: '42' })], 3000, OPTS);
    expect(s.systemId).toBe(SYS);
    expect(s.nodes[0]!.state).toBe('misconfigured');
    expect(s.primary).toBeNull();
    // and it recovers once the right node answers again
    const s2 = deriveTopology(s, healthy(4000), 4000, OPTS);
    expect(s2.nodes.map((n) => n.state)).toEqual(['up', 'up', 'up']);
    expect(s2.primary?.index).toBe(0);
  });

  describe('lag', () => {
    it('bytes behind the primary, ms from the replica replay timestamp', () => {
      const [s] = rounds([
        primary(0, 1000, { walLsn: parseLsn('0/5000000') }),
        replica(1, 1000, { walLsn: parseLsn('0/4000000'), replayLagMs: 1234.5 }),
        replica(2, 1000, { walLsn: parseLsn('0/5000000'), replayLagMs: 99999 }),
      ]);
      expect(s!.nodes[1]).toMatchObject({ lagBytes: 0x1000000, lagMs: 1234.5 });
      expect(s!.nodes[0]).toMatchObject({ lagBytes: 0, lagMs: 0 });
    });

    it('idle primary: replay == current LSN -> lagMs 0 regardless of the replay timestamp', () => {
      const [s] = rounds([
        primary(0, 1000, { walLsn: parseLsn('0/5000000') }),
        replica(1, 1000, { walLsn: parseLsn('0/5000000'), replayLagMs: 3_600_000 }),
        replica(2, 1000, { walLsn: parseLsn('0/5000010'), replayLagMs: null }), // probed just after a write
      ]);
      expect(s!.nodes[1]).toMatchObject({ lagBytes: 0, lagMs: 0 });
      expect(s!.nodes[2]).toMatchObject({ lagBytes: 0, lagMs: 0 });
    });

    it('null when not measurable', () => {
      const [s] = rounds([
        primary(0, 1000, { walLsn: parseLsn('0/5000000') }),
        replica(1, 1000, { walLsn: parseLsn('0/4000000'), replayLagMs: null }), // nothing replayed since start
        replica(2, 1000, { walLsn: undefined, replayLagMs: 5 }), // no replay position
      ]);
      expect(s!.nodes[1]).toMatchObject({ lagBytes: 0x1000000, lagMs: null });
      expect(s!.nodes[2]).toMatchObject({ lagBytes: null, lagMs: null });
    });

    it('no primary: replicas at the same position lag nothing behind each other', () => {
      const [s] = rounds([fail(0, 1000), replica(1, 1000, { replayLagMs: 700 }), replica(2, 1000, { replayLagMs: null })]);
      expect(s!.primary).toBeNull();
      expect(s!.nodes[1]).toMatchObject({ lagBytes: 0, lagMs: 0 });
      expect(s!.nodes[2]).toMatchObject({ lagBytes: 0, lagMs: 0 });
    });

    it('primary figure from an earlier round: a caught-up replica is at most that old', () => {
      const ss = rounds(healthy(1000), [fail(0, 2000), replica(1, 2000, { replayLagMs: 50_000 }), replica(2, 2000)]);
      expect(ss[1]!.primary?.index).toBe(0);
      // derive ran at now = 2000, primary last checked at 1000
      expect(ss[1]!.nodes[1]).toMatchObject({ lagBytes: 0, lagMs: 1000 });
    });

    it('WAL without commits: a replica keeping up is as old as the primary check it has reached', () => {
      // The primary writes WAL (hint bits, vacuum) but commits nothing: the replica's last
      // replayed commit grows old (replayLagMs), yet each round it has replayed what the
      // primary had one round earlier.
      const lsn = (mb: number) => BigInt(mb) << 20n;
      const ss = rounds(
        [primary(0, 1000, { walLsn: lsn(10) }), replica(1, 1000, { walLsn: lsn(9), replayLagMs: 30_000 }), replica(2, 1000, { walLsn: lsn(9), replayLagMs: 30_000 })],
        [primary(0, 2000, { walLsn: lsn(11) }), replica(1, 2000, { walLsn: lsn(10), replayLagMs: 31_000 }), replica(2, 2000, { walLsn: lsn(9), replayLagMs: 31_000 })],
        [primary(0, 3000, { walLsn: lsn(12) }), replica(1, 3000, { walLsn: lsn(11), replayLagMs: 32_000 }), replica(2, 3000, { walLsn: lsn(9), replayLagMs: 32_000 })],
      );
      // Round 1: no earlier primary check to compare with: the commit age is all there is.
      expect(ss[0]!.nodes[1]!.lagMs).toBe(30_000);
      // Round 3: node 1 is where the primary was at 2000 (1 s ago); node 2 stopped at the
      // first check's position minus 1 MB, which no check of the primary is at or below.
      expect(ss[2]!.nodes[1]).toMatchObject({ lagBytes: 1 << 20, lagMs: 1000 });
      expect(ss[2]!.nodes[2]).toMatchObject({ lagBytes: 3 << 20, lagMs: 32_000 });
      // The commit age still wins when it is the tighter bound.
      const [t] = rounds(
        [primary(0, 1000, { walLsn: lsn(10) }), replica(1, 1000, { walLsn: lsn(10) }), replica(2, 1000)],
      );
      const t2 = deriveTopology(t!, [primary(0, 5000, { walLsn: lsn(20) }), replica(1, 5000, { walLsn: lsn(15), replayLagMs: 200 }), replica(2, 5000)], 5000, OPTS);
      expect(t2.nodes[1]!.lagMs).toBe(200);
      // A replica stuck at an old position ages with the clock.
      const t3 = deriveTopology(t2, [primary(0, 9000, { walLsn: lsn(30) }), replica(1, 9000, { walLsn: lsn(10), replayLagMs: null }), replica(2, 9000)], 9000, OPTS);
      expect(t3.nodes[1]!.lagMs).toBe(8000);
    });

    it('a new primary starts its WAL marks afresh', () => {
      const lsn = (mb: number) => BigInt(mb) << 20n;
      const s1 = deriveTopology(null, [primary(0, 1000, { walLsn: lsn(50) }), replica(1, 1000, { walLsn: lsn(50) }), replica(2, 1000, { walLsn: lsn(50) })], 1000, OPTS);
      expect(s1.primaryWal?.map((m) => m.at)).toEqual([1000]);
      // Node 1 promoted (timeline 2); node 0 gone.
      const s2 = deriveTopology(
        s1,
        [fail(0, 2000), primary(1, 2000, { timeline: 2, walLsn: lsn(60) }), replica(2, 2000, { timeline: 2, walLsn: lsn(55), replayLagMs: 40_000 })],
        2000,
        { ...OPTS, maxRetries: 1 },
      );
      expect(s2.primary?.index).toBe(1);
      expect(s2.primaryWal?.map((m) => m.at)).toEqual([2000]);
      // Node 0's old mark at 50 MB must not vouch for node 2 on the new primary.
      expect(s2.nodes[2]!.lagMs).toBe(40_000);
    });

    it('keeps a bounded number of marks', () => {
      let s: TopologySnapshot | null = null;
      for (let i = 1; i <= 500; i++) s = deriveTopology(s, [primary(0, i * 1000, { walLsn: BigInt(i) << 20n }), replica(1, i * 1000), replica(2, i * 1000)], i * 1000, OPTS);
      expect(s!.primaryWal!.length).toBeLessThanOrEqual(120);
      expect(s!.primaryWal!.at(-1)!.at).toBe(500_000);
    });

    it('negative differences clamp to 0', () => {
      const [s] = rounds([
        primary(0, 1000, { walLsn: parseLsn('0/5000000') }),
        replica(1, 1000, { walLsn: parseLsn('0/6000000'), replayLagMs: 10 }),
        replica(2, 1000),
      ]);
      expect(s!.nodes[1]).toMatchObject({ lagBytes: 0, lagMs: 0 });
    });
  });

  describe('node list changes', () => {
    it('keeps the state of unchanged nodes, re-weights, drops and adds', () => {
      const [s1] = rounds(healthy(1000));
      const nodes: NodeConfig[] = [
        { host: '127.0.0.1', port: 5434, weight: 7 },
        { host: '127.0.0.1', port: 5432, weight: 1 },
        { host: '127.0.0.1', port: 6000, weight: 1 },
      ];
      const s2 = deriveTopology(s1!, [], 2000, { nodes, maxRetries: 3 });
      expect(s2.nodes.map((n) => [n.index, n.name, n.role, n.state, n.weight])).toEqual([
        [0, '127.0.0.1:5434', 'replica', 'up', 7],
        [1, '127.0.0.1:5432', 'primary', 'up', 1],
        [2, '127.0.0.1:6000', 'unknown', 'down', 1],
      ]);
      expect(s2.primary?.index).toBe(1);
      expect(s2.primary).toBe(s2.nodes[1]);
    });
  });

  it('is pure: the previous snapshot is not modified', () => {
    const [s1] = rounds(healthy(1000));
    const copy = JSON.stringify(s1, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
    deriveTopology(s1!, [fail(0, 2000), primary(1, 2000, { timeline: 2 })], 2000, OPTS);
    expect(JSON.stringify(s1, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))).toBe(copy);
  });
});

/** Like rounds(), with a lag policy (round i runs at now = 1000 * (i + 1)). */
function roundsWith(policy: Partial<LagPolicy>, ...probeRounds: ProbeResult[][]): TopologySnapshot[] {
  const opts: DeriveOptions = { ...OPTS, lagPolicy: { ...lagPolicyOf({ nodes: NODES, maxLagBytes: null, maxLagMs: null, lagHysteresis: 0.2, readWithoutPrimaryTimeoutMs: 0 }), ...policy } };
  const out: TopologySnapshot[] = [];
  let prev: TopologySnapshot | null = null;
  probeRounds.forEach((probes, i) => {
    prev = deriveTopology(prev, probes, 1000 * (i + 1), opts);
    out.push(prev);
  });
  return out;
}

const MB = 1n << 20n;
const mb = (n: number) => BigInt(Math.round(n * 1024 * 1024));
/** Primary at `p` MB, replicas at `r1` / `r2` MB of WAL. */
function at(t: number, p: number, r1: number, r2: number, over: { r1?: Partial<ProbeResult>; r2?: Partial<ProbeResult> } = {}): ProbeResult[] {
  return [
    primary(0, t, { walLsn: mb(p) }),
    replica(1, t, { walLsn: mb(r1), ...over.r1 }),
    replica(2, t, { walLsn: mb(r2), ...over.r2 }),
  ];
}

describe('lagging: decided once per round, with hysteresis', () => {
  const LIMIT = 4 * 1024 * 1024;

  it('a replica over max_lag_bytes is lagging, with the lag and the limit in the reason; the other stays up', () => {
    const [s] = roundsWith({ maxLagBytes: LIMIT }, at(1000, 20, 10, 19));
    expect(s!.nodes.map((n) => n.state)).toEqual(['up', 'lagging', 'up']);
    expect(s!.nodes[1]!.reason).toBe(`replay lag ${10 * 1024 * 1024} bytes over max_lag_bytes ${LIMIT}`);
    expect(s!.nodes[1]!.lagExclusions).toBe(1);
    expect(s!.nodes[2]!.lagExclusions).toBe(0);
    expect(s!.nodes[2]!.reason).toBeUndefined();
    expect(currentRole(s!.nodes[1]!)).toBe('replica');
  });

  it('comes back only under (1 - lag_hysteresis) x the limit, and counts each exclusion once', () => {
    // limit 4 MB, hysteresis 0.25: back under 3 MB.
    const ss = roundsWith(
      { maxLagBytes: LIMIT, lagHysteresis: 0.25 },
      at(1000, 20, 20, 20),
      at(2000, 30, 25, 30), // 5 MB behind: out
      at(3000, 30, 26.5, 30), // 3.5 MB: under the limit, not under 3 MB: still out
      at(4000, 30, 27.5, 30), // 2.5 MB: back
      at(5000, 30, 27.5, 30), // 2.5 MB while up: stays up (the limit is 4 MB again)
      at(6000, 40, 35, 40), // 5 MB: out again
    );
    expect(ss.map((s) => s.nodes[1]!.state)).toEqual(['up', 'lagging', 'lagging', 'up', 'up', 'lagging']);
    expect(ss.map((s) => s.nodes[1]!.lagExclusions)).toEqual([0, 1, 1, 1, 1, 2]);
    expect(ss[2]!.nodes[1]!.reason).toMatch(/serves again under 75% of the limit/);
    expect(ss[3]!.nodes[1]!.reason).toBeUndefined();
  });

  it('max_lag_ms: an unmeasurable age is lagging; the time figures are in the reason', () => {
    const [s] = roundsWith(
      { maxLagMs: 500 },
      at(1000, 20, 10, 19, { r1: { replayLagMs: null }, r2: { replayLagMs: 900 } }),
    );
    expect(s!.nodes[1]).toMatchObject({ state: 'lagging', lagMs: null });
    expect(s!.nodes[1]!.reason).toMatch(/data age not measurable \(max_lag_ms 500\)/);
    expect(s!.nodes[2]).toMatchObject({ state: 'lagging', lagMs: 900 });
    expect(s!.nodes[2]!.reason).toBe('data 900 ms old, over max_lag_ms 500');
  });

  it('per-node overrides replace the global limits', () => {
    const perNode = new Map([['127.0.0.1:5434', { maxLagBytes: null }]]);
    const [s] = roundsWith({ maxLagBytes: LIMIT, perNode }, at(1000, 20, 10, 10));
    expect(s!.nodes[1]!.state).toBe('lagging');
    expect(s!.nodes[2]!.state).toBe('up');
  });

  it('no limits (the default policy): never lagging, however far behind', () => {
    const [s] = rounds(at(1000, 2000, 10, 10, { r1: { replayLagMs: null } }));
    expect(s!.nodes.map((n) => n.state)).toEqual(['up', 'up', 'up']);
  });

  it('a replica not checked this round keeps being lagging; the primary is never lagging', () => {
    const ss = roundsWith({ maxLagBytes: LIMIT, maxLagMs: 1 }, at(1000, 20, 10, 20), [primary(0, 2000, { walLsn: 20n * MB, replayLagMs: 99_999 })]);
    expect(ss[1]!.nodes[1]!.state).toBe('lagging');
    expect(ss[1]!.nodes[0]!.state).toBe('up');
    expect(ss[1]!.nodes[1]!.lagExclusions).toBe(1);
  });

  it('a lagging replica that goes down is down; back and over the limit, it is excluded again', () => {
    const ss = roundsWith(
      { maxLagBytes: LIMIT },
      at(1000, 20, 10, 20),
      [primary(0, 2000, { walLsn: 20n * MB }), fail(1, 2000), replica(2, 2000, { walLsn: 20n * MB })],
      [primary(0, 3000, { walLsn: 20n * MB }), fail(1, 3000), replica(2, 3000, { walLsn: 20n * MB })],
      [primary(0, 4000, { walLsn: 20n * MB }), fail(1, 4000), replica(2, 4000, { walLsn: 20n * MB })],
      at(5000, 20, 10, 20),
    );
    expect(ss.map((s) => s.nodes[1]!.state)).toEqual(['lagging', 'lagging', 'lagging', 'down', 'lagging']);
    expect(ss[4]!.nodes[1]!.lagExclusions).toBe(2);
    expect(currentRole(ss[3]!.nodes[1]!)).toBe('unknown');
    expect(ss[3]!.nodes[1]!.role).toBe('replica');
  });
});

describe('reads with no primary', () => {
  /** The primary (node 0) fails for good from round 2; maxRetries 3 -> no primary from round 4. */
  const lost = (t: number, r1: Partial<ProbeResult>, r2: Partial<ProbeResult>) => [fail(0, t), replica(1, t, r1), replica(2, t, r2)];

  it('primaryLostAt: from the start while none was ever seen, null with a primary, the snapshot that lost it after', () => {
    const empty = emptyTopology(NODES, 500);
    expect(empty.primaryLostAt).toBe(500);
    const s1 = deriveTopology(empty, [fail(0, 1000), replica(1, 1000), replica(2, 1000)], 1000, OPTS);
    expect(s1.primaryLostAt).toBe(500);
    const s2 = deriveTopology(s1, healthy(2000), 2000, OPTS);
    expect(s2.primaryLostAt).toBeNull();
    let s = s2;
    for (const t of [3000, 4000, 5000]) s = deriveTopology(s, lost(t, {}, {}), t, OPTS);
    expect(s.primary).toBeNull();
    expect(s.primaryLostAt).toBe(5000);
    const later = deriveTopology(s, lost(6000, {}, {}), 6000, OPTS);
    expect(later.primaryLostAt).toBe(5000);
    const back = deriveTopology(later, healthy(7000), 7000, OPTS);
    expect(back.primaryLostAt).toBeNull();
    expect(back.nodes[1]!.reason).toBeUndefined();
  });

  it('up replicas keep serving, say so, and lag is measured against the most advanced one', () => {
    const ss = roundsWith(
      { maxLagBytes: 4 * 1024 * 1024, maxLagMs: 10_000 },
      at(1000, 20, 20, 20),
      lost(2000, { walLsn: 20n * MB }, { walLsn: 20n * MB }),
      lost(3000, { walLsn: 20n * MB }, { walLsn: 20n * MB }),
      lost(4000, { walLsn: 20n * MB, replayLagMs: 5000 }, { walLsn: 19n * MB, replayLagMs: 5300 }),
    );
    const s = ss[3]!;
    expect(s.primary).toBeNull();
    expect(s.primaryLostAt).toBe(4000);
    expect(s.nodes[1]).toMatchObject({ state: 'up', lagBytes: 0, lagMs: 0 });
    expect(s.nodes[2]).toMatchObject({ state: 'up', lagBytes: 1 << 20, lagMs: 300 });
    for (const i of [1, 2]) expect(s.nodes[i]!.reason).toBe('serving reads without a primary since 1970-01-01T00:00:04.000Z: data as of then');
    // The old primary is down and shows as such: not the current primary.
    expect(s.nodes[0]).toMatchObject({ state: 'down', role: 'primary' });
    expect(currentRole(s.nodes[0]!)).toBe('unknown');
  });

  it('a replica far behind its sibling stays out of reads', () => {
    const ss = roundsWith(
      { maxLagBytes: 4 * 1024 * 1024 },
      at(1000, 30, 30, 20),
      lost(2000, { walLsn: 30n * MB }, { walLsn: 20n * MB }),
      lost(3000, { walLsn: 30n * MB }, { walLsn: 20n * MB }),
      lost(4000, { walLsn: 30n * MB }, { walLsn: 20n * MB }),
    );
    expect(ss[0]!.nodes[2]!.state).toBe('lagging');
    expect(ss[3]!.primary).toBeNull();
    expect(ss[3]!.nodes[1]!.state).toBe('up');
    expect(ss[3]!.nodes[2]).toMatchObject({ state: 'lagging', lagBytes: 10 << 20 });
    expect(ss[3]!.nodes[2]!.lagExclusions).toBe(1);
  });

  it('read_without_primary_timeout: every replica stops serving once it has passed, and serves again with a primary', () => {
    const policy = { maxLagMs: 10_000, readWithoutPrimaryTimeoutMs: 2500 };
    const ss = roundsWith(
      policy,
      at(1000, 20, 20, 20),
      lost(2000, {}, {}),
      lost(3000, {}, {}),
      lost(4000, {}, {}), // primary lost at 4000
      lost(5000, {}, {}),
      lost(6000, {}, {}), // 2000 ms: still serving
      lost(7000, {}, {}), // 3000 ms: stopped
      lost(8000, {}, {}),
      at(9000, 20, 20, 20),
    );
    expect(ss.map((s) => s.nodes[1]!.state)).toEqual(['up', 'up', 'up', 'up', 'up', 'up', 'lagging', 'lagging', 'up']);
    const stopped = ss[6]!.nodes[1]!;
    expect(stopped).toMatchObject({ lagBytes: null, lagMs: null, lagExclusions: 0 });
    expect(stopped.reason).toBe(
      'no primary since 1970-01-01T00:00:04.000Z, longer than read_without_primary_timeout (2500 ms): no reads until a primary is back',
    );
    expect(ss[8]!.nodes[1]!.reason).toBeUndefined();
    expect(ss[8]!.nodes[1]!.lagExclusions).toBe(0);
  });

  it('read_without_primary_timeout 0: no limit', () => {
    let s: TopologySnapshot | null = null;
    const opts: DeriveOptions = { ...OPTS, lagPolicy: { ...lagPolicyOf({ nodes: NODES, maxLagBytes: null, maxLagMs: null, lagHysteresis: 0.2, readWithoutPrimaryTimeoutMs: 0 }) } };
    for (let t = 1000; t <= 3_600_000; t += 60_000) s = deriveTopology(s, lost(t, {}, {}), t, opts);
    expect(s!.primary).toBeNull();
    expect(s!.nodes[1]!.state).toBe('up');
  });

  it('never seen a primary: counts from the start', () => {
    const empty = emptyTopology(NODES, 0);
    const opts: DeriveOptions = { ...OPTS, lagPolicy: { ...lagPolicyOf({ nodes: NODES, maxLagBytes: null, maxLagMs: null, lagHysteresis: 0.2, readWithoutPrimaryTimeoutMs: 1500 }) } };
    const s1 = deriveTopology(empty, lost(1000, {}, {}), 1000, opts);
    expect(s1.nodes[1]!.state).toBe('up');
    const s2 = deriveTopology(s1, lost(2000, {}, {}), 2000, opts);
    expect(s2.nodes[1]!.state).toBe('lagging');
  });
});

describe('diverged replicas', () => {
  const T1 = { timeline: 1 };
  const T2 = { timeline: 2 };
  /**
   * node0 primary on timeline 1; node1 stopped receiving at 10 MB; node2 replayed to 12 MB;
   * node0 dies (counted down at round 4); node1 is promoted (timeline 2, forked at 10 MB).
   */
  function failover(node2: Partial<ProbeResult>, node1Receive: bigint | null = 10n * MB): TopologySnapshot[] {
    return rounds(
      [primary(0, 1000, { walLsn: 12n * MB }), replica(1, 1000, { walLsn: 10n * MB, receiveLsn: node1Receive }), replica(2, 1000, { walLsn: 12n * MB })],
      [fail(0, 2000), replica(1, 2000, { walLsn: 10n * MB, receiveLsn: node1Receive }), replica(2, 2000, { walLsn: 12n * MB })],
      [fail(0, 3000), replica(1, 3000, { walLsn: 10n * MB, receiveLsn: node1Receive }), replica(2, 3000, { walLsn: 12n * MB })],
      [fail(0, 4000), replica(1, 4000, { walLsn: 10n * MB, receiveLsn: node1Receive }), replica(2, 4000, { walLsn: 12n * MB })],
      [fail(0, 5000), primary(1, 5000, { ...T2, walLsn: 10n * MB + 4096n }), replica(2, 5000, { ...T1, walLsn: 12n * MB, ...node2 })],
    );
  }

  it('a replica past the fork point on the old timeline is diverged: no lag, a reason with the positions', () => {
    const ss = failover({});
    const s = ss[4]!;
    expect(s.primary?.index).toBe(1);
    expect(s.fork).toEqual({ timeline: 2, node: '127.0.0.1:5433', lsn: 10n * MB });
    expect(s.nodes[2]).toMatchObject({ state: 'diverged', role: 'replica', timeline: 1, lagBytes: null, lagMs: null });
    expect(s.nodes[2]!.reason).toBe(
      'on timeline 1 while the primary 127.0.0.1:5433 is on timeline 2, replayed to 0/C00000, past 0/A00000 where timeline 2 forked ' +
        '(127.0.0.1:5433 promoted): its WAL may hold writes the primary never had; re-clone it or pg_rewind it to follow the primary',
    );
    // Before the promotion nothing was diverged (no other timeline yet), even with no primary.
    expect(ss[3]!.nodes[2]!.state).toBe('up');
  });

  it('a timeline read from the control file says so, and what the health-check user needs', () => {
    const s = failover({ timelineHidden: true })[4]!;
    expect(s.nodes[2]!.state).toBe('diverged');
    expect(s.nodes[2]!.reason).toMatch(/grant the health-check user pg_monitor or pg_read_all_stats/);
    expect(failover({})[4]!.nodes[2]!.reason).not.toMatch(/pg_read_all_stats/);
  });

  it('at or below the fork point an old reported timeline is no divergence (it can still switch)', () => {
    const s = failover({ walLsn: 10n * MB })[4]!;
    expect(s.nodes[2]).toMatchObject({ state: 'up', timeline: 1, lagBytes: 4096 });
    const below = failover({ walLsn: 9n * MB })[4]!;
    expect(below.nodes[2]!.state).toBe('up');
  });

  it('the fork point bound is the promoted node\'s replay or receive position, whichever is further', () => {
    const s = failover({ walLsn: 11n * MB }, 11n * MB)[4]!;
    expect(s.fork?.lsn).toBe(11n * MB);
    expect(s.nodes[2]!.state).toBe('up');
  });

  it('comes back once it reports the primary\'s timeline (re-cloned or rewound), and keeps it', () => {
    const ss = failover({});
    const back = deriveTopology(ss[4]!, [fail(0, 6000), primary(1, 6000, { ...T2, walLsn: 13n * MB }), replica(2, 6000, { ...T2, walLsn: 13n * MB })], 6000, OPTS);
    expect(back.nodes[2]).toMatchObject({ state: 'up', timeline: 2, lagBytes: 0 });
    expect(back.nodes[2]!.reason).toBeUndefined();
    // Its WAL receiver reconnecting, the probe falls back to the last restartpoint's timeline:
    // a replica seen on timeline 2 without a gap stays on it.
    const blip = deriveTopology(back, [fail(0, 7000), primary(1, 7000, { ...T2, walLsn: 14n * MB }), replica(2, 7000, { ...T1, walLsn: 14n * MB })], 7000, OPTS);
    expect(blip.nodes[2]).toMatchObject({ state: 'up', timeline: 2 });
  });

  it('a new primary on a newer timeline never seen as a replica: the fork point is unknown, an old-timeline replica is diverged', () => {
    const ss = rounds(
      healthy(1000),
      [fail(0, 2000), fail(1, 2000), replica(2, 2000)],
      [fail(0, 3000), fail(1, 3000), replica(2, 3000)],
      [fail(0, 4000), fail(1, 4000), replica(2, 4000)],
      [fail(0, 5000), primary(1, 5000, T2), replica(2, 5000, { ...T1, walLsn: 1n * MB })],
    );
    // node1 was a replica before (role known), just not answering at the end: its last known
    // position (round 1) still bounds the fork from below.
    expect(ss[4]!.fork?.lsn).toBe(parseLsn('0/3000000'));
    expect(ss[4]!.nodes[2]!.state).toBe('up');
    // pgmux starting after the promotion has seen no switch: where it forked is unknown.
    const start = deriveTopology(null, [primary(1, 1000, T2), replica(2, 1000, T1)], 1000, OPTS);
    expect(start.fork).toBeNull();
    expect(start.nodes[2]!.state).toBe('diverged');
    expect(start.nodes[2]!.reason).toMatch(/where timeline 2 forked is unknown/);
    // A primary seen on timeline 1, then one on timeline 2 that was never a replica here.
    const seen = deriveTopology(null, [primary(0, 1000, T1), replica(2, 1000, T1)], 1000, { ...OPTS, maxRetries: 1 });
    const jump = deriveTopology(seen, [fail(0, 2000), primary(1, 2000, T2), replica(2, 2000, { ...T1, walLsn: 1n * MB })], 2000, { ...OPTS, maxRetries: 1 });
    expect(jump.fork).toEqual({ timeline: 2, node: '127.0.0.1:5433', lsn: null });
    expect(jump.nodes[2]!.state).toBe('diverged');
  });

  it('stays diverged with no primary, and is no reference for the others\' lag', () => {
    const ss = failover({});
    // node1 (the new primary) dies too.
    let s = ss[4]!;
    for (const t of [6000, 7000, 8000]) s = deriveTopology(s, [fail(0, t), fail(1, t), replica(2, t, { ...T1, walLsn: 12n * MB })], t, OPTS);
    expect(s.primary).toBeNull();
    expect(s.nodes[2]!.state).toBe('diverged');
    expect(s.nodes[2]!.reason).toMatch(/while the cluster is on timeline 2/);
  });

  it('a diverged node does not count as the most advanced replica without a primary', () => {
    // Three replicas by config: node0 (was primary, now replica on timeline 2 after a rewind),
    // node2 diverged ahead on timeline 1.
    const ss = failover({});
    let s = ss[4]!;
    s = deriveTopology(s, [replica(0, 6000, { ...T2, walLsn: 10n * MB }), primary(1, 6000, { ...T2, walLsn: 10n * MB }), replica(2, 6000, { ...T1, walLsn: 12n * MB })], 6000, OPTS);
    expect(s.nodes[0]!.state).toBe('up');
    for (const t of [7000, 8000, 9000]) {
      s = deriveTopology(s, [replica(0, t, { ...T2, walLsn: 10n * MB }), fail(1, t), replica(2, t, { ...T1, walLsn: 12n * MB })], t, OPTS);
    }
    expect(s.primary).toBeNull();
    expect(s.nodes[0]).toMatchObject({ state: 'up', lagBytes: 0, lagMs: 0 });
    expect(s.nodes[2]!.state).toBe('diverged');
  });

  it('a replica on a newer timeline than the primary is left to the fencing rules', () => {
    const [s] = rounds([primary(0, 1000, T1), replica(1, 1000, T2), replica(2, 1000, T1)]);
    expect(s!.nodes[0]!.state).toBe('fenced');
    expect(s!.nodes[1]!.state).toBe('up');
  });
});
