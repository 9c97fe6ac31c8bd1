// Pgpool-II's pgpool.conf -> pgmux keys: backends become nodes (weights kept as ratios),
// pool, timeout, lag and health-check settings translated; pool_passwd -> a userlist auth_file,
// pool_hba.conf -> hba_file, ssl_* -> client_tls*.

import type { ImportOptions } from './importConfig.js';
import type { Output } from './output.js';
import { carryHba } from './hbaCheck.js';
import { decodePoolSecret, parsePoolPasswd, toUserlist, type PoolPasswdEntry } from './poolPasswd.js';
import { isInteger, intOrString, pgTime, isOn, isOff, listenHost, hostPort, sourcePath } from './values.js';


interface ConfEntry {
  key: string;
  value: string;
  line: number;
}

/** postgresql.conf-style: key = value | key = 'quoted ''value''', # comments. */
function parseConf(text: string, out: Output): ConfEntry[] {
  const entries: ConfEntry[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(?:'((?:[^'\\]|\\.|'')*)'|([^#\s]*))\s*(?:#.*)?$/.exec(line);
    if (!m) {
      out.warn(`line ${i + 1}: "${line}" is not "key = value"; ignored`);
      return;
    }
    const value = m[2] !== undefined ? m[2].replace(/''/g, "'").replace(/\\(.)/g, '$1') : m[3]!;
    entries.push({ key: m[1]!.toLowerCase(), value, line: i + 1 });
  });
  return entries;
}

/** Pgpool-II's real-number weights -> pgmux's whole numbers, keeping the ratios. */
function wholeWeights(weights: number[]): { weights: number[]; scaled: boolean } {
  if (weights.every((w) => Number.isInteger(w))) return { weights, scaled: false };
  const decimals = Math.min(3, Math.max(...weights.map((w) => (String(w).split('.')[1] ?? '').length)));
  const f = 10 ** decimals;
  const ints = weights.map((w) => Math.round(w * f));
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  const g = ints.reduce((a, b) => gcd(a, b), 0) || 1;
  return { weights: ints.map((w) => w / g), scaled: true };
}

const PGPOOL_HINTS: Record<string, string> = {
  child_life_time: 'pgmux has no child processes',
  child_max_connections: 'pgmux has no child processes',
  listen_backlog_multiplier: 'pgmux has no child processes',
  serialize_accept: 'pgmux has no child processes',
  reserved_connections: 'clients over max_client_conn are refused with SQLSTATE 53300',
  pcp_listen_addresses: 'pgmux has no PCP; use the admin console (database "pgmux") and the HTTP endpoints',
  pcp_port: 'pgmux has no PCP; use the admin console (database "pgmux") and the HTTP endpoints',
  pcp_socket_dir: 'pgmux has no PCP',
  reset_query_list: 'in session mode pgmux runs server_reset_query (default DISCARD ALL)',
  statement_level_load_balance: 'pgmux balances every read transaction (transaction mode) independently',
  disable_load_balance_on_write: 'pgmux routes per transaction; for reads after a client\'s own writes see read_your_writes',
  primary_routing_query_pattern_list: 'use a /* pgmux:primary */ hint instead',
  database_redirect_preference_list: 'no per-database routing',
  app_name_redirect_preference_list: 'no per-application routing',
  use_watchdog: 'run several pgmux replicas behind a load balancer or Kubernetes Service instead',
  failover_on_backend_error: 'pgmux marks a node down after health_check_max_retries failed checks',
  search_primary_node_timeout: 'pgmux waits for a new primary up to failover_timeout',
  connection_cache: 'pgmux always pools',
  log_destination: 'pgmux logs JSON lines to standard output',
  logging_collector: 'pgmux logs JSON lines to standard output',
  log_statement: 'not supported',
  log_per_node_statement: 'not supported',
  pid_file_name: 'run pgmux under a supervisor (systemd, Kubernetes) instead',
  logdir: 'pgmux keeps no status file',
  health_check_retry_delay: 'a failed check is retried on the next health_check_period',
  auto_failback: 'pgmux uses a node as soon as its checks pass again',
  detach_false_primary: 'pgmux never routes to a second primary it cannot confirm (it is fenced)',
  recovery_user: 'pgmux does no online recovery',
  recovery_password: 'pgmux does no online recovery',
  recovery_1st_stage_command: 'pgmux does no online recovery',
  recovery_2nd_stage_command: 'pgmux does no online recovery',
  failback_command: 'pgmux reports role changes through on_role_change and never runs recovery actions',
  prefer_lower_delay_standby: 'a replica over the lag limit simply gets no reads',
  log_standby_delay: 'replica lag is on /metrics and SHOW NODES',
  allow_clear_text_frontend_auth: 'pgmux does not relay a client\'s password to the nodes: users missing from pool_passwd cannot log in',
  ssl_prefer_server_ciphers: 'Node prefers the server\'s cipher order',
  ssl_ecdh_curve: 'Node picks the ECDH curves',
  ssl_dh_params_file: 'Node picks the DH parameters',
  ssl_passphrase_command: 'pgmux needs an unencrypted client_tls_key_file',
  ssl_crl_file: 'certificate revocation lists are not supported',
};

