// Configuration loading: defaults < YAML file < PGMUX_* environment < command-line flags.
//
// Every value goes through one table of key specs (KEYS below), whatever its source, so a
// YAML value, an environment variable and a flag are parsed and validated identically. Error
// messages name the key the way the user wrote it (`pool_size`, `PGMUX_POOL_SIZE` or
// `--pool-size`), the bad value and what is allowed, on one line.

import { accessSync, constants as fsConstants, readFileSync, statSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { AuthMethod, Config, HostPort, LogLevel, NodeConfig, PoolMode, ReadYourWrites, TlsMinVersion } from './types.js';
import { CLIENT_TLS_MODES, reloadTls, SERVER_TLS_MODES, TlsConfigError } from '../server/tls.js';
import { HbaError, reloadHba } from '../server/hba.js';
import { parseFunctionEntry } from '../routing/classifier.js';
import { quoteName } from '../routing/functionCatalog.js';

const MiB = 1024 * 1024;

const defaults: Config = {
  listen: Object.freeze({ host: '0.0.0.0', port: 6432 }),
  http: null,
  nodes: Object.freeze([]) as unknown as NodeConfig[],
  poolMode: 'transaction',
  poolSize: 20,
  minPoolSize: 0,
  maxClientConn: 10000,
  workers: 1,
  auth: 'trust',
  authFile: null,
  serverPassword: null,
  authUser: null,
  authQuery: 'SELECT usename, passwd FROM pg_shadow WHERE usename = $1',
  authDbname: 'postgres',
  authUserPassword: null,
  queryWaitTimeoutMs: 120_000,
  serverIdleTimeoutMs: 600_000,
  serverLifetimeMs: 3_600_000,
  clientIdleTimeoutMs: 0,
  idleTransactionTimeoutMs: 0,
  serverConnectTimeoutMs: 15_000,
  serverLoginRetryMs: 15_000,
  clientLoginTimeoutMs: 60_000,
  // 64 MiB: far above any sane single query or row, small enough that one misbehaving
  // client cannot make pgmux buffer a gigabyte. PostgreSQL itself stops at 1 GiB per field.
  maxMessageBytes: 64 * MiB,
  serverResetQuery: 'DISCARD ALL',
  maxPreparedStatements: 200,
  // Every SET / RESET / set_config() is tracked by name now; this only adds names to read back.
  trackExtraParameters: Object.freeze([]) as unknown as string[],
  adminUsers: Object.freeze([]) as unknown as string[],
  statsUsers: Object.freeze([]) as unknown as string[],
  shutdownTimeoutMs: 30_000,
  logLevel: 'info',
  healthCheckPeriodMs: 1000,
  healthCheckTimeoutMs: 5000,
  healthCheckMaxRetries: 3,
  healthCheckUser: null,
  healthCheckPassword: null,
  healthCheckDatabase: 'postgres',
  failoverTimeoutMs: 30_000,
  onRoleChange: null,
  maxLagBytes: null,
  maxLagMs: 10_000,
  lagHysteresis: 0.2,
  readWithoutPrimaryTimeoutMs: 0,
  fallbackToPrimary: true,
  readYourWrites: 'off',
  readYourWritesWindowMs: 1000,
  writeFunctions: Object.freeze([]) as unknown as string[],
  readOnlyFunctions: Object.freeze([]) as unknown as string[],
  functionCatalogRefreshMs: 60_000,
  clientTls: 'disable',
  clientTlsCertFile: null,
  clientTlsKeyFile: null,
  clientTlsCaFile: null,
  clientTlsMinVersion: 'TLSv1.2',
  clientTlsCiphers: null,
  serverTls: 'disable',
  serverTlsCaFile: null,
  hbaFile: null,
  maxDbConnections: 0,
  maxUserConnections: 0,
  maxUnauthenticatedConnections: 1000,
};

/** Every default (frozen; loadConfig returns fresh copies). */
export const DEFAULTS: Config = Object.freeze(defaults);

/** A configuration problem; `key` is the snake_case config key (or `config` for the file itself). */
export class ConfigError extends Error {
  readonly key: string;
  constructor(key: string, message: string) {
    super(message);
    this.name = 'ConfigError';
    this.key = key;
  }
}

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

export const POOL_MODES: readonly PoolMode[] = ['transaction', 'session'];
export const AUTH_METHODS: readonly AuthMethod[] = ['trust', 'password', 'md5', 'scram-sha-256'];
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

// setTimeout fires at once for anything above 2^31-1 ms (~24.8 days).
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
// A message's length field is an int32.
const MAX_MESSAGE_BYTES = 2 ** 31 - 1;
const MIN_MESSAGE_BYTES = 1024;

// ---------------------------------------------------------------------------------------------
// Value parsers. Each gets the raw value (YAML scalar/object, or a string from env/flags) and
// returns the parsed value or throws Invalid with the problem text; the caller prefixes the key.

class Invalid extends Error {}

type Raw = unknown;

function show(v: Raw): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null || v === undefined) return 'an empty value';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

