// PgBouncer's pgbouncer.ini -> pgmux keys: [pgbouncer] settings (auth, HBA, TLS on both sides,
// limits, timeouts), [databases] entries -> the `databases:` map (their servers -> nodes) and
// [users] -> the `users:` map; and what the source refused or required, for security.ts.

import type { ImportOptions } from './importConfig.js';
import type { Output } from './output.js';
import { dirname, join } from 'node:path';
import { AuthFileError, parseAuthFile } from '../auth/authFile.js';
import { carryHba } from './hbaCheck.js';
import { isInteger, intOrString, seconds, listenHost, hostPort, sourcePath } from './values.js';


interface IniEntry {
  section: string;
  key: string;
  value: string;
  line: number;
}

function parseIni(text: string, out: Output, sections: Set<string>): IniEntry[] {
  const entries: IniEntry[] = [];
  let section = '';
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith(';') || line.startsWith('#')) return;
    if (line.startsWith('%include')) {
      out.warn(`line ${i + 1}: ${line}: included files are not read; import each one and merge the results`);
      return;
    }
    const sec = /^\[\s*([^\]]*?)\s*\]$/.exec(line);
    if (sec) {
      section = sec[1]!.toLowerCase();
      sections.add(section);
      return;
    }
    const eq = line.indexOf('=');
    if (eq < 0) {
      out.warn(`line ${i + 1}: "${line}" is not "key = value"; ignored`);
      return;
    }
    entries.push({ section, key: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim(), line: i + 1 });
  });
  return entries;
}

/** libpq-style "key=value key='quoted value'" of a [databases] entry. */
function parseConnString(s: string): Map<string, string> {
  const out = new Map<string, string>();
  const re = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('((?:[^'\\]|\\.|'')*)'|(\S*))/gy;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    const value = m[3] !== undefined ? m[3].replace(/''/g, "'").replace(/\\(.)/g, '$1') : m[4]!;
    out.set(m[1]!.toLowerCase(), value);
    if (re.lastIndex >= s.length) break;
  }
  return out;
}

const PGBOUNCER_DURATIONS = [
  'query_wait_timeout', 'server_idle_timeout', 'server_lifetime', 'client_idle_timeout',
  'idle_transaction_timeout', 'server_connect_timeout', 'server_login_retry', 'client_login_timeout',
];

/** Why some common PgBouncer settings have no pgmux counterpart. */
const PGBOUNCER_HINTS: Record<string, string> = {
  logfile: 'pgmux logs JSON lines to standard output',
  pidfile: 'run pgmux under a supervisor (systemd, Kubernetes) instead',
  syslog: 'pgmux logs to standard output',
  user: 'run pgmux as a non-root user from your supervisor',
  reserve_pool_size: 'pools have one size (pool_size)',
  reserve_pool_timeout: 'pools have one size (pool_size)',
  server_check_query: 'pgmux health-checks each node over its own control connection (health_check_*)',
  server_check_delay: 'pgmux health-checks each node over its own control connection (health_check_period)',
  server_round_robin: 'replica reads are spread by node weight',
  ignore_startup_parameters: 'pgmux accepts and tracks common startup parameters itself',
  stats_period: 'pgmux serves live counters on /metrics',
  listen_backlog: 'not configurable in pgmux',
  so_reuseport: 'not configurable in pgmux',
  server_reset_query_always: 'pgmux runs server_reset_query in session mode only; transaction mode never needs it',
  dns_max_ttl: 'pgmux resolves node names on each connect',
  application_name_add_host: 'not supported',
  peer_id: 'peering is not supported',
  client_tls_dheparams: 'Node picks the DH parameters',
  client_tls_ecdhcurve: 'Node picks the ECDH curves',
  server_tls_cert_file: 'pgmux presents no client certificate to the nodes',
  server_tls_key_file: 'pgmux presents no client certificate to the nodes',
  server_tls_protocols: 'pgmux uses Node\'s TLS defaults (TLS 1.2 or later) towards the nodes',
  server_tls_ciphers: 'pgmux uses Node\'s cipher defaults towards the nodes',
};


const CLIENT_TLS: Record<string, { mode: string; level: 'disable' | 'allow' | 'require' | 'verified' }> = {
  disable: { mode: 'disable', level: 'disable' },
  allow: { mode: 'allow', level: 'allow' },
  prefer: { mode: 'allow', level: 'allow' },
  require: { mode: 'require', level: 'require' },
  'verify-ca': { mode: 'require', level: 'verified' },
  'verify-full': { mode: 'require', level: 'verified' },
};

const userList = (v: string) => v.split(',').map((u) => u.trim()).filter((u) => u !== '');

