import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { pgbenchBin, pgClient, runPg } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Protocol-level named prepared statements in transaction mode, more clients than backends.
describe('prepared statements under transaction pooling', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 5, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('pgbench -M prepared, 50 clients over a pool of 5: zero failed transactions', async () => {
    const r = await runPg(pgbenchBin(), ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', '-n', '-M', 'prepared', '-c', '50', '-j', '2', '-t', '40', 'app'], {
      timeoutMs: 120_000,
    });
    expect(r.stderr).not.toMatch(/ERROR|FATAL/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/number of transactions actually processed: 2000\/2000/);
    expect(r.stdout).toMatch(/number of failed transactions: 0 /);
  });

  it('100 node-postgres clients share named statements; one name means different queries on different clients', async () => {
    const clients = await Promise.all(Array.from({ length: 100 }, () => pgClient(proxy.port)));
    try {
      const rounds = 5;
      await Promise.all(
        clients.map(async (c, i) => {
          for (let k = 0; k < rounds; k++) {
            // Same name everywhere, but even and odd clients mean different statements by it.
            const q =
              i % 2 === 0
                ? { name: 'stmt', text: 'SELECT $1::int * 2 AS v', values: [i * 100 + k] }
                : { name: 'stmt', text: "SELECT $1::text || '-odd' AS v", values: [`${i}/${k}`] };
            const r = await c.query(q);
            expect(r.rows[0].v).toBe(i % 2 === 0 ? (i * 100 + k) * 2 : `${i}/${k}-odd`);
            const shared = await c.query({ name: 'shared', text: 'SELECT count(*)::int AS n FROM pgbench_branches WHERE bid = $1', values: [1] });
            expect(shared.rows[0].n).toBe(1);
          }
        }),
      );
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
    // 100 clients, 5 backends: the statements really were moved between backends.
    const pools = proxy.proxy.allPools();
    expect(pools.reduce((n, p) => n + p.size, 0)).toBeLessThanOrEqual(5 * 3);
  });

  it('a failing Parse reports PostgreSQL\'s own error and the client goes on', async () => {
    const c = await pgClient(proxy.port);
    await expect(c.query({ name: 'bad', text: 'SELECT * FROM no_such_table_xyz' })).rejects.toMatchObject({ code: '42P01' });
    const r = await c.query({ name: 'good', text: 'SELECT 7 AS v' });
    expect(r.rows[0].v).toBe(7);
    // The failed name was never prepared anywhere: using it again still fails the same way.
    await expect(c.query({ name: 'bad', text: 'SELECT * FROM no_such_table_xyz' })).rejects.toMatchObject({ code: '42P01' });
    await c.end();
  });

  it('statement names from different clients never cross: a Bind of an unknown name fails like PostgreSQL', async () => {
    const raw = new pg.Client({ host: '127.0.0.1', port: proxy.port, user: 'postgres', database: 'app' });
    await raw.connect();
    const other = await pgClient(proxy.port);
    await other.query({ name: 'only_mine', text: 'SELECT 1 AS v' });
    // pg prepares on first use; force a Bind without Parse through the internal flag.
    (raw as unknown as { connection: { parsedStatements: Record<string, string> } }).connection.parsedStatements['only_mine'] = 'SELECT 1 AS v';
    await expect(raw.query({ name: 'only_mine', text: 'SELECT 1 AS v' })).rejects.toMatchObject({ code: '26000' });
    await raw.end();
    await other.end();
  });
});

describe('SQL-level PREPARE in transaction mode', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('is refused with 0A000 naming session mode outside a transaction, and works inside one', async () => {
    const c = await pgClient(proxy.port);
    const err = await c.query('PREPARE q(int) AS SELECT $1 + 1').catch((e: { code: string; message: string; hint: string }) => e);
    expect(err).toMatchObject({ code: '0A000' });
    expect((err as { hint: string }).hint).toMatch(/session/);
    // The connection goes on.
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await c.query('BEGIN');
    await c.query('PREPARE q2(int) AS SELECT $1 + 1 AS v');
    expect((await c.query('EXECUTE q2(41)')).rows[0].v).toBe(42);
    await c.query('DEALLOCATE q2');
    await c.query('COMMIT');
    await c.end();
  });
});

describe('DDL under cached plans', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('ADD COLUMN between executions: node-postgres (describes every execution) sees the new shape, no error', async () => {
    const direct = await pgClient((await import('../support/cluster.js')).primaryPort());
    await direct.query('DROP TABLE IF EXISTS ddl_t; CREATE TABLE ddl_t (a int); INSERT INTO ddl_t VALUES (1)');
    const clients = await Promise.all([pgClient(proxy.port), pgClient(proxy.port), pgClient(proxy.port)]);
    const q = { name: 'all_of_t', text: '/* pgmux:primary */ SELECT * FROM ddl_t' };
    for (const c of clients) expect((await c.query(q)).rows).toEqual([{ a: 1 }]);
    await direct.query('ALTER TABLE ddl_t ADD COLUMN b int DEFAULT 2');
    // Every client, whatever backend it lands on: re-prepared and re-run invisibly.
    for (let round = 0; round < 2; round++) {
      for (const c of clients) expect((await c.query(q)).rows).toEqual([{ a: 1, b: 2 }]);
    }
    await Promise.all(clients.map((c) => c.end()));
    await direct.end();
  });

  it("a client that does not re-describe gets PostgreSQL's 0A000 once, then its retry works", async () => {
    const { RawClient, parseMsg, bindMsg, executeMsg, syncMsg, firstError, rows } = await import('../support/rawClient.js');
    const direct = await pgClient((await import('../support/cluster.js')).primaryPort());
    await direct.query('DROP TABLE IF EXISTS ddl_u; CREATE TABLE ddl_u (a int); INSERT INTO ddl_u VALUES (1)');
    const c = await RawClient.connect(proxy.port);
    try {
      await c.startup({ user: 'postgres', database: 'app' });
      c.send(Buffer.concat([parseMsg('s1', '/* pgmux:primary */ SELECT * FROM ddl_u'), syncMsg()]));
      await c.readUntil('Z');
      const run = async () => {
        c.send(Buffer.concat([bindMsg('', 's1'), executeMsg(), syncMsg()]));
        return c.readUntil('Z');
      };
      expect(rows(await run())).toEqual([['1']]);
      await direct.query('ALTER TABLE ddl_u ADD COLUMN b int DEFAULT 2');
      expect(firstError(await run())?.code).toBe('0A000');
      expect(rows(await run())).toEqual([['1', '2']]);
    } finally {
      c.destroy();
      await direct.end();
    }
  });
});
