// PgBouncer's SHOW commands built from the ServerView: PgBouncer 1.25's column names, order
// and types (src/admin.c, src/stats.c), pgmux-only columns appended after them, one row per
// (database, user) pool where PgBouncer has one. What pgmux has no equivalent for (peers,
// a DNS cache, file descriptors to hand over) answers with the columns and no rows.

import { configToObject } from '../config/load.js';
import { DEFAULTS, SETTINGS } from '../config/schema.js';
import type { Config } from '../config/types.js';
import { resultSet, type Cell, type Column, type ColumnType } from '../protocol/resultSet.js';
import type { BackendView, ClientView, ServerView } from './view.js';
import { sumTraffic, trafficByDatabase, type DatabaseTraffic, type TrafficSampler } from './trafficSampler.js';

const t = (name: string): Column => ({ name, type: 'text' });
const i4 = (name: string): Column => ({ name, type: 'int4' });
const i8 = (name: string): Column => ({ name, type: 'int8' });
const num = (name: string): Column => ({ name, type: 'numeric' });

/** Columns from PgBouncer's tuple descriptor letters (s text, i int4, q int8, N numeric, T time as text, b bytea). */
function cols(desc: string, ...names: string[]): Column[] {
  const types: Record<string, ColumnType> = { s: 'text', T: 'text', i: 'int4', q: 'int8', N: 'numeric', b: 'bytea' };
  if (desc.length !== names.length) throw new Error(`column descriptor ${desc} does not match ${names.length} names`);
  return names.map((name, k) => ({ name, type: types[desc[k]!]! }));
}

/** PgBouncer's timestamp text (format_time_s), in UTC. */
export function pgbouncerTime(ms: number | null | undefined): string | null {
  if (ms === null || ms === undefined || ms <= 0) return null;
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ') + ' UTC';
}

function splitAddress(remote: string): [string, number | null] {
  const k = remote.lastIndexOf(':');
  if (k < 0) return [remote, null];
  const port = Number(remote.slice(k + 1));
  return [remote.slice(0, k), Number.isInteger(port) ? port : null];
}

const ptr = (kind: 'C' | 'S', id: number) => `0x${kind === 'C' ? 'c' : '5'}${id.toString(16).padStart(7, '0')}`;

function poolModeOf(view: ServerView, database: string): string {
  const entry = view.databases().find((d) => d.name === database);
  return entry?.poolMode ?? view.config().poolMode;
}

const loggedIn = (c: ClientView) => c.state === 'idle' || c.state === 'waiting' || c.state === 'linked';

// ---- POOLS --------------------------------------------------------------------------

