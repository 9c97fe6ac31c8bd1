// Host-based access control in PostgreSQL's pg_hba.conf syntax: which client (connection
// type, database, user, address) may log in, and with which authentication method.
//
// Pure: parseHba() turns text into rules, matchHba() picks the rule for one connection
// (first match wins, as in PostgreSQL; no match means refused). loadHbaFile() is the only
// function that touches the file system.
//
// Supported, as in PostgreSQL:
//   connection types  local, host, hostssl, hostnossl, hostnogssenc (pgmux never offers
//                     GSS encryption, so hostnogssenc is the same as host)
//   database          all, sameuser, replication (never matches: pgmux refuses replication
//                     connections), names, comma lists, "quoted" names, /regex
//   user              all, names, comma lists, "quoted" names, /regex
//   address           CIDR (IPv4 or IPv6), an address followed by a netmask field, all,
//                     samehost, samenet; IPv4 rules match IPv4-mapped IPv6 clients
//   method            trust, reject, md5, scram-sha-256, password
//   lines             # comments, trailing-backslash continuation
// Everything else (samerole/samegroup, +group, @file, include directives, host names,
// other methods, authentication options) is refused with an error naming the file and line,
// so a pg_hba.conf copied from a server never silently means something else here.

import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import type { Config } from '../config/types.js';

export type HbaConnType = 'local' | 'host' | 'hostssl' | 'hostnossl' | 'hostnogssenc';
export type HbaMethod = 'trust' | 'reject' | 'md5' | 'scram-sha-256' | 'password';

export type HbaNameMatcher =
  | { kind: 'all' }
  | { kind: 'sameuser' }
  | { kind: 'replication' }
  | { kind: 'name'; name: string }
  | { kind: 'regex'; re: RegExp };

export type HbaAddressMatcher =
  | { kind: 'all' }
  | { kind: 'samehost' }
  | { kind: 'samenet' }
  | { kind: 'net'; family: 4 | 6; addr: Uint8Array; mask: Uint8Array; text: string };

export interface HbaRule {
  file: string;
  /** 1-based line where the rule starts. */
  line: number;
  /** The rule as written (continuations joined), for logs. */
  text: string;
  type: HbaConnType;
  databases: HbaNameMatcher[];
  users: HbaNameMatcher[];
  /** null for `local` rules. */
  address: HbaAddressMatcher | null;
  method: HbaMethod;
}

export interface HbaQuery {
  /** The connection is TLS-encrypted. */
  ssl: boolean;
  database: string;
  user: string;
  /** Client IP address as node reports it (IPv4, IPv6, IPv4-mapped IPv6); null = Unix-domain socket. */
  address: string | null;
}

/** The server's own interface addresses, for samehost / samenet (default: os.networkInterfaces()). */
export interface HbaLocalAddress {
  address: string;
  /** CIDR form of the interface's network, e.g. "192.168.1.7/24". */
  cidr: string | null;
}

export class HbaError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    problem: string,
  ) {
    super(`${file}:${line}: ${problem}`);
    this.name = 'HbaError';
  }
}

const CONN_TYPES: readonly string[] = ['local', 'host', 'hostssl', 'hostnossl', 'hostnogssenc'];
const METHODS: readonly HbaMethod[] = ['trust', 'reject', 'md5', 'scram-sha-256', 'password'];
const POSTGRES_ONLY_METHODS: Record<string, string> = {
  cert: 'client certificate authentication is not supported by pgmux',
  gss: 'GSSAPI authentication is not supported by pgmux',
  sspi: 'SSPI authentication is not supported by pgmux',
  ident: 'ident authentication is not supported by pgmux',
  peer: 'peer authentication needs a Unix-domain socket, which pgmux does not listen on',
  ldap: 'LDAP authentication is not supported by pgmux',
  radius: 'RADIUS authentication is not supported by pgmux',
  pam: 'PAM authentication is not supported by pgmux',
  bsd: 'BSD authentication is not supported by pgmux',
  crypt: '"crypt" was removed from PostgreSQL in 8.4',
  krb5: '"krb5" was removed from PostgreSQL in 9.4',
};

