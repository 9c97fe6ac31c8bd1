// Lag-aware read routing on a private cluster (primary node0 + replicas node1, node2):
// replay paused on one replica takes it out of the read rotation after the next poll and
// puts it back after the resume; an idle primary, or one writing WAL without commits, does
// not make replicas that keep up look lagging; a replica stopped mid-stream costs the clients nothing (reads re-run elsewhere).
//
// Destructive (replay pause, immediate stop), so the shared cluster is left alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import type { TopologySnapshot } from '../../src/cluster/snapshot.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { sleep, waitFor } from '../support/wait.js';

const PERIOD = 200;
/** Byte limit of the byte-lag proxy; the write burst below makes replica A lag far more. */
const LAG_LIMIT_BYTES = 1024 * 1024;
/** Time limit of the time-lag proxy. */
const LAG_LIMIT_MS = 500;


function describeSnap(s: TopologySnapshot): string {
  return JSON.stringify(
    s.nodes.map((n) => ({ name: n.name, role: n.role, state: n.state, lagBytes: n.lagBytes, lagMs: n.lagMs, reason: n.reason })),
  );
}

/** Runs `n` single-statement reads through the proxy; counts them per server port. */
async function readPorts(c: pg.Client, n: number): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const r = await c.query('SELECT inet_server_port() AS port');
    const port = Number(r.rows[0].port);
    counts.set(port, (counts.get(port) ?? 0) + 1);
  }
  return counts;
}

