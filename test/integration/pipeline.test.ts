// Cross-client pipelining (pipeline_depth, experimental; src/pool/pipeline.ts): with one
// backend for everyone, self-contained reads are written behind the one running there, and
// every client must still get exactly its own replies. A "gate" makes queueing
// deterministic: a direct connection holds an ACCESS EXCLUSIVE lock on a table, so the head
// (a read of that table) runs, blocked, until the test commits; the units sent meanwhile go
// on the wire behind it (pgmux_pipelined_total says how many).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { pgClient, primaryPort, waitUntilRunning } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { bindMsg, describeMsg, executeMsg, firstError, parseMsg, queryMsg, RawClient, rows, sendCancel, syncMsg, type PgMessage } from '../support/rawClient.js';
import { pipelineLimits } from '../../src/pool/pipeline.js';
import { sleep, waitFor } from '../support/wait.js';

const GATED = 'SELECT count(*) AS n FROM pipeline_gate';

function extended(sql: string, params: string[] = []): Buffer {
  return Buffer.concat([parseMsg('', sql), bindMsg('', '', params), describeMsg('P', ''), executeMsg(), syncMsg()]);
}

/** The rows of a reply that must have succeeded. */
function ok(msgs: PgMessage[]): Array<Array<string | null>> {
  const e = firstError(msgs);
  if (e) throw new Error(`unexpected error ${e.code} ${e.message}`);
  expect(msgs.at(-1)?.type).toBe('Z');
  return rows(msgs);
}

