// PgBouncer's pgbouncer.ini -> pgmux keys: [pgbouncer] settings, and [databases] entries
// folded into one node list.

import type { Output } from './output.js';
import { isInteger, intOrString, seconds, listenHost, hostPort } from './values.js';


interface IniEntry {
  section: string;
  key: string;
  value: string;
  line: number;
}

function parseIni(text: string, out: Output): IniEntry[] {
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
  verbose: 'use log_level (debug/trace)',
  unix_socket_dir: 'pgmux listens on TCP only',
  user: 'run pgmux as a non-root user from your supervisor',
  reserve_pool_size: 'pools have one size (pool_size)',
  reserve_pool_timeout: 'pools have one size (pool_size)',
  server_check_query: 'pgmux health-checks each node over its own control connection (health_check_*)',
  server_check_delay: 'pgmux health-checks each node over its own control connection (health_check_period)',
  server_round_robin: 'replica reads are spread by node weight',
  ignore_startup_parameters: 'pgmux accepts and tracks common startup parameters itself',
  auth_query: 'pgmux authenticates from auth_file only',
  auth_user: 'pgmux authenticates from auth_file only',
  auth_hba_file: 'hba files are not supported',
  stats_period: 'pgmux serves live counters on /metrics',
  listen_backlog: 'not configurable in pgmux',
  so_reuseport: 'not configurable in pgmux',
  track_extra_parameters: 'pgmux tracks session parameters itself',
  server_reset_query_always: 'pgmux runs server_reset_query in session mode only; transaction mode never needs it',
  dns_max_ttl: 'pgmux resolves node names on each connect',
  application_name_add_host: 'not supported',
  peer_id: 'peering is not supported',
};

