// The shared test cluster really is a primary with two streaming hot standbys, and the
// test roles log in with their passwords.
import { afterAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { clusterInfo, nodePorts, pgbenchBin, pgClient, primaryPort, psqlBin, runPg } from '../support/cluster.js';

const clients: pg.Client[] = [];
async function connect(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  clients.push(c);
  return c;
}

afterAll(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
});

describe('test cluster harness', () => {
  it('has a primary and two replicas on loopback', () => {
    const info = clusterInfo();
    expect(info.nodes.map((n) => n.name)).toEqual(['node0', 'node1', 'node2']);
    for (const n of info.nodes) expect(n.host).toBe('127.0.0.1');
    expect(new Set(nodePorts()).size).toBe(3);
    expect(primaryPort()).toBe(info.nodes[0]!.port);
  });

  it('node0 is the primary and the others are in recovery', async () => {
    const [p, ...replicas] = nodePorts();
    const primary = await connect(p!);
    expect((await primary.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(false);
    for (const port of replicas) {
      const r = await connect(port);
      expect((await r.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(true);
      expect((await r.query('select status from pg_stat_wal_receiver')).rows[0]?.status).toBe('streaming');
    }
    const senders = await primary.query("select application_name from pg_stat_replication where state = 'streaming' order by 1");
    expect(senders.rows.map((r) => r.application_name)).toEqual(['node1', 'node2']);
  });

  it('a row inserted on the primary shows up on both replicas within 5 s', async () => {
    const [p, ...replicas] = nodePorts();
    const primary = await connect(p!);
    await primary.query('create table if not exists harness_probe (id int primary key, token text)');
    const token = `t${Date.now()}_${Math.random().toString(36).slice(2)}`;
    const id = Math.floor(Math.random() * 1e9);
    await primary.query('insert into harness_probe values ($1, $2)', [id, token]);
    await Promise.all(
      replicas.map(async (port) => {
        const r = await connect(port);
        // The table itself may not have replayed yet: a query error is retried too.
        await expect
          .poll(async () => (await r.query('select token from harness_probe where id = $1', [id])).rows[0]?.token, { timeout: 5_000, interval: 25, message: `row on replica port ${port}` })
          .toBe(token);
      }),
    );
    await primary.query('drop table harness_probe');
  });

  it('replicas refuse writes', async () => {
    const r = await connect(nodePorts()[1]!);
    await expect(r.query('create table nope (x int)')).rejects.toThrow(/read-only transaction/);
  });

  it('app_md5 logs in with md5 and its password is stored as md5', async () => {
    const c = await connect(primaryPort(), { user: 'app_md5', password: 'md5pass' });
    expect((await c.query('select current_user as u')).rows[0].u).toBe('app_md5');
    const su = await connect(primaryPort(), { database: 'postgres' });
    const pw = await su.query("select rolpassword from pg_authid where rolname = 'app_md5'");
    expect(pw.rows[0].rolpassword).toMatch(/^md5[0-9a-f]{32}$/);
    await expect(pgClient(primaryPort(), { user: 'app_md5', password: 'wrong' })).rejects.toThrow(/password authentication failed/);
  });

  it('app_scram logs in with SCRAM', async () => {
    const c = await connect(primaryPort(), { user: 'app_scram', password: 'scrampass' });
    expect((await c.query('select current_user as u')).rows[0].u).toBe('app_scram');
    const su = await connect(primaryPort(), { database: 'postgres' });
    const pw = await su.query("select rolpassword from pg_authid where rolname = 'app_scram'");
    expect(pw.rows[0].rolpassword).toMatch(/^SCRAM-SHA-256\$/);
    await expect(pgClient(primaryPort(), { user: 'app_scram', password: 'wrong' })).rejects.toThrow(/password authentication failed/);
  });

  it('the roles also log in on a replica', async () => {
    const port = nodePorts()[2]!;
    const c = await connect(port, { user: 'app_scram', password: 'scrampass' });
    expect((await c.query('select pg_is_in_recovery() as r')).rows[0].r).toBe(true);
  });

  it('role app owns database app, which holds the pgbench tables', async () => {
    const c = await connect(primaryPort(), { user: 'app', password: 'apppass' });
    const owner = await c.query("select pg_get_userbyid(datdba) as o from pg_database where datname = 'app'");
    expect(owner.rows[0].o).toBe('app');
    const n = await c.query('select count(*)::int as n from pgbench_accounts');
    expect(n.rows[0].n).toBe(100_000);
    expect((await c.query('select rolsuper from pg_roles where rolname = current_user')).rows[0].rolsuper).toBe(false);
  });

  it('psql and pgbench client binaries run', async () => {
    const r = await runPg(psqlBin(), ['-h', '127.0.0.1', '-p', String(primaryPort()), '-U', 'postgres', '-d', 'app', '-Atc', 'select 40 + 2']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('42');
    const b = await runPg(pgbenchBin(), ['--version']);
    expect(b.code).toBe(0);
    expect(b.stdout).toMatch(/pgbench \(PostgreSQL\) \d+/);
  });
});
