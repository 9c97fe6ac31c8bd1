import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// LISTEN/NOTIFY in transaction mode: subscriptions live on pgmux's shared listener.
describe('LISTEN/NOTIFY under transaction pooling', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('20 listeners over a pool of 2 each get every NOTIFY, also after the listener backend is killed', async () => {
    const listeners: pg.Client[] = [];
    const got: string[][] = [];
    for (let i = 0; i < 20; i++) {
      const c = await pgClient(proxy.port);
      const mine: string[] = [];
      got.push(mine);
      c.on('notification', (n) => {
        if (n.channel === 'jobs') mine.push(n.payload ?? '');
      });
      await c.query('LISTEN jobs');
      listeners.push(c);
    }
    // Listeners keep running transactions meanwhile: notifications wait for their end.
    const busy = listeners.slice(0, 5).map(async (c) => {
      for (let k = 0; k < 10; k++) {
        await c.query('BEGIN');
        await c.query('SELECT pg_sleep(0.01)');
        await c.query('COMMIT');
      }
    });
    const sender = await pgClient(proxy.port);
    for (let k = 0; k < 25; k++) await sender.query(`NOTIFY jobs, 'a${k}'`);
    await Promise.all(busy);
    const counts = () => got.map((g) => g.length);
    await expect.poll(counts, { timeout: 5000 }).toEqual(got.map(() => 25));

    // Kill the shared listener's backend on the primary; pgmux reconnects and re-LISTENs.
    const direct = await pgClient(primaryPort());
    const killed = await direct.query("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE '%LISTEN \"jobs\"%' AND pid <> pg_backend_pid()");
    expect(killed.rowCount).toBeGreaterThanOrEqual(1);
    // A new listener: the killed one may still show in pg_stat_activity while it exits.
    const killedPids = killed.rows.map((r) => r.pid as number);
    await expect
      .poll(async () => {
        const l = await direct.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query ILIKE '%LISTEN \"jobs\"%' AND pid <> pg_backend_pid() AND pid <> ALL($1::int[])",
          [killedPids],
        );
        return l.rows[0].n as number;
      }, { timeout: 5000 })
      .toBeGreaterThanOrEqual(1);
    for (let k = 0; k < 25; k++) await sender.query(`NOTIFY jobs, 'b${k}'`);
    await expect.poll(counts, { timeout: 5000 }).toEqual(got.map(() => 50));
    for (const g of got) {
      expect(g.slice(0, 25)).toEqual(Array.from({ length: 25 }, (_, k) => `a${k}`));
      expect(g.slice(25)).toEqual(Array.from({ length: 25 }, (_, k) => `b${k}`));
    }
    // UNLISTEN stops delivery to that client only.
    await listeners[0]!.query('UNLISTEN jobs');
    await sender.query("NOTIFY jobs, 'c'");
    await expect.poll(counts, { timeout: 5000 }).toEqual(got.map((_, i) => (i === 0 ? 50 : 51)));
    // Deliberate pause: the unlistened client must not get 'c' late either.
    await new Promise((r) => setTimeout(r, 100));
    expect(got[0]!.length).toBe(50);
    // Only one connection listens on the primary for all 20 clients.
    const n = await direct.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query ILIKE '%LISTEN%' AND pid <> pg_backend_pid()");
    expect(n.rows[0].n).toBe(1);
    await direct.end();
    await sender.end();
    await Promise.all(listeners.map((c) => c.end()));
  });
  it('a client joining a channel others listen to gets no notification sent before its LISTEN', async () => {
    const channel = 'joining';
    const first = await pgClient(proxy.port);
    await first.query(`LISTEN ${channel}`);
    const sender = await pgClient(proxy.port);
    const wrong: string[] = [];
    const late: pg.Client[] = [];
    // The notification sent just before a joiner's LISTEN may still be on its way from the
    // shared listener when the LISTEN arrives; a direct connection never sees it.
    for (let i = 0; i < 60; i++) {
      await sender.query(`NOTIFY ${channel}, 'before${i}'`);
      const joiner = await pgClient(proxy.port);
      joiner.on('notification', (n) => {
        if (n.payload === `before${i}`) wrong.push(n.payload);
      });
      await joiner.query(`LISTEN ${channel}`);
      late.push(joiner);
    }
    const gotAfter = late.map(() => 0);
    late.forEach((c, k) => c.on('notification', (n) => n.payload === 'after' && gotAfter[k]++));
    await sender.query(`NOTIFY ${channel}, 'after'`);
    await expect.poll(() => gotAfter.every((n) => n === 1), { timeout: 5000 }).toBe(true);
    expect(wrong).toEqual([]);
    await Promise.all([first, sender, ...late].map((c) => c.end()));
  });
});
