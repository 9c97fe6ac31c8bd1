// Peering: a CancelRequest that lands on another pgmux instance than the one holding the
// session (a load balancer picks per connection) is forwarded to the owner, once.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, primaryPort, waitUntilRunning } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { firstError, queryMsg, RawClient, sendCancel } from '../support/rawClient.js';
import { PeerDirectory } from '../../src/cluster/peers.js';
import { DEFAULTS } from '../../src/config/load.js';
import { parsePeers } from '../../src/config/values.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { freePort } from '../../src/embedded/localCluster.js';

const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

let tagSeq = 0;
/** A pg_sleep(10) statement no other test runs (waitUntilRunning counts by text). */
const sleepSql = () => `SELECT pg_sleep(10), 'peers-${process.pid}-${++tagSeq}'`;

/** Runs `sql` on a fresh raw client of `port`; resolves with the SQLSTATE it ended with ('' = none). */
async function sleeper(port: number, sql: string): Promise<{ client: RawClient; result: Promise<string> }> {
  const client = await RawClient.login(port);
  client.send(queryMsg(sql));
  const result = client.readUntil('Z', 15_000).then((msgs) => firstError(msgs)?.code ?? '');
  return { client, result };
}

/** A session on `a` cancelled through `b`: it ends with 57014 within 1 s. */
async function cancelledThroughB(a: TestProxy, b: TestProxy): Promise<void> {
  const sql = sleepSql();
  const s = await sleeper(a.port, sql);
  try {
    await waitUntilRunning(sql);
    const t0 = Date.now();
    await sendCancel(b.port, s.client.pid, s.client.secret);
    expect(await s.result).toBe('57014');
    expect(Date.now() - t0).toBeLessThan(1000);
  } finally {
    s.client.destroy();
  }
}

const started: TestProxy[] = [];
async function pair(overA: (portB: number) => Parameters<typeof startProxy>[0], overB: (portA: number) => Parameters<typeof startProxy>[0]) {
  const portA = await freePort();
  const portB = await freePort();
  const a = await startProxy({ listen: { host: '127.0.0.1', port: portA }, peerId: 0, ...overA(portB) });
  started.push(a);
  const b = await startProxy({ listen: { host: '127.0.0.1', port: portB }, peerId: 1, ...overB(portA) });
  started.push(b);
  return { a, b };
}

afterEach(async () => {
  await Promise.all(started.splice(0).map((p) => p.close()));
});

describe('cancel keys with peer_id', () => {
  it('carry the peer id and the forwardable marker; a key handed back after one hop is not forwarded again', () => {
    const logger = createLogger('silent');
    const cfg = { ...DEFAULTS, peerId: 7, peers: parsePeers(['0=127.0.0.1:1']) };
    const d = new PeerDirectory(() => cfg, logger);
    const secret = d.stampSecret(-1);
    expect(d.ownerOf({ pid: 1, secret })).toBe(7);
    expect(d.route({ pid: 1, secret })).toBe(secret);
    // Our own key after a hop (marker cleared) is looked up as it was handed out.
    expect(d.route({ pid: 1, secret: secret & ~(1 << 19) })).toBe(secret);
    const other = new PeerDirectory(() => ({ ...cfg, peerId: 3 }), logger).stampSecret(0);
    expect(d.route({ pid: 1, secret: other & ~(1 << 19) })).toBeNull();
    expect(d.counters).toEqual({ cancelsForwarded: 0, cancelsDropped: 1 });
    expect(new PeerDirectory(() => DEFAULTS, logger).stampSecret(0x12345678)).toBe(0x12345678);
  });
});

