// Cluster topology: the pure decision logic that turns one round of health-check probes
// (plus the previous snapshot) into the next snapshot (its shape: src/cluster/snapshot.ts).
// No I/O here: src/cluster/monitor.ts does the probing and publishing.
//
// Decision rules (deriveTopology):
//  - A node answering pg_is_in_recovery() = false is a primary candidate.
//  - The cluster's system identifier is the first seen primary's, remembered in the
//    snapshot; a node reporting another one is `misconfigured` and never a candidate.
//  - Among the up candidates the highest timeline wins; ties go to the node that was
//    already primary, then to one that was a replica (freshly promoted), then to the
//    lowest index. The losers are `fenced`: never routed to, and they stay fenced for as
//    long as they keep claiming to be primary (until they come back as replicas).
//  - A candidate is also fenced when any other known node of the cluster (a replica, a
//    down node's last known state) is on a higher timeline: a promotion happened
//    elsewhere, this node's history has diverged from the cluster's.
//  - A node becomes `down` after `maxRetries` consecutive failed checks; before that it
//    keeps its previous state (a primary keeps being primary) with the failures counted.
//  - Lag, read eligibility (`lagging`) and divergence (`diverged`) of the replicas:
//    src/cluster/replicaHealth.ts, called from deriveTopology.

import type { NodeConfig } from '../config/types.js';
import { applyReadLimits, markDiverged, measureLag, NO_LAG_POLICY, type Draft, type LagPolicy, type Work } from './replicaHealth.js';
import { nodeName, type NodeSnapshot, type ProbeResult, type TopologySnapshot } from './snapshot.js';

export interface DeriveOptions {
  /** The configured nodes; snapshot nodes follow this order (index). */
  nodes: readonly NodeConfig[];
  /** Consecutive failed checks before a node is `down` (healthCheckMaxRetries). */
  maxRetries: number;
  /** What makes a replica `lagging`; default: no limits. */
  lagPolicy?: LagPolicy;
}

/** The snapshot before any check: every node down, role unknown. */
export function emptyTopology(nodes: readonly NodeConfig[], now: number): TopologySnapshot {
  const snap = deriveTopology(null, [], now, { nodes, maxRetries: 1 });
  return Object.freeze({ ...snap, version: 0 });
}

function tl(n: { timeline: number | null }): number {
  return n.timeline ?? -1;
}

/**
 * The next snapshot from the previous one and this round's probes (nodes without a probe
 * keep their previous state). Pure: same inputs, same output.
 */
