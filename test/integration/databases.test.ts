// The databases / users sections against the harness's primary and replicas: a replica-only
// entry (route: replica) serves reads from replicas only and refuses writes with 25006 in
// every shape a client sends them, and nothing of it reaches the primary; dbname renames,
// a forced user whose password serves its entry only, '*', 3D000 for other names, per-entry
// pool_size, per-user pool_mode, and RELOAD adding and removing entries.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort, replicaPorts } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { parseConfigObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { sleep, waitFor } from '../support/wait.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';

/** A database only this file uses: what reaches it on the primary is this file's doing. */
const DB = 'pgmux_dbsection';

function sections(doc: Record<string, unknown>): Partial<Config> {
  return parseConfigObject(doc, 'test.yaml', { baseDir: '/' });
}

const open: pg.Client[] = [];
async function connect(port: number, database: string, user = 'postgres', password?: string): Promise<pg.Client> {
  const c = await pgClient(port, { database, user, ...(password === undefined ? {} : { password }) });
  c.on('error', () => undefined);
  open.push(c);
  return c;
}

async function failure(p: Promise<unknown>): Promise<Error & { code?: string; hint?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string; hint?: string };
  }
  throw new Error('expected an error');
}

afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.end().catch(() => undefined)));
});

/** On the primary, database DB: sessions ever established, and those open now. */
async function primaryActivity(): Promise<{ sessions: number; open: number }> {
  const c = await pgClient(primaryPort(), { database: 'postgres' });
  try {
    const s = await c.query('SELECT sessions FROM pg_stat_database WHERE datname = $1', [DB]);
    const a = await c.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [DB]);
    return { sessions: Number(s.rows[0].sessions), open: a.rows[0].n as number };
  } finally {
    await c.end();
  }
}

beforeAll(async () => {
  const su = await pgClient(primaryPort(), { database: 'postgres' });
  const exists = (await su.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB])).rowCount;
  if (!exists) await su.query(`CREATE DATABASE ${DB}`);
  await su.end();
  const db = await pgClient(primaryPort(), { database: DB });
  await db.query('CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v text)');
  await db.query("INSERT INTO items VALUES (1, 'one') ON CONFLICT DO NOTHING");
  await db.end();
  // The replicas have the table before any test reads it there.
  for (const port of replicaPorts()) {
    const pg0 = await pgClient(port, { database: 'postgres' });
    await waitFor(async () => (await pg0.query('SELECT count(*)::int AS n FROM pg_database WHERE datname = $1', [DB])).rows[0].n === 1, 10_000, () => `${DB} on replica ${port}`);
    await pg0.end();
    const r = await pgClient(port, { database: DB });
    await waitFor(async () => (await r.query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'items'")).rows[0].n === 1, 10_000, () => `items on replica ${port}`);
    await r.end();
  }
});