export function importPgbouncer(text: string, out: Output, opts: Required<ImportOptions>): void {
  const sections = new Set<string>();
  const entries = parseIni(text, out, sections);
  const settings = new Map<string, IniEntry>();
  for (const e of entries) {
    if (e.section === 'pgbouncer') settings.set(e.key.toLowerCase(), e);
  }
  const get = (k: string): string | undefined => settings.get(k)?.value;
  const done = new Set<string>();
  const show = (k: string) => `${k} = ${get(k) ?? ''}`;

  // listen_addr + listen_port -> listen, always written: pgmux's own default (every address)
  // would open a PgBouncer that took Unix-socket clients only to the network.
  const addr = get('listen_addr');
  const port = get('listen_port');
  done.add('listen_addr').add('listen_port');
  if (addr !== undefined && addr.includes(',')) {
    out.warn(`listen_addr = ${addr}: pgmux listens on one address; using the first (${listenHost(addr)})`);
  }
  const noTcp = addr === undefined || addr.trim() === '';
  const host = noTcp ? '127.0.0.1' : listenHost(addr);
  if (noTcp) {
    out.warn(`listen_addr is not set (PgBouncer then listens on its Unix socket only): pgmux listens on the socket and on TCP ${host} (loopback only)`);
  }
  const p = port ?? '6432';
  if (isInteger(p)) out.set('listen', hostPort(host, Number(p)), show('listen_port'));
  else out.warn(`listen_port = ${p}: not a port; listen left at pgmux's default`);

  const usd = get('unix_socket_dir');
  if (usd !== undefined) {
    done.add('unix_socket_dir');
    out.set('unix_socket_dir', usd.trim() === '' ? 'off' : usd.trim(), show('unix_socket_dir'));
  }
  const usm = get('unix_socket_mode');
  if (usm !== undefined) {
    done.add('unix_socket_mode');
    // Kept as the octal string PgBouncer reads ("0777"): a bare YAML 0777 would read as decimal.
    out.set('unix_socket_mode', usm.trim(), show('unix_socket_mode'));
  }
  const usg = get('unix_socket_group');
  if (usg !== undefined && usg.trim() !== '') {
    done.add('unix_socket_group');
    out.set('unix_socket_group', usg.trim(), show('unix_socket_group'));
  }

  const pm = get('pool_mode');
  if (pm !== undefined) {
    done.add('pool_mode');
    out.set('pool_mode', poolMode(pm, 'pool_mode', out), show('pool_mode'));
  }

  for (const [from, to] of [
    ['default_pool_size', 'pool_size'],
    ['min_pool_size', 'min_pool_size'],
    ['max_client_conn', 'max_client_conn'],
    ['max_prepared_statements', 'max_prepared_statements'],
    ['max_db_connections', 'max_db_connections'],
    ['max_user_connections', 'max_user_connections'],
    ['max_db_client_connections', 'max_db_client_connections'],
    ['max_user_client_connections', 'max_user_client_connections'],
  ] as const) {
    const v = get(from);
    if (v === undefined) continue;
    done.add(from);
    out.set(to, intOrString(v), show(from));
  }

  importAuth(get, done, out, opts);
  importTls(get, done, out, opts.sourceDir);

  for (const k of PGBOUNCER_DURATIONS) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    out.set(k, seconds(v), show(k));
  }

  const swt = get('shutdown_wait_timeout');
  if (swt !== undefined) {
    done.add('shutdown_wait_timeout');
    out.set('shutdown_timeout', seconds(swt), show('shutdown_wait_timeout'));
  }
  const tep = get('track_extra_parameters');
  if (tep !== undefined) {
    done.add('track_extra_parameters');
    const names = userList(tep);
    if (names.length > 0) out.set('track_extra_parameters', names, show('track_extra_parameters'));
  }
  const verbose = get('verbose');
  if (verbose !== undefined) {
    done.add('verbose');
    const n = Number(verbose.trim());
    if (!isInteger(verbose)) out.warn(`verbose = ${verbose}: not a number; not carried over`);
    else if (n >= 1) out.set('log_level', n === 1 ? 'debug' : 'trace', show('verbose'));
  }

  const reset = get('server_reset_query');
  if (reset !== undefined) {
    done.add('server_reset_query');
    out.set('server_reset_query', reset, show('server_reset_query'));
  }

  const packet = get('max_packet_size');
  if (packet !== undefined) {
    done.add('max_packet_size');
    out.set('max_message_size', intOrString(packet), show('max_packet_size'));
  }

  for (const k of ['admin_users', 'stats_users'] as const) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    const users = userList(v);
    out.source[k === 'admin_users' ? 'adminUsers' : 'statsUsers'] = users;
    if (users.length > 0) out.set(k, users, show(k));
  }

  for (const [key, e] of settings) {
    if (done.has(key)) continue;
    const why = PGBOUNCER_HINTS[key];
    out.warn(`${e.key} = ${/password/.test(key) && e.value !== '' ? '***' : e.value}: no pgmux equivalent${why !== undefined ? ` (${why})` : ''}; not carried over`);
  }

  importPgbouncerDatabases(entries, sections.has('databases'), out);
  importPgbouncerUsers(entries, out);

  for (const e of entries) {
    if (e.section === 'pgbouncer' || e.section === 'databases' || e.section === 'users') continue;
    if (e.section === 'peers') {
      out.warn(`[peers] ${e.key} = ${e.value}: peering is not supported; not carried over`);
    } else {
      out.warn(`[${e.section || 'no section'}] ${e.key} = ${e.value}: unknown section; not carried over`);
    }
  }
}

