// PROXY protocol on the client listener (proxy_protocol_trusted): a trusted sender's v1 or
// v2 header names the client that HBA, SHOW CLIENTS and logs see; a trusted sender without a
// header and a header from anyone else are refused (08P01); a cancel behind a header cancels.
// The headers come from a small in-test forwarder that prepends them to a pg client's stream,
// from raw sockets, and from a real HAProxy (send-proxy-v2) with the client on 127.0.0.2.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgClient, waitUntilRunning } from '../support/cluster.js';
import { testConfig, type TestProxy } from '../support/pgmux.js';
import { captureLogger, LEVEL, type CapturedLog } from '../support/logCapture.js';
import { startPgmux } from '../../src/server/pgmux.js';
import type { Config } from '../../src/config/types.js';
import { cancelRequestPacket, parseErrorFields, queryMsg, RawClient, startupPacket } from '../support/rawClient.js';
import { startHaproxy, type RunningHaproxy } from '../support/haproxy.js';
import { makeTestPki } from '../support/certs.js';

const v1 = (address: string, port: number): Buffer => Buffer.from(`PROXY TCP4 ${address} 127.0.0.1 ${port} 6432\r\n`);

function v2Inet(address: string, port: number): Buffer {
  const b = Buffer.alloc(28);
  Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(b, 0);
  b[12] = 0x21;
  b[13] = 0x11;
  b.writeUInt16BE(12, 14);
  b.set(address.split('.').map(Number), 16);
  b.set([127, 0, 0, 1], 20);
  b.writeUInt16BE(port, 24);
  b.writeUInt16BE(6432, 26);
  return b;
}

