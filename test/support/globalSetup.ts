// vitest globalSetup: ONE real cluster (primary + 2 streaming replicas) for the whole run.
// Runs in the main vitest process; test files read its coordinates with inject('cluster')
// (see test/support/cluster.ts). In containers (testcontainers, containerCluster.ts) when a
// Docker engine answers, else from the machine's PostgreSQL binaries; the choice is logged.
import type { TestProject } from 'vitest/node';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { findPgBinDir, LocalCluster, registerCleanup } from '../../src/embedded/localCluster.js';
import type { ContainerCluster } from './containerCluster.js';
import { chooseClusterBackend } from './containerRuntime.js';

export interface ClusterNodeInfo {
  name: string;
  host: string;
  port: number;
  dataDir: string;
}

export interface ClusterInfo {
  /** node0 is the primary, the others stream from it. */
  nodes: ClusterNodeInfo[];
  baseDir: string;
  binDir: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    cluster: ClusterInfo;
  }
}

let cluster: LocalCluster | undefined;
let containers: ContainerCluster | undefined;

/** What every test expects on the primary: roles for each auth method, database app. */
const PROVISION: Array<[sql: string, database?: string]> = [
  ["SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD 'md5pass'"],
  ["SET password_encryption = 'scram-sha-256'; CREATE ROLE app_scram LOGIN PASSWORD 'scrampass'"],
  ["SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD 'apppass'"],
  ['CREATE DATABASE app OWNER app'],
  ['GRANT ALL ON SCHEMA public TO app, app_md5, app_scram', 'app'],
];
const PGBENCH_INIT = ['-i', '-s', '1', '-q'];
// pgbench tables belong to postgres; let the app roles use them (e.g. pgbench through the proxy).
const PGBENCH_GRANTS = 'GRANT ALL ON ALL TABLES IN SCHEMA public TO app, app_md5, app_scram; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app, app_md5, app_scram';

function run(bin: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`${bin} ${args.join(' ')} failed (exit ${code})\n${out.trim()}`)),
    );
  });
}

export async function setup(project: TestProject): Promise<void> {
  const t0 = Date.now();
  const backend = await chooseClusterBackend();
  console.log(`[globalSetup] cluster from ${backend.kind === 'containers' ? 'containers (testcontainers)' : 'local binaries'}: ${backend.reason}`);
  if (backend.kind === 'containers') return setupContainers(project, t0);
  const verbose = !!process.env.PGMUX_TEST_VERBOSE;
  cluster = await LocalCluster.start({
    replicas: 2,
    log: verbose ? (l) => console.log(`[cluster] ${l}`) : undefined,
  });
  // A crashed or interrupted run must not leave postgres behind.
  registerCleanup(cluster);
  try {
    const c = cluster;
    for (const [sql, database] of PROVISION) await c.query('node0', sql, { database });

    const primary = c.nodes[0]!;
    await run(join(c.binDir, 'pgbench'), [...PGBENCH_INIT, '-h', primary.host, '-p', String(primary.port), '-U', 'postgres', 'app']);
    await c.query('node0', PGBENCH_GRANTS, { database: 'app' });
    await c.waitForStreaming(30_000);

    project.provide('cluster', {
      nodes: c.nodes.map((n) => ({ name: n.name, host: n.host, port: n.port, dataDir: n.dataDir })),
      baseDir: c.baseDir,
      binDir: c.binDir,
    });
    console.log(
      `[globalSetup] cluster ready in ${((Date.now() - t0) / 1000).toFixed(2)} s: ` +
        c.nodes.map((n) => `${n.name}=${n.host}:${n.port}`).join(' '),
    );
  } catch (err) {
    await teardown();
    throw err;
  }
}

async function setupContainers(project: TestProject, t0: number): Promise<void> {
  // Imported only here: testcontainers is a large module that the local path never needs.
  const { ContainerCluster } = await import('./containerCluster.js');
  containers = await ContainerCluster.start({ replicas: 2 });
  try {
    const c = containers;
    for (const [sql, database] of PROVISION) await c.query(sql, { database });
    await c.pgbench([...PGBENCH_INIT, '-U', 'postgres', 'app']);
    await c.query(PGBENCH_GRANTS, { database: 'app' });
    await c.waitForStreaming(30_000);
    const nodes = c.nodes();
    // Client tools (psql, pgbench) for the tests still come from the machine when it has them.
    let binDir = '';
    try {
      binDir = findPgBinDir();
    } catch {
      // none: the tests that run psql or pgbench fail and say so
    }
    project.provide('cluster', { nodes, baseDir: '', binDir });
    console.log(
      `[globalSetup] cluster ready in ${((Date.now() - t0) / 1000).toFixed(2)} s: ` + nodes.map((n) => `${n.name}=${n.host}:${n.port}`).join(' '),
    );
  } catch (err) {
    await teardown();
    throw err;
  }
}

export async function teardown(): Promise<void> {
  const c = cluster;
  cluster = undefined;
  if (c) await c.stop();
  const k = containers;
  containers = undefined;
  if (k) await k.stop();
}
