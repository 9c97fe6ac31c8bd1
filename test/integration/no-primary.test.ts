// No primary (private cluster: node0 primary, node1 replica; node0 stopped): new clients
// still log in (auth_query included) and read from the replica; a write waits
// failover_timeout and fails with 08006; read-your-writes clients never get data older
// than their last commit: `window` keeps their reads on the (missing) primary, `lsn` lets
// them read a replica that replayed their commit; when none has, the read waits for a primary
// (fallback_to_primary) and fails with 08006 after failover_timeout.
//
// Lag limits are off (max_lag_bytes / max_lag_ms null) on the proxies these tests use, so
// their assertions hold with or without the topology change of issue #12 (replicas stay
// eligible with no primary, lag measured against the most advanced replica). Only the last
// test, with the default lag limits, depends on that change.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { waitFor } from '../support/wait.js';

const PERIOD = 200;
const FAILOVER_TIMEOUT_MS = 1500;

type PgError = Error & { code?: string; hint?: string; detail?: string };

describe('no primary (private cluster)', () => {
  let cluster: LocalCluster;
  let lsnProxy: TestProxy;
  let windowProxy: TestProxy;
  /** Default lag limits (max_lag_ms 10 s). */
  let defaultsProxy: TestProxy;
  let replicaPort: number;
  const open: pg.Client[] = [];

  /** The ParameterStatus values each client was sent at login. */
  const loginParams = new Map<pg.Client, Map<string, string>>();
  const connect = async (proxy: TestProxy, user = 'app_md5', password = 'md5pass') => {
    const c = new pg.Client({ host: '127.0.0.1', port: proxy.port, user, password, database: 'postgres', connectionTimeoutMillis: 10_000 });
    const params = new Map<string, string>();
    (c as unknown as { connection: NodeJS.EventEmitter }).connection.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) =>
      params.set(m.parameterName, m.parameterValue),
    );
    c.on('error', () => {}); // a FATAL closes the connection; the query promise reports it
    await c.connect();
    loginParams.set(c, params);
    open.push(c);
    return c;
  };

  const failure = async (p: Promise<unknown>): Promise<PgError> => {
    try {
      await p;
    } catch (e) {
      return e as PgError;
    }
    throw new Error('expected the query to fail');
  };

  let lsnWriter: pg.Client;
  let windowWriter: pg.Client;
  /** Commits while the replica's replay is paused: no node has its write once node0 is gone. */
  let unreplayedWriter: pg.Client;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 1 });
    replicaPort = cluster.nodes[1]!.port;
    // app_md5 logs in with md5 (LocalCluster's pg_hba); pgmux learns its secret with auth_query.
    await cluster.query('node0', "SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD 'md5pass'");
    // reader first logs in with no primary: its secret is not in the auth_query cache yet.
    await cluster.query('node0', "SET password_encryption = 'md5'; CREATE ROLE reader LOGIN PASSWORD 'readerpw'");
    await cluster.query('node0', 'CREATE TABLE t (v text); GRANT SELECT, INSERT ON t TO app_md5, reader');
    const common = {
      nodes: cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: n.name === 'node0' ? 0 : 1 })),
      auth: 'md5' as const,
      authUser: 'postgres', // trusted by LocalCluster's pg_hba; reads pg_shadow
      healthCheckPeriodMs: PERIOD,
      healthCheckMaxRetries: 2,
      failoverTimeoutMs: FAILOVER_TIMEOUT_MS,
      maxLagBytes: null,
      maxLagMs: null,
      poolSize: 4,
    };
    lsnProxy = await startProxy({ ...common, readYourWrites: 'lsn' });
    windowProxy = await startProxy({ ...common, readYourWrites: 'window', readYourWritesWindowMs: 600_000 });
    const { maxLagBytes: _b, maxLagMs: _ms, ...withDefaultLimits } = common;
    defaultsProxy = await startProxy(withDefaultLimits);

    // Both writers commit while the primary is up.
    lsnWriter = await connect(lsnProxy);
    await lsnWriter.query("INSERT INTO t VALUES ('lsn-write')");
    windowWriter = await connect(windowProxy);
    await windowWriter.query("INSERT INTO t VALUES ('window-write')");
    await waitFor(
      async () => (await cluster.query('node1', 'SELECT count(*)::int AS n FROM t'))[0].n === 2,
      10_000,
      () => 'the replica replaying both writes',
    );
    await cluster.query('node1', 'SELECT pg_wal_replay_pause()');
    await waitFor(
      async () => (await cluster.query('node1', 'SELECT pg_get_wal_replay_pause_state() AS s'))[0].s === 'paused',
      10_000,
      () => 'replay paused on node1',
    );
    unreplayedWriter = await connect(lsnProxy);
    await unreplayedWriter.query("INSERT INTO t VALUES ('unreplayed')");

    await cluster.stopNode('node0', 'immediate');
    for (const p of [lsnProxy, windowProxy, defaultsProxy]) {
      await waitFor(
        () => p.proxy.topology().primary === null && p.proxy.topology().nodes[1]!.state === 'up',
        10_000,
        () => `no primary, replica up: ${JSON.stringify(p.proxy.topology().nodes.map((n) => [n.name, n.role, n.state]))}`,
      );
    }
  });

  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await lsnProxy?.close();
    await windowProxy?.close();
    await defaultsProxy?.close();
    await cluster?.stop();
  });

  it('a new client logs in (auth_query on the replica) and reads from the replica', async () => {
    const lookupsBefore = lsnProxy.proxy.authQueryLookups;
    const t0 = Date.now();
    const c = await connect(lsnProxy, 'reader', 'readerpw');
    const tookMs = Date.now() - t0;
    expect(lsnProxy.proxy.authQueryLookups).toBe(lookupsBefore + 1); // auth_query ran, on the only node up
    expect(tookMs).toBeLessThan(FAILOVER_TIMEOUT_MS); // did not wait for a primary
    const r = await c.query('SELECT inet_server_port() AS port, pg_is_in_recovery() AS rec, current_user AS u');
    expect(r.rows[0]).toEqual({ port: replicaPort, rec: true, u: 'reader' });
    expect((await c.query('SELECT v FROM t ORDER BY v')).rows.map((x) => x.v)).toEqual(['lsn-write', 'window-write']);
    // pgmux takes writes: the login through a replica does not say "standby".
    expect(loginParams.get(c)!.get('server_version')).toMatch(/^\d+/);
    expect(loginParams.get(c)!.get('in_hot_standby')).toBe('off');
  });

  it('a wrong password through auth_query on the replica is still refused (28P01)', async () => {
    const e = await failure(pgClient(lsnProxy.port, { user: 'reader', password: 'nope', database: 'postgres' }));
    expect(e.code).toBe('28P01');
  });

  it('a write waits failover_timeout, then fails with 08006 saying what to do', async () => {
    const c = await connect(lsnProxy);
    const t0 = Date.now();
    const e = await failure(c.query("INSERT INTO t VALUES ('lost')"));
    const waited = Date.now() - t0;
    expect(e.code).toBe('08006');
    expect(e.message).toBe('no primary node available');
    expect(e.detail).toMatch(/failover_timeout \(1500 ms\)/);
    expect(e.hint).toMatch(/promoted/);
    expect(waited).toBeGreaterThanOrEqual(FAILOVER_TIMEOUT_MS - 50);
    expect(waited).toBeLessThan(FAILOVER_TIMEOUT_MS + 3000);
  });

  it('read_your_writes=lsn: the writer reads its commit from a replica that replayed it', async () => {
    const r = await lsnWriter.query("SELECT inet_server_port() AS port, count(*)::int AS n FROM t WHERE v = 'lsn-write'");
    expect(r.rows[0]).toEqual({ port: replicaPort, n: 1 });
  });

  it('read_your_writes=lsn: a writer whose commit no replica has replayed waits for a primary and fails, never served older data', async () => {
    const t0 = Date.now();
    const e = await failure(unreplayedWriter.query('SELECT v FROM t'));
    const waited = Date.now() - t0;
    expect(e.code).toBe('08006');
    expect(e.message).toBe('no primary node available');
    expect(e.detail).toMatch(/a read no replica can serve yet/);
    expect(waited).toBeGreaterThanOrEqual(FAILOVER_TIMEOUT_MS - 50);
  });

  it('read_your_writes=window: a read inside the window waits like a write and fails; other clients read', async () => {
    const t0 = Date.now();
    const e = await failure(windowWriter.query('SELECT v FROM t'));
    const waited = Date.now() - t0;
    expect(e.code).toBe('08006');
    expect(waited).toBeGreaterThanOrEqual(FAILOVER_TIMEOUT_MS - 50);
    const other = await connect(windowProxy);
    const r = await other.query('SELECT inet_server_port() AS port');
    expect(r.rows[0].port).toBe(replicaPort);
  });

  // Needs the topology change (merged from i12-topo): before it, with a lag limit set, every
  // replica counted as lagging while there was no primary and this read failed with 08006.
  it('with the default lag limits a new client logs in and reads from the replica', async () => {
    const c = await connect(defaultsProxy, 'reader', 'readerpw');
    const r = await c.query('SELECT inet_server_port() AS port, count(*)::int AS n FROM t');
    expect(r.rows[0]).toEqual({ port: replicaPort, n: 2 });
  });
});
