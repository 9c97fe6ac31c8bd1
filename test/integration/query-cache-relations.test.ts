// The query cache and what a name in a query stands for: views (and views over views),
// materialized views, partitions, inheritance, foreign-key cascades, triggers, temporary and
// foreign tables. A write to one relation must drop the cached reads of every relation whose
// rows it can change, on every path an invalidation takes (a write through pgmux, a
// trigger's NOTIFY); reads pgmux cannot tie to the writes that change them are not cached.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { INSTALL_SQL } from '../../src/cache/cacheTriggers.js';
import { waitFor } from '../support/wait.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';

const DB = `qc_rel_${process.pid}`;
/** The primary alone: a reply is stored at once (no replica lag bound), so only invalidation is under test. */
const primaryOnly = () => [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }];

const SCHEMA = `
  CREATE TABLE base (id int PRIMARY KEY);
  INSERT INTO base VALUES (1);
  CREATE VIEW v_base AS SELECT count(*)::int AS n FROM base;
  CREATE VIEW v_v AS SELECT n FROM v_base;
  CREATE VIEW v_upd AS SELECT id FROM base;
  CREATE MATERIALIZED VIEW mv_base AS SELECT count(*)::int AS n FROM base;
  CREATE VIEW v_mv AS SELECT n FROM mv_base;
  CREATE TABLE other (id int);
  INSERT INTO other VALUES (1);
  CREATE TABLE meas (id int, k int) PARTITION BY RANGE (k);
  CREATE TABLE meas_1 PARTITION OF meas FOR VALUES FROM (0) TO (100);
  CREATE TABLE meas_2 PARTITION OF meas FOR VALUES FROM (100) TO (200);
  CREATE VIEW v_meas AS SELECT count(*)::int AS n FROM meas;
  INSERT INTO meas VALUES (1, 1), (2, 150);
  CREATE TABLE ih_a (x int);
  CREATE TABLE ih_b (x int);
  CREATE TABLE ih_c () INHERITS (ih_a, ih_b);
  INSERT INTO ih_c VALUES (1);
  CREATE TABLE fk_parent (id int PRIMARY KEY);
  CREATE TABLE fk_child (pid int REFERENCES fk_parent ON DELETE CASCADE);
  INSERT INTO fk_parent VALUES (1), (2);
  INSERT INTO fk_child VALUES (1), (2);
  CREATE TABLE audited (x int);
  CREATE TABLE audit_log (x int);
  CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO audit_log VALUES (NEW.x); RETURN NEW; END$$;
  CREATE TRIGGER audit AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION audit();
  CREATE FUNCTION base_count() RETURNS int STABLE LANGUAGE sql AS 'SELECT count(*)::int FROM base';
  CREATE VIEW v_fn AS SELECT base_count() AS n;
  CREATE TABLE bumped (x int);
  INSERT INTO bumped VALUES (1);
  CREATE FUNCTION bump() RETURNS int VOLATILE LANGUAGE sql AS 'UPDATE bumped SET x = x + 1 RETURNING x';
  CREATE TABLE tt (x text);
  CREATE FUNCTION make_tt() RETURNS void LANGUAGE plpgsql AS $$BEGIN CREATE TEMP TABLE tt AS SELECT 'temp'::text AS x; END$$;
  INSERT INTO tt VALUES ('public');
`;

let admin: pg.Client;

beforeAll(async () => {
  admin = await pgClient(primaryPort(), { database: 'postgres' });
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DB}`);
  const d = await pgClient(primaryPort(), { database: DB });
  await d.query(SCHEMA);
  await d.end();
});
afterAll(async () => {
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`).catch(() => {});
  await admin.end();
});

/** Reads through a pgmux and checks whether the cache answered. */
class Reader {
  constructor(
    private readonly proxy: TestProxy,
    readonly c: pg.Client,
  ) {}

  async value(sql: string): Promise<unknown> {
    return (await this.c.query(sql)).rows[0]?.n;
  }

  /** `sql`'s value, read twice: the second read must be a cache hit. */
  async cached(sql: string): Promise<unknown> {
    const first = await this.value(sql);
    const hits = this.proxy.proxy.queryCache.stats().hits;
    const second = await this.value(sql);
    expect(this.proxy.proxy.queryCache.stats().hits, `${sql} served from the cache`).toBe(hits + 1);
    expect(second).toEqual(first);
    return first;
  }

  /** `sql`'s value, read twice: neither read may be a hit, nothing stored. */
  async uncached(sql: string): Promise<unknown> {
    const before = this.proxy.proxy.queryCache.stats();
    const first = await this.value(sql);
    await this.value(sql);
    const after = this.proxy.proxy.queryCache.stats();
    expect(after.hits, `${sql} not served from the cache`).toBe(before.hits);
    expect(after.entries, `${sql} not stored`).toBe(before.entries);
    return first;
  }

