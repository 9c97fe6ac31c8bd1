// Prometheus metrics: a private prom-client Registry with the default process metrics plus
// the pgmux_* series. Nothing here runs per transaction: every pgmux_* value is read from
// the ServerView's plain counters and snapshots when /metrics is scraped (collect()).
//
// Labels come from closed or bounded sets only: node = a configured host:port, state = a
// client or backend state, route = read|write, role = primary|replica|unknown, node state =
// one of NODE_STATES, sqlstate_class = two characters of [0-9A-Z]. database and user are
// the pairs the traffic statistics keep (at most maxPairs of them; the rest are folded into
// "(other)"), so a client cannot grow the series without bound.

import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Metric } from 'prom-client';
import type { ServerView } from '../admin/view.js';
import { isHealthy, type NodeState } from '../cluster/snapshot.js';
import { DURATION_BUCKETS_US, type TrafficRecord } from './trafficStats.js';

export interface PgmuxMetrics {
  registry: Registry;
  /** The Prometheus text exposition format (version 0.0.4). */
  render(): Promise<string>;
  /** Content-Type of render()'s output. */
  readonly contentType: string;
}

const CLIENT_STATES = ['startup', 'auth', 'login', 'idle', 'waiting', 'linked', 'admin'] as const;
const SERVER_STATES = ['connecting', 'idle', 'linked', 'internal'] as const;
const ROLES = ['primary', 'replica', 'unknown'] as const;
const NODE_STATES = ['up', 'lagging', 'down', 'fenced', 'diverged', 'misconfigured'] as const satisfies readonly NodeState[];

interface Sample {
  metricName?: string;
  labels: Record<string, string | number>;
  value: number;
}

/** One labelled series of an AggregateHistogram: per-slot (not cumulative) bucket counts. */
interface HistogramSeries {
  labels: Record<string, string>;
  bucketsUpperBounds: readonly number[];
  bucketCounts: ArrayLike<number>;
  sum: number;
  count: number;
}

/**
 * A histogram whose buckets come from aggregates kept elsewhere (prom-client's Histogram
 * can only observe single values). Registered with registry.registerMetric(); prom-client
 * renders whatever get() returns.
 */
class AggregateHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    /** The labels of its series besides `le` (prom-client's metrics have the same field). */
    readonly labelNames: readonly string[],
    private readonly read: () => HistogramSeries[],
  ) {}

  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: Sample[] }> {
    const values: Sample[] = [];
    for (const h of this.read()) {
      let cumulative = 0;
      h.bucketsUpperBounds.forEach((le, i) => {
        cumulative += h.bucketCounts[i] ?? 0;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...h.labels, le }, value: cumulative });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...h.labels, le: '+Inf' }, value: h.count });
      values.push({ metricName: `${this.name}_sum`, labels: h.labels, value: h.sum });
      values.push({ metricName: `${this.name}_count`, labels: h.labels, value: h.count });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }

  reset(): void {}
}

