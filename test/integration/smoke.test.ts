import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

describe('smoke', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy();
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('runs a simple and an extended query through pgmux', async () => {
    const c = await pgClient(proxy.port);
    const r = await c.query('SELECT 1 AS one');
    expect(r.rows).toEqual([{ one: 1 }]);
    const r2 = await c.query('SELECT $1::int + 1 AS two', [1]);
    expect(r2.rows).toEqual([{ two: 2 }]);
    // A read goes to a replica; the routing hint overrides.
    expect((await c.query('SELECT pg_is_in_recovery() AS rec')).rows[0].rec).toBe(true);
    expect((await c.query('/* pgmux:primary */ SELECT pg_is_in_recovery() AS rec')).rows[0].rec).toBe(false);
    await c.end();
  });
});
