// The capped-nodes scenario (issue #5). On one machine, sending reads to the replicas
// cannot add capacity: every node takes its CPU from the same cores. Here each PostgreSQL
// node is held to a fixed CPU share by a cgroup quota, as separate small machines would be,
// and the same select-only pgbench workload runs through pgmux twice, interleaved over the
// rounds: (a) reads on the primary alone, (b) reads spread over primary + replicas (pgmux's
// normal routing); straight to the capped primary as a reference. pgmux and pgbench are not
// capped: the nodes are meant to be the bottleneck, and the report shows whether they were.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { capTrees, findCpuController } from './cgroup.mjs';
import { WORKLOADS, runPgbench, runSeconds } from './pgbench.mjs';
import { isAborting, shq, sleep, treeCpuSeconds } from './procs.mjs';
import { startPgmux } from './targets.mjs';

export const CAPPED_WORKLOAD = 'select-simple';
/** Issue #5's target for spread / primary alone. */
export const CAPPED_TARGET_RATIO = 2.5;

/** The runs of each round: key -> what it is, and pgmux's read weights per node (none = direct). */
export const CAPPED_VARIANTS = {
  direct: { label: 'direct to the primary', weights: null },
  'primary-alone': { label: 'pgmux, reads on the primary alone (a)', weights: (nodes) => nodes.map((_, i) => (i === 0 ? 1 : 0)) },
  spread: { label: 'pgmux, reads spread over primary + replicas (b)', weights: (nodes) => nodes.map(() => 1) },
};

/**
 * Leave the primary nothing to write during the select-only runs. The write workloads leave
 * dead tuples that hot_standby_feedback kept a first VACUUM from removing; select-only
 * would then prune them and WAL-log hint bits (wal_log_hints) on the primary alone, inside
 * its cap, and that trickle of WAL keeps the replicas a few kB behind at every health check,
 * where pgmux's lag check (age of the last replayed commit, 10 s by default) holds them out
 * of reads. So: wait until the replicas' feedback xmin has passed every transaction so far
 * (it is sent every wal_receiver_status_interval, 10 s), VACUUM, CHECKPOINT, catch up.
 */
async function quiesce(cluster, database, waitReplicasCaughtUp, timeoutMs = 30_000) {
  const [{ x }] = await cluster.query('node0', "select (txid_current() % 4294967296)::text as x", { database });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [{ n }] = await cluster.query(
      'node0',
      'select count(*)::int as n from pg_stat_replication where backend_xmin is not null and backend_xmin::text::bigint <= $1::bigint',
      { params: [x] },
    );
    if (n === 0 || Date.now() > deadline) break;
    await sleep(500);
  }
  await cluster.query('node0', 'vacuum pgbench_accounts', { database });
  await cluster.query('node0', 'checkpoint');
  await waitReplicasCaughtUp(cluster);
}

async function primaryLsn(cluster) {
  const [{ b }] = await cluster.query('node0', "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8 as b");
  return b;
}

