// Summaries, the console table, the Markdown report and the SVG chart.

import { TARGET_LABEL } from './targets.mjs';
import { WORKLOADS } from './pgbench.mjs';
import { CAPPED_TARGET_RATIO, CAPPED_VARIANTS } from './capped.mjs';
import { hitRatioNote } from './cache.mjs';

export function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/**
 * cell = { status: 'ok'|'fails'|'n/a'|'skipped', reason, runs: [{ ok, tps, latencyMs, cpuUsPerTxn, transactions, error }] }
 * -> { status, reason, tps, latencyMs, cpuUs, rounds, okRounds, tpsList }
 * A cell whose runs all failed is 'fails' with the first error; some failed: 'ok' with a note.
 */
export function summarize(cell) {
  if (!cell) return { status: 'skipped', reason: 'not run' };
  if (cell.status !== 'ok') return { status: cell.status, reason: cell.reason };
  const ok = cell.runs.filter((r) => r.ok);
  if (ok.length === 0) return { status: 'fails', reason: cell.runs[0]?.error ?? 'no run', rounds: cell.runs.length };
  const failedRuns = cell.runs.filter((r) => !r.ok);
  return {
    status: 'ok',
    reason: failedRuns.length ? `${failedRuns.length} of ${cell.runs.length} runs failed: ${failedRuns[0].error}` : null,
    tps: median(ok.map((r) => r.tps)),
    latencyMs: median(ok.map((r) => r.latencyMs)),
    cpuUs: median(ok.map((r) => r.cpuUsPerTxn)),
    pgCpuUs: median(ok.map((r) => r.pgCpuUsPerTxn)),
    // Latency workloads: percentiles over every ok round's transactions together (µs).
    latency: cell.latency ?? null,
    latencyRuns: cell.runs.map((r) => (r.ok ? r.latency ?? null : null)),
    rounds: cell.runs.length,
    okRounds: ok.length,
    tpsList: cell.runs.map((r) => (r.ok ? r.tps : null)),
    share: shareOf(ok),
    // pgbench's "number of failed transactions", summed over the runs that reported it.
    failed: cell.runs.some((r) => typeof r.failed === 'number') ? cell.runs.reduce((a, r) => a + (r.failed ?? 0), 0) : null,
  };
}

/** Share of the transactions each node ran (summed over the runs), or null. */
function shareOf(runs) {
  const sums = [];
  for (const r of runs) (r.commitDelta ?? []).forEach((x, i) => (sums[i] = (sums[i] ?? 0) + x));
  const total = sums.reduce((a, b) => a + b, 0);
  return total > 0 ? sums.map((x) => x / total) : null;
}

export function ratio(a, b) {
  return a && b && a.status === 'ok' && b.status === 'ok' && b.tps ? a.tps / b.tps : null;
}

const fmtInt = (n) => (n === null || n === undefined ? '—' : Math.round(n).toLocaleString('en-US'));
const fmt = (n, d = 2) => (n === null || n === undefined ? '—' : n.toFixed(d));
const fmtRatio = (r) => (r === null ? '—' : `${r.toFixed(2)}×`);

/** Rows for both the console and Markdown: one per (workload, target). */
export function tableRows(results, workloads, targets) {
  const rows = [];
  for (const w of workloads) {
    const sums = Object.fromEntries(targets.map((t) => [t, summarize(results[w]?.[t])]));
    for (const t of targets) {
      const s = sums[t];
      const shown =
        s.status === 'ok'
          ? { tps: fmtInt(s.tps), lat: fmt(s.latencyMs, 2), cpu: t === 'direct' ? 'n/a' : fmt(s.cpuUs, 1), pgCpu: fmt(s.pgCpuUs, 1) }
          : { tps: s.status, lat: '—', cpu: '—', pgCpu: '—' };
      rows.push({
        workload: w,
        target: t,
        ...shown,
        xDirect: t === 'direct' ? (s.status === 'ok' ? '1.00×' : '—') : fmtRatio(ratio(s, sums.direct)),
        xBouncer: t === 'pgbouncer' ? (s.status === 'ok' ? '1.00×' : '—') : fmtRatio(ratio(s, sums.pgbouncer)),
        xPgpool: t === 'pgpool' ? (s.status === 'ok' ? '1.00×' : '—') : fmtRatio(ratio(s, sums.pgpool)),
        perRound: s.tpsList ? s.tpsList.map((x) => (x === null ? 'x' : fmtInt(x))).join(' / ') : '',
        share: s.share ? s.share.map((x) => `${Math.round(x * 100)}`).join(' / ') : '—',
        note: [s.reason, s.status === 'ok' ? hitRatioNote(results[w]?.[t]?.cacheDeltas) : null].filter(Boolean).join('; '),
        summary: s,
      });
    }
  }
  return rows;
}

function pad(s, n, right = false) {
  s = String(s);
  if (s.length >= n) return s;
  return right ? ' '.repeat(n - s.length) + s : s + ' '.repeat(n - s.length);
}

export function consoleTable(rows) {
  const head = ['workload', 'target', 'tps', 'lat ms', 'CPU µs/txn', 'PG µs/txn', '×direct', '×PgBouncer', '×Pgpool-II', 'note'];
  const data = rows.map((r) => [r.workload, TARGET_LABEL[r.target], r.tps, r.lat, r.cpu, r.pgCpu, r.xDirect, r.xBouncer, r.xPgpool, shorten(r.note, 60)]);
  const widths = head.map((h, i) => Math.max(h.length, ...data.map((d) => String(d[i]).length)));
  const rightCols = new Set([2, 3, 4, 5, 6, 7, 8]);
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], rightCols.has(i))).join('  ').trimEnd();
  const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  ')];
  let last = null;
  for (let i = 0; i < data.length; i++) {
    if (last !== null && rows[i].workload !== last) out.push('');
    last = rows[i].workload;
    out.push(line(data[i]));
  }
  for (const w of [...new Set(rows.map((r) => r.workload))].filter((x) => WORKLOADS[x].latencyLog)) {
    out.push('', `${w}: latency µs (p50 / p99 / p99.9; added over direct: p50 / p99 / p99.9)`);
    for (const l of latencyRows(rows, w)) out.push(`  ${pad(l.label, 22)} ${pad(`${l.p50} / ${l.p99} / ${l.p999}`, 22)}  ${l.addP50} / ${l.addP99} / ${l.addP999}`);
  }
  return out.join('\n');
}

