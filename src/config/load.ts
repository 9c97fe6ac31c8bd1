// Configuration loading: defaults < YAML file < PGMUX_* environment < command-line flags.
//
// Every value goes through its row of the settings schema (schema.ts), whatever its source, so
// a YAML value, an environment variable and a flag are parsed and validated identically. Error
// messages name the key the way the user wrote it (`pool_size`, `PGMUX_POOL_SIZE` or
// `--pool-size`), the bad value and what is allowed, on one line.

import { accessSync, constants as fsConstants, readFileSync, statSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { Config } from './types.js';
import { reloadTls, TlsConfigError } from '../net/tls.js';
import { HbaError, reloadHba } from '../auth/hba.js';
import { DEFAULTS, SETTINGS, envName, flagProp, type Setting } from './schema.js';
import { Invalid, formatHostPort, show, type Raw } from './values.js';

export { AUTH_METHODS, DEFAULTS, LOG_LEVELS, POOL_MODES, READ_YOUR_WRITES, envName } from './schema.js';
export { formatHostPort, parseDuration, parseHostPort, parseNodes, parseSize } from './values.js';

/** A configuration problem; `key` is the snake_case config key (or `config` for the file itself). */
export class ConfigError extends Error {
  readonly key: string;
  constructor(key: string, message: string) {
    super(message);
    this.name = 'ConfigError';
    this.key = key;
  }
}

/** What commander parses from `start` / `check-config`: --config plus each schema flag, by flagProp(). */
export interface CliFlags {
  config?: string;
  listen?: string;
  node?: string[];
  poolMode?: string;
  poolSize?: string;
  auth?: string;
  authFile?: string;
  http?: string;
  logLevel?: string;
  workers?: string;
}

export interface LoadOptions {
  /** `start` needs at least one node; other callers (demo, tests) may not. Default true. */
  requireNodes?: boolean;
  /** Base for relative paths given by flags or environment; default process.cwd(). */
  cwd?: string;
}

const BY_NAME = new Map<string, Setting>();
for (const spec of SETTINGS) {
  BY_NAME.set(spec.key, spec);
  for (const a of spec.aliases ?? []) BY_NAME.set(a, spec);
}

/** Every YAML key pgmux knows, aliases included. */
export const CONFIG_KEYS: readonly string[] = [...BY_NAME.keys()];

/** PgBouncer and Pgpool-II settings whose pgmux spelling differs -> the pgmux key to suggest. */
const RENAMED: Record<string, string> = {};
for (const s of SETTINGS) {
  for (const name of [...(s.pgbouncer ?? []), ...(s.pgpool ?? [])]) {
    if (!BY_NAME.has(name)) RENAMED[name] = s.hintAs ?? s.key;
  }
}

function levenshtein(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** The known key closest to `name` (ignoring case, '-' and '_'), if any is reasonably close. */
export function closestKey(name: string): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');
  const n = norm(name);
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of SETTINGS.map((s) => s.key)) {
    const d = levenshtein(n, norm(k));
    if (d < bestD) { bestD = d; best = k; }
  }
  for (const k of SETTINGS.flatMap((s) => s.aliases ?? [])) {
    const d = levenshtein(n, norm(k));
    if (d < bestD) { bestD = d; best = k; }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(n.length / 3)) ? best : undefined;
}

function unknownKeyError(name: string, display: string, suffix: string): ConfigError {
  const renamed = RENAMED[name.toLowerCase()];
  const close = renamed ?? closestKey(name);
  const hint = close !== undefined
    ? `did you mean ${close}?`
    : `known keys: ${SETTINGS.map((s) => s.key).join(', ')}`;
  return new ConfigError(name, `${display}: unknown key${suffix}; ${hint}`);
}

// ---------------------------------------------------------------------------------------------
// Sources.

interface Entry {
  /** The name as written (YAML key, alias, env var or flag). */
  display: string;
  spec: Setting;
  value: Raw;
}

function applyEntries(entries: Entry[], base: string, suffix: string): Partial<Config> {
  const out: Partial<Config> = {};
  const from = new Map<keyof Config, string>();
  for (const e of entries) {
    const prev = from.get(e.spec.field);
    if (prev !== undefined) {
      throw new ConfigError(e.spec.key, `${e.display}: given twice, also as ${prev}${suffix}; keep one`);
    }
    from.set(e.spec.field, e.display);
    try {
      (out as Record<string, unknown>)[e.spec.field] = e.spec.parse(e.value, base);
    } catch (err) {
      if (err instanceof Invalid) throw new ConfigError(e.spec.key, `${e.display}: ${err.message}${suffix}`);
      throw err;
    }
  }
  return out;
}

