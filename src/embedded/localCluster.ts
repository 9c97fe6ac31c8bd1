// A throw-away PostgreSQL cluster on loopback: one primary plus N streaming replicas,
// built from the machine's own server binaries. Used by `pgmux demo`, the integration
// test harness and the benchmarks.
//
// Layout under baseDir:            node0/            (unix socket dir of node0)
//                                  node0/data/       (PGDATA)
//                                  node0/postgres.log
//
// Postgres refuses to run as root: when we are root every server binary runs as the
// `postgres` system user through runuser, and baseDir is chowned to it.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export interface LocalClusterOptions {
  /** Number of streaming replicas; default 2. */
  replicas?: number;
  /** Directory to build the cluster in; default a fresh mkdtemp under os.tmpdir(). */
  baseDir?: string;
  /** Server binaries; default findPgBinDir(). */
  pgBinDir?: string;
  /** Extra postgresql.conf settings for all nodes (name -> value). */
  settings?: Record<string, string>;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface LocalNode {
  /** 'node0', 'node1', ...; node0 starts as primary. */
  name: string;
  host: string;
  port: number;
  dataDir: string;
}

const HOST = '127.0.0.1';
const SUPERUSER = 'postgres';
const LOG_TAIL_LINES = 40;

const HBA = `# written by pgmux LocalCluster
local   all          all                         trust
local   replication  all                         trust
host    replication  all        127.0.0.1/32     trust
host    all          app_md5    127.0.0.1/32     md5
host    all          app_scram  127.0.0.1/32     scram-sha-256
host    all          all        127.0.0.1/32     trust
`;

const BASE_SETTINGS: Record<string, string> = {
  listen_addresses: HOST,
  max_connections: '300', // identical on every node: a replica refuses to start below the primary's
  wal_level: 'replica',
  max_wal_senders: '10',
  max_replication_slots: '10',
  wal_keep_size: '256MB', // a replica stopped for a while can catch up without archiving
  wal_log_hints: 'on', // lets pg_rewind re-attach a demoted primary
  hot_standby: 'on',
  hot_standby_feedback: 'on',
  fsync: 'off',
  shared_buffers: '64MB',
  logging_collector: 'off',
};

/**
 * Where the PostgreSQL server binaries live: $PGMUX_PG_BIN, then `pg_config --bindir`,
 * then the highest /usr/lib/postgresql/<version>/bin. Each candidate must hold initdb.
 */
export function findPgBinDir(): string {
  const hasInitdb = (dir: string) => existsSync(join(dir, 'initdb'));
  const env = process.env.PGMUX_PG_BIN;
  if (env) {
    if (hasInitdb(env)) return env;
    throw new Error(`PGMUX_PG_BIN=${env} holds no initdb: point it at the PostgreSQL server bin directory`);
  }
  const pgConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  if (pgConfig.status === 0) {
    const dir = pgConfig.stdout.trim();
    if (dir && hasInitdb(dir)) return dir;
  }
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => /^\d+(\.\d+)?$/.test(v) && hasInitdb(join(root, v, 'bin')))
      .sort((a, b) => parseFloat(b) - parseFloat(a));
    if (versions.length > 0) return join(root, versions[0]!, 'bin');
  }
  throw new Error('PostgreSQL server binaries not found: apt-get install postgresql (or set PGMUX_PG_BIN to the directory holding initdb)');
}

/** A free loopback TCP port (listen on 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

function quoteSetting(value: string): string {
  if (/^'.*'$/s.test(value)) return value;
  return `'${value.replace(/'/g, "''")}'`;
}

function confLines(settings: Record<string, string>): string {
  return Object.entries(settings)
    .map(([k, v]) => `${k} = ${quoteSetting(v)}`)
    .join('\n');
}

function tail(file: string, lines = LOG_TAIL_LINES): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface NodeState extends LocalNode {
  dir: string;
  logFile: string;
  running: boolean;
}

/** Clusters still running in this process, for the exit/signal handlers. */
const live = new Set<LocalCluster>();

