// The lean I/O path (lean_io, src/net/leanSocket.ts) reads every plaintext socket into one
// shared buffer: any byte pgmux still needs after a read callback returned must have been
// copied out or written already. These tests push the cases where bytes wait (slow readers,
// huge rows, COPY both ways, pipelined batches cut at every byte, a client that stops
// reading mid-result) and compare what arrives with what a direct connection gets, byte for
// byte (a digest of every message). They run on whichever path the harness selects
// (PGMUX_TEST_LEAN_IO); on the lean path they also check that the traffic took it.
import { createHash } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { leanSocketCount } from '../../src/net/leanSocket.js';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import {
  bindMsg,
  describeMsg,
  executeMsg,
  parseMsg,
  queryMsg,
  RawClient,
  syncMsg,
  typedMessage,
  type PgMessage,
} from '../support/rawClient.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const md5 = (s: string) => createHash('md5').update(s).digest('hex');
const lean = testConfig().leanIo;

let proxy: TestProxy | null = null;
let open: Array<pg.Client | RawClient> = [];

afterEach(async () => {
  for (const c of open) {
    if (c instanceof RawClient) c.destroy();
    else await c.end().catch(() => {});
  }
  open = [];
  await proxy?.close();
  proxy = null;
});

/** A digest of every message (type and body) in order: equal digests, equal bytes. */
function digest(msgs: PgMessage[]): string {
  const h = createHash('sha256');
  for (const m of msgs) {
    h.update(m.type);
    h.update(m.body);
  }
  return h.digest('hex');
}

async function raw(port: number): Promise<RawClient> {
  const c = await RawClient.login(port);
  open.push(c);
  return c;
}

/** Reads until `n` ReadyForQuery messages arrived. */
async function readReplies(c: RawClient, n: number, timeoutMs = 60_000): Promise<PgMessage[]> {
  const out: PgMessage[] = [];
  for (let i = 0; i < n; i++) for (const m of await c.readUntil('Z', timeoutMs)) out.push(m);
  return out;
}

/** What a direct connection to the primary answers to `bytes`. */
async function directAnswer(bytes: Buffer, readyCount = 1): Promise<PgMessage[]> {
  const c = await raw(primaryPort());
  c.send(bytes);
  const msgs = await readReplies(c, readyCount);
  c.destroy();
  return msgs;
}

/** Clients running small queries with results big enough to pass through the shared buffer. */
function busyClients(clients: pg.Client[], rounds: number): Promise<void> {
  return Promise.all(
    clients.map(async (c, k) => {
      for (let j = 0; j < rounds; j++) {
        const v = `${k}-${j}`;
        const r = await c.query('SELECT $1::text AS v, repeat(md5($1::text), 2000) AS pad', [v]);
        expect(r.rows[0].v).toBe(v);
        expect(r.rows[0].pad).toBe(md5(v).repeat(2000));
      }
    }),
  ).then(() => undefined);
}

async function pgClients(port: number, n: number): Promise<pg.Client[]> {
  const out: pg.Client[] = [];
  for (let i = 0; i < n; i++) {
    const c = await pgClient(port, { database: 'app' });
    c.on('error', () => {});
    open.push(c);
    out.push(c);
  }
  return out;
}

let leanBefore = 0;
beforeAll(() => {
  leanBefore = leanSocketCount();
});

function expectLeanPathUsed(): void {
  if (lean) expect(leanSocketCount()).toBeGreaterThan(leanBefore);
  else expect(leanSocketCount()).toBe(leanBefore);
}

const nodes = () => [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }];