  async hit(sql: string): Promise<unknown> {
    const hits = this.proxy.proxy.queryCache.stats().hits;
    const v = await this.value(sql);
    expect(this.proxy.proxy.queryCache.stats().hits, `${sql} still served from the cache`).toBe(hits + 1);
    return v;
  }
}

describe('query cache: writes through pgmux and the relations they reach', () => {
  let proxy: TestProxy;
  let r: Reader;

  beforeAll(async () => {
    proxy = await startProxy({ queryCache: true, queryCacheMode: 'local', nodes: primaryOnly(), adminUsers: ['postgres'] });
    r = new Reader(proxy, await pgClient(proxy.port, { database: DB }));
  });
  afterAll(async () => {
    await r?.c.end();
    await proxy?.close();
  });

  it('a write to a base table makes reads of views over it (and views over those) fresh', async () => {
    const n = (await r.cached('SELECT n FROM v_base')) as number;
    expect(await r.cached('SELECT n FROM v_v')).toBe(n);
    await r.c.query('INSERT INTO base VALUES (100)');
    expect(await r.value('SELECT n FROM v_base')).toBe(n + 1);
    expect(await r.value('SELECT n FROM v_v')).toBe(n + 1);
  });

  it('a write through an updatable view makes reads of its base table fresh', async () => {
    const n = (await r.cached('SELECT count(*)::int AS n FROM base')) as number;
    await r.c.query('INSERT INTO v_upd VALUES (101)');
    expect(await r.value('SELECT count(*)::int AS n FROM base')).toBe(n + 1);
  });

  it('a materialized view keeps its entries across writes to its base; REFRESH drops them and those of views over it, no more', async () => {
    const m = (await r.cached('SELECT n FROM mv_base')) as number;
    expect(await r.cached('SELECT n FROM v_mv')).toBe(m);
    const o = await r.cached('SELECT count(*)::int AS n FROM other');
    await r.c.query('INSERT INTO base VALUES (102)');
    expect(await r.hit('SELECT n FROM mv_base')).toBe(m); // a snapshot: unchanged, and still cached
    await r.c.query('REFRESH MATERIALIZED VIEW mv_base');
    const now = (await r.value('SELECT count(*)::int AS n FROM base')) as number;
    expect(now).toBeGreaterThan(m);
    expect(await r.value('SELECT n FROM mv_base')).toBe(now);
    expect(await r.value('SELECT n FROM v_mv')).toBe(now);
    expect(await r.hit('SELECT count(*)::int AS n FROM other')).toBe(o); // REFRESH names its view only
  });

  it('partitions: a write to a partition makes the parent (and views over it) fresh; a write to the parent, its partitions; siblings stay', async () => {
    expect(await r.cached('SELECT count(*)::int AS n FROM meas')).toBe(2);
    expect(await r.cached('SELECT n FROM v_meas')).toBe(2);
    expect(await r.cached('SELECT count(*)::int AS n FROM meas_1')).toBe(1);
    await r.c.query('INSERT INTO meas_2 VALUES (3, 160)');
    expect(await r.value('SELECT count(*)::int AS n FROM meas')).toBe(3);
    expect(await r.value('SELECT n FROM v_meas')).toBe(3);
    expect(await r.hit('SELECT count(*)::int AS n FROM meas_1')).toBe(1);
    await r.c.query('INSERT INTO meas VALUES (4, 5)'); // lands in meas_1
    expect(await r.value('SELECT count(*)::int AS n FROM meas_1')).toBe(2);
  });

  it('inheritance: a write to a child makes every parent fresh; an UPDATE through one parent makes the other parent fresh', async () => {
    expect(await r.cached('SELECT sum(x)::int AS n FROM ih_a')).toBe(1);
    expect(await r.cached('SELECT sum(x)::int AS n FROM ih_b')).toBe(1);
    await r.c.query('INSERT INTO ih_c VALUES (2)');
    expect(await r.value('SELECT sum(x)::int AS n FROM ih_a')).toBe(3);
    expect(await r.cached('SELECT sum(x)::int AS n FROM ih_b')).toBe(3);
    await r.c.query('UPDATE ih_a SET x = x + 10'); // changes ih_c's rows, which ih_b shows too
    expect(await r.value('SELECT sum(x)::int AS n FROM ih_b')).toBe(23);
  });

  it('a DELETE that cascades through a foreign key makes the referencing table fresh', async () => {
    expect(await r.cached('SELECT count(*)::int AS n FROM fk_child')).toBe(2);
    await r.c.query('DELETE FROM fk_parent WHERE id = 1');
    expect(await r.value('SELECT count(*)::int AS n FROM fk_child')).toBe(1);
  });

  it('a write to a table with a trigger (which may write anywhere) makes what the trigger wrote fresh', async () => {
    expect(await r.cached('SELECT count(*)::int AS n FROM audit_log')).toBe(0);
    await r.c.query('INSERT INTO audited VALUES (1)');
    expect(await r.value('SELECT count(*)::int AS n FROM audit_log')).toBe(1);
  });

  it('a read that calls a volatile function (it ran on the primary as a write) makes what the function wrote fresh', async () => {
    const x = (await r.cached('SELECT x AS n FROM bumped')) as number;
    await r.c.query('SELECT bump()');
    expect(await r.value('SELECT x AS n FROM bumped')).toBe(x + 1);
  });

  it('a view calling a function is not cached (the function may read anything)', async () => {
    const n = (await r.uncached('SELECT n FROM v_fn')) as number;
    await r.c.query('INSERT INTO base VALUES (103)');
    expect(await r.value('SELECT n FROM v_fn')).toBe(n + 1);
  });

  it('a view created through pgmux is known (the catalog is read again) and invalidated by its base', async () => {
    const loads = proxy.proxy.relationCatalogs.loads;
    await r.c.query('CREATE VIEW v_new AS SELECT count(*)::int AS n FROM other');
    const o = (await r.cached('SELECT n FROM v_new')) as number;
    expect(proxy.proxy.relationCatalogs.loads).toBeGreaterThan(loads);
    await r.c.query('INSERT INTO other VALUES (2)');
    expect(await r.value('SELECT n FROM v_new')).toBe(o + 1);
  });

  it('CACHE CLEAR table on the admin console drops the entries of views over it too', async () => {
    await r.cached('SELECT n FROM v_v');
    await r.cached('SELECT count(*)::int AS n FROM other');
    const console = await pgClient(proxy.port, { database: 'pgbouncer' });
    try {
      await console.query('CACHE CLEAR base');
    } finally {
      await console.end();
    }
    const tables = proxy.proxy.queryCache.stats().byTable.filter((t) => t.database === DB).map((t) => t.table);
    expect(tables).not.toContain('v_v');
    expect(tables).toContain('other');
  });

  it('extended protocol: a read of a view with parameters follows its base too; a view calling a function is not cached', async () => {
    const q = async (sql: string) => (await r.c.query(sql, [0])).rows[0]?.n as number;
    const sql = 'SELECT n FROM v_base WHERE n > $1';
    const n = await q(sql);
    const hits = proxy.proxy.queryCache.stats().hits;
    expect(await q(sql)).toBe(n);
    expect(proxy.proxy.queryCache.stats().hits).toBe(hits + 1);
    await r.c.query('INSERT INTO base VALUES (104)');
    expect(await q(sql)).toBe(n + 1);
    const before = proxy.proxy.queryCache.stats();
    await q('SELECT n FROM v_fn WHERE n > $1');
    await q('SELECT n FROM v_fn WHERE n > $1');
    expect(proxy.proxy.queryCache.stats().hits).toBe(before.hits);
  });

  it('a relation pgmux does not know is not cached', async () => {
    const direct = await pgClient(primaryPort(), { database: DB });
    await direct.query('CREATE TABLE unseen (id int); INSERT INTO unseen VALUES (1)'); // not through pgmux: not seen
    await direct.end();
    expect(await r.uncached('SELECT count(*)::int AS n FROM unseen')).toBe(1);
  });
});