describe('peering (two instances in this process)', () => {
  it('a cancel sent to B for a session on A ends it with 57014 within 1 s', async () => {
    const { a, b } = await pair((pb) => ({ peers: parsePeers([`1=127.0.0.1:${pb}`]) }), (pa) => ({ peers: parsePeers([`0=127.0.0.1:${pa}`]) }));
    await cancelledThroughB(a, b);
    expect(b.proxy.peers.counters.cancelsForwarded).toBe(1);
    // A received it with the marker cleared and passed it on to nobody.
    expect(a.proxy.peers.counters).toEqual({ cancelsForwarded: 0, cancelsDropped: 0 });
    expect(await createMetrics(b.proxy).registry.getSingleMetricAsString('pgmux_peer_cancels_total')).toMatch(/pgmux_peer_cancels_total\{result="forwarded"\} 1\n/);
  });

  it('20 cancels in parallel, half through each instance', async () => {
    const { a, b } = await pair((pb) => ({ peers: parsePeers([`1=127.0.0.1:${pb}`]), poolSize: 12 }), (pa) => ({ peers: parsePeers([`0=127.0.0.1:${pa}`]), poolSize: 12 }));
    const sql = sleepSql();
    // 10 sessions on each; each cancel goes to the other instance.
    const sleepers = await Promise.all(Array.from({ length: 20 }, (_, i) => sleeper(i % 2 === 0 ? a.port : b.port, sql).then((s) => ({ ...s, other: i % 2 === 0 ? b.port : a.port }))));
    try {
      await waitUntilRunning(sql, 20);
      const t0 = Date.now();
      await Promise.all(sleepers.map((s) => sendCancel(s.other, s.client.pid, s.client.secret)));
      expect(await Promise.all(sleepers.map((s) => s.result))).toEqual(Array(20).fill('57014'));
      expect(Date.now() - t0).toBeLessThan(1500);
      expect(a.proxy.peers.counters.cancelsForwarded + b.proxy.peers.counters.cancelsForwarded).toBe(20);
    } finally {
      for (const s of sleepers) s.client.destroy();
    }
  });

  it('an instance whose peers lack the owner drops the cancel; disagreeing lists do not loop', async () => {
    // A lists B; B lists only an id 5 that is A's address: a key of A sent to B is not
    // forwarded (id 0 unknown to B). A key of B sent to A goes to B once; B owns it.
    // A key of a third id 2 that A maps to B, and B maps back to A: forwarded once, then dropped.
    const { a, b } = await pair(
      (pb) => ({ peers: parsePeers([`1=127.0.0.1:${pb}`, `2=127.0.0.1:${pb}`]) }),
      (pa) => ({ peers: parsePeers([`5=127.0.0.1:${pa}`, `2=127.0.0.1:${pa}`]) }),
    );
    const sql = "SELECT pg_sleep(0.8), 'peers-unknown-owner'";
    const s = await sleeper(a.port, sql);
    try {
      await waitUntilRunning(sql);
      await sendCancel(b.port, s.client.pid, s.client.secret);
      expect(await s.result).toBe('');
    } finally {
      s.client.destroy();
    }
    expect(b.proxy.peers.counters).toEqual({ cancelsForwarded: 0, cancelsDropped: 1 });
    // Peer id 2 is nobody: A forwards to B (once), B must not send it back.
    const foreign = new PeerDirectory(() => ({ ...DEFAULTS, peerId: 2 }), createLogger('silent')).stampSecret(12345);
    await sendCancel(a.port, 4242, foreign);
    await vi.waitFor(() => expect(b.proxy.peers.counters.cancelsDropped).toBe(2), { timeout: 3000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(a.proxy.peers.counters).toEqual({ cancelsForwarded: 1, cancelsDropped: 0 });
    expect(b.proxy.peers.counters).toEqual({ cancelsForwarded: 0, cancelsDropped: 2 });
  });

  it('peers as dns:localhost:PORT (a headless Service): forwarded to the resolved addresses', async () => {
    const { a, b } = await pair((pb) => ({ peers: parsePeers([`dns:localhost:${pb}`]) }), (pa) => ({ peers: parsePeers([`dns:localhost:${pa}`]) }));
    await cancelledThroughB(a, b);
    expect(b.proxy.peers.counters.cancelsForwarded).toBeGreaterThanOrEqual(1);
    expect(a.proxy.peers.counters.cancelsForwarded).toBe(0);
  });

  it('SHOW PEERS lists the other instances; SHOW LISTS counts them', async () => {
    const { b } = await pair((pb) => ({ peers: parsePeers([`0=127.0.0.1:1`, `1=127.0.0.1:${pb}`]) }), (pa) => ({ peers: parsePeers([`0=127.0.0.1:${pa}`, '1=127.0.0.1:1', '9=10.0.0.9:6432']), adminUsers: ['postgres'] }));
    const admin = await pgClient(b.port, { database: 'pgbouncer' });
    try {
      const r = await admin.query('SHOW PEERS');
      expect(r.rows).toEqual([{ peer_id: 0, host: '127.0.0.1', port: started[0]!.port, pool_size: 0 }, { peer_id: 9, host: '10.0.0.9', port: 6432, pool_size: 0 }]);
      const lists = await admin.query('SHOW LISTS');
      expect(lists.rows.find((x: { list: string }) => x.list === 'peers')).toMatchObject({ items: 2 });
    } finally {
      await admin.end();
    }
  });

  it('RELOAD changing peers: forwarding follows the new list', async () => {
    const { a, b } = await pair((pb) => ({ peers: parsePeers([`1=127.0.0.1:${pb}`]) }), () => ({ peers: parsePeers(['0=127.0.0.1:1']), logLevel: 'silent' }));
    const sql = sleepSql();
    const first = await sleeper(a.port, "SELECT pg_sleep(0.8), 'peers-before-reload'");
    try {
      await waitUntilRunning("SELECT pg_sleep(0.8), 'peers-before-reload'");
      await sendCancel(b.port, first.client.pid, first.client.secret);
      // Sent to port 1: nobody there.
      expect(await first.result).toBe('');
    } finally {
      first.client.destroy();
    }
    const r = await b.proxy.set('peers', `0=127.0.0.1:${a.port}`);
    expect(r.ok).toBe(true);
    const s = await sleeper(a.port, sql);
    try {
      await waitUntilRunning(sql);
      await sendCancel(b.port, s.client.pid, s.client.secret);
      expect(await s.result).toBe('57014');
    } finally {
      s.client.destroy();
    }
  });
});

describe('peering with start --workers 2 (npm run build first)', () => {
  let child: ChildProcess | null = null;
  afterAll(async () => {
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child!.once('exit', r));
    child.kill('SIGTERM'); // the supervisor stops its workers
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (child.exitCode === null) child.kill('SIGKILL');
  });

  it('cancels reach sessions on every worker of the peer, and the peer cancels ours', async () => {
    const portA = await freePort();
    const portB = await freePort();
    const httpB = await freePort();
    const a = await startProxy({ listen: { host: '127.0.0.1', port: portA }, peerId: 0, peers: parsePeers([`1=127.0.0.1:${portB}`]), poolSize: 10 });
    started.push(a);
    const nodes = clusterInfo().nodes.flatMap((n) => ['--node', `${n.host}:${n.port}`]);
    let output = '';
    child = spawn(process.execPath, [CLI, 'start', '--workers', '2', '--listen', `127.0.0.1:${portB}`, '--pool-size', '20', '--http', `127.0.0.1:${httpB}`, ...nodes, '--log-level', process.env.PGMUX_TEST_LOG ?? 'warn'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PGMUX_HEALTH_CHECK_PERIOD: '200ms', PGMUX_UNIX_SOCKET_DIR: 'off', PGMUX_PEER_ID: '1', PGMUX_PEERS: `0=127.0.0.1:${portA}` },
    });
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    // Both workers ready, so connections spread over both.
    await vi.waitFor(async () => {
      const s = (await (await fetch(`http://127.0.0.1:${httpB}/status`)).json()) as { workers: { ready: boolean }[] };
      expect(s.workers.filter((w) => w.ready)).toHaveLength(2);
    }, { timeout: 20_000, interval: 100 });
    try {
      // Sessions on both of B's workers (worker index: top 6 bits of the 31-bit pid).
      const onB: Awaited<ReturnType<typeof sleeper>>[] = [];
      const sql = sleepSql();
      const workers = new Set<number>();
      while (onB.length < 8 || workers.size < 2) {
        const s = await sleeper(portB, sql);
        onB.push(s);
        workers.add(s.client.pid >>> 25);
        expect(onB.length).toBeLessThan(40);
      }
      const onA = await Promise.all(Array.from({ length: 4 }, () => sleeper(portA, sql)));
      try {
        await waitUntilRunning(sql, onB.length + onA.length);
        const t0 = Date.now();
        await Promise.all([...onB.map((s) => sendCancel(portA, s.client.pid, s.client.secret)), ...onA.map((s) => sendCancel(portB, s.client.pid, s.client.secret))]);
        expect(await Promise.all([...onB, ...onA].map((s) => s.result))).toEqual(Array(onB.length + onA.length).fill('57014'));
        expect(Date.now() - t0).toBeLessThan(1500);
      } finally {
        for (const s of [...onB, ...onA]) s.client.destroy();
      }
    } catch (err) {
      console.log('pgmux output:\n' + output);
      throw err;
    }
  });
});

