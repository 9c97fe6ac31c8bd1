// Setting values: one parser per kind of value (whole number, duration, size, host:port,
// nodes, lists...) and the formatters that write durations and sizes back.
//
// Each parser gets the raw value (YAML scalar/object, or a string from env/flags) and returns
// the parsed value or throws Invalid with the problem text; the loader prefixes the key as the
// user wrote it, so one parser serves the YAML file, the environment and the flags alike.

import { resolve as resolvePath } from 'node:path';
import type { HostPort, NodeConfig, PeerEntry, TlsMinVersion } from './types.js';
import { parseFunctionEntry } from '../routing/functionLists.js';
import { quoteName } from '../routing/functionCatalog.js';

export const MiB = 1024 * 1024;

// setTimeout fires at once for anything above 2^31-1 ms (~24.8 days).
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
// A message's length field is an int32.
const MAX_MESSAGE_BYTES = 2 ** 31 - 1;
const MIN_MESSAGE_BYTES = 1024;

/** A value's problem, without the key: the loader names the key as the user wrote it. */
export class Invalid extends Error {}

export type Raw = unknown;

export function show(v: Raw): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null || v === undefined) return 'an empty value';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

export function asString(v: Raw, what: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  throw new Invalid(`${show(v)} is not ${what}`);
}

export function parseInteger(v: Raw, min: number, max: number): number {
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

export function parseEnum<T extends string>(v: Raw, allowed: readonly T[], extra?: Record<string, string>): T {
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

export function parseDurationAtLeast(v: Raw, minMs: number): number {
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

export function parseHttp(v: Raw): HostPort | null {
  if (v === null || v === false) return null;
  const s = asString(v, 'HOST:PORT');
  if (['off', 'none', 'false', 'no', ''].includes(s.trim().toLowerCase())) return null;
  return parseHostPort(s, { allowZeroPort: true, defaultHost: '0.0.0.0' });
}

export function parseOptionalString(v: Raw, what: string): string | null {
  if (v === null) return null;
  const s = asString(v, what);
  return s === '' ? null : s;
}

export function parseName(v: Raw, what: string): string {
  const s = v === null ? '' : asString(v, what);
  if (s === '') throw new Invalid(`${show(v)} is not ${what} (expected a non-empty string)`);
  return s;
}

/** An optional file path, resolved against the config file's directory (or the cwd). */
export function parsePath(v: Raw, base: string): string | null {
  const s = parseOptionalString(v, 'a file path');
  return s === null ? null : resolvePath(base, s);
}

/** unix_socket_dir: a directory, or off ('off', 'none', empty) for no Unix-domain socket. */
export function parseSocketDir(v: Raw, base: string): string | null {
  if (v === null || v === false) return null;
  const s = asString(v, 'a directory').trim();
  if (['off', 'none', 'false', 'no', ''].includes(s.toLowerCase())) return null;
  if (s.startsWith('@')) throw new Invalid(`${show(v)}: abstract sockets are not supported (expected a directory, or off)`);
  return resolvePath(base, s);
}

/**
 * File permission bits, read as octal digits: "0777", "777" and "0o777" all mean rwxrwxrwx.
 * A YAML 0777 arrives as the number 777, so a number's decimal digits are read as octal too.
 */
export function parseFileMode(v: Raw): number {
  const s = asString(v, 'a file mode').trim().replace(/^0o/i, '');
  if (!/^[0-7]{1,4}$/.test(s)) throw new Invalid(`${show(v)} is not a file mode (expected octal digits such as 0777 or 0770)`);
  return parseInt(s, 8);
}

export function parseTlsVersion(v: Raw): TlsMinVersion {
  const expected = 'expected TLSv1.2 or TLSv1.3';
  const t = typeof v === 'number' ? v.toFixed(1) : typeof v === 'string' ? v.trim().toLowerCase().replace(/^tlsv?/, '') : '';
  if (t === '1.2') return 'TLSv1.2';
  if (t === '1.3') return 'TLSv1.3';
  if (t === '1' || t === '1.0' || t === '1.1') throw new Invalid(`${show(v)} is too old (${expected})`);
  throw new Invalid(`${show(v)} is not a TLS version (${expected})`);
}

/** A limit that may be switched off with null / "off" / "none". */
export function parseOptionalLimit(v: Raw, parse: (v: Raw) => number): number | null {
  if (v === null || (typeof v === 'string' && /^\s*(off|none)\s*$/i.test(v))) return null;
  return parse(v);
}

export function parseFraction(v: Raw): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v.trim()) : NaN;
  if (!Number.isFinite(n) || n < 0 || n >= 1) throw new Invalid(`${show(v)} is not a fraction (expected 0 <= x < 1, e.g. 0.2)`);
  return n;
}

export function parseBoolean(v: Raw): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const t = v.trim().toLowerCase();
    if (['on', 'true', 'yes', '1'].includes(t)) return true;
    if (['off', 'false', 'no', '0'].includes(t)) return false;
  }
  throw new Invalid(`${show(v)} is not a boolean (expected on/off, true/false)`);
}