/** The latency workload's rows: percentiles (µs, all rounds pooled) and what each adds over direct. */
export function latencyRows(rows, w) {
  const mine = rows.filter((r) => r.workload === w);
  const direct = mine.find((r) => r.target === 'direct')?.summary.latency ?? null;
  const us = (x) => (x === null || x === undefined ? '—' : fmtInt(x));
  const add = (l, k) => (l && direct && l[k] !== null && direct[k] !== null ? `${l[k] - direct[k] >= 0 ? '+' : ''}${fmtInt(l[k] - direct[k])}` : '—');
  return mine.map((r) => {
    const l = r.summary.status === 'ok' ? r.summary.latency : null;
    return {
      target: r.target,
      label: TARGET_LABEL[r.target],
      p50: us(l?.p50),
      p99: us(l?.p99),
      p999: us(l?.p999),
      max: us(l?.max),
      n: l ? fmtInt(l.n) : '—',
      addP50: r.target === 'direct' ? '—' : add(l, 'p50'),
      addP99: r.target === 'direct' ? '—' : add(l, 'p99'),
      addP999: r.target === 'direct' ? '—' : add(l, 'p999'),
      // p50 / p99 of each round, to show the spread the pooled figures hide.
      perRound: l ? (r.summary.latencyRuns ?? []).map((x) => (x ? `${fmtInt(x.p50)}/${fmtInt(x.p99)}` : 'x')).join(' · ') : '',
      note: r.note,
      raw: l,
    };
  });
}

function shorten(s, n) {
  s = String(s ?? '');
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

const mdCell = (s) => String(s ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ');

export function memoryRows(memory) {
  return memory.map((m) => ({
    target: TARGET_LABEL[m.target],
    clients: m.error && !m.clients ? '—' : String(m.clients),
    requested: String(m.requested),
    before: m.beforeBytes != null ? (m.beforeBytes / 2 ** 20).toFixed(1) : '—',
    after: m.afterBytes != null ? (m.afterBytes / 2 ** 20).toFixed(1) : '—',
    perClient: m.perClientBytes != null ? Math.round(m.perClientBytes).toLocaleString('en-US') : '—',
    heapPerClient: m.heapPerClientBytes != null ? Math.round(m.heapPerClientBytes).toLocaleString('en-US') : '—',
    processes: m.processes != null ? String(m.processes) : '—',
    note: m.note ?? m.error ?? '',
  }));
}

export function consoleMemory(memory) {
  const head = ['target', 'clients', 'RSS before MiB', 'RSS after MiB', 'RSS B/client', 'V8 heap B/client', 'procs', 'note'];
  const data = memoryRows(memory).map((r) => [r.target, `${r.clients}/${r.requested}`, r.before, r.after, r.perClient, r.heapPerClient, r.processes, shorten(r.note, 60)]);
  const widths = head.map((h, i) => Math.max(h.length, ...data.map((d) => String(d[i]).length)));
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], i > 0 && i < 7)).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...data.map(line)].join('\n');
}

// ---- capped nodes ----------------------------------------------------------------

/**
 * The capped-nodes figures: per variant the summary (as for a workload), the median CPU
 * the nodes and pgmux used (cores), b/a, whether it meets the target, and whether the
 * nodes serving reads ran at (>= 85 % of) their cap, i.e. were the bottleneck.
 */
export function cappedSummary(capped) {
  if (!capped || capped.skipped) return null;
  const keys = Object.keys(CAPPED_VARIANTS);
  const s = Object.fromEntries(keys.map((k) => [k, summarize(capped.variants[k])]));
  const use = {};
  for (const k of keys) {
    const runs = (capped.variants[k]?.runs ?? []).filter((r) => r.ok);
    use[k] = {
      nodeCores: runs.length ? runs[0].nodeCores.map((_, i) => median(runs.map((r) => r.nodeCores[i]))) : null,
      proxyCores: median(runs.map((r) => r.proxyCores)),
      nodeUsPerTxn: median(runs.map((r) => r.nodeUsPerTxn)),
      walBytes: median(runs.map((r) => r.walBytes)),
    };
  }
  const a = s['primary-alone'];
  const b = s.spread;
  const r = a.status === 'ok' && b.status === 'ok' && a.tps ? b.tps / a.tps : null;
  const atCap = (k, nodes) => (use[k].nodeCores ? nodes.every((i) => use[k].nodeCores[i] >= 0.85 * capped.cpus) : null);
  const all = [...Array(use.spread.nodeCores?.length ?? 0).keys()];
  return {
    s,
    use,
    ratio: r,
    met: r === null ? null : r >= CAPPED_TARGET_RATIO,
    nodesBound: { 'primary-alone': atCap('primary-alone', [0]), spread: atCap('spread', all) },
  };
}

function cappedRows(capped) {
  const sum = cappedSummary(capped);
  const a = sum.s['primary-alone'];
  return Object.entries(CAPPED_VARIANTS).map(([k, v]) => {
    const st = sum.s[k];
    const ok = st.status === 'ok';
    return {
      key: k,
      label: v.label,
      tps: ok ? fmtInt(st.tps) : st.status,
      lat: ok ? fmt(st.latencyMs, 2) : '—',
      xAlone: k === 'primary-alone' ? (ok ? '1.00×' : '—') : fmtRatio(ratio(st, a)),
      perRound: st.tpsList ? st.tpsList.map((x) => (x === null ? 'x' : fmtInt(x))).join(' / ') : '',
      nodeCores: sum.use[k].nodeCores ? sum.use[k].nodeCores.map((c) => fmt(c, 2)).join(' / ') : '—',
      proxyCores: sum.use[k].proxyCores != null ? fmt(sum.use[k].proxyCores, 2) : '—',
      nodeUs: sum.use[k].nodeUsPerTxn != null ? fmt(sum.use[k].nodeUsPerTxn, 0) : '—',
      walKb: sum.use[k].walBytes != null ? fmtInt(sum.use[k].walBytes / 1024) : '—',
      share: st.share ? st.share.map((x) => `${Math.round(x * 100)}`).join(' / ') : '—',
      note: ok ? (st.reason ?? '') : (st.reason ?? ''),
    };
  });
}

