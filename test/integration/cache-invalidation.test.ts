// The query cache's coherence layer (src/cache/invalidationBus.ts) against real PostgreSQL:
// invalidations published by one instance reach the others through NOTIFY on the primary, a
// lost listener reconnects (to the new primary after a failover) and reports the gap, and the
// triggers of `pgmux cache install-triggers` make direct writes on the primary invalidate too.

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import type pg from 'pg';
import { InvalidationBus, primaryBusConnector, type BusConnector } from '../../src/cache/invalidationBus.js';
import { healthCheckLogin } from '../../src/cluster/healthCheckLogin.js';
import { testConfig } from '../support/pgmux.js';
import { BackendConnection } from '../../src/pool/backend.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { main } from '../../src/cli.js';
import { createServer, connect as tcpConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { pgClient, primaryPort, replicaPorts } from '../support/cluster.js';
import { sleep, waitFor } from '../support/wait.js';

const logger = pino({ level: 'silent' });

/** What a bus told its cache. */
class Recorder {
  readonly invalidations: Array<{ database: string; tables: readonly string[]; at: number }> = [];
  gaps = 0;
  readonly handler = {
    onInvalidate: (database: string, tables: readonly string[]) => void this.invalidations.push({ database, tables: [...tables], at: performance.now() }),
    onGap: () => void this.gaps++,
  };
  tables(): string[] {
    return this.invalidations.flatMap((i) => i.tables);
  }
}

function connectorTo(port: () => number): BusConnector {
  return (database) =>
    BackendConnection.connect({
      node: { host: '127.0.0.1', port: port(), name: `127.0.0.1:${port()}` },
      user: 'postgres',
      database,
      credentials: {},
      connectTimeoutMs: 2000,
    });
}

const buses: InvalidationBus[] = [];
function newBus(connect: BusConnector, heartbeatMs?: number): { bus: InvalidationBus; rec: Recorder } {
  const rec = new Recorder();
  const bus = new InvalidationBus(connect, rec.handler, logger, heartbeatMs);
  buses.push(bus);
  return { bus, rec };
}

async function listening(bus: InvalidationBus, database: string, timeoutMs = 5000): Promise<void> {
  await waitFor(() => bus.ready(database), timeoutMs, () => `bus listening on ${database}`);
}

afterEach(() => {
  for (const b of buses.splice(0)) b.close();
});

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

describe('invalidation bus on the harness primary', () => {
  const connect = connectorTo(primaryPort);

  it('publishes made while one is on the wire go out as one NOTIFY, duplicates merged, and every table arrives', async () => {
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
    a.bus.publish('app', ['first']);
    for (let i = 0; i < 50; i++) a.bus.publish('app', ['hot']);
    a.bus.publish('app', ['last', 'other']);
    await waitFor(() => ['first', 'hot', 'last', 'other'].every((t) => b.rec.tables().includes(t)), 2000, () => 'B hears every table');
    await sleep(200);
    expect(b.rec.tables().filter((t) => t === 'hot')).toEqual(['hot']);
    // 52 publishes: the first alone, the 51 queued behind it in one statement (2 payloads after merging).
    expect(b.rec.invalidations.length).toBe(3);
    expect(a.bus.stats()[0]).toMatchObject({ published: 52 });
  });

  it('a publish from A reaches B, not A, within 1 s; notify latency measured', async () => {
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);

    const t0 = performance.now();
    a.bus.publish('app', ['public.orders', 'public.items']);
    await waitFor(() => b.rec.invalidations.length > 0, 1000, () => 'B hears A');
    expect(b.rec.invalidations[0]).toMatchObject({ database: 'app', tables: ['public.orders', 'public.items'] });
    expect(b.rec.invalidations[0]!.at - t0).toBeLessThan(1000);
    a.bus.publish('app', '*');
    await waitFor(() => b.rec.invalidations.length > 1, 1000, () => 'B hears the whole-database message');
    expect(b.rec.invalidations[1]!.tables).toEqual(['*']);
    await sleep(200);
    expect(a.rec.invalidations).toEqual([]); // its own messages come back to A and are dropped
    expect(a.rec.gaps + b.rec.gaps).toBe(0);

    // Latency: publish -> delivered to the other instance, one at a time.
    const samples: number[] = [];
    for (let i = 0; i < 200; i++) {
      const n = b.rec.invalidations.length;
      const start = performance.now();
      a.bus.publish('app', [`public.t${i}`]);
      await waitFor(() => b.rec.invalidations.length > n, 1000, () => `message ${i}`);
      samples.push(b.rec.invalidations[n]!.at - start);
    }
    console.log(`notify latency A->B over 200 publishes: p50 ${percentile(samples, 50).toFixed(2)} ms, p99 ${percentile(samples, 99).toFixed(2)} ms, max ${Math.max(...samples).toFixed(2)} ms`);
    expect(percentile(samples, 50)).toBeLessThan(100);
  });

  it('splits a publish above the NOTIFY payload limit into several messages, losing no table', async () => {
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
    const tables = Array.from({ length: 1000 }, (_, i) => `some_schema.a_rather_long_table_name_${i}`); // ~45 KB of JSON
    a.bus.publish('app', tables);
    await waitFor(() => b.rec.tables().length >= tables.length, 2000, () => `${b.rec.tables().length} of ${tables.length} tables`);
    expect(b.rec.invalidations.length).toBeGreaterThan(5);
    expect(b.rec.tables()).toEqual(tables);
  });

  it('reconnects after its listener backend is terminated and reports the gap', async () => {
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
    const pid = a.bus.stats()[0]!.pid!;
    const admin = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      expect((await admin.query('SELECT pg_terminate_backend($1) AS ok', [pid])).rows[0].ok).toBe(true);
    } finally {
      await admin.end();
    }
    // The loss clears at once (entries may be stale from now on) and again once LISTEN is back.
    await waitFor(() => a.rec.gaps >= 1, 2000, () => 'gap reported on loss');
    await waitFor(() => a.bus.ready('app') && a.bus.stats()[0]!.pid !== pid, 5000, () => 'listening again on a new backend');
    expect(a.rec.gaps).toBe(2);
    expect(a.bus.stats()[0]!.reconnects).toBe(1);
    b.bus.publish('app', ['public.after_reconnect']);
    await waitFor(() => a.rec.tables().includes('public.after_reconnect'), 1000, () => 'A hears B after reconnecting');
    expect(b.rec.gaps).toBe(0);
  });

  it('a publish made while the connection is down is sent once it is back', async () => {
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
    const pid = a.bus.stats()[0]!.pid!;
    const admin = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    } finally {
      await admin.end();
    }
    await waitFor(() => !a.bus.ready('app'), 2000, () => 'A notices the loss');
    a.bus.publish('app', ['public.written_while_away']);
    await waitFor(() => b.rec.tables().includes('public.written_while_away'), 5000, () => 'B hears the queued publish');
  });

  it("primaryBusConnector: the topology's primary, the health checks' login, the cached database", async () => {
    const cfg = testConfig({ healthCheckUser: null }); // the default login: postgres
    let primaryCalls = 0;
    const connector = primaryBusConnector({
      primary: async () => (primaryCalls++, { host: '127.0.0.1', port: primaryPort(), name: `127.0.0.1:${primaryPort()}` }),
      login: () => healthCheckLogin(cfg, new Map()),
      config: () => cfg,
    });
    const a = newBus(connector);
    const b = newBus(connectorTo(primaryPort));
    await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
    expect(primaryCalls).toBe(1);
    const admin = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      const r = await admin.query('SELECT usename, datname FROM pg_stat_activity WHERE pid = $1', [a.bus.stats()[0]!.pid]);
      expect(r.rows).toEqual([{ usename: 'postgres', datname: 'app' }]);
    } finally {
      await admin.end();
    }
    b.bus.publish('app', ['public.y']);
    await waitFor(() => a.rec.tables().includes('public.y'), 1000, () => 'A hears B');
    const none = newBus(primaryBusConnector({ primary: async () => null, login: () => healthCheckLogin(cfg, new Map()), config: () => ({ ...cfg, failoverTimeoutMs: 10 }) }));
    await sleep(300);
    expect(none.bus.ready('app')).toBe(false);
  });

  it('primaryChanged to another node drops the listener, which reconnects with a gap', async () => {
    const a = newBus(connect);
    await listening(a.bus, 'app');
    a.bus.primaryChanged(`127.0.0.1:${primaryPort()}`); // the node it is on: nothing happens
    await sleep(100);
    expect(a.rec.gaps).toBe(0);
    a.bus.primaryChanged('127.0.0.1:1');
    await waitFor(() => a.rec.gaps >= 2 && a.bus.ready('app'), 5000, () => 'reconnected after the primary moved');
  });
});

