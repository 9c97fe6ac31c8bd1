// Replica health, decided once per round inside deriveTopology (topology.ts): which
// replicas left the cluster's history, how far behind each one is, and which may serve
// reads. Pure like deriveTopology; the balancer only reads the states decided here.
//
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
import {
  formatLsn,
  isHealthy,
  nodeName,
  type NodeSnapshot,
  type ProbeResult,
  type TimelineFork,
  type TopologySnapshot,
  type WalMark,
} from './snapshot.js';

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

/** Checks of the primary remembered for lag (at 1 s intervals: the last two minutes). */
const WAL_MARKS_KEPT = 120;

// One node's state while deriveTopology builds the next snapshot.
type Mutable<T> = { -readonly [K in keyof T]: T[K] };
export type Draft = Mutable<NodeSnapshot>;

export interface Work {
  draft: Draft;
  prev: NodeSnapshot | undefined;
  /** The successful probe of this round, if any. */
  fresh: ProbeResult | undefined;
}

/**
 * The newest timeline switch, then replicas whose WAL went past it on an older timeline:
 * they become `diverged`. Returns the switch the next snapshot keeps.
 */
export function markDiverged(prev: TopologySnapshot | null, work: readonly Work[], winner: Work | undefined): TimelineFork | null {
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
  return fork;
}

/**
 * Lag of the replicas that answered this round (the others keep their last values), against
 * the primary or, with none, the most advanced up replica. Returns the primary's WAL marks.
 */
export function measureLag(prev: TopologySnapshot | null, work: readonly Work[], winner: Work | undefined, now: number): readonly WalMark[] {
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
  return primaryWal;
}

/**
 * Which answering replicas serve reads: lag limits with hysteresis, and how long reads may
 * go on without a primary. Replicas not checked this round keep their state. Returns since
 * when the cluster has had no primary (null while it has one).
 */
export function applyReadLimits(
  prev: TopologySnapshot | null,
  work: readonly Work[],
  winner: Work | undefined,
  now: number,
  policy: LagPolicy,
): number | null {
  const primaryLostAt = winner ? null : (prev?.primaryLostAt ?? (prev?.primary ? now : (prev?.takenAt ?? now)));
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
  return primaryLostAt;
}

function bigintToNumber(b: bigint): number {
  return b > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(b);
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