export class LocalCluster {
  readonly nodes: LocalNode[];
  readonly baseDir: string;
  readonly binDir: string;
  readonly superuser = SUPERUSER;

  private readonly state = new Map<string, NodeState>();
  private readonly asPostgres: boolean;
  private readonly removeBaseDir: boolean;
  private readonly logFn: (line: string) => void;
  private stopped = false;
  private stopping: Promise<void> | null = null;
  private watchdogPid: number | undefined;

  private constructor(baseDir: string, binDir: string, removeBaseDir: boolean, log: (line: string) => void) {
    this.baseDir = baseDir;
    this.binDir = binDir;
    this.removeBaseDir = removeBaseDir;
    this.logFn = log;
    this.asPostgres = typeof process.getuid === 'function' && process.getuid() === 0;
    this.nodes = [];
  }

  /** Build and start a primary (node0) and `replicas` streaming replicas. */
  static async start(opts: LocalClusterOptions = {}): Promise<LocalCluster> {
    const t0 = Date.now();
    const replicas = opts.replicas ?? 2;
    if (!Number.isInteger(replicas) || replicas < 0) throw new Error(`replicas must be a non-negative integer, got ${replicas}`);
    const binDir = opts.pgBinDir ?? findPgBinDir();
    for (const b of ['initdb', 'pg_ctl', 'pg_basebackup']) {
      if (!existsSync(join(binDir, b))) throw new Error(`${join(binDir, b)} not found: apt-get install postgresql (or set PGMUX_PG_BIN)`);
    }
    let baseDir: string;
    let created: boolean;
    if (opts.baseDir) {
      created = !existsSync(opts.baseDir);
      mkdirSync(opts.baseDir, { recursive: true });
      baseDir = opts.baseDir;
    } else {
      baseDir = mkdtempSync(join(tmpdir(), 'pgmux-cluster-'));
      created = true;
    }
    const cluster = new LocalCluster(baseDir, binDir, created, opts.log ?? (() => {}));
    live.add(cluster);
    try {
      await cluster.build(replicas, opts.settings ?? {});
    } catch (err) {
      await cluster.stop().catch(() => {});
      throw err;
    }
    cluster.logFn(`cluster up in ${((Date.now() - t0) / 1000).toFixed(2)} s: ` + cluster.nodes.map((n) => `${n.name}=${n.host}:${n.port}`).join(' '));
    return cluster;
  }

