// Two pgmux instances behind a real HAProxy (round-robin), as users run them behind a
// balancer: an instance that dies loses no acknowledged write and its clients carry on through
// the other; cancels sent through the balancer reach the instance that owns the session.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import pg from 'pg';
import { parseConfigObject } from '../../src/config/load.js';
import { pgClient, primaryPort, waitUntilRunning } from '../support/cluster.js';
import { freePort, startHaproxy, type RunningHaproxy } from '../support/haproxy.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { sendCancel as sendRawCancel } from '../support/rawClient.js';

/**
 * A TCP relay in front of one instance. sever() is that instance crashing as its clients and
 * the balancer see it: every connection reset at once, then connection refused.
 */
class Link {
  private readonly sockets = new Set<net.Socket>();
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(upstreamPort: number): Promise<Link> {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const link = new Link(server, (server.address() as net.AddressInfo).port);
    server.on('connection', (client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort });
      for (const s of [client, upstream]) {
        link.sockets.add(s);
        s.on('close', () => link.sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).on('close', () => client.destroy());
      upstream.pipe(client).on('close', () => upstream.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    return link;
  }

  sever(): void {
    this.server.close();
    for (const s of this.sockets) s.resetAndDestroy();
  }

  close(): Promise<void> {
    this.sever();
    return new Promise((r) => (this.server.listening ? this.server.close(() => r()) : r()));
  }
}

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function through(h: RunningHaproxy, attempts = 50): Promise<pg.Client> {
  for (let i = 1; ; i++) {
    try {
      const c = await pgClient(h.port, { connectionTimeoutMillis: 3000 });
      // A connection that dies between queries is the next query's error, not an uncaught one.
      c.on('error', () => {});
      return c;
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe('two pgmux instances behind HAProxy', () => {
  it('killing one instance mid-run loses no acknowledged write; its clients reconnect through the balancer and carry on', async () => {
    const tag = `mi_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
    const admin = await pgClient(primaryPort());
    cleanups.push(() => admin.end());
    // No unique constraint: a row written twice must show up as twice.
    await admin.query(`CREATE TABLE ${tag} (id bigint NOT NULL, client int NOT NULL)`);
    cleanups.push(() => admin.query(`DROP TABLE IF EXISTS ${tag}`));

    const a = await startProxy({ poolSize: 15 });
    const b = await startProxy({ poolSize: 15 });
    cleanups.push(() => b.close(), () => a.close());
    const linkA = await Link.start(a.port);
    const linkB = await Link.start(b.port);
    cleanups.push(() => linkB.close(), () => linkA.close());
    const haproxy = await startHaproxy({ backendPorts: [linkA.port, linkB.port] });
    cleanups.push(() => haproxy.stop());

    const CLIENTS = 20;
    const acked: number[][] = Array.from({ length: CLIENTS }, () => []);
    const ackedAfterKill = new Array<number>(CLIENTS).fill(0);
    const failures = new Array<number>(CLIENTS).fill(0);
    let killed = false;
    let stopAt = Number.POSITIVE_INFINITY;

    const run = async (i: number) => {
      let c = await through(haproxy);
      for (let seq = 0; Date.now() < stopAt; seq++) {
        const id = i * 1_000_000 + seq;
        try {
          // Acknowledged = COMMIT answered. The transaction stays open a little after its
          // INSERT, so the kill catches some open ones (rolled back, never acknowledged).
          await c.query('BEGIN');
          await c.query(`INSERT INTO ${tag} (id, client) VALUES ($1, $2)`, [id, i]);
          await c.query('SELECT pg_sleep(0.005)');
          await c.query('COMMIT');
          acked[i]!.push(id);
          if (killed) ackedAfterKill[i]!++;
        } catch {
          failures[i]!++;
          await c.end().catch(() => {});
          c = await through(haproxy);
        }
      }
      await c.end();
    };
    const clients = Array.from({ length: CLIENTS }, (_, i) => run(i));
    // Writes flow through both instances, then A crashes.
    await new Promise((r) => setTimeout(r, 1500));
    const beforeKill = acked.map((x) => x.length);
    killed = true;
    linkA.sever();
    await a.close('test: instance killed');
    stopAt = Date.now() + 2500;
    await Promise.all(clients);

    expect(beforeKill.every((n) => n > 0)).toBe(true);
    // About half of the clients were on A: they saw the crash and came back through B.
    expect(failures.filter((n) => n > 0).length).toBeGreaterThanOrEqual(3);
    expect(ackedAfterKill.every((n) => n > 0), `acks after the kill per client: ${ackedAfterKill.join(',')}`).toBe(true);

    const rows = (await admin.query<{ id: string; n: string }>(`SELECT id, count(*) AS n FROM ${tag} GROUP BY id`)).rows;
    const onPrimary = new Map(rows.map((r) => [Number(r.id), Number(r.n)]));
    expect([...onPrimary.values()].filter((n) => n !== 1)).toEqual([]);
    const lost = acked.flat().filter((id) => onPrimary.get(id) !== 1);
    expect(lost).toEqual([]);
    expect(acked.flat().length).toBeGreaterThan(CLIENTS * 4);
  }, 60_000);

  it('100 pg_sleep(10) each cancelled through the balancer all end with 57014 within 1 s (peers forward the cancel, PROXY v2 from HAProxy)', async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    // The keys by their YAML names: peer_id / peers from the peers branch, proxy_protocol_trusted from proxyproto.
    const instance = (id: number, port: number, other: number) =>
      startProxy({
        ...parseConfigObject({ peer_id: id, peers: [`${1 - id}=127.0.0.1:${other}`], proxy_protocol_trusted: ['127.0.0.1/32'] }, 'multi-instance test'),
        listen: { host: '127.0.0.1', port },
        poolSize: 60,
      });
    const a: TestProxy = await instance(0, portA, portB);
    cleanups.push(() => a.close());
    const b: TestProxy = await instance(1, portB, portA);
    cleanups.push(() => b.close());
    const haproxy = await startHaproxy({ backendPorts: [a.port, b.port], sendProxyV2: true });
    cleanups.push(() => haproxy.stop());

    const N = 100;
    const clients = await Promise.all(Array.from({ length: N }, () => through(haproxy)));
    cleanups.push(() => Promise.all(clients.map((c) => c.end().catch(() => {}))));
    const results = clients.map((c) => c.query('SELECT pg_sleep(10)').then(() => 'finished', (e: { code?: string }) => e.code ?? 'error'));
    await waitUntilRunning('SELECT pg_sleep(10)', N, 20_000);
    const started = Date.now();
    // Each CancelRequest on a new connection through the balancer: round-robin sends about
    // half of them to the instance that does not hold the session.
    await Promise.all(clients.map((c) => sendCancel(haproxy.port, c)));
    const codes = await Promise.all(results);
    const elapsedMs = Date.now() - started;
    expect(codes.filter((c) => c !== '57014')).toEqual([]);
    expect(elapsedMs).toBeLessThan(1000);
  }, 60_000);
});

describe('two pgmux instances behind HAProxy with PROXY protocol v2', () => {
  it('HBA rules match the real client address, not the balancer\'s', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-multi-hba-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const hba = join(dir, 'hba.conf');
    // HAProxy connects from 127.0.0.1; only the PROXY header can say 127.0.0.2.
    writeFileSync(hba, ['host  all  all  127.0.0.2/32  reject', 'host  all  all  127.0.0.0/8   trust'].join('\n') + '\n');
    const trusted = parseConfigObject({ proxy_protocol_trusted: ['127.0.0.1/32'] }, 'multi-instance test');
    const a = await startProxy({ ...trusted, hbaFile: hba });
    cleanups.push(() => a.close());
    const b = await startProxy({ ...trusted, hbaFile: hba });
    cleanups.push(() => b.close());
    const haproxy = await startHaproxy({ backendPorts: [a.port, b.port], sendProxyV2: true });
    cleanups.push(() => haproxy.stop());

    // Twice each, so both instances (round-robin) decide.
    for (let i = 0; i < 2; i++) {
      const ok = await pgClient(haproxy.port);
      expect((await ok.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await ok.end();
      const refused = new pg.Client({ host: '127.0.0.1', port: haproxy.port, user: 'postgres', database: 'app', stream: () => fromAddress('127.0.0.2') });
      const err = await refused.connect().then(() => null, (e: { code?: string; message: string }) => e);
      await refused.end().catch(() => {});
      expect(err?.code).toBe('28000');
      expect(err?.message).toContain('host "127.0.0.2"');
    }
  }, 30_000);
});

/** A socket that connects from `localAddress` (pg.Client calls connect(port, host) on it). */
function fromAddress(localAddress: string): net.Socket {
  const s = new net.Socket();
  const connect = s.connect.bind(s) as (o: net.TcpNetConnectOpts) => net.Socket;
  (s as unknown as { connect: (port: number, host: string) => net.Socket }).connect = (port, host) => connect({ port, host, localAddress });
  return s;
}

interface KeyedClient extends pg.Client {
  processID: number;
  secretKey: number;
}

/** A CancelRequest for `c`'s key on a new connection to `port`. */
function sendCancel(port: number, c: pg.Client): Promise<void> {
  const k = c as KeyedClient;
  return sendRawCancel(port, k.processID, k.secretKey);
}
