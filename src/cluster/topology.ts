// Cluster topology: the immutable snapshot the router reads, and the pure decision logic
// that turns one round of health-check probes (plus the previous snapshot) into the next
// snapshot. No I/O here: src/cluster/monitor.ts does the probing and publishing.
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
//  - Lag of a replica is measured against the primary's current WAL position; its age is
//    the tighter of two upper bounds: the age of the last commit it replayed, and the
//    time since the primary was (at one of its recent checks) where the replica is now.

import type { NodeConfig } from '../config/types.js';

export type NodeRole = 'primary' | 'replica' | 'unknown';
export type NodeState = 'up' | 'down' | 'fenced' | 'misconfigured';

export interface NodeSnapshot {
  /** Position in the configured node list. */
  index: number;
  /** host:port */
  name: string;
  host: string;
  port: number;
  weight: number;
  role: NodeRole;
  state: NodeState;
  /** Why the node is down / fenced / misconfigured. */
  reason?: string;
  timeline: number | null;
  systemId: string | null;
  /** Primary: pg_current_wal_lsn(); replica: pg_last_wal_replay_lsn(). */
  walLsn: bigint | null;
  /** Replica: pg_last_wal_receive_lsn(). */
  receiveLsn: bigint | null;
  /** Replica: primary.walLsn - replay LSN (>= 0); null when not measurable. */
  lagBytes: number | null;
  /** Replica: how stale its data is; 0 when caught up; null when not measurable (= lagging). */
  lagMs: number | null;
  /** Epoch ms of the last check, failed or not (0 = never checked). */
  lastCheckAt: number;
  /** Epoch ms of the last successful check: the time the other figures are from (0 = never). */
  lastOkAt: number;
  consecutiveFailures: number;
}

export interface TopologySnapshot {
  /** Increases with every published snapshot. */
  version: number;
  /** Epoch ms. */
  takenAt: number;
  nodes: readonly NodeSnapshot[];
  /** The node writes go to; null while there is none (failover gap). One of `nodes`. */
  primary: NodeSnapshot | null;
  /** The cluster's system identifier (first seen primary's). */
  systemId: string | null;
  /**
   * The primary's WAL position at its recent checks, oldest first (reset when another node
   * becomes primary): a replica that has replayed up to a position the primary had at time
   * T shows data at most now - T old, whether or not anything committed since.
   */
  primaryWal?: readonly WalMark[];
}

export interface WalMark {
  /** Epoch ms of the check. */
  at: number;
  lsn: bigint;
}

/** Checks of the primary remembered for lag (at 1 s intervals: the last two minutes). */
const WAL_MARKS_KEPT = 120;

/** One health check of one node. */
export interface ProbeResult {
  /** Index of the node in the configured node list. */
  index: number;
  ok: boolean;
  error?: string;
  inRecovery?: boolean;
  timeline?: number;
  systemId?: string;
  /** Primary: pg_current_wal_lsn(); replica: pg_last_wal_replay_lsn(). */
  walLsn?: bigint;
  receiveLsn?: bigint | null;
  /** Replica: now() - pg_last_xact_replay_timestamp() in ms, measured on the replica. */
  replayLagMs?: number | null;
  /** Epoch ms the check finished. */
  at: number;
}

export interface DeriveOptions {
  /** The configured nodes; snapshot nodes follow this order (index). */
  nodes: readonly NodeConfig[];
  /** Consecutive failed checks before a node is `down` (healthCheckMaxRetries). */
  maxRetries: number;
}

const LSN_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** '16/B374D848' -> 0x16B374D848n */
export function parseLsn(s: string): bigint {
  const m = LSN_RE.exec(s.trim());
  if (!m) throw new Error(`invalid LSN: ${JSON.stringify(s)}`);
  return (BigInt('0x' + m[1]!) << 32n) | BigInt('0x' + m[2]!);
}

/** 0x16B374D848n -> '16/B374D848' */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

export function nodeName(n: { host: string; port: number }): string {
  return `${n.host}:${n.port}`;
}

