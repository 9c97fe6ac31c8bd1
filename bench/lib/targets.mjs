// The four things the benchmark measures: PostgreSQL directly, PgBouncer, Pgpool-II and
// pgmux. Each proxy gets its own generated config in a temp dir owned by `postgres` and is
// started by PID (see procs.mjs).

import { spawnSync } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, writeFileSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { IS_ROOT, alive, shAs, shq, sleep, startProcess, stopTree, withUlimit } from './procs.mjs';

// Targets are data: a kind (how it is started) plus, for pgmux, extra config lines and the
// Node binary that runs it. pgmux runs twice by default: `pgmux` in front of the primary
// alone, the topology PgBouncer gets (pooling compared like for like), and `pgmux-routed` in
// front of the primary and both replicas with reads spread over all three, the topology
// Pgpool-II gets. The variants are pgmux in front of the primary alone with one setting
// changed; they run only when named with --only (their settings may not exist in every
// build: a config pgmux refuses makes the target fail to start, with pgmux's own message).
export const TARGET_DEFS = {
  direct: { label: 'direct', kind: 'direct' },
  pgbouncer: { label: 'PgBouncer', kind: 'pgbouncer' },
  pgpool: { label: 'Pgpool-II', kind: 'pgpool' },
  pgmux: { label: 'pgmux', kind: 'pgmux' },
  'pgmux-routed': { label: 'pgmux routed', kind: 'pgmux', routed: true },
  'pgmux-std-io': { label: 'pgmux lean_io off', kind: 'pgmux', config: ['lean_io: off'], variant: true },
  'pgmux-pipe2': { label: 'pgmux pipeline 2', kind: 'pgmux', config: ['pipeline_depth: 2'], variant: true },
  'pgmux-pipe4': { label: 'pgmux pipeline 4', kind: 'pgmux', config: ['pipeline_depth: 4'], variant: true },
  'pgmux-pipe8': { label: 'pgmux pipeline 8', kind: 'pgmux', config: ['pipeline_depth: 8'], variant: true },
  'pgmux-node24': { label: 'pgmux on Node 24', kind: 'pgmux', node: 'node24', variant: true },
  // The query cache (issue #17), cache off vs on: these two run only the workloads named in
  // `workloads` (and start only when one of them is chosen). `cache` says where the hit ratio
  // is read (lib/cache.mjs). A build without the cache refuses query_cache: the target is
  // then reported as "query_cache unknown".
  'pgpool-cache': { label: 'Pgpool-II cache', kind: 'pgpool', cache: 'pgpool', workloads: ['read-hot', 'read-hot-lookup'] },
  'pgmux-cache': { label: 'pgmux cache', kind: 'pgmux', config: ['query_cache: on'], cache: 'pgmux', workloads: ['read-hot', 'read-hot-lookup'] },
};
/** Every target --only accepts, in the order they run. */
export const ALL_TARGETS = Object.keys(TARGET_DEFS);
/** The targets of a run without --only. */
export const TARGETS = ALL_TARGETS.filter((t) => !TARGET_DEFS[t].variant);
export const TARGET_LABEL = Object.fromEntries(ALL_TARGETS.map((t) => [t, TARGET_DEFS[t].label]));

const HOST = '127.0.0.1';

/** Full path of an executable on PATH (plus the sbin dirs, where Debian puts both proxies), or null. */
export function which(bin) {
  const r = spawnSync('sh', ['-c', `PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v ${bin}`], { encoding: 'utf8' });
  const p = r.stdout?.trim();
  return r.status === 0 && p ? p : null;
}

export function versionOf(argv) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  return ((r.stdout ?? '') + (r.stderr ?? '')).split('\n')[0].trim() || 'unknown';
}

