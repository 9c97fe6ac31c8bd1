// Traffic totals per (database entry, user): what SHOW STATS and the labelled metrics report.
// One mutable record per pair, looked up once when a client logs in; the session keeps the
// reference and its meter bumps plain numbers on the hot path (no lookup, no allocation).
// Histograms are fixed bucket arrays in the record, read by /metrics at scrape time.

import type { TrafficTotals } from '../admin/view.js';

/**
 * Upper bounds (microseconds) of the query, transaction and wait histograms: 50 us to 30 s.
 * One more slot past the last bound counts everything above it.
 */
export const DURATION_BUCKETS_US: readonly number[] = [
  50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/** The pair that absorbs every pair beyond the bound (and its label value). */
export const OTHER = '(other)';

/** Default bound on distinct (database, user) pairs: memory and metric cardinality stay flat. */
export const MAX_TRAFFIC_PAIRS = 1000;

/** Microseconds on a monotonic clock (fractional; about 40 ns a read on Node 20). */
export function nowUs(): number {
  return performance.now() * 1000;
}

function bucketOf(us: number): number {
  const b = DURATION_BUCKETS_US;
  let i = 0;
  while (i < b.length && us > b[i]!) i++;
  return i;
}

export class TrafficRecord {
  serverAssignments = 0;
  xacts = 0;
  queries = 0;
  bytesReceived = 0;
  bytesSent = 0;
  xactTimeUs = 0;
  queryTimeUs = 0;
  waitTimeUs = 0;
  clientParses = 0;
  serverParses = 0;
  binds = 0;
  /** SQLSTATE class -> errors sent to clients; keys are two of [0-9A-Z], so at most 1296. */
  readonly errorsByClass = new Map<string, number>();
  /** Counts per DURATION_BUCKETS_US slot (not cumulative). */
  readonly queryBuckets = new Float64Array(DURATION_BUCKETS_US.length + 1);
  readonly xactBuckets = new Float64Array(DURATION_BUCKETS_US.length + 1);
  readonly waitBuckets = new Float64Array(DURATION_BUCKETS_US.length + 1);

  constructor(
    readonly database: string,
    readonly user: string,
  ) {}

  /** Counts an error sent to a client; a code that is not a SQLSTATE counts as class 'XX'. */
  error(code: string | undefined): void {
    const cls = code !== undefined && code.length === 5 && isSqlstateChar(code.charCodeAt(0)) && isSqlstateChar(code.charCodeAt(1)) ? code.slice(0, 2) : 'XX';
    this.errorsByClass.set(cls, (this.errorsByClass.get(cls) ?? 0) + 1);
  }

  totals(): TrafficTotals {
    return {
      database: this.database,
      user: this.user,
      serverAssignments: this.serverAssignments,
      xacts: this.xacts,
      queries: this.queries,
      bytesReceived: this.bytesReceived,
      bytesSent: this.bytesSent,
      xactTimeUs: Math.round(this.xactTimeUs),
      queryTimeUs: Math.round(this.queryTimeUs),
      waitTimeUs: Math.round(this.waitTimeUs),
      clientParses: this.clientParses,
      serverParses: this.serverParses,
      binds: this.binds,
      errorsByClass: new Map(this.errorsByClass),
    };
  }
}

function isSqlstateChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a);
}

/** Where sessions count before login (and admin tooling that never logs in): never reported. */
export const UNCOUNTED = new TrafficRecord('', '');

/** Every pair's record since start; disconnected clients' pairs stay (they are totals). */
export class TrafficStats {
  /** Distinct pairs kept; later pairs fold into (other, other). Tests lower it. */
  maxPairs = MAX_TRAFFIC_PAIRS;
  /** Logins whose pair was folded into (other) because the bound was reached. */
  folds = 0;
  private readonly byPair = new Map<string, TrafficRecord>();
  private other: TrafficRecord | null = null;

