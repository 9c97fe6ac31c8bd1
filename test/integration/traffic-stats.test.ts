// Traffic totals per (database, user) after a known workload: simple and extended protocol,
// a transaction block, errors of class 42 and 22, a pipelined batch, a client that leaves
// mid-query, client wait; the same numbers in /metrics with their labels; and the bound on
// distinct pairs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TrafficTotals } from '../../src/admin/view.js';
import { pgClient, primaryPort, replicaPorts, waitUntilRunning } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { pipelineLimits } from '../../src/pool/pipeline.js';
import { bindMsg, executeMsg, parseMsg, queryMsg, RawClient, syncMsg } from '../support/rawClient.js';
import { parseExposition, value } from '../support/exposition.js';
import { sleep, waitFor } from '../support/wait.js';

const USERS = ['stats_alice', 'stats_bob', 'stats_carol', 'stats_dave', 'stats_erin'];

async function createRoles(): Promise<void> {
  const p = await pgClient(primaryPort(), { database: 'postgres' });
  try {
    for (const u of USERS) await p.query(`DO $$ BEGIN CREATE ROLE ${u} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
    await p.query(`GRANT ALL ON SCHEMA public TO ${USERS.join(', ')}`);
  } finally {
    await p.end();
  }
  // Reads go to replicas: the roles must be there too.
  for (const port of replicaPorts()) {
    const r = await pgClient(port, { database: 'postgres' });
    try {
      await waitFor(async () => (await r.query('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ANY($1)', [USERS])).rows[0].n === USERS.length, 10_000, () => `roles on replica ${port}`);
    } finally {
      await r.end();
    }
  }
}

describe('traffic totals per (database, user)', () => {
  let proxy: TestProxy;
  const totals = (database: string, user: string): TrafficTotals | undefined => proxy.proxy.trafficTotals().find((t) => t.database === database && t.user === user);

  beforeAll(async () => {
    await createRoles();
    proxy = await startProxy({ http: { host: '127.0.0.1', port: 0 }, poolSize: 1 });
    await waitFor(() => proxy.proxy.topology().nodes.every((n) => n.state === 'up'), 20_000, () => 'cluster up');
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('counts requests, transactions, parses, binds, errors and times of a known workload', async () => {
    const c = await RawClient.login(proxy.port, { user: 'stats_alice', database: 'app' });
    try {
      // Simple protocol: 3 statements outside a transaction.
      for (let i = 0; i < 3; i++) await c.query('SELECT 1');
      // A transaction block: 4 requests, 1 transaction, one of them slow.
      await c.query('BEGIN');
      await c.query('SELECT pg_sleep(0.2)');
      await c.query('SELECT 2');
      await c.query('COMMIT');
      // Errors: 42P01 (class 42) and 22012 (class 22).
      await c.query('SELECT * FROM stats_no_such_table');
      await c.query('SELECT 1/0');
      // Extended protocol: a named statement prepared and bound twice, one request each.
      c.send(Buffer.concat([parseMsg('s1', 'SELECT $1::int'), bindMsg('', 's1', ['7']), executeMsg(), syncMsg()]));
      await c.readUntil('Z');
      c.send(Buffer.concat([bindMsg('', 's1', ['8']), executeMsg(), syncMsg()]));
      await c.readUntil('Z');
      // A pipelined batch: three unnamed Parse/Bind/Execute/Sync in one write.
      c.send(Buffer.concat([0, 1, 2].flatMap((i) => [parseMsg('', `SELECT ${i}`), bindMsg('', ''), executeMsg(), syncMsg()])));
      for (let i = 0; i < 3; i++) await c.readUntil('Z');
    } finally {
      c.end();
    }

    const t = totals('app', 'stats_alice')!;
    expect(t).toBeDefined();
    // 3 + 4 + 2 errors + 2 extended + 3 pipelined.
    expect(t.queries).toBe(14);
    // 3 + 1 block + 2 errors + 2 extended + 3 pipelined.
    expect(t.xacts).toBe(11);
    expect(t.clientParses).toBe(4);
    expect(t.binds).toBe(5);
    expect(t.serverParses).toBeGreaterThanOrEqual(4);
    expect(Object.fromEntries(t.errorsByClass)).toEqual({ '42': 1, '22': 1 });
    expect(t.serverAssignments).toBeGreaterThanOrEqual(1);
    expect(t.serverAssignments).toBeLessThanOrEqual(t.xacts);
    expect(t.queryTimeUs).toBeGreaterThanOrEqual(200_000);
    expect(t.xactTimeUs).toBeGreaterThanOrEqual(200_000);
    expect(t.queryTimeUs).toBeLessThan(10_000_000);
    expect(t.bytesReceived).toBeGreaterThan(0);
    expect(t.bytesSent).toBeGreaterThan(t.bytesReceived);
    // Another pair of the same database is counted apart.
    const b = await RawClient.login(proxy.port, { user: 'stats_bob', database: 'app' });
    await b.query('SELECT 1');
    b.end();
    expect(totals('app', 'stats_bob')!.queries).toBe(1);
    expect(totals('app', 'stats_alice')!.queries).toBe(14);
  });

  it('counts the wait for a backend of a full pool', async () => {
    // pool_size 1: the second transaction on the primary waits for the first one's end.
    const holder = await RawClient.login(proxy.port, { user: 'stats_carol', database: 'app' });
    const waiter = await RawClient.login(proxy.port, { user: 'stats_carol', database: 'app' });
    try {
      await holder.query('BEGIN');
      const waited = waiter.query('BEGIN');
      await sleep(300);
      await holder.query('COMMIT');
      await waited;
      await waiter.query('COMMIT');
    } finally {
      holder.end();
      waiter.end();
    }
    const t = totals('app', 'stats_carol')!;
    expect(t.xacts).toBe(2);
    expect(t.waitTimeUs).toBeGreaterThanOrEqual(250_000);
    expect(t.waitTimeUs).toBeLessThan(10_000_000);
  });

  it('keeps the pair of a client that left mid-query, counting nothing for the unanswered query', async () => {
    const c = await RawClient.login(proxy.port, { user: 'stats_dave', database: 'app' });
    const sql = 'SELECT pg_sleep(5) AS stats_mid_query';
    c.send(queryMsg(sql));
    await waitUntilRunning(sql);
    c.destroy();
    await waitFor(() => !proxy.proxy.clients().some((x) => x.user === 'stats_dave'), 5_000, () => 'client gone');
    const t = totals('app', 'stats_dave')!;
    expect(t).toBeDefined();
    expect(t.queries).toBe(0);
    expect(t.xacts).toBe(0);
    expect(t.queryTimeUs).toBe(0);
    expect(t.serverAssignments).toBe(1);
    // The pair goes on counting for its next client, from zero time.
    const again = await RawClient.login(proxy.port, { user: 'stats_dave', database: 'app' });
    await again.query('SELECT 1');
    again.end();
    const after = totals('app', 'stats_dave')!;
    expect(after.queries).toBe(1);
    expect(after.queryTimeUs).toBeLessThan(1_000_000);
  });

  it('exposes the totals in /metrics with database and user labels', async () => {
    const res = await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`);
    const e = parseExposition(await res.text());
    const alice = { database: 'app', user: 'stats_alice' };
    const t = totals('app', 'stats_alice')!;
    expect(value(e, 'pgmux_queries_total', alice)).toBe(t.queries);
    expect(value(e, 'pgmux_transactions_total', alice)).toBe(t.xacts);
    expect(value(e, 'pgmux_client_errors_total', { ...alice, sqlstate_class: '42' })).toBe(1);
    expect(value(e, 'pgmux_client_errors_total', { ...alice, sqlstate_class: '22' })).toBe(1);
    expect(value(e, 'pgmux_query_duration_seconds_count', alice)).toBe(t.queries);
    expect(value(e, 'pgmux_query_duration_seconds_sum', alice)).toBeCloseTo(t.queryTimeUs / 1e6, 3);
    expect(value(e, 'pgmux_transaction_duration_seconds_count', alice)).toBe(t.xacts);
    // The slow query is above 0.1 s, the rest of them (on loopback) are not all.
    expect(value(e, 'pgmux_query_duration_seconds_bucket', { ...alice, le: '0.1' })).toBeLessThan(t.queries);
    expect(value(e, 'pgmux_query_duration_seconds_bucket', { ...alice, le: '+Inf' })).toBe(t.queries);
    const carol = { database: 'app', user: 'stats_carol' };
    expect(value(e, 'pgmux_client_wait_seconds_count', carol)).toBe(2);
    expect(value(e, 'pgmux_client_wait_seconds_bucket', { ...carol, le: '0.1' })).toBeLessThan(2);
    expect(value(e, 'pgmux_server_parses_total', alice)).toBe(t.serverParses);
    expect(value(e, 'pgmux_build_info', { version: proxy.proxy.version, node_version: process.version })).toBe(1);
    const primary = proxy.proxy.topology().primary!.name;
    expect(value(e, 'pgmux_pool_backends', { node: primary, ...carol, state: 'idle' })).toBe(1);
    expect(value(e, 'pgmux_pool_waiting_clients', { node: primary, ...carol })).toBe(0);
  });

  it('folds pairs beyond the bound into (other) and counts the folds', async () => {
    const known = proxy.proxy.trafficTotals().length;
    proxy.proxy.traffic.maxPairs = known + 1;
    const logins: Array<[string, string]> = [
      ['app', 'stats_erin'], // the last pair with its own record
      ['postgres', 'stats_erin'], // folded
      ['postgres', 'stats_bob'], // folded
    ];
    for (const [database, user] of logins) {
      const c = await RawClient.login(proxy.port, { user, database });
      await c.query('SELECT 1');
      c.end();
    }
    const all = proxy.proxy.trafficTotals();
    expect(all.length).toBe(known + 2);
    expect(totals('app', 'stats_erin')!.queries).toBe(1);
    expect(totals('postgres', 'stats_erin')).toBeUndefined();
    expect(totals('(other)', '(other)')!.queries).toBe(2);
    expect(proxy.proxy.traffic.folds).toBe(2);
    // A known pair keeps its own record.
    const a = await RawClient.login(proxy.port, { user: 'stats_alice', database: 'app' });
    await a.query('SELECT 1');
    a.end();
    expect(totals('app', 'stats_alice')!.queries).toBe(15);
    const e = parseExposition(await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text());
    expect(value(e, 'pgmux_queries_total', { database: '(other)', user: '(other)' })).toBe(2);
    expect(value(e, 'pgmux_stats_folded_logins_total')).toBe(2);
    const pairs = new Set(e.samples.filter((s) => s.name === 'pgmux_queries_total').map((s) => `${s.labels.database}/${s.labels.user}`));
    expect(pairs.size).toBe(known + 2);
  });
});

