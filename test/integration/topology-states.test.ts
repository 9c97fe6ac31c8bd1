// Node states a Pgpool-II user can trust, on a private cluster (node0 primary; node1, node2
// replicas), in this order:
//  1. lagging: replay paused on node1 while the primary writes -> node1 `lagging` (logged with
//     the lag and the limit, counted in /metrics), no reads; resumed -> `up` again (logged).
//  2. no primary: node0 stopped -> replicas keep serving reads with max_lag_ms / max_lag_bytes
//     set; with read_without_primary_timeout they stop after it. node0 is started again.
//  3. diverged: node1 stops receiving WAL, node2 replays rows node1 never gets, node0 dies,
//     node1 is promoted and node2 pointed at it: node2 cannot follow -> `diverged` (SHOW
//     NODES, an error log line), and reads never see the rows only node2 has.
//
// Destructive (replay pause, stop, promotion), so the shared cluster is left alone. The
// phases share one cluster to save its start-up on a small box: each leaves it healthy
// (phase 3 excepted, the last).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../../src/config/types.js';
import type { TopologySnapshot } from '../../src/cluster/snapshot.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { statusObject } from '../../src/admin/http.js';
import { startPgmux, type RunningPgmux } from '../../src/server/pgmux.js';
import { pgClient } from '../support/cluster.js';
import { testConfig } from '../support/pgmux.js';
import { captureLogger, type LogLine } from '../support/logCapture.js';
import { sleep, waitFor } from '../support/wait.js';

const PERIOD = 200;
const LAG_LIMIT_BYTES = 1024 * 1024;

interface LoggedProxy extends RunningPgmux {
  logs: LogLine[];
}

/** A pgmux whose log lines (JSON, level info and up) are kept for the test to read. */
async function startLoggedProxy(overrides: Partial<Config>): Promise<LoggedProxy> {
  const { logger, lines } = captureLogger('info');
  const running = await startPgmux(testConfig(overrides), { logger });
  return Object.assign(running, { logs: lines });
}

function describeSnap(s: TopologySnapshot): string {
  return JSON.stringify(
    s.nodes.map((n) => ({ name: n.name, role: n.role, state: n.state, tl: n.timeline, lagBytes: n.lagBytes, lagMs: n.lagMs, reason: n.reason })),
  );
}

async function readPorts(c: pg.Client, n: number): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const port = Number((await c.query('SELECT inet_server_port() AS port')).rows[0].port);
    counts.set(port, (counts.get(port) ?? 0) + 1);
  }
  return counts;
}

