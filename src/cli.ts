#!/usr/bin/env node
// The `pgmux` command line: start (default), demo, check-config, import, classify, cache.
//
// Exit codes: 0 ok (and after a clean SIGINT/SIGTERM shutdown), 1 runtime failure,
// 2 bad configuration or usage, 3 `import` refused a result weaker than its source. Errors are one line on stderr: `pgmux: <message>`.
// Importing this module has no side effects; it runs only when it is the main module.

import { chmodSync, existsSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { stringify as toYaml } from 'yaml';
import {
  ConfigError,
  DEFAULTS,
  LOG_LEVELS,
  POOL_MODES,
  configToObject,
  formatHostPort,
  loadConfig,
  type CliFlags,
} from './config/load.js';
import { SETTINGS, flagHelp } from './config/schema.js';
import { createLogger, type Logger } from './observability/logger.js';
import type { Config } from './config/types.js';
import type { DatabaseFunctions } from './routing/functionCatalog.js';
import type { ClientConfig } from 'pg';

export interface CliIo {
  /** Standard output text (check-config's YAML, help). */
  out(s: string): void;
  /** Standard error text (error lines). */
  err(s: string): void;
  /** Environment for PGMUX_* variables. */
  env: NodeJS.ProcessEnv;
  /** Where SIGINT/SIGTERM arrive from (default: process). */
  signals: NodeJS.EventEmitter;
}

interface OptionSpec {
  flags: string;
  description: string;
  collect?: boolean;
}

const DEMO_LISTEN = '127.0.0.1:6432';
const DEMO_REPLICAS = 2;
const MAX_DEMO_REPLICAS = 10;

/** The options of `start` and `check-config`, with their env var and default in the text (from the settings schema). */
export const CONFIG_OPTIONS: readonly OptionSpec[] = [
  { flags: '-c, --config <file>', description: 'YAML config file (env: PGMUX_CONFIG; default: none)' },
  ...SETTINGS.filter((s) => s.flag !== undefined).map((s) => ({ flags: s.flag!.name, description: flagHelp(s), collect: s.flag!.repeat })),
];

const DEMO_OPTIONS: readonly OptionSpec[] = [
  {
    flags: '--replicas <n>',
    description: `streaming replicas next to the primary, 0..${MAX_DEMO_REPLICAS} (default: ${DEMO_REPLICAS})`,
  },
  { flags: '--listen <host:port>', description: `address clients connect to (env: PGMUX_LISTEN; default: ${DEMO_LISTEN})` },
  { flags: '--pool-mode <mode>', description: `${POOL_MODES.join(' or ')} (default: ${DEFAULTS.poolMode})` },
  { flags: '--pool-size <n>', description: `backends per (node, database, user) pool (default: ${DEFAULTS.poolSize})` },
  { flags: '--log-level <level>', description: `${LOG_LEVELS.join(', ')} (default: ${DEFAULTS.logLevel})` },
];

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function addOptions(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const s of specs) {
    if (s.collect) cmd.option(s.flags, s.description, collect);
    else cmd.option(s.flags, s.description);
  }
  return cmd;
}

/** Two-column listing wrapped like commander's own, for the top-level help (which shows start's options too). */
function listOptions(specs: readonly OptionSpec[], cmd: Command): string {
  const helper = cmd.createHelp();
  helper.prepareContext({ helpWidth: cmd.configureOutput().getOutHelpWidth?.() ?? 80 });
  const width = Math.max(...specs.map((s) => s.flags.length));
  return specs.map((s) => helper.formatItem(s.flags, width, s.description, helper)).join('\n');
}

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function oneLine(s: string): string {
  return s.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim();
}

/** Runs until SIGINT/SIGTERM, then closes the service. Resolves with the exit code. */
async function serveUntilSignal(
  service: { close(reason?: string): Promise<void> },
  logger: Logger,
  signals: NodeJS.EventEmitter,
): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal while shutting down: exiting now');
        process.exit(1);
      }
      stopping = true;
      logger.debug({ signal }, 'signal received: closing');
      service.close(signal).then(
        () => finish(0),
        (err: unknown) => {
          logger.error({ err }, 'error while shutting down');
          finish(1);
        },
      );
    };
    const finish = (code: number) => {
      signals.off('SIGINT', onSignal);
      signals.off('SIGTERM', onSignal);
      resolve(code);
    };
    signals.on('SIGINT', onSignal);
    signals.on('SIGTERM', onSignal);
  });
}

