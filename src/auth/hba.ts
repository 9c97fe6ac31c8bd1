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
//   address           CIDR (IPv4 or IPv6), an address followed by a contiguous netmask
//                     field, all, samehost, samenet; IPv4 rules match IPv4-mapped IPv6
//                     clients (matching by node:net's BlockList)
//   method            trust, reject, md5, scram-sha-256, password
//   lines             # comments, trailing-backslash continuation
// Everything else (samerole/samegroup, +group, @file, include directives, host names,
// other methods, authentication options) is refused with an error naming the file and line,
// so a pg_hba.conf copied from a server never silently means something else here.

import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
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
  | { kind: 'net'; family: 4 | 6; list: BlockList; text: string };

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
  peer: 'peer authentication (the client\'s OS user) is not supported by pgmux; use trust or a password method on local lines',
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

/** The family of an IP address (IPv4-mapped IPv6 counts as 6; a %zone is allowed), or 0. */
function ipFamily(s: string): 0 | 4 | 6 {
  return isIP(s) as 0 | 4 | 6;
}

/** A network as a one-subnet BlockList; host bits past the prefix are ignored, as in PostgreSQL. */
function subnet(address: string, family: 4 | 6, prefix: number): BlockList {
  const list = new BlockList();
  list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
  return list;
}

/** "10.0.0.0/8", "::1/128" -> a network, or a problem text. */
function parseCidr(s: string): { family: 4 | 6; list: BlockList } | string {
  const slash = s.indexOf('/');
  const address = s.slice(0, slash);
  const family = ipFamily(address);
  if (family === 0) return `"${address}" is not an IP address`;
  const bitsText = s.slice(slash + 1);
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(bitsText) || Number(bitsText) > max) return `invalid CIDR mask "/${bitsText}" in "${s}" (expected 0..${max})`;
  return { family, list: subnet(address, family, Number(bitsText)) };
}

/** Prefix length of a contiguous netmask ("255.255.0.0" -> 16, "ffff:ffff::" -> 32), or null. */
function netmaskBits(mask: string, family: 4 | 6): number | null {
  let groups: number[];
  if (family === 4) groups = mask.split('.').map(Number);
  else {
    if (mask.includes('.') || mask.includes('%')) return null;
    const [head, tail] = mask.split('::') as [string, string | undefined];
    const h = head === '' ? [] : head.split(':');
    const t = tail === undefined || tail === '' ? [] : tail.split(':');
    groups = [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t].map((g) => parseInt(g, 16));
  }
  const bits = groups.map((g) => g.toString(2).padStart(family === 4 ? 8 : 16, '0')).join('');
  const ones = bits.includes('0') ? bits.indexOf('0') : bits.length;
  return bits.includes('1', ones) ? null : ones;
}

/** Does an IP network rule take this client address? */
function inNet(m: { family: 4 | 6; list: BlockList }, address: string, family: 4 | 6): boolean {
  // BlockList matches IPv4 and IPv4-mapped IPv6 both ways. Only one way is kept: an IPv4
  // rule takes a mapped client (::ffff:a.b.c.d), because a node listener on "::" reports an
  // IPv4 client that way, where PostgreSQL (IPv6 sockets V6ONLY, families compared
  // strictly) sees the same client as IPv4. An IPv6 rule such as ::/0 takes no IPv4 client,
  // as in PostgreSQL.
  if (m.family === 6 && family === 4) return false;
  return m.list.check(address, family === 4 ? 'ipv4' : 'ipv6');
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
  const family = ipFamily(s);
  if (family !== 0) {
    // An address without /bits must be followed by a netmask field.
    const maskTok = fields[idx + 1]?.length === 1 ? fields[idx + 1]![0]! : null;
    const maskFamily = maskTok ? ipFamily(maskTok.text) : 0;
    if (maskFamily === 0) fail(`address "${s}" has no mask: write it in CIDR form (e.g. ${s}/${family === 4 ? 32 : 128}) or follow it with a netmask`);
    if (maskFamily !== family) fail(`netmask "${maskTok!.text}" is not of the same address family as "${s}"`);
    const bits = netmaskBits(maskTok!.text, family);
    if (bits === null) fail(`netmask "${maskTok!.text}" is not contiguous: write the network in CIDR form`);
    return { matcher: { kind: 'net', family, list: subnet(s, family, bits), text: `${s} ${maskTok!.text}` }, used: 2 };
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
  const family = ipFamily(address);
  if (family === 0) return false;
  switch (m.kind) {
    case 'net':
      return inNet(m, address, family);
    case 'samehost':
      return local().some((a) => {
        const f = ipFamily(a.address);
        return f !== 0 && inNet({ family: f, list: subnet(a.address, f, f === 4 ? 32 : 128) }, address, family);
      });
    case 'samenet':
      return local().some((a) => {
        const net = a.cidr === null || !a.cidr.includes('/') ? null : parseCidr(a.cidr);
        return net !== null && typeof net !== 'string' && inNet(net, address, family);
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
