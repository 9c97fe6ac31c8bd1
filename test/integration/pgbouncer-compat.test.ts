// A real PgBouncer 1.18 (the machine's /usr/sbin/pgbouncer) and pgmux with the same pools,
// side by side: every SHOW command both have must give the same column names in the same
// order. The reference is PgBouncer 1.25 (its src/admin.c and src/stats.c at tag
// pgbouncer_1_25_2), written down below. 1.18 is older: the column changes of 1.19..1.25
// (read from the sources at each tag; the changelogs say the same) are data here, so
//   pgmux's columns                           == 1.25's, then pgmux-only ones,
//   1.18's real columns                       == 1.25's with the known changes undone,
// and any difference nobody explained fails. PgBouncer not starting fails the test too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { clusterInfo, pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { freePort } from '../../src/embedded/localCluster.js';

const PGBOUNCER = '/usr/sbin/pgbouncer';

/** PgBouncer's tuple descriptor letters -> the type OID it sends (pktbuf_write_RowDescription). */
const OID: Record<string, number> = { s: 25, T: 25, b: 17, i: 23, q: 20, N: 1700 };

const SOCKET = 'ssssssisiTTiiississii type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id';
const SOCKET_DEBUG = 'iiiiiii recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail send_avail';

/** PgBouncer 1.25's SHOW commands: descriptor letters, then the column names. */
const V125: Record<string, string> = {
  STATS: 'sNNNNNNNNNNNNNNNNNNNNNN database total_server_assignment_count total_xact_count total_query_count total_received total_sent total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count total_bind_count avg_server_assignment_count avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count avg_server_parse_count avg_bind_count',
  STATS_TOTALS: 'sNNNNNNNNNNN database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time client_parse_count server_parse_count bind_count',
  STATS_AVERAGES: 'sNNNNNNNNNNN database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time avg_client_parse_count avg_server_parse_count avg_bind_count',
  TOTALS: 'sN name value',
  SERVERS: SOCKET,
  CLIENTS: SOCKET,
  SOCKETS: `${SOCKET.split(' ')[0]}${SOCKET_DEBUG.split(' ')[0]} ${SOCKET.split(' ').slice(1).join(' ')} ${SOCKET_DEBUG.split(' ').slice(1).join(' ')}`,
  POOLS: 'ssiiiiiiiiiiiiiss database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts',
  PEERS: 'isii peer_id host port pool_size',
  PEER_POOLS: 'iiiii peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel sv_login',
  LISTS: 'si list items',
  USERS: 'ssssiiii name pool_size reserve_pool_size pool_mode max_user_connections current_connections max_user_client_connections current_client_connections',
  DATABASES: 'ssissiiiissiiiiii name host port database force_user pool_size min_pool_size reserve_pool_size server_lifetime pool_mode load_balance_hosts max_connections current_connections max_client_connections current_client_connections paused disabled',
  FDS: 'issssiqisssssbb fd task user database addr port cancel link client_encoding std_strings datestyle timezone password scram_client_key scram_server_key',
  CONFIG: 'ssss key value default changeable',
  MEM: 'siiii name size used free memtotal',
  DNS_HOSTS: 'sqs hostname ttl addrs',
  DNS_ZONES: 'sqi zonename serial count',
  VERSION: 's version',
  STATE: 'ss key value',
};
V125.ACTIVE_SOCKETS = V125.SOCKETS!;

function parse(spec: string): { names: string[]; oids: number[] } {
  const [desc, ...names] = spec.split(' ');
  expect(desc!.length, spec).toBe(names.length);
  return { names, oids: [...desc!].map((c) => OID[c]!) };
}

