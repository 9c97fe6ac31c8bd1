// A real HAProxy (/usr/sbin/haproxy, in the foreground) on loopback in front of pgmux
// instances: mode tcp, round-robin, optionally send-proxy-v2. HAProxy cannot bind port 0 and
// report it, so the frontend port is picked free first.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../src/embedded/localCluster.js';

export const HAPROXY_BIN = process.env.PGMUX_TEST_HAPROXY ?? '/usr/sbin/haproxy';

export interface HaproxyOptions {
  /** pgmux ports on 127.0.0.1, one backend server each, in round-robin order. */
  backendPorts: readonly number[];
  /** Prepend a PROXY protocol v2 header to every connection HAProxy opens to a backend. */
  sendProxyV2?: boolean;
}

export interface RunningHaproxy {
  /** The frontend clients connect to (127.0.0.1). */
  port: number;
  pid: number;
  config: string;
  /** What HAProxy printed (warnings, alerts): for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

export { freePort };

/**
 * The configuration: a tcp frontend on `port`, round-robin over the backends. A connection
 * refused by a dead backend is retried on another one at once (`option redispatch 1`), and TCP
 * health checks take the dead one out of the rotation soon after.
 */
export function haproxyConfig(port: number, opts: HaproxyOptions): string {
  // The checks carry the header too: an instance that trusts the balancer expects it first.
  const proxy = opts.sendProxyV2 ? ' send-proxy-v2 check-send-proxy' : '';
  return [
    'global',
    '  maxconn 4096',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 1h',
    '  timeout server 1h',
    '  retries 2',
    '  option redispatch 1',
    'frontend pg',
    `  bind 127.0.0.1:${port}`,
    '  default_backend pgmux',
    'backend pgmux',
    '  balance roundrobin',
    '  default-server check inter 500ms fall 1 rise 2',
    ...opts.backendPorts.map((p, i) => `  server pgmux${i} 127.0.0.1:${p}${proxy}`),
    '',
  ].join('\n');
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Starts HAProxy and waits until its frontend accepts connections: with the standard config
 * for `opts`, or with `config(port)` for a test that needs its own (binding 127.0.0.1:port).
 */
export async function startHaproxy(opts: HaproxyOptions | ((port: number) => string), startTimeoutMs = 10_000): Promise<RunningHaproxy> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pgmux-haproxy-'));
  const config = typeof opts === 'function' ? opts(port) + '\n' : haproxyConfig(port, opts);
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const child: ChildProcess = spawn(HAPROXY_BIN, ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + startTimeoutMs;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy did not come up on 127.0.0.1:${port}:\n${out}\nconfig:\n${config}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, pid: child.pid!, config, output: () => out, stop };
}
