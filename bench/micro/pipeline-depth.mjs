#!/usr/bin/env node
// Does PostgreSQL do less work per query when requests arrive pipelined? (issue #14,
// Deliver 3; needs `npm run build`). Two parts, each on a private LocalCluster primary
// (pgbench -i -s 10):
//
//   raw    N raw protocol connections (no driver), pgbench's select-only query as a simple
//          Query with the literal inlined, each request its own Query and ReadyForQuery;
//          depth D = requests written back to back in one write before the replies are
//          read (the next batch goes out when all D ReadyForQuery have arrived).
//          Reports queries/s and PostgreSQL CPU per query (sum of the backends' /proc
//          utime+stime deltas).
//   pgmux  pgbench -S -M simple -c 50 -j 2 -T S through pgmux (pool 20, primary only)
//          with pipeline_depth 1, 2, 4, 8, interleaved, R rounds: tps, pgmux CPU us/txn,
//          PostgreSQL CPU us/txn and the share of transactions pgmux wrote behind another
//          client's (pgmux_pipelined_total from its /metrics).
//
//   node bench/micro/pipeline-depth.mjs [--part raw|pgmux|both] [--depths 1,2,4,8]
//        [--seconds 10] [--rounds 3 (1 for --part raw)] [--conns 20] [--scale 10] [--json]

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { clockTicksPerSecond, readStat, runCommand, sleep, startProcess, stopAll, stopTree, treeCpuSeconds } from '../lib/procs.mjs';
import { parsePgbench } from '../lib/pgbench.mjs';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const distFile = (p) => join(repo, 'dist', p);
if (!existsSync(distFile('embedded/localCluster.js'))) {
  process.stderr.write('bench/micro/pipeline-depth: dist/ not found: run npm run build first\n');
  process.exit(2);
}
const lc = await import(pathToFileURL(distFile('embedded/localCluster.js')).href);

function opt(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}
const PART = opt('part', 'both');
const DEPTHS = opt('depths', '1,2,4,8').split(',').map(Number);
const SECONDS = Number(opt('seconds', '10'));
const ROUNDS = Number(opt('rounds', PART === 'raw' ? '1' : '3'));
const CONNS = Number(opt('conns', '20'));
const SCALE = Number(opt('scale', '10'));
const JSON_OUT = process.argv.includes('--json');
const DATABASE = 'bench';
const ACCOUNTS = 100_000 * SCALE;
const log = (s) => process.stderr.write(`[pipeline-depth] ${s}\n`);

// ---- raw protocol ------------------------------------------------------------------

function startupMessage(user, database) {
  const body = Buffer.from(`user\0${user}\0database\0${database}\0\0`);
  const b = Buffer.alloc(8 + body.length);
  b.writeInt32BE(8 + body.length, 0);
  b.writeInt32BE(196608, 4);
  body.copy(b, 8);
  return b;
}

function queryMessage(sql) {
  const text = Buffer.from(sql + '\0');
  const b = Buffer.alloc(5 + text.length);
  b[0] = 0x51;
  b.writeInt32BE(4 + text.length, 1);
  text.copy(b, 5);
  return b;
}

/**
 * One raw connection. Counts ReadyForQuery and ErrorResponse by walking headers only;
 * `onReady` runs once per ReadyForQuery. Resolves with the backend PID once logged in.
 */
function rawConnection(port, onReady) {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    sock.setNoDelay(true);
    let pending = null;
    const conn = { sock, pid: 0, errors: 0, ready: false };
    sock.on('error', reject);
    sock.on('connect', () => sock.write(startupMessage('postgres', DATABASE)));
    sock.on('data', (chunk) => {
      let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
      let off = 0;
      while (buf.length - off >= 5) {
        const len = buf.readInt32BE(off + 1);
        if (buf.length - off < 1 + len) break;
        const type = buf[off];
        if (type === 0x4b) conn.pid = buf.readInt32BE(off + 5); // BackendKeyData
        else if (type === 0x45) {
          conn.errors++;
          if (!conn.ready) reject(new Error(`login failed: ${buf.subarray(off + 5, off + 1 + len).toString().replace(/\0/g, ' ')}`));
        } else if (type === 0x5a) {
          if (!conn.ready) {
            conn.ready = true;
            resolve(conn);
          } else onReady(conn);
        }
        off += 1 + len;
      }
      pending = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
    });
  });
}

/**
 * CPU ticks and voluntary context switches of these backends: a backend that finds no
 * request waiting blocks in recv and switches out, one that finds the next one does not.
 */
function backendUsage(pids) {
  let ticks = 0;
  let sleeps = 0;
  for (const pid of pids) {
    const s = readStat(pid);
    if (!s) continue;
    ticks += s.utime + s.stime;
    try {
      const m = /^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) sleeps += Number(m[1]);
    } catch {
      // gone
    }
  }
  return { ticks, sleeps };
}

