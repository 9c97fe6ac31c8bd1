// The harness's choice between containers and local binaries (test/support/containerRuntime.ts),
// against fake engines on a Unix socket: no Docker engine is needed.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chooseClusterBackend, dockerEndpoint } from '../support/containerRuntime.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-docker-'));
const missing = join(dir, 'missing.sock');
const answering = join(dir, 'answering.sock');
const silent = join(dir, 'silent.sock');
const servers: net.Server[] = [];
const sockets = new Set<net.Socket>();

function listen(server: net.Server, path: string): Promise<void> {
  servers.push(server);
  server.on('connection', (s: net.Socket) => sockets.add(s));
  return new Promise((resolve) => server.listen(path, resolve));
}

beforeAll(async () => {
  // An engine that answers its ping as dockerd does.
  await listen(
    http.createServer((req, res) => res.writeHead(req.url === '/_ping' ? 200 : 404).end('OK')),
    answering,
  );
  // A socket that accepts and never answers (a hung engine).
  await listen(net.createServer(() => {}), silent);
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  for (const s of servers) await new Promise((r) => s.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe('chooseClusterBackend', () => {
  it('no DOCKER_HOST and no socket: local binaries, at once', async () => {
    const t0 = Date.now();
    const b = await chooseClusterBackend({}, { defaultSocket: missing });
    expect(b).toEqual({ kind: 'local', reason: `no Docker engine (DOCKER_HOST unset, ${missing} absent)` });
    expect(Date.now() - t0).toBeLessThan(200);
  });

  it('an engine that answers on DOCKER_HOST or the default socket: containers', async () => {
    expect(await chooseClusterBackend({ DOCKER_HOST: `unix://${answering}` }, { defaultSocket: missing })).toEqual({
      kind: 'containers',
      reason: `a Docker engine answers at unix://${answering}`,
    });
    expect((await chooseClusterBackend({}, { defaultSocket: answering })).kind).toBe('containers');
  });

  it('a socket that never answers: local binaries after the ping timeout', async () => {
    const t0 = Date.now();
    const b = await chooseClusterBackend({ DOCKER_HOST: `unix://${silent}` }, { timeoutMs: 300 });
    expect(b).toEqual({ kind: 'local', reason: `no Docker engine answers at unix://${silent} within 300 ms` });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('a tcp:// engine that refuses, a missing socket file: local', async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((r) => closed.close(r));
    expect((await chooseClusterBackend({ DOCKER_HOST: `tcp://127.0.0.1:${port}` })).kind).toBe('local');
    expect((await chooseClusterBackend({ DOCKER_HOST: `unix://${missing}` })).kind).toBe('local');
  });

  it('PGMUX_TEST_CLUSTER: local skips the check; containers turns a silent engine into an error', async () => {
    expect(await chooseClusterBackend({ PGMUX_TEST_CLUSTER: 'local', DOCKER_HOST: `unix://${answering}` })).toEqual({ kind: 'local', reason: 'PGMUX_TEST_CLUSTER=local' });
    expect((await chooseClusterBackend({ PGMUX_TEST_CLUSTER: 'containers', DOCKER_HOST: `unix://${answering}` })).kind).toBe('containers');
    await expect(chooseClusterBackend({ PGMUX_TEST_CLUSTER: 'containers' }, { defaultSocket: missing })).rejects.toThrow(/PGMUX_TEST_CLUSTER=containers, but no Docker engine/);
    await expect(chooseClusterBackend({ PGMUX_TEST_CLUSTER: 'docker' })).rejects.toThrow(/expected local or containers/);
  });

  it('on this machine the check takes under 1.5 s, whatever it finds', async () => {
    const env = { ...process.env, PGMUX_TEST_CLUSTER: undefined };
    const t0 = Date.now();
    const b = await chooseClusterBackend(env);
    expect(['local', 'containers']).toContain(b.kind);
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});

describe('dockerEndpoint', () => {
  it('reads unix:// and plain tcp:// DOCKER_HOST; TLS and ssh engines are not probed', () => {
    expect(dockerEndpoint({ DOCKER_HOST: 'unix:///run/user/1000/docker.sock' })).toEqual({ socketPath: '/run/user/1000/docker.sock', text: 'unix:///run/user/1000/docker.sock' });
    expect(dockerEndpoint({ DOCKER_HOST: 'tcp://10.0.0.5:2375' })).toEqual({ host: '10.0.0.5', port: 2375, text: 'tcp://10.0.0.5:2375' });
    expect(dockerEndpoint({ DOCKER_HOST: 'tcp://10.0.0.5:2376', DOCKER_TLS_VERIFY: '1' })).toBeNull();
    expect(dockerEndpoint({ DOCKER_HOST: 'ssh://me@host' })).toBeNull();
    expect(dockerEndpoint({}, missing)).toBeNull();
  });
});
