// `pgmux import` end to end: a Pgpool-II and a PgBouncer configuration in front of the harness's
// cluster are imported with the CLI, loaded with pgmux's own loader and served; logins the
// source accepted still work and logins it refused are still refused.
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { main } from '../../src/cli.js';
import { loadConfig } from '../../src/config/load.js';
import { pgpoolAesEncrypt } from '../../src/import/poolPasswd.js';
import { clusterInfo, pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { makeTestPki, type TestPki } from '../support/certs.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-import-it-'));
const md5Secret = (user: string, password: string) => 'md5' + createHash('md5').update(password + user).digest('hex');
const open: pg.Client[] = [];

afterAll(async () => {
  for (const c of open) await c.end().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
});

async function importTo(name: string, source: string, extra: string[] = []): Promise<string> {
  const out = { stdout: '', stderr: '' };
  const yaml = join(dir, name, 'pgmux.yaml');
  const code = await main(['import', source, '--output', yaml, ...extra], {
    out: (s) => void (out.stdout += s),
    err: (s) => void (out.stderr += s),
    env: { HOME: '/nonexistent' },
  });
  expect(code, out.stderr).toBe(0);
  return yaml;
}

/** pgmux started from the imported file (port 0 and the harness's quick health checks on top). */
async function serve(yaml: string): Promise<TestProxy> {
  const loaded = loadConfig({ config: yaml }, {});
  const { listen: _listen, healthCheckUser: _u, healthCheckPassword: _p, ...rest } = loaded;
  return startProxy(rest);
}

async function login(port: number, user: string, password?: string): Promise<string> {
  const c = await pgClient(port, { user, password, database: 'postgres' });
  c.on('error', () => {});
  open.push(c);
  return (await c.query('SELECT current_user AS u')).rows[0].u as string;
}

async function loginCode(port: number, user: string, password?: string): Promise<string | undefined> {
  try {
    await login(port, user, password);
  } catch (e) {
    return (e as { code?: string }).code;
  }
  throw new Error(`login as ${user} unexpectedly succeeded`);
}

describe('pgpool.conf with pool_hba.conf and pool_passwd (AES, TEXT, md5)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const src = join(dir, 'pgpool');
    const outDir = join(dir, 'pgpool-out');
    mkdirSync(src, { recursive: true });
    mkdirSync(outDir, { recursive: true });
    const nodes = clusterInfo().nodes;
    writeFileSync(
      join(src, 'pgpool.conf'),
      "backend_clustering_mode = 'streaming_replication'\nlisten_addresses = 'localhost'\nport = 9999\n" +
        nodes.map((n, i) => `backend_hostname${i} = '${n.host}'\nbackend_port${i} = ${n.port}\nbackend_weight${i} = 1\n`).join('') +
        "enable_pool_hba = on\npool_passwd = 'pool_passwd'\nhealth_check_user = 'postgres'\n",
    );
    writeFileSync(join(src, 'pgpoolkey'), 'integration key\n', { mode: 0o600 });
    writeFileSync(
      join(src, 'pool_passwd'),
      `app_md5:AES${pgpoolAesEncrypt('md5pass', 'integration key')}\napp_scram:TEXTscrampass\napp:${md5Secret('app', 'apppass')}\n`,
    );
    writeFileSync(
      join(src, 'pool_hba.conf'),
      'host all app_md5,app_scram 127.0.0.1/32 scram-sha-256\nhost all app 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 reject\n',
    );
    const yaml = await importTo('pgpool-out', join(src, 'pgpool.conf'), ['--pgpool-key-file', join(src, 'pgpoolkey')]);
    proxy = await serve(yaml);
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('an AES pool_passwd entry logs in with its password (decrypted with the key file)', async () => {
    expect(await login(proxy.port, 'app_md5', 'md5pass')).toBe('app_md5');
    expect(await loginCode(proxy.port, 'app_md5', 'wrong')).toBe('28P01');
  });

  it('TEXT and md5 entries log in by the pool_hba.conf method of their line', async () => {
    expect(await login(proxy.port, 'app_scram', 'scrampass')).toBe('app_scram');
    expect(await login(proxy.port, 'app', 'apppass')).toBe('app');
  });

  it('a user pool_hba.conf rejects is still rejected (28000)', async () => {
    expect(await loginCode(proxy.port, 'postgres')).toBe('28000');
  });
});

