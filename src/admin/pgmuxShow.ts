// pgmux's own SHOW commands (per node: NODES, NODE_POOLS, NODE_STATS) and Pgpool-II 4.3's
// SHOW POOL_NODES, built from the ServerView. Times are ISO 8601 strings (UTC), never-happened
// times NULL.

import { currentRole } from '../cluster/snapshot.js';
import { resultSet, type Cell, type Column } from '../protocol/resultSet.js';
import type { ServerView } from './view.js';

function iso(ms: number | null | undefined): string | null {
  return ms === null || ms === undefined || ms <= 0 ? null : new Date(ms).toISOString();
}

export function showNodes(view: ServerView): Buffer {
  const tx = view.counters().transactions;
  const rows: Cell[][] = view.topology().nodes.map((n) => {
    const t = tx.get(n.name);
    return [
      n.name, n.host, currentRole(n), n.state, n.weight, n.lagBytes, n.lagMs, t?.read ?? 0, t?.write ?? 0, iso(n.lastCheckAt), n.reason ?? null,
      view.isDisabled(n.name), n.role,
    ];
  });
  // role: what the node is now (`unknown` while down); last_role: what it last answered.
  return resultSet(['name', 'address', 'role', 'state', 'weight', 'lag_bytes', 'lag_ms', 'reads', 'writes', 'last_check', 'reason', 'disabled', 'last_role'], rows);
}

/** One row per (node, database, user) pool: what SHOW POOLS aggregates over the nodes. */
export function showNodePools(view: ServerView): Buffer {
  const clients = view.clients();
  const mode = view.config().poolMode;
  const rows: Cell[][] = view.pools().map((p) => {
    const linked = clients.filter((c) => c.backendNode === p.node && c.database === p.database && c.user === p.user).length;
    return [p.node, p.database, p.user, linked, p.stats.waiting, p.stats.active, p.stats.idle, p.stats.connecting, p.stats.maxWaitMs, mode];
  });
  rows.sort((a, b) => String(a[0]).localeCompare(String(b[0])) || String(a[1]).localeCompare(String(b[1])) || String(a[2]).localeCompare(String(b[2])));
  return resultSet(['node', 'database', 'user', 'cl_linked', 'cl_waiting', 'sv_active', 'sv_idle', 'sv_connecting', 'maxwait_ms', 'pool_mode'], rows);
}

/** Transactions per node and route, and the process-wide counters in a `total` row. */
export function showNodeStats(view: ServerView): Buffer {
  const c = view.counters();
  const cls = view.classifierStats();
  // Configured nodes first (in order), then nodes a reload removed that still have counts.
  const names = view.config().nodes.map((n) => `${n.host}:${n.port}`);
  for (const k of c.transactions.keys()) if (!names.includes(k)) names.push(k);
  const blank = [null, null, null, null, null, null, null, null, null] as const;
  let read = 0;
  let write = 0;
  const rows: Cell[][] = names.map((name) => {
    const t = c.transactions.get(name) ?? { read: 0, write: 0 };
    read += t.read;
    write += t.write;
    return [name, t.read, t.write, t.read + t.write, ...blank];
  });
  const avgWait = c.waitCount > 0 ? (c.waitMsSum / c.waitCount).toFixed(3) : '0.000';
  rows.push(['total', read, write, read + write, c.bytesIn, c.bytesOut, c.clientLogins, c.clientLoginFailures, avgWait, c.readRetries, c.failovers, cls.hits, cls.misses]);
  return resultSet(
    ['node', 'xact_read', 'xact_write', 'xact_total', 'bytes_in', 'bytes_out', 'logins', 'login_failures', 'avg_wait_ms', 'read_retries', 'failovers',
      'classifier_cache_hits', 'classifier_cache_misses'],
    rows,
  );
}

