// The health checks' login: a wrong one is logged once per node (not silent, not every
// check) and fixed by RELOAD without a restart; with no health_check_user, the monitor logs
// in with credentials pgmux already has (auth file, auth_user) where `postgres` without a
// password is refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { startPgmux, type RunningPgmux } from '../../src/server/pgmux.js';
import { clusterInfo, pgClient } from '../support/cluster.js';
import { testConfig } from '../support/pgmux.js';
import { captureLogger } from '../support/logCapture.js';
import { sleep, waitFor } from '../support/wait.js';

const PERIOD = 200;

const dir = mkdtempSync(join(tmpdir(), 'pgmux-hc-login-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function adminRows(port: number, sql: string): Promise<Array<Record<string, string | null>>> {
  const a = await pgClient(port, { user: 'admin', database: 'pgmux' });
  try {
    return (await a.query(sql)).rows;
  } finally {
    await a.end();
  }
}

describe('a wrong health-check password (shared cluster: app_scram needs SCRAM)', () => {
  const configFile = join(dir, 'wrong-password.yaml');
  const cap = captureLogger('info');
  let running: RunningPgmux;
  let names: string[];

  const writeConfig = (password: string, period = `${PERIOD}ms`) =>
    writeFileSync(
      configFile,
      stringify({
        listen: '127.0.0.1:0',
        nodes: clusterInfo().nodes.map((n) => `${n.host}:${n.port}`),
        admin_users: ['admin'],
        health_check_period: period,
        health_check_timeout: '1s',
        health_check_max_retries: 2,
        health_check_user: 'app_scram',
        health_check_password: password,
        log_level: 'info',
      }),
    );

  beforeAll(async () => {
    names = clusterInfo().nodes.map((n) => `${n.host}:${n.port}`);
    writeConfig('not-the-password');
    const load = () => loadConfig({ config: configFile }, {});
    running = await startPgmux(load(), { logger: cap.logger, reloadConfig: load });
  });

  afterAll(async () => {
    await running?.close();
  });

  it('every node is down; the reason is logged at warn once per node, not at every check', async () => {
    const topo = () => running.proxy.topology();
    // A down node is checked 1, 2, 4 periods apart: three failed checks each take ~7 periods.
    await waitFor(() => topo().nodes.every((n) => n.consecutiveFailures >= 3), 10_000, () => JSON.stringify(topo().nodes));
    for (const n of topo().nodes) {
      expect(n.state).toBe('down');
      expect(n.reason).toMatch(/password authentication failed for user "app_scram"/);
    }
    expect(topo().primary).toBeNull();
    for (const name of names) {
      const warned = cap.lines.filter((l) => l.level === 40 && l.node === name && /is down/.test(l.msg));
      expect(warned, `${name}: ${JSON.stringify(warned)}`).toHaveLength(1);
      expect(warned[0]!.msg).toMatch(/password authentication failed for user "app_scram" \(28P01\)/);
      expect(warned[0]!.user).toBe('app_scram');
    }
    const shown = await adminRows(running.port, 'SHOW NODES');
    expect(shown.map((r) => r.state)).toEqual(['down', 'down', 'down']);
  });

  it('fixing the file and RELOAD (no restart) brings the nodes up within a few periods', async () => {
    writeConfig('scrampass');
    const t0 = Date.now();
    const r = await adminRows(running.port, 'RELOAD');
    expect(r).toEqual([]);
    await waitFor(() => running.proxy.topology().nodes.every((n) => n.state === 'up') && running.proxy.topology().primary !== null, 5000, () => JSON.stringify(running.proxy.topology().nodes));
    const took = Date.now() - t0;
    console.log(`[health-check-login] nodes up ${took} ms after RELOAD`);
    // RELOAD polls at once; backoff does not hold back a node that was down for the old login.
    expect(took).toBeLessThan(5 * PERIOD + 1000);
    for (const name of names) {
      expect(cap.lines.some((l) => l.level === 30 && l.node === name && /is up/.test(l.msg))).toBe(true);
    }
    expect(cap.lines.some((l) => /health-check login changed/.test(l.msg))).toBe(true);
    // Clients get through now.
    const c = await pgClient(running.port, { database: 'app' });
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await c.end();
  });

  it('RELOAD applies a new health_check_period at once', async () => {
    writeConfig('scrampass', '1s');
    await adminRows(running.port, 'RELOAD');
    await sleep(300); // deliberate: the reload's own snapshot and poll are not counted
    const v0 = running.proxy.topology().version;
    await sleep(2500); // deliberate: rounds are counted over a fixed window
    const rounds = running.proxy.topology().version - v0;
    // Every 200 ms this would be about 12 rounds.
    expect(rounds).toBeGreaterThanOrEqual(1);
    expect(rounds).toBeLessThanOrEqual(4);
    expect(running.proxy.topology().nodes.every((n) => n.state === 'up')).toBe(true);
  });
});

describe('no health_check_user: a login pgmux already has (private node, SCRAM/md5 required for everyone)', () => {
  let cluster: LocalCluster;
  const md5Secret = (user: string, password: string) => 'md5' + createHash('md5').update(password + user).digest('hex');
  const authFile = join(dir, 'userlist.txt');
  const proxies: RunningPgmux[] = [];

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 0 });
    await cluster.query('node0', "SET password_encryption = 'scram-sha-256'; CREATE ROLE mon LOGIN PASSWORD 'monpw'");
    await cluster.query('node0', "SET password_encryption = 'md5'; CREATE ROLE authmd5 LOGIN SUPERUSER PASSWORD 'authpw'");
    // Over TCP nobody gets in without a password, postgres included.
    const node = cluster.nodes[0]!;
    writeFileSync(
      join(node.dataDir, 'pg_hba.conf'),
      ['local all all trust', 'host all authmd5 127.0.0.1/32 md5', 'host all all 127.0.0.1/32 scram-sha-256', ''].join('\n'),
    );
    await cluster.query('node0', 'SELECT pg_reload_conf()');
    await waitFor(
      async () => {
        const c = new pg.Client({ host: node.host, port: node.port, user: 'postgres', database: 'postgres' });
        c.on('error', () => {});
        try {
          await c.connect();
          await c.end();
          return false;
        } catch {
          return true; // the new rules apply
        }
      },
      5000,
      () => 'pg_hba.conf reloaded',
    );
    // The admin console user comes first and is skipped: it is no database role.
    writeFileSync(authFile, ['"admin" "console-only"', `"authmd5" "${md5Secret('authmd5', 'authpw')}"`, '"mon" "monpw"', ''].join('\n'));
  });

  afterAll(async () => {
    for (const p of proxies) await p.close();
    await cluster?.stop();
  });

  async function start(over: Partial<Config>): Promise<RunningPgmux> {
    const p = await startPgmux(
      testConfig({
        nodes: cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
        healthCheckUser: null,
        healthCheckPassword: null,
        adminUsers: ['admin'],
        auth: 'trust',
        ...over,
      }),
      { logger: captureLogger('info').logger },
    );
    proxies.push(p);
    return p;
  }

  it('the auth file\'s first plain-text user (admin users skipped): SHOW NODES up', async () => {
    const p = await start({ authFile });
    const shown = await adminRows(p.port, 'SHOW NODES');
    expect(shown).toHaveLength(1);
    expect(shown[0]).toMatchObject({ state: 'up', role: 'primary', reason: null });
  });

  it('auth_user with an md5 secret from the auth file: SHOW NODES up', async () => {
    const p = await start({ authFile, authUser: 'authmd5' });
    const shown = await adminRows(p.port, 'SHOW NODES');
    expect(shown[0]).toMatchObject({ state: 'up', role: 'primary', reason: null });
  });

  it('without any of those, postgres without a password is refused here and the reason says so', async () => {
    const p = await start({ authFile: null });
    await waitFor(() => p.proxy.topology().nodes[0]!.consecutiveFailures >= 1, 5000, () => JSON.stringify(p.proxy.topology().nodes));
    const n = p.proxy.topology().nodes[0]!;
    expect(n.state).toBe('down');
    expect(n.reason).toMatch(/postgres/);
  });
});