export function importPgpool(text: string, out: Output, opts: Required<ImportOptions>): void {
  const entries = parseConf(text, out);
  const conf = new Map<string, ConfEntry>();
  for (const e of entries) conf.set(e.key, e); // a later line wins, as in Pgpool-II
  const get = (k: string): string | undefined => conf.get(k)?.value;
  const done = new Set<string>();
  const show = (k: string) => `${k} = ${get(k) ?? ''}`;

  // Clustering mode: pgmux is for streaming replication only.
  for (const k of ['backend_clustering_mode', 'master_slave_mode', 'master_slave_sub_mode', 'replication_mode']) {
    if (get(k) !== undefined) done.add(k);
  }
  const mode = get('backend_clustering_mode')?.trim().toLowerCase().replace(/-/g, '_');
  if (mode !== undefined && mode !== 'streaming_replication') {
    out.warn(`backend_clustering_mode = ${get('backend_clustering_mode')}: pgmux only fronts a streaming-replication cluster (one primary, hot-standby replicas)`);
  }
  if (get('replication_mode') !== undefined && isOn(get('replication_mode')!)) {
    out.warn('replication_mode = on: pgmux does not replicate writes itself; it needs PostgreSQL streaming replication');
  }
  const sub = get('master_slave_sub_mode');
  if (get('master_slave_mode') !== undefined && isOn(get('master_slave_mode')!) && sub !== undefined && sub.trim().toLowerCase() !== 'stream') {
    out.warn(`master_slave_sub_mode = ${sub}: pgmux only fronts a streaming-replication cluster`);
  }

  // Backends.
  const ids = [...conf.keys()]
    .map((k) => /^backend_hostname(\d+)$/.exec(k))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const backends: Array<{ id: number; host: string; port: number; weight: number }> = [];
  for (const id of ids) {
    const host = get(`backend_hostname${id}`)!.trim();
    const portRaw = get(`backend_port${id}`) ?? '5432';
    const weightRaw = get(`backend_weight${id}`) ?? '1';
    done.add(`backend_hostname${id}`).add(`backend_port${id}`).add(`backend_weight${id}`);
    if (host === '' || host.startsWith('/')) {
      out.warn(`backend_hostname${id} = ${host}: ${host === '' ? 'empty' : 'a Unix socket directory'}; pgmux connects over TCP only: add this server to nodes yourself`);
      continue;
    }
    const weight = Number(weightRaw);
    if (!isInteger(portRaw) || !Number.isFinite(weight) || weight < 0) {
      out.warn(`backend ${id} (${host}, port ${portRaw}, weight ${weightRaw}): not a valid port/weight; left out`);
      continue;
    }
    backends.push({ id, host, port: Number(portRaw), weight });
  }
  for (const [key, e] of conf) {
    const m = /^backend_(flag|data_directory|application_name)(\d+)$/.exec(key);
    if (!m) continue;
    done.add(key);
    if (m[1] === 'flag' && /DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY|ALWAYS_MASTER/i.test(e.value)) {
      out.warn(`${key} = ${e.value}: pgmux has no per-node failover flags; it follows whatever node PostgreSQL promotes`);
    } else if (m[1] === 'flag') {
      // ALLOW_TO_FAILOVER is the default and what pgmux does.
    } else {
      out.warn(`${key} = ${e.value}: not needed by pgmux (no online recovery); not carried over`);
    }
  }
  for (const key of conf.keys()) {
    if (/^backend_(port|weight)\d+$/.test(key) && !done.has(key)) {
      done.add(key);
      out.warn(`${show(key)}: there is no backend_hostname with the same number; ignored`);
    }
  }

  const lb = get('load_balance_mode');
  if (lb !== undefined) done.add('load_balance_mode');
  const lbOff = lb !== undefined && isOff(lb);
  if (backends.length > 0) {
    const { weights, scaled } = wholeWeights(backends.map((b) => b.weight));
    if (scaled) {
      out.warn(
        `backend_weight: pgmux weights are whole numbers; ${backends.map((b) => b.weight).join(':')} became ${weights.join(':')} (same ratios)`,
      );
    }
    const nodes = backends.map((b, i) => `${hostPort(b.host, b.port)}@${lbOff ? 0 : weights[i]}`);
    out.set('nodes', nodes, 'backend_hostnameN');
    if (lbOff) {
      out.set('fallback_to_primary', true, show('load_balance_mode'));
      out.warn(
        'load_balance_mode = off: every node got weight 0 and fallback_to_primary is on, so all reads go to the current primary ' +
          '(pgmux discovers the primary, so there is no per-role weight); give the replicas a weight to spread reads',
      );
    } else if (backends.some((b) => b.weight > 0)) {
      const primaryWeighted = backends.filter((b) => b.weight > 0).length === backends.length;
      if (primaryWeighted) {
        out.warn(
          'backend_weight: as in Pgpool-II, the primary takes reads too while its weight is above 0; ' +
            'set the primary\'s weight to 0 (host:port@0) to keep reads on the replicas',
        );
      }
    }
  }

  // Listening. Pgpool-II's defaults (localhost:9999) are written out: pgmux's own default
  // (every address) would open it to the network.
  const la = get('listen_addresses');
  const lp = get('port');
  done.add('listen_addresses').add('port');
  const noTcp = la !== undefined && la.trim() === '';
  const host = la === undefined ? 'localhost' : noTcp ? '127.0.0.1' : listenHost(la);
  if (noTcp) out.warn("listen_addresses = '': Pgpool-II accepted Unix-socket clients only; pgmux listens on the socket and on TCP 127.0.0.1 (loopback only)");
  const p = lp ?? '9999';
  if (isInteger(p)) out.set('listen', hostPort(host, Number(p)), `listen_addresses/port = ${la ?? '(default localhost)'}:${p}`);
  else out.warn(`port = ${p}: not a port; listen left at pgmux's default`);

  // Clients and pools.
  const children = get('num_init_children');
  if (children !== undefined) {
    done.add('num_init_children');
    if (out.set('max_client_conn', intOrString(children), show('num_init_children'))) {
      out.warn(
        `num_init_children = ${children} -> max_client_conn: Pgpool-II serves one client per child process; pgmux is not process-per-client ` +
          'and multiplexes many clients over pool_size backends, so max_client_conn can usually be much higher',
      );
    }
  }
  const maxPool = get('max_pool');
  if (maxPool !== undefined) {
    done.add('max_pool');
    const total = children !== undefined && isInteger(children) && isInteger(maxPool) ? Number(children) * Number(maxPool) : null;
    out.warn(
      `max_pool = ${maxPool}: not carried over: Pgpool-II caches up to max_pool connections per child${total !== null ? ` (up to ${total} per node)` : ''}; ` +
        'pgmux shares pool_size backends per (node, database, user) between all clients; size pool_size from your concurrency (default 20)',
    );
  }
  out.warn(
    'Pgpool-II keeps one backend per client session; pgmux defaults to pool_mode transaction (SET, temporary tables, advisory locks ' +
      'and LISTEN do not outlive a transaction); set pool_mode: session if your applications rely on session state',
  );

  // Timeouts with a pgmux counterpart.
  for (const [from, to, unit] of [
    ['client_idle_limit', 'client_idle_timeout', 's'],
    ['authentication_timeout', 'client_login_timeout', 's'],
    ['connect_timeout', 'server_connect_timeout', 'ms'],
    ['connection_life_time', 'server_idle_timeout', 's'],
  ] as const) {
    const v = get(from);
    if (v === undefined) continue;
    done.add(from);
    const d = pgTime(v, unit);
    if (d === null) {
      out.warn(`${from} = ${v}: not a time; not carried over`);
      continue;
    }
    const value = unit === 's' && /^\d+$/.test(v.trim()) ? Number(v.trim()) : d;
    if (out.set(to, value, show(from)) && from === 'connection_life_time') {
      out.warn(`connection_life_time = ${v} -> server_idle_timeout: both close a backend idle this long (roughly; Pgpool-II counts from the end of the client session)`);
    }
  }

  // Lag limits.
  const dt = get('delay_threshold');
  if (dt !== undefined) {
    done.add('delay_threshold');
    if (isInteger(dt) && Number(dt) === 0) out.set('max_lag_bytes', 'off', show('delay_threshold'));
    else out.set('max_lag_bytes', intOrString(dt), show('delay_threshold'));
  }
  const dtt = get('delay_threshold_by_time');
  if (dtt !== undefined) {
    done.add('delay_threshold_by_time');
    const d = pgTime(dtt, 'ms');
    if (d === null) {
      out.warn(`delay_threshold_by_time = ${dtt}: not a time; not carried over`);
    } else if (d === '0') {
      out.warn('delay_threshold_by_time = 0 (off in Pgpool-II): pgmux\'s default max_lag_ms (10s) applies; set max_lag_ms: off to switch the time limit off');
    } else if (out.set('max_lag_ms', d, show('delay_threshold_by_time')) && /^\s*\d+(\.\d+)?\s*$/.test(dtt)) {
      out.warn(`delay_threshold_by_time = ${dtt}: read as milliseconds (Pgpool-II 4.5 and later; 4.4 read it as seconds: then write ${dtt}s)`);
    }
  }
  const sr = ['sr_check_period', 'sr_check_user', 'sr_check_password', 'sr_check_database'].filter((k) => get(k) !== undefined);
  for (const k of sr) done.add(k);
  if (get('health_check_user') === undefined && get('sr_check_user')?.trim()) {
    // Pgpool-II finds the primary with the sr_check login: that is what pgmux's health check does.
    for (const k of ['user', 'password', 'database']) {
      const v = get(`sr_check_${k}`);
      if (v !== undefined && get(`health_check_${k}`) === undefined) conf.set(`health_check_${k}`, { key: `health_check_${k}`, value: v, line: 0 });
    }
    out.warn('sr_check_user/password/database -> health_check_*: pgmux finds the primary and measures lag with its health check login (there is no health_check_user here)');
  }
  if (sr.length > 0) {
    out.warn(
      `${sr.join(', ')}: note: pgmux has no separate streaming-replication check; its health checks ` +
        '(health_check_period, health_check_user/password/database) find the primary and measure replica lag',
    );
  }

  // Health checks.
  const hcp = get('health_check_period');
  if (hcp !== undefined) {
    done.add('health_check_period');
    if (/^\s*0+\s*$/.test(hcp)) {
      out.warn('health_check_period = 0 (off in Pgpool-II): pgmux always health-checks its nodes; its default (1s) applies');
    } else {
      const d = pgTime(hcp, 's');
      out.set('health_check_period', /^\s*\d+\s*$/.test(hcp) ? Number(hcp) : d ?? hcp, show('health_check_period'));
    }
  }
  const hct = get('health_check_timeout');
  if (hct !== undefined) {
    done.add('health_check_timeout');
    if (/^\s*0+\s*$/.test(hct)) out.warn('health_check_timeout = 0 (no timeout in Pgpool-II): pgmux always times a check out; its default (5s) applies');
    else out.set('health_check_timeout', /^\s*\d+\s*$/.test(hct) ? Number(hct) : pgTime(hct, 's') ?? hct, show('health_check_timeout'));
  }
  const hcr = get('health_check_max_retries');
  if (hcr !== undefined) {
    done.add('health_check_max_retries');
    if (isInteger(hcr) && Number(hcr) >= 0) {
      const n = Number(hcr) + 1;
      if (out.set('health_check_max_retries', n, show('health_check_max_retries'))) {
        out.warn(
          `health_check_max_retries = ${hcr} -> ${n}: Pgpool-II retries a failed check that many times before failing the node over; ` +
            'pgmux counts every failed check, so the same tolerance is one more',
        );
      }
    } else {
      out.set('health_check_max_retries', hcr, show('health_check_max_retries'));
    }
  }
  for (const k of ['health_check_user', 'health_check_database']) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    if (v.trim() !== '') out.set(k, v, show(k));
  }
  const hpw = get('health_check_password');
  if (hpw !== undefined) {
    done.add('health_check_password');
    if (hpw !== '') {
      const d = decodePoolSecret(hpw, opts.pgpoolKey, opts.pgpoolKeyFrom);
      if (typeof d === 'string') out.warn(`health_check_password: ${d}; set health_check_password yourself`);
      else if (d.kind !== 'plain') out.warn('health_check_password: an md5 hash; pgmux needs the plain password: set health_check_password yourself');
      else out.set('health_check_password', d.secret, 'health_check_password');
    } else {
      // Pgpool-II then looks in pool_passwd: pgmux finds a plain entry there through auth_file.
      out.warn('health_check_password = \'\': as in Pgpool-II, the password comes from the auth file (pool_passwd) when it holds a plain one for that user');
    }
  }
  for (const key of conf.keys()) {
    if (/^health_check_\w+\d+$/.test(key)) {
      done.add(key);
      out.warn(`${show(key)}: per-node health check settings are not supported; pgmux uses the global ones for every node`);
    }
  }

  // Failover.
  for (const k of ['failover_command', 'follow_primary_command', 'follow_master_command']) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    if (v.trim() === '') continue;
    out.warn(
      `${k} = ${v}: not carried over: pgmux never promotes or re-points nodes itself; it follows whatever promotion your ` +
        'HA tool (Patroni, repmgr, pg_auto_failover) does; to be told about role changes, use the on_role_change hook ' +
        '(env PGMUX_EVENT, PGMUX_NODE, PGMUX_OLD_ROLE, PGMUX_NEW_ROLE)',
    );
  }

  // Functions that write, and functions that stay reads though VOLATILE in the catalog
  // (functions neither lists names are judged by their volatility, as Pgpool-II does when
  // both lists are empty).
  for (const [k, key] of [
    ['write_function_list', 'write_functions'],
    ['black_function_list', 'write_functions'],
    ['read_only_function_list', 'read_only_functions'],
    ['white_function_list', 'read_only_functions'],
  ] as const) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    const names = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
    const ok = names.filter((s) => /^[A-Za-z_][A-Za-z0-9_$.]*$/.test(s));
    const bad = names.filter((s) => !ok.includes(s));
    if (bad.length > 0) out.warn(`${k}: ${bad.join(', ')}: regular expressions are not supported; only plain function names are carried over`);
    if (ok.length > 0) {
      const prev = (out.values.get(key) as string[] | undefined) ?? [];
      out.set(key, [...new Set([...prev, ...ok])], show(k));
    }
  }

  const lmm = get('log_min_messages');
  if (lmm !== undefined) {
    done.add('log_min_messages');
    const t = lmm.trim().toLowerCase();
    const level = /^debug\d?$/.test(t) ? 'debug' : t === 'warning' ? 'warn' : ['info', 'notice', 'log'].includes(t) ? 'info' : t === 'error' ? 'error' : ['fatal', 'panic'].includes(t) ? 'fatal' : null;
    if (level !== null) out.set('log_level', level, show('log_min_messages'));
    else out.warn(`log_min_messages = ${lmm}: unknown level; not carried over`);
  }

  importPgpoolAuth(get, done, out, opts);
  importPgpoolTls(get, done, out, opts);
  importPgpoolCache(get, done, out);

  for (const [key, e] of conf) {
    if (done.has(key)) continue;
    const why = PGPOOL_HINTS[key] ?? (/^(wd_|heartbeat_|delegate_|other_pgpool|pgpool_port|trusted_servers|if_)/.test(key)
      ? 'watchdog: run several pgmux replicas behind a load balancer or Kubernetes Service instead'
      : /^memqcache_/.test(key) ? 'pgmux sizes its query cache in bytes alone (query_cache_size, query_cache_max_entry)'
      : /^(ssl|log_|syslog_)/.test(key) ? 'not supported' : undefined);
    const value = /password/.test(key) && e.value !== '' ? '***' : e.value;
    out.warn(`${e.key} = ${value}: no pgmux equivalent${why !== undefined ? ` (${why})` : ''}; not carried over`);
  }
}