function cappedVerdict(capped) {
  const sum = cappedSummary(capped);
  if (sum.ratio === null) return `b/a: — (a run failed); target ≥ ${CAPPED_TARGET_RATIO}×`;
  return `b/a = ${sum.ratio.toFixed(2)}×; target ≥ ${CAPPED_TARGET_RATIO}×: ${sum.met ? 'met' : 'missed'}`;
}

/** Why the figures may not show what the nodes can do: the nodes were not at their cap. */
function cappedBottleneckNote(capped) {
  const sum = cappedSummary(capped);
  const notes = [];
  const cap = capped.cpus;
  const share = sum.s.spread.share;
  const starved = share ? share.map((x, i) => (i > 0 && x < 0.05 ? capped.moved[i]?.name : null)).filter(Boolean) : [];
  if (starved.length) {
    const wal = sum.use.spread.walBytes;
    notes.push(
      `in (b) pgmux sent (almost) no reads to ${starved.join(' and ')}: it held them out as down or lagging` +
        (wal != null && wal > 64 * 1024
          ? ` — the primary wrote ${fmtInt(wal / 1024)} kB of WAL during the run and no commits, so a replica a few kB behind looks as old as its last replayed commit to the max_lag_ms check`
          : ''),
    );
  } else if (sum.nodesBound.spread === false) {
    const cores = sum.use.spread.nodeCores;
    const atCap = cores.map((c) => c >= 0.85 * cap);
    const px = sum.use.spread.proxyCores;
    const shown = `${cores.map((c) => c.toFixed(2)).join(' / ')} of ${cap} cores`;
    if (atCap.some(Boolean)) {
      notes.push(
        `in (b) some nodes ran at their cap and others did not (${shown}): reads are split by weight (smooth weighted round-robin), not by how busy a node is, ` +
          `so the node that is slowest per transaction sets the pace and the others wait for work`,
      );
    } else {
      notes.push(
        `in (b) no node ran at its cap (${shown}): something else limited it` +
          (px != null && px > 0.8 ? ` — pgmux used ${px.toFixed(2)} cores, near the one core a single pgmux process can use` : ' (pgbench, pgmux, or the machine being busy)') +
          '; a lower --node-cpu makes the nodes the bottleneck again',
      );
    }
  }
  if (sum.nodesBound['primary-alone'] === false) notes.push(`in (a) the primary did not run at its cap (${sum.use['primary-alone'].nodeCores[0].toFixed(2)} of ${cap} cores)`);
  return notes;
}

export function consoleCapped(capped) {
  if (capped.skipped) return `Capped nodes: skipped (${capped.skipped})`;
  const head = ['capped nodes', 'tps', 'lat ms', '×(a)', 'node cores', 'node µs/txn', 'pgmux cores', '% per node', 'WAL kB'];
  const data = cappedRows(capped).map((r) => [r.label, r.tps, r.lat, r.xAlone, r.nodeCores, r.nodeUs, r.proxyCores, r.share, r.walKb]);
  const widths = head.map((h, i) => Math.max(h.length, ...data.map((d) => String(d[i]).length)));
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], (i > 0 && i < 4) || i === 5 || i === 6 || i === 8)).join('  ').trimEnd();
  const out = [
    `Capped nodes: ${capped.cpus} CPU per node (${capped.method})`,
    line(head),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...data.map(line),
    cappedVerdict(capped),
    ...cappedBottleneckNote(capped).map((n) => `note: ${n}`),
  ];
  return out.join('\n');
}

