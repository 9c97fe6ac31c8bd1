// ClusterMonitor on real clusters: the shared one from test/support/globalSetup.ts for
// read-only checks, and a private primary + 1 replica for the destructive ones (replay
// pause, failover, fencing).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { ClusterMonitor } from '../../src/cluster/monitor.js';
import type { NodeSnapshot, TopologySnapshot } from '../../src/cluster/snapshot.js';
import { DEFAULTS } from '../../src/config/load.js';
import type { Config, NodeConfig } from '../../src/config/types.js';
import { LocalCluster, freePort } from '../../src/embedded/localCluster.js';
import { clusterInfo } from '../support/cluster.js';
import { captureLogger, type LogLine } from '../support/logCapture.js';
import { sleep } from '../support/wait.js';

const PERIOD = 200;

function makeConfig(nodes: NodeConfig[], over: Partial<Config> = {}): Config {
  return {
    ...DEFAULTS,
    nodes,
    healthCheckPeriodMs: PERIOD,
    healthCheckTimeoutMs: 1000,
    healthCheckMaxRetries: 2,
    healthCheckUser: 'postgres',
    healthCheckPassword: null,
    healthCheckDatabase: 'postgres',
    onRoleChange: null,
    ...over,
  };
}

/** Resolves with the first snapshot (current or future) that satisfies pred. */
function waitForSnapshot(mon: ClusterMonitor, pred: (s: TopologySnapshot) => boolean, timeoutMs: number, what: string): Promise<TopologySnapshot> {
  if (pred(mon.snapshot())) return Promise.resolve(mon.snapshot());
  return new Promise((resolve, reject) => {
    const onSnap = (s: TopologySnapshot) => {
      if (!pred(s)) return;
      clearTimeout(timer);
      mon.off('snapshot', onSnap);
      resolve(s);
    };
    const timer = setTimeout(() => {
      mon.off('snapshot', onSnap);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last snapshot: ${describeSnap(mon.snapshot())}`));
    }, timeoutMs);
    mon.on('snapshot', onSnap);
  });
}

/** The onRoleChange hook's lines so far (none before its first run creates the file). */
function hookEvents(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').trim().split('\n');
  } catch {
    return [];
  }
}

function describeSnap(s: TopologySnapshot): string {
  return JSON.stringify(
    {
      version: s.version,
      primary: s.primary?.name ?? null,
      nodes: s.nodes.map((n) => ({ name: n.name, role: n.role, state: n.state, reason: n.reason, tli: n.timeline, lagBytes: n.lagBytes, lagMs: n.lagMs, fails: n.consecutiveFailures })),
    },
    null,
    1,
  );
}

describe('ClusterMonitor on the shared cluster', () => {
  let mon: ClusterMonitor;
  let info: ReturnType<typeof clusterInfo>;
  let hookDir: string;
  let hookFile: string;
  const roleChanges: Array<{ node: NodeSnapshot; from: string; to: string }> = [];

  beforeAll(async () => {
    info = clusterInfo();
    hookDir = mkdtempSync(join(tmpdir(), 'pgmux-monitor-hook-'));
    hookFile = join(hookDir, 'events');
    const nodes = info.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
    const cfg = makeConfig(nodes, {
      onRoleChange: `echo "$PGMUX_EVENT|$PGMUX_NODE|$PGMUX_OLD_ROLE|$PGMUX_NEW_ROLE|$PGMUX_OLD_PRIMARY|$PGMUX_NEW_PRIMARY" >> '${hookFile}'`,
    });
    mon = new ClusterMonitor(cfg, captureLogger().logger);
    mon.on('roleChange', (e) => roleChanges.push(e));
  });

  afterAll(async () => {
    await mon?.stop();
    if (hookDir) rmSync(hookDir, { recursive: true, force: true });
  });

  it('discovers the roles in the first round', async () => {
    expect(mon.snapshot().version).toBe(0);
    expect(mon.snapshot().primary).toBeNull();
    await mon.start();
    const s = mon.snapshot();
    expect(s.version).toBeGreaterThanOrEqual(1);
    const [p, r1, r2] = info.nodes;
    expect(s.primary?.name).toBe(`${p!.host}:${p!.port}`);
    expect(s.nodes.map((n) => [n.name, n.role, n.state])).toEqual([
      [`${p!.host}:${p!.port}`, 'primary', 'up'],
      [`${r1!.host}:${r1!.port}`, 'replica', 'up'],
      [`${r2!.host}:${r2!.port}`, 'replica', 'up'],
    ]);
    expect(s.systemId).toMatch(/^\d+$/);
    for (const n of s.nodes) {
      expect(n.systemId).toBe(s.systemId);
      expect(n.timeline).toBeGreaterThanOrEqual(1);
      expect(typeof n.walLsn).toBe('bigint');
      expect(n.consecutiveFailures).toBe(0);
    }
    expect(s.nodes[1]!.timeline).toBe(s.primary!.timeline);
    expect(typeof s.nodes[1]!.receiveLsn).toBe('bigint');
    expect(Object.isFrozen(s)).toBe(true);
    expect(roleChanges.map((e) => [e.from, e.to])).toEqual([
      ['unknown', 'primary'],
      ['unknown', 'replica'],
      ['unknown', 'replica'],
    ]);
    // Idle cluster: caught-up replicas show no lag at all.
    const settled = await waitForSnapshot(mon, (x) => x.nodes.slice(1).every((n) => n.lagBytes === 0 && n.lagMs === 0), 10_000, 'replicas caught up');
    expect(settled.primary?.lagMs).toBe(0);
  });

  it('waitForPrimary resolves at once when there is one', async () => {
    const p = await mon.waitForPrimary(1);
    expect(p?.name).toBe(mon.snapshot().primary?.name);
  });

  it('keeps polling: snapshots every period, pollNow runs an extra round', async () => {
    const v0 = mon.snapshot().version;
    await sleep(PERIOD * 3); // deliberate: rounds are counted over a fixed window
    const v1 = mon.snapshot().version;
    expect(v1 - v0).toBeGreaterThanOrEqual(2);
    await mon.pollNow();
    expect(mon.snapshot().version).toBeGreaterThan(v1);
    // concurrent callers share a round
    const v2 = mon.snapshot().version;
    await Promise.all([mon.pollNow(), mon.pollNow(), mon.pollNow()]);
    expect(mon.snapshot().version - v2).toBeLessThanOrEqual(3);
  });

  it('runs the onRoleChange hook (primary discovered at startup)', async () => {
    const p = mon.snapshot().primary!.name;
    await expect.poll(() => hookEvents(hookFile), { timeout: 5000, interval: 50 }).toContain(`primary_change|${p}|unknown|primary||${p}`);
  });

  it('hot reload: an unreachable node goes down after the retries, re-weighting keeps state, removal drops it', async () => {
    const port = await freePort(); // nothing listens there
    const base = info.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
    const before = mon.snapshot();
    mon.setNodes([...base, { host: '127.0.0.1', port, weight: 1 }]);
    const s1 = mon.snapshot();
    expect(s1.nodes).toHaveLength(4);
    expect(s1.nodes[3]).toMatchObject({ role: 'unknown', state: 'down', name: `127.0.0.1:${port}` });
    expect(s1.primary?.name).toBe(before.primary?.name);
    const down = await waitForSnapshot(mon, (x) => (x.nodes[3]?.consecutiveFailures ?? 0) >= 2, 5000, 'new node failing twice');
    expect(down.nodes[3]!.state).toBe('down');
    expect(down.nodes[3]!.reason).toMatch(/ECONNREFUSED|connect/i);

    // Re-weight a replica, drop the dead node: the others keep their state.
    const reweighted = base.map((n, i) => (i === 2 ? { ...n, weight: 5 } : n));
    mon.setNodes(reweighted);
    const s2 = mon.snapshot();
    expect(s2.nodes).toHaveLength(3);
    expect(s2.nodes[2]).toMatchObject({ weight: 5, role: 'replica', state: 'up' });
    expect(s2.primary?.name).toBe(before.primary?.name);
    expect(s2.nodes[0]!.lastCheckAt).toBeGreaterThan(0);
  });

  it('a down node is checked less and less often (1, 2, 4, 5, 5 ... periods apart)', async () => {
    const attempts: number[] = [];
    const rude = createServer((sock) => {
      attempts.push(Date.now());
      sock.destroy();
    });
    await new Promise<void>((r) => rude.listen(0, '127.0.0.1', r));
    const port = (rude.address() as AddressInfo).port;
    try {
      const base = info.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
      const t0 = Date.now();
      mon.setNodes([...base, { host: '127.0.0.1', port, weight: 1 }]);
      await sleep(PERIOD * 15); // deliberate: the attempts are counted over a fixed window
      mon.setNodes(base);
      const gaps = attempts.slice(1).map((t, i) => Math.round((t - attempts[i]!) / PERIOD));
      console.log(`[monitor] down node checked at periods ${attempts.map((t) => ((t - t0) / PERIOD).toFixed(1)).join(', ')}`);
      // without backoff it would be ~15
      expect(attempts.length).toBeGreaterThanOrEqual(4);
      expect(attempts.length).toBeLessThanOrEqual(7);
      expect(Math.max(...gaps)).toBeLessThanOrEqual(6);
      expect(Math.max(...gaps)).toBeGreaterThanOrEqual(4);
    } finally {
      await new Promise((r) => rude.close(r));
    }
  });

  it('a node that accepts but never answers fails by timeout, without holding up the others', async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      sock.on('error', () => {});
      sock.resume(); // read (and drop) the startup packet, so the peer's FIN is seen
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    try {
      const base = info.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
      mon.setNodes([...base, { host: '127.0.0.1', port, weight: 1 }]);
      const t0 = Date.now();
      const s = await waitForSnapshot(mon, (x) => (x.nodes[3]?.consecutiveFailures ?? 0) >= 1, 5000, 'silent node failing');
      const took = Date.now() - t0;
      expect(s.nodes[3]!.reason).toMatch(/timeout|timed out/i);
      expect(took).toBeLessThan(1000 + 2 * PERIOD + 500); // healthCheckTimeoutMs bounds a round
      expect(s.nodes[0]!.state).toBe('up');
      expect(s.nodes[0]!.lastCheckAt).toBeGreaterThanOrEqual(t0);
      expect(s.primary).not.toBeNull();
      mon.setNodes(base);
      // the abandoned control connection is closed
      await expect.poll(() => sockets.size, { timeout: 3000, interval: 20 }).toBe(0);
    } finally {
      for (const sock of sockets) sock.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});

describe('ClusterMonitor on a private cluster: lag, failover, fencing', () => {
  let cluster: LocalCluster;
  let mon: ClusterMonitor;
  let logs: LogLine[];
  let hookDir: string;
  let hookFile: string;
  let n0: string;
  let n1: string;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 1 });
    n0 = `${cluster.nodes[0]!.host}:${cluster.nodes[0]!.port}`;
    n1 = `${cluster.nodes[1]!.host}:${cluster.nodes[1]!.port}`;
    hookDir = mkdtempSync(join(tmpdir(), 'pgmux-monitor-hook-'));
    hookFile = join(hookDir, 'events');
    const cfg = makeConfig(
      cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
      { onRoleChange: `echo "$PGMUX_EVENT|$PGMUX_NODE|$PGMUX_OLD_ROLE|$PGMUX_NEW_ROLE" >> '${hookFile}'` },
    );
    const cap = captureLogger();
    logs = cap.lines;
    mon = new ClusterMonitor(cfg, cap.logger);
    await mon.start();
    await cluster.query('node0', 'CREATE TABLE t (id serial primary key, pad text)');
  });

  afterAll(async () => {
    await mon?.stop();
    await cluster?.stop();
    if (hookDir) rmSync(hookDir, { recursive: true, force: true });
  });

  it('lag appears while replay is paused and the primary writes, and returns to 0 after resume', async () => {
    // A round that began after CREATE TABLE: caught up then means its commit was replayed,
    // so the replica has a replay timestamp to measure the lag with.
    await mon.pollNow();
    const v = mon.snapshot().version;
    await waitForSnapshot(
      mon,
      (s) => s.version >= v && s.primary?.name === n0 && s.nodes[1]!.lagMs === 0 && s.nodes[1]!.lagBytes === 0,
      10_000,
      'replica caught up',
    );
    await cluster.query('node1', 'SELECT pg_wal_replay_pause()');
    let writing = true;
    const writer = (async () => {
      while (writing) {
        await cluster.query('node0', "INSERT INTO t (pad) SELECT repeat('x', 100) FROM generate_series(1, 100)");
        await sleep(50); // pacing: a steady trickle of WAL, not a wait for a condition
      }
    })();
    try {
      const lagging = await waitForSnapshot(
        mon,
        (s) => (s.nodes[1]!.lagBytes ?? 0) > 0 && s.nodes[1]!.lagMs !== 0,
        10_000,
        'replica lagging',
      );
      expect(lagging.nodes[1]!.state).toBe('up');
      // It builds up in ms as well as bytes: the replay timestamp stands still.
      const built = await waitForSnapshot(mon, (x) => (x.nodes[1]!.lagMs ?? 0) > 400, 5000, 'lag over 400 ms');
      const s = built.nodes[1]!;
      expect(s.lagBytes).toBeGreaterThan(0);
      expect(s.lagMs).not.toBeNull();
      expect(s.lagMs!).toBeGreaterThan(400);
      console.log(`[monitor] paused replica: lagBytes=${s.lagBytes} lagMs=${Math.round(s.lagMs!)}`);
    } finally {
      writing = false;
      await writer;
      await cluster.query('node1', 'SELECT pg_wal_replay_resume()');
    }
    const back = await waitForSnapshot(mon, (s) => s.nodes[1]!.lagBytes === 0 && s.nodes[1]!.lagMs === 0, 10_000, 'lag back to 0');
    expect(back.nodes[1]!.state).toBe('up');
  });

  it('stop primary (immediate) + promote the replica: the promoted node is primary within ~2 periods', async () => {
    const primaryChanges: Array<{ from: NodeSnapshot | null; to: NodeSnapshot | null; at: number }> = [];
    mon.on('primaryChange', (e) => primaryChanges.push({ ...e, at: Date.now() }));
    const tStop = Date.now();
    await cluster.stopNode('node0', 'immediate');
    const stopped = Date.now();

    // The old primary is counted down after healthCheckMaxRetries (2) failed checks.
    const gone = await waitForSnapshot(mon, (s) => s.primary === null, 5000, 'no primary');
    const tGone = Date.now();
    expect(gone.nodes[0]!.state).toBe('down');
    expect(await mon.waitForPrimary(PERIOD)).toBeNull(); // times out: nobody to write to

    const waiting = mon.waitForPrimary(10_000);
    const tPromote = Date.now();
    await cluster.promote('node1'); // returns once pg_is_in_recovery() is false
    const tPromoted = Date.now();
    const p = await waiting;
    const tDetected = Date.now();
    expect(p?.name).toBe(n1);
    expect(p).toMatchObject({ role: 'primary', state: 'up', timeline: 2 });
    const detectMs = tDetected - tPromoted;
    console.log(
      `[monitor] period ${PERIOD} ms: old primary marked down ${tGone - stopped} ms after stop (stop took ${stopped - tStop} ms); ` +
        `promote took ${tPromoted - tPromote} ms; new primary detected ${detectMs} ms after promote returned ` +
        `(${tDetected - tPromote} ms after promote started)`,
    );
    expect(detectMs).toBeLessThanOrEqual(2 * PERIOD + 200);
    expect(primaryChanges.map((c) => [c.from?.name ?? null, c.to?.name ?? null])).toEqual([
      [n0, null],
      [null, n1],
    ]);
    const s = mon.snapshot();
    expect(s.primary?.name).toBe(n1);
    expect(s.nodes[1]!.role).toBe('primary');
  });

  it('the old primary restarted on the old timeline is fenced, loudly', async () => {
    const states: Array<{ from: string; to: string; name: string }> = [];
    mon.on('nodeState', (e: { node: NodeSnapshot; from: string; to: string }) => states.push({ from: e.from, to: e.to, name: e.node.name }));
    await cluster.startNode('node0'); // no standby.signal: it comes back as a primary on timeline 1
    const s = await waitForSnapshot(mon, (x) => x.nodes[0]!.state === 'fenced', 10_000, 'old primary fenced');
    expect(s.primary?.name).toBe(n1);
    expect(s.nodes[0]).toMatchObject({ role: 'primary', state: 'fenced', timeline: 1 });
    expect(s.nodes[0]!.reason).toContain(n1);
    expect(s.nodes[0]!.reason).toMatch(/timeline 1\b/);
    expect(s.nodes[0]!.reason).toMatch(/timeline 2\b/);
    expect(states).toContainEqual({ from: 'down', to: 'fenced', name: n0 });
    // It stays fenced round after round; the primary does not move.
    const v = mon.snapshot().version;
    await waitForSnapshot(mon, (x) => x.version >= v + 3, 20 * PERIOD, 'three more rounds');
    expect(mon.snapshot().nodes[0]!.state).toBe('fenced');
    expect(mon.snapshot().primary?.name).toBe(n1);
    const fencedLog = logs.find((l) => l.level >= 50 && /FENCED/.test(l.msg));
    expect(fencedLog?.msg).toContain(n0);

    await expect.poll(() => hookEvents(hookFile), { timeout: 5000, interval: 50 }).toContain(`fenced|${n0}|primary|primary`);
    const events = hookEvents(hookFile);
    expect(events).toContain(`role_change|${n1}|replica|primary`);
    expect(events).toContain(`primary_change|${n1}|replica|primary`);
    expect(events).toContain(`fenced|${n0}|primary|primary`);
  });
});
