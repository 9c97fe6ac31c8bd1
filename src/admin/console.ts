// The admin console: PgBouncer-like commands on the virtual database "pgmux", answered with
// psql-friendly result sets built from the ServerView.
//
// Commands are case-insensitive, words separated by any whitespace, with an optional
// trailing ";". Stats users (stats_users) may run the SHOW commands; admin users
// (admin_users) every command. Times are ISO 8601 strings (UTC), never-happened times NULL.

import { lex } from '../routing/lexer.js';
import { configToObject } from '../config/load.js';
import type { Config } from '../config/types.js';
import { pgmuxError } from '../protocol/errors.js';
import { errorResponse, noticeResponse } from '../protocol/messages.js';
import { commandComplete, resultSet, type Cell } from '../protocol/resultSet.js';
import type { ServerView } from './view.js';
import { currentRole } from '../cluster/snapshot.js';

export type AdminRole = 'admin' | 'stats';

interface CommandHelp {
  command: string;
  description: string;
  /** May stats users run it? */
  show: boolean;
}

const COMMANDS: readonly CommandHelp[] = [
  { command: 'SHOW HELP', description: 'this list', show: true },
  { command: 'SHOW VERSION', description: 'the pgmux version', show: true },
  { command: 'SHOW POOLS', description: 'one row per (node, database, user) pool: clients and backends by state', show: true },
  { command: 'SHOW CLIENTS', description: 'one row per client connection', show: true },
  { command: 'SHOW SERVERS', description: 'one row per backend connection', show: true },
  { command: 'SHOW NODES', description: 'the database nodes: role, state, lag, routed transactions', show: true },
  { command: 'SHOW STATS', description: 'transactions per node; bytes, logins, waits, retries, classifier cache', show: true },
  { command: 'SHOW CONFIG', description: 'the running configuration (passwords masked)', show: true },
  { command: 'PAUSE [db]', description: 'new transactions wait; returns once none holds a backend', show: false },
  { command: 'RESUME [db]', description: 'lets paused transactions run', show: false },
  { command: 'RELOAD', description: 're-reads the configuration; a refused one leaves the running one in place', show: false },
  { command: 'RECONNECT', description: 'closes every backend as soon as it is released', show: false },
  { command: 'DISABLE <host:port>', description: 'no new transactions on that node', show: false },
  { command: 'ENABLE <host:port>', description: 'undoes DISABLE', show: false },
  { command: 'SHUTDOWN', description: 'graceful shutdown: running transactions may finish', show: false },
];

const SHOW_SUBJECTS = ['HELP', 'VERSION', 'POOLS', 'CLIENTS', 'SERVERS', 'NODES', 'STATS', 'CONFIG'] as const;
type ShowSubject = (typeof SHOW_SUBJECTS)[number];

const ACTIONS = ['PAUSE', 'RESUME', 'RELOAD', 'RECONNECT', 'DISABLE', 'ENABLE', 'SHUTDOWN'] as const;
type Action = (typeof ACTIONS)[number];

const VALID_LIST = COMMANDS.map((c) => c.command).join(', ');

/** EmptyQueryResponse: what PostgreSQL answers to a query string with no command. */
const EMPTY_QUERY = Buffer.from([0x49, 0, 0, 0, 4]);

function iso(ms: number | null | undefined): string | null {
  return ms === null || ms === undefined || ms <= 0 ? null : new Date(ms).toISOString();
}

/** Strips one level of "double" or 'single' quotes from an argument. */
function unquote(s: string): string {
  if (s.length >= 2 && ((s.startsWith('"') && s.endsWith('"')) || (s.startsWith("'") && s.endsWith("'")))) return s.slice(1, -1);
  return s;
}