describe("pgbouncer.ini with auth_type = trust: only the auth file's users get in", () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const src = join(dir, 'pgbouncer');
    mkdirSync(src, { recursive: true });
    mkdirSync(join(dir, 'pgbouncer-out'), { recursive: true });
    const p = clusterInfo().nodes[0]!;
    writeFileSync(join(src, 'userlist.txt'), '"app" "apppass"\n');
    writeFileSync(
      join(src, 'pgbouncer.ini'),
      `[databases]\npostgres = host=${p.host} port=${p.port}\n* = host=${p.host} port=${p.port}\n` +
        '[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\nauth_type = trust\nauth_file = userlist.txt\n',
    );
    proxy = await serve(await importTo('pgbouncer-out', join(src, 'pgbouncer.ini')));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('a listed user logs in without a password, as with PgBouncer', async () => {
    expect(await login(proxy.port, 'app')).toBe('app');
  });

  it('a user missing from the auth file is refused (pgmux trust alone would let it in)', async () => {
    expect(await loginCode(proxy.port, 'app_md5', 'md5pass')).toBe('28000');
  });
});

describe('pgbouncer.ini with client_tls_sslmode = require and auth_type = hba', () => {
  let proxy: TestProxy;
  let pki: TestPki;
  beforeAll(async () => {
    pki = makeTestPki();
    const src = join(dir, 'pgbouncer-tls');
    mkdirSync(src, { recursive: true });
    mkdirSync(join(dir, 'pgbouncer-tls-out'), { recursive: true });
    const p = clusterInfo().nodes[0]!;
    writeFileSync(join(src, 'userlist.txt'), `"app_md5" "md5pass"\n"app" "${md5Secret('app', 'apppass')}"\n`);
    writeFileSync(join(src, 'pg_hba.conf'), 'hostssl all app_md5 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 reject\n');
    writeFileSync(
      join(src, 'pgbouncer.ini'),
      `[databases]\n* = host=${p.host} port=${p.port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 6432\n` +
        `client_tls_sslmode = require\nclient_tls_cert_file = ${pki.server.cert}\nclient_tls_key_file = ${pki.server.key}\n` +
        'auth_type = hba\nauth_hba_file = pg_hba.conf\nauth_file = userlist.txt\n',
    );
    proxy = await serve(await importTo('pgbouncer-tls-out', join(src, 'pgbouncer.ini')));
  });
  afterAll(async () => {
    await proxy?.close();
    pki?.cleanup();
  });

  it('plaintext is refused by client_tls itself (28000), as PgBouncer refused it', async () => {
    const e = await pgClient(proxy.port, { user: 'app_md5', password: 'md5pass', database: 'postgres', ssl: false }).then(
      (x) => {
        x.on('error', () => {});
        open.push(x);
        return null;
      },
      (err: Error & { code?: string }) => err,
    );
    expect(e?.code).toBe('28000');
    expect(e?.message).toMatch(/SSL required: client_tls is require/);
  });

  it('over TLS the HBA line decides: app_md5 logs in with SCRAM, app is rejected', async () => {
    const tls = { ssl: { rejectUnauthorized: false } };
    const c = await pgClient(proxy.port, { user: 'app_md5', password: 'md5pass', database: 'postgres', ...tls });
    c.on('error', () => {});
    open.push(c);
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe('app_md5');
    const e = await pgClient(proxy.port, { user: 'app', password: 'apppass', database: 'postgres', ...tls }).then(
      (x) => {
        x.on('error', () => {});
        open.push(x);
        return undefined;
      },
      (err: { code?: string }) => err.code,
    );
    expect(e).toBe('28000');
  });
});
