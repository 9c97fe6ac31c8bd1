// max_db_connections / max_user_connections with PgBouncer's meaning: the backends one node
// sees for a database (all users) or a user (all databases), whatever the pools' sizes.
// Counted on the node itself (pg_stat_activity), sampled while clients compete.

import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

const DB1 = 'budget_one';
const DB2 = 'budget_two';

let admin: pg.Client;

beforeAll(async () => {
  admin = await pgClient(primaryPort(), { database: 'postgres' });
  for (const db of [DB1, DB2]) {
    await admin.query(`DROP DATABASE IF EXISTS ${db}`);
    await admin.query(`CREATE DATABASE ${db} OWNER app`);
  }
});

afterAll(async () => {
  await admin.end();
});

// The previous test's proxy closed its backends; the node counts them until their processes exit.
beforeEach(async () => {
  await vi.waitFor(
    async () => {
      const r = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname IN ('${DB1}', '${DB2}')`);
      expect(r.rows[0].n, JSON.stringify((await admin.query(`SELECT usename, datname, application_name, state, query, backend_start FROM pg_stat_activity WHERE datname IN ('${DB1}', '${DB2}')`)).rows)).toBe(0);
    },
    { timeout: 5000, interval: 20 },
  );
});

/** Only the primary: the budget is per node, and the sampler then has one node to watch. */
function primaryOnly() {
  const p = clusterInfo().nodes[0]!;
  return [{ host: p.host, port: p.port, weight: 1 }];
}

/** Samples the primary's backends matching `where` every few ms until stopped; returns the most seen. */
function sampleMax(where: string): { stop(): Promise<number> } {
  let max = 0;
  let running = true;
  const loop = (async () => {
    const c = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      while (running) {
        const r = await c.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend' AND ${where}`);
        max = Math.max(max, r.rows[0].n as number);
        await new Promise((res) => setTimeout(res, 3));
      }
    } finally {
      await c.end();
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return max;
    },
  };
}

async function runClients(proxy: TestProxy, specs: Array<{ user: string; password: string; database: string }>, sql: string, rounds: number): Promise<void> {
  await Promise.all(
    specs.map(async (s) => {
      const c = await pgClient(proxy.port, s);
      try {
        for (let i = 0; i < rounds; i++) await c.query(sql);
      } finally {
        await c.end();
      }
    }),
  );
}

const APP = { user: 'app', password: 'apppass' };
const PG = { user: 'postgres', password: '' };

describe('max_db_connections (backends per node for a database, all users)', () => {
  it('the node never sees more, though two users pools could open 20; every query succeeds', async () => {
    const proxy = await startProxy({ nodes: primaryOnly(), poolSize: 10, maxDbConnections: 3, queryWaitTimeoutMs: 20_000 });
    const sampler = sampleMax(`datname = '${DB1}'`);
    try {
      const specs = [...Array(6)].flatMap(() => [{ ...APP, database: DB1 }, { ...PG, database: DB1 }]);
      // A write on purpose: it runs on the primary, where the sampler counts.
      await runClients(proxy, specs, 'SELECT pg_sleep(0.02), txid_current()', 5);
    } finally {
      const max = await sampler.stop();
      await proxy.close();
      expect(max).toBeGreaterThan(0);
      expect(max).toBeLessThanOrEqual(3);
    }
  });

  it('min_pool_size does not refill past it', async () => {
    const proxy = await startProxy({ nodes: primaryOnly(), poolSize: 10, minPoolSize: 6, maxDbConnections: 2 });
    const sampler = sampleMax(`datname = '${DB2}'`);
    try {
      await runClients(proxy, [{ ...APP, database: DB2 }, { ...PG, database: DB2 }], 'SELECT txid_current()', 1);
      await new Promise((r) => setTimeout(r, 1200)); // several janitor sweeps
    } finally {
      const max = await sampler.stop();
      await proxy.close();
      expect(max).toBe(2);
    }
  });
});

