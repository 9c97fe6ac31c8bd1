// Per-database traffic totals and their averages over the last stats period, as PgBouncer's
// SHOW STATS family reports them: totals since start, averages between the last two samples.

import type { ServerView, TrafficTotals } from './view.js';

/** PgBouncer's default stats_period. */
export const STATS_PERIOD_MS = 60_000;

/** Counters of one database (all its users), summed from ServerView.trafficTotals(). */
export type DatabaseTraffic = Omit<TrafficTotals, 'database' | 'user' | 'errorsByClass'>;

const ZERO: DatabaseTraffic = Object.freeze({
  serverAssignments: 0, xacts: 0, queries: 0, bytesReceived: 0, bytesSent: 0, xactTimeUs: 0, queryTimeUs: 0, waitTimeUs: 0,
  clientParses: 0, serverParses: 0, binds: 0,
});

function add(into: DatabaseTraffic, t: TrafficTotals | DatabaseTraffic): void {
  into.serverAssignments += t.serverAssignments;
  into.xacts += t.xacts;
  into.queries += t.queries;
  into.bytesReceived += t.bytesReceived;
  into.bytesSent += t.bytesSent;
  into.xactTimeUs += t.xactTimeUs;
  into.queryTimeUs += t.queryTimeUs;
  into.waitTimeUs += t.waitTimeUs;
  into.clientParses += t.clientParses;
  into.serverParses += t.serverParses;
  into.binds += t.binds;
}

/** Totals per database (all users summed). */
export function trafficByDatabase(totals: readonly TrafficTotals[]): Map<string, DatabaseTraffic> {
  const out = new Map<string, DatabaseTraffic>();
  for (const t of totals) {
    let d = out.get(t.database);
    if (d === undefined) out.set(t.database, (d = { ...ZERO }));
    add(d, t);
  }
  return out;
}

export function sumTraffic(all: Iterable<DatabaseTraffic>): DatabaseTraffic {
  const out = { ...ZERO };
  for (const d of all) add(out, d);
  return out;
}

/**
 * PgBouncer's calc_average: counts and bytes per second over the period; times per
 * transaction, per query and per server assignment (wait).
 */
export function averageOf(cur: DatabaseTraffic, old: DatabaseTraffic, periodMs: number): DatabaseTraffic {
  if (periodMs <= 0) return { ...ZERO };
  const perSec = (a: number, b: number) => Math.floor(((a - b) * 1000) / periodMs);
  const per = (a: number, b: number, n: number) => (n > 0 ? Math.floor((a - b) / n) : 0);
  const xacts = cur.xacts - old.xacts;
  const queries = cur.queries - old.queries;
  const assignments = cur.serverAssignments - old.serverAssignments;
  return {
    serverAssignments: perSec(cur.serverAssignments, old.serverAssignments),
    xacts: perSec(cur.xacts, old.xacts),
    queries: perSec(cur.queries, old.queries),
    bytesReceived: perSec(cur.bytesReceived, old.bytesReceived),
    bytesSent: perSec(cur.bytesSent, old.bytesSent),
    xactTimeUs: per(cur.xactTimeUs, old.xactTimeUs, xacts),
    queryTimeUs: per(cur.queryTimeUs, old.queryTimeUs, queries),
    waitTimeUs: per(cur.waitTimeUs, old.waitTimeUs, assignments),
    clientParses: perSec(cur.clientParses, old.clientParses),
    serverParses: perSec(cur.serverParses, old.serverParses),
    binds: perSec(cur.binds, old.binds),
  };
}

interface Sample {
  at: number;
  byDatabase: Map<string, DatabaseTraffic>;
}

/**
 * Takes a sample every period; averages are between the last two (from start until the
 * first period ends), so they move once a period as PgBouncer's do.
 */
export class TrafficSampler {
  private older: Sample;
  private latest: Sample;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly view: ServerView,
    private readonly periodMs = STATS_PERIOD_MS,
  ) {
    this.older = { at: view.startedAt, byDatabase: new Map() };
    this.latest = this.older;
  }

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => this.sample(Date.now()), this.periodMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  sample(now: number): void {
    this.older = this.latest;
    this.latest = { at: now, byDatabase: trafficByDatabase(this.view.trafficTotals()) };
  }

  /** Averages of one database over the last period (all databases when null). */
  average(database: string | null, now: number): DatabaseTraffic {
    // Before the first period ends: from start until now, with the totals of now.
    const [cur, old, period] =
      this.latest === this.older
        ? [{ at: now, byDatabase: trafficByDatabase(this.view.trafficTotals()) }, this.older, now - this.older.at]
        : [this.latest, this.older, this.latest.at - this.older.at];
    const pick = (s: Sample) => (database === null ? sumTraffic(s.byDatabase.values()) : (s.byDatabase.get(database) ?? ZERO));
    return averageOf(pick(cur), pick(old), period);
  }
}
