// TLS on both sides, HBA rules and connection limits, through real clients (psql, pg) and
// real PostgreSQL (the shared cluster without TLS, and a cluster of this file's own with
// ssl=on for pgmux -> backend TLS).
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import type { Config } from '../../src/config/types.js';
import { pgClient, psqlBin, runPg, waitUntilRunning } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { makeTestPki, type TestPki } from '../support/certs.js';
import { firstError, parseErrorFields, queryMsg, RawClient, sendCancel, sslRequest, startupPacket } from '../support/rawClient.js';

let pki: TestPki;
let dir: string;

beforeAll(() => {
  pki = makeTestPki();
  dir = mkdtempSync(join(tmpdir(), 'pgmux-tls-test-'));
});
afterAll(() => {
  pki?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function tlsOverrides(mode: 'allow' | 'require', extra: Partial<Config> = {}): Partial<Config> {
  return { clientTls: mode, clientTlsCertFile: pki.server.cert, clientTlsKeyFile: pki.server.key, ...extra };
}

/** psql through pgmux with a libpq connection string; returns the run. */
function psql(port: number, conn: string, sql: string) {
  return runPg(psqlBin(), ['-X', '-At', '-c', sql, `port=${port} user=postgres dbname=app ${conn}`], { timeoutMs: 30_000 });
}

/** The SQLSTATE a pg client's connect fails with (or 'ok'). */
async function connectCode(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<string> {
  try {
    const c = await pgClient(port, opts);
    await c.end();
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

async function connectError(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<{ code?: string; message: string }> {
  try {
    const c = await pgClient(port, opts);
    await c.end();
  } catch (err) {
    return { code: (err as { code?: string }).code, message: (err as Error).message };
  }
  throw new Error('connected, expected a refusal');
}

/** A TLS connection from the first byte (PostgreSQL 17's sslnegotiation=direct). */
function directTls(port: number, alpn: string[] | undefined): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const t = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.ca.cert), servername: 'localhost', ...(alpn ? { ALPNProtocols: alpn } : {}) });
    t.once('secureConnect', () => resolve(t));
    t.once('error', reject);
  });
}

/** Sends `bytes`, then collects the server's messages until ReadyForQuery or close. */
function exchange(t: tls.TLSSocket, bytes: Buffer, timeoutMs = 5000): Promise<{ types: string; errors: Array<ReturnType<typeof parseErrorFields>>; rows: string[]; closed: boolean }> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const types: string[] = [];
    const errors: Array<ReturnType<typeof parseErrorFields>> = [];
    const rows: string[] = [];
    const done = (closed: boolean) => {
      clearTimeout(timer);
      t.off('data', onData);
      resolve({ types: types.join(''), errors, rows, closed });
    };
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const type = String.fromCharCode(buf[0]!);
        const body = buf.subarray(5, 1 + buf.readInt32BE(1));
        buf = buf.subarray(1 + buf.readInt32BE(1));
        types.push(type);
        if (type === 'E') errors.push(parseErrorFields(body));
        if (type === 'D') rows.push(body.toString('utf8', 6));
        if (type === 'Z') return done(false);
      }
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    t.on('data', onData);
    t.once('close', () => done(true));
    t.once('error', () => {});
    t.write(bytes);
  });
}

