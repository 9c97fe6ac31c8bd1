// A client that reads slowly makes pgmux's writes to it wait (holding views into the
// backend's read chunks) while other backends' reads keep arriving. On the lean I/O path
// (src/net/leanSocket.ts) every read lands in one shared buffer, so a write that waited on
// a view of it would be overwritten by those reads. This test makes exactly that happen and
// checks every byte of the slow client's result; an `onread` variant that reused buffers
// failed it, and so does the lean path when writeLean queues the view instead of a copy.
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { parseDataRow, queryMsg, RawClient } from '../support/rawClient.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const md5 = (s: string) => createHash('md5').update(s).digest('hex');

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

describe('forwarding to a slow reader', () => {
  it('a slow reader gets its whole result intact while other clients run queries', async () => {
    proxy = await startProxy({ nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }], poolSize: 6 });
    const ROWS = 60_000; // ~32 MB: more than the kernel buffers between pgmux and the client hold
    const slow = await RawClient.login(proxy.port);
    open.push(slow);
    // Stop reading: the kernel buffers fill and pgmux's writes to this client start waiting.
    slow.socket.pause();
    slow.send(queryMsg(`SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, ${ROWS}) i`));

    // Meanwhile other clients' answers pass through the shared buffer again and again.
    const others: pg.Client[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await pgClient(proxy.port, { database: 'app' });
      c.on('error', () => {});
      open.push(c);
      others.push(c);
    }
    // Deliberate pause, long enough for pgmux to fill the socket buffers and hold a write
    // that waits (nothing outside pgmux's internals shows that moment).
    await sleep(500);
    const busy = Promise.all(
      others.map(async (c, k) => {
        for (let j = 0; j < 60; j++) {
          const v = `${k}-${j}`;
          const r = await c.query('SELECT $1::text AS v, repeat(md5($1::text), 2000) AS pad', [v]);
          expect(r.rows[0].v).toBe(v);
          expect(r.rows[0].pad).toBe(md5(v).repeat(2000));
        }
      }),
    );
    await busy;

    slow.socket.resume();
    const msgs = await slow.readUntil('Z', 60_000);
    const dataRows = msgs.filter((m) => m.type === 'D').map((m) => parseDataRow(m.body));
    expect(dataRows.length).toBe(ROWS);
    let bad = 0;
    for (let i = 0; i < ROWS; i++) {
      const [n, text] = dataRows[i]!;
      if (n !== String(i + 1) || text !== md5(String(i + 1)).repeat(16)) bad++;
    }
    expect(bad).toBe(0);
    expect(msgs.find((m) => m.type === 'E')).toBeUndefined();
  }, 90_000);
});