function poolMode(v: string, from: string, out: Output): string {
  const t = v.trim().toLowerCase();
  if (t !== 'statement') return t;
  out.warn(`${from} = statement: pgmux does not offer statement pooling (it breaks multi-statement transactions); using transaction`);
  return 'transaction';
}

/** auth_type, auth_file, auth_hba_file, auth_user / auth_query / auth_dbname. */
function importAuth(get: (k: string) => string | undefined, done: Set<string>, out: Output, opts: Required<ImportOptions>): void {
  for (const k of ['auth_type', 'auth_file', 'auth_hba_file', 'auth_user', 'auth_query', 'auth_dbname']) done.add(k);
  const authFile = get('auth_file')?.trim();
  if (authFile !== undefined && authFile !== '') out.set('auth_file', sourcePath(authFile, opts.sourceDir), `auth_file = ${authFile}`);
  for (const k of ['auth_user', 'auth_query', 'auth_dbname']) {
    const v = get(k);
    if (v !== undefined && v.trim() !== '') out.set(k, v.trim(), `${k} = ${v}`);
  }

  // PgBouncer's default auth_type is md5: an ini without one still checks passwords.
  const raw = get('auth_type');
  const t = (raw ?? 'md5').trim().toLowerCase();
  const from = raw === undefined ? 'auth_type (not set: PgBouncer\'s default md5)' : `auth_type = ${raw}`;
  out.source.authFrom = from;
  if (raw === undefined) out.warn(`auth_type is not set: PgBouncer's default is md5, so auth: md5`);
  switch (t) {
    case 'md5':
    case 'scram-sha-256':
      out.source.auth = t;
      out.set('auth', t, from);
      return;
    case 'plain':
      out.source.auth = 'password';
      out.set('auth', 'password', from);
      return;
    case 'trust':
      // PgBouncer's trust still requires the user name in auth_file (or found by auth_query);
      // pgmux's trust takes any name. An HBA file naming exactly those users keeps the limit;
      // without a readable auth_file security.ts reports the weakening.
      out.source.auth = 'listed';
      out.set('auth', 'trust', from);
      if (authFile !== undefined && authFile !== '') trustOnlyListedUsers(sourcePath(authFile, opts.sourceDir), from, out, opts);
      return;
    case 'any':
      out.source.auth = 'any';
      out.set('auth', 'trust', from);
      out.warn(`${from} -> auth: trust: like PgBouncer's any, every user name is accepted without a password; give each [databases] entry a user= so the backend login stays fixed`);
      return;
    case 'hba': {
      const hba = get('auth_hba_file')?.trim();
      out.source.hbaFile = hba || '(auth_hba_file not set)';
      if (hba === undefined || hba === '') {
        out.warn(`${from}: auth_hba_file is not set, so PgBouncer refused every login; nothing to carry`);
        return;
      }
      if (carryHba({ from: `auth_hba_file = ${hba}`, path: hba, sourceDir: opts.sourceDir, readFile: opts.readFile }, out)) {
        out.warn(`${from}: each line of hba_file picks the method, as in PgBouncer, so auth is not written`);
      } else if (authFile !== undefined && authFile !== '') {
        // Still a weakening (reject lines and address limits are gone), but passwords stay checked.
        out.set('auth', 'md5', from);
        out.warn(`${from}: without the HBA file every login uses auth: md5 (SCRAM for SCRAM secrets)`);
      }
      return;
    }
    default: {
      const why: Record<string, string> = {
        cert: 'pgmux does not authenticate clients by TLS certificate',
        pam: 'pgmux cannot check passwords with PAM',
      };
      out.source.auth = t === 'cert' ? 'cert' : 'pam';
      out.warn(`${from}: ${why[t] ?? 'unknown method'}; auth not carried over`);
    }
  }
}