describe('cross-client pipelining (pipeline_depth 4, pool_size 1)', () => {
  let proxy: TestProxy;
  let direct: pg.Client;
  const open: Array<{ end(): unknown }> = [];
  const savedAge = pipelineLimits.headMaxAgeMs;

  beforeAll(async () => {
    direct = await pgClient(primaryPort());
    await direct.query('CREATE TABLE IF NOT EXISTS pipeline_gate (id int)');
    proxy = await startProxy({ nodes: testConfig().nodes.filter((n) => n.port === primaryPort()), poolSize: 1, pipelineDepth: 4 });
    // Queue behind a head however long it has run: the gate holds it for the test's length.
    pipelineLimits.headMaxAgeMs = 60_000;
  });

  afterAll(async () => {
    pipelineLimits.headMaxAgeMs = savedAge;
    for (const c of open) c.end();
    await proxy?.close();
    await direct?.end();
  });

  const pipelined = () => proxy.proxy.stats.pipelined;

  async function login(): Promise<RawClient> {
    const c = await RawClient.login(proxy.port);
    open.push(c);
    return c;
  }

  /** Locks pipeline_gate; the returned function lets readers of it through. */
  async function closeGate(): Promise<() => Promise<void>> {
    const c = await pgClient(primaryPort());
    await c.query('BEGIN');
    await c.query('LOCK TABLE pipeline_gate IN ACCESS EXCLUSIVE MODE');
    return async () => {
      await c.query('COMMIT');
      await c.end();
    };
  }

  /** Client `head` runs the gated read on the one backend (blocked until the gate opens). */
  async function gatedHead(): Promise<RawClient> {
    const head = await login();
    head.send(queryMsg(GATED));
    await waitUntilRunning(GATED);
    return head;
  }

  it('many clients, simple and extended, interleaved at random: each gets exactly its own rows', async () => {
    pipelineLimits.headMaxAgeMs = 50; // a realistic window, a little wider for a loaded test machine
    try {
      const before = pipelined();
      const clients = await Promise.all(Array.from({ length: 10 }, () => login()));
      const expected = new Map<number, string>();
      const r = await direct.query('SELECT aid, abalance FROM pgbench_accounts WHERE aid <= 500');
      for (const row of r.rows) expected.set(row.aid as number, String(row.abalance));
      await Promise.all(
        clients.map(async (c, who) => {
          for (let i = 0; i < 40; i++) {
            const aid = 1 + Math.floor(Math.random() * 500);
            const simple = (who + i) % 2 === 0;
            c.send(
              simple
                ? queryMsg(`SELECT aid, abalance, ${who} AS who, ${i} AS i FROM pgbench_accounts WHERE aid = ${aid}`)
                : extended('SELECT aid, abalance, $2::int AS who, $3::int AS i FROM pgbench_accounts WHERE aid = $1', [String(aid), String(who), String(i)]),
            );
            const got = ok(await c.readUntil('Z', 10_000));
            expect(got).toEqual([[String(aid), expected.get(aid)!, String(who), String(i)]]);
            if (Math.random() < 0.3) await sleep(Math.random() * 3);
          }
        }),
      );
      expect(pipelined() - before).toBeGreaterThan(0);
    } finally {
      pipelineLimits.headMaxAgeMs = 60_000;
    }
  });

  it('an error in a queued unit reaches its client only; the units around it are untouched', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const failing = await login();
    failing.send(queryMsg('SELECT 1/0 AS boom'));
    await waitFor(() => pipelined() === before + 1, 5000, () => `pipelined ${pipelined() - before}`);
    const failingExt = await login();
    failingExt.send(extended('SELECT 1/$1::int AS boom', ['0']));
    await waitFor(() => pipelined() === before + 2, 5000, () => `pipelined ${pipelined() - before}`);
    const after = await login();
    after.send(extended('SELECT $1::int AS v', ['42']));
    await waitFor(() => pipelined() === before + 3, 5000, () => `pipelined ${pipelined() - before}`);
    await open_();
    expect(ok(await head.readUntil('Z'))).toEqual([['0']]);
    const e1 = await failing.readUntil('Z');
    expect(firstError(e1)?.code).toBe('22012');
    const e2 = await failingExt.readUntil('Z');
    expect(firstError(e2)?.code).toBe('22012');
    expect(ok(await after.readUntil('Z'))).toEqual([['42']]);
    // Each connection goes on as usual afterwards.
    for (const c of [head, failing, failingExt, after]) {
      c.send(queryMsg('SELECT 1'));
      expect(ok(await c.readUntil('Z'))).toEqual([['1']]);
    }
  });

  it('a cancel for a queued unit cancels nothing, and neither does the head\'s while units wait behind it', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const queued = await login();
    queued.send(queryMsg('SELECT 7 AS v'));
    await waitFor(() => pipelined() === before + 1, 5000, () => `pipelined ${pipelined() - before}`);
    await sendCancel(proxy.port, queued.pid, queued.secret);
    // The head's cancel could reach PostgreSQL as the queued unit starts: pgmux drops it.
    await sendCancel(proxy.port, head.pid, head.secret);
    await sleep(300);
    await open_();
    expect(ok(await head.readUntil('Z'))).toEqual([['0']]);
    expect(ok(await queued.readUntil('Z'))).toEqual([['7']]);
  });

  it('what the head client sends while units are queued behind its own waits for its turn: no unit is split', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const queued = await login();
    queued.send(queryMsg('SELECT 7 AS v'));
    await waitFor(() => pipelined() === before + 1, 5000, () => `pipelined ${pipelined() - before}`);
    // The head's client pipelines its own next requests, simple and extended.
    head.send(Buffer.concat([queryMsg('SELECT 2 AS v'), extended('SELECT $1::int AS v', ['3'])]));
    await sleep(100);
    await open_();
    expect(ok(await head.readUntil('Z'))).toEqual([['0']]);
    expect(ok(await head.readUntil('Z'))).toEqual([['2']]);
    expect(ok(await head.readUntil('Z'))).toEqual([['3']]);
    expect(ok(await queued.readUntil('Z'))).toEqual([['7']]);
  });

  it('a queued client that leaves: its replies go nowhere and the unit behind it gets its own', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const leaver = await login();
    leaver.send(queryMsg('SELECT 8 AS v'));
    await waitFor(() => pipelined() === before + 1, 5000, () => `pipelined ${pipelined() - before}`);
    const stays = await login();
    stays.send(queryMsg('SELECT 9 AS v'));
    await waitFor(() => pipelined() === before + 2, 5000, () => `pipelined ${pipelined() - before}`);
    leaver.destroy();
    await sleep(100);
    await open_();
    expect(ok(await head.readUntil('Z'))).toEqual([['0']]);
    expect(ok(await stays.readUntil('Z'))).toEqual([['9']]);
    // The one backend went back to the pool after the abandoned unit: it serves the next client.
    const next = await login();
    next.send(queryMsg('SELECT 10 AS v'));
    expect(ok(await next.readUntil('Z'))).toEqual([['10']]);
  });

  it('the backend killed with 3 units queued: each client gets its own rows (re-run) or its own error', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const queued: RawClient[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await login();
      c.send(i === 1 ? extended('SELECT $1::int AS v', [String(100 + i)]) : queryMsg(`SELECT ${100 + i} AS v`));
      await waitFor(() => pipelined() === before + i + 1, 5000, () => `pipelined ${pipelined() - before}`);
      queued.push(c);
    }
    // What the head's client sends now waits (units are queued behind its own): kept across the re-run.
    head.send(queryMsg('SELECT 2 AS v'));
    await sleep(100);
    const retriesBefore = proxy.proxy.stats.readRetries;
    const killed = await direct.query('SELECT pg_terminate_backend(pid) AS k FROM pg_stat_activity WHERE query = $1', [GATED]);
    expect(killed.rows).toEqual([{ k: true }]);
    // Re-runs go to a new backend: the head blocks on the gate again, the others queue or wait.
    await waitUntilRunning(GATED);
    await open_();
    const replies = [head, ...queued].map((c) => c.readUntil('Z', 10_000));
    const headReply = await replies[0]!;
    const headErr = firstError(headReply);
    if (headErr) expect(['57P01', '08006', '08P01']).toContain(headErr.code);
    else {
      expect(rows(headReply)).toEqual([['0']]);
      expect(ok(await head.readUntil('Z'))).toEqual([['2']]);
    }
    for (let i = 0; i < 3; i++) {
      const msgs = await replies[i + 1]!;
      const e = firstError(msgs);
      if (e) expect(['57P01', '08006', '08P01']).toContain(e.code);
      else expect(rows(msgs)).toEqual([[String(100 + i)]]);
    }
    // Reads are re-run, each on its own: here all four.
    expect(proxy.proxy.stats.readRetries - retriesBefore).toBe(4);
  });

  it('a unit that opens a transaction or sets a setting is never queued behind a running one', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const begins = await login();
    begins.send(queryMsg('BEGIN'));
    const sets = await login();
    sets.send(queryMsg("SET work_mem = '9MB'"));
    const setsExt = await login();
    setsExt.send(extended("SELECT set_config('work_mem', '10MB', false)"));
    await sleep(300);
    expect(pipelined()).toBe(before);
    expect(begins.buffered + sets.buffered + setsExt.buffered).toBe(0); // all three wait for the backend
    await open_();
    expect(ok(await head.readUntil('Z'))).toEqual([['0']]);
    await begins.readUntil('Z');
    begins.send(queryMsg('COMMIT'));
    await begins.readUntil('Z');
    await sets.readUntil('Z');
    await setsExt.readUntil('Z');
  });

  it('a client already waiting for the pool is not overtaken by reads pipelined behind the running one', async () => {
    const open_ = await closeGate();
    const head = await gatedHead();
    const before = pipelined();
    const writer = await login();
    writer.send(queryMsg('BEGIN'));
    await sleep(100); // waits in the pool's queue
    const reader = await login();
    reader.send(queryMsg('SELECT 5 AS v'));
    await sleep(200);
    expect(pipelined()).toBe(before);
    await open_();
    await head.readUntil('Z');
    await writer.readUntil('Z');
    writer.send(queryMsg('COMMIT'));
    await writer.readUntil('Z');
    expect(ok(await reader.readUntil('Z'))).toEqual([['5']]);
  });

  it('nothing is queued behind a unit that opens a transaction or sets a setting', async () => {
    for (const headSql of [`SET work_mem = '9MB'; ${GATED}`, `BEGIN; ${GATED}`]) {
      const open_ = await closeGate();
      const head = await login();
      head.send(queryMsg(headSql));
      await waitUntilRunning(headSql);
      const before = pipelined();
      const reader = await login();
      reader.send(queryMsg('SHOW work_mem'));
      await sleep(300);
      expect(pipelined()).toBe(before);
      expect(reader.buffered).toBe(0);
      await open_();
      await head.readUntil('Z');
      if (headSql.startsWith('BEGIN')) {
        await sleep(100);
        expect(reader.buffered).toBe(0); // still inside the head's transaction
        head.send(queryMsg('COMMIT'));
        await head.readUntil('Z');
      }
      // The reader never saw the head's setting: it ran on a backend set back to its own.
      expect(ok(await reader.readUntil('Z'))).toEqual([['4MB']]);
    }
  });
});