const POOLS_COLUMNS: Column[] = [
  ...cols('ssiiiiiiiiiiiiiss', 'database', 'user', 'cl_active', 'cl_waiting', 'cl_active_cancel_req', 'cl_waiting_cancel_req', 'sv_active',
    'sv_active_cancel', 'sv_being_canceled', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login', 'maxwait', 'maxwait_us', 'pool_mode', 'load_balance_hosts'),
  i4('nodes'),
];

interface PoolRow {
  clActive: number;
  clWaiting: number;
  svActive: number;
  svIdle: number;
  svLogin: number;
  maxWaitMs: number;
  nodes: number;
}

/**
 * One row per (database, user): clients by their state (idle ones count as cl_active, as
 * PgBouncer counts them in transaction mode), backends summed over the nodes' pools.
 */
export function showPools(view: ServerView): Buffer {
  const rows = new Map<string, PoolRow & { database: string; user: string }>();
  const row = (database: string, user: string) => {
    const key = `${database}\0${user}`;
    let r = rows.get(key);
    if (r === undefined) rows.set(key, (r = { database, user, clActive: 0, clWaiting: 0, svActive: 0, svIdle: 0, svLogin: 0, maxWaitMs: 0, nodes: 0 }));
    return r;
  };
  for (const p of view.pools()) {
    const r = row(p.database, p.user);
    r.svActive += p.stats.active;
    r.svIdle += p.stats.idle;
    r.svLogin += p.stats.connecting;
    r.maxWaitMs = Math.max(r.maxWaitMs, p.stats.maxWaitMs);
    r.nodes++;
  }
  const now = Date.now();
  for (const c of view.clients()) {
    if (!loggedIn(c)) continue;
    // A forced user= entry pools every client under that user, as PgBouncer's row does.
    const r = row(c.database, c.poolUser);
    if (c.state === 'waiting') {
      r.clWaiting++;
      // A client parked by PAUSE waits in no node's queue: its wait counts too.
      r.maxWaitMs = Math.max(r.maxWaitMs, now - c.lastActiveAt);
    } else r.clActive++;
  }
  const out: Cell[][] = [...rows.values()]
    .sort((a, b) => a.database.localeCompare(b.database) || a.user.localeCompare(b.user))
    .map((r) => [
      r.database, r.user, r.clActive, r.clWaiting, 0, 0, r.svActive, 0, 0, r.svIdle, 0, 0, r.svLogin,
      Math.floor(r.maxWaitMs / 1000), Math.floor(r.maxWaitMs % 1000) * 1000, poolModeOf(view, r.database), null, r.nodes,
    ]);
  return resultSet(POOLS_COLUMNS, out);
}

// ---- CLIENTS, SERVERS, SOCKETS -------------------------------------------------------

const SOCKET_COLUMNS = cols('ssssssisiTTiiississii', 'type', 'user', 'database', 'replication', 'state', 'addr', 'port', 'local_addr', 'local_port',
  'connect_time', 'request_time', 'wait', 'wait_us', 'close_needed', 'ptr', 'link', 'remote_pid', 'tls', 'application_name', 'prepared_statements', 'id');
const SOCKET_DEBUG_COLUMNS = cols('iiiiiii', 'recv_pos', 'pkt_pos', 'pkt_remain', 'send_pos', 'send_remain', 'pkt_avail', 'send_avail');

const CLIENT_COLUMNS: Column[] = [...SOCKET_COLUMNS, i8('transactions'), t('node'), i4('backend_pid'), t('pinned'), t('pgmux_state')];
const SERVER_COLUMNS: Column[] = [...SOCKET_COLUMNS, t('node'), i8('resets'), t('pgmux_state')];

/** PgBouncer's client states: active (linked), idle, waiting. */
function clientState(c: ClientView): string {
  return c.state === 'linked' ? 'active' : c.state === 'waiting' ? 'waiting' : 'idle';
}

/** Backends by the client linked to them. */
function backendsByClient(backends: readonly BackendView[]): Map<number, BackendView> {
  const out = new Map<number, BackendView>();
  for (const b of backends) if (b.clientId !== null) out.set(b.clientId, b);
  return out;
}

function clientSocketCells(c: ClientView, linked: Map<number, BackendView>, now: number): Cell[] {
  const [addr, port] = splitAddress(c.remote);
  const waitMs = c.state === 'waiting' ? now - c.lastActiveAt : 0;
  const b = linked.get(c.id);
  return [
    'C', c.user, c.database, 'none', clientState(c), addr, port, null, null, pgbouncerTime(c.connectedAt), pgbouncerTime(c.lastActiveAt),
    Math.floor(waitMs / 1000), (waitMs % 1000) * 1000, 0, ptr('C', c.id), b ? ptr('S', b.id) : '', 0, '', c.applicationName, c.preparedStatements, c.id,
  ];
}

function serverSocketCells(b: BackendView, clients: Map<number, ClientView>): Cell[] {
  const [host, port] = splitAddress(b.node);
  const owner = b.clientId === null ? undefined : clients.get(b.clientId);
  const state = b.clientId !== null ? 'active' : b.state === 'connecting' ? 'new' : 'idle';
  return [
    'S', b.user, b.database, 'none', state, host, port, b.localAddr, b.localPort, pgbouncerTime(b.createdAt), pgbouncerTime(b.lastReleasedAt),
    0, 0, b.closeNeeded ? 1 : 0, ptr('S', b.id), b.clientId === null ? '' : ptr('C', b.clientId), b.pid, '', owner?.applicationName ?? '',
    b.preparedStatements, b.id,
  ];
}

export function showClients(view: ServerView): Buffer {
  const linked = backendsByClient(view.backends());
  const now = Date.now();
  const rows = view
    .clients()
    .filter((c) => c.state !== 'startup' && c.state !== 'auth')
    .sort((a, b) => a.id - b.id)
    .map((c) => [...clientSocketCells(c, linked, now), c.transactions, c.backendNode, c.backendPid, c.pinned, c.state]);
  return resultSet(CLIENT_COLUMNS, rows);
}

export function showServers(view: ServerView): Buffer {
  const clients = new Map(view.clients().map((c) => [c.id, c]));
  const rows = view
    .backends()
    .sort((a, b) => a.id - b.id)
    .map((b) => [...serverSocketCells(b, clients), b.node, b.resets, b.state]);
  return resultSet(SERVER_COLUMNS, rows);
}

/** SHOW SOCKETS: clients and backends with PgBouncer's list names as state; buffer positions pgmux does not track are 0. */
export function showSockets(view: ServerView, activeOnly: boolean): Buffer {
  const columns = [...SOCKET_COLUMNS, ...SOCKET_DEBUG_COLUMNS];
  // ACTIVE_SOCKETS lists sockets with unprocessed buffered data; pgmux handles every whole
  // message as it arrives, so there are none between two events.
  if (activeOnly) return resultSet(columns, []);
  const backends = view.backends();
  const linked = backendsByClient(backends);
  const clientsById = new Map(view.clients().map((c) => [c.id, c]));
  const now = Date.now();
  const zeros = [0, 0, 0, 0, 0, 0, 0];
  const rows: Cell[][] = [];
  for (const c of [...clientsById.values()].sort((a, b) => a.id - b.id)) {
    const cells = clientSocketCells(c, linked, now);
    cells[4] = loggedIn(c) ? (c.state === 'waiting' ? 'cl_waiting' : 'cl_active') : 'cl_login';
    rows.push([...cells, ...zeros]);
  }
  for (const b of [...backends].sort((a, b) => a.id - b.id)) {
    const cells = serverSocketCells(b, clientsById);
    cells[4] = b.clientId !== null ? 'sv_active' : b.state === 'connecting' ? 'sv_login' : 'sv_idle';
    rows.push([...cells, ...zeros]);
  }
  return resultSet(columns, rows);
}

// ---- DATABASES, USERS, LISTS ---------------------------------------------------------

const DATABASES_COLUMNS: Column[] = [
  ...cols('ssissiiiissiiiiii', 'name', 'host', 'port', 'database', 'force_user', 'pool_size', 'min_pool_size', 'reserve_pool_size', 'server_lifetime',
    'pool_mode', 'load_balance_hosts', 'max_connections', 'current_connections', 'max_client_connections', 'current_client_connections', 'paused', 'disabled'),
  t('route'),
  i4('primary_connections_seen'),
];

/**
 * The client-count caps, PgBouncer 1.24's max_db_client_connections / max_user_client_connections.
 * Issue #15 renames pgmux's client caps to those names (max_*_connections then cap backends,
 * as in PgBouncer); until that is merged here the old keys are the client caps.
 */
function clientCaps(cfg: Config): { db: number; user: number } {
  return { db: cfg.maxDbClientConnections, user: cfg.maxUserClientConnections };
}

export function showDatabases(view: ServerView): Buffer {
  const cfg = view.config();
  const primary = view.topology().primary;
  const rows = view.databases().map((d) => [
    d.name, primary?.host ?? null, primary?.port ?? null, d.dbname, d.forceUser, d.poolSize, d.minPoolSize, 0, Math.floor(cfg.serverLifetimeMs / 1000),
    d.poolMode, null, d.maxDbConnections, d.currentConnections, clientCaps(cfg).db, d.clientConnections,
    d.paused || view.isPaused(d.name) ? 1 : 0, d.disabled || view.isDatabaseDisabled(d.name) ? 1 : 0, d.route, d.primaryConnectionsSeen,
  ]);
  return resultSet(DATABASES_COLUMNS, rows);
}

const USERS_COLUMNS = cols('ssssiiii', 'name', 'pool_size', 'reserve_pool_size', 'pool_mode', 'max_user_connections', 'current_connections',
  'max_user_client_connections', 'current_client_connections');

/** The users pgmux knows now: with clients or backends, or named in admin_users / stats_users. */
export function showUsers(view: ServerView): Buffer {
  const cfg = view.config();
  const names = new Set<string>([...cfg.adminUsers, ...cfg.statsUsers]);
  const backends = view.backends();
  const clients = view.clients().filter(loggedIn);
  for (const b of backends) names.add(b.user);
  for (const c of clients) names.add(c.user);
  const rows = [...names].sort().map((u) => [
    u, null, null, null, cfg.maxUserConnections, backends.filter((b) => b.user === u).length, clientCaps(cfg).user, clients.filter((c) => c.user === u).length,
  ]);
  return resultSet(USERS_COLUMNS, rows);
}

export function showLists(view: ServerView): Buffer {
  const clients = view.clients();
  const users = new Set([...view.backends().map((b) => b.user), ...clients.filter(loggedIn).map((c) => c.user)]);
  const pools = new Set([...view.pools().map((p) => `${p.database}\0${p.user}`), ...clients.filter(loggedIn).map((c) => `${c.database}\0${c.user}`)]);
  const items: Array<[string, number]> = [
    ['databases', view.databases().length],
    ['users', users.size],
    ['peers', peerRows(view.config()).length],
    ['pools', pools.size],
    ['peer_pools', 0],
    ['free_clients', 0],
    ['used_clients', clients.length],
    ['login_clients', clients.filter((c) => c.state === 'startup' || c.state === 'auth' || c.state === 'login').length],
    ['free_servers', 0],
    ['used_servers', view.backends().length],
    ['dns_names', 0],
    ['dns_zones', 0],
    ['dns_queries', 0],
    ['dns_pending', 0],
  ];
  return resultSet(cols('si', 'list', 'items'), items);
}

// ---- STATS family ----------------------------------------------------------------------

const TRAFFIC_NAMES = [
  'server_assignment_count', 'xact_count', 'query_count', 'received', 'sent', 'xact_time', 'query_time', 'wait_time',
  'client_parse_count', 'server_parse_count', 'bind_count',
] as const;

function trafficCells(d: DatabaseTraffic): number[] {
  return [d.serverAssignments, d.xacts, d.queries, d.bytesReceived, d.bytesSent, d.xactTimeUs, d.queryTimeUs, d.waitTimeUs, d.clientParses, d.serverParses, d.binds];
}

/** The databases with traffic or a pool now, in name order. */
function statsDatabases(view: ServerView, byDb: Map<string, DatabaseTraffic>): string[] {
  const names = new Set([...byDb.keys(), ...view.pools().map((p) => p.database)]);
  return [...names].sort();
}

const ZERO_TRAFFIC = sumTraffic([]);

export function showStats(view: ServerView, sampler: TrafficSampler, which: 'all' | 'totals' | 'averages'): Buffer {
  const byDb = trafficByDatabase(view.trafficTotals());
  const now = Date.now();
  const names = statsDatabases(view, byDb);
  if (which === 'all') {
    const columns = [t('database'), ...TRAFFIC_NAMES.map((n) => num(`total_${n}`)), ...STATS_AVG_NAMES.map(num)];
    const rows = names.map((db) => [db, ...trafficCells(byDb.get(db) ?? ZERO_TRAFFIC), ...trafficCells(sampler.average(db, now))]);
    return resultSet(columns, rows);
  }
  // STATS_TOTALS and STATS_AVERAGES: PgBouncer names the byte columns bytes_*, and the
  // averages' prepared-statement columns avg_*.
  const names11 = ['server_assignment_count', 'xact_count', 'query_count', 'bytes_received', 'bytes_sent', 'xact_time', 'query_time', 'wait_time'];
  const ps = ['client_parse_count', 'server_parse_count', 'bind_count'].map((n) => (which === 'averages' ? `avg_${n}` : n));
  const columns = [t('database'), ...[...names11, ...ps].map(num)];
  const rows = names.map((db) => [db, ...trafficCells(which === 'totals' ? (byDb.get(db) ?? ZERO_TRAFFIC) : sampler.average(db, now))]);
  return resultSet(columns, rows);
}

const STATS_AVG_NAMES = [
  'avg_server_assignment_count', 'avg_xact_count', 'avg_query_count', 'avg_recv', 'avg_sent', 'avg_xact_time', 'avg_query_time', 'avg_wait_time',
  'avg_client_parse_count', 'avg_server_parse_count', 'avg_bind_count',
];

/** SHOW TOTALS: name/value rows over every database. */
export function showTotals(view: ServerView, sampler: TrafficSampler): Buffer {
  const total = sumTraffic(trafficByDatabase(view.trafficTotals()).values());
  const avg = sampler.average(null, Date.now());
  const keys = ['server_assignment_count', 'xact_count', 'query_count', 'client_bytes', 'server_bytes', 'xact_time', 'query_time', 'wait_time',
    'ps_client_parse_count', 'ps_server_parse_count', 'ps_bind_count'];
  const totals = trafficCells(total);
  const avgs = trafficCells(avg);
  const rows: Cell[][] = [...keys.map((k, n) => [`total_${k}`, totals[n]!]), ...keys.map((k, n) => [`avg_${k}`, avgs[n]!])];
  return resultSet(cols('sN', 'name', 'value'), rows);
}

// ---- the rest ---------------------------------------------------------------------------

function cellOf(v: unknown): string | null {
  if (v === null || v === undefined) return null;
  if (Array.isArray(v)) return v.map((x) => String(x)).join(', ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Every setting as snake_case key -> display value, in the schema's order; secrets masked. */
export function configRows(c: Config): Array<[string, string | null]> {
  return Object.entries(configToObject(c)).map(([k, v]) => [k, cellOf(v)]);
}

/** SHOW CONFIG: key, value, default, changeable (RELOAD and SET apply it). */
export function showConfig(c: Config): Buffer {
  const defaults = new Map(configRows(DEFAULTS));
  const restartOnly = new Set(SETTINGS.filter((s) => s.restartOnly).map((s) => s.key));
  const rows = configRows(c).map(([k, v]) => [k, v, defaults.get(k) ?? null, restartOnly.has(k) ? 'no' : 'yes']);
  return resultSet(cols('ssss', 'key', 'value', 'default', 'changeable'), rows);
}

export function showState(view: ServerView): Buffer {
  const suspended = view.isSuspended();
  const paused = !suspended && view.isPaused();
  return resultSet(cols('ss', 'key', 'value'), [
    ['active', !suspended && !paused ? 'yes' : 'no'],
    ['paused', paused ? 'yes' : 'no'],
    ['suspended', suspended ? 'yes' : 'no'],
  ]);
}

/** SHOW MEM: PgBouncer lists its slab caches; pgmux's one allocator is the JavaScript heap. */
export function showMem(): Buffer {
  const m = process.memoryUsage();
  return resultSet(cols('siiii', 'name', 'size', 'used', 'free', 'memtotal'), [
    ['js_heap', 1, clampInt4(m.heapUsed), clampInt4(m.heapTotal - m.heapUsed), clampInt4(m.heapTotal)],
  ]);
}

const clampInt4 = (n: number) => Math.min(n, 2 ** 31 - 1);

/** SHOW PEERS: the configured peers but this instance (a dns: entry: one row, its id unknown). pgmux keeps no cancel pool: pool_size 0. */
export function showPeers(c: Config): Buffer {
  return resultSet(cols('isii', 'peer_id', 'host', 'port', 'pool_size'), peerRows(c));
}

function peerRows(c: Config): Cell[][] {
  return c.peers.filter((p) => !('id' in p) || p.id !== c.peerId).map((p) => ('id' in p ? [p.id, p.host, p.port, 0] : [null, p.dns, p.port ?? c.listen.port, 0]));
}

/** Commands whose answer is only the columns: pgmux has no peer pools, DNS cache or fd hand-over. */
export const EMPTY_SHOWS: Record<string, Column[]> = {
  PEER_POOLS: cols('iiiii', 'peer_id', 'cl_active_cancel_req', 'cl_waiting_cancel_req', 'sv_active_cancel', 'sv_login'),
  DNS_HOSTS: cols('sqs', 'hostname', 'ttl', 'addrs'),
  DNS_ZONES: cols('sqi', 'zonename', 'serial', 'count'),
  FDS: cols('issssiqisssssbb', 'fd', 'task', 'user', 'database', 'addr', 'port', 'cancel', 'link', 'client_encoding', 'std_strings', 'datestyle',
    'timezone', 'password', 'scram_client_key', 'scram_server_key'),
};

export function showEmpty(subject: keyof typeof EMPTY_SHOWS): Buffer {
  return resultSet(EMPTY_SHOWS[subject]!, []);
}

export const showVersion = (view: ServerView): Buffer => resultSet([t('version')], [[`pgmux ${view.version}`]]);
