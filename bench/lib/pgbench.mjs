// pgbench workloads and the parsing of pgbench's summary.

import { runCommand, shq, withUlimit } from './procs.mjs';

/**
 * name -> { title, clients, args (beyond the common ones), note }.
 * Common args: -n (vacuum is done on the primary directly), -j 2, -T seconds.
 */
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
  churn: { title: 'connection churn (-C), select-only', clients: 20, args: ['-S', '-M', 'simple', '-C'] },
  // pgbench's -T clock starts before its clients have connected: 1000 connections (1000
  // forked backends when direct) take several seconds here, so these runs last >= 15 s.
  c1000: { title: '1000 clients, select-only, pool of 20', clients: 1000, args: ['-S', '-M', 'simple'], minSeconds: 15 },
};

export const WORKLOAD_NAMES = Object.keys(WORKLOADS);

/** pgbench -T for a workload when runs last `seconds`. */
export function runSeconds(workload, seconds) {
  return Math.max(seconds, WORKLOADS[workload].minSeconds ?? 0);
}

export function pgbenchArgs(workload, { port, database, seconds, threads = 2 }) {
  const w = WORKLOADS[workload];
  return ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-n', ...w.args, '-c', String(w.clients), '-j', String(threads), '-T', String(runSeconds(workload, seconds)), database];
}

/** The command as a person would type it (the port is replaced by a placeholder). */
export function pgbenchDisplay(workload, { seconds, database }) {
  const args = pgbenchArgs(workload, { port: 'PORT', database, seconds });
  return 'pgbench ' + args.map(shq).join(' ');
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
export async function runPgbench(pgbenchBin, workload, { port, database, seconds, nofile, timeoutMs }) {
  const args = pgbenchArgs(workload, { port, database, seconds });
  const line = withUlimit([pgbenchBin, ...args], nofile);
  const r = await runCommand('pgbench', ['sh', '-c', line], { timeoutMs, env: { ...process.env, PGCONNECT_TIMEOUT: '60', LC_ALL: 'C' } });
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
