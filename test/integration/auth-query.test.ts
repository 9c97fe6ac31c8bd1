// auth_query: users missing from the auth file are looked up on the primary (as auth_user),
// and SCRAM verifiers found there are used for pass-through logins to the backends.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-authq-'));
const open: pg.Client[] = [];

async function login(port: number, user: string, password: string): Promise<pg.Client> {
  const c = await pgClient(port, { user, password });
  c.on('error', () => {});
  open.push(c);
  return c;
}

async function loginError(port: number, user: string, password: string): Promise<Error & { code?: string }> {
  let c: pg.Client | undefined;
  try {
    c = await pgClient(port, { user, password });
  } catch (e) {
    return e as Error & { code?: string };
  }
  await c.end();
  throw new Error(`login as ${user} unexpectedly succeeded`);
}

afterAll(async () => {
  for (const c of open) await c.end().catch(() => {});
});

describe('auth_query with SCRAM pass-through', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    // No auth file at all: every login below uses auth_query.
    proxy = await startProxy({
      auth: 'scram-sha-256',
      authFile: null,
      authUser: 'postgres',
      nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }],
    });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('a SCRAM user logs in and its backends use the pass-through keys', async () => {
    const c = await login(proxy.port, 'app_scram', 'scrampass');
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe('app_scram');
    // No plain password was ever given to pgmux: the backend login used the proved keys.
    expect(proxy.proxy.config().serverPassword).toBeNull();
  });

  it('a second login is served from the cache', async () => {
    const before = proxy.proxy.authQueryLookups;
    const c = await login(proxy.port, 'app_scram', 'scrampass');
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    expect(proxy.proxy.authQueryLookups).toBe(before);
  });

  it('a wrong password fails with 28P01', async () => {
    const e = await loginError(proxy.port, 'app_scram', 'nope');
    expect(e.code).toBe('28P01');
  });

  it('an unknown user fails with 28P01', async () => {
    const e = await loginError(proxy.port, 'no_such_user_xyz', 'whatever');
    expect(e.code).toBe('28P01');
  });

  it('an md5 user logs in (md5 secret from pg_shadow)', async () => {
    const c = await login(proxy.port, 'app_md5', 'md5pass');
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe('app_md5');
  });
});

describe('auth_query when the lookup cannot run', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const file = join(dir, 'users2.txt');
    writeFileSync(file, '"somebody_else" "irrelevant"\n');
    proxy = await startProxy({
      auth: 'scram-sha-256',
      authFile: file,
      authUser: 'no_such_auth_role',
      nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }],
    });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('fails the login with 08006', async () => {
    const e = await loginError(proxy.port, 'app_scram', 'scrampass');
    expect(e.code).toBe('08006');
    expect(e.message).toContain('auth_query');
  });
});