describe('client TLS', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy(tlsOverrides('require'));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('psql sslmode=require gets a TLS session and answers', async () => {
    const r = await psql(proxy.port, 'host=127.0.0.1 sslmode=require', 'SELECT 40 + 2');
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('42');
    const info = await psql(proxy.port, 'host=127.0.0.1 sslmode=require', '\\conninfo');
    expect(info.stdout).toMatch(/SSL connection \(protocol: TLSv1\.[23]/);
  });

  it('psql sslmode=verify-full with the CA, by host name and by IP', async () => {
    for (const host of ['localhost', '127.0.0.1']) {
      const r = await psql(proxy.port, `host=${host} sslmode=verify-full sslrootcert=${pki.ca.cert}`, 'SELECT 1');
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('1');
    }
  });

  it('psql sslmode=verify-full against another CA fails the handshake', async () => {
    const r = await psql(proxy.port, `host=localhost sslmode=verify-full sslrootcert=${pki.otherCa.cert}`, 'SELECT 1');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/certificate verify failed/);
  });

  it('plaintext (sslmode=disable) is refused with 28000 naming client_tls', async () => {
    const r = await psql(proxy.port, 'host=127.0.0.1 sslmode=disable', 'SELECT 1');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/SSL required: client_tls is require/);
    const e = await connectError(proxy.port, { ssl: false });
    expect(e.code).toBe('28000');
  });

  it('node-postgres with ssl and the CA works; prepared statements go over TLS too', async () => {
    const c = await pgClient(proxy.port, { host: 'localhost', ssl: { ca: readFileSync(pki.ca.cert), servername: 'localhost' } });
    try {
      const r = await c.query({ name: 'tls_q', text: 'SELECT $1::int * 2 AS n', values: [21] });
      expect(r.rows).toEqual([{ n: 42 }]);
      const big = await c.query("SELECT repeat('x', 1000000) AS s");
      expect(big.rows[0].s.length).toBe(1_000_000);
    } finally {
      await c.end();
    }
  });

  it('direct TLS with ALPN "postgresql" logs in and queries; without ALPN it is closed', async () => {
    const t = await directTls(proxy.port, ['postgresql']);
    try {
      expect(t.alpnProtocol).toBe('postgresql');
      const login = await exchange(t, startupPacket({ user: 'postgres', database: 'app' }));
      expect(login.errors).toEqual([]);
      expect(login.types).toMatch(/^R.*KZ$/);
      const q = await exchange(t, queryMsg('SELECT 6 * 7'));
      expect(q.rows).toEqual(['42']);
    } finally {
      t.destroy();
    }
    const bare = await directTls(proxy.port, undefined).catch((e: Error) => e);
    if (bare instanceof Error) return; // refused during the handshake: fine too
    const r = await exchange(bare, startupPacket({ user: 'postgres', database: 'app' }));
    expect(r).toMatchObject({ closed: true, types: '' });
  });

  it('bytes sent after SSLRequest before the handshake are refused (08P01)', async () => {
    const c = await RawClient.connect(proxy.port);
    c.send(Buffer.concat([sslRequest(), startupPacket({ user: 'postgres', database: 'app' })]));
    const msgs = await c.readAll(3000);
    expect(firstError(msgs)).toMatchObject({ code: '08P01', message: 'received unencrypted data after SSL request' });
    expect(c.closed).toBe(true);
  });

  it('a cancel request is still accepted in plaintext', async () => {
    const c = await pgClient(proxy.port, { ssl: { rejectUnauthorized: false } });
    try {
      const pid = (c as unknown as { processID: number }).processID;
      const secret = (c as unknown as { secretKey: number }).secretKey;
      const running = c.query('SELECT pg_sleep(10)').then(
        () => 'finished',
        (e: { code?: string }) => e.code,
      );
      await waitUntilRunning('SELECT pg_sleep(10)');
      const t0 = Date.now();
      await sendCancel(proxy.port, pid, secret);
      expect(await running).toBe('57014');
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      await c.end();
    }
  });
});

/** The certificate pgmux presents after an SSLRequest: its subject CN. */
async function presentedCn(port: number): Promise<string> {
  const socket = net.connect({ host: '127.0.0.1', port });
  await new Promise((r) => socket.once('connect', r));
  socket.write(sslRequest());
  const answer = await new Promise<Buffer>((r) => socket.once('data', r));
  expect(answer.toString()).toBe('S');
  const t = tls.connect({ socket, rejectUnauthorized: false });
  await new Promise((res, rej) => {
    t.once('secureConnect', res);
    t.once('error', rej);
  });
  const cn = String(t.getPeerCertificate().subject.CN);
  t.destroy();
  return cn;
}

