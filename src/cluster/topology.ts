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
//    With no primary, against the most advanced up replica instead (its data is as fresh
//    as anything the cluster still serves); after readWithoutPrimaryTimeoutMs (0 = never)
//    without a primary every replica is `lagging`.
//  - A replica over its lag limits is `lagging` (no reads, backends kept); it serves again
//    once under (1 - lagHysteresis) x the limits. Decided here, once per round, so the
//    balancer only reads states.
//  - A replica on an older timeline than the cluster's, whose replay position is past the
//    point where the newer timeline forked, is `diverged`: its WAL holds what the primary
//    never had. The fork point's lower bound is the promoted node's last known replay /
//    receive position as a replica. A replica at or below it is not diverged, whatever
//    timeline it reports (a replica's reported timeline can be its last restartpoint's,
//    minutes behind a switch).

import type { NodeConfig } from '../config/types.js';

export type NodeRole = 'primary' | 'replica' | 'unknown';
/**
 * up: routable (a replica within its lag limits); lagging: a replica over its lag limits,
 * or any replica once read_without_primary_timeout has passed with no primary: answers,
 * keeps its backends, gets no new reads; down: failed its last checks; fenced: claims to
 * be primary on a dead timeline; diverged: a replica whose WAL went past the point where
 * the cluster's timeline forked; misconfigured: another cluster's node.
 */
export type NodeState = 'up' | 'lagging' | 'down' | 'fenced' | 'diverged' | 'misconfigured';

/** The role a node has now: what it answered, `unknown` while it is down (`role` keeps the last one). */
export function currentRole(n: NodeSnapshot): NodeRole {
  return n.state === 'down' ? 'unknown' : n.role;
}

/**
 * Answers its checks and belongs to the cluster's current history: keeps its backends (a
 * lagging replica only finishes what they already run; it gets no new reads).
 */
export function isHealthy(state: NodeState): boolean {
  return state === 'up' || state === 'lagging';
}

export interface NodeSnapshot {
  /** Position in the configured node list. */
  index: number;
  /** host:port */
  name: string;
  host: string;
  port: number;
  weight: number;
  /** The role the node reported at its last successful check (kept while it is down). */
  role: NodeRole;
  state: NodeState;
  /** Why the node is not up (or, up without a primary, what its reads are worth). */
  reason?: string;
  timeline: number | null;
  systemId: string | null;
  /** Primary: pg_current_wal_lsn(); replica: pg_last_wal_replay_lsn(). */
  walLsn: bigint | null;
  /** Replica: pg_last_wal_receive_lsn(). */
  receiveLsn: bigint | null;
  /**
   * Replica: primary.walLsn - replay LSN (>= 0); with no primary, the most advanced up
   * replica's replay LSN - this one's. null when not measurable.
   */
  lagBytes: number | null;
  /** Replica: how stale its data is; 0 when caught up; null when not measurable (= lagging). */
  lagMs: number | null;
  /** Times this replica went `lagging` for being over its lag limits (cumulative). */
  lagExclusions: number;
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
  /**
   * Epoch ms since when there is no primary (the snapshot that lost it, or the monitor's
   * start when none was ever seen); null while there is one.
   */
  primaryLostAt: number | null;
  /** The newest timeline switch seen: where a replica on an older timeline stops being safe. */
  fork: TimelineFork | null;
}

export interface TimelineFork {
  /** The timeline the promoted node started. */
  timeline: number;
  /** Who was promoted. */
  node: string;
  /**
   * A lower bound of the LSN where the timeline forked: the promoted node's last known
   * replay / receive position as a replica; null when it was never seen as a replica.
   */
  lsn: bigint | null;
}

/** The lag limits of one replica (null = no limit). */
export interface LagLimits {
  maxLagBytes: number | null;
  maxLagMs: number | null;
}

/** What makes a replica `lagging` (from the configuration; RELOAD replaces it). */
export interface LagPolicy extends LagLimits {
  /** Per-node overrides, by host:port. */
  perNode: ReadonlyMap<string, Partial<LagLimits>>;
  /** Fraction of a limit a lagging replica must get back under before it serves again. */
  lagHysteresis: number;
  /** With no primary for this long, replicas stop serving reads; 0 = no limit. */
  readWithoutPrimaryTimeoutMs: number;
}

/** No limits: every answering replica serves reads. */
export const NO_LAG_POLICY: LagPolicy = Object.freeze({
  maxLagBytes: null,
  maxLagMs: null,
  perNode: new Map(),
  lagHysteresis: 0,
  readWithoutPrimaryTimeoutMs: 0,
});