/**
 * Where a maintenance command connects: --dsn (its database replaced by `database` when given),
 * else every configured node with the health checks' login, in order.
 */
async function maintenanceTargets(o: { dsn?: string; database?: string; config: Config | null }, defaultDatabase: 'login' | 'none'): Promise<Array<{ label: string; conn: ClientConfig }>> {
  const targets: Array<{ label: string; conn: ClientConfig }> = [];
  if (o.dsn !== undefined) {
    let url: URL;
    try {
      url = new URL(o.dsn);
    } catch {
      throw new ConfigError('dsn', `--dsn: ${JSON.stringify(o.dsn)} is not a URL (expected postgres://user:password@host:port/database)`);
    }
    if (o.database !== undefined) url.pathname = '/' + encodeURIComponent(o.database);
    targets.push({ label: `${url.hostname}:${url.port || 5432}`, conn: { connectionString: url.toString() } });
    return targets;
  }
  const cfg = o.config!;
  const { backendTlsFor, pgClientSsl } = await import('./net/tls.js');
  const { healthCheckLogin } = await import('./cluster/healthCheckLogin.js');
  const { loadAuthFile } = await import('./auth/authFile.js');
  // The health checks' login, chosen as the monitor chooses it (an md5 secret from the
  // auth file is no use to node-postgres: that login then goes without a password).
  const login = healthCheckLogin(cfg, cfg.authFile ? loadAuthFile(cfg.authFile) : new Map());
  for (const n of cfg.nodes) {
    targets.push({
      label: formatHostPort(n),
      conn: {
        host: n.host,
        port: n.port,
        user: login.user,
        password: login.credentials.password ?? undefined,
        database: o.database ?? (defaultDatabase === 'login' ? login.database : undefined),
        connectionTimeoutMillis: cfg.serverConnectTimeoutMs || undefined,
        ssl: pgClientSsl(backendTlsFor(cfg)),
      },
    });
  }
  return targets;
}

/**
 * classify --database / --dsn: the database's volatile functions, read over one plain
 * connection (--dsn, else each configured node in turn with the health checks' login: pg_proc is the
 * same on every node).
 */
async function readDatabaseFunctions(o: { dsn?: string; database?: string; config: Config | null }): Promise<DatabaseFunctions> {
  const pg = (await import('pg')).default;
  const { FUNCTION_CATALOG_SQL, DatabaseFunctions } = await import('./routing/functionCatalog.js');
  const targets = await maintenanceTargets(o, 'login');
  const failures: string[] = [];
  for (const t of targets) {
    const client = new pg.Client({ ...t.conn, application_name: 'pgmux-classify' });
    client.on('error', () => {});
    try {
      await client.connect();
      const r = await client.query({ text: FUNCTION_CATALOG_SQL, rowMode: 'array' });
      const v = (r.rows[0] as unknown[] | undefined)?.[0];
      return DatabaseFunctions.fromJson(v === undefined || v === null ? null : typeof v === 'string' ? v : JSON.stringify(v));
    } catch (e) {
      failures.push(`${t.label}: ${(e as Error).message}`);
    } finally {
      client.end().catch(() => {});
    }
  }
  throw new Error(`classify: cannot read the database's functions (${failures.join('; ')})`);
}

/** A connection to the primary's `database` for DDL: --dsn, else the configured node that is not in recovery. */
async function connectPrimary(o: { dsn?: string; database?: string; config: Config | null }): Promise<import('pg').Client> {
  const pg = (await import('pg')).default;
  const candidates = await maintenanceTargets(o, 'none');
  const failures: string[] = [];
  for (const t of candidates) {
    const client = new pg.Client({ ...t.conn, application_name: 'pgmux-cache' });
    client.on('error', () => {});
    try {
      await client.connect();
      const r = await client.query('SELECT pg_is_in_recovery() AS r');
      if ((r.rows[0] as { r: boolean }).r) throw new Error('a standby');
      return client;
    } catch (e) {
      failures.push(`${t.label}: ${(e as Error).message}`);
      await client.end().catch(() => {});
    }
  }
  throw new Error(`cache: no primary to connect to (${failures.join('; ')})`);
}

