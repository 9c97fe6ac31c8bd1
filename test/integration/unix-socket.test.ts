// The Unix-domain socket listener (unix_socket_dir): libpq's host=<dir> reaches pgmux at
// <dir>/.s.PGSQL.<port>; such clients are `local` for hba_file, never get TLS (SSLRequest 'N'
// as PostgreSQL answers there), show as "unix", and count against the same limits. The socket
// file: a stale one is replaced, a live one or a PostgreSQL lock file stops the start, it is
// removed on close. Each proxy here gets its own temporary directory.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { leanSocketCount } from '../../src/net/leanSocket.js';
import { loadConfig } from '../../src/config/load.js';
import { clusterInfo, pgClient, psqlBin, runPg } from '../support/cluster.js';
import { makeTestPki, type TestPki } from '../support/certs.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import { waitFor } from '../support/wait.js';
import { parseErrorFields, RawClient, sslRequest, startupPacket } from '../support/rawClient.js';
import { freePort } from '../../src/embedded/localCluster.js';

let dir: string;
let pki: TestPki;
let proxies: TestProxy[] = [];
let sockets: net.Socket[] = [];

beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => pki?.cleanup());

afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets = [];
  for (const p of proxies) await p.close();
  proxies = [];
  rmSync(dir, { recursive: true, force: true });
});

// A short path: sun_path holds 107 bytes.
const newDir = () => (dir = mkdtempSync(join(tmpdir(), 'pgmux-unix-')));

async function proxyIn(socketDir: string, overrides: Parameters<typeof startProxy>[0] = {}): Promise<TestProxy> {
  const p = await startProxy({ unixSocketDir: socketDir, ...overrides });
  proxies.push(p);
  return p;
}

/** A pg client over the socket: node-postgres takes a host starting with / as the socket's directory. */
function unixClient(p: TestProxy, opts: Parameters<typeof pgClient>[1] = {}) {
  return pgClient(p.port, { host: dir, ...opts });
}

/** A raw connection to a socket file. */
function connectPath(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    sockets.push(s);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** The first bytes the server sends back, or '' when it closes first. */
function firstBytes(s: net.Socket, n: number, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const t = setTimeout(() => reject(new Error(`no ${n} bytes within ${timeoutMs} ms`)), timeoutMs);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= n) {
        clearTimeout(t);
        resolve(got);
      }
    });
    s.once('close', () => {
      clearTimeout(t);
      resolve(got);
    });
  });
}

async function connectCode(p: TestProxy, opts: Parameters<typeof pgClient>[1]): Promise<string> {
  try {
    const c = await pgClient(p.port, opts);
    await c.end();
    return 'ok';
  } catch (err) {
    return `${(err as { code?: string }).code}: ${(err as Error).message}`;
  }
}

