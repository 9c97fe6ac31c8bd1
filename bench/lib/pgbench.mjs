// pgbench workloads and the parsing of pgbench's summary.

import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCommand, shq, withUlimit } from './procs.mjs';

/**
 * name -> { title, clients, args (beyond the common ones), ... }.
 * Common args: -n (vacuum is done on the primary directly), -j 2, -T seconds.
 * auth: 'scram' = as the bench's SCRAM role, with PGPASSWORD, through proxies that make
 * clients log in with SCRAM-SHA-256 (run.mjs starts those for the workload).
 * rate: pgbench -R (transactions per second over all clients); latencyLog: -l with a
 * --log-prefix in the bench's temp dir, read back for latency percentiles.
 * perConnection: each transaction opens its own connection (-C): CPU per transaction is
 * CPU per connection.
 */
const SCRIPTS = join(dirname(dirname(fileURLToPath(import.meta.url))), 'scripts');

export const WORKLOADS = {
  'select-simple': { title: 'select-only, simple protocol', clients: 50, args: ['-S', '-M', 'simple'] },
  'select-extended': { title: 'select-only, extended protocol', clients: 50, args: ['-S', '-M', 'extended'] },
  'select-prepared': { title: 'select-only, prepared statements', clients: 50, args: ['-S', '-M', 'prepared'] },
  // Read-heavy mix (issue #5): 9 of 10 transactions are pgbench's select-only, the 10th its
  // simple-update (BEGIN; UPDATE accounts; SELECT; INSERT history; END). pgmux sends the
  // selects to the replicas and the updates to the primary.
  'read-mix': {
    title: 'read-heavy mix: 90% select-only, 10% simple-update, simple protocol',
    clients: 50,
    args: ['-b', 'select-only@9', '-b', 'simple-update@1', '-M', 'simple'],
    writes: true,
  },
  tpcb: { title: 'TPC-B-like read/write', clients: 20, args: ['-M', 'simple'], writes: true },
  churn: { title: 'connection churn (-C), select-only', clients: 20, args: ['-S', '-M', 'simple', '-C'], perConnection: true },
  // The same with SCRAM-SHA-256 at every step: pgbench -> proxy, proxy -> PostgreSQL (and
  // pgbench -> PostgreSQL for direct), as a role PostgreSQL stores as a SCRAM verifier.
  'churn-scram': { title: 'connection churn (-C) with SCRAM-SHA-256, select-only', clients: 20, args: ['-S', '-M', 'simple', '-C'], perConnection: true, auth: 'scram' },
  // pgbench's -T clock starts before its clients have connected: 1000 connections (1000
  // forked backends when direct) take several seconds here, so these runs last >= 15 s.
  c1000: { title: '1000 clients, select-only, pool of 20', clients: 1000, args: ['-S', '-M', 'simple'], minSeconds: 15 },
  // Latency when nobody is saturated: a fixed schedule (-R, --latency-rate) well below what
  // any target serves, and every transaction's latency from pgbench's per-transaction log.
  latency: { title: 'latency at a fixed rate, select-only, simple protocol', clients: 10, args: ['-S', '-M', 'simple'], rate: 1000, latencyLog: true },
  // The query cache's case (issue #17): 90% reads of one account from a hot set of 100, 10%
  // updates of random accounts, each of which invalidates the cached pgbench_accounts reads.
  // The cache targets run only these two workloads; every target reports them (cache off vs on).
  'read-hot': {
    title: 'read-heavy hot set: 90% SELECT of 100 hot accounts, 10% UPDATE of any account, simple protocol',
    clients: 50,
    args: ['-f', `${SCRIPTS}/read-hot-select.sql@9`, '-f', `${SCRIPTS}/read-hot-update.sql@1`, '-M', 'simple'],
    writes: true,
    needsScale: true,
  },
  // The cache's good case, the one Pgpool-II's memory cache is sold for: 95% reads of a small
  // lookup table (100 tellers), 5% INSERTs into another table (history), so a per-table
  // invalidation never touches the cached rows. read-hot above is the worst case.
  'read-hot-lookup': {
    title: 'read-heavy lookup: 95% SELECT of a 100-row lookup table, 5% INSERT into another table, simple protocol',
    clients: 50,
    args: ['-f', `${SCRIPTS}/read-hot-lookup-select.sql@19`, '-f', `${SCRIPTS}/read-hot-lookup-insert.sql@1`, '-M', 'simple'],
    writes: true,
    needsScale: true,
  },
};

export const WORKLOAD_NAMES = Object.keys(WORKLOADS);

/** pgbench -T for a workload when runs last `seconds`. */
export function runSeconds(workload, seconds) {
  return Math.max(seconds, WORKLOADS[workload].minSeconds ?? 0);
}

/** The role a workload logs in as: the bench's SCRAM role for auth 'scram', else postgres. */
export const SCRAM_LOGIN = { user: 'bench_scram', password: 'bench-scram-password' };

export function pgbenchArgs(workload, { port, database, seconds, threads = 2, logPrefix = null, scale = null }) {
  const w = WORKLOADS[workload];
  const user = w.auth === 'scram' ? SCRAM_LOGIN.user : 'postgres';
  // A custom script's :scale is 1 unless -s says otherwise.
  const rate = [...(w.rate ? ['-R', String(w.rate)] : []), ...(w.needsScale && scale ? ['-s', String(scale)] : [])];
  const log = logPrefix ? ['-l', `--log-prefix=${logPrefix}`] : [];
  return ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-n', ...w.args, ...rate, '-c', String(w.clients), '-j', String(threads), '-T', String(runSeconds(workload, seconds)), ...log, database];
}

