// Re-running a client's request without the client noticing, in the two cases where that is
// safe, and holding back the reply bytes until it is known whether a re-run is needed:
//
// - a lone read (one read-only statement outside a transaction) whose replica dies before
//   answering runs again on another node: a read has no effect, so nothing is done twice;
// - a batch that binds a named statement made stale by DDL ("cached plan must not change
//   result type") runs again on the same backend once the statement is prepared afresh, when
//   the client asked for a new description anyway (node-postgres describes every execution).
//
// Nothing that may have written is ever re-run, and once any answer reached the client the
// request is the client's to retry.

import { Msg } from '../protocol/messages.js';
import type { BackendConnection } from '../pool/backend.js';
import { bindStatement } from './preparedStatements.js';
import type { HeldMessage } from '../protocol/framer.js';

const ERROR_RESPONSE = 0x45; // 'E'

export class ReplayGuard {
  /** Copy of a lone read while it may still be re-run elsewhere. */
  private read: HeldMessage[] | null = null;
  /** Reply bytes held back while `read` is set (no answer yet). */
  private readReplies: Buffer[] = [];
  /** A batch that may be re-run once if its statement turns out stale. */
  private batch: HeldMessage[] | null = null;
  /** An ErrorResponse held until it is known whether it is the stale-plan error. */
  private batchReplies: Buffer[] = [];
  /** The stale-plan error came: the rest of the failed attempt is dropped, then it re-runs. */
  private replaying = false;

  /** A request got its backend: keep a copy of what may be re-run. */
  arm(held: readonly HeldMessage[], loneRead: boolean, statementKnown: ((name: string) => boolean) | null): void {
    this.read = loneRead && held.length === 1 ? held.slice() : null;
    this.batch = this.read === null && statementKnown !== null && replayable(held, statementKnown) ? held.slice() : null;
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
      // Hold back what is not an answer yet (notices, RowDescription), so a re-run does not
      // show the client two.
      if (b !== null && !b.answered) {
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
   * A visible error. `stale`: it is the stale-plan error, and the batch re-runs at
   * ReadyForQuery. Returns held bytes the client must now see, or null.
   */
  onError(stale: boolean): Buffer | null {
    if (this.batch === null || this.replaying) return null;
    if (stale) {
      this.replaying = true; // nothing reached the client: the error is dropped
      this.batchReplies = [];
      return null;
    }
    const held = this.batchReplies;
    this.batch = null;
    this.batchReplies = [];
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
  takeRead(): HeldMessage[] | null {
    const read = this.read;
    this.read = null;
    this.readReplies = []; // from the dead node: the re-run answers anew
    return read;
  }
}

/**
 * "cached plan must not change result type" can be hidden only when the client will see the
 * new shape: a whole batch, outside a transaction, that binds one of its named statements
 * and asks for a fresh description.
 */
function replayable(held: readonly HeldMessage[], statementKnown: (name: string) => boolean): boolean {
  const n = held.length;
  if (n < 3 || held[0]!.type !== Msg.Bind || held[n - 1]!.type !== Msg.Sync) return false;
  let describe = false;
  for (let i = 0; i < n; i++) {
    const t = held[i]!.type;
    if (t === Msg.Describe) describe = true;
    else if (t === Msg.Parse || t === Msg.Query || (t === Msg.Sync && i !== n - 1)) return false;
  }
  if (!describe) return false;
  const m = held[0]!;
  const st = bindStatement(m.buf, m.start, m.end);
  return st !== null && statementKnown(st.name);
}