function cellOf(v: unknown): string | null {
  if (v === null || v === undefined) return null;
  if (Array.isArray(v)) return v.map((x) => String(x)).join(', ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Every setting as snake_case key -> display value, in the schema's order; secrets masked. */
export function configRows(c: Config): Array<[string, string | null]> {
  return Object.entries(configToObject(c)).map(([k, v]) => [k, cellOf(v)]);
}

export class AdminConsole {
  /** Nodes this console disabled, for views that cannot say (PgmuxServer has isDisabled). */
  private readonly disabledHere = new Set<string>();

  constructor(private view: ServerView) {}

  /** Response bytes for one Query (without ReadyForQuery). */
  async run(sql: string, role: AdminRole): Promise<Buffer> {
    // The SQL lexer finds the command: comments (psql scripts, sqlcommenter) and trailing
    // semicolons are not part of it.
    const { tokens } = lex(sql);
    let last = tokens.length - 1;
    while (last >= 0 && tokens[last]!.kind === 'punct' && tokens[last]!.value === ';') last--;
    if (last < 0) return EMPTY_QUERY;
    if (tokens.some((t, i) => i < last && t.kind === 'punct' && t.value === ';')) {
      return errorResponse(pgmuxError('adminOneCommandPerQuery', { hint: `Send the commands one at a time. Valid commands: ${VALID_LIST}.` }));
    }
    const text = sql.slice(tokens[0]!.start, tokens[last]!.end);
    const words = text.split(/\s+/);
    const verb = words[0]!.toUpperCase();
    const args = words.slice(1);

    if (verb === 'SHOW') {
      const subject = (args[0] ?? '').toUpperCase();
      if (!(SHOW_SUBJECTS as readonly string[]).includes(subject) || args.length > 1) return this.unknown(text);
      return this.show(subject as ShowSubject);
    }
    if (!(ACTIONS as readonly string[]).includes(verb)) return this.unknown(text);
    const action = verb as Action;
    if (role !== 'admin') {
      return errorResponse(pgmuxError('adminPermissionDenied', { args: { command: action } }));
    }
    return this.act(action, args.map(unquote));
  }

  private unknown(text: string): Buffer {
    return errorResponse(pgmuxError('adminUnknownCommand', { args: { command: text }, hint: `Valid commands: ${VALID_LIST}.` }));
  }

  private usage(command: string, usage: string): Buffer {
    return errorResponse(pgmuxError('adminWrongArguments', { args: { command }, hint: `Usage: ${usage}` }));
  }

  // ---- SHOW ---------------------------------------------------------------------------

  private show(subject: ShowSubject): Buffer {
    switch (subject) {
      case 'HELP':
        return resultSet(['command', 'description', 'stats_users'], COMMANDS.map((c) => [c.command, c.description, c.show ? 'yes' : 'no']));
      case 'VERSION':
        return resultSet(['version'], [[`pgmux ${this.view.version}`]]);
      case 'POOLS':
        return this.showPools();
      case 'CLIENTS':
        return this.showClients();
      case 'SERVERS':
        return this.showServers();
      case 'NODES':
        return this.showNodes();
      case 'STATS':
        return this.showStats();
      case 'CONFIG':
        return resultSet(['key', 'value'], configRows(this.view.config()));
    }
  }

  private showPools(): Buffer {
    const clients = this.view.clients();
    const mode = this.view.config().poolMode;
    const rows: Cell[][] = this.view.pools().map((p) => {
      const clActive = clients.filter((c) => c.backendNode === p.node && c.database === p.database && c.user === p.user).length;
      return [p.node, p.database, p.user, clActive, p.stats.waiting, p.stats.active, p.stats.idle, p.stats.connecting, p.stats.maxWaitMs, mode];
    });
    rows.sort((a, b) => String(a[0]).localeCompare(String(b[0])) || String(a[1]).localeCompare(String(b[1])) || String(a[2]).localeCompare(String(b[2])));
    return resultSet(['node', 'database', 'user', 'cl_active', 'cl_waiting', 'sv_active', 'sv_idle', 'sv_connecting', 'maxwait_ms', 'pool_mode'], rows);
  }

  private showClients(): Buffer {
    const rows: Cell[][] = this.view
      .clients()
      .sort((a, b) => a.id - b.id)
      .map((c) => [
        c.id,
        c.user,
        c.database,
        c.state,
        c.remote,
        c.applicationName,
        iso(c.connectedAt),
        iso(c.lastActiveAt),
        c.transactions,
        c.backendNode,
        c.backendPid,
        c.preparedStatements,
      ]);
    return resultSet(
      ['id', 'user', 'database', 'state', 'addr', 'application_name', 'connect_time', 'last_active', 'transactions', 'node', 'backend_pid', 'prepared_statements'],
      rows,
    );
  }

  private showServers(): Buffer {
    const rows: Cell[][] = this.view
      .backends()
      .sort((a, b) => a.id - b.id)
      .map((b) => [b.id, b.node, b.database, b.user, b.state, b.pid, iso(b.createdAt), b.clientId, b.preparedStatements, b.resets]);
    return resultSet(['id', 'node', 'database', 'user', 'state', 'pid', 'connect_time', 'client_id', 'prepared_statements', 'resets'], rows);
  }

  private isDisabled(name: string): boolean {
    const v = this.view as ServerView & { isDisabled?: (name: string) => boolean };
    return typeof v.isDisabled === 'function' ? v.isDisabled(name) : this.disabledHere.has(name);
  }

  private showNodes(): Buffer {
    const tx = this.view.counters().transactions;
    const rows: Cell[][] = this.view.topology().nodes.map((n) => {
      const t = tx.get(n.name);
      return [
        n.name,
        n.host,
        currentRole(n),
        n.state,
        n.weight,
        n.lagBytes,
        n.lagMs,
        t?.read ?? 0,
        t?.write ?? 0,
        iso(n.lastCheckAt),
        n.reason ?? null,
        this.isDisabled(n.name),
        n.role,
      ];
    });
    // role: what the node is now (`unknown` while down); last_role: what it last answered.
    return resultSet(['name', 'address', 'role', 'state', 'weight', 'lag_bytes', 'lag_ms', 'reads', 'writes', 'last_check', 'reason', 'disabled', 'last_role'], rows);
  }

  private showStats(): Buffer {
    const c = this.view.counters();
    const cls = this.view.classifierStats();
    // Configured nodes first (in order), then nodes a reload removed that still have counts.
    const names = this.view.config().nodes.map((n) => `${n.host}:${n.port}`);
    for (const k of c.transactions.keys()) if (!names.includes(k)) names.push(k);
    const blank = [null, null, null, null, null, null, null, null, null] as const;
    let read = 0;
    let write = 0;
    const rows: Cell[][] = names.map((name) => {
      const t = c.transactions.get(name) ?? { read: 0, write: 0 };
      read += t.read;
      write += t.write;
      return [name, t.read, t.write, t.read + t.write, ...blank];
    });
    const avgWait = c.waitCount > 0 ? (c.waitMsSum / c.waitCount).toFixed(3) : '0.000';
    rows.push([
      'total',
      read,
      write,
      read + write,
      c.bytesIn,
      c.bytesOut,
      c.clientLogins,
      c.clientLoginFailures,
      avgWait,
      c.readRetries,
      c.failovers,
      cls.hits,
      cls.misses,
    ]);
    return resultSet(
      [
        'node',
        'xact_read',
        'xact_write',
        'xact_total',
        'bytes_in',
        'bytes_out',
        'logins',
        'login_failures',
        'avg_wait_ms',
        'read_retries',
        'failovers',
        'classifier_cache_hits',
        'classifier_cache_misses',
      ],
      rows,
    );
  }

  // ---- actions (admin users) -----------------------------------------------------------

  private async act(action: Action, args: string[]): Promise<Buffer> {
    switch (action) {
      case 'PAUSE': {
        if (args.length > 1) return this.usage('PAUSE', 'PAUSE [database]');
        await this.view.pause(args[0] ?? null);
        return commandComplete('PAUSE');
      }
      case 'RESUME': {
        if (args.length > 1) return this.usage('RESUME', 'RESUME [database]');
        const db = args[0] ?? null;
        const wasPaused = db === null ? this.view.isPaused() || this.anyDatabasePaused() : this.view.isPaused(db);
        this.view.resume(db);
        if (!wasPaused) {
          return Buffer.concat([noticeResponse({ code: '00000', message: db === null ? 'nothing was paused' : `database "${db}" was not paused` }), commandComplete('RESUME')]);
        }
        return commandComplete('RESUME');
      }
      case 'RELOAD': {
        if (args.length > 0) return this.usage('RELOAD', 'RELOAD');
        const r = await this.view.reload();
        if (!r.ok) return errorResponse(pgmuxError('reloadRefused', { args: { reason: r.message } }));
        return Buffer.concat([noticeResponse({ code: '00000', message: r.message }), commandComplete('RELOAD')]);
      }
      case 'RECONNECT': {
        if (args.length > 0) return this.usage('RECONNECT', 'RECONNECT');
        this.view.reconnect();
        return commandComplete('RECONNECT');
      }
      case 'DISABLE':
      case 'ENABLE': {
        if (args.length !== 1) return this.usage(action, `${action} <host:port>`);
        const name = args[0]!;
        const known = this.view.topology().nodes.map((n) => n.name);
        if (!known.includes(name)) {
          return errorResponse(pgmuxError('adminUnknownNode', { args: { node: name }, hint: `Nodes: ${known.join(', ') || '(none)'}.` }));
        }
        if (action === 'DISABLE') {
          if (!this.view.disableNode(name)) return errorResponse(pgmuxError('adminUnknownNode', { args: { node: name }, hint: `Nodes: ${known.join(', ')}.` }));
          this.disabledHere.add(name);
          return commandComplete('DISABLE');
        }
        const had = this.view.enableNode(name);
        this.disabledHere.delete(name);
        if (!had) return Buffer.concat([noticeResponse({ code: '00000', message: `node "${name}" was not disabled` }), commandComplete('ENABLE')]);
        return commandComplete('ENABLE');
      }
      case 'SHUTDOWN': {
        if (args.length > 0) return this.usage('SHUTDOWN', 'SHUTDOWN');
        // After this answer has been written: shutdown tells idle clients (this one too) 57P01.
        setImmediate(() => this.view.shutdown());
        return commandComplete('SHUTDOWN');
      }
    }
  }

  private anyDatabasePaused(): boolean {
    const dbs = new Set(this.view.clients().map((c) => c.database));
    return [...dbs].some((d) => this.view.isPaused(d));
  }
}