describe('certificate rotation', () => {
  it('RELOAD serves the new certificate files; a broken file keeps the old one', async () => {
    const certFile = join(dir, 'rotating.crt');
    const keyFile = join(dir, 'rotating.key');
    const first = pki.issue('first', { cn: 'first.pgmux.test', san: 'DNS:localhost,IP:127.0.0.1' });
    const second = pki.issue('second', { cn: 'second.pgmux.test', san: 'DNS:localhost,IP:127.0.0.1' });
    copyFileSync(first.cert, certFile);
    copyFileSync(first.key, keyFile);
    const overrides = tlsOverrides('require', { clientTlsCertFile: certFile, clientTlsKeyFile: keyFile });
    const proxy = await startProxy(overrides);
    proxy.proxy.reloadSource = () => testConfig(overrides);
    try {
      expect(await presentedCn(proxy.port)).toBe('first.pgmux.test');
      const held = await pgClient(proxy.port, { ssl: { rejectUnauthorized: false } });
      copyFileSync(second.cert, certFile);
      copyFileSync(second.key, keyFile);
      expect(await presentedCn(proxy.port)).toBe('first.pgmux.test'); // nothing changes before RELOAD
      expect((await proxy.proxy.reload()).ok).toBe(true);
      expect(await presentedCn(proxy.port)).toBe('second.pgmux.test');
      // A connection opened before the reload goes on.
      expect((await held.query('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
      await held.end();
      // A key that does not match the certificate: refused, the second certificate stays.
      copyFileSync(first.key, keyFile);
      const bad = await proxy.proxy.reload();
      expect(bad.ok).toBe(false);
      expect(bad.message).toMatch(/^client_tls_key_file: .* is not a usable private key/);
      expect(await presentedCn(proxy.port)).toBe('second.pgmux.test');
      const r = await psql(proxy.port, `host=localhost sslmode=verify-full sslrootcert=${pki.ca.cert}`, 'SELECT 7');
      expect(r.stdout.trim()).toBe('7');
    } finally {
      await proxy.close();
    }
  });
});

describe('client_tls allow', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy(tlsOverrides('allow'));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('serves TLS and plaintext clients side by side', async () => {
    const tlsRun = await psql(proxy.port, 'host=127.0.0.1 sslmode=require', '\\conninfo');
    expect(tlsRun.stdout).toMatch(/SSL connection/);
    const plain = await psql(proxy.port, 'host=127.0.0.1 sslmode=disable', '\\conninfo');
    expect(plain.stderr).toBe('');
    expect(plain.stdout).not.toMatch(/SSL connection/);
    expect(await connectCode(proxy.port)).toBe('ok');
  });
});

describe('hba_file', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const hba = join(dir, 'pgmux_hba.conf');
    writeFileSync(
      hba,
      [
        '# TYPE     DATABASE  USER         ADDRESS        METHOD',
        'host       all       blocked      0.0.0.0/0      reject',
        'host       postgres  all          10.0.0.0/8     trust   # nobody here comes from 10/8',
        'hostssl    app       app_scram    127.0.0.1/32   trust',
        'hostnossl  app       app_scram    127.0.0.1/32   reject',
        'host       app       app_md5      127.0.0.1/32   md5',
        'hostnossl  app       all          127.0.0.1/32   trust',
        'hostssl    app       all          127.0.0.1/32   trust',
      ].join('\n') + '\n',
    );
    const users = join(dir, 'users.txt');
    writeFileSync(users, '"app_md5" "md5pass"\n"app_scram" "scrampass"\n');
    proxy = await startProxy(tlsOverrides('allow', { hbaFile: hba, authFile: users, auth: 'trust' }));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('a reject rule refuses with 28000, as PostgreSQL words it', async () => {
    const e = await connectError(proxy.port, { user: 'blocked' });
    expect(e.code).toBe('28000');
    expect(e.message).toBe('pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", no encryption');
  });

  it('an address outside the CIDR matches nothing: 28000 no pg_hba.conf entry', async () => {
    const e = await connectError(proxy.port, { database: 'postgres' });
    expect(e.code).toBe('28000');
    expect(e.message).toBe('no pg_hba.conf entry for host "127.0.0.1", user "postgres", database "postgres", no encryption');
    const r = await psql(proxy.port, 'host=127.0.0.1 sslmode=disable dbname=postgres', 'SELECT 1');
    expect(r.stderr).toMatch(/no pg_hba\.conf entry for host "127\.0\.0\.1", user "postgres", database "postgres", no encryption/);
  });

  it('hostssl matches only TLS connections, hostnossl only plaintext ones', async () => {
    const e = await connectError(proxy.port, { user: 'app_scram' });
    expect(e).toEqual({ code: '28000', message: 'pg_hba.conf rejects connection for host "127.0.0.1", user "app_scram", database "app", no encryption' });
    const c = await pgClient(proxy.port, { user: 'app_scram', ssl: { rejectUnauthorized: false } });
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: 'app_scram' }]);
    await c.end();
    const blocked = await connectError(proxy.port, { user: 'blocked', ssl: { rejectUnauthorized: false } });
    expect(blocked.message).toBe('pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", SSL encryption');
  });

  it('direct TLS connections are matched with the real client address and as SSL', async () => {
    const t = await directTls(proxy.port, ['postgresql']);
    const r = await exchange(t, startupPacket({ user: 'blocked', database: 'app' }));
    expect(r.errors.map((e) => [e.code, e.message])).toEqual([
      ['28000', 'pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "app", SSL encryption'],
    ]);
    t.destroy();
  });

  it("the matched rule's method replaces auth: md5 for app_md5", async () => {
    const bad = await connectError(proxy.port, { user: 'app_md5', password: 'wrong' });
    expect(bad.code).toBe('28P01');
    const c = await pgClient(proxy.port, { user: 'app_md5', password: 'md5pass' });
    expect((await c.query('SELECT current_user AS u')).rows).toEqual([{ u: 'app_md5' }]);
    await c.end();
  });
});

