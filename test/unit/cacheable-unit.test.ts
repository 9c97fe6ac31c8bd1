// Which extended-protocol units the query cache answers, and their key part
// (src/session/cacheableUnit.ts): everything that changes the reply's bytes changes the key,
// names that do not change them do not.
import { describe, expect, it } from 'vitest';
import { cacheableUnit, oneStatementUnit, unitText, type KnownStatement } from '../../src/session/cacheableUnit.js';
import { volatileParameter } from '../../src/routing/cacheability.js';
import type { HeldMessage } from '../../src/protocol/framer.js';
import { bindMsg, describeMsg, executeMsg, flushMsg, parseMsg, queryMsg, syncMsg, typedMessage } from '../support/rawClient.js';

const SQL = 'SELECT name FROM items WHERE id = $1';
const INT4 = 23;

/** The messages as the framer hands them out: views into one read chunk. */
function held(...msgs: Buffer[]): HeldMessage[] {
  const chunk = Buffer.concat([Buffer.from('junk'), ...msgs]);
  const out: HeldMessage[] = [];
  let pos = 4;
  for (const m of msgs) {
    out.push({ type: m[0]!, buf: chunk, start: pos, end: pos + m.length });
    pos += m.length;
  }
  return out;
}

/** Named statements as the session knows them. */
function statements(map: Record<string, { query: string; types?: number[] }>): (name: string) => KnownStatement | undefined {
  return (name) => {
    const s = map[name];
    if (s === undefined) return undefined;
    const p = parseMsg(name, s.query, s.types ?? []);
    return { query: s.query, rest: p.subarray(5 + Buffer.byteLength(name) + 1 + Buffer.byteLength(s.query) + 1) };
  };
}

const none = statements({});
const named = statements({ S_1: { query: SQL }, S_2: { query: SQL }, S_3: { query: SQL, types: [INT4] }, other: { query: 'SELECT 2' } });
const unitOf = (h: HeldMessage[], known = named) => cacheableUnit(h, known)?.unit;

/** node-postgres's shape: unnamed Parse, Bind, Describe portal, Execute, Sync. */
const pgUnit = (params: Array<string | Buffer | null> = ['1'], formats: { params?: number[]; results?: number[] } = {}, types: number[] = []) =>
  held(parseMsg('', SQL, types), bindMsg('', '', params, formats), describeMsg('P', ''), executeMsg(), syncMsg());