/** The command as a person would type it (the port is replaced by a placeholder). */
export function pgbenchDisplay(workload, { seconds, database, scale = null }) {
  const args = pgbenchArgs(workload, { port: 'PORT', database, seconds, scale, logPrefix: WORKLOADS[workload].latencyLog ? '$TMPDIR/latency-TARGET-ROUND' : null });
  return (WORKLOADS[workload].auth === 'scram' ? 'PGPASSWORD=... ' : '') + 'pgbench ' + args.map((a) => shq(a.replace(SCRIPTS, 'bench/scripts'))).join(' ');
}

/** Parses pgbench's summary. Returns { tps, latencyMs, transactions, failed } (nulls if absent). */
export function parsePgbench(stdout) {
  const num = (re) => {
    const m = re.exec(stdout);
    return m ? Number(m[1]) : null;
  };
  return {
    tps: num(/^tps = ([\d.]+)/m),
    latencyMs: num(/^latency average = ([\d.]+) ms/m),
    transactions: num(/^number of transactions actually processed: (\d+)/m),
    failed: num(/^number of failed transactions: (\d+)/m),
    connectMs: num(/^initial connection time = ([\d.]+) ms/m),
  };
}

/** The first line that says what went wrong, from pgbench's stderr. */
export function errorLine(stderr) {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/^pgbench \(\d/.test(l));
  const pick =
    lines.find((l) => /ERROR|FATAL|error:/.test(l) && !/^pgbench: fatal: Run was aborted/.test(l)) ??
    lines.find((l) => /aborted|fatal/i.test(l)) ??
    lines[0];
  return pick ?? 'no output';
}

/**
 * Run pgbench (through sh, for `ulimit -n`). Resolves
 * { ok, tps, latencyMs, transactions, error, code, stdout, stderr }.
 */
export async function runPgbench(pgbenchBin, workload, { port, database, seconds, nofile, timeoutMs, logPrefix = null, scale = null }) {
  const args = pgbenchArgs(workload, { port, database, seconds, logPrefix, scale });
  const line = withUlimit([pgbenchBin, ...args], nofile);
  const env = { ...process.env, PGCONNECT_TIMEOUT: '60', LC_ALL: 'C' };
  if (WORKLOADS[workload].auth === 'scram') env.PGPASSWORD = SCRAM_LOGIN.password;
  else delete env.PGPASSWORD;
  const r = await runCommand('pgbench', ['sh', '-c', line], { timeoutMs, env });
  const parsed = parsePgbench(r.stdout);
  const out = { ...parsed, code: r.code, stdout: r.stdout, stderr: r.stderr, ok: false, error: null };
  if (r.timedOut) {
    out.error = `timed out after ${Math.round(timeoutMs / 1000)} s (${errorLine(r.stderr)})`;
  } else if (r.code === 0 && parsed.transactions === 0) {
    out.error = `no transaction completed in -T ${runSeconds(workload, seconds)} s` + (parsed.connectMs !== null ? ` (initial connection time ${Math.round(parsed.connectMs)} ms)` : '');
  } else if (r.code !== 0 || parsed.tps === null || !parsed.transactions) {
    out.error = errorLine(r.stderr || r.stdout);
  } else if (parsed.failed) {
    out.error = `${parsed.failed} failed transactions: ${errorLine(r.stderr)}`;
  } else {
    out.ok = true;
  }
  return out;
}

/**
 * Reads (and removes) the per-transaction logs pgbench -l wrote under `prefix`
 * (`<prefix>.<pid>` and `<prefix>.<pid>.<thread>`). Each line: client_id transaction_no
 * time script_no time_epoch time_us [schedule_lag]; `time` is the latency in µs, counted
 * from the transaction's scheduled start under -R (so it includes any schedule lag, as
 * pgbench's own "latency average" does). Returns { latUs: Float64Array, lagUs: Float64Array,
 * failed } (failed: lines whose time is not a number, e.g. "failed").
 */
export function readLatencyLog(prefix) {
  const dir = dirname(prefix);
  const stem = basename(prefix) + '.';
  const lat = [];
  const lag = [];
  let failed = 0;
  for (const f of readdirSync(dir).filter((x) => x.startsWith(stem))) {
    const file = join(dir, f);
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line) continue;
      const p = line.split(' ');
      const t = Number(p[2]);
      if (!Number.isFinite(t)) {
        failed++;
        continue;
      }
      lat.push(t);
      if (p.length > 6) lag.push(Number(p[6]));
    }
    rmSync(file, { force: true });
  }
  return { latUs: Float64Array.from(lat), lagUs: Float64Array.from(lag), failed };
}

/** Nearest-rank percentiles of µs samples: { n, p50, p99, p999, max } in µs (nulls when empty). */
export function latencyPercentiles(samples) {
  const v = Float64Array.from(samples).sort();
  const n = v.length;
  const at = (q) => (n ? v[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))] : null);
  return { n, p50: at(0.5), p99: at(0.99), p999: at(0.999), max: n ? v[n - 1] : null };
}