function cappedMarkdown(capped, options) {
  const L = [];
  L.push('## Capped nodes: reads spread over the replicas vs the primary alone');
  L.push('');
  if (!capped) {
    L.push('Not run (`--no-capped`).');
    L.push('');
    return L;
  }
  if (capped.skipped) {
    L.push(`Skipped: ${capped.skipped}. The scenario needs a writable cgroup cpu controller (cgroup v2 with \`cpu\` in cgroup.controllers, or a cgroup v1 cpu hierarchy), which normally means running as root.`);
    L.push('');
    return L;
  }
  const nodes = capped.moved.length;
  L.push(
    `On one machine, spreading reads cannot add capacity: every node takes its CPU from the same cores. Here each PostgreSQL node ` +
      `(primary + ${nodes - 1} replicas) is held to **${capped.cpus} CPU** by a cgroup CPU quota, as ${nodes} separate small machines would be: ` +
      `${capped.method}. Every process of each node's postmaster tree (${capped.moved.map((m) => `${m.name} ${m.processes}`).join(', ')} processes) ` +
      `was moved in before the scenario's connections were opened, so the backends they fork are born capped. pgmux and pgbench are not capped.`,
  );
  L.push('');
  L.push(
    `Workload: pgbench select-only, ${capped.clients} clients, simple protocol (\`${capped.workload}\`), ${capped.rounds} round${capped.rounds === 1 ? '' : 's'} of ${capped.seconds} s. ` +
      `Two pgmux instances against the same capped cluster, pool size ${capped.poolSize} per node (\`--capped-pool-size\`): ` +
      `(a) read weight 1 on the primary and 0 on the replicas, so every read goes to the primary; ` +
      `(b) weight 1 on every node, pgmux's normal routing. (a) and (b) swap order every round; straight to the capped primary (${capped.clients} backends) is the reference.`,
  );
  L.push('');
  L.push('| scenario | tps (median) | latency ms | × primary alone (a) | tps per round | node CPU used, cores (primary / replica 1 / replica 2) | node CPU µs/txn | pgmux CPU, cores | % on primary / replica 1 / replica 2 | WAL written by the primary, kB | note |');
  L.push('| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | --- |');
  for (const r of cappedRows(capped)) L.push(`| ${r.label} | ${r.tps} | ${r.lat} | ${r.xAlone} | ${r.perRound} | ${r.nodeCores} | ${r.nodeUs} | ${r.proxyCores} | ${r.share} | ${r.walKb} | ${mdCell(r.note)} |`);
  L.push('');
  L.push(`**${cappedVerdict(capped)}** (issue #5).`);
  L.push('');
  const sum = cappedSummary(capped);
  const bound = sum.nodesBound.spread && sum.nodesBound['primary-alone'];
  L.push(
    `*node CPU used*: user + system CPU of each node's process tree during the run (reaped backends included), divided by the run's wall time; ` +
      `at the cap it is ${capped.cpus}. *node CPU µs/txn*: all nodes' CPU over the transactions pgbench completed. ` +
      `*% on primary / replica*: from pg_stat_database as in the tables above (a few % can belong to the run before). ` +
      `*WAL written by the primary*: during the run; select-only should write none (before the scenario the bench waits for the replicas' feedback xmin, vacuums pgbench_accounts and checkpoints). ` +
      (bound
        ? `The nodes serving reads ran at (≥ 85 % of) their cap in both (a) and (b): the nodes were the bottleneck, not pgmux or pgbench. ` +
          `With every node at its cap, b/a = ${nodes} × (node CPU per transaction in (a)) / (in (b))` +
          (sum.use['primary-alone'].nodeUsPerTxn && sum.use.spread.nodeUsPerTxn
            ? `; here ${sum.use['primary-alone'].nodeUsPerTxn.toFixed(0)} vs ${sum.use.spread.nodeUsPerTxn.toFixed(0)} µs, so at most ${((nodes * sum.use['primary-alone'].nodeUsPerTxn) / sum.use.spread.nodeUsPerTxn).toFixed(2)}× ` +
              `(a transaction costing more in (b) is likely the machine: ${nodes} nodes busy at once share its caches and cores, where separate machines would not).`
            : '.')
        : ''),
  );
  L.push('');
  L.push(
    `Why the pool is small: under a CPU quota, the CPU a transaction costs grows with the number of busy backends per node ` +
      `(measured while choosing the defaults: at 0.25 CPU, 5 pgbench clients straight to a node ran at the cap at ~50 µs per transaction, 50 clients at ~130 µs with the node ` +
      `well under its cap: likely backends stopped by the quota while holding a lock, stalling the others). A node with a fraction of a CPU gains nothing from more than a couple ` +
      `of busy backends, so pgmux gets ${capped.poolSize} per node; the direct reference opens ${capped.clients} and shows that cost. ` +
      `The groups also get ten times the default CPU weight, so that other work on the machine cannot take a node's quota from it.`,
  );
  for (const n of cappedBottleneckNote(capped)) L.push(`- Note: ${n}.`);
  if (capped.throttle.some((t) => t.periods)) {
    L.push('');
    L.push(`Throttling over the scenario (cgroup cpu.stat): ${capped.throttle.map((t) => `${t.name} throttled in ${t.throttled} of ${t.periods} periods`).join('; ')}.`);
  }
  L.push('');
  return L;
}

/**
 * Issue #14's targets, each checked against this run's figures: [{ goal, value, met }]
 * (met null = not measured in this run). pgmux here is the `pgmux` target (primary alone, as
 * PgBouncer); pipelining is any pgmux-pipe* target that ran.
 */