/** One timed run at `depth`: every connection writes `depth` Queries, waits for as many ReadyForQuery, repeats. */
async function rawRun(port, depth, seconds) {
  let completed = 0;
  let running = true;
  const outstanding = new Map();
  const batch = () => {
    const parts = [];
    for (let i = 0; i < depth; i++) parts.push(queryMessage(`SELECT abalance FROM pgbench_accounts WHERE aid = ${1 + Math.floor(Math.random() * ACCOUNTS)};`));
    return Buffer.concat(parts);
  };
  const onReady = (conn) => {
    completed++;
    const left = outstanding.get(conn) - 1;
    if (left > 0 || !running) {
      outstanding.set(conn, left);
      return;
    }
    outstanding.set(conn, depth);
    conn.sock.write(batch());
  };
  const conns = await Promise.all(Array.from({ length: CONNS }, () => rawConnection(port, onReady)));
  const pids = conns.map((c) => c.pid);
  for (const c of conns) {
    outstanding.set(c, depth);
    c.sock.write(batch());
  }
  await sleep(1000); // warm-up: caches, plans, the first batches
  const c0 = completed;
  const t0 = process.hrtime.bigint();
  const u0 = backendUsage(pids);
  await sleep(seconds * 1000);
  const c1 = completed;
  const t1 = process.hrtime.bigint();
  const u1 = backendUsage(pids);
  running = false;
  await sleep(200);
  const errors = conns.reduce((n, c) => n + c.errors, 0);
  for (const c of conns) c.sock.destroy();
  const elapsed = Number(t1 - t0) / 1e9;
  const queries = c1 - c0;
  return { depth, qps: queries / elapsed, pgCpuUsPerQuery: (((u1.ticks - u0.ticks) / clockTicksPerSecond) * 1e6) / queries, pgSleepsPerQuery: (u1.sleeps - u0.sleeps) / queries, errors };
}

// ---- through pgmux ----------------------------------------------------------------

async function startPgmux(primary, depth) {
  const port = await lc.freePort();
  const httpPort = await lc.freePort();
  const argv = [process.execPath, join(repo, 'dist', 'cli.js'), 'start', '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${httpPort}`, '--node', `${primary.host}:${primary.port}`, '--pool-size', '20', '--log-level', 'warn'];
  const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGMUX_'))), PGMUX_PIPELINE_DEPTH: String(depth) };
  const proc = startProcess('pgmux', argv, { stdio: ['ignore', 'inherit', 'inherit'], cwd: repo, env });
  for (let i = 0; i < 100; i++) {
    const r = await runCommand('psql', [join(lc.findPgBinDir(), 'psql'), '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', DATABASE, '-Atc', 'select 1']);
    if (r.code === 0) return { proc, port, httpPort };
    await sleep(100);
  }
  throw new Error(`pgmux (pipeline_depth ${depth}) did not come up; see its output above`);
}

async function pipelinedCount(httpPort) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const m = /^pgmux_pipelined_total (\d+)/m.exec(text);
  return m ? Number(m[1]) : null;
}

function postgresChildren(postmasterPid) {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const s = readStat(Number(d));
    if (s && s.ppid === postmasterPid) out.push(s.pid);
  }
  return out;
}

