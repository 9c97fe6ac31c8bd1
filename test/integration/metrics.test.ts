// /metrics, /healthz, /readyz and /status of a pgmux on the shared cluster, after known
// traffic: the Prometheus text is parsed and the pgmux_* values checked against it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pgClient } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { waitFor } from '../support/wait.js';
import { parseExposition, value, type Exposition } from '../support/exposition.js';

describe('HTTP endpoints', () => {
  let proxy: TestProxy;
  let base: string;
  let primary: string;
  let replicas: string[];
  const open: pg.Client[] = [];

  beforeAll(async () => {
    proxy = await startProxy({
      // Reads go to the replicas only (node0 is the harness's primary).
      nodes: testConfig().nodes.map((n, i) => ({ ...n, weight: i === 0 ? 0 : 1 })),
      adminUsers: ['postgres'],
      http: { host: '127.0.0.1', port: 0 },
    });
    expect(proxy.httpPort).toBeGreaterThan(0);
    base = `http://127.0.0.1:${proxy.httpPort}`;
    const t = () => proxy.proxy.topology();
    await waitFor(() => t().primary !== null && t().nodes.every((n) => n.state === 'up' && n.lagMs !== null), 20_000, () => `cluster up: ${JSON.stringify(t().nodes.map((n) => [n.name, n.state]))}`);
    primary = proxy.proxy.topology().primary!.name;
    replicas = proxy.proxy.topology().nodes.map((n) => n.name).filter((n) => n !== primary);
  });
  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await proxy?.close();
  });

  async function connect(opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
    const c = await pgClient(proxy.port, opts);
    c.on('error', () => {});
    open.push(c);
    return c;
  }

  async function scrape(): Promise<Exposition> {
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain; version=0.0.4');
    return parseExposition(await res.text());
  }

  it('exposes the pgmux_* series with values matching the traffic', async () => {
    const WRITES = 5;
    const READS = 9;
    const c = await connect({ application_name: 'metrics-test' });
    await c.query('CREATE TABLE IF NOT EXISTS metrics_t (id serial primary key, v int)');
    for (let i = 0; i < WRITES - 2; i++) await c.query('INSERT INTO metrics_t (v) VALUES ($1)', [i]);
    await c.query('BEGIN');
    await c.query('SELECT 1');
    await c.query('COMMIT');
    for (let i = 0; i < READS; i++) await c.query('SELECT inet_server_port()');

    const e = await scrape();
    // Types of the documented series.
    const expected: Record<string, string> = {
      pgmux_client_connections: 'gauge',
      pgmux_server_connections: 'gauge',
      pgmux_pool_waiting_clients: 'gauge',
      pgmux_pool_wait_seconds: 'histogram',
      pgmux_node_transactions_total: 'counter',
      pgmux_transactions_total: 'counter',
      pgmux_queries_total: 'counter',
      pgmux_query_duration_seconds: 'histogram',
      pgmux_transaction_duration_seconds: 'histogram',
      pgmux_client_wait_seconds: 'histogram',
      pgmux_client_errors_total: 'counter',
      pgmux_pool_clients: 'gauge',
      pgmux_pool_backends: 'gauge',
      pgmux_build_info: 'gauge',
      pgmux_bytes_received_total: 'counter',
      pgmux_bytes_sent_total: 'counter',
      pgmux_node_up: 'gauge',
      pgmux_node_role: 'gauge',
      pgmux_node_lag_bytes: 'gauge',
      pgmux_node_lag_seconds: 'gauge',
      pgmux_failovers_total: 'counter',
      pgmux_read_retries_total: 'counter',
      pgmux_classifier_cache_hits_total: 'counter',
      pgmux_classifier_cache_misses_total: 'counter',
      pgmux_client_logins_total: 'counter',
      pgmux_client_login_failures_total: 'counter',
      pgmux_config_version: 'gauge',
      pgmux_paused: 'gauge',
    };
    for (const [name, type] of Object.entries(expected)) {
      expect(e.types.get(name), name).toBe(type);
      expect(e.help.get(name), name).toBeTruthy();
    }
    // Default process metrics are there too.
    expect(e.types.get('process_cpu_user_seconds_total')).toBe('counter');
    expect(e.types.get('nodejs_heap_size_used_bytes')).toBe('gauge');

    expect(value(e, 'pgmux_node_transactions_total', { node: primary, route: 'write' })).toBe(WRITES);
    expect(value(e, 'pgmux_node_transactions_total', { node: primary, route: 'read' })).toBe(0);
    expect(replicas.reduce((s, r) => s + value(e, 'pgmux_node_transactions_total', { node: r, route: 'read' })!, 0)).toBe(READS);
    expect(replicas.reduce((s, r) => s + value(e, 'pgmux_node_transactions_total', { node: r, route: 'write' })!, 0)).toBe(0);
    // Only configured nodes as labels.
    const nodeLabels = new Set(e.samples.filter((s) => s.name.startsWith('pgmux_') && s.labels.node).map((s) => s.labels.node));
    expect([...nodeLabels].sort()).toEqual([primary, ...replicas].sort());

    // The wait histogram: one observation per transaction, cumulative buckets.
    const buckets = e.samples.filter((s) => s.name === 'pgmux_pool_wait_seconds_bucket');
    expect(buckets.length).toBeGreaterThan(2);
    expect(buckets.at(-1)!.labels.le).toBe('+Inf');
    for (let i = 1; i < buckets.length; i++) {
      expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
      if (i < buckets.length - 1) expect(Number(buckets[i]!.labels.le)).toBeGreaterThan(Number(buckets[i - 1]!.labels.le));
    }
    expect(value(e, 'pgmux_pool_wait_seconds_count')).toBe(WRITES + READS);
    expect(buckets.at(-1)!.value).toBe(WRITES + READS);
    expect(value(e, 'pgmux_pool_wait_seconds_sum')).toBeGreaterThanOrEqual(0);

    expect(value(e, 'pgmux_client_logins_total')).toBe(1);
    expect(value(e, 'pgmux_client_login_failures_total')).toBe(0);
    expect(value(e, 'pgmux_bytes_received_total')).toBeGreaterThan(0);
    expect(value(e, 'pgmux_bytes_sent_total')).toBeGreaterThan(0);
    expect(value(e, 'pgmux_read_retries_total')).toBe(0);
    expect(value(e, 'pgmux_failovers_total')).toBe(0);
    expect(value(e, 'pgmux_classifier_cache_hits_total')! + value(e, 'pgmux_classifier_cache_misses_total')!).toBeGreaterThan(0);
    expect(value(e, 'pgmux_config_version')).toBe(1);
    expect(value(e, 'pgmux_paused')).toBe(0);

    expect(value(e, 'pgmux_client_connections', { state: 'idle' })).toBe(1);
    expect(value(e, 'pgmux_client_connections', { state: 'linked' })).toBe(0);
    expect(value(e, 'pgmux_server_connections', { node: primary, state: 'idle' })).toBeGreaterThanOrEqual(1);
    expect(value(e, 'pgmux_pool_waiting_clients', { node: primary, database: 'app', user: 'postgres' })).toBe(0);
    // The same traffic per (database, user): every statement ended a transaction but the block's three.
    const pair = { database: 'app', user: 'postgres' };
    expect(value(e, 'pgmux_queries_total', pair)).toBe(WRITES + 2 + READS);
    expect(value(e, 'pgmux_transactions_total', pair)).toBe(WRITES + READS);
    expect(value(e, 'pgmux_query_duration_seconds_count', pair)).toBe(WRITES + 2 + READS);
    expect(value(e, 'pgmux_client_wait_seconds_count', pair)).toBe(WRITES + READS);
    expect(value(e, 'pgmux_pool_clients', { ...pair, state: 'idle' })).toBe(1);
    expect(value(e, 'pgmux_pool_backends', { node: primary, ...pair, state: 'idle' })).toBeGreaterThanOrEqual(1);
    expect(value(e, 'pgmux_build_info', { version: proxy.proxy.version, node_version: process.version })).toBe(1);

    for (const n of [primary, ...replicas]) expect(value(e, 'pgmux_node_up', { node: n })).toBe(1);
    expect(value(e, 'pgmux_node_role', { node: primary, role: 'primary' })).toBe(1);
    expect(value(e, 'pgmux_node_role', { node: primary, role: 'replica' })).toBe(0);
    for (const r of replicas) {
      expect(value(e, 'pgmux_node_role', { node: r, role: 'replica' })).toBe(1);
      expect(value(e, 'pgmux_node_lag_bytes', { node: r })).toBeGreaterThanOrEqual(0);
      expect(value(e, 'pgmux_node_lag_seconds', { node: r })).toBeGreaterThanOrEqual(0);
    }
    expect(value(e, 'pgmux_node_lag_bytes', { node: primary })).toBe(0);
  });

  it('counts failed logins', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-metrics-'));
    const file = join(dir, 'users.txt');
    writeFileSync(file, '"app" "apppass"\n');
    const p = await startProxy({ auth: 'password', authFile: file, http: { host: '127.0.0.1', port: 0 } });
    try {
      await expect(pgClient(p.port, { user: 'app', password: 'wrong' })).rejects.toMatchObject({ code: '28P01' });
      const ok = await pgClient(p.port, { user: 'app', password: 'apppass' });
      await ok.end();
      const e = parseExposition(await (await fetch(`http://127.0.0.1:${p.httpPort}/metrics`)).text());
      expect(value(e, 'pgmux_client_login_failures_total')).toBe(1);
      expect(value(e, 'pgmux_client_logins_total')).toBe(1);
    } finally {
      await p.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('/healthz is 200; /readyz is 200, then 503 while paused', async () => {
    const h = await fetch(`${base}/healthz`);
    expect(h.status).toBe(200);
    expect(await h.text()).toBe('ok\n');
    const r = await fetch(`${base}/readyz`);
    expect(r.status).toBe(200);
    await r.text();

    const admin = await connect({ database: 'pgmux' });
    await admin.query('PAUSE');
    try {
      const p = await fetch(`${base}/readyz`);
      expect(p.status).toBe(503);
      expect(await p.text()).toContain('paused');
      expect(value(await scrape(), 'pgmux_paused')).toBe(1);
      const s = (await (await fetch(`${base}/status`)).json()) as { paused: boolean; ready: boolean };
      expect(s).toMatchObject({ paused: true, ready: false });
    } finally {
      await admin.query('RESUME');
    }
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect(value(await scrape(), 'pgmux_paused')).toBe(0);
  });

  it('/status is JSON with the nodes, pools and clients', async () => {
    const res = await fetch(`${base}/status`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/json');
    const s = (await res.json()) as {
      version: string;
      configVersion: number;
      uptimeSeconds: number;
      primary: string;
      nodes: Array<{ name: string; role: string; state: string; lagBytes: number | null; lagMs: number | null; lastCheckAt: string }>;
      pools: Array<{ node: string; database: string; user: string; idle: number }>;
      clients: { total: number; byState: Record<string, number> };
    };
    expect(s.version).toBe(proxy.proxy.version);
    expect(s.configVersion).toBe(1);
    expect(s.uptimeSeconds).toBeGreaterThanOrEqual(0);
    expect(s.primary).toBe(primary);
    expect(s.nodes.map((n) => n.name).sort()).toEqual([primary, ...replicas].sort());
    expect(s.nodes.filter((n) => n.role === 'primary').length).toBe(1);
    for (const n of s.nodes) {
      expect(n.state).toBe('up');
      expect(typeof n.lagBytes).toBe('number');
      expect(new Date(n.lastCheckAt).toISOString()).toBe(n.lastCheckAt);
    }
    expect(s.pools.some((p) => p.node === primary && p.database === 'app' && p.user === 'postgres')).toBe(true);
    expect(s.clients.total).toBeGreaterThanOrEqual(1);
  });

  it('answers 404 to other paths, 405 to other methods, HEAD without a body', async () => {
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    const post = await fetch(`${base}/metrics`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const head = await fetch(`${base}/healthz`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    expect((await fetch(`${base}/metrics?x=1`)).status).toBe(200);
  });

  it('closes the HTTP listener with the proxy', async () => {
    const p = await startProxy({ http: { host: '127.0.0.1', port: 0 } });
    const url = `http://127.0.0.1:${p.httpPort}/healthz`;
    expect((await fetch(url)).status).toBe(200);
    await p.close();
    await expect(fetch(url)).rejects.toThrow();
    const none = await startProxy({});
    expect(none.httpPort).toBeNull();
    await none.close();
  });
});