export function createMetrics(view: ServerView): PgmuxMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  /** The configured nodes' names, plus any a reload removed that still have counts. */
  const nodeNames = (): string[] => {
    const names = view.config().nodes.map((n) => `${n.host}:${n.port}`);
    for (const n of view.topology().nodes) if (!names.includes(n.name)) names.push(n.name);
    return names;
  };

  const gauge = (name: string, help: string, labelNames: string[], fill: (g: Gauge) => void): void => {
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill(this);
      },
    });
  };

  /** A counter whose value is read from the view (reset + inc to the current total). */
  const counter = (name: string, help: string, labelNames: string[], fill: (set: (labels: Record<string, string>, v: number) => void) => void): void => {
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill((labels, v) => this.inc(labels, Math.max(0, v)));
      },
    });
  };

  const scalarCounter = (name: string, help: string, read: () => number): void =>
    counter(name, help, [], (set) => set({}, read()));

  gauge('pgmux_client_connections', 'Client connections by state.', ['state'], (g) => {
    const by = new Map<string, number>(CLIENT_STATES.map((s) => [s, 0]));
    for (const c of view.clients()) if (by.has(c.state)) by.set(c.state, by.get(c.state)! + 1);
    for (const [state, n] of by) g.set({ state }, n);
  });

  gauge('pgmux_server_connections', 'Backend connections by node and state.', ['node', 'state'], (g) => {
    const names = nodeNames();
    const by = new Map<string, number>();
    for (const node of names) for (const s of SERVER_STATES) by.set(`${node}\0${s}`, 0);
    for (const b of view.backends()) {
      const k = `${b.node}\0${b.state}`;
      if (by.has(k)) by.set(k, by.get(k)! + 1);
    }
    for (const [k, n] of by) {
      const [node, state] = k.split('\0') as [string, string];
      g.set({ node, state }, n);
    }
  });

  gauge('pgmux_pool_waiting_clients', 'Clients waiting in a pool\'s queue for a backend, by node, database and user.', ['node', 'database', 'user'], (g) => {
    const traffic = view.trafficStats();
    for (const p of view.pools()) {
      const l = traffic.labelsFor(p.database, p.user);
      g.inc({ node: p.node, database: l.database, user: l.user }, p.stats.waiting);
    }
  });

  registry.registerMetric(
    new AggregateHistogram('pgmux_pool_wait_seconds', 'Time transactions waited for a backend.', [], () => {
      const c = view.counters();
      return [
        {
          labels: {},
          bucketsUpperBounds: c.waitBucketsMs.map((ms) => ms / 1000),
          bucketCounts: c.waitBucketCounts,
          sum: c.waitMsSum / 1000,
          count: c.waitCount,
        },
      ];
    }) as unknown as Metric,
  );

  // Per (database, user) pair: from the traffic records, read at scrape time.
  const pairs = (): TrafficRecord[] => view.trafficStats().records();
  const pairLabels = (r: TrafficRecord): Record<string, string> => ({ database: r.database, user: r.user });
  const pairCounter = (name: string, help: string, read: (r: TrafficRecord) => number): void =>
    counter(name, help, ['database', 'user'], (set) => {
      for (const r of pairs()) set(pairLabels(r), read(r));
    });
  const BOUNDS_SECONDS = DURATION_BUCKETS_US.map((us) => us / 1e6);
  const pairHistogram = (name: string, help: string, buckets: (r: TrafficRecord) => Float64Array, sumUs: (r: TrafficRecord) => number): void => {
    registry.registerMetric(
      new AggregateHistogram(name, help, ['database', 'user'], () =>
        pairs().map((r) => {
          const b = buckets(r);
          let count = 0;
          for (let i = 0; i < b.length; i++) count += b[i]!;
          return { labels: pairLabels(r), bucketsUpperBounds: BOUNDS_SECONDS, bucketCounts: b, sum: sumUs(r) / 1e6, count };
        }),
      ) as unknown as Metric,
    );
  };

  pairCounter('pgmux_queries_total', 'Requests answered with ReadyForQuery (a simple Query, or an extended-protocol batch up to Sync), by database and user.', (r) => r.queries);
  pairCounter('pgmux_transactions_total', 'Transactions ended (COMMIT/ROLLBACK, or a statement outside a transaction block), by database and user.', (r) => r.xacts);
  pairCounter('pgmux_server_assignments_total', 'Times a backend was linked to a client, by database and user.', (r) => r.serverAssignments);
  pairCounter('pgmux_client_bytes_received_total', 'Bytes received from logged-in clients, by database and user.', (r) => r.bytesReceived);
  pairCounter('pgmux_client_bytes_sent_total', 'Bytes forwarded from backends to logged-in clients, by database and user.', (r) => r.bytesSent);
  pairCounter('pgmux_client_parses_total', 'Parse messages from clients (including those pgmux answered itself), by database and user.', (r) => r.clientParses);
  pairCounter('pgmux_server_parses_total', 'Parse messages sent to backends, by database and user.', (r) => r.serverParses);
  pairCounter('pgmux_binds_total', 'Bind messages from clients, by database and user.', (r) => r.binds);
  pairHistogram('pgmux_query_duration_seconds', 'Time from a request forwarded to its ReadyForQuery, by database and user.', (r) => r.queryBuckets, (r) => r.queryTimeUs);
  pairHistogram('pgmux_transaction_duration_seconds', 'Time from a transaction\'s first request forwarded to its end, by database and user.', (r) => r.xactBuckets, (r) => r.xactTimeUs);
  pairHistogram('pgmux_client_wait_seconds', 'Time clients waited for a backend (routing to backend linked), by database and user.', (r) => r.waitBuckets, (r) => r.waitTimeUs);

  counter('pgmux_client_errors_total', 'ErrorResponses sent to clients (from backends, and pgmux\'s own FATALs), by database, user and SQLSTATE class.', ['database', 'user', 'sqlstate_class'], (set) => {
    for (const r of pairs()) for (const [cls, n] of r.errorsByClass) set({ ...pairLabels(r), sqlstate_class: cls }, n);
  });
  scalarCounter('pgmux_stats_folded_logins_total', 'Logins counted under database="(other)", user="(other)" because the (database, user) pair bound was reached.', () => view.trafficStats().folds);

  gauge('pgmux_build_info', 'pgmux build: version and the Node.js version, value 1.', ['version', 'node_version'], (g) => g.set({ version: view.version, node_version: process.version }, 1));

  gauge('pgmux_pool_clients', 'Logged-in clients by database, user and state (idle: between transactions, active: linked to a backend, waiting: for a backend).', ['database', 'user', 'state'], (g) => {
    const traffic = view.trafficStats();
    const by = new Map<string, number>();
    for (const c of view.clients()) {
      const state = c.state === 'linked' ? 'active' : c.state === 'idle' || c.state === 'waiting' ? c.state : null;
      if (state === null) continue;
      const l = traffic.labelsFor(c.database, c.user);
      const k = `${l.database}\0${l.user}`;
      if (!by.has(k)) for (const s of ['idle', 'active', 'waiting']) by.set(`${k}\0${s}`, 0);
      by.set(`${k}\0${state}`, by.get(`${k}\0${state}`)! + 1);
    }
    for (const [k, n] of by) {
      const [database, user, state] = k.split('\0') as [string, string, string];
      g.set({ database, user, state }, n);
    }
  });

  gauge('pgmux_pool_backends', 'Backends by node, database, user and state (active: linked or running pgmux\'s own query, idle, connecting).', ['node', 'database', 'user', 'state'], (g) => {
    const traffic = view.trafficStats();
    for (const p of view.pools()) {
      const l = traffic.labelsFor(p.database, p.user);
      const labels = { node: p.node, database: l.database, user: l.user };
      g.inc({ ...labels, state: 'active' }, p.stats.active);
      g.inc({ ...labels, state: 'idle' }, p.stats.idle);
      g.inc({ ...labels, state: 'connecting' }, p.stats.connecting);
    }
  });

  counter('pgmux_node_transactions_total', 'Transactions routed, by node and route (read|write).', ['node', 'route'], (set) => {
    const tx = view.counters().transactions;
    const names = nodeNames();
    for (const k of tx.keys()) if (!names.includes(k)) names.push(k);
    for (const node of names) {
      const t = tx.get(node) ?? { read: 0, write: 0 };
      set({ node, route: 'read' }, t.read);
      set({ node, route: 'write' }, t.write);
    }
  });


  scalarCounter('pgmux_bytes_received_total', 'Bytes received from clients.', () => view.counters().bytesIn);
  scalarCounter('pgmux_bytes_sent_total', 'Bytes sent to clients.', () => view.counters().bytesOut);
  scalarCounter('pgmux_failovers_total', 'Primary changes followed.', () => view.counters().failovers);
  scalarCounter(
    'pgmux_backend_resets_total',
    'Backends reset with server_reset_query before another client got them (a pinned client left, or session mode).',
    () => view.counters().backendResets,
  );
  scalarCounter(
    'pgmux_backend_connect_failures_total',
    'Failed attempts to connect to and log in to a node (each attempt; retries back off up to server_login_retry).',
    () => view.counters().backendConnectFailures,
  );
  scalarCounter('pgmux_backend_connects_total', 'Attempts to connect to and log in to a node (failures are also in pgmux_backend_connect_failures_total).', () => view.counters().backendConnects);
  scalarCounter('pgmux_read_retries_total', 'Reads re-run on another node after theirs failed.', () => view.counters().readRetries);
  scalarCounter('pgmux_pipelined_total', 'Requests written to a busy backend behind another client\'s (pipeline_depth, experimental).', () => view.counters().pipelined);
  scalarCounter('pgmux_query_cache_hits_total', 'Requests answered from the query cache (query_cache).', () => view.queryCache.stats().hits);
  scalarCounter('pgmux_query_cache_misses_total', 'Cacheable requests the query cache had no fresh entry for.', () => view.queryCache.stats().misses);
  scalarCounter('pgmux_query_cache_evictions_total', 'Query cache entries dropped to stay within query_cache_size.', () => view.queryCache.stats().evictions);
  scalarCounter('pgmux_query_cache_invalidations_total', 'Query cache entries dropped because a write or CACHE CLEAR made them stale.', () => view.queryCache.stats().invalidations);
  gauge('pgmux_query_cache_bytes', 'Bytes held by the query cache.', [], (g) => g.set(view.queryCache.stats().bytes));
  gauge('pgmux_query_cache_entries', 'Entries in the query cache.', [], (g) => g.set(view.queryCache.stats().entries));
  scalarCounter('pgmux_classifier_cache_hits_total', 'Read/write classifier cache hits.', () => view.classifierStats().hits);
  scalarCounter('pgmux_classifier_cache_misses_total', 'Read/write classifier cache misses.', () => view.classifierStats().misses);
  scalarCounter('pgmux_client_logins_total', 'Successful client logins.', () => view.counters().clientLogins);
  scalarCounter('pgmux_client_login_failures_total', 'Failed client logins.', () => view.counters().clientLoginFailures);
  scalarCounter('pgmux_proxy_header_refusals_total', 'Connections refused for a PROXY protocol header (missing from a trusted sender, malformed, or from an untrusted one).', () => view.counters().proxyHeaderRefusals);

  gauge('pgmux_node_up', '1 when the node answers health checks and belongs to the cluster (state up or lagging).', ['node'], (g) => {
    for (const n of view.topology().nodes) g.set({ node: n.name }, isHealthy(n.state) ? 1 : 0);
  });

  gauge('pgmux_node_state', '1 for the state the node is in now (up, lagging, down, fenced, diverged, misconfigured).', ['node', 'state'], (g) => {
    for (const n of view.topology().nodes) for (const state of NODE_STATES) g.set({ node: n.name, state }, n.state === state ? 1 : 0);
  });

  counter('pgmux_replica_lag_exclusions_total', 'Times a replica was taken out of reads for being over its lag limits.', ['node'], (set) => {
    for (const n of view.topology().nodes) set({ node: n.name }, n.lagExclusions);
  });

  gauge('pgmux_primary_missing_seconds', 'Seconds since the primary was lost (0 while there is one); replicas serve reads meanwhile, up to read_without_primary_timeout.', [], (g) => {
    const lost = view.topology().primaryLostAt;
    g.set(lost === null ? 0 : Math.max(0, (Date.now() - lost) / 1000));
  });

  gauge('pgmux_node_role', '1 for the role the node has now (last known while down).', ['node', 'role'], (g) => {
    for (const n of view.topology().nodes) for (const role of ROLES) g.set({ node: n.name, role }, n.role === role ? 1 : 0);
  });

  gauge('pgmux_node_lag_bytes', 'Replica replay lag behind the primary in bytes (absent when not measurable).', ['node'], (g) => {
    for (const n of view.topology().nodes) if (n.lagBytes !== null) g.set({ node: n.name }, n.lagBytes);
  });

  gauge('pgmux_node_lag_seconds', 'How stale the replica data is, in seconds (absent when not measurable).', ['node'], (g) => {
    for (const n of view.topology().nodes) if (n.lagMs !== null) g.set({ node: n.name }, n.lagMs / 1000);
  });

  gauge('pgmux_config_version', 'Configuration version: increases with every successful reload.', [], (g) => g.set(view.configVersion()));
  new Gauge({
    name: 'pgmux_peers_live',
    help: 'Live pgmux instances (this one and peers that answered a probe lately); peer_budgets divides the limits by it.',
    registers: [registry],
    // --workers: every worker counts the same instances; the supervisor's sum would multiply them.
    aggregator: 'max',
    collect() {
      this.set(view.peerCounts().live);
    },
  });
  new Gauge({
    name: 'pgmux_node_database_connections',
    help: "Client connections per node and database at the node's last health check (pg_stat_activity), whoever made them: every pgmux instance and other applications.",
    labelNames: ['node', 'database'],
    registers: [registry],
    // --workers: every worker's monitor sees the same nodes; a sum would multiply them.
    aggregator: 'max',
    collect() {
      this.reset();
      for (const c of view.nodeConnectionsSeen()) this.set({ node: c.node, database: c.database }, c.connections);
    },
  });
  counter('pgmux_peer_cancels_total', 'CancelRequests for another instance\'s key: forwarded to a peer, or dropped (already forwarded once, unknown peer id).', ['result'], (set) => {
    const p = view.peerCounts();
    set({ result: 'forwarded' }, p.cancelsForwarded);
    set({ result: 'dropped' }, p.cancelsDropped);
  });
  gauge('pgmux_paused', '1 while PAUSE (all databases) is in effect.', [], (g) => g.set(view.isPaused() ? 1 : 0));
  gauge('pgmux_pinned_clients', 'Clients kept on their backend between transactions for session state (temp tables, advisory locks, ...).', [], (g) =>
    g.set(view.clients().filter((c) => c.pinned !== null).length),
  );

  return {
    registry,
    contentType: registry.contentType,
    // prom-client prints NaN as "Nan" (e.g. event-loop lag before the first sample);
    // the exposition format only knows "NaN", and strict parsers reject the line.
    render: async () => (await registry.metrics()).replace(/ Nan$/gm, ' NaN'),
  };
}
