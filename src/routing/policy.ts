// Where a transaction runs: one pure decision from what its first statement is, what this
// client did before (read-your-writes, a failed attempt), the topology snapshot and the
// configuration. The session asks and executes (acquire, wait, fail); nothing here waits,
// touches a socket or reads a clock. The read balancer's round-robin position is the only
// state, passed in.

import { isHealthy, type NodeSnapshot, type TopologySnapshot } from '../cluster/snapshot.js';
import type { Config, DatabaseRoute } from '../config/types.js';
import type { ErrorKind } from '../protocol/errors.js';
import type { ReadBalancer, ReadChoice } from './balancer.js';
import type { FunctionRef } from './functionLists.js';

/** What routing needs of a transaction's first message (requestTracker.classifyFirst). */
export interface RouteClass {
  readonly target: 'primary' | 'replica';
  readonly reason: string;
  readonly maxLagMs?: number;
  /** The functions a read calls (checked against the database's volatile functions). */
  readonly calls?: readonly FunctionRef[];
}

/** The command to route. */
export interface RouteCommand {
  /** Its first message's class; null in session pool mode, where nothing is classified. */
  readonly route: RouteClass | null;
  /** Why a read must run on the primary after all (it calls a volatile function), else null. */
  readonly volatile: string | null;
  /** The client's databases entry pins the role (route: replica | primary); 'any' (or absent) = read/write splitting. */
  readonly only?: DatabaseRoute;
}

/** What routing remembers of one client between its transactions. */
export interface RouteClient {
  /** read_your_writes=lsn: the primary's WAL position after this client's last write (LSN_UNKNOWN: it could not be read). */
  minLsn: bigint | null;
  /** read_your_writes=window: when this client's last write ended (clock ms). */
  lastWriteAt: number;
  /** A node this transaction failed to reach: not chosen again for it. */
  avoidNode: string | null;
  /** Re-routes of the current transaction so far. */
  attempts: number;
}

/**
 * A client's last write committed but its position could not be read (the backend died right
 * after the commit): no replica is known to have it, so its reads go to the primary, or wait
 * for one, until a later write's position is read. Above any real LSN.
 */
export const LSN_UNKNOWN = 0xffff_ffff_ffff_ffffn;

/** The moment the decision is made in. */
export interface RouteView {
  readonly topology: TopologySnapshot;
  /** Nodes DISABLE'd on the admin console: no new reads. */
  readonly disabledNodes: ReadonlySet<string>;
  /** The client's database is PAUSE'd. */
  readonly paused: boolean;
  readonly now: number;
}

export type RouteSettings = Pick<Config, 'readYourWrites' | 'readYourWritesWindowMs' | 'fallbackToPrimary' | 'failoverTimeoutMs'>;

export type RouteDecision<N = NodeSnapshot> =
  /** Run it on `node`; `write`: it went to the primary as a write (counted and tracked as one). */
  | { readonly kind: 'node'; readonly node: N; readonly write: boolean; readonly reason: string }
  /** No primary now (a failover may be under way): wait up to timeoutMs for one, then run it there. */
  | { readonly kind: 'waitForPrimary'; readonly timeoutMs: number; readonly reason: string }
  /** A replica-only entry and no replica may serve it now: wait up to timeoutMs for one, then route again. */
  | { readonly kind: 'waitForReplica'; readonly timeoutMs: number; readonly reason: string }
  /** The database is paused: start it on RESUME. */
  | { readonly kind: 'park'; readonly reason: string }
  /** It cannot run: tell the client `error` (from the catalogue) with `detail`. */
  | { readonly kind: 'error'; readonly error: ErrorKind; readonly detail: string; readonly reason: string };

/** Re-routes of one transaction (failover waits, reads moved off a dead replica). */
export const MAX_ROUTE_ATTEMPTS = 3;

/**
 * Reads (by the classifier) go to a replica chosen by the balancer, everything else to the
 * primary. A read no replica may serve goes to the primary with fallback_to_primary, and
 * while there is none it waits for one like a write: never older data than the client
 * already saw.
 */