/** Forwards to the primary until frozen: then nothing passes either way and nothing closes (a hung node). */
class FreezingProxy {
  frozen = false;
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}
  static async start(upstreamPort: number): Promise<FreezingProxy> {
    let self: FreezingProxy | null = null;
    const server = createServer((client) => {
      const upstream = tcpConnect(upstreamPort, '127.0.0.1');
      for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
        self!.sockets.add(from);
        from.on('data', (d) => void (self!.frozen || to.write(d)));
        from.on('error', () => {});
        from.on('close', () => to.destroy());
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new FreezingProxy(server, (server.address() as AddressInfo).port);
    return self;
  }
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('invalidation bus: a listener that cannot hear', () => {
  it('drops a connection that stops answering (heartbeat) and listens again with a gap', async () => {
    const proxy = await FreezingProxy.start(primaryPort());
    try {
      const a = newBus(connectorTo(() => (proxy.frozen ? primaryPort() : proxy.port)), 200);
      const b = newBus(connectorTo(primaryPort));
      await Promise.all([listening(a.bus, 'app'), listening(b.bus, 'app')]);
      expect(a.bus.stats()[0]!.node).toBe(`127.0.0.1:${proxy.port}`);
      proxy.frozen = true;
      await waitFor(() => a.rec.gaps >= 1, 3000, () => 'the hung listener dropped');
      await waitFor(() => a.bus.ready('app'), 3000, () => 'listening again');
      expect(a.bus.stats()[0]!.node).toBe(`127.0.0.1:${primaryPort()}`);
      expect(a.rec.gaps).toBe(2);
      b.bus.publish('app', ['public.after_hang']);
      await waitFor(() => a.rec.tables().includes('public.after_hang'), 1000, () => 'A hears B again');
    } finally {
      await proxy.close();
    }
  });

  it('is not ready on a standby (LISTEN refused there) and moves on to the primary', async () => {
    let calls = 0;
    const onStandbyFirst = connectorTo(() => (calls++ === 0 ? replicaPorts()[0]! : primaryPort()));
    const a = newBus(onStandbyFirst);
    const b = newBus(connectorTo(primaryPort));
    await listening(b.bus, 'app');
    expect(a.bus.ready('app')).toBe(false);
    await listening(a.bus, 'app');
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(a.bus.stats()[0]!.node).toBe(`127.0.0.1:${primaryPort()}`);
    b.bus.publish('app', ['public.x']);
    await waitFor(() => a.rec.tables().includes('public.x'), 1000, () => 'A hears B');
  });
});

describe('triggers mode: writes made directly on the primary', () => {
  const DB = 'qsync_triggers';
  const ROLE = 'qsync_plain_user';
  const dsn = () => `postgres://postgres@127.0.0.1:${primaryPort()}/${DB}`;
  let admin: pg.Client;
  let direct: pg.Client;
  const cli = async (...args: string[]) => {
    let out = '';
    let err = '';
    const code = await main(['cache', 'install-triggers', '--dsn', dsn(), ...args], { out: (s: string) => void (out += s), err: (s: string) => void (err += s) } as never);
    return { code, out, err };
  };

  beforeAll(async () => {
    admin = await pgClient(primaryPort(), { database: 'postgres' });
    await admin.query(`DROP DATABASE IF EXISTS ${DB}`);
    await admin.query(`CREATE DATABASE ${DB}`);
    await admin.query(`DROP ROLE IF EXISTS ${ROLE}`);
    await admin.query(`CREATE ROLE ${ROLE} LOGIN`);
    direct = await pgClient(primaryPort(), { database: DB });
    await direct.query('CREATE TABLE t1 (id int, v text)');
    await direct.query('CREATE SCHEMA s2; CREATE TABLE s2."Mixed" (id int)');
    await direct.query('CREATE TABLE parted (id int) PARTITION BY RANGE (id); CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)');
  });

  afterAll(async () => {
    await direct?.end();
    await admin?.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
    await admin?.query(`DROP ROLE IF EXISTS ${ROLE}`);
    await admin?.end();
  });

  const count = async (sql: string) => ((await direct.query(sql)).rows[0] as { n: number }).n;

  it('install is idempotent; INSERT, TRUNCATE, ALTER TABLE and a new table reach a bus; uninstall leaves no pgmux_ object', async () => {
    const first = await cli();
    expect(first).toMatchObject({ code: 0, err: '' });
    expect(first.out).toMatch(/installed in qsync_triggers: 4 tables/);
    expect((await cli()).code).toBe(0);
    expect(await count("SELECT count(*)::int AS n FROM pg_trigger WHERE tgname = 'pgmux_cache_invalidate'")).toBe(4); // t1, s2.Mixed, parted, parted_1: once each

    const { bus, rec } = newBus(connectorTo(primaryPort));
    await listening(bus, DB);
    const until = async (what: string, fn: () => boolean) => waitFor(fn, 1000, () => `${what}; got ${JSON.stringify(rec.invalidations.map((i) => i.tables))}`);

    const t0 = performance.now();
    await direct.query("INSERT INTO t1 VALUES (1, 'a')");
    await until('INSERT', () => rec.tables().includes('public.t1'));
    const insertLatencyMs = rec.invalidations.at(-1)!.at - t0;
    expect(rec.invalidations.every((i) => i.database === DB)).toBe(true);

    rec.invalidations.length = 0;
    await direct.query('TRUNCATE t1');
    await until('TRUNCATE', () => rec.tables().includes('public.t1'));

    rec.invalidations.length = 0;
    await direct.query('UPDATE s2."Mixed" SET id = 2');
    await until('UPDATE of a quoted name', () => rec.tables().includes('s2.mixed'));

    // A write aimed at a partition also names its parent (a cached read names the parent).
    rec.invalidations.length = 0;
    await direct.query('INSERT INTO parted_1 VALUES (5)');
    await until('INSERT into a partition', () => rec.tables().includes('public.parted') && rec.tables().includes('public.parted_1'));

    // Nothing notifies inside a transaction that rolls back.
    rec.invalidations.length = 0;
    await direct.query("BEGIN; INSERT INTO t1 VALUES (2, 'b'); ROLLBACK");
    await sleep(200);
    expect(rec.invalidations).toEqual([]);

    await direct.query('ALTER TABLE t1 ADD COLUMN w int');
    await until('ALTER TABLE', () => rec.tables().includes('*'));

    // A table created after the install gets the trigger from the event trigger.
    await direct.query('CREATE TABLE t_new (id int)');
    rec.invalidations.length = 0;
    await direct.query('INSERT INTO t_new VALUES (1)');
    await until('INSERT into a table created later', () => rec.tables().includes('public.t_new'));
    console.log(`trigger latency (INSERT on the primary -> bus): ${insertLatencyMs.toFixed(2)} ms`);

    // A temporary table changes no one else's results: no whole-database invalidation.
    rec.invalidations.length = 0;
    await direct.query('CREATE TEMP TABLE scratch (id int); INSERT INTO scratch VALUES (1)');
    await sleep(200);
    expect(rec.invalidations).toEqual([]);

    // A user who may create tables, but owns no other: its CREATE TABLE must not fail because
    // some other table lacks the trigger (the event trigger touches only what was created).
    await direct.query('DROP TRIGGER pgmux_cache_invalidate ON t1');
    await direct.query(`CREATE SCHEMA app_own AUTHORIZATION ${ROLE}`);
    const asRole = await pgClient(primaryPort(), { database: DB, user: ROLE });
    try {
      await asRole.query('CREATE TABLE app_own.mine (id int)');
      rec.invalidations.length = 0;
      await asRole.query('INSERT INTO app_own.mine VALUES (1)');
      await until("INSERT into a table a plain user created", () => rec.tables().includes('app_own.mine'));
    } finally {
      await asRole.end();
    }
    // Installing again puts t1's trigger back: t1, s2.Mixed, parted, parted_1, t_new, app_own.mine (not the temp table).
    expect((await cli()).out).toMatch(/: 6 tables\n$/);

    const removed = await cli('--uninstall');
    expect(removed).toMatchObject({ code: 0, out: 'pgmux cache triggers removed from qsync_triggers\n' });
    expect(await count("SELECT count(*)::int AS n FROM pg_proc WHERE proname LIKE 'pgmux%'")).toBe(0);
    expect(await count("SELECT count(*)::int AS n FROM pg_trigger WHERE tgname LIKE 'pgmux%'")).toBe(0);
    expect(await count("SELECT count(*)::int AS n FROM pg_event_trigger WHERE evtname LIKE 'pgmux%'")).toBe(0);
    expect((await cli('--uninstall')).code).toBe(0); // idempotent too

    rec.invalidations.length = 0;
    await direct.query("INSERT INTO t1 VALUES (3, 'c'); CREATE TABLE t_after (id int)");
    await sleep(300);
    expect(rec.invalidations).toEqual([]);
  });

  it('without --dsn: the configured node that is not in recovery, with the health checks\' login', async () => {
    const nodes = `127.0.0.1:${replicaPorts()[0]},127.0.0.1:${primaryPort()}`; // a standby first
    let out = '';
    const run = (...args: string[]) => main(['cache', 'install-triggers', '--database', DB, ...args], { out: (s: string) => void (out += s), err: () => {}, env: { PGMUX_NODES: nodes } } as never);
    expect(await run()).toBe(0);
    expect(out).toMatch(/installed in qsync_triggers: \d+ tables/);
    expect(await count("SELECT count(*)::int AS n FROM pg_event_trigger WHERE evtname = 'pgmux_cache_ddl'")).toBe(1);
    expect(await run('--uninstall')).toBe(0);
    expect(await count("SELECT count(*)::int AS n FROM pg_proc WHERE proname LIKE 'pgmux%'")).toBe(0);
  });

  it('install-triggers without --database or --dsn is a usage error', async () => {
    let err = '';
    const code = await main(['cache', 'install-triggers'], { err: (s: string) => void (err += s), env: {} } as never);
    expect(code).toBe(2);
    expect(err).toMatch(/--database/);
  });
});

describe('invalidation bus across a failover (private cluster)', () => {
  let cluster: LocalCluster;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 1 });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('listens on the new primary after node0 is stopped and node1 promoted, and reports the gap', async () => {
    // As pgmux's connector does: whichever node is the primary now.
    const connect: BusConnector = async (database) => {
      for (const n of cluster.nodes) {
        let b: BackendConnection;
        try {
          b = await BackendConnection.connect({ node: { host: n.host, port: n.port, name: `${n.host}:${n.port}` }, user: 'postgres', database, credentials: {}, connectTimeoutMs: 1000 });
        } catch {
          continue;
        }
        const row = await b.queryRow('SELECT pg_is_in_recovery()');
        if (row?.[0] === 'f') return b;
        b.close('shutdown');
      }
      throw new Error('no primary');
    };
    const a = newBus(connect);
    const b = newBus(connect);
    await Promise.all([listening(a.bus, 'postgres'), listening(b.bus, 'postgres')]);
    const [node0, node1] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0]];
    expect(a.bus.stats()[0]!.node).toBe(`${node0.host}:${node0.port}`);

    await cluster.stopNode('node0', 'immediate');
    await waitFor(() => !a.bus.ready('postgres'), 5000, () => 'A notices the loss');
    await cluster.promote('node1');
    await waitFor(() => a.bus.ready('postgres') && b.bus.ready('postgres'), 15_000, () => 'listening on the new primary');
    expect(a.bus.stats()[0]!.node).toBe(`${node1.host}:${node1.port}`);
    expect(a.rec.gaps).toBe(2);
    b.bus.publish('postgres', ['public.after_failover']);
    await waitFor(() => a.rec.tables().includes('public.after_failover'), 1000, () => 'A hears B on the new primary');
  });
});
