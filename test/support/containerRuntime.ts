// Where the integration harness starts its shared cluster: in containers (testcontainers)
// when a Docker engine answers, else from the machine's PostgreSQL binaries. One HTTP ping
// (GET /_ping) with a short timeout decides, so a machine with only the docker client, or
// nothing, falls back to the local binaries in well under a second.
import { existsSync } from 'node:fs';
import http from 'node:http';

export interface ClusterBackend {
  kind: 'containers' | 'local';
  /** Said in the harness's log line. */
  reason: string;
}

export interface DockerEndpoint {
  socketPath?: string;
  host?: string;
  port?: number;
  /** As DOCKER_HOST would write it. */
  text: string;
}

export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';
export const DOCKER_PING_TIMEOUT_MS = 1000;

/** The engine to ask: DOCKER_HOST (unix:// or plain tcp://), else the default socket if it exists. */
export function dockerEndpoint(env: NodeJS.ProcessEnv, defaultSocket = DEFAULT_DOCKER_SOCKET): DockerEndpoint | null {
  const h = env.DOCKER_HOST;
  if (h) {
    if (h.startsWith('unix://')) return { socketPath: h.slice('unix://'.length), text: h };
    const tcp = /^tcp:\/\/([^:/]+):(\d+)\/?$/.exec(h);
    // TLS (DOCKER_TLS_VERIFY) and ssh:// engines are not probed: the local binaries are used.
    if (tcp && !env.DOCKER_TLS_VERIFY) return { host: tcp[1]!, port: Number(tcp[2]), text: h };
    return null;
  }
  return existsSync(defaultSocket) ? { socketPath: defaultSocket, text: `unix://${defaultSocket}` } : null;
}

/** true when the engine answers its ping with 200 within timeoutMs. */
export function pingDocker(ep: DockerEndpoint, timeoutMs = DOCKER_PING_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath: ep.socketPath, host: ep.host, port: ep.port, path: '/_ping', timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(false));
  });
}

/**
 * containers when a Docker engine answers, local otherwise. PGMUX_TEST_CLUSTER=local skips
 * the check; PGMUX_TEST_CLUSTER=containers makes a silent engine an error instead.
 */
export async function chooseClusterBackend(
  env: NodeJS.ProcessEnv = process.env,
  opts: { defaultSocket?: string; timeoutMs?: number } = {},
): Promise<ClusterBackend> {
  const forced = env.PGMUX_TEST_CLUSTER;
  if (forced === 'local') return { kind: 'local', reason: 'PGMUX_TEST_CLUSTER=local' };
  if (forced !== undefined && forced !== '' && forced !== 'containers') {
    throw new Error(`PGMUX_TEST_CLUSTER=${forced}: expected local or containers`);
  }
  const timeoutMs = opts.timeoutMs ?? DOCKER_PING_TIMEOUT_MS;
  const ep = dockerEndpoint(env, opts.defaultSocket);
  let reason: string;
  if (ep === null) {
    reason = env.DOCKER_HOST
      ? `DOCKER_HOST=${env.DOCKER_HOST} is not probed (only unix:// and plain tcp://)`
      : `no Docker engine (DOCKER_HOST unset, ${opts.defaultSocket ?? DEFAULT_DOCKER_SOCKET} absent)`;
  } else if (await pingDocker(ep, timeoutMs)) {
    return { kind: 'containers', reason: `a Docker engine answers at ${ep.text}` };
  } else {
    reason = `no Docker engine answers at ${ep.text} within ${timeoutMs} ms`;
  }
  if (forced === 'containers') throw new Error(`PGMUX_TEST_CLUSTER=containers, but ${reason}`);
  return { kind: 'local', reason };
}