/** A load balancer stand-in: each connection to it reaches pgmux behind `header()`. */
class HeaderForwarder {
  private readonly sockets = new Set<net.Socket>();
  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(upstream: number, header: () => Buffer): Promise<HeaderForwarder> {
    let self: HeaderForwarder | null = null;
    const server = net.createServer((client) => {
      const up = net.connect({ host: '127.0.0.1', port: upstream });
      for (const s of [client, up]) {
        self!.sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => self!.sockets.delete(s));
      }
      up.write(header());
      client.pipe(up).pipe(client);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new HeaderForwarder(server, (server.address() as net.AddressInfo).port);
    return self;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

let dir: string;
const proxies: TestProxy[] = [];
const forwarders: HeaderForwarder[] = [];
const clients: Array<pg.Client | RawClient> = [];

async function proxyWith(overrides: Partial<Config>): Promise<{ proxy: TestProxy; log: CapturedLog }> {
  const log = captureLogger('info');
  const proxy = await startPgmux(testConfig(overrides), { logger: log.logger });
  proxies.push(proxy);
  return { proxy, log };
}

async function forwarder(upstream: number, header: () => Buffer): Promise<HeaderForwarder> {
  const f = await HeaderForwarder.start(upstream, header);
  forwarders.push(f);
  return f;
}

async function client(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  // Clients behind HAProxy lose their connection when it stops before they end.
  c.on('error', () => {});
  clients.push(c);
  return c;
}

/** "ok" or "<SQLSTATE>: <message>" of a login. */
async function loginOutcome(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<string> {
  try {
    const c = await client(port, opts);
    await c.query('SELECT 1');
    return 'ok';
  } catch (err) {
    const e = err as { code?: string; message: string };
    return `${e.code}: ${e.message}`;
  }
}

/** Sends `bytes` on a raw socket and returns the first ErrorResponse's fields (null: none before close). */
async function firstErrorAfter(port: number, bytes: Buffer): Promise<{ code: string; message: string } | null> {
  const c = await RawClient.connect(port);
  clients.push(c);
  c.send(bytes);
  const m = await c.read(5000);
  if (m === null || m.type !== 'E') return null;
  const f = parseErrorFields(m.body);
  expect(await c.waitClosed(3000)).toBe(true);
  return { code: f.code!, message: f.message! };
}

async function showClients(port: number): Promise<Array<Record<string, unknown>>> {
  const admin = await client(port, { database: 'pgmux' });
  return (await admin.query('SHOW CLIENTS')).rows as Array<Record<string, unknown>>;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'pgmux-proxyproto-'));
  writeFileSync(join(dir, 'hba.conf'), ['host all all 10.1.2.3/32 reject', 'host all all 127.0.0.2/32 reject', 'host all all all trust'].join('\n') + '\n');
});

afterAll(async () => {
  for (const c of clients) {
    if (c instanceof RawClient) c.destroy();
    else await c.end().catch(() => {});
  }
  for (const f of forwarders) await f.close();
  for (const p of proxies) await p.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('PROXY protocol from a trusted sender', () => {
  let proxy: TestProxy;
  let log: CapturedLog;
  beforeAll(async () => {
    ({ proxy, log } = await proxyWith({ proxyProtocolTrusted: ['127.0.0.1'], hbaFile: join(dir, 'hba.conf'), adminUsers: ['postgres'] }));
  });

  it('v1 and v2 headers: HBA decides on the carried address (10.1.2.3 rejected, others accepted)', async () => {
    const v1Rejected = await forwarder(proxy.port, () => v1('10.1.2.3', 40000));
    const v2Rejected = await forwarder(proxy.port, () => v2Inet('10.1.2.3', 40001));
    const v1Accepted = await forwarder(proxy.port, () => v1('10.1.2.4', 40002));
    const v2Accepted = await forwarder(proxy.port, () => v2Inet('10.1.2.5', 40003));
    const refusal = '28000: pg_hba.conf rejects connection for host "10.1.2.3", user "postgres", database "app", no encryption';
    expect(await loginOutcome(v1Rejected.port)).toBe(refusal);
    expect(await loginOutcome(v2Rejected.port)).toBe(refusal);
    expect(await loginOutcome(v1Accepted.port)).toBe('ok');
    expect(await loginOutcome(v2Accepted.port)).toBe('ok');
  });

  it('SHOW CLIENTS shows the carried address and port', async () => {
    const f = await forwarder(proxy.port, () => v2Inet('10.7.7.7', 45678));
    const c = await client(f.port, { application_name: 'behind-lb' });
    await c.query('SELECT 1');
    const rows = await showClients(f.port);
    const row = rows.find((r) => r.application_name === 'behind-lb');
    expect(row?.addr).toBe('10.7.7.7');
    expect(Number(row?.port)).toBe(45678);
  });

  it('a header split byte by byte, and one with the startup packet in the same segment, both log in', async () => {
    const split = await RawClient.connect(proxy.port);
    clients.push(split);
    for (const byte of v1('10.1.2.9', 1234)) {
      split.send(Buffer.from([byte]));
      await new Promise((r) => setTimeout(r, 2));
    }
    const msgs = await split.startup({ user: 'postgres', database: 'app' });
    expect(msgs.at(-1)?.type).toBe('Z');

    const together = await RawClient.connect(proxy.port);
    clients.push(together);
    together.send(Buffer.concat([v2Inet('10.1.2.3', 1), startupPacket({ user: 'postgres', database: 'app' })]));
    const m = await together.read(5000);
    expect(m?.type).toBe('E');
    // HBA saw the carried 10.1.2.3, so the startup packet behind the header was read.
    expect(parseErrorFields(m!.body).message).toContain('host "10.1.2.3"');
  });

  it('health checks (v1 UNKNOWN, v2 LOCAL) log in with the balancer address', async () => {
    for (const header of [Buffer.from('PROXY UNKNOWN\r\n'), v2Local()]) {
      const c = await RawClient.connect(proxy.port);
      clients.push(c);
      c.send(header);
      const msgs = await c.startup({ user: 'postgres', database: 'app', application_name: 'lb-check' });
      expect(msgs.at(-1)?.type).toBe('Z');
    }
  });

  it('a trusted sender without a header is refused with 08P01 and a warning', async () => {
    expect(await loginOutcome(proxy.port)).toMatch(/^08P01: PROXY protocol header required/);
    expect(log.lines.some((l) => l.level === LEVEL.warn && /without a PROXY header/.test(l.msg))).toBe(true);
  });

  it('malformed headers close the connection with 08P01 and are counted', async () => {
    const before = proxy.proxy.counters().proxyHeaderRefusals;
    expect(await firstErrorAfter(proxy.port, Buffer.from('PROXY TCP4 10.1.2.3 nope 1 2\r\n'))).toMatchObject({ code: '08P01', message: 'invalid PROXY protocol header' });
    expect(await firstErrorAfter(proxy.port, Buffer.from('PROXY ' + 'x'.repeat(120)))).toMatchObject({ code: '08P01' });
    const tooLong = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), Buffer.from([0x21, 0x11, 0xff, 0xff])]);
    expect(await firstErrorAfter(proxy.port, tooLong)).toMatchObject({ code: '08P01' });
    expect(proxy.proxy.counters().proxyHeaderRefusals - before).toBe(3);
  });

  it('a CancelRequest behind a header (same segment) cancels the query', async () => {
    const f = await forwarder(proxy.port, () => v1('10.5.5.5', 5555));
    const c = await RawClient.connect(f.port);
    clients.push(c);
    await c.startup({ user: 'postgres', database: 'app' });
    c.send(queryMsg('SELECT pg_sleep(10)'));
    await waitUntilRunning('SELECT pg_sleep(10)');
    const t0 = Date.now();
    const cancel = await RawClient.connect(proxy.port);
    clients.push(cancel);
    cancel.send(Buffer.concat([v2Inet('10.5.5.6', 5556), cancelRequestPacket(c.pid, c.secret)]));
    const msgs = await c.readUntil('Z', 5000);
    const err = msgs.find((m) => m.type === 'E');
    expect(err && parseErrorFields(err.body).code).toBe('57014');
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});

function v2Local(): Buffer {
  const b = Buffer.alloc(16);
  Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(b, 0);
  b[12] = 0x20;
  return b;
}

describe('TLS and IPv6 behind a header', () => {
  it('SSLRequest after the header: TLS works and hostssl lines match the carried address', async () => {
    const pki = makeTestPki();
    try {
      writeFileSync(join(dir, 'hba-ssl.conf'), ['hostssl all all 10.3.3.3/32 trust', 'host all all all reject'].join('\n') + '\n');
      const { proxy } = await proxyWith({
        proxyProtocolTrusted: ['127.0.0.1'], hbaFile: join(dir, 'hba-ssl.conf'),
        clientTls: 'allow', clientTlsCertFile: pki.server.cert, clientTlsKeyFile: pki.server.key,
      });
      const allowed = await forwarder(proxy.port, () => v1('10.3.3.3', 3333));
      const other = await forwarder(proxy.port, () => v1('10.3.3.4', 3334));
      expect(await loginOutcome(allowed.port, { ssl: { rejectUnauthorized: false } })).toBe('ok');
      expect(await loginOutcome(allowed.port, { ssl: false })).toMatch(/^28000: pg_hba.conf rejects connection for host "10.3.3.3".*no encryption/);
      expect(await loginOutcome(other.port, { ssl: { rejectUnauthorized: false } })).toMatch(/^28000: pg_hba.conf rejects connection for host "10.3.3.4"/);
    } finally {
      pki.cleanup();
    }
  });

  it('a listener on ::1 trusts an IPv6 sender and carries a TCP6 address', async () => {
    writeFileSync(join(dir, 'hba-v6.conf'), ['host all all 2001:db8::/32 reject', 'host all all all trust'].join('\n') + '\n');
    const { proxy } = await proxyWith({ listen: { host: '::1', port: 0 }, proxyProtocolTrusted: ['::1/128'], hbaFile: join(dir, 'hba-v6.conf') });
    const c = await RawClient.connect(proxy.port, '::1');
    clients.push(c);
    c.send(Buffer.concat([Buffer.from('PROXY TCP6 2001:db8::7 ::1 4000 6432\r\n'), startupPacket({ user: 'postgres', database: 'app' })]));
    const m = await c.read(5000);
    expect(m?.type).toBe('E');
    expect(parseErrorFields(m!.body).message).toContain('host "2001:db8::7"');
  });
});

describe('a header that never ends', () => {
  it('is closed at client_login_timeout and counted', async () => {
    const { proxy, log } = await proxyWith({ proxyProtocolTrusted: ['127.0.0.1'], clientLoginTimeoutMs: 300 });
    const c = await RawClient.connect(proxy.port);
    clients.push(c);
    c.send('PROXY TCP4 10.1.2.3');
    expect(await c.waitClosed(3000)).toBe(true);
    expect(proxy.proxy.counters().proxyHeaderRefusals).toBe(1);
    expect(log.lines.some((l) => l.level === LEVEL.warn && /not received within client_login_timeout/.test(l.msg))).toBe(true);
  });
});

describe('PROXY protocol from an untrusted sender', () => {
  it('a header is refused with 08P01 and a warning; plain PostgreSQL works as before', async () => {
    const { proxy, log } = await proxyWith({ proxyProtocolTrusted: ['10.255.0.0/16'], http: { host: '127.0.0.1', port: 0 } });
    expect(await firstErrorAfter(proxy.port, v1('10.1.2.3', 1))).toMatchObject({ code: '08P01', message: 'PROXY protocol header from an untrusted address' });
    expect(await firstErrorAfter(proxy.port, v2Inet('10.1.2.3', 1))).toMatchObject({ code: '08P01', message: 'PROXY protocol header from an untrusted address' });
    expect(log.lines.some((l) => l.level === LEVEL.warn && /not in proxy_protocol_trusted/.test(l.msg))).toBe(true);
    expect(await loginOutcome(proxy.port)).toBe('ok');
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/^pgmux_proxy_header_refusals_total 2$/m);
  });
});

describe('behind a real HAProxy (send-proxy-v2)', () => {
  let haproxy: RunningHaproxy | null = null;
  afterAll(async () => {
    await haproxy?.stop();
  });

  it('HBA matches the real client address (127.0.0.2 rejected, 127.0.0.3 accepted and shown)', async () => {
    const { proxy, log } = await proxyWith({ proxyProtocolTrusted: ['127.0.0.1'], hbaFile: join(dir, 'hba.conf'), adminUsers: ['postgres'] });
    haproxy = await startHaproxy((front) => [
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      'frontend pg',
      `  bind 127.0.0.1:${front}`,
      '  default_backend pgmux',
      'backend pgmux',
      // Its health checks carry a header too (check-send-proxy): they must not count as refusals.
      `  server s1 127.0.0.1:${proxy.port} send-proxy-v2 check inter 100ms check-send-proxy`,
    ].join('\n'));
    const rejected = await rawLoginFrom('127.0.0.2', haproxy.port);
    expect(rejected).toContain('pg_hba.conf rejects connection for host "127.0.0.2"');
    const accepted = await rawLoginFrom('127.0.0.3', haproxy.port, 'via-haproxy');
    expect(accepted).toBe('ok');
    const c = await client(haproxy.port);
    const rows = (await (await client(haproxy.port, { database: 'pgmux' })).query('SHOW CLIENTS')).rows as Array<Record<string, unknown>>;
    expect(rows.find((r) => r.application_name === 'via-haproxy')?.addr).toBe('127.0.0.3');
    // pg's client connects from 127.0.0.1: HAProxy's header says so too.
    expect(rows.filter((r) => r.addr === '127.0.0.1').length).toBeGreaterThan(0);
    await c.query('SELECT 1');
    await new Promise((r) => setTimeout(r, 300)); // a few health checks
    expect(log.lines.filter((l) => l.level >= LEVEL.warn)).toEqual([]);
    expect(proxy.proxy.counters().proxyHeaderRefusals).toBe(0);
  });
});

/** Logs in over a socket bound to `localAddress`; "ok" (the socket stays open) or the error message. */
async function rawLoginFrom(localAddress: string, port: number, applicationName = 'raw'): Promise<string> {
  const c = await RawClient.connect(port, '127.0.0.1', localAddress);
  clients.push(c);
  const msgs = await c.startup({ user: 'postgres', database: 'app', application_name: applicationName });
  const err = msgs.find((m) => m.type === 'E');
  return err ? parseErrorFields(err.body).message! : msgs.at(-1)?.type === 'Z' ? 'ok' : 'no answer';
}
