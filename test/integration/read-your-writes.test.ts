// Read-your-writes on a private cluster (primary node0 with read weight 0, replicas node1
// and node2) whose replicas have replay paused, so every replica read is stale:
//  - 'lsn': a client reading back its own insert never misses it (its reads wait for a
//    replica that replayed its commit, here: fall back to the primary), while another
//    client's reads still go to the replicas;
//  - 'off': the same read-back misses (the test above can fail);
//  - 'window': reads within the window after a write go to the primary, later ones not.
// Plus the cost per write of 'lsn' (one extra round trip on the primary) against 'off'.
//
// Replay is paused for seconds, so the shared cluster is left alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import type { Config } from '../../src/config/types.js';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { sleep, waitFor } from '../support/wait.js';

const PERIOD = 200;
const WINDOW_MS = 1000;


interface ReadBackResult {
  misses: number;
  /** Where the writer's read-backs ran. */
  readBackPorts: Map<number, number>;
  /** Where the other client's reads ran. */
  otherPorts: Map<number, number>;
}

/** One read statement that tells whether the row is there and where it ran. */
const readBackSql = (id: number) => `SELECT inet_server_port() AS port, EXISTS (SELECT 1 FROM ryw WHERE id = ${id}) AS found`;

const bump = (m: Map<number, number>, k: number) => m.set(k, (m.get(k) ?? 0) + 1);

/**
 * `iterations` times: the writer inserts a row and reads it back by id (single-statement
 * simple queries outside a transaction); another client reads in between.
 */
async function insertThenReadBack(proxyPort: number, iterations: number): Promise<ReadBackResult> {
  const writer = await pgClient(proxyPort, { database: 'postgres' });
  const other = await pgClient(proxyPort, { database: 'postgres' });
  const res: ReadBackResult = { misses: 0, readBackPorts: new Map(), otherPorts: new Map() };
  try {
    for (let i = 0; i < iterations; i++) {
      const ins = await writer.query(`INSERT INTO ryw (v) VALUES (${i}) RETURNING id`);
      const id = Number(ins.rows[0].id);
      const [back, o] = await Promise.all([writer.query(readBackSql(id)), other.query('SELECT inet_server_port() AS port')]);
      if (back.rows[0].found !== true) res.misses++;
      bump(res.readBackPorts, Number(back.rows[0].port));
      bump(res.otherPorts, Number(o.rows[0].port));
    }
  } finally {
    await writer.end();
    await other.end();
  }
  return res;
}

