// deploy/grafana/pgmux-dashboard.json asks only for series pgmux exports, with labels they
// have, through the dashboard's data source variable: a renamed metric or label fails here
// instead of leaving an empty panel. docs/operations.md lists every series.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ServerView } from '../../src/admin/view.js';
import { createMetrics } from '../../src/observability/metrics.js';

const ROOT = join(import.meta.dirname, '..', '..');

interface Target {
  expr: string;
  datasource?: { uid?: string };
}
interface Panel {
  type: string;
  title: string;
  datasource?: { uid?: string };
  targets?: Target[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query: string };
  datasource?: { uid?: string };
}

const dashboard = JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/pgmux-dashboard.json'), 'utf8')) as {
  panels: Panel[];
  templating: { list: Variable[] };
};
const panels = dashboard.panels.filter((p) => p.type !== 'row');
const variables = dashboard.templating.list;

/** Every PromQL expression in the dashboard: panel targets and variable queries. */
const expressions = [
  ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
  ...variables.filter((v) => v.type === 'query').map((v) => (typeof v.query === 'string' ? v.query : v.query!.query)),
];

/** Exported series name -> its labels; a histogram gives its _bucket (plus le), _sum and _count. */
function exportedSeries(): Map<string, Set<string>> {
  // Registering reads nothing from the view: only a scrape does.
  const { registry } = createMetrics({} as ServerView);
  const out = new Map<string, Set<string>>();
  for (const m of registry.getMetricsAsArray() as unknown as Array<{ name: string; type?: string; labelNames?: readonly string[] }>) {
    const labels = new Set(m.labelNames ?? []);
    if (m.type === 'histogram') {
      out.set(`${m.name}_bucket`, new Set([...labels, 'le']));
      out.set(`${m.name}_sum`, labels);
      out.set(`${m.name}_count`, labels);
    } else out.set(m.name, labels);
  }
  return out;
}

describe('Grafana dashboard', () => {
  const exported = exportedSeries();

  it('uses only metric names pgmux exports, with labels they have', () => {
    const used = new Set<string>();
    for (const expr of expressions) {
      for (const m of expr.matchAll(/\b(pgmux_[a-z0-9_]+)(\{([^}]*)\})?/g)) {
        const name = m[1]!;
        used.add(name);
        expect(exported.has(name), `${name} in ${expr}`).toBe(true);
        for (const sel of (m[3] ?? '').matchAll(/([a-z_]+)\s*(=~|!~|!=|=)/g)) expect(exported.get(name)!.has(sel[1]!), `label ${sel[1]} of ${name} in ${expr}`).toBe(true);
      }
      // Labels grouped by must be on at least one series of the expression.
      const names = [...expr.matchAll(/\b(pgmux_[a-z0-9_]+)/g)].map((m) => m[1]!);
      for (const by of expr.matchAll(/\bby \(([^)]*)\)/g)) {
        for (const label of by[1]!.split(',').map((s) => s.trim())) {
          expect(names.some((n) => exported.get(n)?.has(label)), `by (${label}) in ${expr}`).toBe(true);
        }
      }
    }
    // What the dashboard is for: traffic, latency, pools, errors, nodes, connects.
    for (const name of [
      'pgmux_transactions_total',
      'pgmux_queries_total',
      'pgmux_query_duration_seconds_bucket',
      'pgmux_transaction_duration_seconds_bucket',
      'pgmux_client_wait_seconds_bucket',
      'pgmux_pool_clients',
      'pgmux_pool_backends',
      'pgmux_client_errors_total',
      'pgmux_node_role',
      'pgmux_node_lag_seconds',
      'pgmux_backend_connects_total',
    ]) {
      expect(used.has(name), name).toBe(true);
    }
  });

  it('queries through its data source variable', () => {
    const ds = variables.find((v) => v.type === 'datasource');
    expect(ds).toBeDefined();
    expect(ds!.query).toBe('prometheus');
    const ref = '${' + ds!.name + '}';
    for (const p of panels) {
      expect(p.datasource?.uid, p.title).toBe(ref);
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe(ref);
    }
    for (const v of variables.filter((x) => x.type === 'query')) expect(v.datasource?.uid, v.name).toBe(ref);
  });

  it('has latency quantiles from the histograms', () => {
    for (const h of ['pgmux_query_duration_seconds', 'pgmux_transaction_duration_seconds', 'pgmux_client_wait_seconds']) {
      for (const q of ['0.5', '0.99']) expect(expressions.some((e) => e.includes(`histogram_quantile(${q},`) && e.includes(`${h}_bucket`)), `${h} p${q}`).toBe(true);
    }
  });
});

describe('docs/operations.md', () => {
  it('lists every pgmux_* series pgmux registers', () => {
    const docs = readFileSync(join(ROOT, 'docs/operations.md'), 'utf8');
    const { registry } = createMetrics({} as ServerView);
    const missing = registry.getMetricsAsArray().map((m) => m.name).filter((n) => n.startsWith('pgmux_') && !docs.includes('`' + n + '`'));
    expect(missing).toEqual([]);
  });
});

