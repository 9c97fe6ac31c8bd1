// Cross-client pipelining (pipeline_depth > 1, experimental): when every backend of a pool is
// busy, a self-contained request is written to a busy backend behind the one running there
// instead of waiting, so PostgreSQL finds the next request already read when it finishes one.
// This module keeps, per backend, the clients whose requests are on the wire behind the
// running one, in wire order, and hands the backend to the next of them at each
// ReadyForQuery (Pool.release calls handOver).
//
// The rules, and where each is kept:
// - one unit = one request with one ReadyForQuery: a lone simple Query, or unnamed
//   Parse/Bind/Describe/Execute and its own Sync (selfContainedUnit below);
// - the statement leaves nothing behind (src/routing/pipelining.ts; the router adds "calls no
//   volatile function" and "needs no read-back");
// - only behind a head that is itself such a unit, still alone (its client sent nothing after
//   it), and has run for less than pipelineLimits.headMaxAgeMs; the head's client holds what it
//   sends next until its unit ended (ClientSession), so no unit is ever split on the wire;
// - at most `depth` units per backend, the backend's settings already those of the client;
// - a queued unit's cancel is dropped, and so is the head's while others wait behind it
//   (ClientSession.cancelTarget): a cancel racing the head's end would hit the next query;
// - a backend that dies tells each queued client on its own (onPipelineLost): a read re-runs
//   elsewhere as the replay guard does for a lone read, else the client gets its own error.

import { performance } from 'node:perf_hooks';
import type { HeldMessage } from '../protocol/framer.js';
import { FrontendMsg } from '../protocol/messages.js';
import { BackendState, type BackendConnection, type BackendOwner } from './backend.js';

/**
 * A head that has run this long (ms) is not joined: it may be a long query, and those behind
 * it would wait as long. An object so integration tests (pgmux in-process) can widen the
 * window and make queueing deterministic behind a query they know to be slow.
 */
export const pipelineLimits = { headMaxAgeMs: 2 };

/** A client whose unit waits on the wire behind others (ClientSession). */
export interface PipelineMember {
  /** Its unit is the head now: it owns the backend until its ReadyForQuery. */
  onPipelineTurn(b: BackendConnection): void;
  /** The backend died before its unit's turn. */
  onPipelineLost(b: BackendConnection, why: string): void;
}

/** What the owner of a backend says about its own unit, for others to queue behind it. */
interface HeadOwner {
  /** Its unit is one self-contained unit and nothing was written after it. */
  readonly pipelineHeadOpen?: boolean;
}

export class BackendPipeline {
  /** Units written behind the head, in wire order; null = its client left (replies dropped). */
  readonly queued: Array<PipelineMember | null> = [];
  /** performance.now() when the head unit started (was linked or handed the backend). */
  headSince = 0;
  /** Units written behind others on this backend, ever. */
  joined = 0;

  constructor(private readonly backend: BackendConnection) {
    backend.onClose(() => this.lost());
  }

  /**
   * The head's ReadyForQuery came and its client let the backend go: the next unit on the
   * wire gets it. False when nothing is queued (the pool takes the backend back).
   */
  handOver(b: BackendConnection): boolean {
    if (this.queued.length === 0 || b.state === BackendState.Closed) return false;
    const next = this.queued.shift()!;
    // The unit's Query or Sync was written when it joined, not counted until now.
    b.pendingRfq = 1;
    this.headSince = performance.now();
    if (next === null) b.link(new AbandonedUnit(b));
    else next.onPipelineTurn(b);
    return true;
  }

  /** A queued client left: its unit still runs, its replies go nowhere. */
  abandon(member: PipelineMember): void {
    const i = this.queued.indexOf(member);
    if (i >= 0) this.queued[i] = null;
  }

  private lost(): void {
    const why = this.backend.closeReason === 'server_closed' ? 'the database closed the connection' : 'closed by pgmux';
    for (const m of this.queued.splice(0)) m?.onPipelineLost(this.backend, why);
  }
}

/** The backend's pipeline, made the first time a self-contained unit runs on it. */
export function pipelineOf(b: BackendConnection): BackendPipeline {
  return (b.pipeline ??= new BackendPipeline(b));
}

