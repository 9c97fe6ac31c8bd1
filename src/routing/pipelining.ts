// Which statements may share a busy backend with other clients' (pipeline_depth, experimental):
// a pure decision on the classifier's description, next to the routing policy. The message
// shape (one unit, one Sync) is src/pool/pipeline.ts's; this says whether the statement could
// leave anything behind for the request written after it.

import type { Classification } from './classifier.js';

/**
 * One read-only statement that opens no transaction and touches no session state: whatever
 * runs behind it on the same backend sees the session exactly as it was before. A read that
 * calls functions is left out (whether one of them writes is only known from the database's
 * catalog): the router adds that check (no VOLATILE function called). Left out: anything a
 * hint sent to a replica without the classifier's word (it may be a write).
 */
export function selfContainedStatement(c: Classification): boolean {
  return (
    c.target === 'replica' &&
    c.statements === 1 &&
    c.beginsTransaction !== true &&
    c.session === undefined &&
    c.changesFunctions === undefined &&
    !c.reason.startsWith('hint ')
  );
}
