// Re-running a client's request without the client noticing, in the two cases where that is
// safe, and holding back the reply bytes until it is known whether a re-run is needed:
//
// - a lone read (one read-only statement outside a transaction, sent alone: a Query, or
//   Parse/Bind/Describe/Execute ending with its own Sync) whose replica dies before
//   answering runs again on another node: a read has no effect, so nothing is done twice.
//   A FATAL error that says the node is going away (fast shutdown, pg_terminate_backend)
//   is about the node, not the query: it is dropped and the read re-runs when the
//   connection closes;
// - a batch that binds a named statement made stale by DDL ("cached plan must not change
//   result type") runs again on the same backend once the statement is prepared afresh, when
//   the client asked for a new description anyway (node-postgres describes every execution).
//
// Nothing that may have written is ever re-run, and once any answer reached the client the
// request is the client's to retry.

import { FrontendMsg, readCstr } from '../protocol/messages.js';
import type { BackendConnection } from '../pool/backend.js';
import { bindStatement } from './preparedStatements.js';
import type { HeldMessage } from '../protocol/framer.js';
import { keepMessagesOutOf } from './heldMessages.js';

const ERROR_RESPONSE = 0x45; // 'E'

/** A lone read to run again elsewhere. */
export interface LostRead {
  readonly messages: HeldMessage[];
  /** The named statement its Parse defined on the dead backend: forgotten, then defined anew. */
  readonly parsed: string | null;
}

export class ReplayGuard {
  /** Copy of a lone read while it may still be re-run elsewhere. */
  private read: HeldMessage[] | null = null;
  /** The read's Parse defines this client's statement of that name (unknown before it). */
  private readParsed: string | null = null;
  /** Reply bytes held back while `read` is set (no answer yet). */
  private readReplies: Buffer[] = [];
  /** The backend said it is going away: the rest of what it sends is dropped. */
  private readLost = false;
  /** A batch that may be re-run once if its statement turns out stale. */
  private batch: HeldMessage[] | null = null;
  /** An ErrorResponse held until it is known whether it is the stale-plan error. */
  private batchReplies: Buffer[] = [];
  /** The stale-plan error came: the rest of the failed attempt is dropped, then it re-runs. */
  private replaying = false;

  /** A request got its backend: keep a copy of what may be re-run. */
  arm(held: readonly HeldMessage[], loneRead: boolean, statementKnown: ((name: string) => boolean) | null): void {
    this.read = loneRead && loneRequest(held) ? held.slice() : null;
    this.readParsed = this.read !== null && statementKnown !== null ? newStatement(held[0]!, statementKnown) : null;
    // Arrays replaced only when something was left in them: arm() runs once per transaction.
    if (this.readReplies.length > 0) this.readReplies = [];
    this.readLost = false;
    // A lone read may also be a stale-plan batch: re-run here first, elsewhere if this dies.
    this.batch = statementKnown !== null && replayable(held, statementKnown) ? held.slice() : null;
    if (this.batchReplies.length > 0) this.batchReplies = [];
    this.replaying = false;
  }

  /** Copies the kept requests' bytes that lie in `memory` (a read buffer the next read overwrites). */
  keepOutOf(memory: ArrayBufferLike): void {
    if (this.read !== null) keepMessagesOutOf(this.read, memory);
    if (this.batch !== null) keepMessagesOutOf(this.batch, memory);
  }

  /**
   * The client sent more on the backend (a pipelined request): the read is no longer alone,
   * so it is never re-run (the later request would go unanswered), nor is a batch not yet
   * failing (its re-run would come after the later request). Returns what was held for the
   * read, which the client must now see.
   */
  moreRequests(): Buffer | null {
    if (this.batch !== null && !this.replaying) this.batch = null; // nothing held yet: no error came
    if (this.read === null) return null;
    this.read = null;
    const held = this.readReplies;
    this.readReplies = [];
    if (this.readLost || held.length === 0) return null;
    return held.length === 1 ? held[0]! : Buffer.concat(held);
  }

  /**
   * Backend bytes on their way to the client: what to send now (with anything held before
   * it), or null while they must wait.
   */
  filter(out: Buffer, b: BackendConnection | null): Buffer | null {
    if (this.batch !== null) {
      if (this.replaying) return null; // the failed attempt's tail, up to its ReadyForQuery
      // An ErrorResponse may be the stale-plan error the batch is re-run for: hold it until
      // onError() has read it. Anything else means the batch is under way.
      if (b !== null && b.lastType === ERROR_RESPONSE) {
        this.batchReplies.push(Buffer.from(out));
        return null;
      }
      this.batch = null;
      if (this.batchReplies.length > 0) {
        out = Buffer.concat([...this.batchReplies, out]);
        this.batchReplies = [];
      }
    }
    if (this.read !== null) {
      if (this.readLost) return null;
      // Hold back what is not an answer yet (notices, ParseComplete, BindComplete,
      // RowDescription, ...), so a re-run does not show the client two; and an
      // ErrorResponse until onError() has read whether it is about the node or the query.
      if (b !== null && (!b.answered || b.lastType === ERROR_RESPONSE)) {
        this.readReplies.push(Buffer.from(out));
        return null;
      }
      this.read = null; // the client sees an answer now: never re-run
      if (this.readReplies.length > 0) {
        out = Buffer.concat([...this.readReplies, out]);
        this.readReplies = [];
      }
    }
    return out;
  }