export function issue14Checks(rows, memory, targets) {
  const get = (w, t) => {
    const s = rows.find((r) => r.workload === w && r.target === t)?.summary;
    return s && s.status === 'ok' ? s : null;
  };
  const out = [];
  const x = (v) => (v === null ? '—' : `${v.toFixed(2)}×`);
  const check = (goal, value, met) => out.push({ goal, value, met });
  for (const [w, title] of [['select-simple', 'select-only simple, 50 clients'], ['select-extended', 'select-only extended, 50 clients']]) {
    const m = get(w, 'pgmux');
    const b = get(w, 'pgbouncer');
    const r = m && b ? m.tps / b.tps : null;
    check(`${title}: pgmux ≥ 1.0× PgBouncer in tps`, `${x(r)} (${m ? fmtInt(m.tps) : '—'} vs ${b ? fmtInt(b.tps) : '—'} tps)`, r === null ? null : r >= 1);
    const c = m?.cpuUs != null && b?.cpuUs != null ? m.cpuUs / b.cpuUs : null;
    check(`${title}: pgmux proxy CPU/txn ≤ 1.0× PgBouncer's`, `${x(c)} (${fmt(m?.cpuUs ?? null, 1)} vs ${fmt(b?.cpuUs ?? null, 1)} µs)`, c === null ? null : c <= 1);
  }
  const d = get('select-simple', 'direct');
  const pipes = targets.filter((t) => /^pgmux-pipe\d+$/.test(t));
  if (pipes.length === 0) check('pipelining on, select-only simple: ≥ 1.0× direct', 'not run (add pgmux-pipe2,pgmux-pipe4,pgmux-pipe8 with --only)', null);
  for (const t of pipes) {
    const p = get('select-simple', t);
    const r = p && d ? p.tps / d.tps : null;
    const why = rows.find((q) => q.workload === 'select-simple' && q.target === t)?.summary;
    const value = !p && why && why.status !== 'ok' ? `${why.status}: ${why.reason ?? ''}` : `${x(r)} (${p ? fmtInt(p.tps) : '—'} vs ${d ? fmtInt(d.tps) : '—'} tps)`;
    check(`${TARGET_LABEL[t]}, select-only simple: ≥ 1.0× direct`, value, r === null ? null : r >= 1);
  }
  for (const w of ['churn', 'churn-scram']) {
    const m = get(w, 'pgmux');
    const b = get(w, 'pgbouncer');
    const r = m && b ? m.tps / b.tps : null;
    check(`${w}: pgmux ≥ 1.0× PgBouncer`, `${x(r)}; proxy CPU per connection ${fmt(m?.cpuUs ?? null, 0)} vs ${fmt(b?.cpuUs ?? null, 0)} µs`, r === null ? null : r >= 1);
  }
  {
    const m = get('c1000', 'pgmux');
    const b = get('c1000', 'pgbouncer');
    const r = m && b ? m.tps / b.tps : null;
    const failed = rows.find((q) => q.workload === 'c1000' && q.target === 'pgmux')?.summary;
    const f = failed?.failed ?? null;
    check('1000 clients over a pool of 20: pgmux ≥ 1.0× PgBouncer, 0 failed transactions', `${x(r)}; ${f === null ? (failed?.status && failed.status !== 'ok' ? failed.status : '—') : f} failed`, r === null ? null : r >= 1 && (f ?? 0) === 0 && failed.status === 'ok');
  }
  {
    const m = get('select-prepared', 'pgmux');
    const dd = get('select-prepared', 'direct');
    const r = m && dd ? m.tps / dd.tps : null;
    check('select-only prepared, transaction mode: pgmux ≥ 0.9× direct', x(r), r === null ? null : r >= 0.9);
  }
  {
    const ms = (memory ?? []).filter((m) => m.target === 'pgmux' && m.perClientBytes != null);
    const big = ms.sort((a, b) => b.clients - a.clients)[0];
    check(
      'memory per idle client ≤ 8 KiB (pgmux)',
      big ? `${fmtInt(big.perClientBytes)} B RSS, ${big.heapPerClientBytes != null ? fmtInt(big.heapPerClientBytes) : '—'} B V8 heap per client at ${big.clients} clients` : 'not measured',
      big ? big.perClientBytes <= 8192 : null,
    );
  }
  {
    const l = (t) => get('latency', t)?.latency ?? null;
    const [m, b, dd] = [l('pgmux'), l('pgbouncer'), l('direct')];
    const us = (v) => (v == null ? '—' : fmtInt(v));
    if (m && b && dd) {
      check('latency at a fixed rate: pgmux added p50 over direct ≤ PgBouncer\'s', `+${us(m.p50 - dd.p50)} vs +${us(b.p50 - dd.p50)} µs (direct ${us(dd.p50)})`, m.p50 - dd.p50 <= b.p50 - dd.p50);
      check('latency: pgmux p99 ≤ PgBouncer\'s', `${us(m.p99)} vs ${us(b.p99)} µs`, m.p99 <= b.p99);
      check('latency: pgmux p99.9 ≤ PgBouncer\'s', `${us(m.p999)} vs ${us(b.p999)} µs`, m.p999 <= b.p999);
    } else check('latency at a fixed rate (p50 added, p99, p99.9 vs PgBouncer)', 'not measured (needs latency with direct, pgbouncer, pgmux)', null);
  }
  return out;
}

function issue14Markdown(rows, memory, targets) {
  const checks = issue14Checks(rows, memory, targets);
  const L = ['## Issue #14 targets', ''];
  L.push('| target | this run | met |', '| --- | --- | --- |');
  for (const c of checks) L.push(`| ${mdCell(c.goal)} | ${mdCell(c.value)} | ${c.met === null ? '—' : c.met ? 'yes' : '**no**'} |`);
  L.push('');
  return L;
}

