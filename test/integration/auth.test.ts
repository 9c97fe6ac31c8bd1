// Client authentication to pgmux (trust, password, md5, SCRAM-SHA-256 against an auth file)
// and backend login failures, which reach the client with PostgreSQL's own SQLSTATE.
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { firstError, RawClient, rows, startupPacket } from '../support/rawClient.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-auth-'));
function authFile(name: string, lines: string[]): string {
  const p = join(dir, name);
  writeFileSync(p, lines.join('\n') + '\n');
  return p;
}
const md5Secret = (user: string, password: string) => 'md5' + createHash('md5').update(password + user).digest('hex');

function primaryOnly() {
  return { nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] };
}

const open: pg.Client[] = [];
async function login(port: number, opts: Parameters<typeof pgClient>[1]): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  c.on('error', () => {});
  open.push(c);
  return c;
}

/** The error a failed login rejects with (fails the test if the login succeeds). */
async function loginError(port: number, opts: Parameters<typeof pgClient>[1]): Promise<Error & { code?: string; severity?: string }> {
  let c: pg.Client | undefined;
  try {
    c = await pgClient(port, opts);
  } catch (e) {
    return e as Error & { code?: string };
  }
  await c.end();
  throw new Error(`login as ${opts?.user} unexpectedly succeeded`);
}

async function whoami(c: pg.Client): Promise<string> {
  return (await c.query('SELECT current_user AS u')).rows[0].u;
}

afterAll(async () => {
  for (const c of open) await c.end().catch(() => {});
});

describe('auth md5 with an auth file', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const file = authFile('md5.txt', [
      '; PgBouncer userlist format',
      '"app_md5" "md5pass"',
      `"app" "${md5Secret('app', 'apppass')}"`,
    ]);
    proxy = await startProxy({ ...primaryOnly(), auth: 'md5', authFile: file, poolSize: 2 });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('plain auth-file password: the right password logs in (backend md5 via pg_hba)', async () => {
    const c = await login(proxy.port, { user: 'app_md5', password: 'md5pass' });
    expect(await whoami(c)).toBe('app_md5');
    expect((await c.query('SELECT count(*)::int AS n FROM pgbench_branches')).rows[0].n).toBe(1);
  });

  it('md5-secret auth-file entry: the right password logs in', async () => {
    const c = await login(proxy.port, { user: 'app', password: 'apppass' });
    expect(await whoami(c)).toBe('app');
  });

  it('a wrong password gets 28P01 (not 08P01) and the connection is refused', async () => {
    const e = await loginError(proxy.port, { user: 'app_md5', password: 'nope' });
    expect(e.code).toBe('28P01');
    expect(e.message).toMatch(/password authentication failed/);
    const e2 = await loginError(proxy.port, { user: 'app', password: 'md5pass' });
    expect(e2.code).toBe('28P01');
  });

  it('an unknown user gets 28P01 as well', async () => {
    const e = await loginError(proxy.port, { user: 'nobody_here', password: 'x' });
    expect(e.code).toBe('28P01');
  });

  it('the proxy keeps serving after failed logins', async () => {
    const c = await login(proxy.port, { user: 'app_md5', password: 'md5pass' });
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  });
});

describe('auth scram-sha-256', () => {
  let proxy: TestProxy;
  let verifierProxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({
      ...primaryOnly(),
      auth: 'scram-sha-256',
      authFile: authFile('scram.txt', ['"app_scram" "scrampass"', '"app" "apppass"']),
      poolSize: 2,
    });
    // The real SCRAM verifier PostgreSQL stores: pgmux checks the client with it and logs
    // in to the backend with server_password.
    const su = await pgClient(primaryPort(), { database: 'postgres' });
    const v = (await su.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_scram'")).rows[0].rolpassword as string;
    await su.end();
    expect(v).toMatch(/^SCRAM-SHA-256\$/);
    verifierProxy = await startProxy({
      ...primaryOnly(),
      auth: 'scram-sha-256',
      authFile: authFile('scram-verifier.txt', [`"app_scram" "${v}"`]),
      serverPassword: 'scrampass',
      poolSize: 2,
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await verifierProxy?.close();
  });

  it("pg's client logs in with SCRAM (plain password in the auth file)", async () => {
    const c = await login(proxy.port, { user: 'app_scram', password: 'scrampass' });
    expect(await whoami(c)).toBe('app_scram');
    const c2 = await login(proxy.port, { user: 'app', password: 'apppass' });
    expect(await whoami(c2)).toBe('app');
  });

  it('a wrong SCRAM password gets 28P01', async () => {
    const e = await loginError(proxy.port, { user: 'app_scram', password: 'wrong' });
    expect(e.code).toBe('28P01');
    expect(e.message).toMatch(/password authentication failed/);
  });

  it('SCRAM against a stored verifier works, with server_password for the backend', async () => {
    const c = await login(verifierProxy.port, { user: 'app_scram', password: 'scrampass' });
    expect(await whoami(c)).toBe('app_scram');
    const e = await loginError(verifierProxy.port, { user: 'app_scram', password: 'scrampas' });
    expect(e.code).toBe('28P01');
  });
});

describe('auth password (cleartext)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({
      ...primaryOnly(),
      auth: 'password',
      authFile: authFile('plain.txt', ['"app_md5" "md5pass"', `"app" "${md5Secret('app', 'apppass')}"`]),
      poolSize: 2,
    });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it("pg's client logs in with a cleartext password", async () => {
    const c = await login(proxy.port, { user: 'app_md5', password: 'md5pass' });
    expect(await whoami(c)).toBe('app_md5');
  });

  it('a cleartext password is checked against an md5 secret', async () => {
    const c = await login(proxy.port, { user: 'app', password: 'apppass' });
    expect(await whoami(c)).toBe('app');
  });

  it('raw client: AuthenticationCleartextPassword, then AuthenticationOk ... ReadyForQuery', async () => {
    const c = await RawClient.connect(proxy.port);
    try {
      const msgs = await c.startup({ user: 'app_md5', database: 'app' }, { password: 'md5pass' });
      expect(msgs[0]!.type).toBe('R');
      expect(msgs[0]!.body.readInt32BE(0)).toBe(3);
      expect(msgs[1]!.type).toBe('R');
      expect(msgs[1]!.body.readInt32BE(0)).toBe(0);
      expect(msgs.at(-1)!.type).toBe('Z');
      expect(msgs.some((m) => m.type === 'K')).toBe(true);
      expect(rows(await c.query('SELECT current_user'))).toEqual([['app_md5']]);
    } finally {
      c.destroy();
    }
  });

  it('a wrong or empty cleartext password gets 28P01 and a closed connection', async () => {
    const e = await loginError(proxy.port, { user: 'app_md5', password: 'bad' });
    expect(e.code).toBe('28P01');
    const c = await RawClient.connect(proxy.port);
    try {
      const msgs = await c.startup({ user: 'app_md5', database: 'app' }, { password: '' });
      const err = firstError(msgs);
      expect(err?.code).toBe('28P01');
      expect(err?.severity).toBe('FATAL');
      expect(await c.waitClosed(2000)).toBe(true);
    } finally {
      c.destroy();
    }
  });
});