/**
 * memory_cache_enabled + memqcache_* -> query_cache*. The settings are carried over only when
 * the cache is on: with it off they configured nothing. Where Pgpool-II's cache could go stale
 * (no expiry, no invalidation) pgmux keeps its own bound: a result is never older than
 * query_cache_ttl, and a write through pgmux always invalidates what it touches.
 */
const PLAIN_TABLE = /^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$/;

function importPgpoolCache(get: (k: string) => string | undefined, done: Set<string>, out: Output): void {
  const enabled = get('memory_cache_enabled');
  if (enabled === undefined) return;
  done.add('memory_cache_enabled');
  // Pgpool-II's "safe" list (views, unlogged tables it would not cache) keeps its sense: pgmux
  // caches views and tables anyway, and a listed relation is cached even where pgmux cannot see
  // what it depends on (a view calling functions, a foreign table), as the user vouched for it.
  const lists = [
    ['cache_safe_memqcache_table_list', 'query_cache_tables'],
    ['white_memqcache_table_list', 'query_cache_tables'],
    ['cache_unsafe_memqcache_table_list', 'query_cache_exclude_tables'],
    ['black_memqcache_table_list', 'query_cache_exclude_tables'],
  ] as const;
  const keys = ['memqcache_method', 'memqcache_total_size', 'memqcache_maxcache', 'memqcache_expire', 'memqcache_auto_cache_invalidation', ...lists.map(([k]) => k)];
  if (!isOn(enabled)) {
    // Off is pgmux's default too; the cache settings under it configured nothing.
    const set = keys.filter((k) => get(k) !== undefined && get(k)!.trim() !== '');
    for (const k of set) done.add(k);
    if (set.length > 0) out.warn(`memory_cache_enabled = ${enabled}: ${set.join(', ')} not carried over (the cache is off, as in pgmux by default)`);
    return;
  }
  for (const k of keys) if (get(k) !== undefined) done.add(k);
  const show = (k: string) => `${k} = ${get(k)}`;
  out.setAhead('query_cache', 'on', `memory_cache_enabled = ${enabled}`);

  const method = get('memqcache_method')?.trim().toLowerCase();
  if (method === 'memcached') {
    out.warn(
      'memqcache_method = memcached: pgmux has no memcached; each instance keeps its cache in its own memory (query_cache_size each), ' +
        'and instances invalidate each other with NOTIFY on the primary (query_cache_mode: notify)',
    );
    for (const k of ['memqcache_memcached_host', 'memqcache_memcached_port']) done.add(k);
  } else if (method !== undefined && method !== 'shmem') {
    out.warn(`memqcache_method = ${get('memqcache_method')}: unknown method; pgmux keeps its cache in memory`);
  }
  // shmem (Pgpool-II's default) is what pgmux does: memory shared by one instance's sessions.

  for (const [from, to] of [['memqcache_total_size', 'query_cache_size'], ['memqcache_maxcache', 'query_cache_max_entry']] as const) {
    const v = get(from);
    if (v !== undefined && v.trim() !== '') out.setAhead(to, intOrString(v), show(from));
  }

  const expire = get('memqcache_expire');
  if (expire !== undefined) {
    const ttl = pgTime(expire, 's');
    if (ttl === null) out.warn(`${show('memqcache_expire')}: not a time; not carried over`);
    else if (ttl === '0') {
      out.warn(
        'memqcache_expire = 0 (no expiry in Pgpool-II): pgmux always expires entries, so writes it does not see ' +
          'cannot keep a result stale for ever; its default query_cache_ttl (60s) applies; set a longer one if you want',
      );
    } else out.setAhead('query_cache_ttl', ttl, show('memqcache_expire'));
  }

  const auto = get('memqcache_auto_cache_invalidation');
  if (auto !== undefined) {
    if (isOff(auto)) {
      out.setAhead('query_cache_mode', 'local', show('memqcache_auto_cache_invalidation'));
      out.warn(
        'memqcache_auto_cache_invalidation = off -> query_cache_mode: local: pgmux always invalidates the tables a write through it touches ' +
          '(there is no TTL-only mode); writes through other pgmux instances are seen after query_cache_ttl',
      );
    } else {
      // Pgpool-II invalidated on writes through itself; notify also covers the other pgmux instances.
      out.setAhead('query_cache_mode', 'notify', show('memqcache_auto_cache_invalidation'));
    }
  }

  for (const [from, to] of lists) {
    const v = get(from);
    if (v === undefined) continue;
    const names = v.split(',').map((x) => x.trim()).filter((x) => x !== '');
    const ok = names.filter((x) => PLAIN_TABLE.test(x)).map((x) => x.toLowerCase());
    const bad = names.filter((x) => !PLAIN_TABLE.test(x));
    if (bad.length > 0) out.warn(`${from}: ${bad.join(', ')}: regular expressions and quoted names are not supported; only plain table names are carried over`);
    if (ok.length > 0) {
      const prev = (out.values.get(to) as string[] | undefined) ?? [];
      out.set(to, [...new Set([...prev, ...ok])], show(from));
    }
  }
}