/**
 * A parsed YAML document -> partial config, validated key by key. `source` (usually the file
 * path) is named in error messages; relative auth_file paths resolve against `opts.baseDir`
 * (default: the directory of `source` when it looks like a path, else the cwd).
 */
export function parseConfigObject(obj: unknown, source: string, opts: { baseDir?: string } = {}): Partial<Config> {
  const suffix = ` (in ${source})`;
  if (obj === null || obj === undefined) return {};
  if (typeof obj !== 'object' || Array.isArray(obj)) {
    throw new ConfigError('config', `${source}: expected a mapping of settings (key: value) at the top level, got ${show(obj)}`);
  }
  const entries: Entry[] = [];
  for (const [name, value] of Object.entries(obj as Record<string, unknown>)) {
    const spec = BY_NAME.get(name);
    if (!spec) throw unknownKeyError(name, name, suffix);
    entries.push({ display: name, spec, value });
  }
  const base = opts.baseDir ?? (/[\\/]|\.ya?ml$/i.test(source) ? dirname(resolvePath(source)) : process.cwd());
  return applyEntries(entries, base, suffix);
}

/** PGMUX_* variables -> partial config. Empty variables count as unset; unknown PGMUX_* are ignored. */
export function parseEnv(env: NodeJS.ProcessEnv, cwd: string = process.cwd()): Partial<Config> {
  const entries: Entry[] = [];
  for (const [name, spec] of BY_NAME) {
    const varName = envName(name);
    const value = env[varName];
    if (value === undefined || value === '') continue;
    entries.push({ display: varName, spec, value });
  }
  return applyEntries(entries, cwd, '');
}

function parseFlags(flags: CliFlags, cwd: string): Partial<Config> {
  const entries: Entry[] = [];
  for (const spec of SETTINGS) {
    if (spec.flag === undefined) continue;
    const value = (flags as Record<string, string | string[] | undefined>)[flagProp(spec.flag)];
    if (value === undefined || (Array.isArray(value) && value.length === 0)) continue;
    // A repeated flag (--node) is one list: each occurrence may itself hold a comma-separated list.
    entries.push({ display: /^--[a-z-]+/.exec(spec.flag.name)![0], spec, value: Array.isArray(value) ? value.join(',') : value });
  }
  return applyEntries(entries, cwd, '');
}

function readConfigFile(path: string, display: string, cwd: string): Partial<Config> {
  const abs = resolvePath(cwd, path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new ConfigError('config', `${display}: cannot read ${path}: ${why}`);
  }
  const foreign = foreignFormat(text);
  if (foreign !== null) throw new ConfigError('config', `${display}: ${path} looks like ${foreign.what}, not pgmux YAML; convert it with: pgmux import ${foreign.kindFlag}${path} > pgmux.yaml`);
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    const first = String((err as Error).message).split('\n')[0];
    throw new ConfigError('config', `${display}: ${path} is not valid YAML: ${first}`);
  }
  // key = value lines read as one long YAML string: say so in one line, not with the file's text.
  if (typeof doc === 'string' && /^\s*[A-Za-z_][\w.]*\s*=/m.test(text)) {
    throw new ConfigError('config', `${display}: ${path} has "key = value" lines (an INI or .conf file), not pgmux YAML ("key: value"); a pgbouncer.ini or pgpool.conf converts with: pgmux import --kind pgbouncer|pgpool ${path} > pgmux.yaml`);
  }
  return parseConfigObject(doc, path, { baseDir: dirname(abs) });
}

/**
 * A PgBouncer or Pgpool-II config file given where pgmux YAML belongs: recognised by what
 * `pgmux import` detects (sections, backend_hostname0) or by Pgpool-II's own keys.
 */
function foreignFormat(text: string): { what: string; kindFlag: string } | null {
  if (/^[ \t]*\[[ \t]*(databases|pgbouncer|users|peers)[ \t]*\][ \t]*$/im.test(text)) return { what: 'a pgbouncer.ini', kindFlag: '' };
  if (/^[ \t]*backend_hostname\d+[ \t]*=/m.test(text)) return { what: 'a pgpool.conf', kindFlag: '' };
  if (/^[ \t]*(num_init_children|pcp_port|backend_clustering_mode)[ \t]*=/m.test(text)) return { what: 'a pgpool.conf', kindFlag: '--kind pgpool ' };
  return null;
}

function wildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '';
}

