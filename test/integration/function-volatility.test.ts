import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { waitFor } from '../support/wait.js';
import type { Config } from '../../src/config/types.js';
import { main } from '../../src/cli.js';

// Reads that call a VOLATILE user function (which may write) go to the primary, as Pgpool-II
// does; STABLE / IMMUTABLE functions and volatile built-ins stay on the replicas.
describe('function volatility from the catalog', () => {
  const tag = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const orders = `fv_orders_${tag}`;
  const createOrder = `create_order_${tag}`;
  const stableFn = `fv_stable_${tag}`;
  const immutableFn = `fv_immutable_${tag}`;
  const readingVolatile = `fv_peek_${tag}`;
  const mixedCase = `FV_Mixed_${tag}`;
  let primary: pg.Client;
  const proxies: TestProxy[] = [];

  const nodes = () => clusterInfo().nodes;
  /** Replicas only: weight 0 on the primary, so a read reaching it is the rule at work. */
  async function replicaReadsProxy(overrides: Partial<Config> = {}): Promise<TestProxy> {
    const [p, r1, r2] = nodes();
    const proxy = await startProxy({
      nodes: [
        { host: p!.host, port: p!.port, weight: 0 },
        { host: r1!.host, port: r1!.port, weight: 1 },
        { host: r2!.host, port: r2!.port, weight: 1 },
      ],
      functionCatalogRefreshMs: 0, // only what DDL through pgmux triggers
      ...overrides,
    });
    proxies.push(proxy);
    return proxy;
  }

  beforeAll(async () => {
    primary = await pgClient(nodes()[0]!.port);
    await primary.query(`CREATE TABLE ${orders} (id serial PRIMARY KEY, note text)`);
    await primary.query(
      `CREATE FUNCTION ${createOrder}(note text) RETURNS int VOLATILE LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES (note) RETURNING id $$`,
    );
    await primary.query(`CREATE FUNCTION ${stableFn}() RETURNS bigint STABLE LANGUAGE sql AS $$ SELECT count(*) FROM ${orders} $$`);
    await primary.query(`CREATE FUNCTION ${immutableFn}(x int) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT x + 1 $$`);
    await primary.query(`CREATE FUNCTION ${readingVolatile}() RETURNS int VOLATILE LANGUAGE sql AS $$ SELECT 7 $$`);
    await primary.query(`CREATE FUNCTION "${mixedCase}"() RETURNS int VOLATILE LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES ('mixed') RETURNING id $$`);
    // Every replica has replayed the functions before any test runs.
    for (const r of nodes().slice(1)) {
      const c = await pgClient(r.port);
      try {
        await waitFor(async () => (await c.query(`SELECT to_regproc('"${mixedCase}"') IS NOT NULL AS ok`)).rows[0].ok === true, 20_000, () => `the functions on ${r.port}`);
      } finally {
        await c.end();
      }
    }
  });

  afterAll(async () => {
    for (const p of proxies) await p.close();
    await primary?.query(`DROP TABLE IF EXISTS ${orders} CASCADE`).catch(() => {});
    for (const f of [`${createOrder}(text)`, `${stableFn}()`, `${immutableFn}(int)`, `${readingVolatile}()`, `"${mixedCase}"()`, `fv_made_here_${tag}()`, `fv_made_in_tx_${tag}()`]) {
      await primary?.query(`DROP FUNCTION IF EXISTS ${f}`).catch(() => {});
    }
    await primary?.end();
  });

  it('SELECT of a function that INSERTs runs on the primary: simple and extended protocol, behind a comment', async () => {
    const proxy = await replicaReadsProxy();
    const c = await pgClient(proxy.port);
    try {
      const simple = await c.query(`SELECT ${createOrder}('simple') AS id, pg_is_in_recovery() AS standby`);
      expect(simple.rows[0].standby).toBe(false);
      const extended = await c.query(`SELECT ${createOrder}($1) AS id, pg_is_in_recovery() AS standby`, ['extended']);
      expect(extended.rows[0].standby).toBe(false);
      // A named statement: the second run is a Bind of the statement prepared by the first.
      for (const note of ['named 1', 'named 2']) {
        const named = await c.query({ name: 'create_order', text: `SELECT ${createOrder}($1) AS id, pg_is_in_recovery() AS standby`, values: [note] });
        expect(named.rows[0].standby).toBe(false);
      }
      const commented = await c.query(`/* controller='orders',action='create',framework='django' */ SELECT ${createOrder}('commented') AS id`);
      expect(commented.rows[0].id).toBeGreaterThan(0);
      const qualified = await c.query(`SELECT * FROM public.${createOrder}('qualified in FROM')`);
      expect(qualified.rows).toHaveLength(1);
      const quoted = await c.query(`SELECT x FROM (SELECT "${mixedCase}"() AS x) s`);
      expect(quoted.rows).toHaveLength(1);
    } finally {
      await c.end();
    }
    const rows = await primary.query(`SELECT note FROM ${orders} ORDER BY id`);
    expect(rows.rows.map((r) => r.note).slice(0, 7)).toEqual(['simple', 'extended', 'named 1', 'named 2', 'commented', 'qualified in FROM', 'mixed']);
    const routed = proxy.proxy.counters().transactions.get(`${nodes()[0]!.host}:${nodes()[0]!.port}`);
    expect(routed?.write).toBe(7);
  });

  it('STABLE and IMMUTABLE user functions and volatile built-ins stay on the replicas', async () => {
    const proxy = await replicaReadsProxy();
    const c = await pgClient(proxy.port);
    try {
      for (const sql of [
        `SELECT ${stableFn}() AS n, ${immutableFn}(1) AS m, pg_is_in_recovery() AS standby`,
        'SELECT random() AS r, gen_random_uuid() AS u, clock_timestamp() AS t, pg_is_in_recovery() AS standby',
        `SELECT pg_is_in_recovery() AS standby FROM generate_series(1, 2) g WHERE ${immutableFn}(g) > 0`,
      ]) {
        const r = await c.query(sql);
        expect(r.rows[0].standby, sql).toBe(true);
      }
      const ext = await c.query(`SELECT ${stableFn}() AS n, pg_is_in_recovery() AS standby WHERE $1::int > 0`, [1]);
      expect(ext.rows[0].standby).toBe(true);
    } finally {
      await c.end();
    }
  });

  it('read_only_functions keeps a volatile function on the replicas', async () => {
    const plain = await replicaReadsProxy();
    const overridden = await replicaReadsProxy({ readOnlyFunctions: [`public.${readingVolatile}`] });
    const sql = `SELECT ${readingVolatile}() AS v, pg_is_in_recovery() AS standby`;
    const a = await pgClient(plain.port);
    const b = await pgClient(overridden.port);
    try {
      expect((await a.query(sql)).rows[0].standby).toBe(false);
      expect((await b.query(sql)).rows[0].standby).toBe(true);
      // The override names one function: the INSERTing one still goes to the primary.
      expect((await b.query(`SELECT ${createOrder}('still primary'), pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      // RELOAD picks up a new list.
      plain.proxy.reloadSource = () => ({ ...plain.proxy.config(), readOnlyFunctions: [readingVolatile] });
      expect((await plain.proxy.reload()).ok).toBe(true);
      expect((await a.query(sql)).rows[0].standby).toBe(true);
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('concurrent first reads of a database share one catalog load', async () => {
    const proxy = await replicaReadsProxy();
    const clients = await Promise.all(Array.from({ length: 4 }, () => pgClient(proxy.port)));
    try {
      const rs = await Promise.all(clients.map((c) => c.query(`SELECT ${readingVolatile}() AS v, pg_is_in_recovery() AS standby`)));
      for (const r of rs) expect(r.rows[0].standby).toBe(false);
      expect(proxy.proxy.functionCatalogs.loads).toBe(1);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  it('a function created through pgmux is known as soon as the creating transaction commits', async () => {
    const proxy = await replicaReadsProxy();
    const c = await pgClient(proxy.port);
    const other = await pgClient(proxy.port);
    const madeHere = `fv_made_here_${tag}`;
    const madeInTx = `fv_made_in_tx_${tag}`;
    try {
      // The catalog is loaded before the function exists.
      expect((await c.query(`SELECT ${immutableFn}(1), pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(true);
      const loadsBefore = proxy.proxy.functionCatalogs.loads;
      await c.query(`CREATE FUNCTION ${madeHere}() RETURNS int VOLATILE LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES ('made here') RETURNING id $$`);
      // Another client, at once: no periodic refresh (function_catalog_refresh 0) would help.
      expect((await other.query(`SELECT ${madeHere}() AS id, pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      expect(proxy.proxy.functionCatalogs.loads).toBe(loadsBefore + 1);

      // Inside a transaction: visible to others after COMMIT.
      await c.query('BEGIN');
      await c.query(`CREATE FUNCTION ${madeInTx}() RETURNS int LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES ('made in tx') RETURNING id $$`);
      await c.query('COMMIT');
      expect((await other.query(`SELECT ${madeInTx}() AS id, pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      expect(proxy.proxy.functionCatalogs.known('app')?.schemasOf(madeHere)?.has('public')).toBe(true);
      // Made STABLE through pgmux: forgotten at the next read (no INSERT runs, a STABLE
      // SQL function may not).
      await c.query(`ALTER FUNCTION ${madeHere}() STABLE`);
      expect((await other.query(`SELECT ${immutableFn}(1), pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(true);
      expect(proxy.proxy.functionCatalogs.known('app')?.schemasOf(madeHere)).toBeUndefined();
    } finally {
      await c.end();
      await other.end();
    }
    const notes = (await primary.query(`SELECT note FROM ${orders} WHERE note LIKE 'made%' ORDER BY id`)).rows.map((r) => r.note);
    expect(notes).toEqual(['made here', 'made in tx']);
  });

  it('a function created elsewhere (another pgmux instance, a migration on the primary) is checked before a read calling it reaches a replica', async () => {
    const a = await replicaReadsProxy();
    const b = await replicaReadsProxy();
    const ca = await pgClient(a.port);
    const cb = await pgClient(b.port);
    const viaOther = `fv_via_other_${tag}`;
    const direct = `fv_direct_${tag}`;
    try {
      // b has loaded the catalog before either function exists; no refresh period.
      expect((await cb.query(`SELECT ${immutableFn}(1), pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(true);
      const loadsBefore = b.proxy.functionCatalogs.loads;
      await ca.query(`CREATE FUNCTION ${viaOther}() RETURNS int LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES ('via other') RETURNING id $$`);
      expect((await cb.query(`SELECT ${viaOther}() AS id, pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      expect(b.proxy.functionCatalogs.loads).toBe(loadsBefore + 1);
      await primary.query(`CREATE FUNCTION ${direct}() RETURNS int LANGUAGE sql AS $$ INSERT INTO ${orders} (note) VALUES ('direct') RETURNING id $$`);
      // Within the probe interval of the last look the read goes to the primary without waiting.
      expect((await cb.query(`SELECT ${direct}() AS id, pg_is_in_recovery() AS standby`)).rows[0].standby).toBe(false);
      // A name no schema has is looked for once, then reads calling it go where reads go (and fail as directly).
      await new Promise((r) => setTimeout(r, 1100));
      const loadsMid = b.proxy.functionCatalogs.loads;
      await expect(cb.query(`SELECT fv_missing_${tag}()`)).rejects.toMatchObject({ code: '42883' });
      await expect(cb.query(`SELECT fv_missing_${tag}()`)).rejects.toMatchObject({ code: '42883' });
      expect(b.proxy.functionCatalogs.loads).toBe(loadsMid + 1);
      // Window functions, FILTER, JOIN (...) and AT TIME ZONE are no calls: no load, replicas.
      const r = await cb.query(
        `SELECT count(*) OVER (PARTITION BY x.a) AS n, count(*) FILTER (WHERE true) OVER () AS m, now() AT TIME ZONE ('UTC') AS t, pg_is_in_recovery() AS standby FROM (SELECT 1 AS a) x JOIN (SELECT 1 AS b) y ON true`,
      );
      expect(r.rows[0].standby).toBe(true);
      expect(b.proxy.functionCatalogs.loads).toBe(loadsMid + 1);
    } finally {
      await ca.end();
      await cb.end();
      for (const f of [viaOther, direct]) await primary.query(`DROP FUNCTION IF EXISTS ${f}()`).catch(() => {});
    }
    const notes = (await primary.query(`SELECT note FROM ${orders} WHERE note IN ('via other', 'direct') ORDER BY id`)).rows.map((x) => x.note);
    expect(notes).toEqual(['via other', 'direct']);
  });

  it('pgmux classify --database prints the reason from that database\'s catalog', async () => {
    const run = async (args: string[]) => {
      let out = '';
      let err = '';
      const code = await main(args, { out: (s) => (out += s), err: (s) => (err += s), env: {}, signals: new EventEmitter() });
      return { code, out, err };
    };
    const [p] = nodes();
    const sql = `SELECT ${createOrder}('x')`;
    expect(await run(['classify', sql])).toMatchObject({ code: 0, out: 'replica\tread-only SELECT\n' });
    expect(await run(['classify', '--dsn', `postgres://postgres@${p!.host}:${p!.port}/postgres`, '--database', 'app', sql])).toMatchObject({
      code: 0,
      out: `primary\tcalls volatile function public.${createOrder}()\n`,
    });
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-classify-'));
    const file = join(dir, 'pgmux.yaml');
    writeFileSync(file, `nodes: [${nodes().map((n) => `"${n.host}:${n.port}"`).join(', ')}]\nhealth_check_user: postgres\nread_only_functions: [${readingVolatile}]\n`);
    expect(await run(['classify', '--config', file, '--database', 'app', `SELECT "${mixedCase}"()`])).toMatchObject({
      code: 0,
      out: `primary\tcalls volatile function public."${mixedCase}"()\n`,
    });
    expect((await run(['classify', '--config', file, '--database', 'app', `SELECT ${readingVolatile}()`])).out).toBe('replica\tread-only SELECT\n');
    expect((await run(['classify', '--config', file, '--database', 'app', `SELECT ${stableFn}()`])).out).toBe('replica\tread-only SELECT\n');
  });
});
