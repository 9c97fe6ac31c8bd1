// The admin console: PgBouncer's commands (and pgmux's own) on the virtual database "pgmux",
// also answering as "pgbouncer"; the command table, parsing and dispatch. Result sets are
// built in pgbouncerShow.ts / pgmuxShow.ts, actions run in commands.ts.
//
// Commands are case-insensitive, words separated by any whitespace, with an optional
// trailing ";". Stats users (stats_users) may run the SHOW commands; admin users
// (admin_users) every command.

import { lex } from '../routing/lexer.js';
import { pgmuxError } from '../protocol/errors.js';
import { errorResponse } from '../protocol/messages.js';
import { resultSet } from '../protocol/resultSet.js';
import type { ServerView } from './view.js';
import { ACTIONS, runAction, type Action } from './commands.js';
import * as bouncer from './pgbouncerShow.js';
import { showCache, showNodePools, showNodes, showNodeStats, showPoolNodes } from './pgmuxShow.js';
import { TrafficSampler } from './trafficSampler.js';

export type AdminRole = 'admin' | 'stats';

export interface CommandHelp {
  command: string;
  description: string;
  /** May stats users run it? */
  show: boolean;
}

/** Every command, as SHOW HELP lists it and docs/operations.md documents it (a test checks). */
export const COMMANDS: readonly CommandHelp[] = [
  { command: 'SHOW HELP', description: 'this list', show: true },
  { command: 'SHOW VERSION', description: 'the pgmux version', show: true },
  { command: 'SHOW POOLS', description: "one row per (database, user): clients and backends by state, PgBouncer's columns", show: true },
  { command: 'SHOW CLIENTS', description: 'one row per client connection', show: true },
  { command: 'SHOW SERVERS', description: 'one row per backend connection', show: true },
  { command: 'SHOW DATABASES', description: 'the database entries clients connect to', show: true },
  { command: 'SHOW USERS', description: 'users with clients or backends, and the console users', show: true },
  { command: 'SHOW LISTS', description: 'counts of databases, users, pools, clients, backends', show: true },
  { command: 'SHOW STATS', description: 'per database: totals since start and averages over the last 60 s', show: true },
  { command: 'SHOW STATS_TOTALS', description: 'the totals of SHOW STATS', show: true },
  { command: 'SHOW STATS_AVERAGES', description: 'the averages of SHOW STATS', show: true },
  { command: 'SHOW TOTALS', description: 'SHOW STATS over all databases, as name/value rows', show: true },
  { command: 'SHOW CONFIG', description: 'the running configuration (passwords masked), defaults, and what SET can change', show: true },
  { command: 'SHOW STATE', description: 'active, paused, suspended', show: true },
  { command: 'SHOW MEM', description: 'the JavaScript heap', show: true },
  { command: 'SHOW SOCKETS', description: 'clients and backends with their socket details', show: true },
  { command: 'SHOW ACTIVE_SOCKETS', description: 'sockets with unprocessed data (always none in pgmux)', show: true },
  { command: 'SHOW PEERS', description: 'the other pgmux instances (peers)', show: true },
  { command: 'SHOW PEER_POOLS', description: 'PgBouncer peer pools (pgmux has none)', show: true },
  { command: 'SHOW DNS_HOSTS', description: 'PgBouncer DNS cache (pgmux has none)', show: true },
  { command: 'SHOW DNS_ZONES', description: 'PgBouncer DNS zones (pgmux has none)', show: true },
  { command: 'SHOW FDS', description: 'PgBouncer file descriptors for online restart (pgmux has none)', show: false },
  { command: 'SHOW NODES', description: 'the database nodes: role, state, lag, routed transactions', show: true },
  { command: 'SHOW NODE_POOLS', description: 'one row per (node, database, user) pool', show: true },
  { command: 'SHOW NODE_STATS', description: 'transactions per node; bytes, logins, waits, retries, classifier cache', show: true },
  { command: 'SHOW POOL_NODES', description: "Pgpool-II's node list", show: true },
  { command: 'SHOW CACHE', description: 'the query cache: entries, bytes, hits, misses, hit ratio; then entries and bytes by (database, table)', show: true },
  { command: 'PAUSE [db]', description: 'new transactions wait; returns once none holds a backend', show: false },
  { command: 'RESUME [db]', description: 'undoes PAUSE, SUSPEND and KILL', show: false },
  { command: 'SUSPEND', description: 'no transaction starts until RESUME (running ones go on)', show: false },
  { command: 'KILL [db]', description: 'closes the clients and backends of a database (or all) now; new transactions wait for RESUME', show: false },
  { command: 'KILL_CLIENT <id>', description: 'closes one client (SHOW CLIENTS id) and its backend', show: false },
  { command: 'RELOAD', description: 're-reads the configuration; a refused one leaves the running one in place', show: false },
  { command: 'SET <key> = <value>', description: 'changes one setting that RELOAD can change, parsed as in the file', show: false },
  { command: 'RECONNECT [db]', description: 'closes every backend (of a database) as soon as it is released', show: false },
  { command: 'CACHE CLEAR [table]', description: 'drops the query cache entries (those a write to the table would drop, in every database)', show: false },
  { command: 'WAIT_CLOSE [db]', description: 'returns once no backend (of a database) is waiting to be closed', show: false },
  { command: 'DISABLE <db>', description: 'new clients of the database are refused', show: false },
  { command: 'ENABLE <db>', description: 'undoes DISABLE <db>', show: false },
  { command: 'DISABLE <host:port>', description: 'no new transactions on that node', show: false },
  { command: 'ENABLE <host:port>', description: 'undoes DISABLE <host:port>', show: false },
  { command: 'SHUTDOWN', description: 'graceful shutdown: running transactions may finish', show: false },
  { command: 'SHUTDOWN WAIT_FOR_SERVERS', description: 'the same as SHUTDOWN', show: false },
  { command: 'SHUTDOWN WAIT_FOR_CLIENTS', description: 'new clients are refused; exits once the last client left', show: false },
];