describe('route: replica (a read-only entry point)', () => {
  let proxy: TestProxy;
  let before: { sessions: number; open: number };

  beforeAll(async () => {
    // Let the setup connections' stats reach pg_stat_database before taking the baseline.
    await sleep(1500);
    before = await primaryActivity();
    proxy = await startProxy({
      // fallback_to_primary on and a read weight on the primary: neither may send this entry there.
      nodes: testConfig().nodes.map((n, i) => ({ ...n, weight: i === 0 ? 5 : 1 })),
      fallbackToPrimary: true,
      ...sections({ databases: { ro: { dbname: DB, route: 'replica' } } }),
    });
  });

  afterAll(async () => {
    await proxy?.close();
  });

  it('serves reads from the replicas only, simple and extended protocol', async () => {
    const c = await connect(proxy.port, 'ro');
    for (let i = 0; i < 6; i++) {
      const simple = (await c.query('SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port, v FROM items WHERE id = 1')).rows[0];
      expect(simple.standby).toBe(true);
      expect(replicaPorts()).toContain(simple.port);
      expect(simple.v).toBe('one');
      const extended = (await c.query('SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port FROM items WHERE id = $1', [1])).rows[0];
      expect(extended.standby).toBe(true);
      expect(replicaPorts()).toContain(extended.port);
    }
    // A transaction block and a primary hint run on a replica too.
    await c.query('BEGIN');
    expect((await c.query('SELECT pg_is_in_recovery() AS s')).rows[0].s).toBe(true);
    await c.query('COMMIT');
    expect((await c.query('/* pgmux:primary */ SELECT pg_is_in_recovery() AS s')).rows[0].s).toBe(true);
  });

  it('refuses writes with 25006 in every shape, and the session goes on', async () => {
    const c = await connect(proxy.port, 'ro');
    const writes: Array<[string, Promise<unknown>]> = [
      ['simple', c.query("INSERT INTO items VALUES (2, 'two')")],
      ['extended', c.query('UPDATE items SET v = $1 WHERE id = $2', ['x', 1])],
      ['sqlcommenter prefix', c.query("/*controller='items',framework='rails'*/ DELETE FROM items WHERE id = 1")],
      ['primary hint', c.query("/* pgmux:primary */ INSERT INTO items VALUES (3, 'three')")],
      ['multi-statement', c.query("SELECT 1; INSERT INTO items VALUES (4, 'four')")],
      ['DDL', c.query('CREATE TABLE nope (id int)')],
      ['function that writes', c.query("SELECT nextval('nope_seq')")],
    ];
    for (const [shape, p] of writes) {
      const e = await failure(p);
      // nextval on a sequence that does not exist: the replica says 42P01 before it could say 25006.
      if (shape === 'function that writes') expect(['25006', '42P01'], shape).toContain(e.code);
      else expect(e.code, `${shape}: ${e.message}`).toBe('25006');
    }
    // pgmux's own answer names the entry and its route.
    const own = await failure(c.query("INSERT INTO items VALUES (2, 'two')"));
    expect(own.message).toBe('cannot execute a write on database "ro": its route is replica (read-only)');
    // Inside BEGIN: the replica's own refusal.
    await c.query('BEGIN');
    const inTx = await failure(c.query("INSERT INTO items VALUES (5, 'five')"));
    expect(inTx.code).toBe('25006');
    await c.query('ROLLBACK');
    expect((await c.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(1);
  });

  it('refuses LISTEN with a clear error', async () => {
    const c = await connect(proxy.port, 'ro');
    const e = await failure(c.query('LISTEN items_changed'));
    expect(e.code).toBe('0A000');
    expect(e.message).toMatch(/LISTEN is not available on database "ro": its route is replica/);
    // Extended protocol too; UNLISTEN alone (a driver's reset) is fine.
    const ext = await failure(c.query({ text: 'LISTEN items_changed', queryMode: 'extended' } as pg.QueryConfig));
    expect(ext.code).toBe('0A000');
    await c.query('UNLISTEN *');
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('sends nothing to the primary: no session there, no transaction counted there', async () => {
    const c = await connect(proxy.port, 'ro');
    await c.query('SELECT 1');
    expect((await primaryActivity()).open).toBe(0);
    const primaryName = `127.0.0.1:${primaryPort()}`;
    expect(proxy.proxy.counters().transactions.get(primaryName)).toBeUndefined();
    const views = proxy.proxy.databases();
    expect(views).toEqual([expect.objectContaining({ name: 'ro', dbname: DB, route: 'replica', clientConnections: 1 })]);
    expect(views[0]!.currentConnections).toBeGreaterThan(0);
    await c.end();
    open.splice(open.indexOf(c), 1);
    await proxy.close();
    // Backends flush their statistics as they exit.
    await sleep(1500);
    expect(await primaryActivity()).toEqual({ sessions: before.sessions, open: 0 });
  });
});

describe('route: replica with no replica to serve it', () => {
  let proxy: TestProxy;
  const replicaNames = () => replicaPorts().map((p) => `127.0.0.1:${p}`);

  beforeAll(async () => {
    proxy = await startProxy({ failoverTimeoutMs: 800, ...sections({ databases: { ro: { dbname: DB, route: 'replica' } } }) });
  });

  afterAll(async () => {
    await proxy?.close();
  });

  afterEach(() => {
    for (const n of replicaNames()) proxy.proxy.enableNode(n);
  });

  it('waits for a replica like reads wait for a primary, then fails with a clear error, not on the primary', async () => {
    const c = await connect(proxy.port, 'ro');
    for (const n of replicaNames()) expect(proxy.proxy.disableNode(n)).toBe(true);
    const started = Date.now();
    const e = await failure(c.query('SELECT pg_is_in_recovery()'));
    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
    expect(e.code).toBe('08006');
    expect(e.message).toBe('no replica available for a replica-only database (route: replica)');
  });

  it('goes on once a replica is back within the wait', async () => {
    const c = await connect(proxy.port, 'ro');
    for (const n of replicaNames()) proxy.proxy.disableNode(n);
    const q = c.query('SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port');
    setTimeout(() => proxy.proxy.enableNode(replicaNames()[1]!), 200);
    expect((await q).rows[0]).toEqual({ standby: true, port: replicaPorts()[1] });
  });
});

describe('entries: renames, forced users, passwords, *, unknown names', () => {
  let proxy: TestProxy;

  beforeAll(async () => {
    proxy = await startProxy(
      sections({
        admin_users: ['postgres'],
        databases: {
          alias: { dbname: 'app' },
          as_md5: "dbname=app user=app_md5 password='md5pass'",
          as_scram: { dbname: 'app', user: 'app_scram', password: 'scrampass' },
          small: { dbname: 'app', pool_size: 1, route: 'primary' },
        },
      }),
    );
  });

  afterAll(async () => {
    await proxy?.close();
  });

  it('connects an alias to its dbname', async () => {
    const c = await connect(proxy.port, 'alias');
    expect((await c.query('SELECT current_database() AS db, current_user AS u')).rows[0]).toEqual({ db: 'app', u: 'postgres' });
  });

  it("uses an entry's user and password for that entry only", async () => {
    const md5 = await connect(proxy.port, 'as_md5');
    expect((await md5.query('SELECT current_user AS u, current_database() AS db')).rows[0]).toEqual({ u: 'app_md5', db: 'app' });
    const scram = await connect(proxy.port, 'as_scram');
    expect((await scram.query('SELECT current_user AS u')).rows[0].u).toBe('app_scram');
    const plain = await connect(proxy.port, 'alias');
    expect((await plain.query('SELECT current_user AS u')).rows[0].u).toBe('postgres');
  });

  it('SHOW POOLS (database pgbouncer) pools the clients of a forced-user entry under that user, with its backends', async () => {
    const c = await connect(proxy.port, 'as_scram');
    await c.query('SELECT txid_current()'); // a write: a backend of this entry on the primary
    const admin = await connect(proxy.port, 'pgbouncer');
    const rows = (await admin.query('SHOW POOLS')).rows.filter((r) => r.database === 'as_scram');
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ user: 'app_scram', cl_active: 1 });
    expect(Number(rows[0].sv_idle) + Number(rows[0].sv_active)).toBeGreaterThan(0);
  });

  it("LISTENs in the entry's database as its user, with its password", async () => {
    const c = await connect(proxy.port, 'as_md5');
    const heard = new Promise<string | undefined>((resolve) => c.on('notification', (n) => resolve(n.payload)));
    await c.query('LISTEN dbsection_chan');
    const direct = await pgClient(primaryPort(), { database: 'app' });
    try {
      await waitFor(async () => (await direct.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'app_md5' AND query ILIKE 'LISTEN%'")).rows[0].n > 0, 5000, () => 'the shared listener');
      await direct.query("NOTIFY dbsection_chan, 'hello'");
    } finally {
      await direct.end();
    }
    expect(await heard).toBe('hello');
  });

  it('refuses other names with 3D000 and names the entries', async () => {
    const e = await failure(connect(proxy.port, 'app'));
    expect(e.code).toBe('3D000');
    expect(e.message).toBe('database "app" does not exist');
    expect(e.hint).toMatch(/alias, as_md5, as_scram, small/);
  });

  it('keeps an entry to its own pool_size', async () => {
    const clients = await Promise.all([0, 1, 2].map(() => connect(proxy.port, 'small')));
    const pids = await Promise.all(clients.map(async (c) => (await c.query('SELECT pg_backend_pid() AS pid, pg_sleep(0.3)')).rows[0].pid as number));
    expect(new Set(pids).size).toBe(1);
    const pools = proxy.proxy.pools().filter((p) => p.database === 'small');
    expect(pools.reduce((n, p) => n + p.stats.active + p.stats.idle + p.stats.connecting, 0)).toBe(1);
    // Another entry on the same database is not held to it.
    const wide = await Promise.all([0, 1].map(() => connect(proxy.port, 'alias')));
    const widePids = await Promise.all(wide.map(async (c) => (await c.query('SELECT pg_backend_pid() AS pid, pg_sleep(0.3)')).rows[0].pid as number));
    expect(new Set(widePids).size).toBe(2);
  });
});

describe("'*' and the plain database's own credentials", () => {
  let proxy: TestProxy;

  beforeAll(async () => {
    proxy = await startProxy(sections({ databases: { as_md5: { dbname: 'app', user: 'app_md5', password: 'md5pass' }, '*': {} } }));
  });

  afterAll(async () => {
    await proxy?.close();
  });

  it('passes other names through unchanged', async () => {
    const c = await connect(proxy.port, 'postgres');
    expect((await c.query('SELECT current_database() AS db')).rows[0].db).toBe('postgres');
    const views = proxy.proxy.databases().map((v) => v.name);
    expect(views).toEqual(['as_md5', '*']);
  });

  it("never lends an entry's password to the plain database", async () => {
    const entry = await connect(proxy.port, 'as_md5');
    expect((await entry.query('SELECT current_user AS u')).rows[0].u).toBe('app_md5');
    // The same backend user through '*': pgmux has no password for it (trust to pgmux, no auth file).
    const e = await failure(connect(proxy.port, 'app', 'app_md5'));
    expect(['28P01', '28000']).toContain(e.code);
  });
});

describe('users.pool_mode', () => {
  let proxy: TestProxy;

  beforeAll(async () => {
    proxy = await startProxy({ poolMode: 'transaction', ...sections({ users: { app: { pool_mode: 'session' } } }) });
  });

  afterAll(async () => {
    await proxy?.close();
  });

  const busy = (user: string) =>
    proxy.proxy.pools().filter((p) => p.user === user).reduce((n, p) => n + p.stats.active, 0);

  it("keeps a session-mode user's backend between transactions, and only that user's", async () => {
    const s = await connect(proxy.port, 'app', 'app');
    const t = await connect(proxy.port, 'app', 'postgres');
    await s.query("SET pgmux_test.flag = 'kept'");
    const p1 = (await s.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    await t.query('SELECT 1');
    // Idle now: the session-mode client still holds its backend, the other gave its back.
    expect(busy('app')).toBe(1);
    expect(busy('postgres')).toBe(0);
    const again = (await s.query("SELECT pg_backend_pid() AS pid, current_setting('pgmux_test.flag') AS flag")).rows[0];
    expect(again).toEqual({ pid: p1, flag: 'kept' });
  });
});

describe('RELOAD of the databases section', () => {
  let proxy: TestProxy;
  let current: Config;

  beforeAll(async () => {
    current = testConfig({ logLevel: 'silent', ...sections({ databases: { old_entry: { dbname: 'app' }, kept: { dbname: 'app', pool_size: 2 } } }) });
    proxy = await startProxy(current);
    proxy.proxy.reloadSource = () => current;
  });

  afterAll(async () => {
    await proxy?.close();
  });

  it('adds and removes entries; clients of a removed entry run on until they leave', async () => {
    const oldClient = await connect(proxy.port, 'old_entry');
    const oldPid = (await oldClient.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    expect((await failure(connect(proxy.port, 'new_entry'))).code).toBe('3D000');

    current = testConfig({ logLevel: 'silent', ...sections({ databases: { new_entry: { dbname: 'postgres' }, kept: { dbname: 'app', pool_size: 2 } } }) });
    expect((await proxy.proxy.reload()).ok).toBe(true);

    const added = await connect(proxy.port, 'new_entry');
    expect((await added.query('SELECT current_database() AS db')).rows[0].db).toBe('postgres');
    expect((await failure(connect(proxy.port, 'old_entry'))).code).toBe('3D000');
    // The removed entry's idle backend is closed; its client still works (on a new backend).
    const su = await pgClient(primaryPort(), { database: 'postgres' });
    try {
      await waitFor(async () => (await su.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [oldPid])).rows[0].n === 0, 5000, () => `backend ${oldPid} to close`);
    } finally {
      await su.end();
    }
    expect((await oldClient.query('SELECT current_database() AS db')).rows[0].db).toBe('app');
    const kept = await connect(proxy.port, 'kept');
    expect((await kept.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});

describe('route: replica across a failover (private cluster)', () => {
  let cluster: LocalCluster;
  let proxy: TestProxy;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 2 });
    proxy = await startProxy({
      nodes: cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
      healthCheckPeriodMs: 200,
      healthCheckMaxRetries: 2,
      failoverTimeoutMs: 1000,
      ...sections({ databases: { ro: { dbname: 'postgres', route: 'replica' }, ro_session: { dbname: 'postgres', route: 'replica', pool_mode: 'session' } } }),
    });
  });

  afterAll(async () => {
    await proxy?.close();
    await cluster?.stop();
  });

  /** Where one read ran, or the SQLSTATE it failed with. */
  async function probe(c: pg.Client): Promise<{ standby: boolean; port: number } | string> {
    try {
      const r = (await c.query('SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port')).rows[0];
      return { standby: r.standby as boolean, port: r.port as number };
    } catch (err) {
      return (err as { code?: string }).code ?? (err as Error).message;
    }
  }

  it('never uses a replica that became primary, not even for a session already on it', async () => {
    const port1 = cluster.nodes[1]!.port;
    // A session-mode client whose backend is on node1 (the replica about to be promoted).
    let pinned: pg.Client | null = null;
    for (let i = 0; i < 20 && pinned === null; i++) {
      const c = await connect(proxy.port, 'ro_session');
      const where = await probe(c);
      if (typeof where === 'object' && where.port === port1) pinned = c;
    }
    expect(pinned, 'a ro_session client on node1').not.toBeNull();
    const tx = await connect(proxy.port, 'ro');

    await cluster.stopNode('node0', 'immediate');
    await cluster.promote('node1');
    await waitFor(() => proxy.proxy.topology().primary?.port === port1, 10_000, () => 'pgmux to see node1 as primary');

    const seen: Array<{ standby: boolean; port: number } | string> = [];
    seen.push(await probe(pinned!));
    seen.push(await probe(tx));
    for (let i = 0; i < 3; i++) {
      const c = await connect(proxy.port, 'ro').catch((err: { code?: string; message: string }) => err.code ?? err.message);
      seen.push(typeof c === 'string' ? c : await probe(c));
    }
    // The session that was on node1 lost its backend (told 08006 while idle; pg then reports
    // the connection as unusable) rather than carrying on there.
    expect(typeof seen[0], JSON.stringify(seen)).toBe('string');
    for (const s of seen.slice(1)) {
      // A read ran on a standby (node2), or failed with a connection-class error (no replica
      // is eligible: node2 still follows the dead node0): never on node1.
      if (typeof s === 'string') expect(s, JSON.stringify(seen)).toMatch(/^08/);
      else expect(s).toEqual({ standby: true, port: cluster.nodes[2]!.port });
    }
    // Once node2 streams from node1, the entry is served again, from node2 only.
    let follows = true;
    await cluster.follow('node2', 'node1').catch(() => (follows = false));
    if (!follows) return; // an async replica may be ahead of node1's timeline switch: nothing left to check
    const c = await waitFor(async () => {
      const client = await connect(proxy.port, 'ro').catch(() => null);
      return client !== null && typeof (await probe(client)) === 'object' ? client : null;
    }, 20_000, () => 'ro served by node2 after it follows node1');
    for (let i = 0; i < 5; i++) expect(await probe(c)).toEqual({ standby: true, port: cluster.nodes[2]!.port });
  });
});