function chownPostgres(dir) {
  if (!IS_ROOT) return;
  const r = spawnSync('chown', ['-R', 'postgres:postgres', dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`chown -R postgres ${dir}: ${r.stderr.trim()}`);
}

function tail(file, lines = 15) {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Connect to `database` (as postgres with no password, or as `login` = { user, password })
 * and run SELECT 1; resolves true/false (never throws).
 */
export async function canQuery(port, database, timeoutMs = 3000, login = null) {
  const user = login?.user ?? 'postgres';
  const client = new pg.Client({ host: HOST, port, user, password: login?.password, database, connectionTimeoutMillis: timeoutMs, query_timeout: timeoutMs });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch (e) {
    canQuery.lastError = e.message;
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}
canQuery.lastError = '';

async function waitReady(name, proc, port, database, logFile, timeoutMs = 30_000, login = null) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(proc.pid)) throw new Error(`${name} exited at start; last log lines:\n${tail(logFile)}`);
    if (await canQuery(port, database, 2000, login)) return;
    await sleep(200);
  }
  throw new Error(`${name} did not answer SELECT 1 on ${HOST}:${port}/${database} within ${timeoutMs / 1000} s (${canQuery.lastError}); last log lines:\n${tail(logFile)}`);
}

/**
 * A just-started proxy `t` once it answers SELECT 1; if it does not, it is stopped and the
 * error passed on (with `moreOnError()` appended when given).
 */
async function readyOrStopped(t, label, proc, database, timeoutMs, moreOnError, login = null) {
  try {
    await waitReady(label, proc, t.port, database, t.logFile, timeoutMs, login);
  } catch (e) {
    await t.stop();
    throw moreOnError ? new Error(e.message + '\n' + moreOnError()) : e;
  }
  return t;
}

/**
 * A running proxy: { name, port, pid (root of its process tree), logFile, command, config,
 * version, stop() }. `pid` is what CPU and RSS are read from (the whole tree under it).
 *
 * `scram` (churn-scram): { user, password, verifier } of a role PostgreSQL stores as SCRAM.
 * Each proxy then makes clients log in with SCRAM-SHA-256, holding what it can hold:
 * PgBouncer and pgmux the verifier PostgreSQL stores (and log in to PostgreSQL with the keys
 * the client proved, SCRAM pass-through), Pgpool-II the plain password (it has no
 * pass-through; 4.3 reads `TEXT`-prefixed plain passwords from pool_passwd).
 */

// ---- PgBouncer ---------------------------------------------------------------------

export async function startPgBouncer({ dir, port, primary, database, poolSize, maxClientConn, nofile, scram = null }) {
  const bin = which('pgbouncer');
  if (!bin) return { missing: 'pgbouncer not found (apt-get install pgbouncer); skipping PgBouncer' };
  mkdirSync(dir, { recursive: true });
  const ini = join(dir, 'pgbouncer.ini');
  const userlist = join(dir, 'userlist.txt');
  const logFile = join(dir, 'pgbouncer.log');
  // auth_type trust still needs the user name in auth_file.
  writeFileSync(userlist, scram ? `"${scram.user}" "${scram.verifier}"\n` : '"postgres" ""\n');
  const config = `;; generated by bench/run.mjs
[databases]
${database} = host=${primary.host} port=${primary.port} dbname=${database}

[pgbouncer]
listen_addr = ${HOST}
listen_port = ${port}
unix_socket_dir =
auth_type = ${scram ? 'scram-sha-256' : 'trust'}
auth_file = ${userlist}
pool_mode = transaction
default_pool_size = ${poolSize}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = ${maxClientConn}
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = ${logFile}
pidfile = ${join(dir, 'pgbouncer.pid')}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
`;
  writeFileSync(ini, config);
  chownPostgres(dir);
  const argv = shAs(withUlimit([bin, ini], nofile), true);
  const out = openSync(join(dir, 'pgbouncer.stderr'), 'a');
  const proc = startProcess('pgbouncer', argv, { stdio: ['ignore', out, out], cwd: dir });
  closeSync(out);
  const t = {
    name: 'pgbouncer',
    port,
    pid: proc.pid,
    logFile,
    command: argv.map(shq).join(' '),
    config,
    configName: scram ? 'pgbouncer.ini (SCRAM)' : 'pgbouncer.ini',
    version: versionOf([bin, '--version']),
    stop: () => stopTree(proc.pid, 'SIGTERM', 5000),
  };
  // PgBouncer says why it would not start on stderr, not in its log.
  return readyOrStopped(t, 'PgBouncer', proc, database, undefined, () => tail(join(dir, 'pgbouncer.stderr')), scram);
}