function postmasterPid(node) {
  const pid = Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no postmaster pid in ${node.dataDir}/postmaster.pid`);
  return pid;
}

/**
 * Runs the scenario on `cluster` (node0 = primary). Never throws for want of cgroups:
 * resolves { skipped: reason } then. Otherwise { cpus, method, moved, variants: { key:
 * cell as in the main results, runs with nodeCores[] and proxyCores }, throttle, commands,
 * instances }. The caps are removed before it returns (and by procs.mjs's undo list on
 * any abort).
 */
export async function runCapped({ cluster, opts, pgbenchBin, database, work, freePort, repoDir, nofile, log, nodeCommits, waitReplicasCaughtUp }) {
  const wl = WORKLOADS[CAPPED_WORKLOAD];
  const out = {
    cpus: opts.nodeCpu,
    rounds: opts.rounds,
    seconds: runSeconds(CAPPED_WORKLOAD, opts.seconds),
    workload: CAPPED_WORKLOAD,
    clients: wl.clients,
    poolSize: opts.cappedPoolSize,
    skipped: null,
    method: null,
    moved: [],
    variants: {},
    throttle: [],
    commands: [],
    instances: [],
    incidents: [],
  };
  const ctl = findCpuController();
  if (!ctl.ok) {
    out.skipped = ctl.reason;
    return out;
  }
  let trees;
  try {
    trees = cluster.nodes.map((n) => ({ name: n.name, pid: postmasterPid(n) }));
  } catch (e) {
    out.skipped = e.message;
    return out;
  }
  await quiesce(cluster, database, waitReplicasCaughtUp);
  // Before any of the scenario's connections: the backends they fork are born capped.
  let caps;
  try {
    caps = capTrees(trees, opts.nodeCpu, { ctl });
  } catch (e) {
    out.skipped = e.message;
    return out;
  }
  const instances = {};
  try {
    out.method = caps.method;
    out.moved = caps.caps.map((c) => ({ name: c.tree.name, processes: c.count }));
    log(
      `== capped nodes: ${opts.nodeCpu} CPU per PostgreSQL node (${caps.method}; moved ${out.moved.map((m) => `${m.name} ${m.processes}`).join(', ')} processes); ` +
        `select-only, ${wl.clients} clients: direct, pgmux reads on the primary alone, pgmux reads spread`,
    );

    for (const [key, v] of Object.entries(CAPPED_VARIANTS)) {
      out.variants[key] = { status: 'ok', reason: null, runs: [] };
      if (!v.weights) continue;
      try {
        const weights = v.weights(cluster.nodes);
        const r = await startPgmux({ dir: join(work, `pgmux-capped-${key}`), repoDir, port: await freePort(), nodes: cluster.nodes, weights, database, poolSize: opts.cappedPoolSize, nofile, nodeBin: opts.pgmuxNode });
        r.label = `pgmux (capped nodes, ${key})`;
        instances[key] = r;
        out.instances.push(r);
        log(`  ${r.label} on 127.0.0.1:${r.port} (pid ${r.pid}), read weights ${weights.join('/')}`);
      } catch (e) {
        out.variants[key] = { status: 'fails', reason: `pgmux failed to start: ${e.message.split('\n')[0]}`, runs: [] };
        out.incidents.push(`capped nodes: pgmux (${key}) failed to start: ${e.message.replace(/\n/g, ' | ')}`);
      }
    }
    const portOf = (key) => (key === 'direct' ? cluster.nodes[0].port : instances[key]?.port);

    // Warm-up: pools filled, caches hot; not recorded.
    for (const key of Object.keys(CAPPED_VARIANTS)) {
      if (out.variants[key].status !== 'ok' || isAborting()) continue;
      const r = await runPgbench(pgbenchBin, CAPPED_WORKLOAD, { port: portOf(key), database, seconds: 2, nofile, timeoutMs: 60_000 });
      log(`  warm-up capped ${key}: ${r.ok ? `${Math.round(r.tps)} tps` : `failed: ${r.error}`}`);
    }

    const stat0 = caps.stats();
    for (let round = 1; round <= opts.rounds; round++) {
      // The reference first; (a) and (b) swap places every round, so drift hits both.
      const order = round % 2 ? ['direct', 'primary-alone', 'spread'] : ['direct', 'spread', 'primary-alone'];
      for (const key of order) {
        const cell = out.variants[key];
        if (isAborting()) return out;
        if (cell.status !== 'ok') continue;
        const inst = instances[key];
        const commits0 = await nodeCommits(cluster);
        const lsn0 = await primaryLsn(cluster);
        const node0 = trees.map((t) => treeCpuSeconds(t.pid));
        const proxy0 = inst ? treeCpuSeconds(inst.pid) : null;
        const t0 = Date.now();
        const r = await runPgbench(pgbenchBin, CAPPED_WORKLOAD, {
          port: portOf(key),
          database,
          seconds: opts.seconds,
          nofile,
          timeoutMs: (out.seconds + 120) * 1000,
        });
        if (isAborting()) return out;
        const wall = (Date.now() - t0) / 1000;
        const nodeCores = trees.map((t, i) => (treeCpuSeconds(t.pid) - node0[i]) / wall);
        const proxyCores = inst ? (treeCpuSeconds(inst.pid) - proxy0) / wall : null;
        const walBytes = (await primaryLsn(cluster)) - lsn0;
        const commits1 = await nodeCommits(cluster);
        const commitDelta = commits1.map((c, i) => Math.max(0, c - commits0[i]));
        const cpuUsPerTxn = inst && r.transactions ? (proxyCores * wall * 1e6) / r.transactions : null;
        const nodeUsPerTxn = r.transactions ? (nodeCores.reduce((a, b) => a + b, 0) * wall * 1e6) / r.transactions : null;
        cell.runs.push({ ok: r.ok, tps: r.tps, latencyMs: r.latencyMs, transactions: r.transactions, failed: r.failed, cpuUsPerTxn, error: r.error, commitDelta, nodeCores, proxyCores, nodeUsPerTxn, walBytes });
        if (!r.ok) out.incidents.push(`capped nodes round ${round} ${key}: pgbench exit ${r.code}: ${r.error}`);
        log(
          `capped round ${round}/${opts.rounds} ${CAPPED_VARIANTS[key].label}: ` +
            (r.ok ? `${Math.round(r.tps).toLocaleString('en-US')} tps, ${r.latencyMs} ms` : `FAILED: ${r.error}`) +
            `; node CPU ${nodeCores.map((c) => c.toFixed(2)).join(' / ')} cores` +
            (proxyCores !== null ? `, pgmux ${proxyCores.toFixed(2)} cores` : '') +
            `; primary wrote ${Math.round(walBytes / 1024)} kB of WAL`,
        );
        await sleep(1000);
      }
    }
    const stat1 = caps.stats();
    out.throttle = stat1.map((s, i) => ({
      name: s.name,
      periods: s.periods !== null && stat0[i].periods !== null ? s.periods - stat0[i].periods : null,
      throttled: s.throttled !== null && stat0[i].throttled !== null ? s.throttled - stat0[i].throttled : null,
    }));
    out.commands = [
      `# capped nodes: ${caps.method}; every process of each node's postmaster tree moved in before the scenario's connections`,
      ...out.instances.map((r) => `# ${r.label}: ${r.command}`),
      `pgbench ${['-h', '127.0.0.1', '-p', 'PORT', '-U', 'postgres', '-n', ...wl.args, '-c', wl.clients, '-j', 2, '-T', out.seconds, database].map(shq).join(' ')}   # PORT = the capped primary or one of the two pgmux`,
    ];
    return out;
  } finally {
    await Promise.all(Object.values(instances).map((r) => r.stop()));
    caps.release();
    const left = caps.leftovers();
    if (left.length) out.incidents.push(`capped nodes: could not remove ${left.join(', ')} (removed again at exit)`);
    else log('capped nodes: caps removed');
  }
}