export function deriveTopology(
  prev: TopologySnapshot | null,
  probes: readonly ProbeResult[],
  now: number,
  opts: DeriveOptions,
): TopologySnapshot {
  const maxRetries = Math.max(1, Math.floor(opts.maxRetries));
  const prevByName = new Map<string, NodeSnapshot>();
  for (const n of prev?.nodes ?? []) prevByName.set(n.name, n);
  const probeByIndex = new Map<number, ProbeResult>();
  for (const p of probes) probeByIndex.set(p.index, p);
  const prevPrimaryName = prev?.primary?.name ?? null;

  // 1. Per node: apply this round's probe, or keep the previous state.
  const work: Work[] = opts.nodes.map((cfg, index) => {
    const name = nodeName(cfg);
    const p = prevByName.get(name);
    const draft: Draft = p
      ? { ...p, index, host: cfg.host, port: cfg.port, weight: cfg.weight }
      : {
          index,
          name,
          host: cfg.host,
          port: cfg.port,
          weight: cfg.weight,
          role: 'unknown',
          state: 'down',
          reason: 'not checked yet',
          timeline: null,
          systemId: null,
          walLsn: null,
          receiveLsn: null,
          lagBytes: null,
          lagMs: null,
          lagExclusions: 0,
          lastCheckAt: 0,
          lastOkAt: 0,
          consecutiveFailures: 0,
        };
    const probe = probeByIndex.get(index);
    let fresh: ProbeResult | undefined;
    if (probe && probe.ok) {
      fresh = probe;
      draft.role = probe.inRecovery ? 'replica' : 'primary';
      draft.state = 'up';
      delete draft.reason;
      draft.timeline = probe.timeline ?? null;
      // A replica's reported timeline falls back to its last restartpoint's when its WAL
      // receiver is not visible (reconnecting, or no pg_read_all_stats), which can be
      // older than the one it already follows: a replica seen without a gap keeps the
      // newest it reported (a data directory's timeline never goes back).
      if (
        probe.inRecovery &&
        p?.role === 'replica' &&
        p.state !== 'down' &&
        p.lastOkAt > 0 &&
        p.timeline !== null &&
        (draft.timeline === null || draft.timeline < p.timeline)
      ) {
        draft.timeline = p.timeline;
      }
      draft.systemId = probe.systemId ?? null;
      draft.walLsn = probe.walLsn ?? null;
      draft.receiveLsn = probe.receiveLsn ?? null;
      draft.lagBytes = null;
      draft.lagMs = null;
      draft.lastCheckAt = probe.at;
      draft.lastOkAt = probe.at;
      draft.consecutiveFailures = 0;
    } else if (probe) {
      draft.consecutiveFailures = (p?.consecutiveFailures ?? 0) + 1;
      draft.lastCheckAt = probe.at;
      if (draft.consecutiveFailures >= maxRetries || !p) {
        // Down: keep the last known role/timeline/LSNs (the timeline still matters for
        // fencing a node that comes back on an old one), but no lag.
        draft.state = 'down';
        draft.reason = probe.error ?? 'health check failed';
        draft.lagBytes = null;
        draft.lagMs = null;
      }
      // else: keeps its previous state for now (a node already down says why it still is).
      else if (draft.state === 'down') draft.reason = probe.error ?? 'health check failed';
    }
    return { draft, prev: p, fresh };
  });

  // 2. The cluster's system identifier: remembered, else the first seen primary's.
  let systemId = prev?.systemId ?? null;
  if (systemId === null) {
    const first = work
      .filter((w) => w.fresh && w.draft.role === 'primary' && w.draft.systemId !== null)
      .sort((a, b) => tl(b.draft) - tl(a.draft) || a.draft.index - b.draft.index)[0];
    if (first) systemId = first.draft.systemId;
  }

  // 3. Misconfigured: answered, but belongs to another cluster.
  for (const w of work) {
    if (!w.fresh || systemId === null || w.draft.systemId === null) continue;
    if (w.draft.systemId !== systemId) {
      w.draft.state = 'misconfigured';
      w.draft.reason = `system identifier ${w.draft.systemId} differs from the cluster's ${systemId}: not part of this cluster`;
    }
  }

  // 4. Fenced stays fenced while the node keeps claiming to be primary.
  for (const w of work) {
    if (w.fresh && w.draft.state === 'up' && w.draft.role === 'primary' && w.prev?.state === 'fenced') {
      w.draft.state = 'fenced';
    }
  }

  // 5. Pick the primary among the up candidates.
  const candidates = work
    .filter((w) => w.draft.state === 'up' && w.draft.role === 'primary')
    .sort((a, b) => {
      const byTl = tl(b.draft) - tl(a.draft);
      if (byTl !== 0) return byTl;
      const aWas = a.draft.name === prevPrimaryName ? 1 : 0;
      const bWas = b.draft.name === prevPrimaryName ? 1 : 0;
      if (aWas !== bWas) return bWas - aWas;
      const aRep = a.prev?.role === 'replica' ? 1 : 0;
      const bRep = b.prev?.role === 'replica' ? 1 : 0;
      if (aRep !== bRep) return bRep - aRep;
      return a.draft.index - b.draft.index;
    });
  let winner: Work | undefined = candidates[0];
  if (winner) {
    // Someone else in the cluster (a replica, a down node's last known state) is on a
    // newer timeline: a promotion happened elsewhere, this history is a dead branch.
    let newest: Work | undefined;
    for (const w of work) {
      if (w === winner || w.draft.state === 'misconfigured' || w.draft.timeline === null) continue;
      if (!newest || tl(w.draft) > tl(newest.draft)) newest = w;
    }
    if (newest && winner.draft.timeline !== null && tl(newest.draft) > winner.draft.timeline) {
      for (const c of candidates) {
        c.draft.state = 'fenced';
        c.draft.reason =
          `claims to be primary on timeline ${c.draft.timeline}, but ${newest.draft.name} ` +
          `(${newest.draft.state} ${newest.draft.role}) is on newer timeline ${newest.draft.timeline}: ` +
          `fenced until it comes back as a replica`;
      }
      winner = undefined;
    }
  }
  if (winner) {
    for (const c of candidates) {
      if (c === winner) continue;
      c.draft.state = 'fenced';
      c.draft.reason =
        `claims to be primary on timeline ${c.draft.timeline}, but ${winner.draft.name} is primary on timeline ` +
        `${winner.draft.timeline}: fenced until it comes back as a replica`;
    }
    winner.draft.lagBytes = 0;
    winner.draft.lagMs = 0;
  }
  // Sticky-fenced nodes: say who is primary now.
  for (const w of work) {
    if (w.draft.state === 'fenced' && w.prev?.state === 'fenced' && w.fresh) {
      w.draft.reason =
        `still claims to be primary on timeline ${w.draft.timeline} ` +
        (winner
          ? `while ${winner.draft.name} is primary on timeline ${winner.draft.timeline}`
          : `(no primary known)`) +
        `: fenced until it comes back as a replica`;
    }
  }

  // 6. The newest timeline switch, then replicas whose WAL went past it on an older timeline.
  const fork = markDiverged(prev, work, winner);

  // 7. Lag of the replicas that answered this round (the others keep their last values).
  const primaryWal = measureLag(prev, work, winner, now);

  // 8. Which answering replicas serve reads: lag limits with hysteresis, and how long
  // reads may go on without a primary. Replicas not checked this round keep their state.
  const primaryLostAt = applyReadLimits(prev, work, winner, now, opts.lagPolicy ?? NO_LAG_POLICY);

  const nodes = work.map((w) => Object.freeze(w.draft) as NodeSnapshot);
  return Object.freeze({
    version: (prev?.version ?? 0) + 1,
    takenAt: now,
    nodes: Object.freeze(nodes),
    primary: winner ? nodes[winner.draft.index]! : null,
    systemId,
    primaryWal,
    primaryLostAt,
    fork,
  });
}