export function importPgbouncer(text: string, out: Output): void {
  const entries = parseIni(text, out);
  const settings = new Map<string, IniEntry>();
  for (const e of entries) {
    if (e.section === 'pgbouncer') settings.set(e.key.toLowerCase(), e);
  }
  const get = (k: string): string | undefined => settings.get(k)?.value;
  const done = new Set<string>();
  const show = (k: string) => `${k} = ${get(k) ?? ''}`;

  // listen_addr + listen_port -> listen.
  const addr = get('listen_addr');
  const port = get('listen_port');
  if (addr !== undefined || port !== undefined) {
    done.add('listen_addr').add('listen_port');
    if (addr !== undefined && addr.includes(',')) {
      out.warn(`listen_addr = ${addr}: pgmux listens on one address; using the first (${listenHost(addr)})`);
    }
    if (addr === undefined) {
      out.warn(`listen_addr is not set (PgBouncer then listens on its Unix socket only): pgmux listens on TCP 0.0.0.0:${port}`);
    }
    const p = port ?? '6432';
    const host = listenHost(addr ?? '*');
    if (isInteger(p)) out.set('listen', hostPort(host, Number(p)), show('listen_port'));
    else out.warn(`listen_port = ${p}: not a port; listen left at pgmux's default`);
  }

  const pm = get('pool_mode');
  if (pm !== undefined) {
    done.add('pool_mode');
    if (pm.trim().toLowerCase() === 'statement') {
      out.warn('pool_mode = statement: pgmux does not offer statement pooling (it breaks multi-statement transactions); using transaction');
      out.set('pool_mode', 'transaction', show('pool_mode'));
    } else {
      out.set('pool_mode', pm.trim().toLowerCase(), show('pool_mode'));
    }
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

  const authType = get('auth_type');
  if (authType !== undefined) {
    done.add('auth_type');
    const t = authType.trim().toLowerCase();
    const mapped: Record<string, string> = { md5: 'md5', 'scram-sha-256': 'scram-sha-256', plain: 'password', trust: 'trust' };
    if (mapped[t] !== undefined) {
      out.set('auth', mapped[t], show('auth_type'));
    } else {
      const why: Record<string, string> = {
        hba: 'hba files are not supported',
        cert: 'TLS client certificates are not supported',
        pam: 'PAM is not supported',
        any: 'pgmux has no "any" method (trust is the closest)',
      };
      out.warn(
        `auth_type = ${authType}: ${why[t] ?? 'not supported'}; auth is left out, which means pgmux's default trust: ` +
          'set auth to md5 or scram-sha-256 (with auth_file) before exposing pgmux',
      );
    }
  }

  const authFile = get('auth_file');
  if (authFile !== undefined) {
    done.add('auth_file');
    if (authFile.trim() !== '') {
      if (out.set('auth_file', authFile.trim(), show('auth_file')) && !authFile.trim().startsWith('/')) {
        out.warn(`auth_file = ${authFile}: a relative path; pgmux resolves it against the YAML file's directory`);
      }
    }
  }

  for (const k of PGBOUNCER_DURATIONS) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    out.set(k, seconds(v), show(k));
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

  for (const k of ['admin_users', 'stats_users']) {
    const v = get(k);
    if (v === undefined) continue;
    done.add(k);
    const users = v.split(',').map((u) => u.trim()).filter((u) => u !== '');
    if (users.length > 0) out.set(k, users, show(k));
  }

  for (const [key, e] of settings) {
    if (done.has(key)) continue;
    let why = PGBOUNCER_HINTS[key];
    if (why === undefined && /^(client|server)_tls_/.test(key)) why = 'TLS is not supported by pgmux; terminate TLS in front of it';
    out.warn(`${e.key} = ${e.value}: no pgmux equivalent${why !== undefined ? ` (${why})` : ''}; not carried over`);
  }

  importPgbouncerDatabases(entries, out);

  for (const e of entries) {
    if (e.section === 'pgbouncer' || e.section === 'databases') continue;
    if (e.section === 'users') {
      out.warn(`[users] ${e.key} = ${e.value}: per-user settings are not carried over (pgmux pools per (node, database, user) with one pool_size and pool_mode)`);
    } else if (e.section === 'peers') {
      out.warn(`[peers] ${e.key} = ${e.value}: peering is not supported; not carried over`);
    } else {
      out.warn(`[${e.section || 'no section'}] ${e.key} = ${e.value}: unknown section; not carried over`);
    }
  }
}

function importPgbouncerDatabases(entries: IniEntry[], out: Output): void {
  const dbs = entries.filter((e) => e.section === 'databases');
  if (dbs.length === 0) return;
  const nodes: string[] = [];
  const seen = new Set<string>();
  const passwords = new Set<string>();
  const perDb: string[] = [];
  for (const e of dbs) {
    const conn = parseConnString(e.value);
    const port = conn.get('port') ?? '5432';
    const hosts = (conn.get('host') ?? '').split(',').map((h) => h.trim()).filter((h) => h !== '');
    if (hosts.length === 0) {
      out.warn(`[databases] ${e.key}: no host= (PgBouncer then uses a Unix socket); pgmux needs TCP nodes: add this server to nodes yourself`);
    }
    for (const host of hosts) {
      if (host.startsWith('/')) {
        out.warn(`[databases] ${e.key}: host=${host} is a Unix socket directory; pgmux connects over TCP only: add this server to nodes yourself`);
        continue;
      }
      if (!isInteger(port)) {
        out.warn(`[databases] ${e.key}: port=${port} is not a port; ${host} left out`);
        continue;
      }
      const hp = hostPort(host, Number(port));
      const id = hp.toLowerCase();
      if (seen.has(id)) continue;
      seen.add(id);
      nodes.push(hp);
    }
    const pw = conn.get('password');
    if (pw !== undefined && pw !== '') passwords.add(pw);
    const extra = [...conn.keys()].filter((k) => !['host', 'port', 'password'].includes(k));
    if (extra.length > 0) perDb.push(`${e.key} (${extra.map((k) => `${k}=${k === 'password' ? '***' : conn.get(k)}`).join(' ')})`);
  }
  if (nodes.length > 0) out.set('nodes', nodes, '[databases]');
  if (passwords.size > 0) {
    const [first] = passwords;
    if (out.set('server_password', first, '[databases] password=')) {
      out.warn('[databases] password= -> server_password: pgmux logs in to the nodes with it for every user whose auth_file entry holds no plain password');
    }
    if (passwords.size > 1) {
      out.warn(`[databases]: ${passwords.size} different password= values; pgmux has one server_password, the first is used`);
    }
  }
  out.warn(
    `[databases]: ${dbs.length} entr${dbs.length === 1 ? 'y' : 'ies'} became ${nodes.length} node${nodes.length === 1 ? '' : 's'}; ` +
      'per-database routing and aliases are not carried over: pgmux pools by the database name the client asks for, ' +
      'on every node, and finds the primary itself',
  );
  if (perDb.length > 0) {
    out.warn(`[databases]: per-database settings not carried over: ${perDb.join('; ')}`);
  }
}