describe('peer_budgets: limits divided by the live instances', () => {
  const DB = 'peers_budget';
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await pgClient(primaryPort(), { database: 'postgres' });
    await admin.query(`DROP DATABASE IF EXISTS ${DB}`);
    await admin.query(`CREATE DATABASE ${DB} OWNER app`);
    const c = await pgClient(primaryPort(), { database: DB });
    await c.query('CREATE TABLE budget_t (id serial PRIMARY KEY, v int)');
    await c.end();
  });
  afterAll(async () => {
    await admin?.end();
  });

  /** The most backends the primary showed for DB while `work` ran. */
  async function maxBackendsDuring(work: Promise<unknown>): Promise<number> {
    let max = 0;
    let running = true;
    const done = work.finally(() => (running = false));
    while (running) {
      const r = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = $1`, [DB]);
      max = Math.max(max, r.rows[0].n as number);
      await new Promise((res) => setTimeout(res, 3));
    }
    await done;
    return max;
  }

  /** `clients` clients per port, each running `rounds` writes. */
  function load(ports: number[], clients: number, rounds: number): Promise<void> {
    return Promise.all(
      ports.flatMap((port) =>
        Array.from({ length: clients }, async () => {
          const c = await pgClient(port, { database: DB });
          try {
            for (let i = 0; i < rounds; i++) await c.query('INSERT INTO budget_t (v) SELECT 1 FROM pg_sleep(0.005)');
          } finally {
            await c.end();
          }
        }),
      ),
    ).then(() => undefined);
  }

  it('two instances with max_db_connections 10: the primary never sees more than 10; one stops, the other grows back to 10', async () => {
    const p = clusterInfo().nodes[0]!;
    const common = { nodes: [{ host: p.host, port: p.port, weight: 1 }], maxDbConnections: 10, poolSize: 20, peerBudgets: true };
    const { a, b } = await pair((pb) => ({ ...common, peers: parsePeers([`1=127.0.0.1:${pb}`]) }), (pa) => ({ ...common, peers: parsePeers([`0=127.0.0.1:${pa}`]) }));
    for (const x of [a, b]) {
      expect(x.proxy.peers.livePeers()).toBe(2);
      expect(x.proxy.config().maxDbConnections).toBe(5);
    }
    expect(a.proxy.databases()[0]!.maxDbConnections).toBe(5);
    expect(await createMetrics(a.proxy).registry.getSingleMetricAsString('pgmux_peers_live')).toMatch(/^pgmux_peers_live 2$/m);
    expect(await maxBackendsDuring(load([a.port, b.port], 20, 15))).toBeLessThanOrEqual(10);

    // B stops: after 3 health check periods without an answer A takes the whole budget.
    const bClosed = started.indexOf(b);
    started.splice(bClosed, 1);
    await b.close();
    await vi.waitFor(() => expect(a.proxy.config().maxDbConnections).toBe(10), { timeout: 5000, interval: 50 });
    expect(a.proxy.peers.livePeers()).toBe(1);
    const seen = await maxBackendsDuring(load([a.port], 30, 15));
    expect(seen).toBeGreaterThan(5);
    expect(seen).toBeLessThanOrEqual(10);
  });
});
