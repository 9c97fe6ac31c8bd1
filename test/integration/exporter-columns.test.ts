// prometheus-community/pgbouncer_exporter against pgmux: the exact statements its collector
// runs, as a stats user on database "pgbouncer", and every column it reads there with a type
// it can scan. Read from collector.go at commit 6918f4e78bd6300d725f479b142f1b4aa225f018
// (v0.12.1-7-g6918f4e, 2026-08-18). Its scans (lib/pq, simple protocol):
//   - metric columns go through dbToFloat64: int64 (int4/int8), or bytes/strings that parse
//     as a float (numeric, text), NULL = NaN;
//   - label columns must come back as string or int64 (text, int4, int8) or NULL;
//   - SHOW LISTS: exactly two columns, items parse as a float;
//   - SHOW CONFIG: three or four columns; max_client_conn and max_user_connections parse;
//   - SHOW VERSION: exactly one column, "version";
//   - SHOW CLIENTS: database, user and state columns (application_name if there).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

const TEXT = 25;
const INT4 = 23;
const INT8 = 20;
const NUMERIC = 1700;

type Kind = 'LABEL' | 'GAUGE' | 'COUNTER';

/** collector.go's metricMaps: namespace -> column -> usage (SHOW <namespace>;). */
const METRIC_MAPS: Record<string, Record<string, Kind>> = {
  databases: {
    name: 'LABEL', host: 'LABEL', port: 'LABEL', database: 'LABEL', force_user: 'LABEL', pool_size: 'GAUGE', reserve_pool: 'GAUGE',
    reserve_pool_size: 'GAUGE', pool_mode: 'LABEL', max_connections: 'GAUGE', current_connections: 'GAUGE', paused: 'GAUGE', disabled: 'GAUGE',
  },
  stats_totals: {
    database: 'LABEL', query_count: 'COUNTER', query_time: 'COUNTER', bytes_received: 'COUNTER', requests: 'COUNTER', bytes_sent: 'COUNTER',
    wait_time: 'COUNTER', xact_count: 'COUNTER', xact_time: 'COUNTER', client_parse_count: 'COUNTER', server_parse_count: 'COUNTER',
    bind_count: 'COUNTER', server_assignment_count: 'COUNTER',
  },
  pools: {
    database: 'LABEL', user: 'LABEL', cl_active: 'GAUGE', cl_active_cancel_req: 'GAUGE', cl_waiting: 'GAUGE', cl_waiting_cancel_req: 'GAUGE',
    sv_active: 'GAUGE', sv_active_cancel: 'GAUGE', sv_being_canceled: 'GAUGE', sv_idle: 'GAUGE', sv_used: 'GAUGE', sv_tested: 'GAUGE',
    sv_login: 'GAUGE', maxwait: 'GAUGE',
  },
};

/**
 * Mapped columns that only older PgBouncers have (the exporter maps both spellings and reads
 * whichever is there): reserve_pool before 1.24 (reserve_pool_size since), requests before 1.8.
 */
const OLD_SPELLINGS = new Set(['databases.reserve_pool', 'stats_totals.requests']);

/** collector.go's listsMap and configMap keys. */
const LISTS = ['databases', 'users', 'pools', 'free_clients', 'used_clients', 'login_clients', 'free_servers', 'used_servers', 'dns_names', 'dns_zones', 'dns_queries'];
const CONFIG_KEYS = ['max_client_conn', 'max_user_connections'];

const parsesAsFloat = (v: unknown) => v === null || (typeof v === 'number' && Number.isFinite(v)) || (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v)));

describe('pgbouncer_exporter reads everything it needs from pgmux', () => {
  let proxy: TestProxy;
  let stats: pg.Client;
  const open: pg.Client[] = [];

  beforeAll(async () => {
    proxy = await startProxy({ adminUsers: ['postgres'], statsUsers: ['app'] });
    // Traffic first, so every SHOW has rows to scan.
    const app = await pgClient(proxy.port, { application_name: 'exporter-test' });
    open.push(app);
    await app.query('SELECT 1');
    await app.query('CREATE TEMP TABLE IF NOT EXISTS x (i int)');
    stats = await pgClient(proxy.port, { user: 'app', database: 'pgbouncer' });
    open.push(stats);
  });
  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await proxy?.close();
  });

  it('getDB: SHOW STATS answers', async () => {
    expect((await stats.query('SHOW STATS')).rows.length).toBeGreaterThan(0);
  });

  it('queryVersion: SHOW VERSION; has exactly the column "version"', async () => {
    const r = await stats.query('SHOW VERSION;');
    expect(r.fields.map((f) => f.name)).toEqual(['version']);
    expect(r.rows.length).toBe(1);
  });

  it('queryShowLists: SHOW LISTS; has two columns, every list the exporter knows, numeric items', async () => {
    const r = await stats.query('SHOW LISTS;');
    expect(r.fields.length).toBe(2);
    const items = new Map(r.rows.map((x: Record<string, unknown>) => [x[r.fields[0]!.name] as string, x[r.fields[1]!.name]]));
    for (const l of LISTS) expect(items.has(l), l).toBe(true);
    for (const [l, v] of items) expect(v !== null && parsesAsFloat(v), `${l} = ${String(v)}`).toBe(true);
  });

  it('queryShowConfig: SHOW CONFIG; has 3 or 4 columns and numeric max_client_conn, max_user_connections', async () => {
    const r = await stats.query('SHOW CONFIG;');
    expect([3, 4]).toContain(r.fields.length);
    const [key, value] = [r.fields[0]!.name, r.fields[1]!.name];
    const cfg = new Map(r.rows.map((x: Record<string, unknown>) => [x[key] as string, x[value]]));
    for (const k of CONFIG_KEYS) {
      expect(cfg.has(k), k).toBe(true);
      expect(cfg.get(k) !== null && parsesAsFloat(cfg.get(k)), `${k} = ${String(cfg.get(k))}`).toBe(true);
    }
  });

  it('queryShowClients: SHOW CLIENTS; has database, user, state and application_name', async () => {
    const r = await stats.query('SHOW CLIENTS;');
    const names = r.fields.map((f) => f.name);
    for (const c of ['database', 'user', 'state', 'application_name']) expect(names).toContain(c);
    expect(r.rows.some((x: Record<string, unknown>) => x.application_name === 'exporter-test' && x.database === 'app')).toBe(true);
  });

  it.each(Object.keys(METRIC_MAPS))('queryNamespaceMapping: SHOW %s; has every mapped column with a type the exporter scans', async (ns) => {
    const r = await stats.query(`SHOW ${ns};`);
    expect(r.rows.length, `SHOW ${ns} has rows`).toBeGreaterThan(0);
    const byName = new Map(r.fields.map((f) => [f.name, f]));
    for (const [col, kind] of Object.entries(METRIC_MAPS[ns]!)) {
      const f = byName.get(col);
      if (OLD_SPELLINGS.has(`${ns}.${col}`)) {
        expect(f, `${ns}.${col} is an old spelling: pgmux has the new one`).toBeUndefined();
        continue;
      }
      expect(f, `${ns}.${col}`).toBeDefined();
      if (kind === 'LABEL') {
        expect([TEXT, INT4, INT8], `${ns}.${col} type`).toContain(f!.dataTypeID);
      } else {
        expect([INT4, INT8, NUMERIC, TEXT], `${ns}.${col} type`).toContain(f!.dataTypeID);
        for (const row of r.rows as Array<Record<string, unknown>>) expect(parsesAsFloat(row[col]), `${ns}.${col} = ${String(row[col])}`).toBe(true);
      }
    }
  });
});
