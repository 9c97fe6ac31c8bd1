import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Session behaviour under transaction pooling, as the clients see it. Many clients share a
// pool of 2 backends on the primary (no replicas: every statement lands in that one pool),
// so whatever one client leaves on a backend is seen by the next client that gets it.
// pgmux hands out the most recently released backend first, so a client that runs right
// after another gets that one's backend; a client holding an open transaction ("holder")
// forces the next statement of anyone else onto the other backend.
//
// What each test expects: a client's SET / set_config / RESET / LISTEN / temporary state
// behaves as on its own PostgreSQL session, and never shows up in another client's session,
// also after the client has gone.

const DB = 'pgmux_iso';
// The database default of a custom setting, for the RESET / DEFAULT cases.
const REGION_DEFAULT = 'eu';
const DEFAULT_SEARCH_PATH = '"$user", public';

let proxy: TestProxy;
let direct: pg.Client; // to the primary, database DB, not through pgmux
const open: pg.Client[] = [];

async function client(): Promise<pg.Client> {
  const c = await pgClient(proxy.port, { database: DB });
  // A dead client must not throw an unhandled 'error' event into the run.
  c.on('error', () => undefined);
  open.push(c);
  return c;
}

async function end(c: pg.Client): Promise<void> {
  const i = open.indexOf(c);
  if (i >= 0) open.splice(i, 1);
  await c.end();
}