/** Rows of SHOW LISTS and SHOW TOTALS in 1.25 (name column), compared like columns. */
const TOTALS_KEYS = ['server_assignment_count', 'xact_count', 'query_count', 'client_bytes', 'server_bytes', 'xact_time', 'query_time', 'wait_time', 'ps_client_parse_count', 'ps_server_parse_count', 'ps_bind_count'];
const V125_ROWS: Record<string, string[]> = {
  LISTS: ['databases', 'users', 'peers', 'pools', 'peer_pools', 'free_clients', 'used_clients', 'login_clients', 'free_servers', 'used_servers', 'dns_names', 'dns_zones', 'dns_queries', 'dns_pending'],
  TOTALS: [...TOTALS_KEYS.map((k) => `total_${k}`), ...TOTALS_KEYS.map((k) => `avg_${k}`)],
  STATE: ['active', 'paused', 'suspended'],
};

type Change =
  | { version: string; show: string; added: string }
  | { version: string; show: string; renamed: string; from: string }
  | { version: string; show: string; commandAdded: true }
  | { version: string; show: string; rowAdded: string };

const SOCKETS_SHOWS = ['CLIENTS', 'SERVERS', 'SOCKETS', 'ACTIVE_SOCKETS'];
const added = (version: string, shows: string[], ...names: string[]): Change[] => shows.flatMap((show) => names.map((a) => ({ version, show, added: a })));

/** What changed from 1.18 to 1.25 (each tag's src/admin.c / src/stats.c; NEWS.md). */
const CHANGES: Change[] = [
  // 1.19: peering; SHOW STATE.
  { version: '1.19', show: 'PEERS', commandAdded: true },
  { version: '1.19', show: 'PEER_POOLS', commandAdded: true },
  { version: '1.19', show: 'STATE', commandAdded: true },
  { version: '1.19', show: 'LISTS', rowAdded: 'peers' },
  { version: '1.19', show: 'LISTS', rowAdded: 'peer_pools' },
  // 1.21: prepared statements in transaction mode.
  ...added('1.21', SOCKETS_SHOWS, 'prepared_statements'),
  // 1.23: server assignment counts, per-database server_lifetime, per-user settings, replication.
  ...added('1.23', ['STATS'], 'total_server_assignment_count', 'avg_server_assignment_count'),
  ...added('1.23', ['STATS_TOTALS', 'STATS_AVERAGES'], 'server_assignment_count'),
  { version: '1.23', show: 'TOTALS', rowAdded: 'total_server_assignment_count' },
  { version: '1.23', show: 'TOTALS', rowAdded: 'avg_server_assignment_count' },
  ...added('1.23', ['DATABASES'], 'server_lifetime'),
  ...added('1.23', ['USERS'], 'pool_size', 'max_user_connections', 'current_connections'),
  ...added('1.23', SOCKETS_SHOWS, 'replication'),
  // 1.24: prepared statement counters, load_balance_hosts, client connection limits, client ids.
  ...added('1.24', ['STATS'], 'total_client_parse_count', 'total_server_parse_count', 'total_bind_count', 'avg_client_parse_count', 'avg_server_parse_count', 'avg_bind_count'),
  ...added('1.24', ['STATS_TOTALS'], 'client_parse_count', 'server_parse_count', 'bind_count'),
  ...added('1.24', ['STATS_AVERAGES'], 'avg_client_parse_count', 'avg_server_parse_count', 'avg_bind_count'),
  ...['ps_client_parse_count', 'ps_server_parse_count', 'ps_bind_count'].flatMap((k) => [
    { version: '1.24', show: 'TOTALS', rowAdded: `total_${k}` },
    { version: '1.24', show: 'TOTALS', rowAdded: `avg_${k}` },
  ]),
  { version: '1.24', show: 'DATABASES', renamed: 'reserve_pool_size', from: 'reserve_pool' },
  ...added('1.24', ['DATABASES'], 'load_balance_hosts', 'max_client_connections', 'current_client_connections'),
  ...added('1.24', ['POOLS'], 'load_balance_hosts'),
  ...added('1.24', ['USERS'], 'reserve_pool_size', 'max_user_client_connections', 'current_client_connections'),
  ...added('1.24', SOCKETS_SHOWS, 'id'),
];