/** Cross-key checks on a complete config. */
export function validate(c: Config, requireNodes: boolean): void {
  if (c.minPoolSize > c.poolSize) {
    throw new ConfigError('min_pool_size', `min_pool_size: ${c.minPoolSize} is larger than pool_size ${c.poolSize} (expected 0..${c.poolSize})`);
  }
  if (c.auth !== 'trust' && c.authFile === null && c.authUser === null) {
    throw new ConfigError('auth_file', `auth_file: auth ${c.auth} needs an auth file (set auth_file, PGMUX_AUTH_FILE or --auth-file) or auth_user for auth_query, or use auth trust`);
  }
  if (c.authFile !== null) {
    let st;
    try {
      st = statSync(c.authFile);
      accessSync(c.authFile, fsConstants.R_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable' : `cannot be read (${code ?? (err as Error).message})`;
      throw new ConfigError('auth_file', `auth_file: ${JSON.stringify(c.authFile)} ${why} (expected a readable userlist file)`);
    }
    if (!st.isFile()) throw new ConfigError('auth_file', `auth_file: ${JSON.stringify(c.authFile)} is not a file (expected a readable userlist file)`);
  }
  if (
    c.http !== null && c.http.port !== 0 && c.http.port === c.listen.port &&
    (c.http.host === c.listen.host || wildcard(c.http.host) || wildcard(c.listen.host))
  ) {
    throw new ConfigError('http', `http: ${formatHostPort(c.http)} clashes with listen ${formatHostPort(c.listen)} (expected another port)`);
  }
  if (c.clientTls !== 'disable' && (c.clientTlsCertFile === null || c.clientTlsKeyFile === null)) {
    const key = c.clientTlsCertFile === null ? 'client_tls_cert_file' : 'client_tls_key_file';
    throw new ConfigError(key, `${key}: client_tls ${c.clientTls} needs a certificate and its key (set client_tls_cert_file and client_tls_key_file), or use client_tls disable`);
  }
  // Certificates, keys and the HBA file are read now, so a bad one fails start, check-config
  // and RELOAD (which keeps the running configuration) rather than the first client.
  try {
    reloadTls(c);
    const rules = reloadHba(c);
    const needsSecret = rules?.find((r) => r.method !== 'trust' && r.method !== 'reject');
    if (needsSecret && c.authFile === null && c.authUser === null) {
      throw new ConfigError('auth_file', `auth_file: ${needsSecret.file}:${needsSecret.line} uses ${needsSecret.method}, which needs an auth file (set auth_file, PGMUX_AUTH_FILE or --auth-file)`);
    }
  } catch (err) {
    if (err instanceof TlsConfigError) throw new ConfigError(err.key, err.message);
    if (err instanceof HbaError) throw new ConfigError('hba_file', `hba_file: ${err.message}`);
    throw err;
  }
  if (c.peerId === null && (c.peers.length > 0 || c.peerBudgets)) {
    throw new ConfigError('peer_id', `peer_id: ${c.peerBudgets ? 'peer_budgets' : 'peers'} needs this instance's peer_id (0..4095, unique among the peers; it goes into the cancel keys)`);
  }
  if (requireNodes && c.nodes.length === 0) {
    throw new ConfigError('nodes', 'nodes: at least one --node HOST:PORT is required (or nodes in the config file, or PGMUX_NODES)');
  }
}

/**
 * The full configuration: defaults < YAML file (flags.config, else PGMUX_CONFIG) < PGMUX_*
 * environment < flags. A later source replaces a value as a whole (so --node replaces the
 * nodes of the file and environment). Throws ConfigError on the first problem.
 */
export function loadConfig(flags: CliFlags, env: NodeJS.ProcessEnv = process.env, opts: LoadOptions = {}): Config {
  const cwd = opts.cwd ?? process.cwd();
  let file: Partial<Config> = {};
  if (flags.config !== undefined && flags.config !== '') file = readConfigFile(flags.config, '--config', cwd);
  else if (env.PGMUX_CONFIG) file = readConfigFile(env.PGMUX_CONFIG, 'PGMUX_CONFIG', cwd);
  const fromEnv = parseEnv(env, cwd);
  const fromFlags = parseFlags(flags, cwd);
  const config: Config = { ...DEFAULTS, ...file, ...fromEnv, ...fromFlags };
  // Fresh copies so callers never share (frozen) default objects.
  config.listen = { ...config.listen };
  config.http = config.http && { ...config.http };
  config.nodes = config.nodes.map((n) => ({ ...n }));
  config.databases = config.databases.map((e) => ({ ...e }));
  config.users = config.users.map((u) => ({ ...u }));
  validate(config, opts.requireNodes ?? true);
  return config;
}


/**
 * The config as a plain snake_case object that parseConfigObject accepts back, in the schema's
 * order; durations and sizes in the largest exact unit. Secrets are replaced by "********"
 * unless `reveal`.
 */
export function configToObject(c: Config, opts: { reveal?: boolean } = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const v = c[s.field];
    out[s.key] = s.secret && v !== null && !opts.reveal ? '********' : s.showMasked && !opts.reveal ? s.showMasked(v) : s.show ? s.show(v) : v;
  }
  return out;
}