/** Pgpool-II resolves its relative file names against pgpool.conf's directory. */
function confPath(p: string, opts: Required<ImportOptions>): string {
  return sourcePath(p, opts.sourceDir);
}

/** pool_passwd -> auth_file (written by the CLI), enable_pool_hba + pool_hba.conf -> hba_file. */
function importPgpoolAuth(get: (k: string) => string | undefined, done: Set<string>, out: Output, opts: Required<ImportOptions>): void {
  done.add('pool_passwd').add('enable_pool_hba');
  const hbaOn = get('enable_pool_hba') !== undefined && isOn(get('enable_pool_hba')!);
  const pp = get('pool_passwd') ?? 'pool_passwd';
  let entries: PoolPasswdEntry[] = [];
  if (pp.trim() === '') {
    out.warn("pool_passwd = '': no password file; pgmux cannot relay passwords to the nodes, so it checks none itself (auth trust) and logs in to the nodes with no password");
  } else {
    const path = confPath(pp.trim(), opts);
    const text = opts.readFile(path);
    if (text === null) {
      out.warn(`pool_passwd = ${pp}: ${path} could not be read; no auth_file written (users can only log in where the nodes trust pgmux)`);
    } else {
      const r = parsePoolPasswd(text, opts.pgpoolKey, opts.pgpoolKeyFrom);
      for (const p of r.problems) out.warn(`pool_passwd ${path}: ${p}`);
      entries = r.entries;
      if (entries.length === 0) {
        out.warn(`pool_passwd = ${pp}: ${path} has no usable entries; no auth_file written (pgmux checks no passwords itself and logs in to the nodes without one)`);
      }
    }
  }
  if (entries.length > 0) {
    out.files.push({ path: opts.authFilePath, content: toUserlist(entries), what: `auth_file (from pool_passwd: ${entries.length} users)` });
    out.set('auth_file', opts.authFilePath, 'pool_passwd');
    const counts = (k: PoolPasswdEntry['kind']) => entries.filter((e) => e.kind === k).length;
    out.warn(
      `pool_passwd -> auth_file ${opts.authFilePath} (PgBouncer userlist format, written next to the YAML): ${counts('md5')} md5, ` +
        `${counts('scram')} SCRAM verifiers kept as they are, ${counts('plain')} plain passwords (TEXT/AES decrypted); keep it private (mode 0600)`,
    );
  }
  if (hbaOn) {
    const hbaPath = confPath('pool_hba.conf', opts);
    out.source.authFrom = `enable_pool_hba = on (${hbaPath})`;
    out.source.hbaFile = hbaPath;
    const carried = carryHba({ from: `enable_pool_hba = on (${hbaPath})`, path: hbaPath, sourceDir: opts.sourceDir, readFile: opts.readFile }, out);
    if (!carried && entries.length > 0) {
      // Still a weakening (reject lines and address limits are gone), but passwords stay checked.
      out.set('auth', entries.every((e) => e.kind === 'md5') ? 'md5' : 'scram-sha-256', 'pool_passwd');
      out.warn(`enable_pool_hba = on: without pool_hba.conf every login uses auth: ${String(out.values.get('auth'))} against pool_passwd`);
    }
  } else {
    // Without pool_hba, Pgpool-II checks passwords with the nodes' own method (pool_passwd or relayed).
    out.source.authFrom = 'enable_pool_hba = off (passwords checked as the nodes ask)';
    out.source.auth = 'relay';
    if (entries.length > 0) out.set('auth', entries.every((e) => e.kind === 'md5') ? 'md5' : 'scram-sha-256', 'pool_passwd');
  }
}