// ---- Pgpool-II ---------------------------------------------------------------------

/**
 * Pgpool-II's in-memory query cache in shared memory, sized and bounded like pgmux's defaults
 * (64 MB, 1 MB per entry, 60 s TTL) and invalidated per table on writes through it.
 */
function pgpoolCacheSettings(dir) {
  const oidDir = join(dir, 'oiddir');
  mkdirSync(oidDir, { recursive: true });
  return `memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_maxcache = 1MB
memqcache_cache_block_size = 1MB
memqcache_expire = 60
memqcache_auto_cache_invalidation = on
memqcache_oiddir = '${oidDir}'`;
}

export async function startPgpool({ dir, port, pcpPort, nodes, database, children, nofile, scram = null, cache = false }) {
  const bin = which('pgpool');
  if (!bin) return { missing: 'pgpool not found (apt-get install pgpool2); skipping Pgpool-II' };
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'pgpool.conf');
  const pcp = join(dir, 'pcp.conf');
  const hba = join(dir, 'pool_hba.conf');
  const passwd = join(dir, 'pool_passwd');
  const logFile = join(dir, 'pgpool.log');
  writeFileSync(pcp, '');
  writeFileSync(hba, `${scram ? `host all ${scram.user} 127.0.0.1/32 scram-sha-256\n` : ''}host all all 127.0.0.1/32 trust\nlocal all all trust\n`);
  // An empty *setting* warns every client; an empty file does not.
  writeFileSync(passwd, scram ? `${scram.user}:TEXT${scram.password}\n` : '');
  const backends = nodes
    .map(
      (n, i) => `backend_hostname${i} = '${n.host}'
backend_port${i} = ${n.port}
backend_weight${i} = 1
backend_flag${i} = 'DISALLOW_TO_FAILOVER'
backend_application_name${i} = '${n.name}'`,
    )
    .join('\n');
  const config = `# generated by bench/run.mjs (Pgpool-II 4.3 syntax)
backend_clustering_mode = 'streaming_replication'
listen_addresses = '${HOST}'
port = ${port}
unix_socket_directories = '${dir}'
pcp_listen_addresses = ''
pcp_port = ${pcpPort}
pcp_socket_dir = '${dir}'
${backends}
enable_pool_hba = ${scram ? 'on' : 'off'}
pool_passwd = '${passwd}'
num_init_children = ${children}
max_pool = 1
reserved_connections = 0
listen_backlog_multiplier = 2
serialize_accept = off
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0
connection_cache = on
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 0
sr_check_user = 'postgres'
sr_check_password = ''
health_check_period = 0
failover_on_backend_error = off
use_watchdog = off
wd_ipc_socket_dir = '${dir}'
${cache ? pgpoolCacheSettings(dir) : 'memory_cache_enabled = off'}
pid_file_name = '${join(dir, 'pgpool.pid')}'
logdir = '${dir}'
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_connections = off
log_statement = off
`;
  writeFileSync(conf, config);
  chownPostgres(dir);
  const argv = shAs(withUlimit([bin, '-n', '-D', '-f', conf, '-F', pcp, '-a', hba], nofile), true);
  const out = openSync(logFile, 'a');
  const proc = startProcess('pgpool', argv, { stdio: ['ignore', out, out], cwd: dir });
  closeSync(out);
  const t = {
    name: 'pgpool',
    port,
    pid: proc.pid,
    logFile,
    command: argv.map(shq).join(' '),
    config,
    configName: scram ? 'pgpool.conf (SCRAM; pool_hba.conf: scram-sha-256 for the bench role, pool_passwd: its TEXT password)' : cache ? 'pgpool.conf (query cache on)' : 'pgpool.conf',
    version: versionOf([bin, '--version']),
    children,
    // SIGINT = fast shutdown (SIGTERM would wait for clients).
    stop: () => stopTree(proc.pid, 'SIGINT', 8000),
  };
  return readyOrStopped(t, 'Pgpool-II', proc, database, 60_000, undefined, scram);
}