// The exit code of the command a program ran (read by main()).
const exitCodes = new WeakMap<Command, number>();

/**
 * The commander program. Parsing with it runs the chosen command; errors propagate out of
 * parseAsync (ConfigError, CommanderError with exitOverride, runtime errors) for main() to
 * turn into an exit code. `io` redirects output and the environment (tests).
 */
export function buildProgram(io: Partial<CliIo> = {}): Command {
  const out = io.out ?? ((s: string) => void process.stdout.write(s));
  const err = io.err ?? ((s: string) => void process.stderr.write(s));
  const env = io.env ?? process.env;
  const signals = io.signals ?? process;
  const program = new Command('pgmux');
  program
    .description('A PostgreSQL proxy: transaction pooling, read/write splitting, failover following.')
    .version(version(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .exitOverride()
    .configureOutput({
      writeOut: out,
      writeErr: err,
      outputError: (str, write) => write(`pgmux: ${oneLine(str)}\n`),
    });

  const start = program
    .command('start', { isDefault: true })
    .description('run the proxy (the default command)');
  addOptions(start, CONFIG_OPTIONS);
  start.addHelpText(
    'after',
    '\nPrecedence: defaults < config file < PGMUX_* environment < flags. Every config-file key has an\n' +
      'environment variable PGMUX_<KEY> (e.g. pool_size -> PGMUX_POOL_SIZE); see docs/configuration.md.\n' +
      'SIGHUP: reload the configuration (a bad one is refused and the running one kept).\n' +
      'SIGINT/SIGTERM: stop accepting clients, let running transactions finish (shutdown_timeout), exit 0.',
  );
  start.action(async (flags: CliFlags) => {
    const config = loadConfig(flags, env);
    const logger = createLogger(config.logLevel);
    if (config.workers > 1) {
      // --workers: this process supervises (primary) or is one of the workers.
      const w = await import('./server/workers.js');
      const code = w.isPrimaryProcess()
        ? await w.runSupervisor(config, logger, signals)
        : await w.runWorker(config, { logger, reloadConfig: () => loadConfig(flags, env), serve: serveUntilSignal });
      exitCodes.set(program, code);
      return;
    }
    const { startPgmux } = await import('./server/pgmux.js');
    // RELOAD / SIGHUP re-read the same sources: file, PGMUX_* environment, flags.
    const server = await startPgmux(config, { logger, reloadConfig: () => loadConfig(flags, env) }); // logs its own 'listening' line
    const onHup = () => void server.proxy.reload();
    signals.on('SIGHUP', onHup);
    exitCodes.set(program, await serveUntilSignal(server, logger, signals));
    signals.off('SIGHUP', onHup);
  });

  const demo = program
    .command('demo')
    .description('start a throw-away local PostgreSQL primary + replicas and pgmux in front of them');
  addOptions(demo, DEMO_OPTIONS);
  demo.addHelpText(
    'after',
    '\nOther settings come from PGMUX_CONFIG and the PGMUX_* environment, as for start. The demo owns its nodes\n' +
      '(the throw-away cluster), adds postgres to admin_users and turns http on (a free port unless PGMUX_HTTP).',
  );
  demo.action(async (o: { replicas?: string; listen?: string; poolMode?: string; poolSize?: string; logLevel?: string }) => {
    const replicasRaw = o.replicas ?? String(DEMO_REPLICAS);
    const replicas = /^\s*\d+\s*$/.test(replicasRaw) ? Number(replicasRaw) : NaN;
    if (!(replicas >= 0 && replicas <= MAX_DEMO_REPLICAS)) {
      throw new ConfigError('replicas', `--replicas: ${JSON.stringify(replicasRaw)} is not a whole number in range (expected 0..${MAX_DEMO_REPLICAS})`);
    }
    // As start loads them (PGMUX_CONFIG, PGMUX_* environment, flags), but the demo listens on
    // loopback unless --listen or PGMUX_LISTEN says otherwise (a production config file's
    // listen is not for a trust-everyone demo). Nodes, the admin user and HTTP: demoConfig().
    const base = loadConfig(
      { listen: o.listen ?? (env.PGMUX_LISTEN ? undefined : DEMO_LISTEN), poolMode: o.poolMode, poolSize: o.poolSize, logLevel: o.logLevel },
      env,
      { requireNodes: false },
    );
    const logger = createLogger(base.logLevel);
    const { runDemo } = await import('./embedded/demo.js');
    const running = await runDemo({ replicas, config: base, logger });
    exitCodes.set(program, await serveUntilSignal(running, logger, signals));
  });

  const check = program
    .command('check-config')
    .description('validate the configuration and print the merged result as YAML (server_password masked)');
  addOptions(check, CONFIG_OPTIONS);
  check.action((flags: CliFlags) => {
    const config = loadConfig(flags, env);
    out(toYaml(configToObject(config), { lineWidth: 0 }));
    exitCodes.set(program, 0);
  });

  program
    .command('import <file>')
    .description('translate a pgbouncer.ini or pgpool.conf into pgmux YAML (stdout or --output); refuses a result weaker than the source')
    .option('--kind <kind>', 'pgbouncer or pgpool (default: detected from the file)')
    .option('-o, --output <file>', 'write the YAML here (default: stdout); a converted pool_passwd goes next to it as pgmux-userlist.txt')
    .option('--allow-weaker', 'write the result even where it would accept a login the source refused or drop TLS it required (each is printed)')
    .option('--pgpool-key-file <file>', 'Pgpool-II key for AES passwords in pool_passwd (default: $PGPOOLKEYFILE, else ~/.pgpoolkey)')
    .addHelpText(
      'after',
      '\nEvery setting without a pgmux equivalent is printed on stderr with the reason ("# warning: ...").\n' +
        'Files the result needs are written next to --output, or in the current directory without it:\n' +
        'pgmux-userlist.txt (mode 0600) from pool_passwd, pgmux-hba.conf for PgBouncer\'s trust (its auth_file users only).\n' +
        'Exit codes: 0 written; 2 unreadable or unknown input; 3 refused because the result\n' +
        'would be weaker than the source (nothing written; --allow-weaker writes it with each weakening printed).',
    )
    .action(async (file: string, o: { kind?: string; output?: string; allowWeaker?: boolean; pgpoolKeyFile?: string }) => {
      const { importConfig, ImportError } = await import('./import/importConfig.js');
      const { poolKeyFromFile } = await import('./import/poolPasswd.js');
      if (o.kind !== undefined && o.kind !== 'pgbouncer' && o.kind !== 'pgpool') {
        throw new ConfigError('kind', `--kind: ${JSON.stringify(o.kind)} is not supported (expected pgbouncer or pgpool)`);
      }
      const readOrFail = (path: string, what: string): string => {
        try {
          return readFileSync(path, 'utf8');
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          throw new ConfigError('import', `import: cannot read ${what}${path}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : code ?? (e as Error).message}`);
        }
      };
      const text = readOrFail(file, '');
      // The key file is optional unless named: without it AES entries are reported, not guessed.
      const keyPath = o.pgpoolKeyFile ?? env.PGPOOLKEYFILE ?? join(env.HOME ?? homedir(), '.pgpoolkey');
      let keyText: string | null = null;
      if (o.pgpoolKeyFile !== undefined) keyText = readOrFail(keyPath, 'the key file ');
      else if (existsSync(keyPath)) keyText = readFileSync(keyPath, 'utf8');
      const outDir = o.output !== undefined ? dirname(resolvePath(o.output)) : process.cwd();
      let r;
      try {
        r = importConfig(text, {
          kind: o.kind as 'pgbouncer' | 'pgpool' | undefined,
          sourceDir: dirname(resolvePath(file)),
          pgpoolKey: keyText === null ? null : poolKeyFromFile(keyText),
          pgpoolKeyFrom: keyPath,
          // Next to --output the YAML names it relatively (load.ts resolves against the YAML's directory).
          authFilePath: o.output !== undefined ? 'pgmux-userlist.txt' : join(outDir, 'pgmux-userlist.txt'),
        });
      } catch (e) {
        if (e instanceof ImportError) throw new ConfigError('import', `import: ${file}: ${e.message}`);
        throw e;
      }
      for (const w of r.warnings) err(`# warning: ${w}\n`);
      if (r.weakenings.length > 0 && o.allowWeaker !== true) {
        err(`pgmux: import: ${file}: refused: the result would be weaker than the source (${r.weakenings.length}):\n`);
        for (const w of r.weakenings) err(`  - ${w}\n`);
        err('nothing written; fix the source or the result by hand, or pass --allow-weaker to write it anyway\n');
        exitCodes.set(program, 3);
        return;
      }
      for (const w of r.weakenings) err(`# WEAKER than the source (--allow-weaker): ${w}\n`);
      for (const f of r.files) {
        const path = resolvePath(outDir, f.path);
        writeFileSync(path, f.content, { mode: 0o600 });
        chmodSync(path, 0o600);
        err(`# wrote ${path}: ${f.what}\n`);
      }
      if (o.output !== undefined) {
        writeFileSync(o.output, r.yaml);
        err(`# wrote ${o.output}\n`);
      } else {
        out(r.yaml);
      }
      exitCodes.set(program, 0);
    });

  program
    .command('classify <sql>')
    .description('print where pgmux routes a statement: primary or replica, and why')
    .option('--write-functions <names>', 'extra functions that write, comma-separated (as write_functions)')
    .option('--read-only-functions <names>', 'functions that stay reads though VOLATILE, comma-separated (as read_only_functions)')
    .option('--database <name>', "also check the functions a read calls against this database's VOLATILE functions (connects to a node)")
    .option('--dsn <url>', 'connect here for that check (postgres://user:password@host:port/database); default: the configured nodes')
    .option('-c, --config <file>', 'YAML config: nodes and the health checks\' login for --database, write_functions and read_only_functions (env: PGMUX_CONFIG)')
    .option('--cache', 'also print a second line: whether the query cache may store the result (cache<TAB>tables / nocache<TAB>why), and for a write the tables it invalidates')
    .addHelpText(
      'after',
      '\nWithout --database or --dsn nothing is contacted: user functions are judged by the built-in list and\n' +
        'write_functions only. With them, a read that calls a VOLATILE function outside pg_catalog goes to the\n' +
        'primary, as pgmux routes it. --database without --dsn logs in to the configured nodes in turn with\n' +
        'the health checks\' login (health_check_user, else auth_user, else the auth file). SQL that starts with -- needs: pgmux classify -- "$sql".',
    )
    .action(async (sql: string, o: { writeFunctions?: string; readOnlyFunctions?: string; database?: string; dsn?: string; config?: string; cache?: boolean }) => {
      const { classifySql, formatClassification } = await import('./routing/classifier.js');
      const list = (v: string | undefined) => (v ? v.split(',').map((x) => x.trim()).filter(Boolean) : []);
      let writeFunctions = list(o.writeFunctions);
      let readOnlyFunctions = list(o.readOnlyFunctions);
      const catalogCheck = o.database !== undefined || o.dsn !== undefined;
      // The configuration is read only when asked for or needed (nodes to connect to).
      const config = o.config !== undefined || (catalogCheck && o.dsn === undefined) ? loadConfig({ config: o.config }, env) : null;
      if (config !== null) {
        writeFunctions = [...config.writeFunctions, ...writeFunctions];
        readOnlyFunctions = [...config.readOnlyFunctions, ...readOnlyFunctions];
      }
      let c = classifySql(sql, { writeFunctions });
      if (catalogCheck && c.calls !== undefined) {
        const { readOnlyOverrides, writesVia } = await import('./routing/functionCatalog.js');
        const catalog = await readDatabaseFunctions({ dsn: o.dsn, database: o.database, config });
        const reason = writesVia(c.calls, catalog, readOnlyOverrides(readOnlyFunctions));
        if (reason !== null) c = { ...c, target: 'primary', reason };
      }
      out(formatClassification(c) + '\n');
      if (o.cache === true) {
        const { cacheVerdict, formatCacheVerdict } = await import('./routing/cacheability.js');
        out(formatCacheVerdict(cacheVerdict(sql), c.writesTables) + '\n');
      }
      exitCodes.set(program, 0);
    });

  const cache = program.command('cache').description('query cache maintenance on the database (see query_cache_mode)');
  cache
    .command('install-triggers')
    .description('install (or with --uninstall remove) the triggers that publish cache invalidations for writes that bypass pgmux')
    .option('--database <name>', 'the database to install into (default: the --dsn database)')
    .option('--dsn <url>', 'connect here (postgres://user:password@host:port/database); default: the configured primary with the health checks\' login')
    .option('--uninstall', 'remove every pgmux_cache_* function and trigger installed')
    .option('-c, --config <file>', 'YAML config: nodes and the health checks\' login, when there is no --dsn (env: PGMUX_CONFIG)')
    .addHelpText(
      'after',
      '\nInstalls pgmux_cache_notify(), a statement-level AFTER INSERT/UPDATE/DELETE/TRUNCATE trigger on every user\n' +
        'table and an event trigger on ddl_command_end (invalidates the whole database, adds the trigger to new\n' +
        'tables). Idempotent. Needs a superuser (event triggers). Run it on each database cached with query_cache_mode: triggers.',
    )
    .action(async (o: { database?: string; dsn?: string; uninstall?: boolean; config?: string }) => {
      const { INSTALL_SQL, UNINSTALL_SQL, COUNT_SQL } = await import('./cache/cacheTriggers.js');
      if (o.dsn === undefined && o.database === undefined) throw new ConfigError('database', 'cache install-triggers: name the database with --database (or give --dsn)');
      const client = await connectPrimary({ dsn: o.dsn, database: o.database, config: o.dsn === undefined ? loadConfig({ config: o.config }, env) : null });
      try {
        await client.query(o.uninstall ? UNINSTALL_SQL : INSTALL_SQL);
        const n = ((await client.query(COUNT_SQL)).rows[0] as { n: number }).n;
        const db = ((await client.query('SELECT current_database() AS d')).rows[0] as { d: string }).d;
        out(o.uninstall ? `pgmux cache triggers removed from ${db}\n` : `pgmux cache triggers installed in ${db}: ${n} tables\n`);
      } finally {
        await client.end().catch(() => {});
      }
      exitCodes.set(program, 0);
    });

  program.addHelpText(
    'after',
    ({ command }) =>
      `\nOptions of start (also what "pgmux" with no command runs) and check-config:\n${listOptions(CONFIG_OPTIONS, command)}\n\n` +
      `Options of demo:\n${listOptions(DEMO_OPTIONS, command)}\n\n` +
      'Precedence: defaults < config file < PGMUX_* environment < flags. Every config-file key has an\n' +
      'environment variable PGMUX_<KEY> (e.g. pool_size -> PGMUX_POOL_SIZE); see docs/configuration.md.\n' +
      'Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.',
  );

  return program;
}

/** Runs the CLI; resolves with the process exit code. */
export async function main(argv: string[] = process.argv.slice(2), io: Partial<CliIo> = {}): Promise<number> {
  const err = io.err ?? ((s: string) => void process.stderr.write(s));
  const program = buildProgram(io);
  // A mistyped command would otherwise reach the default command as a stray argument.
  const first = argv[0];
  if (first !== undefined && !first.startsWith('-')) {
    const names = [...program.commands.map((c) => c.name()), 'help'];
    if (!names.includes(first)) {
      const close = names.find((n) => n.startsWith(first.slice(0, 2)));
      err(`pgmux: unknown command '${first}'${close ? ` (did you mean ${close}?)` : ''}; see pgmux --help\n`);
      return 2;
    }
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return exitCodes.get(program) ?? 0;
  } catch (e) {
    if (e instanceof ConfigError) {
      err(`pgmux: ${oneLine(e.message)}\n`);
      return 2;
    }
    if (e instanceof CommanderError) {
      // Already printed by outputError; help and --version end here with code 0.
      return e.exitCode === 0 ? 0 : 2;
    }
    err(`pgmux: ${oneLine(e instanceof Error ? e.message : String(e))}\n`);
    return 1;
  }
}

function isMainModule(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  let self: string;
  try {
    self = realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
  for (const candidate of [script, `${script}.js`]) {
    try {
      if (realpathSync(candidate) === self) return true;
    } catch {
      // try the next form
    }
  }
  return false;
}

if (isMainModule()) {
  main().then(
    (code) => {
      process.exitCode = code;
      // Let stdout drain, but do not wait for stray handles.
      setTimeout(() => process.exit(code), 500).unref();
    },
    (e: unknown) => {
      process.stderr.write(`pgmux: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