/** Pgpool-II 4.3's SHOW POOL_NODES columns, all text as Pgpool-II sends them. */
export const POOL_NODES_COLUMNS: readonly string[] = [
  'node_id', 'hostname', 'port', 'status', 'pg_status', 'lb_weight', 'role', 'pg_role', 'select_cnt', 'load_balance_node', 'replication_delay',
  'replication_state', 'replication_sync_state', 'last_status_change',
];

/** Pgpool-II's last_status_change text: local-time-free "YYYY-MM-DD HH:MM:SS" (UTC here). */
const pgpoolTime = (ms: number) => new Date(ms).toISOString().slice(0, 19).replace('T', ' ');

/**
 * SHOW POOL_NODES from the topology. status is pgmux's view (up, or down when the node is
 * down, fenced, diverged or disabled); pg_status what the last health check saw; role and
 * pg_role Pgpool-II's words (primary / standby). load_balance_node: the node can get reads
 * (pgmux balances per transaction, not per session). replication_delay in bytes.
 */
export function showPoolNodes(view: ServerView): Buffer {
  const tx = view.counters().transactions;
  const nodes = view.topology().nodes;
  const totalWeight = nodes.reduce((s, n) => s + (n.weight > 0 ? n.weight : 0), 0);
  const statusSince = view.startedAt;
  const columns: Column[] = POOL_NODES_COLUMNS.map((name) => ({ name, type: 'text' }));
  const rows: Cell[][] = nodes.map((n, id) => {
    const role = currentRole(n);
    const healthy = n.state === 'up' || n.state === 'lagging';
    const disabled = view.isDisabled(n.name);
    const pgRole = role === 'primary' ? 'primary' : role === 'replica' ? 'standby' : 'unknown';
    const lbWeight = totalWeight > 0 ? (Math.max(n.weight, 0) / totalWeight).toFixed(6) : '0.000000';
    return [
      String(id), n.host, String(n.port), healthy && !disabled ? 'up' : 'down', healthy ? 'up' : 'down',
      lbWeight, pgRole, pgRole, String(tx.get(n.name)?.read ?? 0), String(healthy && !disabled && n.weight > 0 && role === 'replica'),
      String(n.lagBytes ?? 0), role === 'replica' && healthy ? 'streaming' : '', role === 'replica' && healthy ? 'async' : '', pgpoolTime(statusSince),
    ];
  });
  return resultSet(columns, rows);
}

/**
 * Pgpool-II answers `SHOW pool_nodes` and `SHOW pool_version` on any database (health checks
 * and runbooks run them through the application's DSN): pgmux does too. Null for the other
 * pool_* commands, which have admin-console equivalents instead.
 */
export function pgpoolShow(view: ServerView, name: string): Buffer | null {
  if (name === 'nodes') return showPoolNodes(view);
  if (name === 'version') return resultSet([{ name: 'pool_version', type: 'text' }], [[`pgmux ${view.version}`]]);
  return null;
}

const CACHE_COLUMNS: Column[] = [
  { name: 'database', type: 'text' },
  { name: 'table', type: 'text' },
  { name: 'entries', type: 'int8' },
  { name: 'bytes', type: 'int8' },
  { name: 'hits', type: 'int8' },
  { name: 'misses', type: 'int8' },
  { name: 'evictions', type: 'int8' },
  { name: 'invalidations', type: 'int8' },
  { name: 'hit_ratio', type: 'numeric' },
];

/**
 * SHOW CACHE: a first row of totals (database and table `*`), then one row per (database,
 * table) with the entries that read it (an entry reading two tables counts in both).
 */
export function showCache(view: ServerView): Buffer {
  const s = view.queryCache.stats();
  const lookups = s.hits + s.misses;
  const rows: Cell[][] = [['*', '*', s.entries, s.bytes, s.hits, s.misses, s.evictions, s.invalidations, lookups === 0 ? null : (s.hits / lookups).toFixed(4)]];
  for (const t of s.byTable) rows.push([t.database, t.table, t.entries, t.bytes, null, null, null, null, null]);
  return resultSet(CACHE_COLUMNS, rows, `SHOW`);
}