/** Writes an HBA file that trusts the auth file's users only (PgBouncer's trust), next to the YAML. */
function trustOnlyListedUsers(authFile: string, from: string, out: Output, opts: Required<ImportOptions>): void {
  const text = opts.readFile(authFile);
  let users: string[] = [];
  try {
    if (text !== null) users = [...parseAuthFile(text, authFile).keys()];
  } catch (err) {
    if (!(err instanceof AuthFileError)) throw err;
    out.warn(`${from}: ${authFile} is not a userlist pgmux reads (${err.message}); cannot limit trust to its users`);
    return;
  }
  if (text === null) {
    out.warn(`${from}: ${authFile} could not be read here, so trust cannot be limited to its users`);
    return;
  }
  const path = join(dirname(opts.authFilePath), 'pgmux-hba.conf');
  const names = users.length === 0 ? null : users.map((u) => `"${u.replace(/"/g, '""')}"`).join(',');
  const body = names === null
    ? '# The auth file lists no users: PgBouncer refused every login.\n'
    : `local all ${names} trust\nhost all ${names} all trust\n`;
  out.files.push({
    path,
    content: `# Written by \`pgmux import\` from ${from}: PgBouncer's trust accepts only the users of\n# ${authFile}; every other user name matches no line and is refused.\n${body}`,
    what: `hba_file (trust for the ${users.length} users of ${authFile} only)`,
  });
  out.set('hba_file', path, from);
  out.generatedHba = { path, auth: 'listed' };
  out.warn(`${from} -> hba_file ${path}: trusts the ${users.length} users of the auth file only, as PgBouncer does; users found by auth_query alone are refused (add them to the file)`);
}

/** client_tls_* -> client_tls*, server_tls_sslmode / server_tls_ca_file -> server_tls*. */
function importTls(get: (k: string) => string | undefined, done: Set<string>, out: Output, sourceDir: string): void {
  const sslmode = get('client_tls_sslmode');
  if (sslmode !== undefined) {
    done.add('client_tls_sslmode');
    const m = CLIENT_TLS[sslmode.trim().toLowerCase()];
    out.source.clientTlsFrom = `client_tls_sslmode = ${sslmode}`;
    if (m === undefined) {
      out.warn(`client_tls_sslmode = ${sslmode}: unknown mode; not carried over`);
      out.source.clientTls = 'require';
    } else {
      out.source.clientTls = m.level;
      out.set('client_tls', m.mode, `client_tls_sslmode = ${sslmode}`);
    }
  }
  for (const [from, to] of [
    ['client_tls_cert_file', 'client_tls_cert_file'],
    ['client_tls_key_file', 'client_tls_key_file'],
    ['client_tls_ca_file', 'client_tls_ca_file'],
    ['server_tls_ca_file', 'server_tls_ca_file'],
  ] as const) {
    const v = get(from);
    if (v === undefined) continue;
    done.add(from);
    if (v.trim() !== '') out.set(to, sourcePath(v.trim(), sourceDir), `${from} = ${v}`);
  }
  const protocols = get('client_tls_protocols');
  if (protocols !== undefined) {
    done.add('client_tls_protocols');
    const list = protocols.toLowerCase().split(/[\s,:]+/).filter((p) => p !== '');
    if (list.length === 1 && list[0] === 'tlsv1.3') {
      out.set('client_tls_min_version', 'TLSv1.3', `client_tls_protocols = ${protocols}`);
    } else {
      out.set('client_tls_min_version', 'TLSv1.2', `client_tls_protocols = ${protocols}`);
      if (list.some((p) => ['all', 'legacy', 'tlsv1.0', 'tlsv1.1', 'tlsv1'].includes(p))) {
        out.warn(`client_tls_protocols = ${protocols}: pgmux accepts TLS 1.2 and 1.3 only; clients on TLS 1.0/1.1 will be refused`);
      }
    }
  }
  const ciphers = get('client_tls_ciphers');
  if (ciphers !== undefined) {
    done.add('client_tls_ciphers');
    const c = ciphers.trim();
    // libtls keywords, not OpenSSL cipher strings: Node's default list is the secure one.
    if (['default', 'secure', 'fast', 'normal', 'all', 'legacy', 'compat', 'insecure'].includes(c.toLowerCase())) {
      out.warn(`client_tls_ciphers = ${ciphers}: a libtls keyword, not an OpenSSL cipher list; pgmux keeps Node's default ciphers`);
    } else if (c !== '') {
      out.set('client_tls_ciphers', c, `client_tls_ciphers = ${ciphers}`);
    }
  }
  const server = get('server_tls_sslmode');
  if (server !== undefined) {
    done.add('server_tls_sslmode');
    const t = server.trim().toLowerCase();
    out.source.serverTls = t;
    // libpq's allow (plaintext first) is no stronger than prefer (TLS first).
    const mode = t === 'allow' ? 'prefer' : t;
    if (out.set('server_tls', mode, `server_tls_sslmode = ${server}`) && t === 'allow') {
      out.warn('server_tls_sslmode = allow -> server_tls: prefer (TLS first, plaintext when the node does not offer it)');
    }
  }
}