/** One token of a field: its text and whether any part of it was quoted (keywords lose their meaning). */
interface Token {
  text: string;
  quoted: boolean;
}

/** A line's fields; each field is a comma-separated list of tokens. */
type Field = Token[];

/**
 * Splits one logical line into fields the way PostgreSQL's tokenizer does: blanks separate
 * fields, commas separate tokens within a field (blanks after a comma continue the list),
 * double quotes protect blanks, commas and '#', and "" inside quotes is a literal quote.
 */
function tokenize(line: string, fail: (problem: string) => never): Field[] {
  const fields: Field[] = [];
  let i = 0;
  const n = line.length;
  const blank = (c: string | undefined) => c === ' ' || c === '\t' || c === '\r';
  let field: Field | null = null;
  while (i < n) {
    while (i < n && blank(line[i])) i++;
    if (i >= n || line[i] === '#') break;
    let text = '';
    let quoted = false;
    let inQuote = false;
    let comma = false;
    while (i < n) {
      const c = line[i]!;
      if (!inQuote && (blank(c) || c === '#')) break;
      i++;
      if (c === ',' && !inQuote) {
        comma = true;
        break;
      }
      if (c === '"') {
        if (inQuote && line[i] === '"') {
          text += '"';
          i++;
          continue;
        }
        inQuote = !inQuote;
        quoted = true;
        continue;
      }
      text += c;
    }
    if (inQuote) fail('unterminated quoted string');
    if (field === null) {
      field = [];
      fields.push(field);
    }
    if (text !== '' || quoted) field.push({ text, quoted });
    else if (comma) fail('empty item in a comma-separated list');
    // A trailing comma continues the list into the next token, even after blanks.
    if (!comma) field = null;
  }
  if (field !== null) fail('list ends with a comma');
  return fields;
}

function single(field: Field | undefined, what: string, fail: (problem: string) => never): Token {
  if (field === undefined || field.length === 0) fail(`missing ${what}`);
  if (field.length > 1) fail(`${what} must be a single value, not a list ("${field.map((t) => t.text).join(',')}")`);
  return field[0]!;
}

function parseNames(field: Field | undefined, what: 'database' | 'user', fail: (problem: string) => never): HbaNameMatcher[] {
  if (field === undefined || field.length === 0) fail(`missing ${what} field`);
  return field.map((t): HbaNameMatcher => {
    const s = t.text;
    if (!t.quoted) {
      if (s === 'all') return { kind: 'all' };
      if (what === 'database') {
        if (s === 'sameuser') return { kind: 'sameuser' };
        if (s === 'replication') return { kind: 'replication' };
        if (s === 'samerole' || s === 'samegroup') fail(`database keyword "${s}" is not supported by pgmux (it needs role membership from the database); list the databases instead`);
      }
      if (s.startsWith('@')) fail(`"${s}": @file inclusion is not supported by pgmux; list the ${what} names in the line`);
      if (what === 'user' && s.startsWith('+')) fail(`"${s}": group membership (+role) is not supported by pgmux; list the user names instead`);
    }
    if (s.startsWith('/')) {
      try {
        return { kind: 'regex', re: new RegExp(s.slice(1)) };
      } catch (err) {
        fail(`invalid regular expression "${s.slice(1)}": ${(err as Error).message}`);
      }
    }
    return { kind: 'name', name: s };
  });
}

// ---- IP addresses -------------------------------------------------------------------