  /** The record a client of (database, user) counts into: once per login. */
  recordFor(database: string, user: string): TrafficRecord {
    const key = database + '\0' + user;
    const r = this.byPair.get(key);
    if (r !== undefined) return r;
    if (this.byPair.size >= this.maxPairs) {
      this.folds++;
      return (this.other ??= new TrafficRecord(OTHER, OTHER));
    }
    const created = new TrafficRecord(database, user);
    this.byPair.set(key, created);
    return created;
  }

  /** The label pair for (database, user) in per-pool series: itself when it has a record, else (other). */
  labelsFor(database: string, user: string): { database: string; user: string } {
    return this.byPair.has(database + '\0' + user) || this.byPair.size < this.maxPairs ? { database, user } : { database: OTHER, user: OTHER };
  }

  records(): TrafficRecord[] {
    const all = [...this.byPair.values()];
    if (this.other !== null) all.push(this.other);
    return all;
  }

  totals(): TrafficTotals[] {
    return this.records().map((r) => r.totals());
  }
}

/**
 * One client's timing of its requests and transactions, counted into its pair's record.
 * A request starts when forwarded with none outstanding (or when its backend was linked,
 * if that came first) and ends at ReadyForQuery; a transaction ends at a ReadyForQuery
 * outside a transaction block. One clock read per request at its end, and one at its start
 * unless the link's own reading serves.
 */
export class TrafficMeter {
  record: TrafficRecord = UNCOUNTED;
  /** Requests forwarded and not yet answered with ReadyForQuery. */
  private outstanding = 0;
  private queryStartUs = 0;
  /** Start of the running transaction, or -1. */
  private xactStartUs = -1;
  /** When the backend was linked, for the first request forwarded on it; -1 once used. */
  private linkedAtUs = -1;

  /** A backend was linked at `atUs` after the client waited `waitUs` for it. */
  linked(atUs: number, waitUs: number): void {
    const r = this.record;
    r.serverAssignments++;
    r.waitTimeUs += waitUs;
    r.waitBuckets[bucketOf(waitUs)]!++;
    // A pipelined unit was on the backend's wire before its turn: its time started then.
    if (this.outstanding === 0) this.linkedAtUs = atUs;
  }

  /**
   * A self-contained unit (one Query, or unnamed Parse/Bind/Execute up to one Sync) written
   * behind another client's on a busy backend (pipeline_depth): one request, its messages
   * counted here because the request tracker never sees them.
   */
  unitSent(parses: number, binds: number): void {
    const r = this.record;
    r.clientParses += parses;
    r.serverParses += parses;
    r.binds += binds;
    this.requestSent();
  }

  /** A request (Query, Sync, FunctionCall) was forwarded to the backend. */
  requestSent(): void {
    if (this.outstanding++ !== 0) return;
    let t = this.linkedAtUs;
    if (t < 0) t = nowUs();
    else this.linkedAtUs = -1;
    this.queryStartUs = t;
    if (this.xactStartUs < 0) this.xactStartUs = t;
  }

  /** ReadyForQuery reached the client with transaction status `status`. */
  answered(status: number): void {
    if (this.outstanding === 0) return;
    const t = nowUs();
    const r = this.record;
    const q = t - this.queryStartUs;
    r.queries++;
    r.queryTimeUs += q;
    r.queryBuckets[bucketOf(q)]!++;
    // The next pipelined request was waiting behind this one: its time starts now.
    if (--this.outstanding > 0) this.queryStartUs = t;
    if (status === 0x49 /* I */ && this.xactStartUs >= 0) {
      const x = t - this.xactStartUs;
      r.xacts++;
      r.xactTimeUs += x;
      r.xactBuckets[bucketOf(x)]!++;
      this.xactStartUs = this.outstanding > 0 ? t : -1;
    }
  }

  /**
   * The backend went away with requests unanswered (client left mid-query, backend lost, a
   * read re-run elsewhere): they count nothing, as they got no answer here.
   */
  abandon(): void {
    this.outstanding = 0;
    this.xactStartUs = -1;
    this.linkedAtUs = -1;
  }
}
