// `pgmux start --workers 2` as a real process tree: the built CLI (npm run build first)
// supervising two workers that share the listen port.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, waitUntilRunning } from '../support/cluster.js';
import { DEFAULTS } from '../../src/config/load.js';
import { acceptSpreadFor, nodeHasReusePort, workerConfig, workerShare } from '../../src/server/workers.js';
import { freePort } from '../../src/embedded/localCluster.js';
import { sendCancel as sendRawCancel } from '../support/rawClient.js';

const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

/** How long a spawned pgmux may take to come up or restart a worker, on a busy box. */
const startWait = { timeout: 20_000, interval: 100 };

/** Sum of every sample of one metric in a Prometheus text body. */
function metricSum(body: string, name: string): number {
  let sum = 0;
  for (const line of body.split('\n')) {
    if (line.startsWith(name + '{') || line.startsWith(name + ' ')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

interface KeyedClient extends pg.Client {
  processID: number;
  secretKey: number;
}

/** The worker index carried in the top bits of a proxy-issued cancel pid. */
const workerOf = (c: pg.Client) => (c as KeyedClient).processID >>> 25;

/** A CancelRequest for `c`'s key on a new connection to `port`. */
function sendCancel(port: number, c: pg.Client): Promise<void> {
  const k = c as KeyedClient;
  return sendRawCancel(port, k.processID, k.secretKey);
}

/** PIDs of the processes holding a listening TCP socket on the port, one entry per socket (ss -ltnp). */
function listenerPids(port: number): number[] {
  const out = execFileSync('ss', ['-ltnpH', `sport = :${port}`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim() !== '').map((l) => Number(/pid=(\d+)/.exec(l)?.[1] ?? NaN));
}

/** This Node has listen({ reusePort }) (the test's own reading of the Node changelog). */
const reusePortNode = nodeHasReusePort();

describe('accept spread choice', () => {
  it('reusePort from Node 22.12 / 23.1 on Linux and FreeBSD, with a fixed port; cluster otherwise', () => {
    expect(nodeHasReusePort('20.20.0', 'linux')).toBe(false);
    expect(nodeHasReusePort('22.11.0', 'linux')).toBe(false);
    expect(nodeHasReusePort('22.12.0', 'linux')).toBe(true);
    expect(nodeHasReusePort('23.0.0', 'linux')).toBe(false);
    expect(nodeHasReusePort('23.1.0', 'linux')).toBe(true);
    expect(nodeHasReusePort('24.22.3', 'linux')).toBe(true);
    expect(nodeHasReusePort('24.22.3', 'darwin')).toBe(false);
    expect(acceptSpreadFor(6432, true).spread).toBe('reusePort');
    expect(acceptSpreadFor(0, true).spread).toBe('cluster');
    expect(acceptSpreadFor(6432, false).spread).toBe('cluster');
  });
});

describe('workerConfig', () => {
  it('splits the group limits across workers, at least 1 each, and leaves HTTP to the primary', () => {
    expect(workerShare(20, 3)).toBe(7);
    expect(workerShare(1, 4)).toBe(1);
    const c = workerConfig({ ...DEFAULTS, workers: 4, poolSize: 10, minPoolSize: 2, maxClientConn: 101, maxDbConnections: 0, maxUserConnections: 9, http: { host: '127.0.0.1', port: 1 } });
    expect(c).toMatchObject({ poolSize: 3, minPoolSize: 1, maxClientConn: 26, maxDbConnections: 0, maxUserConnections: 3, http: null });
    expect(workerConfig({ ...DEFAULTS })).toEqual(DEFAULTS);
  });
});

describe('start --workers 2', () => {
  let child: ChildProcess;
  let port: number;
  let httpPort: number;
  let output = '';
  let exited: Promise<number | null>;
  let socketDir: string;

  beforeAll(async () => {
    port = await freePort();
    httpPort = await freePort();
    // A socket file left by a killed process where the workers' socket goes: the supervisor
    // replaces it once (the workers share the listener it then holds).
    socketDir = mkdtempSync(join(tmpdir(), 'pgmux-workers-'));
    const stale = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(join(socketDir, `.s.PGSQL.${port}`))}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => stale.stdout!.once('data', r));
    const staleGone = new Promise((r) => stale.once('exit', r));
    stale.kill('SIGKILL');
    await staleGone;
    const nodes = clusterInfo().nodes.flatMap((n) => ['--node', `${n.host}:${n.port}`]);
    child = spawn(process.execPath, [CLI, 'start', '--workers', '2', '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${httpPort}`, ...nodes, '--log-level', process.env.PGMUX_TEST_LOG ?? 'info'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PGMUX_HEALTH_CHECK_PERIOD: '200ms', PGMUX_UNIX_SOCKET_DIR: socketDir },
    });
    // pgmux logs to stdout; errors of the process itself go to stderr.
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    // (vi.waitFor: expect.poll works inside a test only, not in a hook.)
    await vi.waitFor(async () => expect((await get(httpPort, '/readyz')).status).toBe(200), startWait);
    // Both workers ready, so connections spread over both.
    await vi.waitFor(async () => {
      const s = JSON.parse((await get(httpPort, '/status')).body) as { workers: { ready: boolean }[] };
      expect(s.workers.filter((w) => w.ready)).toHaveLength(2);
    }, startWait);
  });

  afterAll(async () => {
    if (child && child.exitCode === null && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    if (process.env.PGMUX_TEST_LOG) console.log('pgmux output:\n' + output);
    rmSync(socketDir, { recursive: true, force: true });
  });

  it(`spreads accepts with ${reusePortNode ? 'reusePort (each worker listens)' : 'the cluster round-robin (the primary listens)'} on Node ${process.versions.node}, and says so`, async () => {
    type Status = { acceptSpread: string; workers: { pid: number }[] };
    const s = JSON.parse((await get(httpPort, '/status')).body) as Status;
    const pids = listenerPids(port);
    if (reusePortNode) {
      expect(s.acceptSpread).toBe('reusePort');
      expect(output).toMatch(/pgmux supervising workers: accepts spread by the kernel \(reusePort\)/);
      expect(pids.sort()).toEqual(s.workers.map((w) => w.pid).sort());
    } else {
      expect(s.acceptSpread).toBe('cluster');
      expect(output).toMatch(/pgmux supervising workers: accepts dealt by node:cluster round-robin/);
      expect(pids).toEqual([child.pid]);
    }
    expect(output.match(/pgmux supervising workers/g)).toHaveLength(1);
  });

  it('serves Unix-domain socket clients from both workers', async () => {
    const clients = await Promise.all(Array.from({ length: 20 }, () => pgClient(port, { host: socketDir })));
    try {
      for (const c of clients) expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(new Set(clients.map(workerOf))).toEqual(new Set([0, 1]));
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  it('serves clients from both workers and aggregates /metrics', async () => {
    const before = metricSum((await get(httpPort, '/metrics')).body, 'pgmux_transactions_total');
    const clients = await Promise.all(Array.from({ length: 40 }, () => pgClient(port)));
    try {
      await Promise.all(clients.map(async (c, i) => {
        for (let j = 0; j < 5; j++) expect((await c.query('SELECT $1::int AS v', [i * 10 + j])).rows[0].v).toBe(i * 10 + j);
      }));
      expect(new Set(clients.map(workerOf))).toEqual(new Set([0, 1]));
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
    const body = (await get(httpPort, '/metrics')).body;
    expect(metricSum(body, 'pgmux_transactions_total') - before).toBe(200);
    expect(body).toMatch(/pgmux_worker_info\{[^}]*worker="0"[^}]*\} 1/);
    expect(body).toMatch(/pgmux_worker_info\{[^}]*worker="1"[^}]*\} 1/);
    expect(metricSum(body, 'pgmux_worker_info')).toBe(2);
  });

  it('cancels a query whichever worker the CancelRequest lands on', async () => {
    // Two sleepers on each worker; the four cancel connections alternate between the
    // workers, so some land on the worker that does not own the key.
    const clients: pg.Client[] = [];
    while (clients.filter((c) => workerOf(c) === 0).length < 2 || clients.filter((c) => workerOf(c) === 1).length < 2) {
      clients.push(await pgClient(port));
    }
    const on = (w: number) => clients.filter((c) => workerOf(c) === w).slice(0, 2);
    const [a0, b0] = on(0) as [pg.Client, pg.Client];
    const [a1, b1] = on(1) as [pg.Client, pg.Client];
    try {
      const sleepers = [a0, a1, b1, b0];
      const results = sleepers.map((c) => c.query('SELECT pg_sleep(10)').then(() => 'finished', (e: { code?: string }) => e.code ?? 'error'));
      await waitUntilRunning('SELECT pg_sleep(10)', sleepers.length);
      const started = Date.now();
      for (const c of sleepers) await sendCancel(port, c);
      expect(await Promise.all(results)).toEqual(['57014', '57014', '57014', '57014']);
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    }
  });

  it('a function created through one worker is known to the others when the transaction commits', async () => {
    const tag = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
    const clients: pg.Client[] = [];
    while (clients.filter((c) => workerOf(c) === 0).length < 1 || clients.filter((c) => workerOf(c) === 1).length < 4) {
      clients.push(await pgClient(port));
    }
    const creator = clients.find((c) => workerOf(c) === 0)!;
    const others = clients.filter((c) => workerOf(c) === 1).slice(0, 4);
    try {
      // Worker 1 has loaded the database's function catalog before the function exists.
      for (const c of others) await c.query('SELECT abs(-1)');
      await creator.query(`CREATE TABLE fv_w_${tag} (id serial, note text)`);
      await creator.query(`CREATE FUNCTION fv_w_add_${tag}() RETURNS int LANGUAGE sql AS $$ INSERT INTO fv_w_${tag} (note) VALUES ('w') RETURNING id $$`);
      // With 1 of 3 nodes the primary, a read sent to a replica fails (read-only transaction).
      for (let i = 0; i < 3; i++) {
        for (const c of others) expect((await c.query(`SELECT fv_w_add_${tag}() AS id, pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      }
    } finally {
      await creator.query(`DROP FUNCTION IF EXISTS fv_w_add_${tag}(); DROP TABLE IF EXISTS fv_w_${tag}`).catch(() => {});
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    }
  });

  it('restarts a worker that dies', async () => {
    type Status = { workers: { index: number; pid: number | null; ready: boolean; restarts: number }[] };
    const s = JSON.parse((await get(httpPort, '/status')).body) as Status;
    const victim = s.workers[1]!;
    process.kill(victim.pid!, 'SIGKILL');
    const after = await vi.waitFor(async () => {
      const w = (JSON.parse((await get(httpPort, '/status')).body) as Status).workers[1]!;
      if (w.pid === null || w.pid === victim.pid || !w.ready) throw new Error(`worker 1 not back: ${JSON.stringify(w)}`);
      return w;
    }, startWait);
    expect(after.restarts).toBe(1);
    expect(output).toMatch(/worker exited unexpectedly: restarting/);
    // With reusePort the new worker binds the port again beside the survivor.
    if (reusePortNode) expect(listenerPids(port).sort()).toEqual([s.workers[0]!.pid!, after.pid].sort());
    const c = await pgClient(port);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });

  it('SIGTERM stops every worker and exits 0', async () => {
    const s = JSON.parse((await get(httpPort, '/status')).body) as { workers: { pid: number }[] };
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    for (const w of s.workers) expect(() => process.kill(w.pid, 0)).toThrow();
    expect(readdirSync(socketDir)).toEqual([]); // the socket file went with the listener
  });
});

describe('start --workers 2 on a port already in use', () => {
  it('exits 1 instead of sharing the port (a reusePort listener of this user would otherwise be joined)', async () => {
    const port = await freePort();
    // The holder asks for SO_REUSEPORT where Node has it, as a second pgmux group would.
    const holder = spawn(process.execPath, ['-e', `require('net').createServer().listen({ port: ${port}, host: '127.0.0.1', reusePort: ${reusePortNode} }, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => holder.stdout!.once('data', r));
    try {
      const pgmux = spawn(process.execPath, [CLI, 'start', '--workers', '2', '--listen', `127.0.0.1:${port}`, '--node', `127.0.0.1:${clusterInfo().nodes[0]!.port}`, '--log-level', 'info'], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PGMUX_UNIX_SOCKET_DIR: 'off' },
      });
      let out = '';
      pgmux.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      pgmux.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => pgmux.once('exit', (c) => resolve(c)));
      expect(code, out).toBe(1);
      if (reusePortNode) expect(out).toMatch(/listen: 127\.0\.0\.1:\d+ is in use by another process/);
      else expect(out).toMatch(/worker keeps failing before it listens/);
    } finally {
      holder.kill('SIGKILL');
    }
  }, 30_000);
});