  private async build(replicas: number, settings: Record<string, string>): Promise<void> {
    if (this.asPostgres) {
      const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
      if (id.status !== 0) {
        throw new Error("running as root needs a 'postgres' system user to run the server: apt-get install postgresql (creates it)");
      }
      this.chownBase();
    }
    const count = replicas + 1;
    const ports: number[] = [];
    while (ports.length < count) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    for (let i = 0; i < count; i++) {
      const name = `node${i}`;
      const dir = join(this.baseDir, name);
      mkdirSync(dir, { recursive: true });
      const node: NodeState = { name, host: HOST, port: ports[i]!, dataDir: join(dir, 'data'), dir, logFile: join(dir, 'postgres.log'), running: false };
      this.state.set(name, node);
      this.nodes.push({ name, host: node.host, port: node.port, dataDir: node.dataDir });
    }
    if (this.asPostgres) this.chownBase();
    this.startWatchdog();

    // Primary.
    const primary = this.node('node0');
    this.logFn(`initdb ${primary.dataDir}`);
    await this.runChecked(primary, 'initdb', ['-D', primary.dataDir, '--auth=trust', '-U', SUPERUSER, '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    const conf = join(primary.dataDir, 'postgresql.conf');
    const base = readFileSync(conf, 'utf8');
    writeFileSync(
      conf,
      base +
        '\n# ---- pgmux LocalCluster ----\n' +
        confLines(BASE_SETTINGS) +
        '\n' +
        (Object.keys(settings).length ? '# extra settings\n' + confLines(settings) + '\n' : '') +
        "# per-node settings (port, socket dir), rewritten on every node\ninclude_if_exists = 'node.conf'\n",
    );
    writeFileSync(join(primary.dataDir, 'pg_hba.conf'), HBA);
    this.writeNodeConf(primary);
    if (this.asPostgres) this.chownBase();
    await this.startNode('node0');

    // Replicas: base backups in parallel, then start in parallel.
    const reps = [...this.state.values()].filter((n) => n.name !== 'node0');
    await Promise.all(
      reps.map(async (r) => {
        this.logFn(`pg_basebackup ${r.name} from node0`);
        await this.runChecked(
          r,
          'pg_basebackup',
          ['-R', '-X', 'stream', '-c', 'fast', '--no-sync', '-h', HOST, '-p', String(primary.port), '-U', SUPERUSER, '-D', r.dataDir],
          primary.logFile,
        );
        this.writeNodeConf(r);
        this.setPrimaryConninfo(r, primary);
        // Only this replica's directory: a recursive chown of the base would race the other
        // replicas' base backups renaming their files ("backup_manifest.tmp: No such file").
        if (this.asPostgres) this.chownBase(r.dataDir);
        await this.startNode(r.name);
      }),
    );
    if (reps.length > 0) await this.waitForStreaming();
  }

  private node(name: string): NodeState {
    const n = this.state.get(name);
    if (!n) throw new Error(`no node named ${name} (have ${[...this.state.keys()].join(', ')})`);
    return n;
  }

  /** Gives `dir` (default: the whole base directory) to postgres, which refuses to run as root. */
  private chownBase(dir = this.baseDir): void {
    const r = spawnSync('chown', ['-R', 'postgres:postgres', dir], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`chown -R postgres ${dir} failed: ${r.stderr.trim()}`);
  }

  private writeNodeConf(n: NodeState): void {
    writeFileSync(
      join(n.dataDir, 'node.conf'),
      `# ${n.name}, written by pgmux LocalCluster\nport = ${n.port}\nunix_socket_directories = ${quoteSetting(n.dir)}\ncluster_name = ${quoteSetting(n.name)}\n`,
    );
  }

  /** Point a replica at `primary` (postgresql.auto.conf, as pg_basebackup -R writes it). */
  private setPrimaryConninfo(n: NodeState, primary: NodeState): void {
    const auto = join(n.dataDir, 'postgresql.auto.conf');
    const lines = (existsSync(auto) ? readFileSync(auto, 'utf8') : '').split('\n').filter((l) => l && !/^\s*primary_conninfo\s*=/.test(l));
    const conninfo = `host=${HOST} port=${primary.port} user=${SUPERUSER} application_name=${n.name}`;
    lines.push(`primary_conninfo = ${quoteSetting(conninfo)}`);
    writeFileSync(auto, lines.join('\n') + '\n');
  }

  /** Run a PG server binary (as postgres when we are root). Never rejects. */
  private run(bin: string, args: string[]): Promise<RunResult> {
    const path = join(this.binDir, bin);
    const [cmd, argv] = this.asPostgres ? ['runuser', ['-u', 'postgres', '--', path, ...args]] : [path, args];
    return new Promise((resolve) => {
      const child = spawn(cmd, argv, { cwd: this.baseDir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', (e) => resolve({ code: -1, stdout, stderr: stderr + String(e) }));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  private async runChecked(n: NodeState, bin: string, args: string[], extraLog?: string): Promise<RunResult> {
    const r = await this.run(bin, args);
    if (r.code !== 0) {
      let msg = `${n.name}: ${bin} ${args.join(' ')} failed (exit ${r.code})`;
      const out = (r.stderr + r.stdout).trim();
      if (out) msg += `\n${out}`;
      if (existsSync(n.logFile)) msg += `\n--- tail of ${n.logFile} ---\n${tail(n.logFile)}`;
      if (extraLog && existsSync(extraLog)) msg += `\n--- tail of ${extraLog} ---\n${tail(extraLog)}`;
      throw new Error(msg);
    }
    return r;
  }

  async startNode(name: string): Promise<void> {
    const n = this.node(name);
    this.logFn(`start ${n.name} on ${n.host}:${n.port}`);
    await this.runChecked(n, 'pg_ctl', ['-D', n.dataDir, '-l', n.logFile, '-w', '-t', '60', 'start']);
    n.running = true;
  }

  async stopNode(name: string, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    const n = this.node(name);
    this.logFn(`stop ${n.name} (${mode})`);
    await this.runChecked(n, 'pg_ctl', ['-D', n.dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
    n.running = false;
  }

  /** pg_ctl promote, then wait until pg_is_in_recovery() is false. */
  async promote(name: string): Promise<void> {
    const n = this.node(name);
    this.logFn(`promote ${n.name}`);
    await this.runChecked(n, 'pg_ctl', ['-D', n.dataDir, '-w', '-t', '60', 'promote']);
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const rows = await this.query(name, 'select pg_is_in_recovery() as r');
        if (rows[0]?.r === false) return;
      } catch {
        // not accepting connections yet
      }
      if (Date.now() > deadline) throw new Error(`${name} still in recovery 60 s after promote\n--- tail of ${n.logFile} ---\n${tail(n.logFile)}`);
      await sleep(50);
    }
  }

  /**
   * Make a replica stream from another node (e.g. after a promotion): rewrites its
   * primary_conninfo and reloads it. The replica must not be ahead of the new primary.
   */
  async follow(name: string, primaryName: string): Promise<void> {
    const n = this.node(name);
    const p = this.node(primaryName);
    this.setPrimaryConninfo(n, p);
    if (this.asPostgres) this.chownBase();
    if (n.running) await this.query(name, 'select pg_reload_conf()');
  }

  /**
   * Wait until every running replica has a streaming walreceiver and the (single running)
   * primary's pg_stat_replication lists all of them as streaming.
   */
  async waitForStreaming(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const running = [...this.state.values()].filter((n) => n.running);
        const roles = await Promise.all(
          running.map(async (n) => ({ n, recovery: (await this.query(n.name, 'select pg_is_in_recovery() as r'))[0]?.r === true })),
        );
        const primaries = roles.filter((r) => !r.recovery).map((r) => r.n);
        const replicas = roles.filter((r) => r.recovery).map((r) => r.n);
        if (primaries.length !== 1) {
          last = `expected one running primary, found ${primaries.length} (${primaries.map((p) => p.name).join(', ') || 'none'})`;
        } else {
          const notStreaming: string[] = [];
          for (const r of replicas) {
            const rows = await this.query(r.name, 'select status from pg_stat_wal_receiver');
            if (rows[0]?.status !== 'streaming') notStreaming.push(`${r.name} walreceiver=${rows[0]?.status ?? 'none'}`);
          }
          const senders = await this.query(
            primaries[0]!.name,
            "select application_name from pg_stat_replication where state = 'streaming'",
          );
          const seen = new Set(senders.map((s) => s.application_name as string));
          for (const r of replicas) if (!seen.has(r.name)) notStreaming.push(`${r.name} missing from ${primaries[0]!.name}'s pg_stat_replication`);
          if (notStreaming.length === 0) return;
          last = notStreaming.join('; ');
        }
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) {
        const logs = [...this.state.values()]
          .filter((n) => n.running)
          .map((n) => `--- tail of ${n.logFile} ---\n${tail(n.logFile, 15)}`)
          .join('\n');
        throw new Error(`replication not streaming after ${timeoutMs} ms: ${last}\n${logs}`);
      }
      await sleep(50);
    }
  }

  /** Run one statement as the superuser and return its rows. */
  async query(name: string, sql: string, opts: { database?: string; params?: unknown[] } = {}): Promise<any[]> {
    const n = this.node(name);
    const client = new pg.Client({ host: n.host, port: n.port, user: SUPERUSER, database: opts.database ?? 'postgres', connectionTimeoutMillis: 10_000 });
    client.on('error', () => {}); // a node stopped under an idle client must not crash the process
    await client.connect();
    try {
      const res = await client.query(sql, opts.params as any[] | undefined);
      return res.rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Stop every node (fast, then immediate) and remove baseDir. Idempotent. */
  stop(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      await Promise.all(
        [...this.state.values()].map(async (n) => {
          if (!existsSync(join(n.dataDir, 'postmaster.pid'))) return;
          const fast = await this.run('pg_ctl', ['-D', n.dataDir, '-m', 'fast', '-w', '-t', '15', 'stop']);
          if (fast.code !== 0 && existsSync(join(n.dataDir, 'postmaster.pid'))) {
            await this.run('pg_ctl', ['-D', n.dataDir, '-m', 'immediate', '-w', '-t', '15', 'stop']);
          }
          n.running = false;
        }),
      );
      this.finish();
    })();
    return this.stopping;
  }

  /**
   * Synchronous last-resort stop for process 'exit' handlers: immediate shutdown of
   * every node, then remove baseDir. Idempotent.
   */
  stopSync(): void {
    if (this.stopped) return;
    for (const n of this.state.values()) {
      if (!existsSync(join(n.dataDir, 'postmaster.pid'))) continue;
      const path = join(this.binDir, 'pg_ctl');
      const args = ['-D', n.dataDir, '-m', 'immediate', '-w', '-t', '10', 'stop'];
      if (this.asPostgres) spawnSync('runuser', ['-u', 'postgres', '--', path, ...args], { cwd: this.baseDir, stdio: 'ignore' });
      else spawnSync(path, args, { cwd: this.baseDir, stdio: 'ignore' });
      n.running = false;
    }
    this.finish();
  }

  private finish(): void {
    this.stopped = true;
    live.delete(this);
    if (this.watchdogPid) {
      try {
        process.kill(this.watchdogPid);
      } catch {
        // already gone
      }
      this.watchdogPid = undefined;
    }
    if (this.removeBaseDir) {
      rmSync(this.baseDir, { recursive: true, force: true });
    } else {
      for (const n of this.state.values()) rmSync(n.dir, { recursive: true, force: true });
    }
  }

  /**
   * A detached shell that outlives a SIGKILLed or crashed Node process and then stops
   * the nodes and removes the directories, so no postgres is left behind.
   */
  private startWatchdog(): void {
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const pgCtl = join(this.binDir, 'pg_ctl');
    const prefix = this.asPostgres ? 'runuser -u postgres -- ' : '';
    const stops = [...this.state.values()]
      .map((n) => `[ -f ${q(join(n.dataDir, 'postmaster.pid'))} ] && ${prefix}${q(pgCtl)} -D ${q(n.dataDir)} -m immediate -w -t 10 stop`)
      .join('; ');
    const removes = this.removeBaseDir ? q(this.baseDir) : [...this.state.values()].map((n) => q(n.dir)).join(' ');
    const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; cd / ; ${stops}; rm -rf ${removes}`;
    try {
      const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
      child.on('error', () => {});
      child.unref();
      this.watchdogPid = child.pid;
    } catch {
      // best effort
    }
  }
}

let handlersInstalled = false;

function onExit(): void {
  for (const c of [...live]) c.stopSync();
}

function onSignal(signal: NodeJS.Signals): void {
  process.removeListener('SIGINT', onSignal);
  process.removeListener('SIGTERM', onSignal);
  process.removeListener('SIGHUP', onSignal);
  handlersInstalled = false;
  void Promise.allSettled([...live].map((c) => c.stop())).finally(() => {
    process.removeListener('exit', onExit);
    // Re-raise so the default action (or other handlers) see the signal.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

/**
 * Stop the cluster when the process exits or gets SIGINT/SIGTERM/SIGHUP (Ctrl-C in the
 * demo). Safe to call more than once. Returns a function that unregisters this cluster.
 */
export function registerCleanup(cluster: LocalCluster): () => void {
  live.add(cluster);
  if (!handlersInstalled) {
    handlersInstalled = true;
    process.on('exit', onExit);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', onSignal);
  }
  return () => {
    live.delete(cluster);
  };
}