export function decideRoute(cmd: RouteCommand, client: RouteClient, view: RouteView, cfg: RouteSettings, balancer: ReadBalancer): RouteDecision {
  if (view.paused) return { kind: 'park', reason: 'database paused: the transaction starts on RESUME' };
  const topo = view.topology;
  const r = cmd.route;
  if (cmd.only === 'replica') {
    // Whatever the statement is (a write, a hint, a transaction block): a replica answers,
    // and refuses writes itself (25006). No replica: an error, never the primary.
    const choice = chooseRead(topo, view.disabledNodes, client.avoidNode, null, r?.maxLagMs ?? null, balancer, true);
    if (choice.node !== null) return { kind: 'node', node: choice.node, write: false, reason: 'route: replica' };
    // Waits as a read waits for a primary during a failover; once: then the error.
    if (client.attempts === 0 && cfg.failoverTimeoutMs > 0) return { kind: 'waitForReplica', timeoutMs: cfg.failoverTimeoutMs, reason: `route: replica; ${choice.reason}` };
    return { kind: 'error', error: 'noReplicaForEntry', detail: choice.reason, reason: `route: replica; ${choice.reason}` };
  }
  let why: string;
  if (cmd.only === 'primary') why = 'route: primary';
  else if (r === null) why = 'session pool mode';
  else if (r.target !== 'replica') why = r.reason;
  // Checked even when read_your_writes sends the read to the primary anyway: such a read
  // may write, and the session must then never re-run it.
  else if (cmd.volatile !== null) why = cmd.volatile;
  else if (readsFromPrimary(client, view.now, cfg)) why = `${r.reason}; within read_your_writes_window of this client's last write`;
  else {
    const choice = chooseRead(topo, view.disabledNodes, client.avoidNode, cfg.readYourWrites === 'lsn' ? client.minLsn : null, r.maxLagMs ?? null, balancer);
    // The statement's own reason is the command's (logged beside it): no string built per read.
    if (choice.node !== null) return { kind: 'node', node: choice.node, write: false, reason: choice.reason };
    // No replica may serve it (e.g. none replayed this client's last commit).
    if (!cfg.fallbackToPrimary || topo.primary !== null) return { kind: 'error', error: 'noReadNode', detail: choice.reason, reason: `${r.reason}; ${choice.reason}` };
    why = `${r.reason}; ${choice.reason}`;
  }
  if (topo.primary !== null) return { kind: 'node', node: topo.primary, write: true, reason: why };
  // Failover in progress: wait for a primary rather than fail the client.
  return { kind: 'waitForPrimary', timeoutMs: cfg.failoverTimeoutMs, reason: `${why}; no primary now` };
}

/** read_your_writes=window: reads stay on the primary for a while after a write. */
function readsFromPrimary(client: RouteClient, now: number, cfg: RouteSettings): boolean {
  return cfg.readYourWrites === 'window' && now - client.lastWriteAt < cfg.readYourWritesWindowMs;
}

/** A node for a read, leaving out `avoid` and the disabled nodes; null with the reason when none may serve it. */
export function chooseRead(
  topo: TopologySnapshot,
  disabled: ReadonlySet<string>,
  avoid: string | null,
  minLsn: bigint | null,
  maxLagMsHint: number | null,
  balancer: ReadBalancer,
  replicasOnly = false,
): ReadChoice {
  if (avoid !== null || disabled.size > 0) {
    topo = { ...topo, nodes: topo.nodes.filter((n) => n.name !== avoid && !disabled.has(n.name)) };
  }
  return balancer.choose(topo, minLsn, maxLagMsHint, replicasOnly);
}

export type RetryDecision =
  /** A read whose node cannot be reached: any other eligible node will do. */
  | { readonly kind: 'reroute'; readonly avoidNode: string }
  /** The primary cannot be reached: a failover may be under way; wait up to timeoutMs for the next one. */
  | { readonly kind: 'waitForNewPrimary'; readonly timeoutMs: number }
  | { readonly kind: 'fail' };

/**
 * A backend could not be had on the node chosen. `unreachable`: the node did not answer,
 * or is shutting down / starting up; nothing was sent yet, so the transaction may go
 * elsewhere, a bounded number of times.
 */
export function afterAcquireFailure(client: RouteClient, failed: string | null, write: boolean, unreachable: boolean, cfg: RouteSettings): RetryDecision {
  if (!unreachable || failed === null || !mayRetry(client)) return { kind: 'fail' };
  return write ? { kind: 'waitForNewPrimary', timeoutMs: cfg.failoverTimeoutMs } : { kind: 'reroute', avoidNode: failed };
}

/** The transaction may be routed once more (a lone read re-run, a failed connect). */
export function mayRetry(client: RouteClient): boolean {
  return client.attempts < MAX_ROUTE_ATTEMPTS;
}

/**
 * A node to log in through: the primary, else the first healthy replica not disabled, else
 * any healthy replica. A lagging one will do: lag does not change ParameterStatus, settings
 * or pg_shadow. Logins need no primary: reads go on during a failover.
 */
export function loginNodeOf(topo: TopologySnapshot, disabled: ReadonlySet<string>, replicasOnly = false): NodeSnapshot | null {
  if (topo.primary !== null && !replicasOnly) return topo.primary;
  let fallback: NodeSnapshot | null = null;
  for (const n of topo.nodes) {
    if (!isHealthy(n.state) || n.role !== 'replica') continue;
    if (!disabled.has(n.name)) return n;
    fallback ??= n;
  }
  return fallback;
}