/** Units of other clients on `b`'s wire behind the running one. */
export function queuedBehind(b: BackendConnection): number {
  const p = b.pipeline;
  return p ? p.queued.length : 0;
}

/** The head started a self-contained unit: others may join behind it for a short while. */
export function headStarted(b: BackendConnection): void {
  pipelineOf(b).headSince = performance.now();
}

/**
 * The busy backend a self-contained unit may be written to, or null: a head that is one
 * open self-contained unit, younger than pipelineLimits.headMaxAgeMs, with fewer than `depth`
 * units in all, the client's settings already applied (no hidden query may go in between),
 * a socket that takes writes. The shortest queue wins.
 */
export function pipelineTarget(busy: Iterable<BackendConnection>, depth: number, settingsFingerprint: string): BackendConnection | null {
  let best: BackendConnection | null = null;
  let bestQueued = depth - 1;
  let now = -1;
  for (const b of busy) {
    const p = b.pipeline;
    if (p === null || b.state !== BackendState.Linked || p.queued.length >= bestQueued) continue;
    if ((b.owner as HeadOwner | null)?.pipelineHeadOpen !== true) continue;
    if (b.syncedFingerprint !== settingsFingerprint || b.needsReset || b.discardOnRelease || b.socket.writableNeedDrain) continue;
    if (now < 0) now = performance.now();
    if (now - p.headSince > pipelineLimits.headMaxAgeMs) continue;
    best = b;
    bestQueued = p.queued.length;
  }
  return best;
}

/** Writes `unit` behind what runs on `b`; `member` gets the backend at its turn. */
export function joinPipeline(b: BackendConnection, member: PipelineMember, unit: readonly HeldMessage[]): void {
  const p = pipelineOf(b);
  p.queued.push(member);
  p.joined++;
  if (unit.length > 1) b.cork();
  for (const m of unit) b.write(m.start === 0 && m.end === m.buf.length ? m.buf : m.buf.subarray(m.start, m.end));
  if (unit.length > 1) b.uncork();
}

/**
 * The held messages are one unit that may be written without per-message bookkeeping: a
 * lone Query, or Parse / Bind / Describe / Execute of the unnamed statement and portal,
 * one Execute, ending in the only Sync.
 */
export function selfContainedUnit(held: readonly HeldMessage[]): boolean {
  const n = held.length;
  if (n === 1) return held[0]!.type === FrontendMsg.Query;
  // A Bind without its Parse would run whatever unnamed statement the backend has.
  if (n < 3 || held[0]!.type !== FrontendMsg.Parse || held[n - 1]!.type !== FrontendMsg.Sync) return false;
  let executes = 0;
  for (let i = 0; i < n - 1; i++) {
    const m = held[i]!;
    const body = m.start + 5;
    switch (m.type) {
      case FrontendMsg.Parse:
        if (i !== 0 || m.buf[body] !== 0) return false; // named statement: the forwarder's
        break;
      case FrontendMsg.Bind:
        if (m.buf[body] !== 0 || m.buf[body + 1] !== 0) return false; // named portal or statement
        break;
      case FrontendMsg.Describe:
        if (m.buf[body + 1] !== 0) return false;
        break;
      case FrontendMsg.Execute:
        if (++executes > 1 || m.buf[body] !== 0) return false;
        break;
      default:
        return false; // a second Sync, a Close, a Flush, a Query...: not one unit
    }
  }
  return executes === 1;
}

/** Stands in for a client that left while its unit was queued: drops the replies, then passes the backend on. */
class AbandonedUnit implements BackendOwner {
  constructor(private readonly b: BackendConnection) {}
  onBackendData(): void {}
  onBackendReady(): void {
    const b = this.b;
    b.unlink();
    if (b.socket.isPaused()) b.socket.resume();
    (b.poolRef as { release(b: BackendConnection): void }).release(b);
  }
  onBackendParameter(): void {}
  onBackendHiddenError(): void {}
  onBackendLost(): void {}
  onBackendDrain(): void {}
}