describe('traffic totals of units pipelined behind another client (pipeline_depth)', () => {
  let proxy: TestProxy;
  const savedAge = pipelineLimits.headMaxAgeMs;
  const GATED = 'SELECT count(*) AS n FROM stats_pipeline_gate';

  beforeAll(async () => {
    const p = await pgClient(primaryPort());
    await p.query('CREATE TABLE IF NOT EXISTS stats_pipeline_gate (id int)');
    await p.end();
    proxy = await startProxy({ nodes: testConfig().nodes.filter((n) => n.port === primaryPort()), poolSize: 1, pipelineDepth: 4 });
    pipelineLimits.headMaxAgeMs = 60_000;
  });
  afterAll(async () => {
    pipelineLimits.headMaxAgeMs = savedAge;
    await proxy?.close();
  });

  it('counts each queued unit as one request with its Parse and Bind, timed from when it was written', async () => {
    const gate = await pgClient(primaryPort());
    await gate.query('BEGIN');
    await gate.query('LOCK TABLE stats_pipeline_gate IN ACCESS EXCLUSIVE MODE');
    const head = await RawClient.login(proxy.port, { user: 'stats_alice', database: 'app' });
    const simple = await RawClient.login(proxy.port, { user: 'stats_alice', database: 'app' });
    const extended = await RawClient.login(proxy.port, { user: 'stats_alice', database: 'app' });
    try {
      head.send(queryMsg(GATED));
      await waitUntilRunning(GATED);
      simple.send(queryMsg('SELECT 1'));
      extended.send(Buffer.concat([parseMsg('', 'SELECT 2'), bindMsg('', ''), executeMsg(), syncMsg()]));
      await waitFor(() => proxy.proxy.stats.pipelined === 2, 5_000, () => `pipelined ${proxy.proxy.stats.pipelined}`);
      await sleep(200);
      await gate.query('COMMIT');
      for (const c of [head, simple, extended]) await c.readUntil('Z');
    } finally {
      await gate.end();
      for (const c of [head, simple, extended]) c.end();
    }
    const t = proxy.proxy.trafficTotals().find((x) => x.database === 'app' && x.user === 'stats_alice')!;
    expect(t.queries).toBe(3);
    expect(t.xacts).toBe(3);
    expect(t.clientParses).toBe(1);
    expect(t.serverParses).toBe(1);
    expect(t.binds).toBe(1);
    expect(t.serverAssignments).toBe(3);
    // All three waited on the backend for the gate: each query took at least the 200 ms.
    expect(t.queryTimeUs).toBeGreaterThanOrEqual(3 * 180_000);
    expect(t.queryTimeUs).toBeLessThan(3 * 10_000_000);
  });
});

describe('traffic totals in session mode (the backend stays linked between transactions)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolMode: 'session' });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('ends a transaction at each ReadyForQuery outside a block, with one server assignment', async () => {
    const c = await RawClient.login(proxy.port, { user: 'stats_bob', database: 'app' });
    try {
      await c.query('SELECT 1');
      await c.query('BEGIN');
      await c.query('SELECT pg_sleep(0.1)');
      await c.query('COMMIT');
      await c.query('SELECT 2');
    } finally {
      c.end();
    }
    const t = proxy.proxy.trafficTotals().find((x) => x.database === 'app' && x.user === 'stats_bob')!;
    expect(t.queries).toBe(5);
    expect(t.xacts).toBe(3);
    expect(t.serverAssignments).toBe(1);
    expect(t.xactTimeUs).toBeGreaterThanOrEqual(100_000);
    // The idle time between transactions is no transaction's.
    expect(t.xactTimeUs).toBeLessThan(t.queryTimeUs + 50_000);
  });
});