describe('client_tls disable', () => {
  it('answers SSLRequest with N and closes a direct TLS connection', async () => {
    const proxy = await startProxy();
    try {
      const c = await RawClient.connect(proxy.port);
      c.send(sslRequest());
      expect((await c.readBytes(1)).toString()).toBe('N');
      c.destroy();
      await expect(directTls(proxy.port, ['postgresql'])).rejects.toThrow(/socket disconnected|ECONNRESET|closed/);
      expect(await connectCode(proxy.port)).toBe('ok');
    } finally {
      await proxy.close();
    }
  });
});

describe('connection limits', () => {
  it('max_user_client_connections and max_db_client_connections give 53300; a freed slot is reusable', async () => {
    const proxy = await startProxy({ maxUserClientConnections: 2, maxDbClientConnections: 3 });
    const open: pg.Client[] = [];
    try {
      open.push(await pgClient(proxy.port), await pgClient(proxy.port));
      const e = await connectError(proxy.port);
      expect(e).toMatchObject({ code: '53300', message: 'too many connections for role "postgres"' });
      // Another user still gets in, up to the database's limit.
      open.push(await pgClient(proxy.port, { user: 'app', password: 'apppass' }));
      const d = await connectError(proxy.port, { user: 'app_scram', password: 'scrampass' });
      expect(d).toMatchObject({ code: '53300', message: 'too many connections for database "app"' });
      expect(await connectCode(proxy.port, { database: 'postgres', user: 'app', password: 'apppass' })).toBe('ok');
      await open.shift()!.end();
      await expect.poll(() => proxy.proxy.limits.userCount('postgres')).toBe(1);
      open.push(await pgClient(proxy.port));
    } finally {
      for (const c of open) await c.end().catch(() => {});
      await proxy.close();
    }
  });

  it('per-user limits count authenticated clients only: a stalled login cannot lock the user out', async () => {
    const users = join(dir, 'limit-users.txt');
    writeFileSync(users, '"app_scram" "scrampass"\n');
    const proxy = await startProxy({ auth: 'password', authFile: users, maxUserClientConnections: 1 });
    const stalled: RawClient[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const c = await RawClient.connect(proxy.port);
        c.send(startupPacket({ user: 'app_scram', database: 'app' }));
        expect((await c.read())?.type).toBe('R'); // asked for the password; never answered
        stalled.push(c);
      }
      const ok = await pgClient(proxy.port, { user: 'app_scram', password: 'scrampass' });
      const e = await connectError(proxy.port, { user: 'app_scram', password: 'scrampass' });
      expect(e).toMatchObject({ code: '53300', message: 'too many connections for role "app_scram"' });
      await ok.end();
    } finally {
      for (const c of stalled) c.destroy();
      await proxy.close();
    }
  });

  it('max_unauthenticated_connections: half-open connections past it are refused at accept', async () => {
    const proxy = await startProxy({ maxUnauthenticatedConnections: 2 });
    const idle: RawClient[] = [];
    try {
      idle.push(await RawClient.connect(proxy.port), await RawClient.connect(proxy.port));
      await expect.poll(() => proxy.proxy.limits.unauthenticated).toBe(2);
      const third = await RawClient.connect(proxy.port);
      const msgs = await third.readAll(3000);
      expect(firstError(msgs)).toMatchObject({ severity: 'FATAL', code: '53300', message: 'too many connections still logging in' });
      expect(third.closed).toBe(true);
      expect(await connectCode(proxy.port)).toBe('53300');
      expect(proxy.proxy.limits.refusedAtAccept).toBeGreaterThanOrEqual(2);
      // Logged-in clients do not count: once the idle ones go, logins work again and stay.
      for (const c of idle.splice(0)) c.destroy();
      await expect.poll(() => proxy.proxy.limits.unauthenticated).toBe(0);
      const a = await pgClient(proxy.port);
      const b = await pgClient(proxy.port);
      const c = await pgClient(proxy.port);
      expect(proxy.proxy.limits.unauthenticated).toBe(0);
      await Promise.all([a.end(), b.end(), c.end()]);
    } finally {
      for (const c of idle) c.destroy();
      await proxy.close();
    }
  });
});