/** The snapshot before any check: every node down, role unknown. */
export function emptyTopology(nodes: readonly NodeConfig[], now: number): TopologySnapshot {
  const snap = deriveTopology(null, [], now, { nodes, maxRetries: 1 });
  return Object.freeze({ ...snap, version: 0 });
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type Draft = Mutable<NodeSnapshot>;

interface Work {
  draft: Draft;
  prev: NodeSnapshot | undefined;
  /** The successful probe of this round, if any. */
  fresh: ProbeResult | undefined;
}

function tl(n: { timeline: number | null }): number {
  return n.timeline ?? -1;
}

function bigintToNumber(b: bigint): number {
  return b > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(b);
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

  // 6. Lag of the replicas that answered this round (the others keep their last values).
  const primary = winner?.draft;
  const primaryFresh = !!winner?.fresh;
  const primaryWal = nextWalMarks(prev, winner);
  for (const w of work) {
    const d = w.draft;
    if (d.state === 'fenced' || d.state === 'misconfigured') {
      d.lagBytes = null;
      d.lagMs = null;
      continue;
    }
    if (!w.fresh || d.role !== 'replica') continue;
    const measured = w.fresh.replayLagMs;
    const replayAge = measured === undefined || measured === null || !Number.isFinite(measured) ? null : Math.max(0, measured);
    if (!primary || primary.walLsn === null || d.walLsn === null) {
      d.lagBytes = null;
      d.lagMs = d.walLsn === null ? null : replayAge;
      continue;
    }
    const diff = primary.walLsn - d.walLsn;
    d.lagBytes = diff > 0n ? bigintToNumber(diff) : 0;
    if (diff <= 0n) {
      // Replayed everything the primary had written when it was checked: an idle primary
      // must not make a caught-up replica look lagging. If the primary's figure is from an
      // earlier round, the replica's data is at most that old.
      d.lagMs = primaryFresh ? 0 : Math.max(0, now - primary.lastOkAt);
    } else {
      // Behind: the age of its last replayed commit overstates the lag when the primary
      // writes WAL without commits (hint bits, vacuum, checkpoints): a replica replaying
      // as fast as that WAL comes would look older and older and lose its reads.
      const reached = lastMarkAtOrBelow(primaryWal, d.walLsn);
      const byProgress = reached === null ? null : Math.max(0, now - reached.at);
      d.lagMs = replayAge === null ? byProgress : byProgress === null ? replayAge : Math.min(replayAge, byProgress);
    }
  }

  const nodes = work.map((w) => Object.freeze(w.draft) as NodeSnapshot);
  return Object.freeze({
    version: (prev?.version ?? 0) + 1,
    takenAt: now,
    nodes: Object.freeze(nodes),
    primary: winner ? nodes[winner.draft.index]! : null,
    systemId,
    primaryWal,
  });
}

/** The primary's WAL marks with this round's check added (a new primary starts afresh). */
function nextWalMarks(prev: TopologySnapshot | null, winner: Work | undefined): readonly WalMark[] {
  if (!winner || winner.draft.walLsn === null) return [];
  const kept = prev?.primary?.name === winner.draft.name ? (prev.primaryWal ?? []) : [];
  if (!winner.fresh) return kept;
  const mark = { at: winner.draft.lastOkAt, lsn: winner.draft.walLsn };
  const last = kept[kept.length - 1];
  if (last !== undefined && (last.at >= mark.at || last.lsn > mark.lsn)) return kept;
  return Object.freeze([...kept.slice(Math.max(0, kept.length - WAL_MARKS_KEPT + 1)), Object.freeze(mark)]);
}

/** The latest mark at or below `lsn` (marks ascend in time and LSN), or null. */
function lastMarkAtOrBelow(marks: readonly WalMark[], lsn: bigint): WalMark | null {
  for (let i = marks.length - 1; i >= 0; i--) if (marks[i]!.lsn <= lsn) return marks[i]!;
  return null;
}
