#!/usr/bin/env node
// What a lean socket path can gain at most: a bare 1:1 TCP forwarder (no protocol work, no
// pooling) between pgbench and one local PostgreSQL, in three read/write variants (needs
// `npm run build` for the local cluster):
//
//   data     socket 'data' -> dst.write(chunk)              (Node's standard path)
//   copy     one read buffer shared by every socket (onread / useUserBuffer), each chunk
//            written as a copy (dst.write(Buffer.from(view)))
//   try      the shared buffer, written with write(2) on the non-blocking fd (fs.writeSync,
//            what uv_try_write does) when nothing is queued; only an unsent tail is copied
//            and queued with dst.write
//   raw      the shared buffer, written with handle.writeBuffer + WriteWrap (skips the
//            Writable machinery; unsafe with a shared buffer when a write goes async:
//            measured for its cost only, not with --variants by default)
//
// Each variant runs as its own child process; its CPU (utime + stime from /proc) is read
// before and after each pgbench run. Rounds are interleaved.
//
//   node bench/micro/forwarder.mjs [--seconds 10] [--rounds 3] [--clients 50] [--variants data,copy,try,raw] [--node <bin>]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = fileURLToPath(import.meta.url);
const repo = join(dirname(here), '..', '..');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

// ---- child: the forwarder ---------------------------------------------------------

if (process.argv[2] === '--serve') serve(process.argv[3], Number(process.argv[4]));
else await main();

function serve(variant, pgPort) {
  const probe = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback() {} } });
  const sym = {};
  for (const s of Object.getOwnPropertySymbols(probe)) sym[s.description] = s;
  probe.destroy();

  // One read buffer for every socket: libuv reads one socket at a time on this thread. A
  // queued write must never point into it: the next read (of any socket) overwrites it.
  const shared = Buffer.allocUnsafeSlow(64 * 1024);

  let WriteWrap = null;
  let kStreamState = null;
  if (variant === 'raw') {
    // Internal bindings (warns on Node 24): measured only.
    const sw = process.binding('stream_wrap');
    WriteWrap = sw.WriteWrap;
    kStreamState = sw.streamBaseState;
  }
  const noop = () => {};

  /** Writes view (in the shared buffer); nothing may reference it afterwards. */
  function send(d, view) {
    if (variant === 'copy' || d.writableLength > 0 || !d._handle) return d.write(Buffer.from(view));
    if (variant === 'try') {
      // write(2) on the non-blocking fd, as uv_try_write; only the unsent tail is copied.
      let n = 0;
      try {
        n = writeSync(d._handle.fd, view, 0, view.length);
      } catch {
        n = 0; // EAGAIN, or an error socket.write reports below
      }
      return n === view.length ? true : d.write(Buffer.from(view.subarray(n)));
    }
    // raw: handle.writeBuffer with a WriteWrap; a write that went asynchronous references
    // the view (unsafe with a shared buffer: measured for the cost only).
    const req = new WriteWrap();
    req.handle = d._handle;
    req.oncomplete = noop;
    req.async = false;
    d._handle.writeBuffer(req, view);
    if (kStreamState[1 /* kLastWriteWasAsync */] !== 0) req.buffer = view;
    return true;
  }

  function lean(socket, dst) {
    socket[sym.kBuffer] = shared;
    socket[sym.kBufferGen] = null;
    socket[sym.kBufferCb] = (n, buf) => {
      const d = dst();
      if (d === null) return;
      if (!send(d, buf.subarray(0, n))) {
        socket.pause();
        d.once('drain', () => socket.resume());
      }
    };
    socket._handle.useUserBuffer(shared);
  }

  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const backend = net.connect({ port: pgPort, host: '127.0.0.1' });
    backend.setNoDelay(true);
    const close = () => {
      client.destroy();
      backend.destroy();
    };
    client.on('error', close).on('close', close);
    backend.on('error', close).on('close', close);
    if (variant === 'data') {
      client.pipe(backend);
      backend.pipe(client);
      return;
    }
    lean(client, () => backend);
    backend.once('connect', () => lean(backend, () => client));
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
}

// ---- parent ----------------------------------------------------------------------

function cpuTicks(pid) {
  const t = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = t.slice(t.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function main() {
  const seconds = Number(arg('seconds', 10));
  const rounds = Number(arg('rounds', 3));
  const clients = Number(arg('clients', 50));
  const variants = arg('variants', 'data,copy,try').split(',');
  const nodeBin = arg('node', process.execPath);
  const lc = await import(pathToFileURL(join(repo, 'dist', 'embedded', 'localCluster.js')).href);
  const binDir = lc.findPgBinDir();
  const pgbench = existsSync(join(binDir, 'pgbench')) ? join(binDir, 'pgbench') : 'pgbench';
  const hz = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  const cluster = await lc.LocalCluster.start({ replicas: 0, settings: { max_connections: '200' } });
  const children = [];
  try {
    const pg = cluster.nodes[0];
    spawnSync(pgbench, ['-i', '-q', '-s', '1', '-h', pg.host, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
    const ports = {};
    for (const v of variants) {
      const child = spawn(nodeBin, ['--no-deprecation', here, '--serve', v, String(pg.port)], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      ports[v] = await new Promise((res) => child.stdout.once('data', (d) => res(Number(String(d).trim()))));
      ports[v + ':pid'] = child.pid;
    }
    const results = Object.fromEntries(variants.map((v) => [v, []]));
    for (let r = 0; r < rounds; r++) {
      for (const v of variants) {
        const pid = ports[v + ':pid'];
        const before = cpuTicks(pid);
        const out = spawnSync(pgbench, ['-n', '-S', '-M', 'simple', '-c', String(clients), '-j', '2', '-T', String(seconds), '-h', '127.0.0.1', '-p', String(ports[v]), '-U', 'postgres', 'postgres'], { encoding: 'utf8' });
        const ticks = cpuTicks(pid) - before;
        const tps = Number(/tps = ([\d.]+)/.exec(out.stdout)?.[1] ?? NaN);
        const txns = Number(/number of transactions actually processed: (\d+)/.exec(out.stdout)?.[1] ?? NaN);
        const usPerTxn = ((ticks / hz) * 1e6) / txns;
        results[v].push({ tps, usPerTxn });
        process.stderr.write(`round ${r + 1} ${v}: ${tps.toFixed(0)} tps, ${usPerTxn.toFixed(1)} us/txn\n`);
      }
    }
    const med = (a) => a.slice().sort((x, y) => x - y)[Math.floor(a.length / 2)];
    console.log(`node ${spawnSync(nodeBin, ['--version'], { encoding: 'utf8' }).stdout.trim()}, ${clients} clients, ${rounds} x ${seconds} s (medians)`);
    console.log('| variant | tps | forwarder CPU us/txn |');
    console.log('|---|---:|---:|');
    for (const v of variants) console.log(`| ${v} | ${med(results[v].map((x) => x.tps)).toFixed(0)} | ${med(results[v].map((x) => x.usPerTxn)).toFixed(1)} |`);
  } finally {
    for (const c of children) c.kill();
    await cluster.stop();
  }
}