/** The lag policy of a configuration (per-node overrides from the node entries). */
export function lagPolicyOf(cfg: {
  nodes: readonly NodeConfig[];
  maxLagBytes: number | null;
  maxLagMs: number | null;
  lagHysteresis: number;
  readWithoutPrimaryTimeoutMs: number;
}): LagPolicy {
  const perNode = new Map<string, Partial<LagLimits>>();
  for (const n of cfg.nodes) {
    const o: Partial<LagLimits> = {};
    if (n.maxLagBytes !== undefined) o.maxLagBytes = n.maxLagBytes;
    if (n.maxLagMs !== undefined) o.maxLagMs = n.maxLagMs;
    perNode.set(nodeName(n), o);
  }
  return {
    maxLagBytes: cfg.maxLagBytes,
    maxLagMs: cfg.maxLagMs,
    perNode,
    lagHysteresis: cfg.lagHysteresis,
    readWithoutPrimaryTimeoutMs: cfg.readWithoutPrimaryTimeoutMs,
  };
}

/** The limits that apply to one node (its overrides, else the global ones). */
export function lagLimitsFor(policy: LagPolicy, name: string): LagLimits {
  const o = policy.perNode.get(name);
  return {
    maxLagBytes: o?.maxLagBytes !== undefined ? o.maxLagBytes : policy.maxLagBytes,
    maxLagMs: o?.maxLagMs !== undefined ? o.maxLagMs : policy.maxLagMs,
  };
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
  /**
   * true: a replica's WAL receiver runs but the health-check user may not see its timeline
   * (no pg_read_all_stats), so `timeline` is its control file's, which can be older than
   * the one it follows.
   */
  timelineHidden?: boolean;
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
  /** What makes a replica `lagging`; default: no limits. */
  lagPolicy?: LagPolicy;
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
  const fork = nextFork(prev, winner);
  const clusterTl = winner?.draft.timeline ?? newestTimeline(work);
  for (const w of work) {
    const d = w.draft;
    if (!w.fresh || d.state !== 'up' || d.role !== 'replica') continue;
    const why = divergedReason(d, clusterTl, fork, winner?.draft, w.fresh.timelineHidden === true);
    if (why !== null) {
      d.state = 'diverged';
      d.reason = why;
    }
  }

  // 7. Lag of the replicas that answered this round (the others keep their last values).
  const primary = winner?.draft;
  const primaryFresh = !!winner?.fresh;
  const primaryWal = nextWalMarks(prev, winner);
  // No primary: the most advanced up replica is what the cluster still knows.
  let top: Work | undefined;
  if (!primary) {
    for (const w of work) {
      const d = w.draft;
      if (!isHealthy(d.state) || d.role !== 'replica' || d.walLsn === null) continue;
      if (!top || d.walLsn > top.draft.walLsn!) top = w;
    }
  }
  for (const w of work) {
    const d = w.draft;
    if (d.state === 'fenced' || d.state === 'misconfigured' || d.state === 'diverged') {
      d.lagBytes = null;
      d.lagMs = null;
      continue;
    }
    if (!w.fresh || d.role !== 'replica') continue;
    const replayAge = replayAgeOf(w.fresh);
    if (!primary) {
      if (!top || d.walLsn === null) {
        d.lagBytes = null;
        d.lagMs = d.walLsn === null ? null : replayAge;
        continue;
      }
      const diff = top.draft.walLsn! - d.walLsn;
      d.lagBytes = diff > 0n ? bigintToNumber(diff) : 0;
      // How much older its newest replayed commit is than the most advanced replica's
      // (both ages are measured now against the same old primary's commit times).
      const topAge = top.fresh ? replayAgeOf(top.fresh) : null;
      d.lagMs = diff <= 0n ? 0 : replayAge === null || topAge === null ? null : Math.max(0, replayAge - topAge);
      continue;
    }
    if (primary.walLsn === null || d.walLsn === null) {
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

  // 8. Which answering replicas serve reads: lag limits with hysteresis, and how long
  // reads may go on without a primary. Replicas not checked this round keep their state.
  const primaryLostAt = winner ? null : (prev?.primaryLostAt ?? (prev?.primary ? now : (prev?.takenAt ?? now)));
  const policy = opts.lagPolicy ?? NO_LAG_POLICY;
  const timeout = policy.readWithoutPrimaryTimeoutMs;
  const readsStopped = primaryLostAt !== null && timeout > 0 && now - primaryLostAt >= timeout;
  for (const w of work) {
    const d = w.draft;
    if (d.role !== 'replica' || !isHealthy(d.state)) continue;
    if (readsStopped) {
      // Lag means nothing any more: a primary unreachable from here may be taking writes.
      d.state = 'lagging';
      d.lagBytes = null;
      d.lagMs = null;
      d.reason =
        `no primary since ${new Date(primaryLostAt).toISOString()}, longer than read_without_primary_timeout ` +
        `(${timeout} ms): no reads until a primary is back`;
      continue;
    }
    if (w.fresh) {
      const limits = lagLimitsFor(policy, d.name);
      const wasLagging = w.prev?.state === 'lagging';
      const over = overLimits(d, limits, wasLagging ? 1 - policy.lagHysteresis : 1);
      if (over !== null) {
        d.state = 'lagging';
        d.reason = over;
        if (!wasLagging) d.lagExclusions++;
      } else {
        d.state = 'up';
      }
    }
    if (d.state === 'up') {
      if (primaryLostAt === null) delete d.reason;
      else d.reason = `serving reads without a primary since ${new Date(primaryLostAt).toISOString()}: data as of then`;
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
    primaryLostAt,
    fork,
  });
}

function replayAgeOf(p: ProbeResult): number | null {
  const v = p.replayLagMs;
  return v === undefined || v === null || !Number.isFinite(v) ? null : Math.max(0, v);
}

/** Why a replica is over its lag limits (with the figures), or null when it is not. */
function overLimits(d: Draft, limits: LagLimits, factor: number): string | null {
  const parts: string[] = [];
  const { maxLagBytes, maxLagMs } = limits;
  if (maxLagBytes !== null && (d.lagBytes === null || d.lagBytes > maxLagBytes * factor)) {
    parts.push(d.lagBytes === null ? `replay lag in bytes not measurable (max_lag_bytes ${maxLagBytes})` : `replay lag ${d.lagBytes} bytes over max_lag_bytes ${maxLagBytes}`);
  }
  if (maxLagMs !== null && (d.lagMs === null || d.lagMs > maxLagMs * factor)) {
    parts.push(d.lagMs === null ? `data age not measurable (max_lag_ms ${maxLagMs})` : `data ${Math.round(d.lagMs)} ms old, over max_lag_ms ${maxLagMs}`);
  }
  if (parts.length === 0) return null;
  const back = factor < 1 ? ` (serves again under ${Math.round(factor * 100)}% of the limit)` : '';
  return parts.join('; ') + back;
}

/** The highest timeline a node of the cluster reports (down nodes: last known). */
function newestTimeline(work: readonly Work[]): number | null {
  let best: number | null = null;
  for (const w of work) {
    const t = w.draft.timeline;
    if (w.draft.state === 'misconfigured' || t === null) continue;
    if (best === null || t > best) best = t;
  }
  return best;
}

/**
 * A new primary on a newer timeline than the last switch seen starts a fork; its position
 * as a replica in the previous snapshot bounds the fork point from below.
 */
function nextFork(prev: TopologySnapshot | null, winner: Work | undefined): TimelineFork | null {
  const kept = prev?.fork ?? null;
  const t = winner?.draft.timeline ?? null;
  if (!winner || t === null) return kept;
  if (kept !== null && kept.timeline >= t) return kept;
  const before = winner.prev;
  if (before?.role === 'replica' && before.lastOkAt > 0 && before.timeline !== null && before.timeline < t) {
    const replay = before.walLsn;
    const received = before.receiveLsn;
    const lsn = replay === null ? received : received === null || received < replay ? replay : received;
    return Object.freeze({ timeline: t, node: winner.draft.name, lsn });
  }
  // A primary on a newer timeline than anything seen before, never seen as a replica: the
  // switch happened before we looked, where is unknown.
  if (prev?.primary && prev.primary.timeline !== null && prev.primary.timeline < t) {
    return Object.freeze({ timeline: t, node: winner.draft.name, lsn: null });
  }
  return kept;
}

/** Why a replica reporting `d` cannot be read from (its WAL left the cluster's history), or null. */
function divergedReason(d: Draft, clusterTl: number | null, fork: TimelineFork | null, primary: Draft | undefined, hidden: boolean): string | null {
  if (clusterTl === null || d.timeline === null || d.timeline >= clusterTl) return null;
  const onTl = `on timeline ${d.timeline} while ` + (primary ? `the primary ${primary.name} is on timeline ${clusterTl}` : `the cluster is on timeline ${clusterTl}`);
  const advice =
    ': its WAL may hold writes the primary never had; re-clone it or pg_rewind it to follow the primary' +
    (hidden
      ? ' (its timeline is read from its control file, which lags behind a switch: grant the health-check user ' +
        'pg_monitor or pg_read_all_stats so its WAL receiver\'s timeline can be read)'
      : '');
  const known = fork !== null && fork.timeline === clusterTl && fork.lsn !== null ? fork.lsn : null;
  if (known !== null) {
    // At or below the fork point it can still switch to the new timeline.
    if (d.walLsn !== null && d.walLsn <= known) return null;
    const at = d.walLsn === null ? 'an unknown position' : formatLsn(d.walLsn);
    return `${onTl}, replayed to ${at}, past ${formatLsn(known)} where timeline ${clusterTl} forked (${fork!.node} promoted)${advice}`;
  }
  return `${onTl}, and where timeline ${clusterTl} forked is unknown${advice}`;
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
