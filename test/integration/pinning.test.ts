import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Session state that cannot move between backends pins the client to its backend.
describe('pinning for session state in transaction mode', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('a temporary table stays usable across transactions while others share the pool', async () => {
    const a = await pgClient(proxy.port);
    const others = await Promise.all([pgClient(proxy.port), pgClient(proxy.port), pgClient(proxy.port)]);
    await a.query('CREATE TEMP TABLE scratch (v int)');
    expect(proxy.proxy.clients().find((c) => c.pinned !== null)?.pinned).toMatch(/temp/);
    const { createMetrics } = await import('../../src/observability/metrics.js');
    expect(await createMetrics(proxy.proxy).render()).toMatch(/^pgmux_pinned_clients 1$/m);
    for (let i = 0; i < 10; i++) {
      await a.query('INSERT INTO scratch VALUES ($1)', [i]);
      // Other clients keep running on the remaining backend meanwhile.
      await Promise.all(others.map((o) => o.query('/* pgmux:primary */ SELECT pg_backend_pid()')));
    }
    expect((await a.query('/* pgmux:primary */ SELECT count(*)::int AS n FROM scratch')).rows[0].n).toBe(10);
    // DISCARD ALL drops the state and the pin.
    await a.query('DISCARD ALL');
    expect(proxy.proxy.clients().every((c) => c.pinned === null)).toBe(true);
    await a.end();
    await Promise.all(others.map((o) => o.end()));
  });

  it('a session advisory lock is held by the same backend until released', async () => {
    const a = await pgClient(proxy.port);
    const b = await pgClient(proxy.port);
    await a.query('SELECT pg_advisory_lock(424242)');
    const pidA = (await a.query('/* pgmux:primary */ SELECT pg_backend_pid() AS p')).rows[0].p;
    const held = await b.query("/* pgmux:primary */ SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242 AND pid = $1", [pidA]);
    expect(held.rows[0].n).toBe(1);
    expect((await b.query('SELECT pg_try_advisory_lock(424242) AS got')).rows[0].got).toBe(false);
    await a.query('SELECT pg_advisory_unlock(424242)');
    expect((await b.query('SELECT pg_try_advisory_xact_lock(424242) AS got')).rows[0].got).toBe(true);
    await a.end();
    await b.end();
  });

  it('the backend a pinned client leaves is reset before the next client, counted in /metrics and SHOW SERVERS', async () => {
    const { createMetrics } = await import('../../src/observability/metrics.js');
    const resets = async (): Promise<number> => Number(/^pgmux_backend_resets_total (\d+)$/m.exec(await createMetrics(proxy.proxy).render())![1]);
    const before = await resets();
    const a = await pgClient(proxy.port);
    await a.query('/* app=x */ CREATE TEMP TABLE person (id int)');
    const pid = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p;
    const resetsOf = (): number | undefined => proxy.proxy.backends().find((b) => b.pid === pid)?.resets;
    const was = resetsOf()!;
    await a.end();
    await expect.poll(resets, { timeout: 5000 }).toBe(before + 1);
    expect(resetsOf()).toBe(was + 1);
    // Whoever gets that backend next can create the same temporary table.
    const clients = await Promise.all([pgClient(proxy.port), pgClient(proxy.port)]);
    for (const c of clients) {
      await c.query('BEGIN');
      await c.query('CREATE TEMP TABLE person (id int) ON COMMIT DROP');
    }
    for (const c of clients) {
      await c.query('COMMIT');
      await c.end();
    }
  });
});
