import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import postgres from 'postgres';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// Real drivers' LISTEN through pgmux in transaction mode over a pool of 2, while other
// clients run transactions: every driver must get every NOTIFY (channel and payload) that
// another connection sends, however the driver sends its LISTEN:
//   node-postgres: simple Query, and the extended protocol (queryMode 'extended');
//   postgres.js: sql.listen() (extended protocol; named statements by default, unnamed
//     with prepare: false);
//   psycopg 3: conn.execute (simple Query without parameters), a binary cursor (extended
//     protocol), pipeline mode (extended);
//   pgJDBC: Statement.execute with the default preferQueryMode=extended, and simple.
// Python and Java drivers come from Debian packages that .ci/run installs; when they are
// missing the tests fail (never skip), saying so.

const here = dirname(fileURLToPath(import.meta.url));
const driversDir = join(here, '..', 'drivers');
const PYTHON = '/usr/bin/python3';
const JDBC_JAR = '/usr/share/java/postgresql.jar';
const INSTALL_HINT = '.ci/run installs it (apt-get install -y python3-psycopg libpostgresql-jdbc-java default-jdk-headless)';
const NOTIFICATIONS = 5;
/** How long a driver program waits for all its notifications. */
const RECEIVE_TIMEOUT_S = 10;

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Running {
  /** Resolves when stdout has a line matching `re`; rejects if the program ends first. */
  line(re: RegExp, timeoutMs: number): Promise<void>;
  done: Promise<RunResult>;
  kill(): void;
}