describe('max_user_connections (backends per node for a user, all databases)', () => {
  it('an idle backend of another database is given up at once for a waiting pool', async () => {
    const proxy = await startProxy({ nodes: primaryOnly(), poolSize: 10, maxUserConnections: 2, queryWaitTimeoutMs: 5_000 });
    const sampler = sampleMax(`usename = 'app' AND datname IN ('${DB1}', '${DB2}')`);
    try {
      // Two backends of DB1 end up idle in its pool and fill the user's budget.
      await runClients(proxy, [{ ...APP, database: DB1 }, { ...APP, database: DB1 }], 'SELECT pg_sleep(0.05), txid_current()', 2);
      const started = Date.now();
      await runClients(proxy, [{ ...APP, database: DB2 }, { ...APP, database: DB2 }], 'SELECT pg_sleep(0.05), txid_current()', 2);
      // Without eviction the DB2 clients would wait for query_wait_timeout (5 s) and fail.
      expect(Date.now() - started).toBeLessThan(3_000);
      const byDb = await admin.query(
        `SELECT datname, count(*)::int AS n FROM pg_stat_activity WHERE usename = 'app' AND datname IN ('${DB1}', '${DB2}') GROUP BY 1 ORDER BY 1`,
      );
      const total = byDb.rows.reduce((a, r) => a + (r.n as number), 0);
      expect(total).toBeLessThanOrEqual(2);
    } finally {
      const max = await sampler.stop();
      await proxy.close();
      expect(max).toBeLessThanOrEqual(2);
    }
  });

  it('a client waiting past query_wait_timeout for a spent budget gets 53300 naming the budget; other users are not held up', async () => {
    const proxy = await startProxy({ nodes: primaryOnly(), poolSize: 10, maxUserConnections: 1, queryWaitTimeoutMs: 600 });
    const holder = await pgClient(proxy.port, { ...APP, database: DB1 });
    const waiter = await pgClient(proxy.port, { ...APP, database: DB2 });
    waiter.on('error', () => {}); // the FATAL closes it
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT txid_current()'); // holds the user's only backend
      const err = await waiter.query('SELECT 1').then(
        () => null,
        (e: Error & { code?: string; detail?: string }) => e,
      );
      expect(err?.code).toBe('53300');
      expect(err?.detail).toMatch(/max_user_connections of user "app" on .* is 1/);
      // Another user is not limited by app's budget.
      const other = await pgClient(proxy.port, { ...PG, database: DB2 });
      expect((await other.query('SELECT 1 AS x')).rows[0].x).toBe(1);
      await other.end();
      await holder.query('COMMIT');
      // The slot is given up (the holder's backend is idle) for the next client of DB2.
      const next = await pgClient(proxy.port, { ...APP, database: DB2 });
      expect((await next.query('SELECT 2 AS x')).rows[0].x).toBe(2);
      await next.end();
    } finally {
      await holder.end().catch(() => {});
      await waiter.end().catch(() => {});
      await proxy.close();
    }
  });
});

describe('what the node sees, whoever connected', () => {
  it('SHOW DATABASES primary_connections_seen and pgmux_node_database_connections count pgmux backends and other clients alike', async () => {
    const proxy = await startProxy({
      nodes: primaryOnly(),
      adminUsers: ['postgres'],
      databases: [{ name: DB1, dbname: null, user: null, password: null, poolSize: null, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'any' }],
      http: { host: '127.0.0.1', port: 0 },
    });
    const direct = await Promise.all([0, 1, 2].map(() => pgClient(primaryPort(), { ...APP, database: DB1 })));
    const viaPgmux = await Promise.all([0, 1].map(() => pgClient(proxy.port, { ...APP, database: DB1 })));
    const admin = await pgClient(proxy.port, { database: 'pgbouncer' });
    try {
      // Two transactions held open: two backends of pgmux on the primary, beside three other clients.
      for (const c of viaPgmux) {
        await c.query('BEGIN');
        await c.query('SELECT txid_current()');
      }
      const seen = async () => (await admin.query('SHOW DATABASES')).rows.find((r) => r.name === DB1)?.primary_connections_seen as number | null;
      await expect.poll(seen, { timeout: 5000, interval: 50 }).toBe(5);
      const text = await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text();
      const primary = clusterInfo().nodes[0]!;
      expect(text).toContain(`pgmux_node_database_connections{node="${primary.host}:${primary.port}",database="${DB1}"} 5`);
    } finally {
      for (const c of viaPgmux) await c.query('ROLLBACK').catch(() => {});
      for (const c of [...direct, ...viaPgmux, admin]) await c.end().catch(() => {});
      await proxy.close();
    }
  });
});
