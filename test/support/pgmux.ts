// Starts a fresh pgmux in this test process, on a free port, in front of the harness's
// cluster. Each test (file) gets its own proxy so configuration never leaks between tests.

import type { Config } from '../../src/config/types.js';
import { DEFAULTS } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { startPgmux, type RunningPgmux } from '../../src/server/pgmux.js';
import { clusterInfo } from './cluster.js';

export type TestProxy = RunningPgmux;

export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    ...DEFAULTS,
    healthCheckPeriodMs: 200,
    healthCheckTimeoutMs: 1000,
    healthCheckMaxRetries: 2,
    healthCheckUser: 'postgres',
    healthCheckPassword: null,
    healthCheckDatabase: 'postgres',
    failoverTimeoutMs: 10_000,
    onRoleChange: null,
    listen: { host: '127.0.0.1', port: 0 },
    // Off unless a test asks for it (unix-socket.test.ts, in a temp dir): the shared /tmp
    // would collect a socket per proxy of every test run on this machine.
    unixSocketDir: null,
    nodes: clusterInfo().nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
    poolSize: 5,
    // PGMUX_TEST_LEAN_IO=off runs every proxy on Node's standard socket path (both must pass).
    leanIo: leanIoForTests(),
    ...overrides,
  } as Config;
}

function leanIoForTests(): boolean {
  const v = process.env.PGMUX_TEST_LEAN_IO;
  if (v === undefined || v === '') return DEFAULTS.leanIo;
  if (v === 'on' || v === 'off') return v === 'on';
  throw new Error(`PGMUX_TEST_LEAN_IO must be on or off, got ${v}`);
}

export async function startProxy(overrides: Partial<Config> = {}): Promise<TestProxy> {
  const level = (process.env.PGMUX_TEST_LOG ?? 'silent') as Config['logLevel'];
  return startPgmux(testConfig(overrides), { logger: createLogger(level, { pretty: false, destination: process.stderr }) });
}
