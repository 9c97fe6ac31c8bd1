// vitest globalSetup: ONE real cluster (primary + 2 streaming replicas) for the whole run.
// Runs in the main vitest process; test files read its coordinates with inject('cluster')
// (see test/support/cluster.ts).
import type { TestProject } from 'vitest/node';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { LocalCluster, registerCleanup } from '../../src/embedded/localCluster.js';

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
  const verbose = !!process.env.PGMUX_TEST_VERBOSE;
  cluster = await LocalCluster.start({
    replicas: 2,
    log: verbose ? (l) => console.log(`[cluster] ${l}`) : undefined,
  });
  // A crashed or interrupted run must not leave postgres behind.
  registerCleanup(cluster);
  try {
    const c = cluster;
    await c.query('node0', "SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD 'md5pass'");
    await c.query('node0', "SET password_encryption = 'scram-sha-256'; CREATE ROLE app_scram LOGIN PASSWORD 'scrampass'");
    await c.query('node0', "SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD 'apppass'");
    await c.query('node0', 'CREATE DATABASE app OWNER app');
    await c.query('node0', 'GRANT ALL ON SCHEMA public TO app, app_md5, app_scram', { database: 'app' });

    const primary = c.nodes[0]!;
    await run(join(c.binDir, 'pgbench'), ['-i', '-s', '1', '-q', '-h', primary.host, '-p', String(primary.port), '-U', 'postgres', 'app']);
    // pgbench tables belong to postgres; let the app roles use them (e.g. pgbench through the proxy).
    await c.query(
      'node0',
      'GRANT ALL ON ALL TABLES IN SCHEMA public TO app, app_md5, app_scram; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app, app_md5, app_scram',
      { database: 'app' },
    );
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

export async function teardown(): Promise<void> {
  const c = cluster;
  cluster = undefined;
  if (c) await c.stop();
}