describe('query cache: query_cache_tables', () => {
  it('caches reads of a listed view calling a function (bounded by the TTL and writes naming it)', async () => {
    const proxy = await startProxy({ queryCache: true, queryCacheMode: 'local', nodes: primaryOnly(), queryCacheTables: ['v_fn'] });
    const r = new Reader(proxy, await pgClient(proxy.port, { database: DB }));
    try {
      await r.cached('SELECT n FROM v_fn');
    } finally {
      await r.c.end();
      await proxy.close();
    }
  });
});

describe('query cache: query_cache_exclude_tables', () => {
  it('keeps out reads of views and parents over an excluded table, not only reads naming it', async () => {
    const proxy = await startProxy({ queryCache: true, queryCacheMode: 'local', nodes: primaryOnly(), queryCacheExcludeTables: ['base', 'meas_2'] });
    const r = new Reader(proxy, await pgClient(proxy.port, { database: DB }));
    try {
      await r.uncached('SELECT n FROM v_base');
      await r.uncached('SELECT n FROM v_v');
      await r.uncached('SELECT count(*)::int AS n FROM meas');
      await r.cached('SELECT count(*)::int AS n FROM meas_1');
      await r.cached('SELECT n FROM mv_base'); // a snapshot: only its REFRESH changes it
    } finally {
      await r.c.end();
      await proxy.close();
    }
  });
});