  /**
   * A visible error (its bytes already went through filter()). `stale`: it is the
   * stale-plan error, and the batch re-runs at ReadyForQuery. Returns held bytes the client
   * must now see, or null.
   */
  onError(fields: Map<string, string>, stale: boolean): Buffer | null {
    let held: Buffer[] = [];
    if (this.batch !== null && !this.replaying) {
      if (stale) {
        this.replaying = true; // nothing reached the client: the error is dropped
        this.batchReplies = [];
        this.readReplies = []; // the re-run here sends it all again
        return null;
      }
      held = this.batchReplies;
      this.batch = null;
      this.batchReplies = [];
    }
    if (this.read !== null && !this.readLost) {
      if (nodeGoingAway(fields)) {
        // The connection closes next and the read re-runs elsewhere (takeRead).
        this.readLost = true;
        this.readReplies = [];
        return null;
      }
      // The query's own error is its answer: never re-run.
      held = this.readReplies.concat(held);
      this.read = null;
      this.readReplies = [];
    }
    return held.length > 0 ? Buffer.concat(held) : null;
  }

  /** ReadyForQuery: the batch to re-run now on the same backend, or null. */
  takeReplay(): HeldMessage[] | null {
    const batch = this.replaying ? this.batch : null;
    this.replaying = false;
    this.batch = null;
    return batch;
  }

  /** The backend died: the lone read to run elsewhere, or null when nothing may be re-run. */
  takeRead(): LostRead | null {
    const read = this.read;
    const parsed = this.readParsed;
    this.read = null;
    this.readParsed = null;
    this.readReplies = []; // from the dead node: the re-run answers anew
    this.readLost = false;
    this.batch = null;
    this.batchReplies = [];
    this.replaying = false;
    return read === null ? null : { messages: read, parsed };
  }
}

/**
 * One request and nothing else: a Query, or an extended-protocol batch with one Execute
 * and its own Sync at the end, whose Bind binds the statement its Parse (if any) defines,
 * so the statement routing classified is the one that runs. Nothing after the Sync.
 */
function loneRequest(held: readonly HeldMessage[]): boolean {
  const n = held.length;
  if (n === 1) return held[0]!.type === FrontendMsg.Query;
  if (held[n - 1]!.type !== FrontendMsg.Sync) return false;
  let parsed: string | null = null;
  let binds = 0;
  let executes = 0;
  for (let i = 0; i < n - 1; i++) {
    const m = held[i]!;
    switch (m.type) {
      case FrontendMsg.Parse: {
        if (i !== 0) return false;
        const name = readCstr(m.buf, m.start + 5, m.end);
        if (name === null) return false;
        parsed = name[0];
        break;
      }
      case FrontendMsg.Bind: {
        const st = bindStatement(m.buf, m.start, m.end);
        if (++binds > 1 || st === null || (parsed !== null && st.name !== parsed)) return false;
        break;
      }
      case FrontendMsg.Execute:
        if (++executes > 1) return false;
        break;
      case FrontendMsg.Describe:
      case FrontendMsg.Flush:
        break;
      default:
        return false; // a second Sync, a Close, a Query...: not one request
    }
  }
  return binds === 1 && executes === 1;
}

/** The name a leading Parse defines when the client had no statement of that name, else null. */
function newStatement(first: HeldMessage, statementKnown: (name: string) => boolean): string | null {
  if (first.type !== FrontendMsg.Parse) return null;
  const name = readCstr(first.buf, first.start + 5, first.end);
  return name !== null && name[0] !== '' && !statementKnown(name[0]) ? name[0] : null;
}

/**
 * A FATAL error that says the node (or this backend) is going away, not that the query
 * failed: shutdown (57P01 also for pg_terminate_backend), crash (57P02), starting or
 * stopping (57P03), lost connection (08006). PostgreSQL closes the connection next.
 */
function nodeGoingAway(fields: Map<string, string>): boolean {
  const severity = fields.get('V') ?? fields.get('S');
  if (severity !== 'FATAL' && severity !== 'PANIC') return false;
  const code = fields.get('C');
  return code === '57P01' || code === '57P02' || code === '57P03' || code === '08006';
}

/**
 * "cached plan must not change result type" can be hidden only when the client will see the
 * new shape: a whole batch, outside a transaction, that binds one of its named statements
 * and asks for a fresh description.
 */
function replayable(held: readonly HeldMessage[], statementKnown: (name: string) => boolean): boolean {
  const n = held.length;
  if (n < 3 || held[0]!.type !== FrontendMsg.Bind || held[n - 1]!.type !== FrontendMsg.Sync) return false;
  let describe = false;
  for (let i = 0; i < n; i++) {
    const t = held[i]!.type;
    if (t === FrontendMsg.Describe) describe = true;
    else if (t === FrontendMsg.Parse || t === FrontendMsg.Query || (t === FrontendMsg.Sync && i !== n - 1)) return false;
  }
  if (!describe) return false;
  const m = held[0]!;
  const st = bindStatement(m.buf, m.start, m.end);
  return st !== null && statementKnown(st.name);
}