/** ssl* -> client_tls* (Pgpool-II's ssl = on accepts TLS and uses it towards the nodes when they offer it). */
function importPgpoolTls(get: (k: string) => string | undefined, done: Set<string>, out: Output, opts: Required<ImportOptions>): void {
  const ssl = get('ssl');
  for (const k of ['ssl', 'ssl_cert', 'ssl_key', 'ssl_ca_cert', 'ssl_ca_cert_dir', 'ssl_ciphers', 'socket_dir', 'unix_socket_directories', 'unix_socket_permissions', 'unix_socket_group']) {
    if (get(k) !== undefined) done.add(k);
  }
  if (ssl !== undefined && isOn(ssl)) {
    out.source.clientTls = 'allow';
    out.set('client_tls', 'allow', `ssl = ${ssl}`);
    out.set('server_tls', 'prefer', `ssl = ${ssl}`);
    for (const [from, to] of [['ssl_cert', 'client_tls_cert_file'], ['ssl_key', 'client_tls_key_file'], ['ssl_ca_cert', 'client_tls_ca_file']] as const) {
      const v = get(from);
      if (v !== undefined && v.trim() !== '') out.set(to, confPath(v.trim(), opts), `${from} = ${v}`);
    }
    const ciphers = get('ssl_ciphers');
    if (ciphers !== undefined && ciphers.trim() !== '') out.set('client_tls_ciphers', ciphers.trim(), `ssl_ciphers = ${ciphers}`);
    if (get('ssl_ca_cert_dir') !== undefined) out.warn(`ssl_ca_cert_dir = ${get('ssl_ca_cert_dir')}: pgmux reads one CA file (client_tls_ca_file); not carried over`);
    out.warn(`ssl = ${ssl} -> client_tls: allow (TLS when a client asks; hostssl lines of pool_hba.conf require it) and server_tls: prefer`);
  } else {
    const extra = ['ssl_cert', 'ssl_key', 'ssl_ca_cert', 'ssl_ciphers'].filter((k) => get(k) !== undefined);
    if (extra.length > 0) out.warn(`${extra.join(', ')}: ssl is off, so these were unused; not carried over`);
  }
  // Unix socket: Pgpool-II's socket_dir (4.3), unix_socket_directories (4.4 and later).
  const dirs = get('unix_socket_directories') ?? get('socket_dir');
  if (dirs !== undefined) {
    const list = dirs.split(',').map((d) => d.trim()).filter((d) => d !== '');
    out.set('unix_socket_dir', list[0] ?? 'off', get('unix_socket_directories') !== undefined ? `unix_socket_directories = ${dirs}` : `socket_dir = ${dirs}`);
    if (list.length > 1) out.warn(`unix_socket_directories = ${dirs}: pgmux listens in one directory; using ${list[0]}`);
  }
  const perm = get('unix_socket_permissions');
  if (perm !== undefined) out.set('unix_socket_mode', perm.trim(), `unix_socket_permissions = ${perm}`);
  const group = get('unix_socket_group');
  if (group !== undefined && group.trim() !== '') out.set('unix_socket_group', group.trim(), `unix_socket_group = ${group}`);
}