const SHOW_SUBJECTS = COMMANDS.filter((c) => c.command.startsWith('SHOW ')).map((c) => c.command.split(' ')[1]!);

/** SHOW commands stats users may not run (PgBouncer's SHOW FDS). */
const ADMIN_ONLY_SHOWS = new Set(COMMANDS.filter((c) => c.command.startsWith('SHOW ') && !c.show).map((c) => c.command.split(' ')[1]!));

const VALID_LIST = COMMANDS.map((c) => c.command).join(', ');

/** EmptyQueryResponse: what PostgreSQL answers to a query string with no command. */
const EMPTY_QUERY = Buffer.from([0x49, 0, 0, 0, 4]);

/** Strips one level of "double" or 'single' quotes from an argument. */
function unquote(s: string): string {
  if (s.length >= 2 && ((s.startsWith('"') && s.endsWith('"')) || (s.startsWith("'") && s.endsWith("'")))) return s.slice(1, -1);
  return s;
}

export { configRows } from './pgbouncerShow.js';

export class AdminConsole {
  /** Samples the traffic totals once a stats period, for SHOW STATS averages. */
  private readonly sampler: TrafficSampler;

  constructor(private view: ServerView) {
    this.sampler = new TrafficSampler(view);
  }

  start(): void {
    this.sampler.start();
  }

  stop(): void {
    this.sampler.stop();
  }

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
      if (!SHOW_SUBJECTS.includes(subject) || args.length > 1) return this.unknown(text);
      if (ADMIN_ONLY_SHOWS.has(subject) && role !== 'admin') return errorResponse(pgmuxError('adminPermissionDenied', { args: { command: `SHOW ${subject}` } }));
      return this.show(subject);
    }
    if (!(ACTIONS as readonly string[]).includes(verb)) return this.unknown(text);
    const action = verb as Action;
    if (role !== 'admin') {
      return errorResponse(pgmuxError('adminPermissionDenied', { args: { command: action } }));
    }
    return runAction(this.view, action, args.map(unquote), text);
  }

  private unknown(text: string): Buffer {
    return errorResponse(pgmuxError('adminUnknownCommand', { args: { command: text }, hint: `Valid commands: ${VALID_LIST}.` }));
  }

  private show(subject: string): Buffer {
    const v = this.view;
    switch (subject) {
      case 'HELP':
        return resultSet(['command', 'description', 'stats_users'], COMMANDS.map((c) => [c.command, c.description, c.show ? 'yes' : 'no']));
      case 'VERSION':
        return bouncer.showVersion(v);
      case 'POOLS':
        return bouncer.showPools(v);
      case 'CLIENTS':
        return bouncer.showClients(v);
      case 'SERVERS':
        return bouncer.showServers(v);
      case 'DATABASES':
        return bouncer.showDatabases(v);
      case 'USERS':
        return bouncer.showUsers(v);
      case 'LISTS':
        return bouncer.showLists(v);
      case 'STATS':
        return bouncer.showStats(v, this.sampler, 'all');
      case 'STATS_TOTALS':
        return bouncer.showStats(v, this.sampler, 'totals');
      case 'STATS_AVERAGES':
        return bouncer.showStats(v, this.sampler, 'averages');
      case 'TOTALS':
        return bouncer.showTotals(v, this.sampler);
      case 'CONFIG':
        return bouncer.showConfig(v.config());
      case 'STATE':
        return bouncer.showState(v);
      case 'MEM':
        return bouncer.showMem();
      case 'SOCKETS':
        return bouncer.showSockets(v, false);
      case 'ACTIVE_SOCKETS':
        return bouncer.showSockets(v, true);
      case 'PEERS':
        return bouncer.showPeers(v.config());
      case 'PEER_POOLS':
      case 'DNS_HOSTS':
      case 'DNS_ZONES':
      case 'FDS':
        return bouncer.showEmpty(subject);
      case 'NODES':
        return showNodes(v);
      case 'NODE_POOLS':
        return showNodePools(v);
      case 'NODE_STATS':
        return showNodeStats(v);
      case 'POOL_NODES':
        return showPoolNodes(v);
      case 'CACHE':
        return showCache(v);
      default:
        return this.unknown(`SHOW ${subject}`);
    }
  }
}