export function markdown(ctx) {
  const { date, rows, memory, machine, commands, configs, options, incidents, proxyLogs = [], workloads, targets, durationS, svgName, capped = null, targetInfo = {} } = ctx;
  const L = [];
  L.push(`# pgmux benchmark, ${date}`);
  L.push('');
  L.push(
    `${options.rounds} interleaved round${options.rounds === 1 ? '' : 's'} of ${options.seconds} s per workload and target` +
      `${options.quick ? ' (`--quick`: a smoke run, not figures to quote)' : ''}; pgbench scale ${options.scale}; ` +
      `pool size ${options.poolSize}; all on one ${machine.nproc}-core machine (clients, proxies and three PostgreSQL servers share the cores). ` +
      `The whole run took ${Math.round(durationS / 60)} min.`,
  );
  L.push('');
  L.push(`![ratio of tps to direct](${svgName})`);
  L.push('');
  if (Object.keys(targetInfo).length) {
    L.push('Targets: ' + targets.map((t) => `*${TARGET_LABEL[t]}* (${[targetInfo[t]?.version ?? 'not run', ...(targetInfo[t]?.config ?? []).map((c) => `\`${c}\``)].join('; ')})`).join(', ') + '.');
    L.push('');
  }
  L.push(...issue14Markdown(rows, memory, targets));
  L.push('## Throughput, latency, proxy CPU');
  L.push('');
  L.push('Median over the rounds. *% on primary / replica 1 / replica 2*: where the transactions ran, from pg_stat_database (xact_commit + xact_rollback of the bench database on each node, summed over the rounds; idle backends report their counts up to ~10 s late, so a few % can belong to the run before). *CPU µs/txn*: user + system CPU of the proxy (every process of it) during the run, divided by the transactions pgbench completed (n/a for direct: there is no proxy); for the `-C` workloads every transaction is a connection, so it is CPU per connection. *PostgreSQL µs/txn*: the same for every PostgreSQL node (each postmaster\'s whole process tree, backends that exited included), for every target: a proxy that makes the database do less work per query shows here. *×direct*, *×PgBouncer*, *×Pgpool-II*: median tps relative to the same workload straight against the primary, through PgBouncer, and through Pgpool-II. *pgmux* sits in front of the primary alone, as PgBouncer does; *pgmux routed* in front of all three nodes with reads spread over them, as Pgpool-II does; the other pgmux targets are pgmux in front of the primary alone with the settings named above.');
  L.push('');
  for (const w of workloads) {
    const wl = WORKLOADS[w];
    L.push(`### ${w}: ${wl.title}, ${wl.clients} clients${wl.rate ? `, -R ${wl.rate} tps` : ''}`);
    L.push('');
    const cpuHead = wl.perConnection ? 'proxy CPU µs per connection' : 'CPU µs/txn';
    const pgHead = wl.perConnection ? 'PostgreSQL CPU µs per connection' : 'PostgreSQL µs/txn';
    L.push(`| target | tps | latency ms | ${cpuHead} | ${pgHead} | × direct | × PgBouncer | × Pgpool-II | tps per round | % on primary / replica 1 / replica 2 | note |`);
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |');
    for (const r of rows.filter((x) => x.workload === w)) {
      L.push(`| ${TARGET_LABEL[r.target]} | ${r.tps} | ${r.lat} | ${r.cpu} | ${r.pgCpu} | ${r.xDirect} | ${r.xBouncer} | ${r.xPgpool} | ${r.perRound} | ${r.share} | ${mdCell(r.note)} |`);
    }
    L.push('');
    if (wl.latencyLog) {
      L.push(
        `Latency of every transaction (pgbench \`-l\`), all rounds together, in µs; at a fixed rate of ${wl.rate} tps over ${wl.clients} clients, so no target is saturated and tps is the rate for all. ` +
          `Measured from each transaction's scheduled start (pgbench's own convention under \`-R\`, so a late start counts). *added*: the target's percentile minus direct's.`,
      );
      L.push('');
      L.push('| target | p50 | p99 | p99.9 | max | added p50 | added p99 | added p99.9 | transactions | p50/p99 per round |');
      L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
      for (const l of latencyRows(rows, w)) L.push(`| ${l.label} | ${l.p50} | ${l.p99} | ${l.p999} | ${l.max} | ${l.addP50} | ${l.addP99} | ${l.addP999} | ${l.n} | ${l.perRound} |`);
      L.push('');
    }
    if (wl.writes) {
      const counted = rows.filter((x) => x.workload === w && x.summary.failed != null);
      if (counted.length)
        L.push(`pgbench's failed transactions (summed over the rounds): ${counted.map((x) => `${TARGET_LABEL[x.target]} ${x.summary.failed}`).join(', ')}.`, '');
    }
  }
  L.push(...cappedMarkdown(capped, options));
  L.push('## Memory: idle authenticated clients');
  L.push('');
  L.push('Each client connects, runs `SELECT 1` once (so it is authenticated and has been through a backend), then stays idle. RSS is VmRSS summed over every process of the proxy; *RSS bytes per client* = (RSS with the clients − RSS before) / clients. pgmux is a garbage-collected runtime whose RSS also moves with collections and with heap pages it has not given back: before each of its readings the bench forces a full collection through the inspector (opened with SIGUSR1 on the port named by `--inspect-port`, closed again before the workloads), and also reports *V8 heap bytes per client*, the growth of live JavaScript objects plus Buffers (heapUsed + external) per client, the steadier figure.');
  L.push('');
  if (memory.length === 0) L.push('(not measured in this run)');
  else {
    L.push('| target | clients held / asked | RSS before MiB | RSS with clients MiB | RSS bytes per client | V8 heap bytes per client | processes | note |');
    L.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
    for (const r of memoryRows(memory))
      L.push(`| ${r.target} | ${r.clients} / ${r.requested} | ${r.before} | ${r.after} | ${r.perClient} | ${r.heapPerClient} | ${r.processes} | ${mdCell(r.note)} |`);
  }
  L.push('');
  if (incidents.length) {
    L.push('## Incidents during the run');
    L.push('');
    for (const i of incidents) L.push(`- ${mdCell(i)}`);
    L.push('');
  }
  if (proxyLogs.length) {
    L.push('## What the proxies logged (warnings and errors)');
    L.push('');
    for (const l of proxyLogs) {
      L.push(`${l.label ?? TARGET_LABEL[l.target]}: ${l.count} line(s); distinct ones:`);
      L.push('');
      L.push('```');
      for (const x of l.lines) L.push(x);
      if (l.more) L.push(`… and ${l.more} more distinct lines`);
      L.push('```');
      L.push('');
    }
  }
  L.push('## Machine');
  L.push('');
  for (const [k, v] of Object.entries(machine)) if (k !== 'pgShort') L.push(`- ${k}: ${v}`);
  L.push('');
  L.push('## How it was run');
  L.push('');
  L.push('```');
  for (const c of commands) L.push(c);
  L.push('```');
  L.push('');
  for (const c of configs) {
    L.push(`<details><summary>${c.name}</summary>`);
    L.push('');
    L.push('```ini');
    L.push(c.text.trimEnd());
    L.push('```');
    L.push('');
    L.push('</details>');
    L.push('');
  }
  L.push('## Caveats');
  L.push('');
  L.push('- Everything runs on one small machine: the proxies compete with pgbench and with PostgreSQL for the same cores, so a proxy that uses more CPU per transaction also slows the servers down. Figures compare the proxies with each other on this machine; they are not capacity numbers.');
  L.push('- direct, PgBouncer and pgmux send every query to the primary. Pgpool-II (per session) and pgmux routed (per transaction) spread select-only work over the primary and the two replicas; on one machine that buys no extra CPU, and three servers sharing two cores and their caches cost more per transaction than one (the capped-nodes section measures what routing buys when each node has CPU of its own).');
  L.push(`- Pool sizes: PgBouncer and pgmux keep up to ${options.poolSize} server connections to the primary; pgmux routed up to ${options.poolSize} per node; Pgpool-II has one process per client (num_init_children = ${options.pgpoolChildren}), each connected to every node.`);
  L.push('- Before every TPC-B-like run the primary is vacuumed (pgbench_branches, pgbench_tellers) and pgbench_history truncated, as pgbench itself would do without `-n`.');
  if (!targets.includes('direct')) L.push('- direct was left out (`--only`): no ratios to direct.');
  L.push('');
  return L.join('\n');
}