describe('server TLS (pgmux -> PostgreSQL)', () => {
  let cluster: LocalCluster | undefined;
  let baseDir: string;

  beforeAll(async () => {
    // PostgreSQL runs as postgres when we are root: its key must be its own and 0600.
    baseDir = mkdtempSync(join(tmpdir(), 'pgmux-tls-cluster-'));
    const tlsDir = join(baseDir, 'tls');
    mkdirSync(tlsDir);
    copyFileSync(pki.server.cert, join(tlsDir, 'server.crt'));
    copyFileSync(pki.server.key, join(tlsDir, 'server.key'));
    chmodSync(join(tlsDir, 'server.key'), 0o600);
    if (process.getuid?.() === 0) execFileSync('chown', ['-R', 'postgres:postgres', baseDir]);
    cluster = await LocalCluster.start({
      replicas: 0,
      baseDir,
      settings: { ssl: 'on', ssl_cert_file: join(tlsDir, 'server.crt'), ssl_key_file: join(tlsDir, 'server.key') },
    });
    await cluster.query('node0', 'CREATE DATABASE app');
  }, 120_000);
  afterAll(async () => {
    await cluster?.stop();
    if (baseDir) rmSync(baseDir, { recursive: true, force: true });
  });

  function nodes(): Config['nodes'] {
    return cluster!.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
  }

  async function backendSsl(proxy: TestProxy): Promise<unknown> {
    const c = await pgClient(proxy.port);
    try {
      const r = await c.query('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      return r.rows[0];
    } finally {
      await c.end();
    }
  }

  it('verify-full with the CA: pooled backends are encrypted', async () => {
    const proxy = await startProxy({ nodes: nodes(), serverTls: 'verify-full', serverTlsCaFile: pki.ca.cert });
    try {
      expect(await backendSsl(proxy)).toMatchObject({ ssl: true, version: expect.stringMatching(/^TLSv1\.[23]$/) });
    } finally {
      await proxy.close();
    }
  });

  it('prefer encrypts when the node offers TLS; disable does not', async () => {
    for (const [mode, ssl] of [['prefer', true], ['disable', false]] as const) {
      const proxy = await startProxy({ nodes: nodes(), serverTls: mode });
      try {
        expect(await backendSsl(proxy)).toMatchObject({ ssl });
      } finally {
        await proxy.close();
      }
    }
  });

  it('verify-full against another CA: the client gets 08006 naming the certificate problem', async () => {
    const proxy = await startProxy({ nodes: nodes(), serverTls: 'verify-full', serverTlsCaFile: pki.otherCa.cert, failoverTimeoutMs: 500 });
    try {
      const e = await connectError(proxy.port);
      expect(e.code).toBe('08006');
      // Health checks use the same TLS settings, so the nodes look down: no primary.
      expect(e.message).toMatch(/could not connect|database node|no primary/);
    } finally {
      await proxy.close();
    }
  });

  it('require against a node without TLS (the shared cluster) fails; prefer falls back to plaintext', async () => {
    const strict = await startProxy({ serverTls: 'require', failoverTimeoutMs: 500 });
    try {
      const e = await connectError(strict.port);
      expect(e.code).toBe('08006');
    } finally {
      await strict.close();
    }
    const lenient = await startProxy({ serverTls: 'prefer' });
    try {
      expect(await backendSsl(lenient)).toMatchObject({ ssl: false });
    } finally {
      await lenient.close();
    }
  });
});

describe('SCRAM channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const users = join(dir, 'cb-users.txt');
    writeFileSync(users, '"postgres" "cbsecret"\n');
    proxy = await startProxy(tlsOverrides('allow', { auth: 'scram-sha-256', authFile: users }));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('psql with channel_binding=require logs in over TLS and the binding is checked', async () => {
    const ok = await runPg(psqlBin(), ['-X', '-At', '-c', 'SELECT 7', `host=localhost port=${proxy.port} user=postgres dbname=app sslmode=require channel_binding=require`], {
      timeoutMs: 30_000,
      env: { PGPASSWORD: 'cbsecret' },
    });
    expect(ok.stderr).toBe('');
    expect(ok.stdout.trim()).toBe('7');
    const wrong = await runPg(psqlBin(), ['-X', '-At', '-c', 'SELECT 7', `host=localhost port=${proxy.port} user=postgres dbname=app sslmode=require channel_binding=require`], {
      timeoutMs: 30_000,
      env: { PGPASSWORD: 'nope' },
    });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/password authentication failed/);
  });

  it('without TLS only SCRAM-SHA-256 is offered: channel_binding=require is refused by the client, prefer logs in', async () => {
    const req = await runPg(psqlBin(), ['-X', '-At', '-c', 'SELECT 1', `host=localhost port=${proxy.port} user=postgres dbname=app sslmode=disable channel_binding=require`], {
      timeoutMs: 30_000,
      env: { PGPASSWORD: 'cbsecret' },
    });
    expect(req.code).not.toBe(0);
    expect(req.stderr).toMatch(/channel binding/i);
    const pref = await runPg(psqlBin(), ['-X', '-At', '-c', 'SELECT 1', `host=localhost port=${proxy.port} user=postgres dbname=app sslmode=disable channel_binding=prefer`], {
      timeoutMs: 30_000,
      env: { PGPASSWORD: 'cbsecret' },
    });
    expect(pref.stdout.trim()).toBe('1');
  });

  it('node-postgres over TLS (it does SCRAM-SHA-256-PLUS when offered) logs in', async () => {
    const c = await pgClient(proxy.port, { host: 'localhost', password: 'cbsecret', ssl: { ca: readFileSync(pki.ca.cert), servername: 'localhost' } });
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });
});
