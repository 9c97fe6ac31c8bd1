// ReplayGuard's lone-read rules without a database: which requests may be re-run elsewhere,
// what reply bytes it holds back until an answer, and which errors count as the answer.
import { describe, expect, it } from 'vitest';
import type { BackendConnection } from '../../src/pool/backend.js';
import type { HeldMessage } from '../../src/protocol/framer.js';
import { ReplayGuard } from '../../src/session/replayGuard.js';
import { bindMsg, describeMsg, executeMsg, flushMsg, parseMsg, queryMsg, syncMsg, typedMessage } from '../support/rawClient.js';

function held(...msgs: Buffer[]): HeldMessage[] {
  return msgs.map((buf) => ({ type: buf[0]!, buf, start: 0, end: buf.length }));
}

/** What the guard reads of a backend: whether an answer went out, and the message it is in. */
function backend(answered: boolean, lastType: string): BackendConnection {
  return { answered, lastType: lastType.charCodeAt(0) } as unknown as BackendConnection;
}

const never = () => false;
const extended = (stmt = '', bindStmt = stmt) => [parseMsg(stmt, 'SELECT $1::int'), bindMsg('', bindStmt, ['1']), describeMsg('P', ''), executeMsg(), syncMsg()];
const fatal = (code: string) => new Map([['S', 'FATAL'], ['V', 'FATAL'], ['C', code], ['M', 'terminating connection due to administrator command']]);

describe('ReplayGuard: which lone reads may re-run elsewhere', () => {
  const cases: Array<[string, Buffer[], boolean]> = [
    ['a Query', [queryMsg('SELECT 1')], true],
    ['Parse/Bind/Describe/Execute/Sync', extended(), true],
    ['the same with a named statement', extended('s1'), true],
    ['Bind of a named statement, Describe, Execute, Sync', [bindMsg('', 's1'), describeMsg('P', ''), executeMsg(), syncMsg()], true],
    ['with a Flush before the Sync', [...extended().slice(0, 4), flushMsg(), syncMsg()], true],
    ['two Queries', [queryMsg('SELECT 1'), queryMsg('SELECT 2')], false],
    ['two Syncs (pipelined)', [...extended(), ...extended()], false],
    ['no Sync yet', extended().slice(0, 4), false],
    ['a Bind of another statement than the Parse defines', extended('s1', 's2'), false],
    ['two Executes', [parseMsg('', 'SELECT 1'), bindMsg('', ''), executeMsg(), executeMsg(), syncMsg()], false],
    ['a Close in the batch', [...extended().slice(0, 4), typedMessage('C', Buffer.from('Ss9\0')), syncMsg()], false],
  ];
  for (const [what, msgs, rerun] of cases) {
    it(`${what}: ${rerun ? 're-run' : 'never re-run'}`, () => {
      const g = new ReplayGuard();
      g.arm(held(...msgs), true, never);
      expect(g.takeRead() !== null).toBe(rerun);
    });
  }

  it('nothing the classifier did not call a lone read', () => {
    const g = new ReplayGuard();
    g.arm(held(queryMsg('INSERT INTO t VALUES (1)')), false, never);
    expect(g.takeRead()).toBeNull();
  });

  it('names the statement its Parse defines, unless the client had it already', () => {
    const g = new ReplayGuard();
    g.arm(held(...extended('s1')), true, never);
    expect(g.takeRead()?.parsed).toBe('s1');
    g.arm(held(...extended('s1')), true, (n) => n === 's1');
    expect(g.takeRead()?.parsed).toBeNull();
    g.arm(held(...extended('')), true, never);
    expect(g.takeRead()?.parsed).toBeNull();
  });
});