describe('auth trust: backend login failures carry PostgreSQL\'s error', () => {
  let proxy: TestProxy;
  let wrongPwProxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ ...primaryOnly(), auth: 'trust', poolSize: 2 });
    wrongPwProxy = await startProxy({ ...primaryOnly(), auth: 'trust', serverPassword: 'not-the-password', poolSize: 2 });
  });
  afterAll(async () => {
    await proxy?.close();
    await wrongPwProxy?.close();
  });

  it('trust logs in users pg_hba trusts', async () => {
    const c = await login(proxy.port, { user: 'app' });
    expect(await whoami(c)).toBe('app');
  });

  it('md5-only user with no known password: the login fails with 28P01/28000', async () => {
    const e = await loginError(proxy.port, { user: 'app_md5' });
    expect(['28P01', '28000']).toContain(e.code);
    expect(e.code).not.toBe('08P01');
  });

  it('md5-only user with a wrong server password: PostgreSQL\'s own 28P01 and message', async () => {
    const e = await loginError(wrongPwProxy.port, { user: 'app_md5' });
    expect(e.code).toBe('28P01');
    expect(e.message).toBe('password authentication failed for user "app_md5"');
  });

  it('an unknown database gets PostgreSQL\'s 3D000', async () => {
    const e = await loginError(proxy.port, { database: 'no_such_db_pgmux' });
    expect(e.code).toBe('3D000');
    expect(e.message).toBe('database "no_such_db_pgmux" does not exist');
  });

  it('an unknown role gets PostgreSQL\'s 28000', async () => {
    const e = await loginError(proxy.port, { user: 'no_such_role_pgmux' });
    expect(e.code).toBe('28000');
    expect(e.message).toMatch(/role "no_such_role_pgmux" does not exist/);
  });

  it('a bad setting in startup options gets PostgreSQL\'s error', async () => {
    const e = await loginError(proxy.port, { options: '-c statement_timeout=notanumber' });
    expect(e.code).toBe('22023');
    const e2 = await loginError(proxy.port, { options: '-c no_such_setting_xyz=1' });
    expect(e2.code).toBe('42704');
  });

  it('a login rejected for an unknown setting does not make the next login on that backend fail', async () => {
    const p1 = await startProxy({ ...primaryOnly(), auth: 'trust', poolSize: 1 });
    try {
      const e = await loginError(p1.port, { options: '-c no_such_setting_abc=1' });
      expect(e.code).toBe('42704');
      // A different client, no options at all, on the pool's only backend.
      const c = await login(p1.port, { application_name: 'after_bad_login' });
      expect((await c.query("SELECT current_setting('application_name') AS a")).rows).toEqual([{ a: 'after_bad_login' }]);
    } finally {
      await p1.close();
    }
  });

  it('raw client: the failed login is a FATAL ErrorResponse followed by a close', async () => {
    const c = await RawClient.connect(proxy.port);
    try {
      c.send(startupPacket({ user: 'postgres', database: 'no_such_db_pgmux' }));
      const msgs = await c.readAll(3000);
      const e = firstError(msgs);
      expect(e?.code).toBe('3D000');
      expect(e?.severity).toBe('FATAL');
      expect(msgs.some((m) => m.type === 'Z')).toBe(false);
      expect(c.closed).toBe(true);
    } finally {
      c.destroy();
    }
  });

  it('the proxy keeps serving after backend login failures', async () => {
    const c = await login(proxy.port, { user: 'postgres' });
    expect((await c.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
  });
});
