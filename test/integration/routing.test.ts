import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clusterInfo, pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Routing on the shared cluster (primary node0, replicas node1 and node2).
describe('read/write splitting', () => {
  let proxy: TestProxy;
  const nodes = () => clusterInfo().nodes;
  beforeAll(async () => {
    const [p, r1, r2] = nodes();
    proxy = await startProxy({
      nodes: [
        { host: p!.host, port: p!.port, weight: 0 },
        { host: r1!.host, port: r1!.port, weight: 1 },
        { host: r2!.host, port: r2!.port, weight: 2 },
      ],
      poolSize: 4,
    });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('sends writes to the primary and splits 3000 reads 1:2 over the replicas', async () => {
    const c = await pgClient(proxy.port);
    await c.query('CREATE TABLE IF NOT EXISTS routing_t (id serial primary key, v int)');
    const w = await c.query('INSERT INTO routing_t (v) VALUES (1) RETURNING inet_server_port() AS port');
    expect(w.rows[0].port).toBe(nodes()[0]!.port);
    const counts = new Map<number, number>();
    for (let i = 0; i < 3000; i++) {
      const r = await c.query('SELECT inet_server_port() AS port');
      counts.set(r.rows[0].port, (counts.get(r.rows[0].port) ?? 0) + 1);
    }
    const a = counts.get(nodes()[1]!.port) ?? 0;
    const b = counts.get(nodes()[2]!.port) ?? 0;
    expect(counts.get(nodes()[0]!.port) ?? 0).toBe(0);
    expect(a + b).toBe(3000);
    expect(Math.abs(a / 3000 - 1 / 3)).toBeLessThan(0.03);
    expect(Math.abs(b / 3000 - 2 / 3)).toBeLessThan(0.03);
    // Locking reads and explicit transactions go to the primary.
    const fu = await c.query('SELECT inet_server_port() AS port FROM routing_t LIMIT 1 FOR UPDATE');
    expect(fu.rows[0].port).toBe(nodes()[0]!.port);
    await c.query('BEGIN');
    const inTx = await c.query('SELECT inet_server_port() AS port');
    await c.query('COMMIT');
    expect(inTx.rows[0].port).toBe(nodes()[0]!.port);
    // Extended protocol reads are routed too.
    const ext = await c.query('SELECT inet_server_port() AS port, $1::int AS x', [5]);
    expect(ext.rows[0].port).not.toBe(nodes()[0]!.port);
    await c.end();
  });
});

describe('routing of prepared statements', () => {
  it('a Bind of a read statement prepared earlier (Parse + Sync on its own) goes to a replica', async () => {
    const { startProxy } = await import('../support/pgmux.js');
    const { pgbenchBin, runPg } = await import('../support/cluster.js');
    const [p, r1, r2] = clusterInfo().nodes;
    const proxy = await startProxy({
      nodes: [
        { host: p!.host, port: p!.port, weight: 0 },
        { host: r1!.host, port: r1!.port, weight: 1 },
        { host: r2!.host, port: r2!.port, weight: 1 },
      ],
    });
    try {
      // pgbench -M prepared: PQprepare (Parse + Sync), then Bind/Execute per transaction.
      const r = await runPg(pgbenchBin(), ['-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', '-n', '-S', '-M', 'prepared', '-c', '4', '-t', '200', 'app'], { timeoutMs: 60_000 });
      expect(r.code).toBe(0);
      const routed = proxy.proxy.counters().transactions;
      const onPrimary = routed.get(`${p!.host}:${p!.port}`);
      const reads = [...routed.values()].reduce((n, c) => n + c.read, 0);
      expect(reads).toBeGreaterThanOrEqual(800);
      expect(onPrimary?.read ?? 0).toBe(0);
    } finally {
      await proxy.close();
    }
  });
});