function importPgbouncerDatabases(entries: IniEntry[], hasSection: boolean, out: Output): void {
  const dbs = entries.filter((e) => e.section === 'databases');
  if (!hasSection) return;
  if (dbs.length === 0) {
    // PgBouncer then serves no database at all (only its admin console).
    out.warn('[databases] has no entries: PgBouncer served no database (only its admin console); add entries to the databases map');
  }
  const nodes: string[] = [];
  const seen = new Set<string>();
  const map: Record<string, Record<string, unknown>> = {};
  for (const e of dbs) {
    const name = e.key.replace(/^"(.*)"$/, '$1');
    const conn = parseConnString(e.value);
    const port = conn.get('port') ?? '5432';
    const hosts = (conn.get('host') ?? '').split(',').map((h) => h.trim()).filter((h) => h !== '');
    if (hosts.length === 0) {
      out.warn(`[databases] ${name}: no host= (PgBouncer then uses a Unix socket); pgmux needs TCP nodes: add this server to nodes yourself`);
    }
    for (const host of hosts) {
      if (host.startsWith('/')) {
        out.warn(`[databases] ${name}: host=${host} is a Unix socket directory; pgmux connects over TCP only: add this server to nodes yourself`);
        continue;
      }
      if (!isInteger(port)) {
        out.warn(`[databases] ${name}: port=${port} is not a port; ${host} left out`);
        continue;
      }
      const hp = hostPort(host, Number(port));
      const id = hp.toLowerCase();
      if (seen.has(id)) continue;
      seen.add(id);
      nodes.push(hp);
    }
    const entry: Record<string, unknown> = {};
    const dropped: string[] = [];
    for (const [k, v] of conn) {
      if (k === 'host' || k === 'port') continue;
      if (k === 'dbname' || k === 'user' || k === 'password') entry[k] = v;
      else if (k === 'pool_size' || k === 'min_pool_size' || k === 'max_db_connections') entry[k] = intOrString(v);
      else if (k === 'pool_mode') entry[k] = poolMode(v, `[databases] ${name} pool_mode`, out);
      else dropped.push(`${k}=${v}`);
    }
    if (dropped.length > 0) {
      out.warn(`[databases] ${name}: ${dropped.join(' ')}: no per-entry equivalent in pgmux; not carried over`);
    }
    map[name] = entry;
  }
  if (nodes.length > 0) out.set('nodes', nodes, '[databases]');
  if (nodes.length > 1) {
    out.warn(
      `[databases]: the entries name ${nodes.length} servers (${nodes.join(', ')}); all became nodes of one cluster: pgmux finds the ` +
        'primary itself and serves every entry from the primary and its replicas. If these are not one primary and its streaming ' +
        'replicas, run one pgmux per cluster; an entry that pointed at a replica for reads can say route: replica',
    );
  }
  out.set('databases', map, '[databases]');
  if (!('*' in map)) out.source.databases = Object.keys(map);
}

function importPgbouncerUsers(entries: IniEntry[], out: Output): void {
  const users = entries.filter((e) => e.section === 'users');
  if (users.length === 0) return;
  const map: Record<string, Record<string, unknown>> = {};
  for (const e of users) {
    const name = e.key.replace(/^"(.*)"$/, '$1');
    const entry: Record<string, unknown> = {};
    const dropped: string[] = [];
    for (const [k, v] of parseConnString(e.value)) {
      if (k === 'pool_mode') entry[k] = poolMode(v, `[users] ${name} pool_mode`, out);
      else if (k === 'max_user_connections') entry[k] = intOrString(v);
      else dropped.push(`${k}=${v}`);
    }
    if (dropped.length > 0) out.warn(`[users] ${name}: ${dropped.join(' ')}: no per-user equivalent in pgmux; not carried over`);
    map[name] = entry;
  }
  out.set('users', map, '[users]');
}