export function parseUserList(v: Raw): string[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of user names`);
  return items
    .map((x) => {
      if (typeof x !== 'string') throw new Invalid(`${show(x as Raw)} is not a user name`);
      return x.trim();
    })
    .filter((x) => x !== '');
}

export function parseNameList(v: Raw): string[] {
  const items = typeof v === 'string' ? v.split(',') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of function names`);
  return items.map((x) => {
    if (typeof x !== 'string' || !/^\s*[A-Za-z_][A-Za-z0-9_$.]*\s*$/.test(x)) throw new Invalid(`${show(x as Raw)} is not a function name`);
    return x.trim().toLowerCase();
  });
}

/**
 * query_cache_tables / query_cache_exclude_tables: a list (or comma-separated string) of
 * `table` or `schema.table`, unquoted, kept lower-case: the form the query cache names
 * tables in (a bare name matches that table in any schema).
 */
export function parseTableList(v: Raw, setting: string): string[] {
  const items = typeof v === 'string' ? v.split(',').filter((x) => x.trim() !== '') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of table names`);
  return items.map((x) => {
    if (typeof x !== 'string' || !/^\s*[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?\s*$/.test(x)) {
      throw new Invalid(`${show(x as Raw)} is not a table name for ${setting} (expected table or schema.table, unquoted)`);
    }
    return x.trim().toLowerCase();
  });
}

/**
 * write_functions / read_only_functions: a list (or comma-separated string) of `name`,
 * `schema.name`, `"Quoted"` or `prefix*` entries, as the classifier reads them. Kept in a
 * canonical form: unquoted names lowercased, quotes only where needed.
 */
export function parseFunctionList(v: Raw, setting: string): string[] {
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

// ---------------------------------------------------------------------------------------------
// Back to YAML (check-config, SHOW CONFIG): the largest exact unit, so the value reads back.

export function formatDuration(ms: number): number | string {
  if (ms === 0) return 0;
  for (const [unit, f] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % f === 0) return `${ms / f}${unit}`;
  }
  return `${ms}ms`;
}

export function formatSize(b: number): number | string {
  for (const [unit, f] of [['GB', 1024 * MiB], ['MB', MiB], ['kB', 1024]] as const) {
    if (b % f === 0) return `${b / f}${unit}`;
  }
  return b;
}

/** Highest peer_id: the id takes 12 bits of the cancel key's secret (src/cluster/peers.ts). */
export const MAX_PEER_ID = 4095;

/** `peers`: a list (or comma-separated string) of `ID=HOST:PORT`, or one `dns:NAME[:PORT]`. */
export function parsePeers(v: Raw): PeerEntry[] {
  if (v === null || v === undefined || v === '') return [];
  const items = typeof v === 'string' ? v.split(',').map((x) => x.trim()).filter((x) => x !== '') : Array.isArray(v) ? v : null;
  if (items === null) throw new Invalid(`${show(v)} is not a list of peers (expected "ID=HOST:PORT" entries or one "dns:NAME[:PORT]")`);
  const out: PeerEntry[] = [];
  for (const x of items) {
    const s = asString(x, 'a peer ("ID=HOST:PORT" or "dns:NAME[:PORT]")').trim();
    if (s.toLowerCase().startsWith('dns:')) {
      if (items.length > 1) throw new Invalid(`${JSON.stringify(s)}: a dns: entry must be the only peer entry (its A/AAAA records are the peers)`);
      const hp = parseHostPort(s.slice(4), { allowZeroPort: false, defaultPort: 0 });
      out.push({ dns: hp.host, port: hp.port === 0 ? null : hp.port });
      continue;
    }
    const m = /^(\d+)\s*=\s*(.+)$/.exec(s);
    if (!m) throw new Invalid(`${JSON.stringify(s)} is not a peer (expected "ID=HOST:PORT" or "dns:NAME[:PORT]")`);
    const id = parseInteger(m[1]!, 0, MAX_PEER_ID);
    if (out.some((p) => 'id' in p && p.id === id)) throw new Invalid(`${JSON.stringify(s)}: peer id ${id} is listed twice`);
    out.push({ id, ...parseHostPort(m[2]!, { allowZeroPort: false }) });
  }
  return out;
}

export function showPeers(peers: readonly PeerEntry[]): string[] {
  return peers.map((p) => ('dns' in p ? `dns:${p.dns}${p.port === null ? '' : `:${p.port}`}` : `${p.id}=${formatHostPort(p)}`));
}