async function pgmuxRun(primary, postmasterPid, pgbench, depth) {
  const { proc, port, httpPort } = await startPgmux(primary, depth);
  try {
    const cpu0 = treeCpuSeconds(proc.pid);
    const pg0 = backendUsage(postgresChildren(postmasterPid));
    const r = await runCommand('pgbench', [pgbench, '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-n', '-S', '-M', 'simple', '-c', '50', '-j', '2', '-T', String(SECONDS), DATABASE], {
      timeoutMs: (SECONDS + 60) * 1000,
      env: { ...process.env, LC_ALL: 'C' },
    });
    const cpu1 = treeCpuSeconds(proc.pid);
    const pg1 = backendUsage(postgresChildren(postmasterPid));
    const p = parsePgbench(r.stdout);
    if (r.code !== 0 || !p.transactions) throw new Error(`pgbench through pgmux (depth ${depth}) failed: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const pipelined = await pipelinedCount(httpPort);
    return {
      depth,
      tps: p.tps,
      failed: p.failed ?? 0,
      pgmuxCpuUsPerTxn: ((cpu1 - cpu0) * 1e6) / p.transactions,
      pgCpuUsPerTxn: (((pg1.ticks - pg0.ticks) / clockTicksPerSecond) * 1e6) / p.transactions,
      pgSleepsPerTxn: (pg1.sleeps - pg0.sleeps) / p.transactions,
      pipelinedShare: pipelined === null ? null : pipelined / p.transactions,
    };
  } finally {
    await stopTree(proc.pid, 'SIGTERM', 5000);
  }
}

// ---- main ----------------------------------------------------------------------------

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const range = (xs) => `${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}`;

let cluster;
const cleanup = async () => {
  await stopAll();
  if (cluster) await cluster.stop().catch(() => {});
};
process.on('SIGINT', () => void cleanup().finally(() => process.exit(130)));

try {
  cluster = await lc.LocalCluster.start({ replicas: 0, settings: { max_connections: '200', shared_buffers: '256MB' }, log: (l) => log(`cluster: ${l}`) });
  lc.registerCleanup(cluster);
  const primary = cluster.nodes[0];
  const binDir = cluster.binDir;
  const pgbench = existsSync(join(binDir, 'pgbench')) ? join(binDir, 'pgbench') : 'pgbench';
  await cluster.query('node0', `create database ${DATABASE}`);
  log(`pgbench -i -s ${SCALE}`);
  const init = await runCommand('pgbench-init', [pgbench, '-i', '-q', '-s', String(SCALE), '-h', primary.host, '-p', String(primary.port), '-U', 'postgres', DATABASE], { timeoutMs: 600_000 });
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);
  await cluster.query('node0', 'vacuum analyze', { database: DATABASE });
  const postmasterPid = Number(readFileSync(join(primary.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const out = { cpus: (await import('node:os')).cpus().length, raw: [], pgmux: [] };

  if (PART === 'raw' || PART === 'both') {
    for (let round = 0; round < ROUNDS; round++) {
      for (const depth of DEPTHS) {
        const r = await rawRun(primary.port, depth, SECONDS);
        out.raw.push({ round, ...r });
        log(`raw round ${round + 1} depth ${depth}: ${r.qps.toFixed(0)} queries/s, PostgreSQL ${r.pgCpuUsPerQuery.toFixed(1)} us CPU/query, ${r.pgSleepsPerQuery.toFixed(2)} sleeps/query, ${r.errors} errors`);
      }
    }
  }
  if (PART === 'pgmux' || PART === 'both') {
    for (let round = 0; round < ROUNDS; round++) {
      for (const depth of DEPTHS) {
        const r = await pgmuxRun(primary, postmasterPid, pgbench, depth);
        out.pgmux.push({ round, ...r });
        log(`pgmux round ${round + 1} depth ${depth}: ${r.tps.toFixed(0)} tps, pgmux ${r.pgmuxCpuUsPerTxn.toFixed(1)} us CPU/txn, PostgreSQL ${r.pgCpuUsPerTxn.toFixed(1)} us/txn, ${r.pgSleepsPerTxn.toFixed(2)} sleeps/txn, ${r.failed} failed, ${((r.pipelinedShare ?? 0) * 100).toFixed(1)}% pipelined`);
      }
    }
  }

  if (JSON_OUT) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  else {
    const lines = [];
    if (out.raw.length) {
      lines.push(`raw: ${CONNS} connections, select-only simple Query, ${SECONDS} s per run, ${ROUNDS} round(s), ${out.cpus} CPUs`);
      lines.push('| depth | queries/s (median; range) | PostgreSQL CPU us/query | backend sleeps/query |');
      lines.push('|---:|---:|---:|---:|');
      for (const d of DEPTHS) {
        const rs = out.raw.filter((r) => r.depth === d);
        lines.push(`| ${d} | ${median(rs.map((r) => r.qps)).toFixed(0)} (${range(rs.map((r) => r.qps))}) | ${median(rs.map((r) => r.pgCpuUsPerQuery)).toFixed(1)} | ${median(rs.map((r) => r.pgSleepsPerQuery)).toFixed(2)} |`);
      }
    }
    if (out.pgmux.length) {
      lines.push(`pgmux: pgbench -S -M simple -c 50 -j 2 -T ${SECONDS}, pool 20, primary only, ${ROUNDS} round(s) interleaved`);
      lines.push('| pipeline_depth | tps (median; range) | pgmux CPU us/txn | PostgreSQL CPU us/txn | backend sleeps/txn | pipelined | failed |');
      lines.push('|---:|---:|---:|---:|---:|---:|---:|');
      for (const d of DEPTHS) {
        const rs = out.pgmux.filter((r) => r.depth === d);
        lines.push(
          `| ${d} | ${median(rs.map((r) => r.tps)).toFixed(0)} (${range(rs.map((r) => r.tps))}) | ${median(rs.map((r) => r.pgmuxCpuUsPerTxn)).toFixed(1)} | ${median(rs.map((r) => r.pgCpuUsPerTxn)).toFixed(1)} | ${median(rs.map((r) => r.pgSleepsPerTxn)).toFixed(2)} | ${(median(rs.map((r) => r.pipelinedShare ?? 0)) * 100).toFixed(1)}% | ${rs.reduce((n, r) => n + r.failed, 0)} |`,
        );
      }
    }
    process.stdout.write(lines.join('\n') + '\n');
  }
} catch (e) {
  log(`failed: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