/** A port nobody listens on now (the stale and live file tests need it before the proxy starts). */
describe('unix socket listener', () => {
  it('serves pg and psql through host=<dir>: reads on a replica, writes on the primary', async () => {
    // The primary takes no balanced reads: every read must land on a replica.
    const nodes = clusterInfo().nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 }));
    const p = await proxyIn(newDir(), { nodes });
    expect(p.unixSocket).toBe(join(dir, `.s.PGSQL.${p.port}`));
    expect(statSync(p.unixSocket!).isSocket()).toBe(true);
    expect(statSync(p.unixSocket!).mode & 0o777).toBe(0o777);

    // Until the monitor has seen a replica up, reads fall back to the primary.
    await waitFor(() => p.proxy.topology().nodes.filter((n) => n.role === 'replica' && n.state === 'up').length === 2, 10_000, () => 'replicas up');
    const c = await unixClient(p);
    for (let i = 0; i < 3; i++) expect((await c.query('SELECT pg_is_in_recovery() AS rec')).rows[0].rec).toBe(true);
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE unix_socket_write (x int)');
    expect((await c.query('SELECT pg_is_in_recovery() AS rec')).rows[0].rec).toBe(false);
    await c.query('ROLLBACK');
    await c.end();

    const r = await runPg(psqlBin(), ['-X', '-At', '-h', dir, '-p', String(p.port), '-U', 'postgres', '-d', 'app', '-c', 'SELECT pg_is_in_recovery()'], { timeoutMs: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('t');
  });

  it('takes unix_socket_mode and unix_socket_group and reads their config values', async () => {
    const gid = process.getgid!();
    const p = await proxyIn(newDir(), { unixSocketMode: 0o770, unixSocketGroup: String(gid) });
    expect(statSync(p.unixSocket!).mode & 0o777).toBe(0o770);
    expect(statSync(p.unixSocket!).gid).toBe(gid);
    await expect(startProxy({ unixSocketDir: dir, unixSocketGroup: 'no-such-group-here' })).rejects.toThrow(
      'unix_socket_group: no group named "no-such-group-here" (expected a group name from /etc/group or a numeric gid)',
    );
    const cfg = (env: Record<string, string>) => loadConfig({}, env, { requireNodes: false });
    expect(cfg({}).unixSocketDir).toBe('/tmp');
    expect(cfg({ PGMUX_UNIX_SOCKET_DIR: 'off' }).unixSocketDir).toBeNull();
    expect(cfg({ PGMUX_UNIX_SOCKET_MODE: '0700' }).unixSocketMode).toBe(0o700);
    expect(() => cfg({ PGMUX_UNIX_SOCKET_MODE: '0778' })).toThrow(/PGMUX_UNIX_SOCKET_MODE: "0778" is not a file mode/);
  });

  it('unix_socket_dir off: no socket file', async () => {
    const socketDir = newDir();
    const p = await startProxy({ unixSocketDir: null });
    proxies.push(p);
    expect(p.unixSocket).toBeNull();
    expect(readdirSync(socketDir)).toEqual([]);
  });

  it('removes the socket file on close', async () => {
    const p = await proxyIn(newDir());
    const c = await unixClient(p);
    await c.end();
    expect(existsSync(p.unixSocket!)).toBe(true);
    await p.close();
    expect(existsSync(p.unixSocket!)).toBe(false);
  });

  it('answers SSLRequest with N on the socket while TCP clients get TLS (client_tls allow), and require does not apply to it', async () => {
    const tlsOn = { clientTlsCertFile: pki.server.cert, clientTlsKeyFile: pki.server.key };
    const p = await proxyIn(newDir(), { clientTls: 'allow', ...tlsOn });
    const local = await connectPath(p.unixSocket!);
    local.write(sslRequest());
    expect((await firstBytes(local, 1)).toString()).toBe('N');
    // The connection goes on in plaintext, as with PostgreSQL.
    local.write(startupPacket({ user: 'postgres', database: 'app' }));
    expect((await firstBytes(local, 1))[0]).toBe('R'.charCodeAt(0));
    const tcp = await RawClient.connect(p.port);
    tcp.send(sslRequest());
    expect((await tcp.readBytes(1)).toString()).toBe('S');
    tcp.destroy();

    const required = await proxyIn(dir, { clientTls: 'require', ...tlsOn, listen: { host: '127.0.0.1', port: 0 } });
    const c = await unixClient(required);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
    expect(await connectCode(required, { ssl: false })).toMatch(/^28000: /);
  });

  it('hba_file: local lines decide socket clients, host lines TCP clients', async () => {
    newDir();
    const hba = join(dir, 'hba.conf');
    writeFileSync(
      hba,
      [
        'local  all  blocked                reject',
        'local  all  all                    trust',
        'host   all  blocked  127.0.0.1/32  trust',
        'host   all  all      all           reject',
      ].join('\n') + '\n',
    );
    const p = await proxyIn(dir, { hbaFile: hba });
    expect(await connectCode(p, { host: dir })).toBe('ok');
    expect(await connectCode(p, { host: dir, user: 'blocked' })).toBe(
      '28000: pg_hba.conf rejects connection for host "[local]", user "blocked", database "app", no encryption',
    );
    expect(await connectCode(p, { user: 'postgres' })).toBe(
      '28000: pg_hba.conf rejects connection for host "127.0.0.1", user "postgres", database "app", no encryption',
    );
    // `blocked` passes hba on TCP; the cluster has no such role, so PostgreSQL itself refuses it.
    expect(await connectCode(p, { user: 'blocked' })).not.toMatch(/pg_hba\.conf rejects connection for host "127\.0\.0\.1"/);
  });

  it('shows socket clients as "unix" in SHOW CLIENTS', async () => {
    const p = await proxyIn(newDir(), { adminUsers: ['postgres'] });
    const c = await unixClient(p, { application_name: 'via-unix' });
    const admin = await pgClient(p.port, { database: 'pgmux' });
    const rows = (await admin.query('SHOW CLIENTS')).rows as Array<Record<string, unknown>>;
    expect(rows.find((r) => r.application_name === 'via-unix')?.addr).toBe('unix');
    await admin.end();
    await c.end();
  });

  it('max_unauthenticated_connections counts socket clients', async () => {
    const p = await proxyIn(newDir(), { maxUnauthenticatedConnections: 1 });
    await connectPath(p.unixSocket!); // connected, says nothing: still logging in
    await new Promise((r) => setTimeout(r, 100));
    const second = await connectPath(p.unixSocket!);
    const bytes = await firstBytes(second, 6);
    expect(String.fromCharCode(bytes[0]!)).toBe('E');
    expect(parseErrorFields(bytes.subarray(5, 1 + bytes.readInt32BE(1))).code).toBe('53300');
  });

  it.runIf(testConfig().leanIo)('moves logged-in socket clients to the lean I/O path', async () => {
    const p = await proxyIn(newDir());
    // The first client opens the primary's backend (lean too); the second only adds itself.
    const sql = "/* pgmux:primary */ SELECT repeat('x', 200000) AS big";
    const warm = await unixClient(p);
    await warm.query(sql);
    await warm.end();
    const before = leanSocketCount();
    const c = await unixClient(p);
    expect((await c.query(sql)).rows[0].big).toHaveLength(200000);
    expect(leanSocketCount()).toBe(before + 1);
    await c.end();
  });
});