function start(bin: string, args: string[], timeoutMs: number): Running {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
  let stdout = '';
  let stderr = '';
  const waiters: Array<() => void> = [];
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<RunResult>((resolve) => {
    child.on('error', (err) => resolve({ code: null, signal: null, stdout, stderr: stderr + String(err) }));
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  let ended: RunResult | null = null;
  void done.then((r) => {
    ended = r;
    for (const w of waiters.splice(0)) w();
  });
  return {
    done,
    kill: () => child.kill('SIGKILL'),
    line: (re, ms) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no line ${re} within ${ms} ms\n--- stdout\n${stdout}\n--- stderr\n${stderr}`)), ms);
        const check = (): void => {
          if (stdout.split('\n').some((l) => re.test(l))) {
            clearTimeout(timer);
            resolve();
          } else if (ended !== null) {
            clearTimeout(timer);
            reject(new Error(`${bin} ended before printing ${re}: ${describeRun(ended)}`));
          } else waiters.push(check);
        };
        check();
      }),
  };
}

async function run(bin: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return start(bin, args, timeoutMs).done;
}

function describeRun(r: RunResult): string {
  return `exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

async function requireTool(what: string, bin: string, args: string[]): Promise<void> {
  const r = await run(bin, args, 20_000);
  if (r.code !== 0) {
    throw new Error(`${what} is missing (\`${bin} ${args.join(' ')}\` failed: ${r.stderr.trim().split('\n').pop()}); ${INSTALL_HINT}`);
  }
}

function payloads(channel: string): string[] {
  return Array.from({ length: NOTIFICATIONS }, (_, k) => `${channel} #${k}`);
}

describe("real drivers' LISTEN under transaction pooling (pool of 2)", () => {
  let proxy: TestProxy;
  let sender: pg.Client;
  let javaClasses: string | null = null;

  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, poolMode: 'transaction' });
    sender = await pgClient(proxy.port);
  });

  afterAll(async () => {
    await sender?.end();
    await proxy?.close();
    if (javaClasses) rmSync(javaClasses, { recursive: true, force: true });
  });

  /** Other clients running short transactions through pgmux until stop(). */
  function busy(): { stop: () => Promise<void> } {
    let stopping = false;
    const loops = [0, 1].map(async () => {
      const c = await pgClient(proxy.port);
      try {
        while (!stopping) {
          await c.query('BEGIN');
          await c.query('SELECT pg_sleep(0.005)');
          await c.query('COMMIT');
        }
      } finally {
        await c.end();
      }
    });
    return {
      stop: async () => {
        stopping = true;
        await Promise.all(loops);
      },
    };
  }

  /** Sends the channel's notifications from another connection (through pgmux), with transactions around. */
  async function notify(channel: string): Promise<void> {
    for (const p of payloads(channel)) {
      await sender.query('SELECT pg_notify($1, $2)', [channel, p]);
      await sender.query('BEGIN; SELECT 1; COMMIT');
    }
  }

  /** A driver program that LISTENs: started, waited for, notified, its received lines checked. */
  async function programListens(bin: string, args: string[], channel: string): Promise<void> {
    const load = busy();
    const p = start(bin, args, (RECEIVE_TIMEOUT_S + 30) * 1000);
    try {
      await p.line(/^listening$/, 25_000);
      await notify(channel);
      const r = await p.done;
      const got = r.stdout
        .split('\n')
        .filter((l) => l.startsWith('notify '))
        .map((l) => l.slice('notify '.length));
      expect(got, describeRun(r)).toEqual(payloads(channel).map((pl) => `${channel} ${pl}`));
      expect(r.code, describeRun(r)).toBe(0);
      expect(r.stdout).toMatch(/^ok$/m);
    } finally {
      p.kill();
      await load.stop();
    }
  }

  // ---- node-postgres ----

  it.each([
    ['simple Query', 'drv_pg_simple', undefined],
    ['extended protocol', 'drv_pg_extended', 'extended'],
  ] as const)('node-postgres, LISTEN as a %s', async (_how, channel, queryMode) => {
    const load = busy();
    const c = await pgClient(proxy.port);
    try {
      const got: string[] = [];
      c.on('notification', (n) => got.push(`${n.channel} ${n.payload}`));
      await c.query({ text: `LISTEN ${channel}`, queryMode } as pg.QueryConfig);
      await notify(channel);
      // The listener keeps running transactions too.
      await c.query('BEGIN; SELECT 1; COMMIT');
      await vi.waitFor(() => expect(got).toEqual(payloads(channel).map((p) => `${channel} ${p}`)), { timeout: 5000, interval: 25 });
    } finally {
      await c.end();
      await load.stop();
    }
  });

  // ---- postgres.js ----

  it.each([
    ['default options (named prepared statements)', 'drv_pgjs_prepared', true],
    ['prepare: false (unnamed statements)', 'drv_pgjs_unnamed', false],
  ] as const)('postgres.js sql.listen, %s', async (_how, channel, prepare) => {
    const load = busy();
    const sql = postgres({
      host: '127.0.0.1',
      port: proxy.port,
      database: 'app',
      username: 'postgres',
      max: 2,
      connect_timeout: 10,
      onnotice: () => undefined,
      ...(prepare ? {} : { prepare: false }),
    });
    try {
      const got: string[] = [];
      const listening = await sql.listen(channel, (payload) => got.push(payload));
      // The same sql instance keeps running queries meanwhile.
      expect((await sql`SELECT 41 + 1 AS v`)[0]!.v).toBe(42);
      await notify(channel);
      await vi.waitFor(() => expect(got).toEqual(payloads(channel)), { timeout: 5000, interval: 25 });
      await listening.unlisten();
    } finally {
      await sql.end({ timeout: 5 });
      await load.stop();
    }
  });

  // ---- psycopg 3 ----

  it.each([
    ['conn.execute (simple Query)', 'simple'],
    ['a binary cursor (extended protocol)', 'extended'],
    ['pipeline mode (extended protocol)', 'pipeline'],
  ])('psycopg 3, LISTEN through %s, then conn.notifies()', async (_how, mode) => {
    await requireTool('python3-psycopg (psycopg 3 for /usr/bin/python3)', PYTHON, ['-c', 'import psycopg']);
    const channel = `drv_psycopg_${mode}`;
    await programListens(
      PYTHON,
      [join(driversDir, 'psycopg_listen.py'), '127.0.0.1', String(proxy.port), 'app', 'postgres', channel, String(NOTIFICATIONS), mode, String(RECEIVE_TIMEOUT_S)],
      channel,
    );
  });

  // ---- pgJDBC ----

  async function jdbcClasses(): Promise<string> {
    await requireTool('a JDK (javac)', 'javac', ['-version']);
    if (!existsSync(JDBC_JAR)) throw new Error(`libpostgresql-jdbc-java is missing (no ${JDBC_JAR}); ${INSTALL_HINT}`);
    if (javaClasses === null) {
      const dir = mkdtempSync(join(tmpdir(), 'pgmux-jdbc-listen-'));
      const compiled = await run('javac', ['-d', dir, '-cp', JDBC_JAR, join(driversDir, 'JdbcListen.java')], 60_000);
      if (compiled.code !== 0) {
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`javac JdbcListen.java: ${describeRun(compiled)}`);
      }
      javaClasses = dir;
    }
    return javaClasses;
  }

  it.each([
    ['default preferQueryMode=extended', 'extended'],
    ['preferQueryMode=simple', 'simple'],
  ])('pgJDBC, Statement.execute("LISTEN ch") with %s, then getNotifications(timeout)', async (_how, queryMode) => {
    const classes = await jdbcClasses();
    const channel = `drv_jdbc_${queryMode}`;
    await programListens(
      'java',
      ['-cp', `${classes}:${JDBC_JAR}`, 'JdbcListen', '127.0.0.1', String(proxy.port), 'app', 'postgres', channel, String(NOTIFICATIONS), queryMode, String(RECEIVE_TIMEOUT_S * 1000)],
      channel,
    );
  });
});
