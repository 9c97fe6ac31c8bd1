// Pipelining's decisions without a database (pipeline_depth; src/pool/pipeline.ts and
// src/routing/pipelining.ts): which statements leave nothing behind, which message shapes are
// one unit, which busy backend a unit may join, and the hand-over at ReadyForQuery.
import { describe, expect, it } from 'vitest';
import { BackendState, type BackendConnection } from '../../src/pool/backend.js';
import { BackendPipeline, pipelineLimits, pipelineTarget, queuedBehind, selfContainedUnit, type PipelineMember } from '../../src/pool/pipeline.js';
import type { HeldMessage } from '../../src/protocol/framer.js';
import { classifySql } from '../../src/routing/classifier.js';
import { selfContainedStatement } from '../../src/routing/pipelining.js';
import { bindMsg, describeMsg, executeMsg, flushMsg, parseMsg, queryMsg, syncMsg } from '../support/rawClient.js';

function held(...msgs: Buffer[]): HeldMessage[] {
  return msgs.map((buf) => ({ type: buf[0]!, buf, start: 0, end: buf.length }));
}

describe('selfContainedStatement: what may share a backend with other clients', () => {
  const cases: Array<[string, boolean]> = [
    ['SELECT abalance FROM pgbench_accounts WHERE aid = 7', true],
    ['SELECT 1/0', true],
    ['SHOW work_mem', true],
    ['BEGIN', false],
    ['BEGIN READ ONLY', false],
    ["SET work_mem = '8MB'", false],
    ["SELECT set_config('work_mem', '8MB', false)", false],
    ['SELECT 1; SELECT 2', false],
    ['INSERT INTO t VALUES (1)', false],
    ['/* pgmux:replica */ INSERT INTO t VALUES (1)', false],
    ['/* pgmux:replica */ SELECT 1', false],
    ['CREATE TEMP TABLE t (a int)', false],
    ['LISTEN ch', false],
    ['SELECT pg_advisory_lock(1)', false],
    ['PREPARE p AS SELECT 1', false],
    ['DISCARD ALL', false],
  ];
  for (const [sql, expected] of cases) {
    it(`${sql}: ${expected ? 'yes' : 'no'}`, () => {
      expect(selfContainedStatement(classifySql(sql))).toBe(expected);
    });
  }
});

describe('selfContainedUnit: one request with one Sync, unnamed statement and portal', () => {
  const ext = (stmt = '', portal = '') => [parseMsg(stmt, 'SELECT $1::int'), bindMsg(portal, stmt, ['1']), describeMsg('P', portal), executeMsg(portal), syncMsg()];
  const cases: Array<[string, Buffer[], boolean]> = [
    ['a Query', [queryMsg('SELECT 1')], true],
    ['Parse/Bind/Describe/Execute/Sync, unnamed', ext(), true],
    ['without Describe', [parseMsg('', 'SELECT 1'), bindMsg('', ''), executeMsg(), syncMsg()], true],
    ['a named statement', ext('s1'), false],
    ['a named portal', ext('', 'p1'), false],
    ['Bind without its Parse', ext().slice(1), false],
    ['no Sync', ext().slice(0, 4), false],
    ['a Flush before the Sync', [...ext().slice(0, 4), flushMsg(), syncMsg()], false],
    ['two units', [...ext(), ...ext()], false],
    ['two Queries', [queryMsg('SELECT 1'), queryMsg('SELECT 2')], false],
    ['two Executes', [parseMsg('', 'SELECT 1'), bindMsg('', ''), executeMsg(), executeMsg(), syncMsg()], false],
  ];
  for (const [what, msgs, expected] of cases) {
    it(`${what}: ${expected ? 'one unit' : 'not one unit'}`, () => {
      expect(selfContainedUnit(held(...msgs))).toBe(expected);
    });
  }
});