describe('node states: lagging, reads with no primary, diverged (private cluster)', () => {
  let cluster: LocalCluster;
  let port0: number;
  let port1: number;
  let port2: number;
  const nameOf = (port: number) => `127.0.0.1:${port}`;
  const proxies: RunningPgmux[] = [];
  const clients: pg.Client[] = [];
  /** Replicas only (the primary's read weight 0): a read on node0 would show up. */
  const nodes = () => cluster.nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 }));

  async function proxy(overrides: Partial<Config>): Promise<LoggedProxy> {
    const p = await startLoggedProxy({ nodes: nodes(), healthCheckPeriodMs: PERIOD, healthCheckMaxRetries: 2, poolSize: 4, adminUsers: ['postgres'], ...overrides });
    proxies.push(p);
    await waitFor(
      () => p.proxy.monitor.snapshot().nodes.every((n) => n.state === 'up') && p.proxy.monitor.snapshot().primary !== null,
      10_000,
      () => `every node up: ${describeSnap(p.proxy.monitor.snapshot())}`,
    );
    return p;
  }

  async function client(port: number, database = 'postgres'): Promise<pg.Client> {
    const c = await pgClient(port, { database });
    c.on('error', () => {});
    clients.push(c);
    return c;
  }

  const node = (p: RunningPgmux, port: number) => p.proxy.monitor.snapshot().nodes.find((n) => n.name === nameOf(port))!;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 2 });
    [port0, port1, port2] = cluster.nodes.map((n) => n.port) as [number, number, number];
    await cluster.query('node0', 'CREATE TABLE states_t (id bigserial PRIMARY KEY, v text)');
  });

  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {});
    for (const p of proxies) await p.close();
    await cluster?.stop();
  });

  it('a replica over max_lag_bytes goes lagging (logged with lag and limit, counted), and back up once it catches up', async () => {
    const p = await proxy({ maxLagBytes: LAG_LIMIT_BYTES, maxLagMs: null });
    const c = await client(p.port);
    const before = await readPorts(c, 20);
    expect(before.get(port1) ?? 0).toBeGreaterThan(0);

    let excluded = '';
    await cluster.query('node1', 'SELECT pg_wal_replay_pause()');
    try {
      await waitFor(async () => (await cluster.query('node1', 'SELECT pg_get_wal_replay_pause_state() AS s'))[0].s === 'paused', 10_000, () => 'node1 paused');
      const writer = await pgClient(port0, { database: 'postgres' });
      for (let i = 0; i < 12; i++) await writer.query("INSERT INTO states_t (v) SELECT repeat('x', 200) FROM generate_series(1, 1000)");
      await writer.end();

      const lagging = await waitFor(() => (node(p, port1).state === 'lagging' ? node(p, port1) : null), 20 * PERIOD, () => describeSnap(p.proxy.monitor.snapshot()));
      expect(lagging.lagBytes!).toBeGreaterThan(LAG_LIMIT_BYTES);
      expect(lagging.reason).toMatch(new RegExp(`replay lag \\d+ bytes over max_lag_bytes ${LAG_LIMIT_BYTES}`));
      const warn = p.logs.find((l) => l.level === 40 && l.msg.startsWith(`replica ${nameOf(port1)} gets no reads`));
      expect(warn, JSON.stringify(p.logs.slice(-5))).toBeDefined();
      expect(warn).toMatchObject({ node: nameOf(port1), from: 'up', to: 'lagging', maxLagBytes: LAG_LIMIT_BYTES });
      expect(warn!.lagBytes as number).toBeGreaterThan(LAG_LIMIT_BYTES);
      excluded = warn!.msg;
      const metrics = await createMetrics(p.proxy).render();
      expect(metrics).toContain(`pgmux_replica_lag_exclusions_total{node="${nameOf(port1)}"} 1`);
      expect(metrics).toContain(`pgmux_node_state{node="${nameOf(port1)}",state="lagging"} 1`);
      const during = await readPorts(c, 40);
      expect(during.get(port1) ?? 0).toBe(0);
      expect(during.get(port2)).toBe(40);
    } finally {
      // The next phases need node1 replaying, whatever happened here.
      await cluster.query('node1', 'SELECT pg_wal_replay_resume()');
    }
    await waitFor(() => node(p, port1).state === 'up', 20 * PERIOD, () => describeSnap(p.proxy.monitor.snapshot()));
    const info = p.logs.find((l) => l.level === 30 && l.msg.startsWith(`replica ${nameOf(port1)} serves reads again`));
    expect(info).toMatchObject({ from: 'lagging', to: 'up', maxLagBytes: LAG_LIMIT_BYTES });
    const after = await readPorts(c, 40);
    expect(after.get(port1) ?? 0).toBeGreaterThan(5);
    console.log(`[states] lagging: ${excluded}; back: ${info!.msg}`);
  });

  it('no primary: replicas keep serving reads with lag limits set; with read_without_primary_timeout they stop after it', async () => {
    const TIMEOUT = 2000;
    const limits = { maxLagBytes: LAG_LIMIT_BYTES, maxLagMs: 5000 };
    const keep = await proxy(limits);
    // Past the bound no replica serves: the read waits for a primary like a write (failover_timeout).
    const bound = await proxy({ ...limits, readWithoutPrimaryTimeoutMs: TIMEOUT, failoverTimeoutMs: 1000 });
    // Logged in (and routed once) before the primary goes: logging in is not under test here.
    const viaKeep = await client(keep.port);
    const viaBound = await client(bound.port);
    const admin = await client(keep.port, 'pgmux');
    await readPorts(viaKeep, 2);
    await readPorts(viaBound, 2);
    await cluster.query('node0', "INSERT INTO states_t (v) VALUES ('before the stop')");
    await waitFor(() => [port1, port2].every((pt) => node(keep, pt).lagBytes === 0 && node(bound, pt).lagBytes === 0), 20 * PERIOD, () => describeSnap(keep.proxy.monitor.snapshot()));

    await cluster.stopNode('node0', 'immediate');
    try {
      await waitFor(() => keep.proxy.monitor.snapshot().primary === null && bound.proxy.monitor.snapshot().primary === null, 20 * PERIOD, () => 'primary lost');
      const lostAt = bound.proxy.monitor.snapshot().primaryLostAt!;
      // Right away, both serve reads from the replicas.
      const early = await readPorts(viaBound, 10);
      expect(Date.now() - lostAt).toBeLessThan(TIMEOUT);
      expect((early.get(port1) ?? 0) + (early.get(port2) ?? 0)).toBe(10);

      // Past the timeout (and a few rounds): `keep` still serves, `bound` has stopped.
      const keepPorts = new Map<number, number>();
      while (Date.now() - lostAt < TIMEOUT + 6 * PERIOD) {
        for (const [pt, n] of await readPorts(viaKeep, 5)) keepPorts.set(pt, (keepPorts.get(pt) ?? 0) + n);
        await sleep(10); // pacing of the sampling reads
      }
      expect(keepPorts.get(port0) ?? 0).toBe(0);
      expect(keepPorts.get(port1) ?? 0).toBeGreaterThan(0);
      expect(keepPorts.get(port2) ?? 0).toBeGreaterThan(0);
      const r = await viaKeep.query("SELECT count(*)::int AS n FROM states_t WHERE v = 'before the stop'");
      expect(r.rows[0].n).toBe(1);

      const snap = bound.proxy.monitor.snapshot();
      expect(snap.nodes.filter((n) => n.role === 'replica').map((n) => n.state)).toEqual(['lagging', 'lagging']);
      const err = await viaBound.query('SELECT 1').then(
        () => null,
        (e: pg.DatabaseError) => e,
      );
      expect(err?.code).toBe('08006');
      expect(err?.message).toBe('no primary node available');

      // What the operator sees on `keep`.
      const rows = (await admin.query('SHOW NODES')).rows as Array<Record<string, string | null>>;
      const row0 = rows.find((x) => x.name === nameOf(port0))!;
      expect(row0).toMatchObject({ role: 'unknown', last_role: 'primary', state: 'down' });
      for (const pt of [port1, port2]) {
        expect(rows.find((x) => x.name === nameOf(pt))!.reason).toMatch(/^serving reads without a primary since \d{4}-\d\d-\d\dT.*: data as of then$/);
      }
      const status = statusObject(keep.proxy) as { primary: string | null; primaryLostAt: string | null; nodes: Array<Record<string, unknown>> };
      expect(status.primary).toBeNull();
      expect(status.primaryLostAt).toBe(new Date(keep.proxy.monitor.snapshot().primaryLostAt!).toISOString());
      expect(status.nodes.find((n) => n.name === nameOf(port0))).toMatchObject({ role: 'unknown', lastRole: 'primary', state: 'down' });
      expect(keep.proxy.isReady()).toBe(true);
      expect(keep.logs.some((l) => l.level === 40 && l.msg.includes('replicas keep serving reads'))).toBe(true);
      console.log(`[states] no primary: reads through pgmux without a limit ${JSON.stringify([...keepPorts])}; with read_without_primary_timeout ${TIMEOUT} ms: ${err?.message}`);
    } finally {
      // node0 back (the next phase needs it), whatever happened here.
      await cluster.startNode('node0');
    }
    // Reads on both again.
    await waitFor(() => bound.proxy.monitor.snapshot().primary?.name === nameOf(port0), 30 * PERIOD, () => 'primary back');
    await cluster.waitForStreaming(15_000);
    await waitFor(() => [port1, port2].every((pt) => node(bound, pt).state === 'up'), 30 * PERIOD, () => describeSnap(bound.proxy.monitor.snapshot()));
    const again = await client(bound.port);
    const back = await readPorts(again, 10);
    expect(back.get(port0) ?? 0).toBe(0);
    for (const p of [keep, bound]) {
      proxies.splice(proxies.indexOf(p), 1);
      await p.close();
    }
  });

  it('a replica that replayed past the fork point cannot follow the new primary: diverged, no reads from it', async () => {
    // Every read may go anywhere (weight 1 everywhere): the promoted node1 keeps serving.
    const hookLog = join(mkdtempSync(join(tmpdir(), 'pgmux-states-')), 'hooks.log');
    const p = await proxy({
      nodes: cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
      maxLagMs: null,
      maxLagBytes: null,
      onRoleChange: `echo "$PGMUX_EVENT $PGMUX_NODE $PGMUX_NEW_PRIMARY" >> '${hookLog}'`,
    });
    const admin = await client(p.port, 'pgmux');
    const c = await client(p.port);
    await cluster.query('node0', 'CREATE TABLE ghost_t (id int PRIMARY KEY)');
    await waitFor(() => [port1, port2].every((pt) => node(p, pt).lagBytes === 0), 30 * PERIOD, () => describeSnap(p.proxy.monitor.snapshot()));
    for (const pt of ['node1', 'node2']) {
      await waitFor(async () => (await cluster.query(pt, "SELECT to_regclass('ghost_t') AS t"))[0].t !== null, 10_000, () => `ghost_t on ${pt}`);
    }

    // node1 stops receiving; node2 gets rows node1 never will.
    await cluster.query('node1', "ALTER SYSTEM SET primary_conninfo = ''");
    await cluster.query('node1', 'SELECT pg_reload_conf()');
    await waitFor(async () => (await cluster.query('node1', 'SELECT count(*)::int AS n FROM pg_stat_wal_receiver'))[0].n === 0, 10_000, () => 'node1 WAL receiver gone');
    await cluster.query('node0', 'INSERT INTO ghost_t SELECT g FROM generate_series(1, 100) g');
    await waitFor(async () => (await cluster.query('node2', 'SELECT count(*)::int AS n FROM ghost_t'))[0].n === 100, 10_000, () => 'node2 has the rows');
    // pgmux sees node1's final position as a replica: a round begun after node2 got the rows.
    const roundsFrom = p.proxy.monitor.snapshot().version;
    await waitFor(() => p.proxy.monitor.snapshot().version >= roundsFrom + 2, 20 * PERIOD, () => 'a round after node2 got the rows');

    await cluster.stopNode('node0', 'immediate');
    await cluster.promote('node1');
    await cluster.follow('node2', 'node1');

    const followedAt = Date.now();
    // The first round that sees node1 as primary and node2 checked after node2 was pointed at it.
    await waitFor(
      () => p.proxy.monitor.snapshot().primary?.name === nameOf(port1) && node(p, port2).lastOkAt > followedAt,
      15_000,
      () => describeSnap(p.proxy.monitor.snapshot()),
    );
    // The setup really diverged: node2 holds the rows, on timeline 1, while node1 is on 2.
    expect((await cluster.query('node2', 'SELECT count(*)::int AS n FROM ghost_t'))[0].n).toBe(100);
    expect((await cluster.query('node1', 'SELECT count(*)::int AS n FROM ghost_t'))[0].n).toBe(0);

    // Reads never see node2's rows, and never land on it (keep watching for a while: the
    // WAL receiver of node2 keeps retrying and failing).
    const seen = new Map<number, number>();
    const ghosts: number[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < 2000) {
      const r = await c.query('SELECT inet_server_port() AS port, (SELECT count(*)::int FROM ghost_t) AS n');
      const pt = Number(r.rows[0].port);
      seen.set(pt, (seen.get(pt) ?? 0) + 1);
      if (r.rows[0].n !== 0) ghosts.push(r.rows[0].n);
    }
    console.log(`[states] diverged: reads per port ${JSON.stringify([...seen])}; reads that saw node2's rows: ${ghosts.length}`);
    expect(ghosts).toEqual([]);
    expect(seen.get(port2) ?? 0).toBe(0);
    expect(seen.get(port1) ?? 0).toBeGreaterThan(10);

    const snap = p.proxy.monitor.snapshot();
    expect(node(p, port2).state).toBe('diverged');
    expect(snap.fork).toMatchObject({ timeline: 2, node: nameOf(port1) });
    const rows = (await admin.query('SHOW NODES')).rows as Array<Record<string, string | null>>;
    const row2 = rows.find((x) => x.name === nameOf(port2))!;
    expect(row2).toMatchObject({ role: 'replica', state: 'diverged', last_role: 'replica' });
    expect(row2.reason).toMatch(/^on timeline 1 while the primary .* is on timeline 2, replayed to [0-9A-F]+\/[0-9A-F]+, past [0-9A-F]+\/[0-9A-F]+ where timeline 2 forked/);
    expect(rows.find((x) => x.name === nameOf(port1))).toMatchObject({ role: 'primary', state: 'up' });
    expect(rows.find((x) => x.name === nameOf(port0))).toMatchObject({ role: 'unknown', last_role: 'primary', state: 'down' });
    const errorLines = p.logs.filter((l) => l.level === 50 && l.msg.startsWith(`DIVERGED ${nameOf(port2)}`));
    expect(errorLines.length).toBe(1);
    expect((await createMetrics(p.proxy).render())).toContain(`pgmux_node_state{node="${nameOf(port2)}",state="diverged"} 1`);
    await waitFor(() => existsSync(hookLog) && readFileSync(hookLog, 'utf8').includes('diverged'), 5000, () => `a diverged hook in ${hookLog}`);
    expect(readFileSync(hookLog, 'utf8')).toContain(`diverged ${nameOf(port2)} ${nameOf(port1)}\n`);
    console.log(`[states] ${errorLines[0]!.msg}`);
  });
});