/** IPv4 dotted quad -> 4 bytes, or null. */
function parseV4(s: string): Uint8Array | null {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^\d{1,3}$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

/** IPv6 (with :: compression, embedded IPv4 tail, optional %zone) -> 16 bytes, or null. */
function parseV6(s: string): Uint8Array | null {
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  if (!s.includes(':')) return null;
  const dbl = s.indexOf('::');
  if (dbl >= 0 && s.indexOf('::', dbl + 1) >= 0) return null;
  const groups: number[] = [];
  const parseSide = (side: string, allowV4Tail: boolean): number[] | null => {
    if (side === '') return [];
    const parts = side.split(':');
    const out: number[] = [];
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (allowV4Tail && i === parts.length - 1 && p.includes('.')) {
        const v4 = parseV4(p);
        if (!v4) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
      out.push(parseInt(p, 16));
    }
    return out;
  };
  if (dbl >= 0) {
    const head = parseSide(s.slice(0, dbl), false);
    const tail = parseSide(s.slice(dbl + 2), true);
    if (!head || !tail || head.length + tail.length > 7) return null;
    groups.push(...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail);
  } else {
    const all = parseSide(s, true);
    if (!all || all.length !== 8) return null;
    groups.push(...all);
  }
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    out[i * 2] = groups[i]! >> 8;
    out[i * 2 + 1] = groups[i]! & 0xff;
  }
  return out;
}

/** An IP address -> family and bytes, or null. */
export function parseIp(s: string): { family: 4 | 6; bytes: Uint8Array } | null {
  const v4 = parseV4(s);
  if (v4) return { family: 4, bytes: v4 };
  const v6 = parseV6(s);
  return v6 ? { family: 6, bytes: v6 } : null;
}

function prefixMask(family: 4 | 6, bits: number): Uint8Array {
  const mask = new Uint8Array(family === 4 ? 4 : 16);
  for (let i = 0; i < mask.length; i++) {
    const b = Math.max(0, Math.min(8, bits - i * 8));
    mask[i] = b === 0 ? 0 : (0xff << (8 - b)) & 0xff;
  }
  return mask;
}

/** "10.0.0.0/8", "::1/128" -> a network, or a problem text. */
export function parseCidr(s: string): { family: 4 | 6; addr: Uint8Array; mask: Uint8Array } | string {
  const slash = s.indexOf('/');
  if (slash < 0) return `"${s}" has no mask`;
  const ip = parseIp(s.slice(0, slash));
  if (!ip) return `"${s.slice(0, slash)}" is not an IP address`;
  const bitsText = s.slice(slash + 1);
  const max = ip.family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(bitsText) || Number(bitsText) > max) return `invalid CIDR mask "/${bitsText}" in "${s}" (expected 0..${max})`;
  const mask = prefixMask(ip.family, Number(bitsText));
  return { family: ip.family, addr: ip.bytes.map((b, i) => b & mask[i]!), mask };
}

function inNet(net: { family: 4 | 6; addr: Uint8Array; mask: Uint8Array }, client: { family: 4 | 6; bytes: Uint8Array }): boolean {
  let bytes = client.bytes;
  if (net.family !== client.family) {
    // An IPv4 rule matches an IPv4-mapped IPv6 client (::ffff:a.b.c.d), as in PostgreSQL.
    if (net.family !== 4 || !isV4Mapped(bytes)) return false;
    bytes = bytes.subarray(12);
  }
  for (let i = 0; i < net.addr.length; i++) if ((bytes[i]! & net.mask[i]!) !== net.addr[i]) return false;
  return true;
}