/** 1.25's column names with every known change undone: what 1.18 must answer. */
function undone(show: string, names: string[]): string[] {
  let out = [...names];
  for (const c of [...CHANGES].reverse()) {
    if (c.show !== show) continue;
    if ('added' in c) out = out.filter((n) => n !== c.added);
    if ('renamed' in c) out = out.map((n) => (n === c.renamed ? c.from : n));
  }
  return out;
}

function undoneRows(show: string, rows: string[]): string[] {
  const addedRows = new Set(CHANGES.filter((c) => c.show === show && 'rowAdded' in c).map((c) => (c as { rowAdded: string }).rowAdded));
  return rows.filter((r) => !addedRows.has(r));
}

/** pgmux's columns after PgBouncer's, per command. */
const PGMUX_ONLY: Record<string, string[]> = {
  POOLS: ['nodes'],
  CLIENTS: ['transactions', 'node', 'backend_pid', 'pinned', 'pgmux_state'],
  SERVERS: ['node', 'resets', 'pgmux_state'],
  DATABASES: ['route', 'primary_connections_seen'],
};

describe('PgBouncer compatibility of the admin console', () => {
  let dir: string;
  let bouncer: ChildProcess | null = null;
  let bouncerPort = 0;
  let proxy: TestProxy;
  const open: pg.Client[] = [];
  let bouncerAdmin: pg.Client;
  let pgmuxAdmin: pg.Client;
  let stderr = '';

  async function connect(port: number, opts: Parameters<typeof pgClient>[1]): Promise<pg.Client> {
    const c = await pgClient(port, opts);
    c.on('error', () => {});
    open.push(c);
    return c;
  }

  beforeAll(async () => {
    const primary = clusterInfo().nodes[0]!;
    dir = mkdtempSync(join(tmpdir(), 'pgmux-pgbouncer-compat-'));
    bouncerPort = await freePort();
    writeFileSync(join(dir, 'userlist.txt'), '"postgres" ""\n"app" ""\n');
    // The same pools as pgmux below: database app on the primary, transaction mode, 5 per pool.
    writeFileSync(
      join(dir, 'pgbouncer.ini'),
      [
        '[databases]',
        `app = host=${primary.host} port=${primary.port} dbname=app`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${bouncerPort}`,
        'unix_socket_dir =',
        'auth_type = trust',
        `auth_file = ${join(dir, 'userlist.txt')}`,
        'admin_users = postgres',
        'stats_users = app',
        'pool_mode = transaction',
        'default_pool_size = 5',
        `logfile = ${join(dir, 'pgbouncer.log')}`,
        `pidfile = ${join(dir, 'pgbouncer.pid')}`,
        '',
      ].join('\n'),
    );
    // PgBouncer refuses to run as root: as root, run it as postgres.
    const root = process.getuid?.() === 0;
    if (root) execFileSync('chown', ['-R', 'postgres:postgres', dir]);
    const argv = root ? ['runuser', '-u', 'postgres', '--', PGBOUNCER] : [PGBOUNCER];
    bouncer = spawn(argv[0]!, [...argv.slice(1), join(dir, 'pgbouncer.ini')], { stdio: ['ignore', 'ignore', 'pipe'] });
    bouncer.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        bouncerAdmin = await connect(bouncerPort, { database: 'pgbouncer', connectionTimeoutMillis: 1000 });
        break;
      } catch (err) {
        const log = existsSync(join(dir, 'pgbouncer.log')) ? readFileSync(join(dir, 'pgbouncer.log'), 'utf8') : '';
        if (Date.now() > deadline || bouncer.exitCode !== null) throw new Error(`PgBouncer did not start: ${(err as Error).message}\n${stderr}\n${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    proxy = await startProxy({ adminUsers: ['postgres'], statsUsers: ['app'], nodes: [{ host: primary.host, port: primary.port, weight: 1 }] });
    pgmuxAdmin = await connect(proxy.port, { database: 'pgbouncer' });
    // Clients through both, so pools, clients and servers exist; one stays in a transaction.
    for (const port of [bouncerPort, proxy.port]) {
      const a = await connect(port, { database: 'app', application_name: 'compat-idle' });
      const b = await connect(port, { database: 'app', application_name: 'compat-busy' });
      await a.query('SELECT 1');
      await b.query('BEGIN');
      await b.query('SELECT 2');
    }
  }, 60_000);

  afterAll(async () => {
    for (const c of open) await c.end().catch(() => {});
    await proxy?.close();
    if (bouncer !== null && bouncer.exitCode === null) {
      const exited = new Promise((r) => bouncer!.once('exit', r));
      const pidFile = join(dir, 'pgbouncer.pid');
      // runuser passes SIGTERM on; the pid file names PgBouncer itself in case it does not.
      bouncer.kill('SIGTERM');
      if (existsSync(pidFile)) {
        try {
          process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGTERM');
        } catch {
          // already gone
        }
      }
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs PgBouncer 1.18 as the reference', async () => {
    const v = (await bouncerAdmin.query('SHOW VERSION')).rows[0].version as string;
    expect(v).toMatch(/^PgBouncer 1\.18\./);
  });

  const shows = Object.keys(V125);
  it.each(shows)('SHOW %s: pgmux has 1.25\'s columns, types and order; pgmux-only ones after', async (show) => {
    const ref = parse(V125[show]!);
    const r = await pgmuxAdmin.query(`SHOW ${show}`);
    const names = r.fields.map((f) => f.name);
    expect(names.slice(0, ref.names.length)).toEqual(ref.names);
    expect(names.slice(ref.names.length)).toEqual(PGMUX_ONLY[show] ?? []);
    expect(r.fields.slice(0, ref.names.length).map((f) => f.dataTypeID)).toEqual(ref.oids);
    if (V125_ROWS[show]) expect((r.rows as Array<Record<string, string>>).map((x) => x[Object.keys(x)[0]!])).toEqual(V125_ROWS[show]);
  });

  it.each(shows)('SHOW %s: PgBouncer 1.18 answers 1.25\'s columns with the known changes undone', async (show) => {
    const ref = parse(V125[show]!);
    if (CHANGES.some((c) => c.show === show && 'commandAdded' in c)) {
      // Newer than 1.18: 1.18 must not know it (else the change list is wrong).
      await expect(bouncerAdmin.query(`SHOW ${show}`)).rejects.toThrow();
      return;
    }
    const r = await bouncerAdmin.query(`SHOW ${show}`);
    const expected = undone(show, ref.names);
    expect(r.fields.map((f) => f.name)).toEqual(expected);
    // The columns both have: the same types in 1.18, 1.25 and so in pgmux.
    const oidByName = new Map(ref.names.map((n, k) => [n, ref.oids[k]!]));
    for (const f of r.fields) if (oidByName.has(f.name)) expect(f.dataTypeID, `${show}.${f.name}`).toBe(oidByName.get(f.name));
    if (V125_ROWS[show]) {
      const first = r.fields[0]!.name;
      expect((r.rows as Array<Record<string, string>>).map((x) => x[first])).toEqual(undoneRows(show, V125_ROWS[show]!));
    }
  });

  it('counts the same clients in SHOW POOLS: idle ones as cl_active, as PgBouncer does', async () => {
    const pick = async (c: pg.Client) => {
      const row = (await c.query('SHOW POOLS')).rows.find((p: Record<string, unknown>) => p.database === 'app' && p.user === 'postgres');
      return { cl_active: row.cl_active, cl_waiting: row.cl_waiting, sv_active: row.sv_active };
    };
    const [b, m] = [await pick(bouncerAdmin), await pick(pgmuxAdmin)];
    expect(b).toEqual({ cl_active: 2, cl_waiting: 0, sv_active: 1 });
    expect(m).toEqual(b);
  });
});