function asString(v: Raw, what: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  throw new Invalid(`${show(v)} is not ${what}`);
}

function parseInteger(v: Raw, min: number, max: number): number {
  const range = `(expected ${min}..${max})`;
  let n: number;
  if (typeof v === 'number') {
    n = v;
  } else if (typeof v === 'string' && /^\s*[+-]?\d+\s*$/.test(v)) {
    n = Number(v.trim());
  } else {
    throw new Invalid(`${show(v)} is not a whole number ${range}`);
  }
  if (!Number.isSafeInteger(n)) throw new Invalid(`${show(v)} is not a whole number ${range}`);
  if (n < min || n > max) throw new Invalid(`${show(v)} is out of range ${range}`);
  return n;
}

function parseEnum<T extends string>(v: Raw, allowed: readonly T[], extra?: Record<string, string>): T {
  const s = typeof v === 'string' ? v.trim().toLowerCase() : undefined;
  if (s !== undefined && (allowed as readonly string[]).includes(s)) return s as T;
  const why = s !== undefined && extra?.[s] ? `${extra[s]}; ` : '';
  throw new Invalid(`${show(v)} is not supported (${why}expected one of ${allowed.join(', ')})`);
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000, sec: 1000, secs: 1000,
  m: 60_000, min: 60_000, mins: 60_000,
  h: 3_600_000, d: 86_400_000,
};

/** Seconds (number or unit-less string, fractional allowed) or "<number><unit>"; returns ms. */
export function parseDuration(v: Raw): number {
  return parseDurationAtLeast(v, 0);
}

function parseDurationAtLeast(v: Raw, minMs: number): number {
  const expected = 'expected seconds like 30 or 0.5, or a number with a unit: 500ms, 2s, 5m, 1h, 1d; 0 disables';
  let ms: number;
  if (typeof v === 'number' && Number.isFinite(v)) {
    ms = v * 1000;
  } else if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(v);
    const unit = m ? (m[2] ?? '').toLowerCase() : '';
    const factor = unit === '' ? 1000 : DURATION_UNITS[unit];
    if (!m || factor === undefined) throw new Invalid(`${show(v)} is not a duration (${expected})`);
    ms = Number(m[1]) * factor;
  } else {
    throw new Invalid(`${show(v)} is not a duration (${expected})`);
  }
  if (ms < 0) throw new Invalid(`${show(v)} is negative (${expected})`);
  if (ms > MAX_TIMEOUT_MS) throw new Invalid(`${show(v)} is too long (at most 24d, i.e. ${MAX_TIMEOUT_MS}ms)`);
  if (ms < minMs) throw new Invalid(`${show(v)} is too short (at least ${minMs}ms)`);
  const rounded = Math.round(ms);
  return ms > 0 && rounded === 0 ? 1 : rounded;
}

// PostgreSQL's convention: kB/MB/GB are powers of 1024.
const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1024, k: 1024, kib: 1024,
  mb: MiB, m: MiB, mib: MiB,
  gb: 1024 * MiB, g: 1024 * MiB, gib: 1024 * MiB,
};

/** Bytes (number or unit-less string) or "<number><unit>" with B, kB, MB, GB (1024-based). */
export function parseSize(v: Raw): number {
  const expected = `expected bytes or a number with a unit: 512kB, 64MB, 1GB; ${MIN_MESSAGE_BYTES}B..2GB-1`;
  let bytes: number;
  if (typeof v === 'number' && Number.isFinite(v)) {
    bytes = v;
  } else if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(v);
    const factor = m ? SIZE_UNITS[(m[2] ?? '').toLowerCase() || 'b'] : undefined;
    if (!m || factor === undefined) throw new Invalid(`${show(v)} is not a size (${expected})`);
    bytes = Number(m[1]) * factor;
  } else {
    throw new Invalid(`${show(v)} is not a size (${expected})`);
  }
  if (!Number.isInteger(bytes)) throw new Invalid(`${show(v)} is not a whole number of bytes (${expected})`);
  if (bytes < MIN_MESSAGE_BYTES || bytes > MAX_MESSAGE_BYTES) throw new Invalid(`${show(v)} is out of range (${expected})`);
  return bytes;
}

