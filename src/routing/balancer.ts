// Which node serves a read: the eligible nodes (up replicas, plus the primary when its
// read weight is above 0), picked by smooth weighted round-robin. Whether a replica is
// within its lag limits is decided once per topology round (state `lagging`, see
// src/cluster/topology.ts); only a statement's own staleness budget is checked here.
// Pure decisions over a topology snapshot; never touches a socket.

import type { NodeSnapshot, TopologySnapshot } from '../cluster/snapshot.js';

export interface ReadPolicy {
  fallbackToPrimary: boolean;
}

export type ReadChoice =
  | { node: NodeSnapshot; reason: string }
  | { node: null; reason: string };

/**
 * Smooth weighted round-robin (as in nginx): over any window of sum(weights) picks, each
 * node is chosen exactly in proportion to its weight, and picks interleave rather than
 * come in bursts.
 */
export class SmoothWeightedRoundRobin {
  private readonly current = new Map<string, number>();

  pick<T extends { name: string; weight: number }>(candidates: readonly T[]): T | null {
    let total = 0;
    let best: T | null = null;
    let bestCurrent = -Infinity;
    for (const c of candidates) {
      if (c.weight <= 0) continue;
      const cur = (this.current.get(c.name) ?? 0) + c.weight;
      this.current.set(c.name, cur);
      total += c.weight;
      if (cur > bestCurrent) {
        bestCurrent = cur;
        best = c;
      }
    }
    if (best !== null) this.current.set(best.name, bestCurrent - total);
    return best;
  }
}

export class ReadBalancer {
  private readonly wrr = new SmoothWeightedRoundRobin();

  constructor(private policy: () => ReadPolicy) {}

  /**
   * @param minLsn   read-your-writes: only replicas that replayed up to this LSN qualify
   * @param maxLagMsHint  a statement's own staleness budget (/* pgmux:max_lag_ms=N *\/): it
   *                 replaces the configured lag limits for that statement
   * @param replicasOnly  a replica-only entry (route: replica): never the primary, not even as a fallback
   */
  choose(topo: TopologySnapshot, minLsn: bigint | null = null, maxLagMsHint: number | null = null, replicasOnly = false): ReadChoice {
    const policy = this.policy();
    const eligible: NodeSnapshot[] = [];
    let skippedLag = 0;
    let skippedLsn = 0;
    for (const n of topo.nodes) {
      if ((n.state !== 'up' && n.state !== 'lagging') || n.weight <= 0) continue;
      if (n.role === 'primary') {
        if (topo.primary === n && n.state === 'up' && !replicasOnly) eligible.push(n);
        continue;
      }
      if (n.role !== 'replica') continue;
      if (maxLagMsHint !== null ? n.lagMs === null || n.lagMs > maxLagMsHint : n.state === 'lagging') {
        skippedLag++;
        continue;
      }
      if (minLsn !== null && (n.walLsn === null || n.walLsn < minLsn)) {
        skippedLsn++;
        continue;
      }
      eligible.push(n);
    }
    const pick = this.wrr.pick(eligible);
    if (pick !== null) return { node: pick, reason: pick.role === 'primary' ? 'read on primary (read weight > 0)' : 'read on replica' };
    const why =
      skippedLsn > 0
        ? 'no replica has replayed this client\'s last write yet'
        : skippedLag > 0
          ? topo.primary === null
            ? 'no primary, and every replica is over the lag limit or past read_without_primary_timeout'
            : 'every replica is over the lag limit'
          : 'no healthy replica with read weight > 0';
    if (policy.fallbackToPrimary && topo.primary !== null && !replicasOnly) return { node: topo.primary, reason: `${why}: fallback to primary` };
    return { node: null, reason: why };
  }
}
