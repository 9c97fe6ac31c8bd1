// SCRAM both ways through pgmux (client -> pgmux against a cleartext auth-file password,
// pgmux -> backend with that password) on a private primary whose verifier for app_scram
// has many iterations, so PBKDF2 on the event loop could not hide: a client already
// logged in must keep getting answers while 50 SCRAM logins each open a backend.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { formatScramVerifier, makeScramVerifier } from '../../src/auth/scram.js';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

/** 0.15-0.6 s of PBKDF2 per derivation here (load varies): 50 on the event loop take seconds. */
const BACKEND_ITERATIONS = 500_000;
const LOGINS = 50;

const dir = mkdtempSync(join(tmpdir(), 'pgmux-scram-logins-'));
function authFile(name: string, lines: string[]): string {
  const p = join(dir, name);
  writeFileSync(p, lines.join('\n') + '\n');
  return p;
}

async function loginError(port: number, opts: Parameters<typeof pgClient>[1]): Promise<Error & { code?: string }> {
  try {
    const c = await pgClient(port, opts);
    await c.end();
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error(`login as ${opts?.user} unexpectedly succeeded`);
}

describe('SCRAM logins off the event loop', () => {
  let cluster: LocalCluster;
  let proxy: TestProxy;
  let passwordProxy: TestProxy;
  const open: pg.Client[] = [];
  const connect = async (port: number, user: string, password: string) => {
    const c = await pgClient(port, { user, password, database: 'postgres' });
    c.on('error', () => {});
    open.push(c);
    return c;
  };

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 0 });
    // pg_hba makes app_scram log in with SCRAM; PostgreSQL 15 takes a ready verifier as the password.
    const verifier = formatScramVerifier(makeScramVerifier('scrampass', { iterations: BACKEND_ITERATIONS }));
    await cluster.query('node0', `CREATE ROLE app_scram LOGIN PASSWORD '${verifier}'`);
    const nodes = cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 }));
    proxy = await startProxy({
      nodes,
      auth: 'scram-sha-256',
      authFile: authFile('plain.txt', ['"app_scram" "scrampass"', '"postgres" "pgpass"']),
      poolSize: LOGINS + 10,
    });
    // Cleartext from the client, checked against the stored verifier (PBKDF2 per check before).
    passwordProxy = await startProxy({
      nodes,
      auth: 'password',
      authFile: authFile('verifier.txt', [`"app_scram" "${verifier}"`]),
      serverPassword: 'scrampass',
    });
  }, 60_000);

  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await proxy?.close();
    await passwordProxy?.close();
    await cluster?.stop();
  });

  // First, while nothing is cached: every derivation this test needs happens during it.
  it(`a running client keeps getting answers while ${LOGINS} SCRAM logins each open a backend`, async () => {
    const ping = await connect(proxy.port, 'postgres', 'pgpass');
    let stop = false;
    let maxLatencyMs = 0;
    let answers = 0;
    const pinger = (async () => {
      while (!stop) {
        const t = performance.now();
        await ping.query('SELECT 1');
        maxLatencyMs = Math.max(maxLatencyMs, performance.now() - t);
        answers++;
      }
    })();
    try {
      const clients = await Promise.all(Array.from({ length: LOGINS }, () => connect(proxy.port, 'app_scram', 'scrampass')));
      // All at once: the pool opens a backend for each, and each backend login is SCRAM with
      // the password (BACKEND_ITERATIONS of PBKDF2 unless the keys are cached).
      await Promise.all(clients.map((c) => c.query('SELECT pg_sleep(0.3)')));
      const backends = await cluster.query('node0', "SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'app_scram'");
      expect(backends[0].n).toBeGreaterThanOrEqual(LOGINS);
    } finally {
      stop = true;
      await pinger;
    }
    expect(answers).toBeGreaterThan(10);
    // On the event loop, 50 derivations stall every client for seconds (4.2 s with pbkdf2Sync).
    expect(maxLatencyMs).toBeLessThan(700);
  }, 120_000);

  it('SCRAM client -> pgmux and pgmux -> backend log in', async () => {
    const c = await connect(proxy.port, 'app_scram', 'scrampass');
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe('app_scram');
  });

  it('a wrong SCRAM password gets 28P01 after a successful login with the right one', async () => {
    const c = await connect(proxy.port, 'app_scram', 'scrampass');
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    const e = await loginError(proxy.port, { user: 'app_scram', password: 'scrampas', database: 'postgres' });
    expect(e.code).toBe('28P01');
    await connect(proxy.port, 'app_scram', 'scrampass');
  });

  it('a wrong cleartext password gets 28P01 after the right one was checked against the verifier (and cached)', async () => {
    const c = await connect(passwordProxy.port, 'app_scram', 'scrampass');
    expect((await c.query('SELECT current_user AS u')).rows[0].u).toBe('app_scram');
    await connect(passwordProxy.port, 'app_scram', 'scrampass');
    const e = await loginError(passwordProxy.port, { user: 'app_scram', password: 'scrampass ', database: 'postgres' });
    expect(e.code).toBe('28P01');
  });

});
