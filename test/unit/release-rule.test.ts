import { describe, expect, it } from 'vitest';
import type { BackendConnection } from '../../src/pool/backend.js';
import { FrontendMsg, queryMessage } from '../../src/protocol/messages.js';
import { Classifier } from '../../src/routing/classifier.js';
import { RequestTracker, type RequestHost } from '../../src/session/requestTracker.js';
import { StatementForwarder } from '../../src/session/statementForwarder.js';
import { StatementNames } from '../../src/session/preparedStatements.js';
import { TrafficMeter } from '../../src/observability/trafficStats.js';

// The release rule as a table: a client's messages and its backend's ReadyForQuery
// answers, fed to the request tracker one at a time, and what the tracker says after each.
// No PostgreSQL: the backend is the few counters the tracker reads and a write that
// swallows bytes.
//
// One letter per step:
//   R  at a transaction boundary: the backend goes back to its pool now
//   K  at a transaction boundary, but the client keeps its backend (pinned, session mode)
//   q  a query runs (answers owed): a cancel reaches it
//   t  idle inside a transaction block (idle_transaction_timeout applies)
//   o  an extended-protocol batch is open without its Sync: nothing owed yet, not releasable
//
// Steps: "Q:sql" Query, "P:sql" unnamed Parse, "B" Bind, "D" Describe portal, "E" Execute,
// "H" Flush, "S" Sync, "d" CopyData, "c" CopyDone, "f" CopyFail, "F" FunctionCall; "Z:I",
// "Z:T", "Z:E" the backend's ReadyForQuery with that status. An ErrorResponse changes
// nothing the rule reads: it shows in the status of the ReadyForQuery that follows.

function msg(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

const cstr = (s: string) => Buffer.from(s + '\0');
const int16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);

function clientMessage(step: string): Buffer {
  const [kind, arg = ''] = [step[0]!, step.slice(2)];
  switch (kind) {
    case 'Q':
      return queryMessage(arg);
    case 'P':
      return msg(FrontendMsg.Parse, Buffer.concat([cstr(''), cstr(arg), int16(0)]));
    case 'B':
      return msg(FrontendMsg.Bind, Buffer.concat([cstr(''), cstr(''), int16(0), int16(0), int16(0)]));
    case 'D':
      return msg(FrontendMsg.Describe, Buffer.concat([Buffer.from('P'), cstr('')]));
    case 'E':
      return msg(FrontendMsg.Execute, Buffer.concat([cstr(''), Buffer.alloc(4)]));
    case 'H':
      return msg(FrontendMsg.Flush);
    case 'S':
      return msg(FrontendMsg.Sync);
    case 'F':
      return msg(FrontendMsg.FunctionCall, Buffer.alloc(14));
    case 'd':
      return msg(0x64, Buffer.from('1\n'));
    case 'c':
      return msg(0x63);
    case 'f':
      return msg(0x66, cstr('client gave up'));
    default:
      throw new Error(`unknown step ${step}`);
  }
}

/** The counters of a BackendConnection the tracker reads and writes; ReadyForQuery as the backend counts it. */
class FakeBackend {
  pendingRfq = 0;
  txStatus = 0x49;
  needsReset = false;
  readonly applied = new Map<string, string>();
  readonly prepared = new Map<string, true>();
  syncedFingerprint: string | null = null;
  written = 0;
  write(buf: Buffer): boolean {
    this.written += buf.length;
    return true;
  }
  expect(): void {}
  readyForQuery(status: string): void {
    this.txStatus = status.charCodeAt(0);
    if (this.pendingRfq > 0) this.pendingRfq--;
  }
}

function tracker(tracking: boolean): RequestTracker {
  const classifier = new Classifier();
  const host: RequestHost = {
    classify: (sql) => classifier.classify(sql),
    pauseReading: () => {},
    terminated: () => {},
    discardedAll: () => {},
    listensOnBackend: () => {},
    functionsChanging: () => {},
    log: () => {},
  };
  const meter = new TrafficMeter();
  const t: RequestTracker = new RequestTracker(host, new StatementForwarder(new StatementNames(), () => 0, (m) => t.emit(m), meter), meter);
  t.tracking = tracking;
  return t;
}

