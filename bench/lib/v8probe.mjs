// Asks a Node process (pgmux) for a full garbage collection and its memory figures,
// through the inspector it opens on SIGUSR1 (pgmux runs with --inspect-port so that port is
// known; nothing listens there until the bench sends the signal).
//
//   node --experimental-websocket bench/lib/v8probe.mjs PORT [--close]
//
// Prints one JSON line: process.memoryUsage() after two HeapProfiler.collectGarbage calls.
// --close then shuts the inspector again, so the workloads run without it.

const port = Number(process.argv[2]);
const close = process.argv.includes('--close');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function debuggerUrl() {
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/json/list`);
      const list = await res.json();
      if (list[0]?.webSocketDebuggerUrl) return list[0].webSocketDebuggerUrl;
      last = 'no target';
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`inspector on 127.0.0.1:${port} did not answer (${last})`);
}

const ws = new WebSocket(await debuggerUrl());
let nextId = 1;
const waiting = new Map();
ws.onmessage = (ev) => {
  const m = JSON.parse(ev.data);
  if (m.id && waiting.has(m.id)) {
    waiting.get(m.id)(m);
    waiting.delete(m.id);
  }
};
await new Promise((resolve, reject) => {
  ws.onopen = resolve;
  ws.onerror = () => reject(new Error('inspector websocket error'));
});
const call = (method, params = {}) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    const t = setTimeout(() => reject(new Error(`${method}: no answer`)), 30_000);
    waiting.set(id, (m) => (clearTimeout(t), m.error ? reject(new Error(`${method}: ${m.error.message}`)) : resolve(m.result)));
    ws.send(JSON.stringify({ id, method, params }));
  });

await call('HeapProfiler.collectGarbage');
await call('HeapProfiler.collectGarbage');
const r = await call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
process.stdout.write(r.result.value + '\n');
if (close) {
  // Closing the inspector ends this session too: do not wait for an answer.
  ws.send(JSON.stringify({ id: nextId++, method: 'Runtime.evaluate', params: { expression: "process.getBuiltinModule('node:inspector').close()" } }));
  await sleep(300);
}
ws.close();
process.exit(0);