function parsePort(s: string, allowZero: boolean, whole: string): number {
  const min = allowZero ? 0 : 1;
  if (!/^\d+$/.test(s)) throw new Invalid(`${JSON.stringify(whole)} has no valid port (expected ${min}..65535)`);
  const port = Number(s);
  if (port < min || port > 65535) {
    throw new Invalid(`${JSON.stringify(whole)}: port ${port} is out of range (expected ${min}..65535${allowZero ? ', 0 = any free port' : ''})`);
  }
  return port;
}

function checkHost(host: string, whole: string): string {
  if (host === '' || /[\s/@,]/.test(host)) throw new Invalid(`${JSON.stringify(whole)} has no valid host`);
  return host;
}

/**
 * "host:port", "[v6addr]:port", or (when defaultPort is given) a bare "host"/"[v6addr]".
 * When defaultHost is given, a bare port ("6432" or ":6432") is accepted too.
 */
export function parseHostPort(
  s: string,
  o: { allowZeroPort: boolean; defaultHost?: string; defaultPort?: number },
): HostPort {
  const t = s.trim();
  const form = o.defaultPort !== undefined ? 'HOST[:PORT]' : 'HOST:PORT';
  if (o.defaultHost !== undefined) {
    const bare = /^:?(\d+)$/.exec(t);
    if (bare) return { host: o.defaultHost, port: parsePort(bare[1]!, o.allowZeroPort, s) };
  }
  if (t.startsWith('[')) {
    const m = /^\[([^\]]+)\](?::(.*))?$/.exec(t);
    if (!m || !m[1]!.includes(':')) throw new Invalid(`${JSON.stringify(s)} is not ${form} (IPv6 as [::1]:6432)`);
    if (m[2] === undefined) {
      if (o.defaultPort === undefined) throw new Invalid(`${JSON.stringify(s)} has no port (expected ${form})`);
      return { host: m[1]!, port: o.defaultPort };
    }
    return { host: m[1]!, port: parsePort(m[2], o.allowZeroPort, s) };
  }
  const colons = t.split(':').length - 1;
  if (colons > 1) throw new Invalid(`${JSON.stringify(s)} is ambiguous: write IPv6 addresses in brackets, e.g. [::1]:6432`);
  if (colons === 0) {
    if (o.defaultPort === undefined) throw new Invalid(`${JSON.stringify(s)} has no port (expected ${form})`);
    return { host: checkHost(t, s), port: o.defaultPort };
  }
  const i = t.indexOf(':');
  return { host: checkHost(t.slice(0, i), s), port: parsePort(t.slice(i + 1), o.allowZeroPort, s) };
}

const NODE_FORM = 'expected "host:port[@weight]" or {host, port, weight}';

function parseWeight(v: Raw, whole: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new Invalid(`${JSON.stringify(whole)}: weight ${show(v)} is not a whole number >= 0`);
  }
  return n;
}

function parseNodeString(s: string): NodeConfig {
  const t = s.trim();
  const at = t.lastIndexOf('@');
  const addr = at >= 0 ? t.slice(0, at) : t;
  const weight = at >= 0 ? parseWeight(t.slice(at + 1), s) : 1;
  const hp = parseHostPort(addr, { allowZeroPort: false, defaultPort: 5432 });
  return { host: hp.host, port: hp.port, weight };
}

function parseNodeObject(o: Record<string, unknown>): NodeConfig {
  for (const k of Object.keys(o)) {
    if (k !== 'host' && k !== 'port' && k !== 'weight' && k !== 'max_lag_bytes' && k !== 'max_lag_ms') {
      throw new Invalid(`node ${JSON.stringify(o)} has unknown key ${JSON.stringify(k)} (${NODE_FORM})`);
    }
  }
  const whole = JSON.stringify(o);
  if (typeof o.host !== 'string') throw new Invalid(`node ${whole} has no host (${NODE_FORM})`);
  const host = checkHost(o.host.trim(), o.host);
  const port = o.port === undefined ? 5432 : parsePort(String(o.port).trim(), false, `${host}:${String(o.port)}`);
  const weight = o.weight === undefined ? 1 : parseWeight(o.weight, whole);
  const node: NodeConfig = { host, port, weight };
  if (o.max_lag_bytes !== undefined) node.maxLagBytes = parseOptionalLimit(o.max_lag_bytes as Raw, parseSize);
  if (o.max_lag_ms !== undefined) node.maxLagMs = parseOptionalLimit(o.max_lag_ms as Raw, parseDuration);
  return node;
}