/** Runs the steps; returns one letter per step (see the top of this file). */
function trace(steps: string[], mode: 'transaction' | 'session' = 'transaction'): string {
  const t = tracker(mode === 'transaction');
  const fake = new FakeBackend();
  const b = fake as unknown as BackendConnection;
  let out = '';
  for (const step of steps) {
    if (step.startsWith('Z:')) fake.readyForQuery(step.slice(2));
    else {
      const m = clientMessage(step);
      t.forward(b, m[0]!, m, 0, m.length);
      t.flushRun();
    }
    out += t.mayRelease(b) ? 'R' : t.atTransactionBoundary(b) ? 'K' : t.queryRunning(b) ? 'q' : t.idleInTransaction(b) ? 't' : 'o';
  }
  return out;
}

const TABLE: Array<[name: string, steps: string, expected: string, mode?: 'session']> = [
  ['simple query', 'Q:SELECT_1 Z:I', 'qR'],
  ['simple query that fails outside a transaction', 'Q:SELECT_1/0 Z:I', 'qR'],
  ['transaction block', 'Q:BEGIN Z:T Q:INSERT_INTO_t_VALUES_(1) Z:T Q:COMMIT Z:I', 'qtqtqR'],
  ['failed transaction block waits for its ROLLBACK', 'Q:BEGIN Z:T Q:SELECT_1/0 Z:E Q:ROLLBACK Z:I', 'qtqtqR'],
  ['several statements in one Query', 'Q:BEGIN;UPDATE_t_SET_a=1;COMMIT Z:I', 'qR'],
  ['pipelined simple queries: released after the last answer', 'Q:SELECT_1 Q:SELECT_2 Z:I Z:I', 'qqqR'],
  ['extended query', 'P:SELECT_1 B D E S Z:I', 'ooooqR'],
  ['extended query that fails: the backend skips to Sync', 'P:SELECT_1/0 B E S Z:I', 'oooqR'],
  ['Flush without Sync keeps the backend: the batch is open', 'P:SELECT_1 B E H', 'oooo'],
  ['Flush, then Sync: released after its ReadyForQuery', 'P:SELECT_1 B E H S Z:I', 'ooooqR'],
  ['pipelined extended batches: released after the last Sync is answered', 'P:SELECT_1 B E S P:SELECT_2 B E S Z:I Z:I', 'oooqqqqqqR'],
  // Inside a block, an open batch without Sync owes nothing yet: it counts as idle in transaction.
  ['extended batch inside a transaction block', 'P:BEGIN B E S Z:T P:COMMIT B E S Z:I', 'oooqttttqR'],
  ['messages after an answered Sync reopen the batch', 'P:SELECT_1 B E S Z:I P:SELECT_2', 'oooqRo'],
  ['COPY FROM STDIN: released once CopyDone is answered', 'Q:COPY_t_FROM_STDIN d d c Z:I', 'qqqqR'],
  ['COPY FROM STDIN the client abandons (CopyFail)', 'Q:COPY_t_FROM_STDIN d f Z:I', 'qqqR'],
  ['COPY inside a transaction block', 'Q:BEGIN Z:T Q:COPY_t_FROM_STDIN d c Z:T Q:COMMIT Z:I', 'qtqqqtqR'],
  ['FunctionCall', 'F Z:I', 'qR'],
  ['pinned client (temporary table) keeps its backend at the boundary', 'Q:CREATE_TEMP_TABLE_x(a_int) Z:I Q:SELECT_1 Z:I', 'qKqK'],
  ['DISCARD ALL unpins: released at the next boundary', 'Q:CREATE_TEMP_TABLE_x(a_int) Z:I Q:DISCARD_ALL Z:I', 'qKqR'],
  ['session mode keeps the backend at every boundary', 'Q:SELECT_1 Z:I Q:BEGIN Z:T Q:COMMIT Z:I', 'qKqtqK', 'session'],
];

describe('release rule (request tracker)', () => {
  for (const [name, steps, expected, mode] of TABLE) {
    it(name, () => {
      // "_" stands for a space in the table so steps split on spaces.
      const split = steps.split(' ').map((s) => s.replace(/_/g, ' '));
      expect(split.length, 'one expected letter per step').toBe(expected.length);
      expect(trace(split, mode ?? 'transaction')).toBe(expected);
    });
  }
});