describe('query cache: temporary tables', () => {
  let proxy: TestProxy;
  const clients: pg.Client[] = [];
  const client = async (): Promise<pg.Client> => {
    const c = await pgClient(proxy.port, { database: DB });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    proxy = await startProxy({ queryCache: true, queryCacheMode: 'local', nodes: primaryOnly(), poolSize: 2 });
  });
  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {});
    await proxy?.close();
  });

  it("a read of a name that is a temporary table on a backend never answers another client whose backend has none", async () => {
    const holder = await client();
    await holder.query('BEGIN');
    await holder.query('SELECT 1'); // holds one of the two backends
    // A temporary table made where pgmux cannot see it (a function: the client is not pinned), on the other backend.
    const a = await client();
    await a.query('SELECT make_tt()');
    for (let i = 0; i < 2; i++) expect((await a.query('SELECT x FROM tt')).rows[0].x).toBe('temp');
    for (let i = 0; i < 2; i++) await a.query('SELECT x FROM pg_temp.tt');
    await a.query('BEGIN');
    await a.query('SELECT 1'); // now a holds the backend with the temporary table
    await holder.query('COMMIT');
    const b = await client();
    expect((await b.query('SELECT x FROM tt')).rows[0].x).toBe('public'); // on the backend without it
    expect(proxy.proxy.queryCache.stats().byTable.filter((t) => t.database === DB && t.table.endsWith('tt'))).toEqual([]);
    await a.query('COMMIT');
  });

  it('a client that made a temporary table (pinned) reads its own; another reads the permanent table', async () => {
    const a = await client();
    await a.query("CREATE TEMP TABLE tt2 AS SELECT 'temp'::text AS x");
    const b = await client();
    await b.query("CREATE TABLE IF NOT EXISTS tt2 (x text); INSERT INTO tt2 SELECT 'public' WHERE NOT EXISTS (SELECT 1 FROM tt2)");
    for (let i = 0; i < 2; i++) {
      expect((await a.query('SELECT x FROM tt2')).rows[0].x).toBe('temp');
      expect((await b.query('SELECT x FROM tt2')).rows[0].x).toBe('public');
    }
  });
});

