#!/usr/bin/env node
// What the per-(database, user) traffic totals add to one transaction on the hot path, in
// isolation: the wait's clock read at routing, the link, one request forwarded and answered
// (a second clock read), the byte counts and, for the extended protocol, a Parse and a Bind.
// The cost of one clock read is printed beside it. Needs `npm run build`. Reports ns per
// transaction, best of the rounds.
//
//   node bench/micro/traffic-meter.mjs [--rounds 5] [--txns 2000000]

import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { TrafficStats, TrafficMeter, nowUs } = await import(pathToFileURL(join(repo, 'dist/observability/trafficStats.js')).href);

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? Number(process.argv[i + 1]) : def;
}
const rounds = arg('rounds', 5);
const txns = arg('txns', 2_000_000);

const stats = new TrafficStats();
// Several sessions on one pair, as in a pool: the record is shared.
const meters = Array.from({ length: 50 }, () => {
  const m = new TrafficMeter();
  m.record = stats.recordFor('app', 'app');
  return m;
});

function run(extended) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < txns; i++) {
    const m = meters[i % meters.length];
    const routedAt = nowUs(); // TransactionRouter.route()
    m.linked(routedAt, 0); // idle backend handed over inside route(): no second read
    m.record.bytesReceived += 30;
    if (extended) {
      m.record.clientParses++;
      m.record.serverParses++;
      m.record.binds++;
    }
    m.requestSent();
    m.record.bytesSent += 120;
    m.answered(0x49);
  }
  return Number(process.hrtime.bigint() - t0) / txns;
}

for (const extended of [false, true]) {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) best = Math.min(best, run(extended));
  console.log(`${extended ? 'extended' : 'simple  '}: ${best.toFixed(1)} ns per transaction (best of ${rounds} x ${txns})`);
}
let bestClock = Infinity;
for (let r = 0; r < rounds; r++) {
  let sink = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < txns; i++) sink += performance.now();
  bestClock = Math.min(bestClock, Number(process.hrtime.bigint() - t0) / txns);
  if (sink === 0) console.log('');
}
console.log(`one performance.now() read: ${bestClock.toFixed(1)} ns`);
const t = stats.totals()[0];
if (t.queries !== t.xacts || t.queries !== 2 * rounds * txns) throw new Error(`counts off: ${t.queries} queries, ${t.xacts} xacts`);