describe('read-your-writes (private cluster, replay paused on both replicas)', () => {
  let cluster: LocalCluster;
  let port0: number;
  let port1: number;
  let port2: number;
  const proxies: Partial<Record<'lsn' | 'off' | 'window', TestProxy>> = {};
  const proxyPort = (mode: 'lsn' | 'off' | 'window') => proxies[mode]!.port;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 2 });
    [port0, port1, port2] = cluster.nodes.map((n) => n.port) as [number, number, number];
    await cluster.query('node0', 'CREATE TABLE ryw (id bigserial PRIMARY KEY, v int)');
    // A role for the test whose read-back fails; created before replay stops, so it can log in on the replicas.
    await cluster.query('node0', 'CREATE ROLE ryw_app LOGIN; GRANT SELECT, INSERT ON ryw TO ryw_app; GRANT USAGE ON SEQUENCE ryw_id_seq TO ryw_app');
    await cluster.waitForStreaming();
    const base: Partial<Config> = {
      // node0 never gets reads on its own: a read there was sent by read-your-writes.
      nodes: cluster.nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 })),
      healthCheckPeriodMs: PERIOD,
      // No lag limits: paused replicas must stay in the rotation, so only read-your-writes
      // can keep a client's reads off them.
      maxLagBytes: null,
      maxLagMs: null,
      fallbackToPrimary: true,
      readYourWritesWindowMs: WINDOW_MS,
      poolSize: 4,
    };
    for (const mode of ['lsn', 'off', 'window'] as const) proxies[mode] = await startProxy({ ...base, readYourWrites: mode });
    // The table exists on both replicas before replay stops.
    for (const r of ['node1', 'node2']) {
      await waitFor(async () => (await cluster.query(r, "SELECT to_regclass('ryw') IS NOT NULL AS ok"))[0].ok === true, 10_000, () => `ryw on ${r}`);
      await cluster.query(r, 'SELECT pg_wal_replay_pause()');
    }
    for (const r of ['node1', 'node2']) {
      await waitFor(async () => (await cluster.query(r, 'SELECT pg_get_wal_replay_pause_state() AS s'))[0].s === 'paused', 10_000, () => `${r} replay paused`);
    }
  });

  afterAll(async () => {
    for (const p of Object.values(proxies)) await p?.close();
    await cluster?.stop();
  });

  it("'lsn': a client always reads its own insert back; other clients' reads stay on the replicas", async () => {
    const r = await insertThenReadBack(proxyPort('lsn'), 100);
    console.log(`[ryw] lsn: misses ${r.misses}/100; read-backs per port ${JSON.stringify([...r.readBackPorts])}; other client's reads ${JSON.stringify([...r.otherPorts])}`);
    expect(r.misses).toBe(0);
    expect(r.readBackPorts.get(port0)).toBe(100); // no replica has replayed the write
    expect(r.otherPorts.get(port0) ?? 0).toBe(0);
    expect(r.otherPorts.get(port1) ?? 0).toBeGreaterThan(20);
    expect(r.otherPorts.get(port2) ?? 0).toBeGreaterThan(20);
  });

  it("'off': the same read-back is stale (this is what 'lsn' prevents)", async () => {
    const r = await insertThenReadBack(proxyPort('off'), 100);
    console.log(`[ryw] off: misses ${r.misses}/100; read-backs per port ${JSON.stringify([...r.readBackPorts])}`);
    expect(r.misses).toBeGreaterThanOrEqual(1);
    expect(r.readBackPorts.get(port0) ?? 0).toBe(0);
  });

  it("'window': reads within the window after a write go to the primary, later ones to the replicas", async () => {
    const writer = await pgClient(proxyPort('window'), { database: 'postgres' });
    const other = await pgClient(proxyPort('window'), { database: 'postgres' });
    const inWindow = new Map<number, number>();
    const others = new Map<number, number>();
    let misses = 0;
    for (let i = 0; i < 20; i++) {
      const id = Number((await writer.query(`INSERT INTO ryw (v) VALUES (${i}) RETURNING id`)).rows[0].id);
      const back = await writer.query(readBackSql(id));
      if (back.rows[0].found !== true) misses++;
      bump(inWindow, Number(back.rows[0].port));
      bump(others, Number((await other.query('SELECT inet_server_port() AS port')).rows[0].port));
    }
    const id = Number((await writer.query(`INSERT INTO ryw (v) VALUES (-1) RETURNING id`)).rows[0].id);
    await sleep(WINDOW_MS + 300); // deliberate: the window must pass
    const late = (await writer.query(readBackSql(id))).rows[0];
    const latePort = Number(late.port);
    console.log(
      `[ryw] window ${WINDOW_MS} ms: misses ${misses}/20, read-backs per port ${JSON.stringify([...inWindow])}; other client ${JSON.stringify([...others])}; ` +
        `after the window: found=${late.found} on port ${latePort}`,
    );
    expect(misses).toBe(0);
    expect(inWindow.get(port0)).toBe(20);
    expect(others.get(port0) ?? 0).toBe(0);
    // After the window the client reads from (paused, stale) replicas again.
    expect([port1, port2]).toContain(latePort);
    expect(late.found).toBe(false);
    await writer.end();
    await other.end();
  });

  // Regression: a failed read-back (no position) left the client with no limit at all, so its
  // next read went to a stale replica. The read-back fails here because the client's role may
  // not call pg_current_wal_insert_lsn(); in production it is a backend that dies just after
  // the commit (seen when a primary was stopped right after a write).
  it("'lsn': when the write's position cannot be read back, the client's reads stay off the replicas", async () => {
    await cluster.query('node0', 'REVOKE EXECUTE ON FUNCTION pg_current_wal_insert_lsn() FROM PUBLIC');
    const writer = await pgClient(proxyPort('lsn'), { database: 'postgres', user: 'ryw_app' });
    const ports = new Map<number, number>();
    let misses = 0;
    try {
      for (let i = 0; i < 5; i++) {
        const id = Number((await writer.query(`INSERT INTO ryw (v) VALUES (${i}) RETURNING id`)).rows[0].id);
        const back = (await writer.query(readBackSql(id))).rows[0];
        if (back.found !== true) misses++;
        bump(ports, Number(back.port));
      }
    } finally {
      await writer.end();
      await cluster.query('node0', 'GRANT EXECUTE ON FUNCTION pg_current_wal_insert_lsn() TO PUBLIC');
    }
    console.log(`[ryw] lsn, position unreadable: misses ${misses}/5, per port ${JSON.stringify([...ports])}`);
    expect(misses).toBe(0);
    expect(ports.get(port0)).toBe(5);
  });

  it("'lsn': once a replica has replayed the write (and a poll saw it), the client's reads go to the replicas again", async () => {
    for (const r of ['node1', 'node2']) await cluster.query(r, 'SELECT pg_wal_replay_resume()');
    const writer = await pgClient(proxyPort('lsn'), { database: 'postgres' });
    const ports = new Map<number, number>();
    let misses = 0;
    const mon = proxies.lsn!.proxy.monitor;
    for (let i = 0; i < 10; i++) {
      const id = Number((await writer.query(`INSERT INTO ryw (v) VALUES (${i}) RETURNING id`)).rows[0].id);
      // Replayed at once; wait for a round begun after the write to record a replica caught up.
      const v = mon.snapshot().version;
      await waitFor(
        () => mon.snapshot().version >= v + 2 && mon.snapshot().nodes.some((n) => n.role === 'replica' && n.lagBytes === 0),
        20 * PERIOD,
        () => `a poll after write ${i} with a replica caught up`,
      );
      const back = (await writer.query(readBackSql(id))).rows[0];
      if (back.found !== true) misses++;
      bump(ports, Number(back.port));
    }
    console.log(`[ryw] lsn, replay running, read-back after a poll saw a replica caught up: misses ${misses}/10, per port ${JSON.stringify([...ports])}`);
    expect(misses).toBe(0);
    expect((ports.get(port1) ?? 0) + (ports.get(port2) ?? 0)).toBeGreaterThanOrEqual(8);
    await writer.end();
  });

  it("costs one round trip per write in 'lsn' mode (measured against 'off')", async () => {
    const N = 500;
    const time = async (c: pg.Client, n: number) => {
      const t = process.hrtime.bigint();
      for (let i = 0; i < n; i++) await c.query(`INSERT INTO ryw (v) VALUES (${i})`);
      return Number(process.hrtime.bigint() - t) / 1e6;
    };
    const off = await pgClient(proxyPort('off'), { database: 'postgres' });
    const lsn = await pgClient(proxyPort('lsn'), { database: 'postgres' });
    await time(off, 20); // warm-up: pools and backends
    await time(lsn, 20);
    // Interleaved halves, so drift in machine load hits both modes alike.
    let offMs = 0;
    let lsnMs = 0;
    for (let half = 0; half < 2; half++) {
      offMs += await time(off, N / 2);
      lsnMs += await time(lsn, N / 2);
    }
    const perOff = (offMs / N) * 1000;
    const perLsn = (lsnMs / N) * 1000;
    console.log(
      `[ryw] ${N} single-statement INSERTs: off ${offMs.toFixed(0)} ms (${perOff.toFixed(0)} µs/write), ` +
        `lsn ${lsnMs.toFixed(0)} ms (${perLsn.toFixed(0)} µs/write): +${(perLsn - perOff).toFixed(0)} µs per write (${((perLsn / perOff - 1) * 100).toFixed(0)} %)`,
    );
    expect(offMs).toBeGreaterThan(0);
    expect(lsnMs).toBeGreaterThan(0);
    await off.end();
    await lsn.end();
  });
});