describe('query_cache_mode: triggers, with partitions and views', () => {
  const TDB = `${DB}_trg`;
  let proxy: TestProxy | null = null;

  beforeAll(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${TDB} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${TDB}`);
    const d = await pgClient(primaryPort(), { database: TDB });
    await d.query(`
      CREATE TABLE meas (id int, k int) PARTITION BY RANGE (k);
      CREATE TABLE meas_1 PARTITION OF meas FOR VALUES FROM (0) TO (100);
      CREATE TABLE meas_2 PARTITION OF meas FOR VALUES FROM (100) TO (200);
      CREATE VIEW v_meas AS SELECT count(*)::int AS n FROM meas;
      INSERT INTO meas VALUES (1, 1), (2, 150);`);
    await d.query(INSTALL_SQL);
    await d.end();
  });
  afterAll(async () => {
    await proxy?.close();
    await admin.query(`DROP DATABASE IF EXISTS ${TDB} WITH (FORCE)`).catch(() => {});
  });

  it('a write made directly on the primary to a partition makes a view over the parent fresh; one to the parent, the partitions', async () => {
    proxy = await startProxy({ queryCache: true, queryCacheMode: 'triggers', nodes: primaryOnly() });
    const p = proxy;
    await waitFor(() => p.proxy.cacheCoherent(TDB), 5000, () => 'the cache invalidation listener');
    const r = new Reader(p, await pgClient(p.port, { database: TDB }));
    const direct = await pgClient(primaryPort(), { database: TDB });
    try {
      expect(await r.cached('SELECT n FROM v_meas')).toBe(2);
      expect(await r.cached('SELECT count(*)::int AS n FROM meas_1')).toBe(1);
      await direct.query('INSERT INTO meas_2 VALUES (3, 160)');
      await waitFor(async () => (await r.value('SELECT n FROM v_meas')) === 3, 1000, () => 'the direct INSERT into a partition seen through the view');
      await direct.query('INSERT INTO meas VALUES (4, 5)'); // lands in meas_1; the trigger names meas
      await waitFor(async () => (await r.value('SELECT count(*)::int AS n FROM meas_1')) === 2, 1000, () => 'the direct INSERT into the parent seen in the partition');
    } finally {
      await direct.end();
      await r.c.end();
    }
  });
});

describe('query cache: foreign tables', () => {
  it('reads of a foreign table are not cached (written elsewhere), unless listed in query_cache_tables', async (ctx) => {
    const d = await pgClient(primaryPort(), { database: DB });
    try {
      const available = (await d.query("SELECT 1 FROM pg_available_extensions WHERE name = 'postgres_fdw'")).rowCount === 1;
      if (!available) ctx.skip(); // postgres_fdw is not installed with this PostgreSQL
      await d.query(`CREATE EXTENSION IF NOT EXISTS postgres_fdw;
        CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '${primaryPort()}', dbname '${DB}');
        CREATE USER MAPPING FOR CURRENT_USER SERVER loop;
        CREATE FOREIGN TABLE ft (id int) SERVER loop OPTIONS (table_name 'other');`);
    } finally {
      await d.end();
    }
    for (const listed of [false, true]) {
      const proxy = await startProxy({ queryCache: true, queryCacheMode: 'local', nodes: primaryOnly(), queryCacheTables: listed ? ['ft'] : [] });
      const r = new Reader(proxy, await pgClient(proxy.port, { database: DB }));
      try {
        if (listed) await r.cached('SELECT count(*)::int AS n FROM ft');
        else await r.uncached('SELECT count(*)::int AS n FROM ft');
      } finally {
        await r.c.end();
        await proxy.close();
      }
    }
  });
});

describe('query cache: a write to a partition through another pgmux instance (notify)', () => {
  it("reaches the other instance's cached reads of the parent and of a view over it", async () => {
    const a = await startProxy({ queryCache: true, nodes: primaryOnly() });
    const b = await startProxy({ queryCache: true, nodes: primaryOnly() });
    const r = new Reader(a, await pgClient(a.port, { database: DB }));
    const w = await pgClient(b.port, { database: DB });
    try {
      for (const p of [a, b]) await waitFor(() => p.proxy.cacheCoherent(DB), 5000, () => 'the cache invalidation listeners');
      const n = (await r.cached('SELECT n FROM v_meas')) as number;
      await w.query('INSERT INTO meas_1 VALUES (50, 50)');
      await waitFor(async () => (await r.value('SELECT n FROM v_meas')) === n + 1, 1000, () => 'the write through the other instance seen through the view');
    } finally {
      await w.end();
      await r.c.end();
      await a.close();
      await b.close();
    }
  });
});

describe('query cache: a replica behind a write to the base of a view (private cluster)', () => {
  let cluster: LocalCluster;
  let proxy: TestProxy;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 1 });
    await cluster.query('node0', 'CREATE TABLE lag_base (id int); INSERT INTO lag_base VALUES (1); CREATE VIEW v_lag AS SELECT count(*)::int AS n FROM lag_base');
    await cluster.waitForStreaming();
    await waitFor(async () => (await cluster.query('node1', "SELECT to_regclass('v_lag') IS NOT NULL AS ok"))[0].ok === true, 10_000, () => 'v_lag on node1');
    // Reads on the replica alone; a lag limit the paused replica stays within (so it stays in
    // the rotation) and that bounds how long after a write a replica's answer is not stored.
    proxy = await startProxy({
      queryCache: true,
      queryCacheMode: 'local',
      nodes: cluster.nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 })),
      maxLagMs: 60_000,
      maxLagBytes: null,
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await cluster?.stop();
  });

  it("a replica's answer that may predate a write to the view's base is not stored", async () => {
    const c = await pgClient(proxy.port, { database: 'postgres' });
    try {
      await waitFor(() => proxy.proxy.topology().primary !== null, 10_000, () => 'primary known');
      await cluster.query('node1', 'SELECT pg_wal_replay_pause()');
      await waitFor(async () => (await cluster.query('node1', 'SELECT pg_get_wal_replay_pause_state() AS s'))[0].s === 'paused', 10_000, () => 'replay paused');
      await c.query('INSERT INTO lag_base VALUES (2)');
      expect((await c.query('SELECT n FROM v_lag')).rows[0].n).toBe(1); // the replica, behind
      await cluster.query('node1', 'SELECT pg_wal_replay_resume()');
      await waitFor(async () => (await cluster.query('node1', 'SELECT count(*)::int AS n FROM lag_base'))[0].n === 2, 10_000, () => 'replica caught up');
      expect((await c.query('SELECT n FROM v_lag')).rows[0].n).toBe(2);
    } finally {
      await c.end();
    }
  });
});
