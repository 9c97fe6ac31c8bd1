// Helpers for tests that use the shared cluster started by test/support/globalSetup.ts.
import { inject, vi } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import type { ClusterInfo, ClusterNodeInfo } from './globalSetup.js';

export type { ClusterInfo, ClusterNodeInfo };

/** The shared cluster's coordinates (node0 = primary). */
export function clusterInfo(): ClusterInfo {
  const info = inject('cluster');
  if (!info) throw new Error('no cluster provided: is test/support/globalSetup.ts the globalSetup in vitest.config.ts?');
  return info;
}

export function primaryPort(): number {
  return clusterInfo().nodes[0]!.port;
}

/** Ports of all nodes, primary first. */
export function nodePorts(): number[] {
  return clusterInfo().nodes.map((n) => n.port);
}

/** Ports of the replicas. */
export function replicaPorts(): number[] {
  return nodePorts().slice(1);
}

export interface PgClientOptions extends Omit<pg.ClientConfig, 'port'> {
  user?: string;
  database?: string;
  password?: string;
  host?: string;
}

/** A connected pg.Client to 127.0.0.1:port (user postgres, database app unless given). */
export async function pgClient(port: number, opts: PgClientOptions = {}): Promise<pg.Client> {
  const client = new pg.Client({
    host: '127.0.0.1',
    user: 'postgres',
    database: 'app',
    connectionTimeoutMillis: 10_000,
    ...opts,
    port,
  });
  await client.connect();
  return client;
}

/**
 * Waits until at least `count` sessions on the harness's nodes run exactly `sql`: a cancel
 * test must not send its CancelRequest before the query it cancels has started.
 */
export async function waitUntilRunning(sql: string, count = 1, timeoutMs = 10_000): Promise<void> {
  const clients = await Promise.all(nodePorts().map((port) => pgClient(port, { database: 'postgres' })));
  try {
    await vi.waitFor(
      async () => {
        let running = 0;
        for (const c of clients) {
          const r = await c.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query = $1", [sql]);
          running += r.rows[0].n as number;
        }
        if (running < count) throw new Error(`${running} of ${count} sessions run ${JSON.stringify(sql)}`);
      },
      { timeout: timeoutMs, interval: 20 },
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

export function psqlBin(): string {
  return join(clusterInfo().binDir, 'psql');
}

export function pgbenchBin(): string {
  return join(clusterInfo().binDir, 'pgbench');
}

export interface RunPgResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run a PostgreSQL client binary (psql, pgbench; fine as root) and collect its output.
 * Never rejects on a non-zero exit: check `code`.
 */
export function runPg(
  bin: string,
  args: string[],
  opts: { env?: Record<string, string | undefined>; timeoutMs?: number; input?: string } = {},
): Promise<RunPgResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: { ...process.env, PGCONNECT_TIMEOUT: '10', ...opts.env },
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 120_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}