/** A list of node strings/objects, or one comma-separated string. */
export function parseNodes(v: Raw): NodeConfig[] {
  let items: unknown[];
  if (v === null || v === undefined) items = [];
  else if (typeof v === 'string') items = v.split(',').filter((x) => x.trim() !== '');
  else if (Array.isArray(v)) items = v;
  else if (typeof v === 'object') items = [v];
  else throw new Invalid(`${show(v)} is not a list of nodes (${NODE_FORM})`);
  const nodes: NodeConfig[] = [];
  const seen = new Set<string>();
  for (const item of items) {
    let node: NodeConfig;
    if (typeof item === 'string') node = parseNodeString(item);
    else if (item !== null && typeof item === 'object' && !Array.isArray(item)) node = parseNodeObject(item as Record<string, unknown>);
    else throw new Invalid(`${show(item)} is not a node (${NODE_FORM})`);
    const id = `${node.host.toLowerCase()}:${node.port}`;
    if (seen.has(id)) throw new Invalid(`${formatHostPort(node)} is listed twice`);
    seen.add(id);
    nodes.push(node);
  }
  return nodes;
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

function parseHttp(v: Raw): HostPort | null {
  if (v === null || v === false) return null;
  const s = asString(v, 'HOST:PORT');
  if (['off', 'none', 'false', 'no', ''].includes(s.trim().toLowerCase())) return null;
  return parseHostPort(s, { allowZeroPort: true, defaultHost: '0.0.0.0' });
}

function parseOptionalString(v: Raw, what: string): string | null {
  if (v === null) return null;
  const s = asString(v, what);
  return s === '' ? null : s;
}

function parseName(v: Raw, what: string): string {
  const s = v === null ? '' : asString(v, what);
  if (s === '') throw new Invalid(`${show(v)} is not ${what} (expected a non-empty string)`);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The key table.

interface KeySpec {
  /** snake_case YAML key; the env var is PGMUX_ + upper case of it. */
  key: string;
  field: keyof Config;
  aliases?: string[];
  /** Parse one raw value; `base` resolves relative paths. */
  parse(v: Raw, base: string): Config[keyof Config];
}

const KEYS: KeySpec[] = [
  {
    key: 'listen',
    field: 'listen',
    parse: (v) => parseHostPort(asString(v, 'HOST:PORT'), { allowZeroPort: true, defaultHost: DEFAULTS.listen.host }),
  },
  { key: 'http', field: 'http', parse: (v) => parseHttp(v) },
  { key: 'nodes', field: 'nodes', parse: (v) => parseNodes(v) },
  {
    key: 'pool_mode',
    field: 'poolMode',
    parse: (v) => parseEnum(v, POOL_MODES, { statement: 'statement pooling breaks multi-statement transactions and is not offered' }),
  },
  { key: 'pool_size', field: 'poolSize', aliases: ['default_pool_size'], parse: (v) => parseInteger(v, 1, 10000) },
  { key: 'min_pool_size', field: 'minPoolSize', parse: (v) => parseInteger(v, 0, 10000) },
  { key: 'max_client_conn', field: 'maxClientConn', parse: (v) => parseInteger(v, 1, 1_000_000) },
  { key: 'workers', field: 'workers', parse: (v) => parseInteger(v, 1, 64) },
  {
    key: 'auth',
    field: 'auth',
    aliases: ['auth_type'],
    parse: (v) => parseEnum(v, AUTH_METHODS, {
      scram: 'write it as scram-sha-256',
      plain: 'use password',
      cert: 'TLS client certificates are not supported',
      hba: 'hba files are not supported',
      any: 'use trust',
    }),
  },
  {
    key: 'auth_file',
    field: 'authFile',
    parse: (v, base) => {
      const s = parseOptionalString(v, 'a file path');
      return s === null ? null : resolvePath(base, s);
    },
  },
  { key: 'server_password', field: 'serverPassword', parse: (v) => parseOptionalString(v, 'a password') },
  { key: 'auth_user', field: 'authUser', parse: (v) => parseOptionalString(v, 'a user name') },
  { key: 'auth_query', field: 'authQuery', parse: (v) => parseName(v, 'an SQL query') },
  { key: 'auth_dbname', field: 'authDbname', parse: (v) => parseName(v, 'a database name') },
  { key: 'auth_user_password', field: 'authUserPassword', parse: (v) => parseOptionalString(v, 'a password') },
  { key: 'query_wait_timeout', field: 'queryWaitTimeoutMs', parse: parseDuration },
  { key: 'server_idle_timeout', field: 'serverIdleTimeoutMs', parse: parseDuration },
  { key: 'server_lifetime', field: 'serverLifetimeMs', parse: parseDuration },
  { key: 'client_idle_timeout', field: 'clientIdleTimeoutMs', parse: parseDuration },
  { key: 'idle_transaction_timeout', field: 'idleTransactionTimeoutMs', parse: parseDuration },
  { key: 'server_connect_timeout', field: 'serverConnectTimeoutMs', parse: parseDuration },
  { key: 'server_login_retry', field: 'serverLoginRetryMs', parse: (v) => parseDurationAtLeast(v, 100) },
  { key: 'client_login_timeout', field: 'clientLoginTimeoutMs', parse: parseDuration },
  { key: 'max_message_size', field: 'maxMessageBytes', parse: parseSize },
  { key: 'admin_users', field: 'adminUsers', parse: (v) => parseUserList(v) },
  { key: 'stats_users', field: 'statsUsers', parse: (v) => parseUserList(v) },
  { key: 'shutdown_timeout', field: 'shutdownTimeoutMs', parse: parseDuration },
  { key: 'track_extra_parameters', field: 'trackExtraParameters', parse: (v) => parseNameList(v) },
  { key: 'max_prepared_statements', field: 'maxPreparedStatements', parse: (v) => parseInteger(v, 0, 100000) },
  {
    key: 'server_reset_query',
    field: 'serverResetQuery',
    parse: (v) => (v === null ? '' : asString(v, 'an SQL string')),
  },
  { key: 'log_level', field: 'logLevel', parse: (v) => parseEnum(v, LOG_LEVELS, { warning: 'write it as warn' }) },
  { key: 'health_check_period', field: 'healthCheckPeriodMs', parse: (v) => parseDurationAtLeast(v, 100) },
  { key: 'health_check_timeout', field: 'healthCheckTimeoutMs', parse: (v) => parseDurationAtLeast(v, 100) },
  { key: 'health_check_max_retries', field: 'healthCheckMaxRetries', parse: (v) => parseInteger(v, 1, 1000) },
  { key: 'health_check_user', field: 'healthCheckUser', parse: (v) => (v === null ? null : parseName(v, 'a user name')) },
  { key: 'health_check_password', field: 'healthCheckPassword', parse: (v) => parseOptionalString(v, 'a password') },
  { key: 'health_check_database', field: 'healthCheckDatabase', parse: (v) => parseName(v, 'a database name') },
  { key: 'failover_timeout', field: 'failoverTimeoutMs', parse: parseDuration },
  { key: 'on_role_change', field: 'onRoleChange', parse: (v) => parseOptionalString(v, 'a shell command') },
  { key: 'max_lag_bytes', field: 'maxLagBytes', aliases: ['delay_threshold'], parse: (v) => parseOptionalLimit(v, parseSize) },
  { key: 'max_lag_ms', field: 'maxLagMs', parse: (v) => parseOptionalLimit(v, parseDuration) },
  { key: 'lag_hysteresis', field: 'lagHysteresis', parse: (v) => parseFraction(v) },
  { key: 'read_without_primary_timeout', field: 'readWithoutPrimaryTimeoutMs', parse: parseDuration },
  { key: 'fallback_to_primary', field: 'fallbackToPrimary', parse: (v) => parseBoolean(v) },
  { key: 'read_your_writes', field: 'readYourWrites', parse: (v) => parseEnum(v, READ_YOUR_WRITES) },
  { key: 'read_your_writes_window', field: 'readYourWritesWindowMs', parse: parseDuration },
  { key: 'write_functions', field: 'writeFunctions', parse: (v) => parseFunctionList(v, 'write_functions') },
  { key: 'read_only_functions', field: 'readOnlyFunctions', parse: (v) => parseFunctionList(v, 'read_only_functions') },
  { key: 'function_catalog_refresh', field: 'functionCatalogRefreshMs', parse: parseDuration },
  {
    key: 'client_tls',
    field: 'clientTls',
    parse: (v) => parseEnum(v, CLIENT_TLS_MODES, { prefer: 'write it as allow', 'verify-ca': 'pgmux does not verify client certificates; use require', 'verify-full': 'pgmux does not verify client certificates; use require' }),
  },
  { key: 'client_tls_cert_file', field: 'clientTlsCertFile', parse: (v, base) => parsePath(v, base) },
  { key: 'client_tls_key_file', field: 'clientTlsKeyFile', parse: (v, base) => parsePath(v, base) },
  { key: 'client_tls_ca_file', field: 'clientTlsCaFile', parse: (v, base) => parsePath(v, base) },
  { key: 'client_tls_min_version', field: 'clientTlsMinVersion', parse: (v) => parseTlsVersion(v) },
  { key: 'client_tls_ciphers', field: 'clientTlsCiphers', parse: (v) => parseOptionalString(v, 'an OpenSSL cipher list') },
  {
    key: 'server_tls',
    field: 'serverTls',
    parse: (v) => parseEnum(v, SERVER_TLS_MODES, { allow: 'use prefer or disable' }),
  },
  { key: 'server_tls_ca_file', field: 'serverTlsCaFile', parse: (v, base) => parsePath(v, base) },
  { key: 'hba_file', field: 'hbaFile', parse: (v, base) => parsePath(v, base) },
  { key: 'max_db_connections', field: 'maxDbConnections', parse: (v) => parseInteger(v, 0, 1_000_000) },
  { key: 'max_user_connections', field: 'maxUserConnections', parse: (v) => parseInteger(v, 0, 1_000_000) },
  { key: 'max_unauthenticated_connections', field: 'maxUnauthenticatedConnections', parse: (v) => parseInteger(v, 0, 1_000_000) },
];

/** An optional file path, resolved against the config file's directory (or the cwd). */
function parsePath(v: Raw, base: string): string | null {
  const s = parseOptionalString(v, 'a file path');
  return s === null ? null : resolvePath(base, s);
}

function parseTlsVersion(v: Raw): TlsMinVersion {
  const expected = 'expected TLSv1.2 or TLSv1.3';
  const t = typeof v === 'number' ? v.toFixed(1) : typeof v === 'string' ? v.trim().toLowerCase().replace(/^tlsv?/, '') : '';
  if (t === '1.2') return 'TLSv1.2';
  if (t === '1.3') return 'TLSv1.3';
  if (t === '1' || t === '1.0' || t === '1.1') throw new Invalid(`${show(v)} is too old (${expected})`);
  throw new Invalid(`${show(v)} is not a TLS version (${expected})`);
}

export const READ_YOUR_WRITES: readonly ReadYourWrites[] = ['off', 'window', 'lsn'];

/** A limit that may be switched off with null / "off" / "none". */
function parseOptionalLimit(v: Raw, parse: (v: Raw) => number): number | null {
  if (v === null || (typeof v === 'string' && /^\s*(off|none)\s*$/i.test(v))) return null;
  return parse(v);
}

function parseFraction(v: Raw): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v.trim()) : NaN;
  if (!Number.isFinite(n) || n < 0 || n >= 1) throw new Invalid(`${show(v)} is not a fraction (expected 0 <= x < 1, e.g. 0.2)`);
  return n;
}

