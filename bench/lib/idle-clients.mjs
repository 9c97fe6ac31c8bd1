// Holds many idle, authenticated client connections open, for the memory measurement.
// Runs as its own process (started through `sh -c 'ulimit -n ...'` so it may open
// thousands of sockets) and is driven by JSON lines on stdin; answers with JSON lines:
//
//   {"cmd":"open","port":P,"database":"bench","user":"postgres","count":N,"concurrency":C,"timeoutMs":T}
//     -> {"opened":n,"failed":m,"error":"first error or null","total":open now}
//   {"cmd":"close"} -> {"closed":n}
//
// Each connection: StartupMessage, wait for ReadyForQuery (trust auth only), send
// `SELECT 1` once (so it has been through a backend), wait for ReadyForQuery, then idle.
// Raw sockets: a `pg` Client per connection would put more memory in this process than
// the measurement needs, and this process is not the one measured anyway.

import net from 'node:net';
import { createInterface } from 'node:readline';

const open = new Set();

function startupMessage(user, database) {
  const params = Buffer.from(`user\0${user}\0database\0${database}\0application_name\0bench-idle\0\0`);
  const b = Buffer.alloc(8 + params.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(196608, 4);
  params.copy(b, 8);
  return b;
}

function queryMessage(sql) {
  const body = Buffer.from(sql + '\0');
  const b = Buffer.alloc(5 + body.length);
  b[0] = 0x51; // 'Q'
  b.writeInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

function errorText(body) {
  // ErrorResponse fields: type byte + cstring, ... ; pick M (message).
  let i = 0;
  let msg = '';
  while (i < body.length && body[i] !== 0) {
    const t = String.fromCharCode(body[i]);
    const end = body.indexOf(0, i + 1);
    if (t === 'M') msg = body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return msg || 'error';
}

function connectOne({ port, host = '127.0.0.1', user, database, timeoutMs }) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    sock.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let phase = 'startup';
    let settled = false;
    const done = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        sock.destroy();
        resolve(err);
      } else {
        open.add(sock);
        sock.on('close', () => open.delete(sock));
        resolve(null);
      }
    };
    const timer = setTimeout(() => done(`timed out after ${timeoutMs} ms in ${phase}`), timeoutMs);
    sock.on('error', (e) => done(e.message));
    sock.on('close', () => done(`closed by server in ${phase}`));
    sock.on('connect', () => sock.write(startupMessage(user, database)));
    sock.on('data', (chunk) => {
      if (settled) return; // idle: ignore ParameterStatus/NoticeResponse that may still come
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 5) {
        const type = buf[0];
        const len = buf.readInt32BE(1);
        if (buf.length < 1 + len) break;
        const body = buf.subarray(5, 1 + len);
        buf = buf.subarray(1 + len);
        if (type === 0x45 /* E */) return done(`${phase}: ${errorText(body)}`);
        if (type === 0x52 /* R */ && body.readInt32BE(0) !== 0) return done(`server asks for authentication ${body.readInt32BE(0)}; trust only`);
        if (type === 0x5a /* Z */) {
          if (phase === 'startup') {
            phase = 'select 1';
            sock.write(queryMessage('SELECT 1'));
          } else {
            return done(null);
          }
        }
      }
    });
  });
}

async function openMany(o) {
  let opened = 0;
  let failed = 0;
  let error = null;
  let next = 0;
  const worker = async () => {
    while (next < o.count) {
      next++;
      const err = await connectOne(o);
      if (err) {
        failed++;
        error ??= err;
      } else opened++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.concurrency ?? 50, o.count)) }, worker));
  return { opened, failed, error, total: open.size };
}

const rl = createInterface({ input: process.stdin });
const reply = (o) => process.stdout.write(JSON.stringify(o) + '\n');
rl.on('line', async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    return reply({ error: `bad command ${line}` });
  }
  if (cmd.cmd === 'open') {
    reply(await openMany({ timeoutMs: 20_000, user: 'postgres', ...cmd }));
  } else if (cmd.cmd === 'close') {
    const n = open.size;
    const terminate = Buffer.from([0x58, 0, 0, 0, 4]); // 'X'
    await Promise.all(
      [...open].map(
        (s) =>
          new Promise((resolve) => {
            const t = setTimeout(() => (s.destroy(), resolve()), 3000);
            s.once('close', () => (clearTimeout(t), resolve()));
            s.end(terminate);
          }),
      ),
    );
    open.clear();
    reply({ closed: n });
  } else reply({ error: `unknown command ${cmd.cmd}` });
});
rl.on('close', () => {
  for (const s of open) s.destroy();
  process.exit(0);
});
