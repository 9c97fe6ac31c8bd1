// SHOW STATS averages as PgBouncer's calc_average computes them: counts and bytes per second
// over the stats period; times per transaction, per query and per server assignment.
import { describe, expect, it } from 'vitest';
import { averageOf, sumTraffic, TrafficSampler, trafficByDatabase, type DatabaseTraffic } from '../../src/admin/trafficSampler.js';
import type { ServerView, TrafficTotals } from '../../src/admin/view.js';

function totals(database: string, user: string, over: Partial<TrafficTotals> = {}): TrafficTotals {
  return {
    database, user, serverAssignments: 0, xacts: 0, queries: 0, bytesReceived: 0, bytesSent: 0, xactTimeUs: 0, queryTimeUs: 0, waitTimeUs: 0,
    clientParses: 0, serverParses: 0, binds: 0, errorsByClass: new Map(), ...over,
  };
}

const zero: DatabaseTraffic = sumTraffic([]);

describe('traffic averages', () => {
  it('sums users into their database', () => {
    const by = trafficByDatabase([totals('app', 'a', { xacts: 2, bytesSent: 10 }), totals('app', 'b', { xacts: 3 }), totals('other', 'a', { xacts: 7 })]);
    expect(by.get('app')).toMatchObject({ xacts: 5, bytesSent: 10 });
    expect(by.get('other')!.xacts).toBe(7);
  });

  it('divides counts by seconds and times by their own counts', () => {
    const cur = { ...zero, xacts: 120, queries: 240, serverAssignments: 60, bytesReceived: 6000, xactTimeUs: 120 * 500, queryTimeUs: 240 * 100, waitTimeUs: 60 * 30 };
    expect(averageOf(cur, zero, 60_000)).toMatchObject({ xacts: 2, queries: 4, serverAssignments: 1, bytesReceived: 100, xactTimeUs: 500, queryTimeUs: 100, waitTimeUs: 30 });
    // Nothing happened: no division by zero.
    expect(averageOf(cur, cur, 60_000)).toEqual(zero);
    expect(averageOf(cur, zero, 0)).toEqual(zero);
  });

  it('moves once a period: between the last two samples', () => {
    let current: TrafficTotals[] = [];
    const view = { startedAt: 0, trafficTotals: () => current } as unknown as ServerView;
    const s = new TrafficSampler(view, 60_000);
    current = [totals('app', 'u', { xacts: 60 })];
    // Before the first sample: from start until now.
    expect(s.average('app', 30_000).xacts).toBe(2);
    s.sample(60_000);
    current = [totals('app', 'u', { xacts: 6000 })];
    // The new traffic shows only after the next sample.
    expect(s.average('app', 90_000).xacts).toBe(1);
    s.sample(120_000);
    expect(s.average('app', 130_000).xacts).toBe(99);
    expect(s.average(null, 130_000).xacts).toBe(99);
    expect(s.average('nope', 130_000)).toEqual(zero);
  });
});