// ---- pgmux -------------------------------------------------------------------------

/**
 * weights: read weight per node (--node host:port@w), default pgmux's own (1 each).
 * nodeBin: the Node binary that runs pgmux (default: the bench's own). configLines: extra
 * YAML lines (a variant's settings), written to pgmux.yaml and passed with --config; the
 * flags still set listen, nodes, pool size and log level.
 */
export async function startPgmux({ name = 'pgmux', dir, repoDir, port, inspectPort, httpPort, nodes, weights, database, poolSize, nofile, nodeBin = process.execPath, configLines = [], scram = null }) {
  mkdirSync(dir, { recursive: true });
  const cli = join(repoDir, 'dist', 'cli.js');
  // --inspect-port only names the port the inspector would use if SIGUSR1 opened it: the
  // memory test does, to force a garbage collection before reading the heap; closed again
  // before the workloads.
  const nodeFlags = inspectPort ? [`--inspect-port=${HOST}:${inspectPort}`] : [];
  const args = [nodeBin, ...nodeFlags, cli, 'start', '--listen', `${HOST}:${port}`];
  let config = null;
  if (configLines.length || scram) {
    const yaml = join(dir, 'pgmux.yaml');
    const lines = ['# generated by bench/run.mjs', ...configLines];
    if (scram) {
      writeFileSync(join(dir, 'userlist.txt'), `"${scram.user}" "${scram.verifier}"\n`, { mode: 0o600 });
      lines.push('auth: scram-sha-256', 'auth_file: userlist.txt');
    }
    config = lines.join('\n') + '\n';
    writeFileSync(yaml, config);
    args.push('--config', yaml);
  }
  nodes.forEach((n, i) => args.push('--node', `${n.host}:${n.port}${weights ? `@${weights[i]}` : ''}`));
  args.push('--pool-size', String(poolSize), '--log-level', 'warn');
  if (httpPort) args.push('--http', `${HOST}:${httpPort}`);
  const argv = ['sh', '-c', withUlimit(args, nofile)];
  const logFile = join(dir, 'pgmux.log');
  const out = openSync(logFile, 'a');
  // No PGMUX_* variables from the caller's environment: the flags are the whole config.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGMUX_')));
  const proc = startProcess('pgmux', argv, { stdio: ['ignore', out, out], cwd: repoDir, env });
  closeSync(out);
  const nodeShown = nodeBin === process.execPath ? 'node' : nodeBin;
  const pkg = JSON.parse(readFileSync(join(repoDir, 'package.json'), 'utf8'));
  const t = {
    name,
    port,
    pid: proc.pid,
    logFile,
    command: `${shq(nodeShown)} ${nodeFlags.map(shq).join(' ')}${nodeFlags.length ? ' ' : ''}dist/cli.js ${args.slice(2 + nodeFlags.length).map(shq).join(' ')}`,
    inspectPort,
    httpPort,
    config,
    configName: 'pgmux.yaml',
    version: `pgmux ${pkg.version} on Node ${versionOf([nodeBin, '--version'])}`,
    stop: () => stopTree(proc.pid, 'SIGTERM', 5000),
  };
  return readyOrStopped(t, name, proc, database, undefined, undefined, scram);
}

/** Major version of a Node binary (`v24.22.3` -> 24), or null when it does not run. */
export function nodeMajor(bin) {
  const m = /^v(\d+)\./.exec(versionOf([bin, '--version']));
  return m ? Number(m[1]) : null;
}