describe('ReplayGuard: reply bytes and answers', () => {
  const preamble = Buffer.from('12T');
  const row = Buffer.from('D');

  it('holds ParseComplete/BindComplete/RowDescription until an answer, then sends them first', () => {
    const g = new ReplayGuard();
    g.arm(held(...extended()), true, never);
    expect(g.filter(preamble, backend(false, 'T'))).toBeNull();
    expect(g.filter(row, backend(true, 'D'))?.toString()).toBe('12TD');
    expect(g.takeRead()).toBeNull(); // answered: the client's to retry
  });

  it('drops a FATAL that says the node is going away, and everything after it; the read re-runs', () => {
    for (const code of ['57P01', '57P02', '57P03', '08006']) {
      const g = new ReplayGuard();
      g.arm(held(...extended()), true, never);
      expect(g.filter(preamble, backend(false, 'T'))).toBeNull();
      expect(g.filter(Buffer.from('E'), backend(true, 'E'))).toBeNull();
      expect(g.onError(fatal(code), false)).toBeNull();
      expect(g.filter(Buffer.from('x'), backend(true, 'Z'))).toBeNull();
      expect(g.takeRead()?.messages.length, code).toBe(5);
    }
  });

  it("sends the query's own error (and what was held before it) and never re-runs", () => {
    const g = new ReplayGuard();
    g.arm(held(...extended()), true, never);
    expect(g.filter(Buffer.from('12'), backend(false, '2'))).toBeNull();
    expect(g.filter(Buffer.from('E'), backend(true, 'E'))).toBeNull();
    const own = new Map([['S', 'ERROR'], ['V', 'ERROR'], ['C', '22012'], ['M', 'division by zero']]);
    expect(g.onError(own, false)?.toString()).toBe('12E');
    expect(g.filter(Buffer.from('Z'), backend(true, 'Z'))?.toString()).toBe('Z');
    expect(g.takeRead()).toBeNull();
  });

  it('an ERROR with a shutdown code is still the query\'s answer (only FATAL means the node goes)', () => {
    const g = new ReplayGuard();
    g.arm(held(queryMsg('SELECT 1')), true, never);
    expect(g.filter(Buffer.from('E'), backend(true, 'E'))).toBeNull();
    const notFatal = new Map([['S', 'ERROR'], ['V', 'ERROR'], ['C', '57P01'], ['M', 'x']]);
    expect(g.onError(notFatal, false)?.toString()).toBe('E');
    expect(g.takeRead()).toBeNull();
  });

  it('passes everything through for what may not re-run, a FATAL included', () => {
    const g = new ReplayGuard();
    g.arm(held(queryMsg('INSERT INTO t VALUES (1)')), false, never);
    expect(g.filter(Buffer.from('E'), backend(true, 'E'))?.toString()).toBe('E');
    expect(g.onError(fatal('57P01'), false)).toBeNull();
    expect(g.takeRead()).toBeNull();
  });

  it('a request sent after the read: what was held goes out now, and the read never re-runs', () => {
    const g = new ReplayGuard();
    g.arm(held(queryMsg('SELECT 1')), true, never);
    expect(g.filter(Buffer.from('NT'), backend(false, 'T'))).toBeNull();
    expect(g.moreRequests()?.toString()).toBe('NT');
    expect(g.moreRequests()).toBeNull();
    expect(g.filter(Buffer.from('D'), backend(true, 'D'))?.toString()).toBe('D');
    expect(g.takeRead()).toBeNull();
  });

  it('a request sent after a batch of a named statement: a stale-plan error is not replayed behind it', () => {
    const g = new ReplayGuard();
    const batch = held(bindMsg('', 's1'), describeMsg('P', ''), executeMsg(), syncMsg());
    g.arm(batch, false, (n) => n === 's1');
    expect(g.moreRequests()).toBeNull();
    expect(g.filter(Buffer.from('E'), backend(true, 'E'))?.toString()).toBe('E');
    expect(g.onError(new Map([['C', '0A000'], ['M', 'cached plan must not change result type']]), true)).toBeNull();
    expect(g.takeReplay()).toBeNull();
  });

  it('without a later request, the stale-plan batch is replayed', () => {
    const g = new ReplayGuard();
    const batch = held(bindMsg('', 's1'), describeMsg('P', ''), executeMsg(), syncMsg());
    g.arm(batch, false, (n) => n === 's1');
    expect(g.filter(Buffer.from('E'), backend(true, 'E'))).toBeNull();
    expect(g.onError(new Map([['C', '0A000'], ['M', 'cached plan must not change result type']]), true)).toBeNull();
    expect(g.filter(Buffer.from('Z'), backend(true, 'Z'))).toBeNull();
    expect(g.takeReplay()).toHaveLength(4);
  });
});