describe('cacheableUnit', () => {
  it('accepts the drivers\' shapes and takes the text from the Parse or the named statement', () => {
    expect(cacheableUnit(pgUnit(), none)).toMatchObject({ sql: SQL, unit: expect.stringMatching(/^PBDpE:/) });
    expect(cacheableUnit(held(bindMsg('', 'S_1', ['1']), executeMsg(), syncMsg()), named)).toMatchObject({ sql: SQL, unit: expect.stringMatching(/^BE:/) });
    expect(unitOf(held(parseMsg('', SQL), describeMsg('S', ''), bindMsg('', '', ['1']), executeMsg(), syncMsg()))).toMatch(/^PDsBE:/);
    expect(unitOf(held(describeMsg('S', 'S_1'), bindMsg('', 'S_1', ['1']), describeMsg('P', ''), executeMsg(), syncMsg()))).toMatch(/^DsBDpE:/);
  });

  it('parameter values, NULL, formats, result formats, types and shape each make a different key', () => {
    const keys = [
      unitOf(pgUnit(['1'])),
      unitOf(pgUnit(['2'])),
      unitOf(pgUnit([null])),
      unitOf(pgUnit([''])),
      unitOf(pgUnit([Buffer.from([0, 0, 0, 1])], { params: [1] })),
      unitOf(pgUnit(['1'], { params: [0] })), // same meaning as no codes, different bytes: kept apart
      unitOf(pgUnit(['1'], { results: [1] })),
      unitOf(pgUnit(['1'], {}, [INT4])),
      unitOf(held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), syncMsg())), // no Describe: no RowDescription
      unitOf(held(bindMsg('', 'S_1', ['1']), executeMsg(), syncMsg())), // no Parse: no ParseComplete
      unitOf(held(bindMsg('', 'S_3', ['1']), executeMsg(), syncMsg())), // declared parameter types
    ];
    expect(keys.every((k) => typeof k === 'string')).toBe(true);
    expect(new Set(keys).size).toBe(keys.length);
    // The same bytes give the same key, wherever they sit in the read chunk.
    expect(unitOf(pgUnit(['1']))).toBe(keys[0]);
  });

  it('names that do not change the reply do not change the key; names that disagree are refused', () => {
    const bes = (stmt: string) => unitOf(held(bindMsg('', stmt, ['7']), executeMsg(), syncMsg()));
    expect(bes('S_1')).toBe(bes('S_2')); // one text, two clients' names
    expect(unitOf(held(bindMsg('p1', 'S_1', ['7']), executeMsg('p1'), syncMsg()))).toBe(bes('S_1'));
    expect(unitOf(held(bindMsg('p1', 'S_1', ['7']), executeMsg('p2'), syncMsg()))).toBeUndefined();
    expect(unitOf(held(bindMsg('p1', 'S_1', ['7']), describeMsg('P', ''), executeMsg('p1'), syncMsg()))).toBeUndefined();
    expect(unitOf(held(parseMsg('', SQL), describeMsg('S', 'S_1'), bindMsg('', '', ['1']), executeMsg(), syncMsg()))).toBeUndefined();
    expect(unitOf(held(describeMsg('S', 'other'), bindMsg('', 'S_1', ['1']), executeMsg(), syncMsg()))).toBeUndefined();
  });

  it('refuses what is not one statement run once to its Sync', () => {
    const refused: Array<[string, HeldMessage[]]> = [
      ['a row limit (PortalSuspended)', held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg('', 10), syncMsg())],
      ['a named Parse', held(parseMsg('S_9', SQL), bindMsg('', 'S_9', ['1']), executeMsg(), syncMsg())],
      ['an unknown named statement', held(bindMsg('', 'nope', ['1']), executeMsg(), syncMsg())],
      ['the unnamed statement of an earlier request', held(bindMsg('', '', ['1']), executeMsg(), syncMsg())],
      ['no Sync', held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg())],
      ['a Flush inside', held(parseMsg('', SQL), bindMsg('', '', ['1']), flushMsg(), executeMsg(), syncMsg())],
      ['two Executes', held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), executeMsg(), syncMsg())],
      ['two Binds', held(parseMsg('', SQL), bindMsg('', '', ['1']), bindMsg('', '', ['2']), executeMsg(), syncMsg())],
      ['no Execute', held(parseMsg('', SQL), bindMsg('', '', ['1']), syncMsg())],
      ['a Bind of another statement than the Parse', held(parseMsg('', SQL), bindMsg('', 'S_1', ['1']), executeMsg(), syncMsg())],
      ['a Query', held(queryMsg('SELECT 1'))],
      ['a unit after another', held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), syncMsg(), bindMsg('', '', ['2']), executeMsg(), syncMsg())],
      ['a Close', held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), typedMessage('C', Buffer.from('S\0')), syncMsg())],
      ['a parameter that means the current time', pgUnit([' Now '])],
      ['a parameter that starts with today', pgUnit(['today 10:00'])],
      ['a malformed Bind', held(parseMsg('', SQL), typedMessage('B', Buffer.from('\0\0\0')), executeMsg(), syncMsg())],
    ];
    for (const [why, h] of refused) expect(cacheableUnit(h, named), why).toBeNull();
  });
});

describe('oneStatementUnit (one request for invalidation: it runs what routing read)', () => {
  it('takes named Parses and row limits too, and nothing that could run a second statement', () => {
    const u = oneStatementUnit(held(parseMsg('S_9', SQL), bindMsg('', 'S_9', ['1']), executeMsg('', 5), syncMsg()), none);
    expect(u).toMatchObject({ namedParse: true, rowLimit: true, shape: 'PBE' });
    expect(unitText(u!)).toBe(SQL);
    expect(unitText(oneStatementUnit(held(bindMsg('', 'other'), executeMsg(), syncMsg()), named)!)).toBe('SELECT 2');
    expect(oneStatementUnit(held(parseMsg('S_9', SQL), bindMsg('', 'other', ['1']), executeMsg(), syncMsg()), named)).toBeNull();
    expect(oneStatementUnit(held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), parseMsg('', 'DELETE FROM items'), bindMsg('', ''), executeMsg(), syncMsg()), none)).toBeNull();
    expect(oneStatementUnit(held(parseMsg('', SQL), bindMsg('', '', ['1']), executeMsg(), syncMsg(), queryMsg('DELETE FROM items')), none)).toBeNull();
  });
});

describe('volatileParameter', () => {
  it.each([
    ['now', true],
    ['NOW', true],
    ['  tomorrow', true],
    ['Yesterday 12:00', true],
    ['2024-01-01', false],
    ['42', false],
    ['epoch', false],
    ['kn', false], // 'ow' follows outside the slice below
  ])('%s -> %s', (v, volatile) => {
    const b = Buffer.from(v);
    expect(volatileParameter(b, 0, b.length)).toBe(volatile);
    // Bounds are respected: the word just outside the slice does not count.
    const around = Buffer.from(`now${v}now`);
    expect(volatileParameter(around, 3, 3 + v.length)).toBe(volatile);
  });
});