describe('replica lag and read routing (private cluster)', () => {
  let cluster: LocalCluster;
  let bytesProxy: TestProxy; // maxLagBytes only
  let msProxy: TestProxy; // maxLagMs only
  let port0: number;
  let portA: number; // node1: replay gets paused
  let portB: number; // node2
  const nameOf = (port: number) => `127.0.0.1:${port}`;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 2 });
    [port0, portA, portB] = cluster.nodes.map((n) => n.port) as [number, number, number];
    await cluster.query('node0', "CREATE TABLE lag_t (id bigserial PRIMARY KEY, pad text)");
    const nodes = cluster.nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 }));
    bytesProxy = await startProxy({ nodes, healthCheckPeriodMs: PERIOD, maxLagBytes: LAG_LIMIT_BYTES, maxLagMs: null, poolSize: 4 });
    msProxy = await startProxy({ nodes, healthCheckPeriodMs: PERIOD, maxLagBytes: null, maxLagMs: LAG_LIMIT_MS, poolSize: 4 });
  });

  /** Commits one row on the primary and waits until msProxy sees both replicas replay it. */
  async function commitAndWaitCaughtUp(pad: string) {
    await cluster.query('node0', 'INSERT INTO lag_t (pad) VALUES ($1)', { params: [pad] });
    const mon = msProxy.proxy.monitor;
    await waitFor(
      () => mon.snapshot().nodes.filter((n) => n.role === 'replica').every((n) => n.lagBytes === 0),
      20 * PERIOD,
      () => `replicas caught up: ${describeSnap(mon.snapshot())}`,
    );
    return mon;
  }

  afterAll(async () => {
    await bytesProxy?.close();
    await msProxy?.close();
    await cluster?.stop();
  });

  it('takes a replica whose replay is paused out of the reads after the next poll, and back after the resume', async () => {
    const viaBytes = await pgClient(bytesProxy.port, { database: 'postgres' });
    const viaMs = await pgClient(msProxy.port, { database: 'postgres' });
    // Both replicas serve before anything happens (the test would prove nothing otherwise).
    const before = await readPorts(viaBytes, 20);
    expect(before.get(portA) ?? 0).toBeGreaterThan(0);
    expect(before.get(portB) ?? 0).toBeGreaterThan(0);

    await cluster.query('node1', 'SELECT pg_wal_replay_pause()');
    await waitFor(async () => (await cluster.query('node1', 'SELECT pg_get_wal_replay_pause_state() AS s'))[0].s === 'paused', 10_000, () => 'node1 replay paused');

    // The primary takes writes for a few hundred ms (~200 kB of WAL per statement).
    const writer = await pgClient(port0, { database: 'postgres' });
    const tw = Date.now();
    let inserts = 0;
    while (Date.now() - tw < 400) {
      await writer.query("INSERT INTO lag_t (pad) SELECT repeat('x', 200) FROM generate_series(1, 1000)");
      inserts++;
    }
    const writesEndedAt = Date.now();
    await writer.end();

    // The next poll sees A far over the limit; wait only for B to have replayed the burst
    // (its own catch-up is not what is under test).
    const mon = bytesProxy.proxy.monitor;
    const snap = await waitFor(
      () => {
        const s = mon.snapshot();
        const a = s.nodes.find((n) => n.name === nameOf(portA))!;
        const b = s.nodes.find((n) => n.name === nameOf(portB))!;
        return s.takenAt > writesEndedAt && a.lagBytes !== null && b.lagBytes !== null && b.lagBytes <= LAG_LIMIT_BYTES * 0.5 ? s : null;
      },
      20 * PERIOD,
      () => `a poll after the writes with B caught up: ${describeSnap(mon.snapshot())}`,
    );
    const lagA = snap.nodes.find((n) => n.name === nameOf(portA))!.lagBytes!;
    console.log(`[lag] ${inserts} inserts in 400 ms; A (paused) lags ${lagA} bytes, limit ${LAG_LIMIT_BYTES}; poll ${snap.takenAt - writesEndedAt} ms after the writes`);
    expect(lagA).toBeGreaterThan(LAG_LIMIT_BYTES); // the setup really made A lag

    const duringPause = await readPorts(viaBytes, 100);
    console.log(`[lag] 100 reads with A paused (maxLagBytes): ${JSON.stringify([...duringPause])}`);
    expect(duringPause.get(portA) ?? 0).toBe(0);
    expect(duringPause.get(port0) ?? 0).toBe(0);
    expect(duringPause.get(portB)).toBe(100);

    // maxLagMs: A's newest replayed commit is from before the pause, so its data is older
    // than the limit now (the writes above took 400 ms; wait out the rest of the limit:
    // deliberate, the data has to age).
    await sleep(Math.max(0, LAG_LIMIT_MS + 2 * PERIOD - (Date.now() - tw)));
    const msMon = msProxy.proxy.monitor;
    await waitFor(
      () => {
        const s = msMon.snapshot();
        const b = s.nodes.find((n) => n.name === nameOf(portB))!;
        return s.takenAt > Date.now() - PERIOD * 2 && b.lagMs !== null && b.lagMs <= LAG_LIMIT_MS * 0.5;
      },
      20 * PERIOD,
      () => `B under the time limit: ${describeSnap(msMon.snapshot())}`,
    );
    const msPause = await readPorts(viaMs, 100);
    console.log(`[lag] 100 reads with A paused (maxLagMs ${LAG_LIMIT_MS}): ${JSON.stringify([...msPause])}; snapshot ${describeSnap(msMon.snapshot())}`);
    expect(msPause.get(portA) ?? 0).toBe(0);
    expect(msPause.get(portB)).toBe(100);

    // Resume: A catches up and gets reads again within a few polls.
    await cluster.query('node1', 'SELECT pg_wal_replay_resume()');
    const resumedAt = Date.now();
    let backAfter = -1;
    while (Date.now() - resumedAt < 10 * PERIOD) {
      const r = await viaBytes.query('SELECT inet_server_port() AS port');
      if (Number(r.rows[0].port) === portA) {
        backAfter = Date.now() - resumedAt;
        break;
      }
    }
    console.log(`[lag] A back in the read rotation ${backAfter} ms after pg_wal_replay_resume() (poll period ${PERIOD} ms)`);
    expect(backAfter).toBeGreaterThanOrEqual(0);
    const after = await readPorts(viaBytes, 100);
    expect(after.get(portA) ?? 0).toBeGreaterThan(30);
    expect(after.get(portB) ?? 0).toBeGreaterThan(30);

    let backMs = -1;
    const t1 = Date.now();
    while (Date.now() - t1 < 10 * PERIOD) {
      const r = await viaMs.query('SELECT inet_server_port() AS port');
      if (Number(r.rows[0].port) === portA) {
        backMs = Date.now() - t1;
        break;
      }
    }
    expect(backMs).toBeGreaterThanOrEqual(0);
    await viaBytes.end();
    await viaMs.end();
  });

  it('does not count an idle primary against caught-up replicas (no writes for 2 s, maxLagMs 500)', async () => {
    // A last write, so both replicas have a replayed commit timestamp that then ages.
    const mon = await commitAndWaitCaughtUp('last');
    await sleep(2000); // deliberate: the primary stays idle for 2 s
    // The replicas' newest commit is now > 2 s old: replay age alone would call them lagging.
    const replayAge = await cluster.query('node1', 'SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 AS ms');
    console.log(`[lag] idle 2 s: node1 replay age ${Math.round(Number(replayAge[0].ms))} ms; snapshot ${describeSnap(mon.snapshot())}`);
    expect(Number(replayAge[0].ms)).toBeGreaterThan(LAG_LIMIT_MS);
    const c = await pgClient(msProxy.port, { database: 'postgres' });
    const counts = await readPorts(c, 100);
    console.log(`[lag] 100 reads on an idle cluster (maxLagMs ${LAG_LIMIT_MS}): ${JSON.stringify([...counts])}`);
    expect(counts.get(port0) ?? 0).toBe(0);
    expect(counts.get(portA) ?? 0).toBeGreaterThan(30);
    expect(counts.get(portB) ?? 0).toBeGreaterThan(30);
    for (const n of mon.snapshot().nodes.filter((x) => x.role === 'replica')) expect(n.lagMs).toBe(0);
    await c.end();
  });

  it('does not age replicas that keep up with WAL written without commits (maxLagMs 500)', async () => {
    // Hint bits, vacuum or checkpoints after a bulk write make WAL but no commits: the
    // replicas' last replayed commit ages while they replay everything within a poll.
    // Non-transactional logical messages make such WAL on demand.
    const mon = await commitAndWaitCaughtUp('before wal without commits');
    const writer = await pgClient(port0, { database: 'postgres' });
    let emitting = true;
    let messages = 0;
    const emitter = (async () => {
      while (emitting) {
        await writer.query("SELECT pg_logical_emit_message(false, 'pgmux-test', repeat('x', 4000))");
        messages++;
      }
    })();
    // Sample the snapshots meanwhile: the replicas must be seen behind (else the test
    // would only repeat the idle-primary case) and never lagging.
    let behind = 0;
    let worstLagMs = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 2500) {
      for (const n of mon.snapshot().nodes.filter((x) => x.role === 'replica')) {
        if ((n.lagBytes ?? 0) > 0) behind++;
        worstLagMs = Math.max(worstLagMs, n.lagMs ?? Infinity);
      }
      await sleep(PERIOD / 2); // the sampling period
    }
    const replayAge = await cluster.query('node1', 'SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 AS ms');
    const c = await pgClient(msProxy.port, { database: 'postgres' });
    const counts = await readPorts(c, 100);
    emitting = false;
    await emitter;
    await writer.end();
    await c.end();
    console.log(
      `[lag] ${messages} WAL-only messages in 2.5 s: replicas seen behind in ${behind} samples, worst lagMs ${worstLagMs}, ` +
        `node1 last commit ${Math.round(Number(replayAge[0].ms))} ms old; reads ${JSON.stringify([...counts])}`,
    );
    expect(behind).toBeGreaterThan(0);
    expect(Number(replayAge[0].ms)).toBeGreaterThan(LAG_LIMIT_MS);
    expect(worstLagMs).toBeLessThan(LAG_LIMIT_MS);
    expect(counts.get(port0) ?? 0).toBe(0);
    expect(counts.get(portA) ?? 0).toBeGreaterThan(30);
    expect(counts.get(portB) ?? 0).toBeGreaterThan(30);
  });

  it('re-runs reads elsewhere when a replica is stopped mid-stream: no client error', async () => {
    const proxy = msProxy;
    const CLIENTS = 4;
    const errors: string[] = [];
    const perPort = new Map<number, number>();
    const afterStop = new Map<number, number>();
    let stoppedAt = 0;
    let stop = false;
    const clients = await Promise.all(Array.from({ length: CLIENTS }, () => pgClient(proxy.port, { database: 'postgres' })));
    const notices: string[] = [];
    for (const c of clients) {
      c.on('error', (e) => errors.push(`client error event: ${e.message}`));
      c.on('notice', (n) => notices.push(`${n.severity} ${n.code}: ${n.message}`));
    }
    const retriesBefore = proxy.proxy.stats.readRetries;
    const loops = clients.map(async (c) => {
      while (!stop) {
        try {
          // A short sleep keeps reads in flight on node2 when it goes down.
          const r = await c.query('SELECT inet_server_port() AS port, pg_sleep(0.01)');
          const port = Number(r.rows[0].port);
          perPort.set(port, (perPort.get(port) ?? 0) + 1);
          if (stoppedAt > 0) afterStop.set(port, (afterStop.get(port) ?? 0) + 1);
        } catch (e) {
          errors.push((e as Error).message);
          return; // the connection is gone after a FATAL
        }
      }
    });
    // node2 is serving reads when it goes down.
    await waitFor(() => (perPort.get(portB) ?? 0) >= 50, 20_000, () => `reads on node2: ${JSON.stringify([...perPort])}`);
    await cluster.stopNode('node2', 'immediate');
    stoppedAt = Date.now();
    // Until the monitor has seen node2 down and reads went on elsewhere (or a client
    // failed): a fixed sleep is too short on a loaded machine.
    const node2State = () => proxy.proxy.monitor.snapshot().nodes.find((n) => n.name === nameOf(portB))?.state;
    await waitFor(() => ((afterStop.get(portA) ?? 0) > 20 && node2State() === 'down') || errors.length > 0, 20_000, () => `reads after the stop and node2 down (${node2State()})`);
    stop = true;
    await Promise.all(loops);
    const retries = proxy.proxy.stats.readRetries - retriesBefore;
    console.log(
      `[lag] replica stopped mid-stream: reads per port ${JSON.stringify([...perPort])}, after the stop ${JSON.stringify([...afterStop])}, ` +
        `re-run reads ${retries}, client errors ${errors.length}${errors.length ? ': ' + JSON.stringify(errors) : ''}, ` +
        `notices ${JSON.stringify(notices)}`,
    );
    expect(errors).toEqual([]);
    // Reads went on after the stop, on the remaining replica.
    expect(afterStop.get(portA) ?? 0).toBeGreaterThan(20);
    expect(node2State()).toBe('down');
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  });
});
