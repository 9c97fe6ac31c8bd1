// The cluster as pgmux last saw it: the immutable snapshot the router, the pools and the
// admin views read, the health-check result it is derived from, and the small helpers
// (LSNs, node names) every reader of them shares. Types and pure helpers only: the
// derivation is topology.ts's (and replicaHealth.ts's), the probing monitor.ts's.

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

export interface WalMark {
  /** Epoch ms of the check. */
  at: number;
  lsn: bigint;
}

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
  /** Client connections on the node per database, from pg_stat_activity (anyone's). */
  backendsByDatabase?: ReadonlyMap<string, number>;
  /** Epoch ms the check finished. */
  at: number;
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
