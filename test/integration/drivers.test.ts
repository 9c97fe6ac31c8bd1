import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Real drivers' named prepared statements through pgmux in transaction mode, many clients
// over a pool of 2 so statements really move between backends:
//   psycopg 3 (prepare=True: Parse+Sync, then Bind/Describe/Execute/Sync; pipeline mode;
//     SQL DEALLOCATE ALL after a ROLLBACK and DEALLOCATE name on cache eviction, both as an
//     unnamed Parse),
//   pgJDBC (prepareThreshold=1: Parse S_n/Bind/Describe/Execute/Sync in one batch, batches, Close).
// The drivers come from Debian packages that .ci/run installs; when they are missing the
// tests fail (never skip), saying so.

const here = dirname(fileURLToPath(import.meta.url));
const driversDir = join(here, '..', 'drivers');
// Debian's python3-psycopg lives in /usr/bin/python3's dist-packages; a python3 earlier on
// PATH (pyenv, venv) does not see it.
const PYTHON = '/usr/bin/python3';
const JDBC_JAR = '/usr/share/java/postgresql.jar';
const INSTALL_HINT = '.ci/run installs it (apt-get install -y python3-psycopg libpostgresql-jdbc-java default-jdk-headless)';

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function run(bin: string, args: string[], timeoutMs: number, cwd?: string): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(bin, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => resolve({ code: null, signal: null, stdout, stderr: stderr + String(err), ms: Date.now() - started }));
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started }));
  });
}

/** Fails (not skips) with a message naming .ci/run when a driver's prerequisite is missing. */
async function requireTool(what: string, bin: string, args: string[]): Promise<void> {
  const r = await run(bin, args, 20_000);
  if (r.code !== 0) {
    throw new Error(`${what} is missing (\`${bin} ${args.join(' ')}\` failed: ${r.stderr.trim().split('\n').pop()}); ${INSTALL_HINT}`);
  }
}

function describeRun(r: RunResult): string {
  return `exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''} after ${r.ms} ms\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

describe('real drivers\' prepared statements under transaction pooling (pool of 2)', () => {
  let proxy: TestProxy;
  let direct: pg.Client;

  beforeAll(async () => {
    direct = await pgClient(primaryPort());
    await direct.query('DROP TABLE IF EXISTS driver_psycopg, driver_jdbc');
    await direct.query('CREATE TABLE driver_psycopg (worker int NOT NULL, k int NOT NULL, v text)');
    await direct.query('CREATE TABLE driver_jdbc (worker int NOT NULL, k int NOT NULL, v text)');
    // Reads go to the replicas too; the programs count their own inserts, so they must see them.
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction', readYourWrites: 'lsn' });
  });

  afterAll(async () => {
    await proxy?.close();
    await direct?.query('DROP TABLE IF EXISTS driver_psycopg, driver_jdbc').catch(() => undefined);
    await direct?.end();
  });

  it('psycopg 3, prepare=True: 10 processes concurrently, autocommit, transactions, pipeline mode, rollbacks, cache eviction', async () => {
    await requireTool('python3-psycopg (psycopg 3 for /usr/bin/python3)', PYTHON, ['-c', 'import psycopg']);
    const workers = 10;
    const namesBefore = proxy.proxy.statementNames.size;
    const results = await Promise.all(
      Array.from({ length: workers }, (_, w) =>
        run(PYTHON, [join(driversDir, 'psycopg_prepared.py'), '127.0.0.1', String(proxy.port), 'app', 'postgres', String(w)], 50_000),
      ),
    );
    results.forEach((r, w) => {
      expect(r.code, `psycopg worker ${w}: ${describeRun(r)}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^ok worker=${w} executed=\\d+ prepared=3$`, 'm'));
    });
    // The statements went through pgmux's named-statement mapping, shared by all processes.
    expect(proxy.proxy.statementNames.size - namesBefore).toBeGreaterThanOrEqual(5);
    const rows = await direct.query('SELECT worker, count(*)::int AS n FROM driver_psycopg GROUP BY worker ORDER BY worker');
    expect(rows.rows).toEqual(Array.from({ length: workers }, (_, w) => ({ worker: w, n: 70 })));
    // Never more than 2 backends per pool (one pool per node).
    for (const p of proxy.proxy.allPools()) expect(p.size).toBeLessThanOrEqual(2);
  });

  it('pgJDBC, prepareThreshold=1: 8 threads with their own connections, autocommit, transactions, batches', async () => {
    await requireTool('a JDK (javac)', 'javac', ['-version']);
    if (!existsSync(JDBC_JAR)) throw new Error(`libpostgresql-jdbc-java is missing (no ${JDBC_JAR}); ${INSTALL_HINT}`);
    const classes = mkdtempSync(join(tmpdir(), 'pgmux-jdbc-'));
    try {
      const compiled = await run('javac', ['-d', classes, '-cp', JDBC_JAR, join(driversDir, 'JdbcPrepared.java')], 40_000);
      expect(compiled.code, `javac: ${describeRun(compiled)}`).toBe(0);
      expect(existsSync(join(classes, 'JdbcPrepared.class'))).toBe(true);
      const threads = 8;
      const namesBefore = proxy.proxy.statementNames.size;
      const r = await run('java', ['-cp', `${classes}:${JDBC_JAR}`, 'JdbcPrepared', '127.0.0.1', String(proxy.port), 'app', 'postgres', String(threads)], 55_000);
      expect(r.code, `JdbcPrepared: ${describeRun(r)}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^ok threads=${threads} executed=\\d+ serverPrepared=${threads * 4}$`, 'm'));
      expect(proxy.proxy.statementNames.size - namesBefore).toBeGreaterThanOrEqual(5);
      const rows = await direct.query('SELECT worker, count(*)::int AS n FROM driver_jdbc GROUP BY worker ORDER BY worker');
      expect(rows.rows).toEqual(Array.from({ length: threads }, (_, w) => ({ worker: w, n: 50 + 50 + 20 })));
      for (const p of proxy.proxy.allPools()) expect(p.size).toBeLessThanOrEqual(2);
    } finally {
      rmSync(classes, { recursive: true, force: true });
    }
  });
});