describe('socket file takeover', () => {
  it('replaces a stale socket file left by a killed process', async () => {
    newDir();
    const port = await freePort();
    const path = join(dir, `.s.PGSQL.${port}`);
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    expect(statSync(path).isSocket()).toBe(true); // left behind, nobody listening

    const p = await proxyIn(dir, { listen: { host: '127.0.0.1', port } });
    expect(p.unixSocket).toBe(path);
    const c = await unixClient(p);
    expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await c.end();
  });

  it('refuses to start on a socket file another process serves, and on a PostgreSQL lock file', async () => {
    newDir();
    const port = await freePort();
    const path = join(dir, `.s.PGSQL.${port}`);
    const owner = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => owner.listen(path, () => r()));
    try {
      await expect(startProxy({ unixSocketDir: dir, listen: { host: '127.0.0.1', port } })).rejects.toThrow(
        `unix_socket_dir: ${path} is in use by another process (it accepts connections)`,
      );
    } finally {
      await new Promise((r) => owner.close(r));
    }
    writeFileSync(`${path}.lock`, '12345\n');
    await expect(startProxy({ unixSocketDir: dir, listen: { host: '127.0.0.1', port } })).rejects.toThrow(/belongs to a PostgreSQL server \(lock file .*\.lock exists\)/);
    // The failed starts let go of the TCP port.
    rmSync(`${path}.lock`);
    const p = await proxyIn(dir, { listen: { host: '127.0.0.1', port } });
    expect(p.port).toBe(port);
  });
});
