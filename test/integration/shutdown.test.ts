import { afterAll, describe, expect, it, vi } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../src/embedded/localCluster.js';
import { clusterInfo, pgClient, primaryPort } from '../support/cluster.js';

// The real CLI process (npm test builds dist/ first): SIGTERM lets a running transaction
// commit, tells idle clients 57P01, then exits 0.
const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

describe('graceful shutdown of the pgmux process', () => {
  let child: ChildProcess | null = null;
  afterAll(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
  });

  it('SIGTERM during a running transaction lets it commit, ends idle clients with 57P01, exits 0', async () => {
    const port = await freePort();
    const nodes = clusterInfo().nodes.flatMap((n) => ['--node', `${n.host}:${n.port}`]);
    child = spawn(process.execPath, [CLI, 'start', '--listen', `127.0.0.1:${port}`, ...nodes, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child!.on('exit', (code) => resolve(code)));
    // Wait until it accepts clients.
    const busy = await vi.waitFor(() => pgClient(port), { timeout: 10_000, interval: 100 });
    // Once its transaction is over, the busy client is told 57P01 too.
    const busyError = new Promise<{ code?: string }>((resolve) => busy.on('error', (e: { code?: string }) => resolve(e)));
    const idle = await pgClient(port);
    const idleError = new Promise<{ code?: string }>((resolve) => idle.on('error', (e: { code?: string }) => resolve(e)));
    const direct = await pgClient(primaryPort());
    await direct.query('CREATE TABLE IF NOT EXISTS shutdown_t (v text)');

    await busy.query('BEGIN');
    await busy.query("INSERT INTO shutdown_t VALUES ('during-shutdown')");
    child.kill('SIGTERM');
    // Deliberate pause: the signal is handled and the shutdown under way before the
    // transaction goes on (no client-visible sign of that moment to wait for).
    await new Promise((r) => setTimeout(r, 300));
    // The running transaction goes on and commits.
    await busy.query("INSERT INTO shutdown_t VALUES ('still-running')");
    await busy.query('COMMIT');
    expect((await idleError).code).toBe('57P01');
    expect((await busyError).code).toBe('57P01');
    expect(await exited).toBe(0);
    const rows = await direct.query("SELECT count(*)::int AS n FROM shutdown_t WHERE v IN ('during-shutdown', 'still-running')");
    expect(rows.rows[0].n).toBe(2);
    expect(stderr).not.toMatch(/"level":50/);
    await direct.query('DROP TABLE shutdown_t');
    await direct.end();
    await busy.end().catch(() => {});
    await idle.end().catch(() => {});
  });
});
