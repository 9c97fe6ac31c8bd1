import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { clusterInfo, pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// SET ROLE / RESET ROLE / SET SESSION AUTHORIZATION under transaction pooling. `role` and
// `session_authorization` are not in pg_settings, so they need their own read-back: without
// it a client's next transaction on another backend ran as the login user, and the backend
// it left kept the role for the next client.
//
// Each script runs once on a direct connection (what PostgreSQL does) and once through
// pgmux. Through pgmux, after every step another client takes the backend just released
// (it must see the login user, never the role), and with a pool of 2 a holder then keeps
// that backend busy so the client's check runs on the other backend.

const DB = 'pgmux_setrole';
const ROLE = 'pgmux_setrole_app';

type Step = string | { text: string; values: unknown[] } | { extended: string };

interface Who {
  cu: string;
  su: string;
}

async function who(c: pg.Client): Promise<string> {
  const r = await c.query('SELECT current_user AS cu, session_user AS su');
  const w = r.rows[0] as Who;
  return `${w.cu}/${w.su}`;
}

async function pid(c: pg.Client): Promise<number> {
  return (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
}

async function step(c: pg.Client, s: Step): Promise<string> {
  if (typeof s === 'string') await c.query(s);
  else if ('extended' in s) await c.query({ text: s.extended, queryMode: 'extended' } as pg.QueryConfig);
  else await c.query(s.text, s.values);
  return who(c);
}

const SCRIPTS: Record<string, Step[]> = {
  'SET ROLE, then RESET ROLE': [`SET ROLE ${ROLE}`, 'SELECT 1', 'RESET ROLE', 'SELECT 1'],
  'SET ROLE NONE after SET ROLE': [`SET ROLE ${ROLE}`, 'SET ROLE NONE', 'SELECT 1'],
  'SET LOCAL ROLE inside a transaction': ['BEGIN', `SET LOCAL ROLE ${ROLE}`, 'SELECT 1', 'COMMIT', 'SELECT 1'],
  'SET ROLE inside a rolled-back transaction': ['BEGIN', `SET ROLE ${ROLE}`, 'ROLLBACK', 'SELECT 1'],
  'SET ROLE inside a committed transaction': ['BEGIN', `SET ROLE ${ROLE}`, 'COMMIT', 'SELECT 1'],
  'SET ROLE through the extended protocol': [{ extended: `SET ROLE ${ROLE}` }, 'SELECT 1', { extended: 'RESET ROLE' }, 'SELECT 1'],
  "set_config('role', $1) with a parameter": [{ text: "SELECT set_config('role', $1, false)", values: [ROLE] }, 'SELECT 1'],
  'SET SESSION AUTHORIZATION, then RESET SESSION AUTHORIZATION': [`SET SESSION AUTHORIZATION ${ROLE}`, 'SELECT 1', 'RESET SESSION AUTHORIZATION', 'SELECT 1'],
  'SET SESSION AUTHORIZATION, then SET ROLE NONE': [`SET SESSION AUTHORIZATION ${ROLE}`, 'SET ROLE NONE', 'SELECT 1'],
};

let login = '';

beforeAll(async () => {
  const su = await pgClient(primaryPort(), { database: 'postgres' });
  await su.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await su.query(`CREATE DATABASE ${DB}`);
  await su.query(`DROP ROLE IF EXISTS ${ROLE}`);
  await su.query(`CREATE ROLE ${ROLE} NOLOGIN`);
  login = (await su.query('SELECT session_user AS u')).rows[0].u as string;
  await su.end();
});

afterAll(async () => {
  const su = await pgClient(primaryPort(), { database: 'postgres' });
  await su.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await su.query(`DROP ROLE IF EXISTS ${ROLE}`);
  await su.end();
});

describe.each([1, 2])('SET ROLE under transaction pooling (pool of %i)', (poolSize) => {
  let proxy: TestProxy;
  const open: pg.Client[] = [];

  async function client(port: number): Promise<pg.Client> {
    const c = await pgClient(port, { database: DB });
    c.on('error', () => undefined);
    open.push(c);
    return c;
  }

  beforeEach(async () => {
    const primary = clusterInfo().nodes[0]!;
    proxy = await startProxy({
      poolSize,
      poolMode: 'transaction',
      nodes: [{ host: primary.host, port: primary.port, weight: 1 }],
      queryWaitTimeoutMs: 15_000,
    });
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.end().catch(() => undefined)));
    await proxy?.close();
  });

  it.each(Object.keys(SCRIPTS))('%s: as on a direct connection, and never seen by another client', async (name) => {
    const script = SCRIPTS[name]!;
    const direct = await client(primaryPort());
    const expected: string[] = [];
    for (const s of script) expected.push(await step(direct, s));
    // The script really changes who the client is (else it would prove nothing).
    expect(expected.some((w) => w !== `${login}/${login}`)).toBe(true);

    const c = await client(proxy.port);
    const other = await client(proxy.port);
    const got: string[] = [];
    const others: string[] = [];
    let inTx = false;
    // SET SESSION AUTHORIZATION keeps the client on its backend until it leaves.
    let pinned = false;
    for (const s of script) {
      const seen = await step(c, s);
      const text = typeof s === 'string' ? s : 'extended' in s ? s.extended : s.text;
      if (text === 'BEGIN') inTx = true;
      if (text === 'COMMIT' || text === 'ROLLBACK') inTx = false;
      if (text.startsWith('SET SESSION AUTHORIZATION')) pinned = true;
      // Another client's transaction on the backend the client just released (or, with
      // the client pinned to one of 2, on the other backend).
      if (!inTx && !(pinned && poolSize === 1)) others.push(await who(other));
      if (poolSize === 2 && !inTx && !pinned) {
        // Busy the backend the client left; the client's check then runs on the other one.
        const holder = await client(proxy.port);
        await holder.query('BEGIN');
        const held = await pid(holder);
        const mine = await pid(c);
        expect(mine).not.toBe(held);
        got.push(await who(c));
        await holder.query('COMMIT');
        await holder.end();
        open.splice(open.indexOf(holder), 1);
      } else {
        got.push(seen);
      }
    }
    expect(got).toEqual(expected);
    expect(others.every((w) => w === `${login}/${login}`)).toBe(true);

    // After the client leaves, every backend of the pool is back to the login user.
    await c.end();
    open.splice(open.indexOf(c), 1);
    const probes = await Promise.all(Array.from({ length: poolSize }, () => client(proxy.port)));
    for (const p of probes) await p.query('BEGIN');
    const seenAfter = await Promise.all(probes.map((p) => who(p)));
    for (const p of probes) await p.query('COMMIT');
    expect(seenAfter).toEqual(probes.map(() => `${login}/${login}`));
  });

});