const COLORS = {
  pgbouncer: '#4e79a7',
  pgpool: '#f28e2b',
  pgmux: '#2ca25f',
  'pgmux-routed': '#99d8c9',
  direct: '#9e9e9e',
  'pgmux-std-io': '#a1d99b',
  'pgmux-pipe2': '#74c476',
  'pgmux-pipe4': '#31a354',
  'pgmux-pipe8': '#006d2c',
  'pgmux-node24': '#e377c2',
};

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Grouped bars: for each workload, one bar per proxy with its tps relative to direct. */
export function svgChart({ results, workloads: all, targets, date, machine, quick, capped = null }) {
  // At a fixed rate (latency) every target's tps is the rate: no bars for it.
  const workloads = all.filter((w) => !WORKLOADS[w]?.rate);
  const proxies = targets.filter((t) => t !== 'direct');
  // Wide enough that each workload's name fits under its bars.
  const W = Math.max(980, 90 + workloads.length * 125);
  const H0 = 520; // the ratio chart; the capped-nodes panel (when run or skipped) goes below it
  const H = H0 + (capped ? (capped.skipped ? CAPPED_PANEL_SKIPPED : CAPPED_PANEL) : 0);
  const m = { left: 70, right: 20, top: 92, bottom: 96 };
  const plotW = W - m.left - m.right;
  const plotH = H0 - m.top - m.bottom;
  const cells = workloads.map((w) => {
    const sums = Object.fromEntries(targets.map((t) => [t, summarize(results[w]?.[t])]));
    return { w, sums, ratios: Object.fromEntries(proxies.map((t) => [t, ratio(sums[t], sums.direct)])) };
  });
  const maxRatio = Math.max(1.2, ...cells.flatMap((c) => Object.values(c.ratios).filter((x) => x !== null)));
  // Connection churn can put a pooler at 10x direct: the axis stops at 2x and taller bars
  // are drawn broken, with their value, so the bars near 1x stay readable.
  const Y_CAP = 2;
  const yMax = maxRatio * 1.1 > Y_CAP ? Y_CAP + 0.25 : Math.ceil(maxRatio * 1.1 * 4) / 4;
  const y = (v) => m.top + plotH - (v / yMax) * plotH;
  const groupW = plotW / Math.max(1, workloads.length);
  const barW = Math.min(46, (groupW * 0.8) / Math.max(1, proxies.length));
  const s = [];
  s.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`);
  s.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  s.push(`<text x="${m.left}" y="30" font-size="20" font-weight="bold" fill="#222">Throughput relative to PostgreSQL direct (higher is better)</text>`);
  s.push(
    `<text x="${m.left}" y="52" font-size="13" fill="#555">${esc(
      `median tps of each proxy ÷ median tps straight to the primary · ${date} · ${machine.nproc} cores, PostgreSQL ${machine.pgShort}${quick ? ' · quick smoke run' : ''}`,
    )}</text>`,
  );
  // Legend.
  let lx = m.left;
  for (const t of proxies) {
    s.push(`<rect x="${lx}" y="64" width="14" height="14" fill="${(COLORS[t] ?? '#bcbd22')}"/>`);
    s.push(`<text x="${lx + 20}" y="76" font-size="13" fill="#222">${esc(TARGET_LABEL[t])}</text>`);
    lx += 40 + TARGET_LABEL[t].length * 8;
  }
  // Grid and axis.
  for (let v = 0; v <= Math.min(yMax, Y_CAP) + 1e-9; v += 0.25) {
    const yy = y(v).toFixed(1);
    const major = Math.abs(v - Math.round(v * 2) / 2) < 1e-9;
    s.push(`<line x1="${m.left}" x2="${W - m.right}" y1="${yy}" y2="${yy}" stroke="${major ? '#ddd' : '#f0f0f0'}"/>`);
    if (major) s.push(`<text x="${m.left - 8}" y="${(+yy + 4).toFixed(1)}" font-size="12" text-anchor="end" fill="#666">${v.toFixed(1)}×</text>`);
  }
  if (targets.includes('direct')) {
    s.push(`<line x1="${m.left}" x2="${W - m.right}" y1="${y(1).toFixed(1)}" y2="${y(1).toFixed(1)}" stroke="#333" stroke-width="1.5" stroke-dasharray="6 4"/>`);
    s.push(`<text x="${W - m.right - 4}" y="${(y(1) - 6).toFixed(1)}" font-size="12" text-anchor="end" fill="#333">direct = 1.0×</text>`);
  }
  s.push(`<line x1="${m.left}" x2="${W - m.right}" y1="${y(0)}" y2="${y(0)}" stroke="#888"/>`);
  cells.forEach((c, gi) => {
    const gx = m.left + gi * groupW;
    const x0 = gx + (groupW - barW * proxies.length) / 2;
    proxies.forEach((t, bi) => {
      const bx = x0 + bi * barW;
      const r = c.ratios[t];
      if (r !== null) {
        const broken = r > yMax;
        const top = y(Math.min(r, yMax));
        s.push(`<rect x="${(bx + 2).toFixed(1)}" y="${top.toFixed(1)}" width="${(barW - 4).toFixed(1)}" height="${(y(0) - top).toFixed(1)}" fill="${(COLORS[t] ?? '#bcbd22')}"><title>${esc(`${TARGET_LABEL[t]} ${c.w}: ${Math.round(c.sums[t].tps)} tps, ${r.toFixed(2)}× direct`)}</title></rect>`);
        if (broken) {
          // Two white slashes across the bar: it goes on beyond the axis.
          const yb = y(yMax - 0.35);
          for (const dy of [0, 7]) {
            s.push(`<line x1="${(bx + 1).toFixed(1)}" x2="${(bx + barW - 1).toFixed(1)}" y1="${(yb + dy + 4).toFixed(1)}" y2="${(yb + dy - 4).toFixed(1)}" stroke="#fff" stroke-width="3"/>`);
          }
        }
        if (broken) {
          // Side by side, the labels of tall bars would run into each other: written up the
          // bar, below the slashes.
          const lx = (bx + barW / 2 + 4).toFixed(1);
          const ly = (y(yMax - 0.35) + 16).toFixed(1);
          s.push(`<text x="${lx}" y="${ly}" font-size="12" font-weight="bold" text-anchor="end" fill="#fff" transform="rotate(-90 ${lx} ${ly})">${r.toFixed(2)}×</text>`);
        } else {
          s.push(`<text x="${(bx + barW / 2).toFixed(1)}" y="${(top - 4).toFixed(1)}" font-size="11" text-anchor="middle" fill="#222">${r.toFixed(2)}</text>`);
        }
      } else {
        const st = c.sums[t];
        const label = st.status === 'ok' ? 'no direct' : st.status === 'fails' ? 'fails' : st.status === 'n/a' ? 'n/a' : 'not run';
        const cx = bx + barW / 2;
        s.push(`<rect x="${(bx + 2).toFixed(1)}" y="${(y(0) - 3).toFixed(1)}" width="${(barW - 4).toFixed(1)}" height="3" fill="${(COLORS[t] ?? '#bcbd22')}" opacity="0.5"/>`);
        s.push(`<text x="${cx.toFixed(1)}" y="${(y(0) - 8).toFixed(1)}" font-size="11" text-anchor="start" fill="#b00" transform="rotate(-90 ${cx.toFixed(1)} ${(y(0) - 8).toFixed(1)})">${esc(label)}</text>`);
      }
    });
    const cx = gx + groupW / 2;
    s.push(`<text x="${cx.toFixed(1)}" y="${(y(0) + 20).toFixed(1)}" font-size="13" font-weight="bold" text-anchor="middle" fill="#222">${esc(c.w)}</text>`);
    s.push(`<text x="${cx.toFixed(1)}" y="${(y(0) + 36).toFixed(1)}" font-size="11" text-anchor="middle" fill="#666">${esc(`${WORKLOADS[c.w].clients} clients`)}</text>`);
    const d = c.sums.direct;
    const dl = d && d.status === 'ok' ? `direct ${Math.round(d.tps).toLocaleString('en-US')} tps` : d && d.status !== 'skipped' ? `direct ${d.status}` : '';
    if (dl) s.push(`<text x="${cx.toFixed(1)}" y="${(y(0) + 51).toFixed(1)}" font-size="11" text-anchor="middle" fill="#666">${esc(dl)}</text>`);
  });
  s.push(`<text x="${m.left}" y="${H0 - 14}" font-size="11" fill="#888">Proxies, pgbench and the primary + 2 replicas share one machine; see the .md file next to this chart for tps, latency, CPU per transaction and memory.</text>`);
  if (capped) s.push(...cappedPanel(capped, H0, W, m.left, m.right));
  s.push('</svg>');
  return s.join('\n') + '\n';
}

const CAPPED_PANEL = 200;
const CAPPED_PANEL_SKIPPED = 80;
const CAPPED_COLORS = { direct: '#9e9e9e', 'primary-alone': '#a1d99b', spread: '#2ca25f' };

/** Below the ratio chart: tps of the three capped-nodes runs as horizontal bars, and b/a. */
function cappedPanel(capped, top, W, left, right) {
  const s = [];
  s.push(`<line x1="${left}" x2="${W - right}" y1="${top + 4}" y2="${top + 4}" stroke="#ccc"/>`);
  const title = capped.skipped
    ? `Capped nodes (each PostgreSQL node held to ${capped.cpus} CPU): not run`
    : `Capped nodes: each PostgreSQL node held to ${capped.cpus} CPU by a cgroup quota`;
  s.push(`<text x="${left}" y="${top + 32}" font-size="18" font-weight="bold" fill="#222">${esc(title)}</text>`);
  if (capped.skipped) {
    s.push(`<text x="${left}" y="${top + 56}" font-size="13" fill="#b00">${esc(`skipped: ${capped.skipped}`)}</text>`);
    return s;
  }
  const sum = cappedSummary(capped);
  const verdict = cappedVerdict(capped);
  s.push(
    `<text x="${left}" y="${top + 54}" font-size="13" fill="#555">${esc(`pgbench select-only, ${capped.clients} clients, simple protocol; pgmux pool ${capped.poolSize} per node; median tps · `)}` +
      `<tspan font-weight="bold" fill="${sum.met ? '#1a7f37' : '#b00'}">${esc(verdict)}</tspan></text>`,
  );
  const labelW = 300;
  const x0 = left + labelW;
  const maxW = W - right - 170 - x0;
  const keys = Object.keys(CAPPED_VARIANTS);
  const maxTps = Math.max(1, ...keys.map((k) => (sum.s[k].status === 'ok' ? sum.s[k].tps : 0)));
  keys.forEach((k, i) => {
    const yy = top + 72 + i * 38;
    const st = sum.s[k];
    s.push(`<text x="${x0 - 10}" y="${yy + 17}" font-size="13" text-anchor="end" fill="#222">${esc(CAPPED_VARIANTS[k].label)}</text>`);
    if (st.status !== 'ok') {
      s.push(`<text x="${x0 + 4}" y="${yy + 17}" font-size="12" fill="#b00">${esc(st.status)}</text>`);
      return;
    }
    const w = Math.max(1, (st.tps / maxTps) * maxW);
    const x = k === 'primary-alone' ? '' : ` · ${(st.tps / (sum.s['primary-alone'].tps || NaN)).toFixed(2)}× (a)`;
    s.push(`<rect x="${x0}" y="${yy}" width="${w.toFixed(1)}" height="24" fill="${CAPPED_COLORS[k]}"><title>${esc(`${CAPPED_VARIANTS[k].label}: ${Math.round(st.tps)} tps`)}</title></rect>`);
    s.push(`<text x="${(x0 + w + 6).toFixed(1)}" y="${yy + 17}" font-size="12" fill="#222">${esc(`${fmtInt(st.tps)} tps${x.includes('NaN') ? '' : x}`)}</text>`);
  });
  return s;
}