function isV4Mapped(b: Uint8Array): boolean {
  if (b.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

function sameIp(a: { family: 4 | 6; bytes: Uint8Array }, b: { family: 4 | 6; bytes: Uint8Array }): boolean {
  const x = a.family === 6 && isV4Mapped(a.bytes) ? a.bytes.subarray(12) : a.bytes;
  const y = b.family === 6 && isV4Mapped(b.bytes) ? b.bytes.subarray(12) : b.bytes;
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function parseAddress(fields: Field[], idx: number, fail: (problem: string) => never): { matcher: HbaAddressMatcher; used: number } {
  const tok = single(fields[idx], 'address field', fail);
  const s = tok.text;
  if (!tok.quoted) {
    if (s === 'all') return { matcher: { kind: 'all' }, used: 1 };
    if (s === 'samehost') return { matcher: { kind: 'samehost' }, used: 1 };
    if (s === 'samenet') return { matcher: { kind: 'samenet' }, used: 1 };
  }
  if (s.includes('/')) {
    const net = parseCidr(s);
    if (typeof net === 'string') fail(net);
    return { matcher: { kind: 'net', ...net, text: s }, used: 1 };
  }
  const ip = parseIp(s);
  if (ip) {
    // An address without /bits must be followed by a netmask field.
    const maskTok = fields[idx + 1]?.length === 1 ? fields[idx + 1]![0]! : null;
    const mask = maskTok ? parseIp(maskTok.text) : null;
    if (!mask) fail(`address "${s}" has no mask: write it in CIDR form (e.g. ${s}/${ip.family === 4 ? 32 : 128}) or follow it with a netmask`);
    if (mask.family !== ip.family) fail(`netmask "${maskTok!.text}" is not of the same address family as "${s}"`);
    return { matcher: { kind: 'net', family: ip.family, addr: ip.bytes.map((b, i) => b & mask.bytes[i]!), mask: mask.bytes, text: `${s} ${maskTok!.text}` }, used: 2 };
  }
  fail(`"${s}" is not an IP address in CIDR form, all, samehost or samenet (host names are not supported by pgmux)`);
}

// ---- parsing ------------------------------------------------------------------------

/** Parses pg_hba.conf text. `file` names the source in errors. Throws HbaError. */
export function parseHba(text: string, file = 'hba_file'): HbaRule[] {
  const rules: HbaRule[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    let line = lines[i]!;
    // Trailing backslash: the logical line continues on the next physical line.
    while (/\\\r?$/.test(line) && i + 1 < lines.length) {
      line = line.replace(/\\\r?$/, ' ') + lines[++i]!;
    }
    const fail = (problem: string): never => {
      throw new HbaError(file, lineNo, problem);
    };
    const fields = tokenize(line, fail);
    if (fields.length === 0) continue;
    const typeTok = single(fields[0], 'connection type', fail);
    const type = typeTok.text;
    if (typeTok.quoted || !CONN_TYPES.includes(type)) {
      if (/^include(_if_exists|_dir)?$/.test(type)) fail(`"${type}" directives are not supported by pgmux; put the rules in this file`);
      if (type === 'hostgssenc') fail('"hostgssenc" can never match: pgmux does not offer GSSAPI encryption');
      fail(`invalid connection type "${type}" (expected local, host, hostssl, hostnossl or hostnogssenc)`);
    }
    const databases = parseNames(fields[1], 'database', fail);
    const users = parseNames(fields[2], 'user', fail);
    let idx = 3;
    let address: HbaAddressMatcher | null = null;
    if (type !== 'local') {
      if (fields[idx] === undefined) fail('missing address field');
      const a = parseAddress(fields, idx, fail);
      address = a.matcher;
      idx += a.used;
    }
    const methodTok = single(fields[idx], 'authentication method', fail);
    const method = methodTok.text;
    if (!(METHODS as readonly string[]).includes(method) || methodTok.quoted) {
      const why = POSTGRES_ONLY_METHODS[method];
      fail(why ? `authentication method "${method}": ${why} (pgmux supports ${METHODS.join(', ')})` : `invalid authentication method "${method}" (expected ${METHODS.join(', ')})`);
    }
    if (fields.length > idx + 1) {
      const opts = fields.slice(idx + 1).map((f) => f.map((t) => t.text).join(','));
      fail(`authentication options are not supported by pgmux (got ${opts.join(' ')})`);
    }
    rules.push({
      file,
      line: lineNo,
      text: line.replace(/\s+/g, ' ').replace(/\s*#.*$/, '').trim(),
      type: type as HbaConnType,
      databases,
      users,
      address,
      method: method as HbaMethod,
    });
  }
  return rules;
}

/** Reads and parses an HBA file; errors name the file (and line). */
export function loadHbaFile(path: string): HbaRule[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : (err as Error).message;
    throw new HbaError(path, 0, `cannot read the HBA file: ${why}`);
  }
  return parseHba(text, path);
}

// ---- matching -----------------------------------------------------------------------

function nameMatches(ms: HbaNameMatcher[], value: string, user: string): boolean {
  for (const m of ms) {
    switch (m.kind) {
      case 'all':
        return true;
      case 'sameuser':
        if (value === user) return true;
        break;
      case 'replication':
        break; // pgmux has no replication connections
      case 'name':
        if (m.name === value) return true;
        break;
      case 'regex':
        if (m.re.test(value)) return true;
        break;
    }
  }
  return false;
}

function defaultLocalAddresses(): HbaLocalAddress[] {
  const out: HbaLocalAddress[] = [];
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.push({ address: a.address, cidr: a.cidr });
  return out;
}

function addressMatches(m: HbaAddressMatcher, address: string, local: () => HbaLocalAddress[]): boolean {
  if (m.kind === 'all') return true;
  const ip = parseIp(address);
  if (!ip) return false;
  switch (m.kind) {
    case 'net':
      return inNet(m, ip);
    case 'samehost':
      return local().some((a) => {
        const x = parseIp(a.address);
        return x !== null && sameIp(x, ip);
      });
    case 'samenet':
      return local().some((a) => {
        const net = a.cidr === null ? null : parseCidr(a.cidr);
        return net !== null && typeof net !== 'string' && inNet(net, ip);
      });
  }
}

/**
 * The rule that decides this connection: the first whose connection type, database, user
 * and address match (a `reject` rule refuses; later rules are not tried). null = no rule
 * matches: PostgreSQL refuses such a connection too.
 */
export function matchHba(rules: readonly HbaRule[], q: HbaQuery, opts: { localAddresses?: () => HbaLocalAddress[] } = {}): HbaRule | null {
  let cached: HbaLocalAddress[] | null = null;
  const local = () => (cached ??= (opts.localAddresses ?? defaultLocalAddresses)());
  for (const r of rules) {
    if (r.type === 'local') {
      if (q.address !== null) continue;
    } else {
      if (q.address === null) continue;
      if (r.type === 'hostssl' && !q.ssl) continue;
      if (r.type === 'hostnossl' && q.ssl) continue;
    }
    if (!nameMatches(r.databases, q.database, q.user)) continue;
    if (!nameMatches(r.users, q.user, q.user)) continue;
    if (r.address !== null && q.address !== null && !addressMatches(r.address, q.address, local)) continue;
    return r;
  }
  return null;
}

/** PostgreSQL's FATAL message for a refused connection (28000). */
export function hbaRefusal(rule: HbaRule | null, q: HbaQuery): string {
  const host = q.address ?? '[local]';
  const enc = q.ssl ? 'SSL encryption' : 'no encryption';
  return rule === null
    ? `no pg_hba.conf entry for host "${host}", user "${q.user}", database "${q.database}", ${enc}`
    : `pg_hba.conf rejects connection for host "${host}", user "${q.user}", database "${q.database}", ${enc}`;
}

// ---- per-configuration rules ------------------------------------------------------------

/** Rules by file path, replaced only by a successful reloadHba() (a bad RELOAD keeps them). */
const rulesByFile = new Map<string, HbaRule[]>();

/** The rules of this configuration's hba_file (null = no HBA check). */
export function hbaRulesFor(cfg: Config): HbaRule[] | null {
  if (cfg.hbaFile === null) return null;
  let r = rulesByFile.get(cfg.hbaFile);
  if (r === undefined) {
    r = loadHbaFile(cfg.hbaFile);
    rulesByFile.set(cfg.hbaFile, r);
  }
  return r;
}

/** Reads hba_file again (config load, start, RELOAD). Throws HbaError. */
export function reloadHba(cfg: Config): HbaRule[] | null {
  if (cfg.hbaFile === null) return null;
  const r = loadHbaFile(cfg.hbaFile);
  rulesByFile.set(cfg.hbaFile, r);
  return r;
}
