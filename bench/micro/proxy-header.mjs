#!/usr/bin/env node
// What a PROXY protocol header costs a login (issue #16 item 2; needs `npm run build`):
// pgmux in this process in front of a private LocalCluster primary, C loops of raw logins
// (StartupMessage -> ReadyForQuery -> Terminate, trust) for S seconds each, interleaved R
// rounds over three modes:
//   off       proxy_protocol_trusted empty (the default): no header
//   listed    the list names another address (10.0.0.0/8): no header, one list match per connection
//   header    127.0.0.1 trusted, a v2 header written with the startup packet
// Reports logins/s and process CPU (pgmux and the client loops together) per login.
//
//   node bench/micro/proxy-header.mjs [--seconds 5] [--rounds 3] [--conns 8]

import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const distFile = (p) => pathToFileURL(join(repo, 'dist', p)).href;
if (!existsSync(join(repo, 'dist', 'embedded', 'localCluster.js'))) {
  process.stderr.write('bench/micro/proxy-header: dist/ not found: run npm run build first\n');
  process.exit(2);
}
const lc = await import(distFile('embedded/localCluster.js'));
const { DEFAULTS } = await import(distFile('config/load.js'));
const { createLogger } = await import(distFile('observability/logger.js'));
const { startPgmux } = await import(distFile('server/pgmux.js'));

const opt = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const SECONDS = Number(opt('seconds', '5'));
const ROUNDS = Number(opt('rounds', '3'));
const CONNS = Number(opt('conns', '8'));

function startup() {
  const body = Buffer.from('user\0postgres\0database\0postgres\0\0');
  const b = Buffer.alloc(8);
  b.writeInt32BE(8 + body.length, 0);
  b.writeInt32BE(196608, 4);
  return Buffer.concat([b, body]);
}
const STARTUP = startup();
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);
const V2 = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a2111000c', 'hex'), Buffer.from([10, 1, 2, 3, 127, 0, 0, 1, 0x13, 0x88, 0x19, 0x20])]);

/** One login: resolves at ReadyForQuery (a 'Z' message), after sending Terminate. */
function login(port, header) {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    s.on('connect', () => s.write(header ? Buffer.concat([header, STARTUP]) : STARTUP));
    let buf = Buffer.alloc(0);
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (let at = 0; at + 5 <= buf.length; ) {
        const type = buf[at];
        const len = buf.readInt32BE(at + 1);
        if (type === 0x45) return reject(new Error(buf.toString('latin1', at + 5, at + 1 + len)));
        if (type === 0x5a) {
          s.end(TERMINATE);
          return resolve();
        }
        at += 1 + len;
      }
    });
    s.on('error', reject);
  });
}

async function measure(port, header) {
  const until = Date.now() + SECONDS * 1000;
  let n = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CONNS }, async () => {
    while (Date.now() < until) {
      await login(port, header);
      n++;
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { perSec: n / secs, cpuUsPerLogin: (cpu.user + cpu.system) / n };
}

const cluster = await lc.LocalCluster.start({ replicas: 0 });
const primary = cluster.nodes[0];
const logger = createLogger('silent', { pretty: false });
const modes = { off: [], listed: ['10.0.0.0/8'], header: ['127.0.0.1'] };
const results = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
try {
  for (let r = 0; r < ROUNDS; r++) {
    for (const [mode, trusted] of Object.entries(modes)) {
      const p = await startPgmux(
        { ...DEFAULTS, listen: { host: '127.0.0.1', port: 0 }, unixSocketDir: null, nodes: [{ host: primary.host, port: primary.port, weight: 1 }], healthCheckUser: 'postgres', healthCheckDatabase: 'postgres', proxyProtocolTrusted: trusted },
        { logger },
      );
      await login(p.port, mode === 'header' ? V2 : null); // warm the welcome cache
      results[mode].push(await measure(p.port, mode === 'header' ? V2 : null));
      await p.close();
    }
  }
} finally {
  await cluster.stop();
}
for (const [mode, rs] of Object.entries(results)) {
  const med = (k) => rs.map((x) => x[k]).sort((a, b) => a - b)[Math.floor(rs.length / 2)];
  console.log(`${mode.padEnd(7)} logins/s ${rs.map((x) => x.perSec.toFixed(0)).join(' ')} (median ${med('perSec').toFixed(0)}); CPU us/login median ${med('cpuUsPerLogin').toFixed(1)}`);
}