describe('lean I/O path: bytes that wait', () => {
  it('many slow readers at once each get their whole result, byte for byte', async () => {
    proxy = await startProxy({ nodes: nodes(), poolSize: 12 });
    const sql = (k: number) => `SELECT i, repeat(md5((i + ${k})::text), 16) FROM generate_series(1, 20000) i`;
    const SLOW = 6;
    const slow: RawClient[] = [];
    for (let k = 0; k < SLOW; k++) {
      const c = await raw(proxy.port);
      c.socket.pause(); // reads nothing: pgmux's writes to it wait
      c.send(queryMsg(sql(k)));
      slow.push(c);
    }
    await sleep(500); // long enough for every slow client's socket buffers to fill
    await busyClients(await pgClients(proxy.port, 4), 30);
    // Resumed one after another: the others keep waiting meanwhile.
    for (let k = 0; k < SLOW; k++) {
      slow[k]!.socket.resume();
      const got = await readReplies(slow[k]!, 1);
      expect(got.filter((m) => m.type === 'D').length).toBe(20000);
      expect(digest(got)).toBe(digest(await directAnswer(queryMsg(sql(k)))));
    }
    expectLeanPathUsed();
  }, 120_000);

  it('huge DataRows (several MB each) arrive intact, also two at once', async () => {
    proxy = await startProxy({ nodes: nodes(), poolSize: 4 });
    const sql = (k: number) => `SELECT i, repeat(md5((i * ${k})::text), 150000) AS big FROM generate_series(1, 4) i`; // 4.8 MB a row
    const [a, b] = [await raw(proxy.port), await raw(proxy.port)];
    a.send(queryMsg(sql(1)));
    b.send(queryMsg(sql(7)));
    const [ga, gb] = await Promise.all([readReplies(a, 1), readReplies(b, 1)]);
    expect(ga.filter((m) => m.type === 'D').length).toBe(4);
    expect(digest(ga)).toBe(digest(await directAnswer(queryMsg(sql(1)))));
    expect(digest(gb)).toBe(digest(await directAnswer(queryMsg(sql(7)))));
    expectLeanPathUsed();
  }, 120_000);

  it('COPY TO STDOUT with a large result is byte for byte what PostgreSQL sent', async () => {
    proxy = await startProxy({ nodes: nodes(), poolSize: 4 });
    const sql = `COPY (SELECT i, md5(i::text), repeat('x', i % 97) FROM generate_series(1, 200000) i) TO STDOUT`;
    const c = await raw(proxy.port);
    c.send(queryMsg(sql));
    // Others run while the copy streams.
    const busy = busyClients(await pgClients(proxy.port, 2), 20);
    const got = await readReplies(c, 1);
    await busy;
    expect(got.filter((m) => m.type === 'd').length).toBe(200000);
    expect(digest(got)).toBe(digest(await directAnswer(queryMsg(sql))));
    expectLeanPathUsed();
  }, 120_000);

  it('COPY FROM STDIN with large data, in odd-sized writes, stores every byte', async () => {
    const admin = await pgClient(primaryPort(), { database: 'app' });
    open.push(admin);
    await admin.query('DROP TABLE IF EXISTS lean_copy_in');
    await admin.query('CREATE TABLE lean_copy_in (i int, v text)');
    try {
      proxy = await startProxy({ nodes: nodes(), poolSize: 4 });
      const ROWS = 60_000;
      const lines: string[] = [];
      for (let i = 1; i <= ROWS; i++) lines.push(`${i}\t${md5(String(i)).repeat(1 + (i % 7))}\n`);
      // CopyData messages of very different sizes: one line, a few KB, over a MB.
      const msgs: Buffer[] = [];
      for (let i = 0; i < lines.length; ) {
        const take = i % 3 === 0 ? 1 : i % 3 === 1 ? 40 : 6000;
        msgs.push(typedMessage('d', Buffer.from(lines.slice(i, i + take).join(''))));
        i += take;
      }
      const stream = Buffer.concat([...msgs, typedMessage('c')]);
      const c = await raw(proxy.port);
      c.send(queryMsg('COPY lean_copy_in FROM STDIN'));
      await c.readUntil('G', 10_000);
      // Writes cut at prime-sized steps, so message edges fall anywhere inside reads.
      for (let at = 0, step = 1; at < stream.length; step = (step * 7919) % 131071 || 1) {
        c.send(stream.subarray(at, at + step));
        at += step;
        if (step < 64) await new Promise((r) => setImmediate(r));
      }
      const done = await c.readUntil('Z', 60_000);
      expect(done.find((m) => m.type === 'E')).toBeUndefined();
      expect(done.find((m) => m.type === 'C')!.body.toString('utf8')).toBe(`COPY ${ROWS}\0`);
      const r = await admin.query("SELECT count(*)::int AS n, md5(string_agg(i::text || chr(9) || v || chr(10), '' ORDER BY i)) AS h FROM lean_copy_in");
      expect(r.rows[0].n).toBe(ROWS);
      expect(r.rows[0].h).toBe(md5(lines.join('')));
      expectLeanPathUsed();
    } finally {
      await admin.query('DROP TABLE IF EXISTS lean_copy_in');
    }
  }, 120_000);

  it('pipelined extended batches, sent in one write and cut into 1-byte writes, get the direct answers', async () => {
    proxy = await startProxy({ nodes: nodes(), poolSize: 4 });
    const BATCHES = 150;
    const parts: Buffer[] = [];
    for (let k = 0; k < BATCHES; k++) {
      parts.push(
        parseMsg('', 'SELECT $1::int AS n, repeat(md5($1::text), $2::int) AS pad'),
        bindMsg('', '', [String(k), String(k % 40)]),
        describeMsg('P', ''),
        executeMsg(),
        syncMsg(),
      );
    }
    const batch = Buffer.concat(parts);
    const expected = digest(await directAnswer(batch, BATCHES));

    const whole = await raw(proxy.port);
    whole.send(batch);
    expect(digest(await readReplies(whole, BATCHES))).toBe(expected);

    // One byte per write, yielding between writes so pgmux reads them one by one.
    const bytewise = await raw(proxy.port);
    const reading = readReplies(bytewise, BATCHES, 120_000);
    for (let i = 0; i < batch.length; i++) {
      bytewise.send(batch.subarray(i, i + 1));
      if (i % 4 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(digest(await reading)).toBe(expected);
    expectLeanPathUsed();
  }, 180_000);

  it('a client that stops reading mid-result, while others keep working, then gets every byte', async () => {
    proxy = await startProxy({ nodes: nodes(), poolSize: 6 });
    const sql = 'SELECT i, repeat(md5(i::text), 24) FROM generate_series(1, 40000) i';
    const c = await raw(proxy.port);
    // Stop once the first bytes arrived: the rest of the result waits in pgmux and the kernel.
    const started = new Promise<void>((resolve) =>
      c.socket.once('data', () => {
        c.socket.pause();
        resolve();
      }),
    );
    c.send(queryMsg(sql));
    await started;
    await sleep(300);
    await busyClients(await pgClients(proxy.port, 4), 40);
    c.socket.resume();
    const got = await readReplies(c, 1);
    expect(got.filter((m) => m.type === 'D').length).toBe(40000);
    expect(digest(got)).toBe(digest(await directAnswer(queryMsg(sql))));
    // The same client goes on working afterwards.
    const again = await readReplies((c.send(queryMsg("SELECT 'after'")), c), 1);
    expect(again.find((m) => m.type === 'D')!.body.toString('utf8')).toContain('after');
    expectLeanPathUsed();
  }, 120_000);
});