function lit(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

interface Look {
  pid: number;
  v: string | null;
}

/** The client's backend and its current value of `name` (NULL: not defined in that session). */
async function look(c: pg.Client, name: string): Promise<Look> {
  const r = await c.query(`SELECT pg_backend_pid() AS pid, current_setting(${lit(name)}, true) AS v`);
  return r.rows[0] as Look;
}

/** Same through the extended protocol (Parse/Bind/Execute with a parameter). */
async function lookExtended(c: pg.Client, name: string): Promise<Look> {
  const r = await c.query('SELECT pg_backend_pid() AS pid, current_setting($1, true) AS v', [name]);
  return r.rows[0] as Look;
}

/** A custom setting that is not set: NULL before it was ever set in the session, '' after a reset. */
function unset(v: string | null): string {
  return v ?? '';
}

/** Holds one backend in an open transaction until release(). */
async function hold(): Promise<{ pid: number; release: () => Promise<void> }> {
  const h = await client();
  await h.query('BEGIN');
  const pid = (await h.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  return {
    pid,
    release: async () => {
      await h.query('COMMIT');
      await end(h);
    },
  };
}

/**
 * Runs `sql` on every backend of the pool (two new clients, each in an open transaction,
 * so each holds one of the 2 backends), only when no client is pinned to a backend.
 */
async function onEveryBackend(sql: string): Promise<Array<Record<string, unknown>>> {
  const a = await client();
  const b = await client();
  await a.query('BEGIN');
  const ra = await a.query(`SELECT pg_backend_pid() AS pid, * FROM (${sql}) q`);
  await b.query('BEGIN');
  const rb = await b.query(`SELECT pg_backend_pid() AS pid, * FROM (${sql}) q`);
  await a.query('COMMIT');
  await b.query('COMMIT');
  await end(a);
  await end(b);
  // The two transactions overlapped, so they ran on the two different backends.
  expect(ra.rows[0].pid).not.toBe(rb.rows[0].pid);
  return [...ra.rows, ...rb.rows];
}

async function notificationsOf(c: pg.Client, channel: string): Promise<string[]> {
  const got: string[] = [];
  c.on('notification', (n) => {
    if (n.channel === channel) got.push(n.payload ?? '');
  });
  return got;
}

async function advisoryLocksHeld(key: number): Promise<number> {
  const r = await direct.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", [key]);
  return r.rows[0].n;
}

describe('session isolation under transaction pooling (pool of 2, primary only)', () => {
  beforeAll(async () => {
    const su = await pgClient(primaryPort(), { database: 'postgres' });
    await su.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
    await su.query(`CREATE DATABASE ${DB}`);
    await su.query(`ALTER DATABASE ${DB} SET myapp.region = ${lit(REGION_DEFAULT)}`);
    await su.end();
    direct = await pgClient(primaryPort(), { database: DB });
    await direct.query('CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b');
  });

  // A new pgmux (and so new backends) for every test: what one test leaves behind on a
  // backend, e.g. after it failed, must not decide another test's outcome.
  beforeEach(async () => {
    const primary = clusterInfo().nodes[0]!;
    proxy = await startProxy({
      poolSize: 2,
      poolMode: 'transaction',
      nodes: [{ host: primary.host, port: primary.port, weight: 1 }],
      // A test that waits for a backend that never comes fails in seconds, not minutes.
      queryWaitTimeoutMs: 15_000,
    });
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.end().catch(() => undefined)));
    await proxy?.close();
    // What a failed test left on a backend (advisory locks above all) must not reach the
    // next test: end any backend of the test database that is still there.
    await direct.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    );
    await vi.waitFor(
      async () => {
        const r = await direct.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        );
        expect(r.rows[0].n).toBe(0);
      },
      { timeout: 10_000, interval: 50 },
    );
  });

  afterAll(async () => {
    await direct?.end();
    const su = await pgClient(primaryPort(), { database: 'postgres' });
    await su.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
    await su.end();
  });

  // ---- 1 and 2: settings that pgmux must carry with the client and keep from others ----

  interface SettingCase {
    title: string;
    name: string;
    value: string;
    /** Value another client sees (the database default). */
    isDefault: (v: string | null) => boolean;
    set: (c: pg.Client) => Promise<unknown>;
  }

  const customUnset = (v: string | null) => unset(v) === '';
  const cases: SettingCase[] = [
    {
      title: "SET myapp.tenant_id = '42' (custom setting, simple query)",
      name: 'myapp.tenant_id',
      value: '42',
      isDefault: customUnset,
      set: (c) => c.query("SET myapp.tenant_id = '42'"),
    },
    {
      title: "SELECT set_config('myapp.tenant_id', '42', false) (simple query)",
      name: 'myapp.tenant_id',
      value: '42',
      isDefault: customUnset,
      set: (c) => c.query("SELECT set_config('myapp.tenant_id', '42', false)"),
    },
    {
      title: 'SELECT set_config($1, $2, false) (extended protocol)',
      name: 'myapp.tenant_id',
      value: '42',
      isDefault: customUnset,
      set: (c) => c.query('SELECT set_config($1, $2, false)', ['myapp.tenant_id', '42']),
    },
    {
      title: 'set_config with computed arguments (simple query)',
      name: 'myapp.tenant_id',
      value: '42',
      isDefault: customUnset,
      set: (c) => c.query("SELECT set_config('myapp.' || 'tenant' || '_id', (40 + 2)::text, false) FROM (SELECT 1) s"),
    },
    {
      title: 'set_config with computed arguments (extended protocol)',
      name: 'myapp.tenant_id',
      value: '42',
      isDefault: customUnset,
      set: (c) => c.query("SELECT set_config('myapp.' || $1, ($2::int + 2)::text, false)", ['tenant_id', 40]),
    },
    {
      title: '/* app=shop,route=/cart */ SET search_path TO ... (leading block comment)',
      name: 'search_path',
      value: 'tenant_a, public',
      isDefault: (v) => v === DEFAULT_SEARCH_PATH,
      set: (c) => c.query('/* app=shop,route=/cart */ SET search_path TO tenant_a, public'),
    },
    {
      title: '-- tag\\nSET search_path ... (leading line comment)',
      name: 'search_path',
      value: 'tenant_b, public',
      isDefault: (v) => v === DEFAULT_SEARCH_PATH,
      set: (c) => c.query('-- tag\nSET search_path TO tenant_b, public'),
    },
    {
      // Not in the brief's list: an ordinary setting that is not in track_extra_parameters.
      title: "SET work_mem = '7MB' (ordinary setting outside track_extra_parameters)",
      name: 'work_mem',
      value: '7MB',
      isDefault: (v) => v === '4MB',
      set: (c) => c.query("SET work_mem = '7MB'"),
    },
  ];

  it.each(cases)('$title: kept by the client on its next backends, never seen by others', async ({ name, value, isDefault, set }) => {
    const a = await client();
    const b = await client();
    await set(a);
    const mine = await look(a, name);
    expect(mine.v).toBe(value);

    // B runs right after A, on A's backend unless A is pinned to it.
    const other = await look(b, name);
    expect(isDefault(other.v), `another client (backend ${other.pid}, A on ${mine.pid}) sees ${name} = ${other.v}`).toBe(true);
    const otherExt = await lookExtended(b, name);
    expect(isDefault(otherExt.v), `another client, extended protocol (backend ${otherExt.pid}) sees ${name} = ${otherExt.v}`).toBe(true);

    // A's next transactions, while a holder keeps the most recently used backend busy.
    // (B looks only after the holder is gone: if pgmux pinned A, the holder has the one
    // backend left and B would wait for it.)
    for (let i = 0; i < 3; i++) {
      const h = await hold();
      const again = await look(a, name);
      expect(again.v, `A on backend ${again.pid} (holder on ${h.pid}) lost ${name}`).toBe(value);
      expect((await lookExtended(a, name)).v).toBe(value);
      await h.release();
      const seen = await look(b, name);
      expect(isDefault(seen.v), `another client (backend ${seen.pid}) sees ${name} = ${seen.v}`).toBe(true);
    }

    // After A leaves, no backend carries its setting.
    await end(a);
    await end(b);
    const rows = await onEveryBackend(`SELECT current_setting(${lit(name)}, true) AS v`);
    for (const r of rows) expect(isDefault(r.v as string | null), `backend ${r.pid} kept ${name} = ${r.v}`).toBe(true);
  });

  // ---- 2: LISTEN after a leading comment ----

  it('/* c */ LISTEN ch: the client gets the notifications, clients that did not LISTEN do not', async () => {
    const listener = await client();
    const got = await notificationsOf(listener, 'iso_comment');
    await listener.query('/* c */ LISTEN iso_comment');
    const others = [await client(), await client()];
    const othersGot = await Promise.all(others.map((o) => notificationsOf(o, 'iso_comment')));
    const sender = await client();
    for (let k = 0; k < 5; k++) {
      await sender.query(`NOTIFY iso_comment, 'p${k}'`);
      // Everyone keeps running transactions meanwhile.
      for (const c of [listener, ...others]) {
        await c.query('BEGIN');
        await c.query('SELECT 1');
        await c.query('COMMIT');
      }
    }
    await vi.waitFor(() => expect(got).toEqual(['p0', 'p1', 'p2', 'p3', 'p4']), { timeout: 5000, interval: 25 });
    for (const o of others) await o.query('SELECT 1');
    expect(othersGot).toEqual([[], []]);
  });

  // ---- 5: LISTEN in a multi-statement query, quoted channel names ----

  it('SELECT 1; LISTEN ch (multi-statement simple query): the client gets the notifications', async () => {
    const listener = await client();
    const got = await notificationsOf(listener, 'iso_multi');
    const r = (await listener.query('SELECT 1 AS one; LISTEN iso_multi')) as unknown as pg.QueryResult[];
    expect(r[0]!.rows).toEqual([{ one: 1 }]);
    const other = await client();
    const otherGot = await notificationsOf(other, 'iso_multi');
    const sender = await client();
    for (let k = 0; k < 3; k++) {
      await sender.query(`NOTIFY iso_multi, 'm${k}'`);
      await other.query('BEGIN; SELECT 1; COMMIT');
      await listener.query('SELECT 1');
    }
    await vi.waitFor(() => expect(got).toEqual(['m0', 'm1', 'm2']), { timeout: 5000, interval: 25 });
    await other.query('SELECT 1');
    expect(otherGot).toEqual([]);
  });

  it('LISTEN "MixedCase" (quoted channel): notifications to "MixedCase" arrive, with the case kept', async () => {
    const listener = await client();
    const got = await notificationsOf(listener, 'MixedCase');
    const lower: string[] = await notificationsOf(listener, 'mixedcase');
    await listener.query('LISTEN "MixedCase"');
    const sender = await client();
    await sender.query(`NOTIFY "MixedCase", 'q1'`);
    await sender.query(`SELECT pg_notify('MixedCase', 'q2')`);
    // Unquoted, the name folds to lower case: another channel.
    await sender.query(`NOTIFY MixedCase, 'folded'`);
    await sender.query('BEGIN; SELECT 1; COMMIT');
    await vi.waitFor(() => expect(got).toEqual(['q1', 'q2']), { timeout: 5000, interval: 25 });
    await listener.query('SELECT 1');
    expect(lower).toEqual([]);
  });

  // ---- 3: state a client leaves on its backend when it disconnects ----

  it('a temporary table is gone with the client that created it', async () => {
    const a = await client();
    await a.query('CREATE TEMP TABLE person (id int)');
    await a.query('INSERT INTO person VALUES (1), (2)');
    expect((await a.query('SELECT count(*)::int AS n FROM person')).rows[0].n).toBe(2);
    await end(a);

    // The next client gets the most recently released backend.
    const b = await client();
    await b.query('CREATE TEMP TABLE person (id int)');
    expect((await b.query('SELECT count(*)::int AS n FROM person')).rows[0].n).toBe(0);
    await end(b);

    await vi.waitFor(
      async () => {
        const r = await direct.query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'person' AND relpersistence = 't'");
        expect(r.rows[0].n).toBe(0);
      },
      { timeout: 5000, interval: 50 },
    );
    const rows = await onEveryBackend("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'person' AND relnamespace = pg_my_temp_schema()");
    for (const r of rows) expect(r.n, `backend ${r.pid}`).toBe(0);
  });

  it('a session advisory lock is released when the client holding it disconnects', async () => {
    const key = 7_700_101;
    const a = await client();
    const b = await client();
    await a.query('SELECT pg_advisory_lock($1)', [key]);
    expect(await advisoryLocksHeld(key)).toBe(1);
    // While A is connected, nobody else gets it.
    expect((await b.query('SELECT pg_try_advisory_lock($1) AS got', [key])).rows[0].got).toBe(false);
    await end(a);
    await vi.waitFor(async () => expect(await advisoryLocksHeld(key)).toBe(0), { timeout: 5000, interval: 50 });
    // Nobody holds it: a plain session takes it at once.
    expect((await direct.query('SELECT pg_try_advisory_lock($1) AS got', [key])).rows[0].got).toBe(true);
    expect((await direct.query('SELECT pg_advisory_unlock($1) AS ok', [key])).rows[0].ok).toBe(true);
    await end(b);
    const rows = await onEveryBackend("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()");
    for (const r of rows) expect(r.n, `backend ${r.pid} holds advisory locks`).toBe(0);
  });

  it('a WITH HOLD cursor is gone with the client that opened it', async () => {
    const a = await client();
    await a.query('DECLARE iso_hold CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g');
    expect((await a.query('FETCH 2 FROM iso_hold')).rows).toEqual([{ g: 1 }, { g: 2 }]);
    await end(a);

    const b = await client();
    expect((await b.query("SELECT count(*)::int AS n FROM pg_cursors WHERE name = 'iso_hold'")).rows[0].n).toBe(0);
    await expect(b.query('FETCH 1 FROM iso_hold')).rejects.toThrow(/cursor "iso_hold" does not exist/);
    await end(b);
    const rows = await onEveryBackend("SELECT count(*)::int AS n FROM pg_cursors WHERE name = 'iso_hold'");
    for (const r of rows) expect(r.n, `backend ${r.pid}`).toBe(0);
  });

  // ---- 6: what else must hold after the fix ----

  it('SET LOCAL lasts until the end of its transaction only, for the client and for others', async () => {
    const a = await client();
    const b = await client();
    await a.query('BEGIN');
    await a.query("SET LOCAL myapp.tenant_id = '7'");
    await a.query('SET LOCAL search_path TO tenant_a, public');
    expect((await look(a, 'myapp.tenant_id')).v).toBe('7');
    expect((await look(a, 'search_path')).v).toBe('tenant_a, public');
    await a.query('COMMIT');
    expect(unset((await look(a, 'myapp.tenant_id')).v)).toBe('');
    expect((await look(a, 'search_path')).v).toBe(DEFAULT_SEARCH_PATH);
    expect(unset((await look(b, 'myapp.tenant_id')).v)).toBe('');
    expect((await look(b, 'search_path')).v).toBe(DEFAULT_SEARCH_PATH);
    // A SET before the transaction survives a SET LOCAL inside it.
    await a.query("SET myapp.tenant_id = '8'");
    await a.query("BEGIN; SET LOCAL myapp.tenant_id = '9'; COMMIT");
    const h = await hold();
    expect((await look(a, 'myapp.tenant_id')).v).toBe('8');
    await h.release();
    expect(unset((await look(b, 'myapp.tenant_id')).v)).toBe('');
  });

  it.each(['SET myapp.region TO DEFAULT', 'RESET myapp.region', 'RESET ALL'])(
    '%s returns to the database default for that client only',
    async (reset) => {
      const a = await client();
      const b = await client();
      const c = await client();
      expect((await look(c, 'myapp.region')).v).toBe(REGION_DEFAULT);
      await a.query("SET myapp.region = 'us'");
      await b.query("SET myapp.region = 'asia'");
      expect((await look(a, 'myapp.region')).v).toBe('us');
      await a.query(reset);
      expect((await look(a, 'myapp.region')).v).toBe(REGION_DEFAULT);
      expect((await look(b, 'myapp.region')).v).toBe('asia');
      expect((await look(c, 'myapp.region')).v).toBe(REGION_DEFAULT);
      // Again with the backends taken in turns.
      for (let i = 0; i < 2; i++) {
        const h = await hold();
        expect((await look(a, 'myapp.region')).v).toBe(REGION_DEFAULT);
        expect((await look(b, 'myapp.region')).v).toBe('asia');
        expect((await lookExtended(c, 'myapp.region')).v).toBe(REGION_DEFAULT);
        await h.release();
      }
      await end(a);
      await end(b);
      await end(c);
      const rows = await onEveryBackend("SELECT current_setting('myapp.region', true) AS v");
      for (const r of rows) expect(r.v, `backend ${r.pid}`).toBe(REGION_DEFAULT);
    },
  );

  it('set_config inside a DO block: the client keeps it, nobody else ever sees it', async () => {
    const a = await client();
    const b = await client();
    await a.query("DO $$ BEGIN PERFORM set_config('myapp.x', '1', false); END $$");
    expect((await look(a, 'myapp.x')).v).toBe('1');
    const other = await look(b, 'myapp.x');
    expect(unset(other.v), `another client on backend ${other.pid} sees myapp.x`).toBe('');
    // A keeps it while a holder has the backend A would otherwise get next.
    const h = await hold();
    expect((await look(a, 'myapp.x')).v).toBe('1');
    await h.release();
    expect(unset((await look(b, 'myapp.x')).v)).toBe('');
    await end(a);
    await end(b);
    const rows = await onEveryBackend("SELECT current_setting('myapp.x', true) AS v");
    for (const r of rows) expect(unset(r.v as string | null), `backend ${r.pid}`).toBe('');
  });

  it("a pinned client's backend is reset before anyone else gets it (settings, temp tables, locks)", async () => {
    const key = 7_700_202;
    const a = await client();
    await a.query('CREATE TEMP TABLE pinned_scratch (v int)');
    await a.query('SET search_path TO tenant_a, public');
    await a.query("SET statement_timeout = '123s'");
    await a.query("SET myapp.tenant_id = '77'");
    await a.query('SELECT pg_advisory_lock($1)', [key]);
    expect((await look(a, 'search_path')).v).toBe('tenant_a, public');
    await end(a);

    // The next client gets the backend A had.
    const b = await client();
    expect((await look(b, 'search_path')).v).toBe(DEFAULT_SEARCH_PATH);
    expect((await look(b, 'statement_timeout')).v).toBe('0');
    expect(unset((await look(b, 'myapp.tenant_id')).v)).toBe('');
    expect((await b.query("SELECT to_regclass('pinned_scratch') IS NULL AS gone")).rows[0].gone).toBe(true);
    await end(b);
    await vi.waitFor(async () => expect(await advisoryLocksHeld(key)).toBe(0), { timeout: 5000, interval: 50 });
    const rows = await onEveryBackend(
      "SELECT current_setting('search_path') AS sp, current_setting('statement_timeout') AS st, to_regclass('pinned_scratch') IS NULL AS gone",
    );
    for (const r of rows) expect(r, `backend ${r.pid}`).toMatchObject({ sp: DEFAULT_SEARCH_PATH, st: '0', gone: true });
  });
});