/** What pipelining reads of a backend. */
function fakeBackend(opts: { headOpen?: boolean; fingerprint?: string; state?: BackendState } = {}): BackendConnection {
  const closeListeners: Array<() => void> = [];
  const b = {
    state: opts.state ?? BackendState.Linked,
    owner: { pipelineHeadOpen: opts.headOpen ?? true },
    syncedFingerprint: opts.fingerprint ?? 'fp',
    needsReset: false,
    discardOnRelease: false,
    socket: { writableNeedDrain: false },
    pendingRfq: 0,
    pipeline: null,
    closeReason: null,
    onClose: (fn: () => void) => closeListeners.push(fn),
    link(owner: unknown) {
      b.owner = owner as never;
    },
    close() {
      b.state = BackendState.Closed;
      for (const fn of closeListeners) fn();
    },
  };
  return b as unknown as BackendConnection;
}

function member(log: string[], name: string): PipelineMember {
  return {
    onPipelineTurn: () => log.push(`turn ${name}`),
    onPipelineLost: () => log.push(`lost ${name}`),
  };
}

describe('pipelineTarget: which busy backend a unit joins', () => {
  it('none before a self-contained unit ever ran there, then the shortest queue, up to depth', () => {
    const a = fakeBackend();
    const b = fakeBackend();
    expect(pipelineTarget([a, b], 4, 'fp')).toBeNull(); // no head registered yet
    for (const x of [a, b]) (x.pipeline = new BackendPipeline(x)).headSince = performance.now();
    a.pipeline!.queued.push(null);
    expect(pipelineTarget([a, b], 4, 'fp')).toBe(b);
    b.pipeline!.queued.push(null, null);
    expect(pipelineTarget([a, b], 4, 'fp')).toBe(a);
    a.pipeline!.queued.push(null, null);
    expect(pipelineTarget([a, b], 4, 'fp')).toBe(b); // a holds depth 4 now (head + 3)
    b.pipeline!.queued.push(null);
    expect(pipelineTarget([a, b], 4, 'fp')).toBeNull();
    expect(pipelineTarget([fakeBackend()], 1, 'fp')).toBeNull();
  });

  it('never behind a head that is not one open unit, has run too long, or has other settings', () => {
    const cases: Array<[string, BackendConnection, number]> = [
      ['head not open', fakeBackend({ headOpen: false }), 0],
      ['other settings', fakeBackend({ fingerprint: 'other' }), 0],
      ['not linked', fakeBackend({ state: BackendState.Idle }), 0],
      ['head too old', fakeBackend(), pipelineLimits.headMaxAgeMs + 5],
    ];
    for (const [what, b, ageMs] of cases) {
      (b.pipeline = new BackendPipeline(b)).headSince = performance.now() - ageMs;
      expect(pipelineTarget([b], 4, 'fp'), what).toBeNull();
    }
  });
});

describe('BackendPipeline: hand-over and loss', () => {
  it('hands the backend to the queued units in wire order, each owing one ReadyForQuery', () => {
    const log: string[] = [];
    const b = fakeBackend();
    const p = (b.pipeline = new BackendPipeline(b));
    p.queued.push(member(log, 'x'), member(log, 'y'));
    expect(queuedBehind(b)).toBe(2);
    expect(p.handOver(b)).toBe(true);
    expect(b.pendingRfq).toBe(1);
    expect(p.handOver(b)).toBe(true);
    expect(p.handOver(b)).toBe(false); // nothing left: the pool takes it back
    expect(log).toEqual(['turn x', 'turn y']);
  });

  it('a backend that closes tells each queued client on its own, abandoned ones excepted', () => {
    const log: string[] = [];
    const b = fakeBackend();
    const p = (b.pipeline = new BackendPipeline(b));
    const gone = member(log, 'gone');
    p.queued.push(member(log, 'x'), gone, member(log, 'z'));
    p.abandon(gone);
    (b as unknown as { close(): void }).close();
    expect(log).toEqual(['lost x', 'lost z']);
    expect(queuedBehind(b)).toBe(0);
  });
});