function parseBoolean(v: Raw): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const t = v.trim().toLowerCase();
    if (['on', 'true', 'yes', '1'].includes(t)) return true;
    if (['off', 'false', 'no', '0'].includes(t)) return false;
  }
  throw new Invalid(`${show(v)} is not a boolean (expected on/off, true/false)`);
}

function parseUserList(v: Raw): string[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of user names`);
  return items
    .map((x) => {
      if (typeof x !== 'string') throw new Invalid(`${show(x as Raw)} is not a user name`);
      return x.trim();
    })
    .filter((x) => x !== '');
}

function parseNameList(v: Raw): string[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of function names`);
  return items.map((x) => {
    if (typeof x !== 'string' || !/^\s*[A-Za-z_][A-Za-z0-9_$.]*\s*$/.test(x)) throw new Invalid(`${show(x as Raw)} is not a function name`);
    return x.trim().toLowerCase();
  });
}

/**
 * write_functions / read_only_functions: a list (or comma-separated string) of `name`,
 * `schema.name`, `"Quoted"` or `prefix*` entries, as the classifier reads them. Kept in a
 * canonical form: unquoted names lowercased, quotes only where needed.
 */
function parseFunctionList(v: Raw, setting: string): string[] {
  const items = typeof v === 'string' ? v.split(',').filter((x) => x.trim() !== '') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of function names`);
  return items.map((x) => {
    if (typeof x !== 'string') throw new Invalid(`${show(x as Raw)} is not a function name`);
    let e: { schema: string | null; name: string; prefix: boolean };
    try {
      e = parseFunctionEntry(x.trim(), setting);
    } catch {
      throw new Invalid(`${show(x)} is not a function name (expected name, schema.name, "Quoted" or a prefix ending in *)`);
    }
    return (e.schema === null ? '' : `${quoteName(e.schema)}.`) + quoteName(e.name) + (e.prefix ? '*' : '');
  });
}

const BY_NAME = new Map<string, KeySpec>();
for (const spec of KEYS) {
  BY_NAME.set(spec.key, spec);
  for (const a of spec.aliases ?? []) BY_NAME.set(a, spec);
}

/** Every YAML key pgmux knows, aliases included. */
export const CONFIG_KEYS: readonly string[] = [...BY_NAME.keys()];

/** PgBouncer and Pgpool-II settings whose pgmux spelling differs. */
const RENAMED: Record<string, string> = {
  listen_addr: 'listen ("host:port")',
  listen_port: 'listen ("host:port")',
  listen_addresses: 'listen ("host:port")',
  port: 'listen ("host:port")',
  max_packet_size: 'max_message_size',
  max_pool: 'pool_size',
  num_init_children: 'max_client_conn',
  failover_command: 'on_role_change',
  follow_primary_command: 'on_role_change',
  loglevel: 'log_level',
  log_min_messages: 'log_level',
  client_tls_sslmode: 'client_tls',
  client_tls_protocols: 'client_tls_min_version',
  server_tls_sslmode: 'server_tls',
  auth_hba_file: 'hba_file',
};

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
  for (const k of KEYS.map((s) => s.key)) {
    const d = levenshtein(n, norm(k));
    if (d < bestD) { bestD = d; best = k; }
  }
  for (const k of KEYS.flatMap((s) => s.aliases ?? [])) {
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
    : `known keys: ${KEYS.map((s) => s.key).join(', ')}`;
  return new ConfigError(name, `${display}: unknown key${suffix}; ${hint}`);
}

// ---------------------------------------------------------------------------------------------
// Sources.

interface Entry {
  /** The name as written (YAML key, alias, env var or flag). */
  display: string;
  spec: KeySpec;
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

export function envName(key: string): string {
  return `PGMUX_${key.toUpperCase()}`;
}

const FLAG_KEYS: Array<[keyof CliFlags, string, string]> = [
  ['listen', 'listen', '--listen'],
  ['http', 'http', '--http'],
  ['poolMode', 'pool_mode', '--pool-mode'],
  ['poolSize', 'pool_size', '--pool-size'],
  ['auth', 'auth', '--auth'],
  ['authFile', 'auth_file', '--auth-file'],
  ['logLevel', 'log_level', '--log-level'],
  ['workers', 'workers', '--workers'],
];

function parseFlags(flags: CliFlags, cwd: string): Partial<Config> {
  const entries: Entry[] = [];
  for (const [prop, key, display] of FLAG_KEYS) {
    const value = flags[prop];
    if (value !== undefined) entries.push({ display, spec: BY_NAME.get(key)!, value });
  }
  const out = applyEntries(entries, cwd, '');
  if (flags.node !== undefined && flags.node.length > 0) {
    try {
      out.nodes = parseNodes(flags.node.flatMap((n) => n.split(',')).filter((n) => n.trim() !== ''));
    } catch (err) {
      if (err instanceof Invalid) throw new ConfigError('nodes', `--node: ${err.message}`);
      throw err;
    }
  }
  return out;
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
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    const first = String((err as Error).message).split('\n')[0];
    throw new ConfigError('config', `${display}: ${path} is not valid YAML: ${first}`);
  }
  return parseConfigObject(doc, path, { baseDir: dirname(abs) });
}

function wildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '';
}

/** Cross-key checks on a complete config. */
function validate(c: Config, requireNodes: boolean): void {
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
  validate(config, opts.requireNodes ?? true);
  return config;
}

// ---------------------------------------------------------------------------------------------
// Back to YAML (check-config).

function formatDuration(ms: number): number | string {
  if (ms === 0) return 0;
  for (const [unit, f] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % f === 0) return `${ms / f}${unit}`;
  }
  return `${ms}ms`;
}

function formatSize(b: number): number | string {
  for (const [unit, f] of [['GB', 1024 * MiB], ['MB', MiB], ['kB', 1024]] as const) {
    if (b % f === 0) return `${b / f}${unit}`;
  }
  return b;
}

/**
 * The config as a plain snake_case object that parseConfigObject accepts back; durations and
 * sizes in the largest exact unit. Passwords are replaced by "********" unless `reveal`.
 */
export function configToObject(c: Config, opts: { reveal?: boolean } = {}): Record<string, unknown> {
  const mask = (p: string | null) => (p === null ? null : opts.reveal ? p : '********');
  return {
    listen: formatHostPort(c.listen),
    http: c.http === null ? null : formatHostPort(c.http),
    nodes: c.nodes.map((n) => `${formatHostPort(n)}@${n.weight}`),
    pool_mode: c.poolMode,
    pool_size: c.poolSize,
    min_pool_size: c.minPoolSize,
    max_client_conn: c.maxClientConn,
    workers: c.workers,
    auth: c.auth,
    auth_file: c.authFile,
    server_password: mask(c.serverPassword),
    auth_user: c.authUser,
    auth_query: c.authQuery,
    auth_dbname: c.authDbname,
    auth_user_password: mask(c.authUserPassword),
    query_wait_timeout: formatDuration(c.queryWaitTimeoutMs),
    server_idle_timeout: formatDuration(c.serverIdleTimeoutMs),
    server_lifetime: formatDuration(c.serverLifetimeMs),
    client_idle_timeout: formatDuration(c.clientIdleTimeoutMs),
    idle_transaction_timeout: formatDuration(c.idleTransactionTimeoutMs),
    server_connect_timeout: formatDuration(c.serverConnectTimeoutMs),
    server_login_retry: formatDuration(c.serverLoginRetryMs),
    client_login_timeout: formatDuration(c.clientLoginTimeoutMs),
    max_message_size: formatSize(c.maxMessageBytes),
    server_reset_query: c.serverResetQuery,
    log_level: c.logLevel,
    health_check_period: formatDuration(c.healthCheckPeriodMs),
    health_check_timeout: formatDuration(c.healthCheckTimeoutMs),
    health_check_max_retries: c.healthCheckMaxRetries,
    health_check_user: c.healthCheckUser,
    health_check_password: mask(c.healthCheckPassword),
    health_check_database: c.healthCheckDatabase,
    failover_timeout: formatDuration(c.failoverTimeoutMs),
    on_role_change: c.onRoleChange,
    client_tls: c.clientTls,
    client_tls_cert_file: c.clientTlsCertFile,
    client_tls_key_file: c.clientTlsKeyFile,
    client_tls_ca_file: c.clientTlsCaFile,
    client_tls_min_version: c.clientTlsMinVersion,
    client_tls_ciphers: c.clientTlsCiphers,
    server_tls: c.serverTls,
    server_tls_ca_file: c.serverTlsCaFile,
    hba_file: c.hbaFile,
    max_db_connections: c.maxDbConnections,
    max_user_connections: c.maxUserConnections,
    max_unauthenticated_connections: c.maxUnauthenticatedConnections,
    max_prepared_statements: c.maxPreparedStatements,
    track_extra_parameters: [...c.trackExtraParameters],
    admin_users: [...c.adminUsers],
    stats_users: [...c.statsUsers],
    shutdown_timeout: formatDuration(c.shutdownTimeoutMs),
    max_lag_bytes: c.maxLagBytes === null ? 'off' : formatSize(c.maxLagBytes),
    max_lag_ms: c.maxLagMs === null ? 'off' : formatDuration(c.maxLagMs),
    lag_hysteresis: c.lagHysteresis,
    read_without_primary_timeout: formatDuration(c.readWithoutPrimaryTimeoutMs),
    fallback_to_primary: c.fallbackToPrimary,
    read_your_writes: c.readYourWrites,
    read_your_writes_window: formatDuration(c.readYourWritesWindowMs),
    write_functions: [...c.writeFunctions],
    read_only_functions: [...c.readOnlyFunctions],
    function_catalog_refresh: formatDuration(c.functionCatalogRefreshMs),
  };
}
