#!/usr/bin/env node
// Micro-benchmark of the two stream walkers on pgmux's data path (needs `npm run build`):
//
//   FrameReader     (dist/protocol/framer.js)          whole messages, one at a time
//   BackendScanner  (dist/protocol/backendScanner.js)  header-only walk, forwards runs
//
// over a synthetic backend stream: a result set of N DataRows + CommandComplete +
// ReadyForQuery, repeated to about 64 MiB, cut into fixed-size chunks (64 KiB by
// default, as a socket read would hand them over; messages straddle chunk edges).
// Prints MB/s (10^6 bytes) and ns per message, median of the timed passes.
//
//   node bench/micro/framer.mjs [--rows 100] [--chunk 65536] [--mib 64] [--passes 7] [--json]

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = (p) => join(repo, 'dist', 'protocol', p);
for (const f of ['framer.js', 'backendScanner.js']) {
  if (!existsSync(dist(f))) {
    process.stderr.write(`bench/micro/framer: dist/protocol/${f} not found: run npm run build first\n`);
    process.exit(2);
  }
}
const { FrameReader } = await import(pathToFileURL(dist('framer.js')).href);
const { BackendScanner } = await import(pathToFileURL(dist('backendScanner.js')).href);

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}
const ROWS = arg('rows', 100);
const CHUNK = arg('chunk', 64 * 1024);
const MIB = arg('mib', 64);
const PASSES = arg('passes', 7);
const JSON_OUT = process.argv.includes('--json');

// ---- the synthetic stream ------------------------------------------------------------

function msg(type, body) {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

/** DataRow with the columns of pgbench_accounts (aid, bid, abalance, filler char(84)). */
function dataRow(i) {
  const cols = [String(i + 1), String(1 + (i % 10)), String((i * 7919) % 5000), 'x'.repeat(84)];
  const parts = [Buffer.alloc(2)];
  parts[0].writeInt16BE(cols.length, 0);
  for (const c of cols) {
    const v = Buffer.from(c);
    const len = Buffer.alloc(4);
    len.writeInt32BE(v.length, 0);
    parts.push(len, v);
  }
  return msg('D', Buffer.concat(parts));
}

const block = Buffer.concat([
  ...Array.from({ length: ROWS }, (_, i) => dataRow(i)),
  msg('C', Buffer.from(`SELECT ${ROWS}\0`)),
  msg('Z', Buffer.from('I')),
]);
const messagesPerBlock = ROWS + 2;
const blocks = Math.max(1, Math.floor((MIB * 2 ** 20) / block.length));
const stream = Buffer.concat(Array.from({ length: blocks }, () => block));
const totalMessages = blocks * messagesPerBlock;
// Fresh Buffers per chunk, as sockets deliver them (a subarray view would be the same bytes).
const chunks = [];
for (let off = 0; off < stream.length; off += CHUNK) chunks.push(Buffer.from(stream.subarray(off, Math.min(off + CHUNK, stream.length))));

// ---- the walkers -----------------------------------------------------------------------

function runFrameReader() {
  const fr = new FrameReader(64 * 2 ** 20, true);
  let n = 0;
  let z = 0;
  for (const c of chunks) {
    fr.push(c);
    while (fr.next()) {
      n++;
      if (fr.type === 0x5a) z++;
    }
  }
  if (fr.error) throw new Error(`FrameReader error ${fr.error}`);
  return { messages: n, ready: z };
}

function runScanner() {
  let forwarded = 0;
  let z = 0;
  const sink = {
    forward(_buf, start, end) {
      forwarded += end - start;
    },
    hiding: () => false,
    onReadyForQuery() {
      z++;
    },
    onParameterStatus() {},
    onErrorResponse() {},
  };
  const sc = new BackendScanner(sink);
  for (const c of chunks) sc.scan(c);
  if (!sc.atBoundary) throw new Error('BackendScanner not at a message boundary at the end');
  return { bytes: forwarded, ready: z };
}

function bench(name, fn, check) {
  check(fn()); // correctness + warm-up
  for (let i = 0; i < 2; i++) fn();
  const times = [];
  for (let i = 0; i < PASSES; i++) {
    const t = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t));
  }
  times.sort((a, b) => a - b);
  const ns = times[times.length >> 1];
  return {
    name,
    mbPerS: stream.length / 1e6 / (ns / 1e9),
    nsPerMessage: ns / totalMessages,
    msPerPass: ns / 1e6,
    spreadPct: ((times[times.length - 1] - times[0]) / ns) * 100,
  };
}

const results = [
  bench('FrameReader', runFrameReader, (r) => {
    if (r.messages !== totalMessages || r.ready !== blocks) throw new Error(`FrameReader saw ${r.messages} messages, ${r.ready} ReadyForQuery; expected ${totalMessages}, ${blocks}`);
  }),
  bench('BackendScanner', runScanner, (r) => {
    if (r.bytes !== stream.length || r.ready !== blocks) throw new Error(`BackendScanner forwarded ${r.bytes} bytes, ${r.ready} ReadyForQuery; expected ${stream.length}, ${blocks}`);
  }),
];

if (JSON_OUT) {
  process.stdout.write(JSON.stringify({ rows: ROWS, chunk: CHUNK, bytes: stream.length, messages: totalMessages, results }, null, 2) + '\n');
} else {
  process.stdout.write(
    `stream: ${(stream.length / 2 ** 20).toFixed(1)} MiB, ${totalMessages.toLocaleString('en-US')} messages ` +
      `(${ROWS} DataRows of ${block.length > 0 ? dataRow(0).length : 0} bytes + CommandComplete + ReadyForQuery, repeated), ${CHUNK}-byte chunks; ` +
      `median of ${PASSES} passes, ${process.version}\n\n`,
  );
  const head = ['walker', 'MB/s', 'ns/message', 'ms/pass', 'spread'];
  const rows = results.map((r) => [r.name, r.mbPerS.toFixed(0), r.nsPerMessage.toFixed(1), r.msPerPass.toFixed(1), `${r.spreadPct.toFixed(0)}%`]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (c) => c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join('  ');
  process.stdout.write([line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n') + '\n');
}
