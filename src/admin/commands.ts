// The admin console's process-controlling commands (admin users only), with PgBouncer's
// syntax and meaning where pgmux has the same thing: argument checks, then one ServerView
// action, then PgBouncer's command tag.

import { pgmuxError } from '../protocol/errors.js';
import { errorResponse, noticeResponse } from '../protocol/messages.js';
import { commandComplete } from '../protocol/resultSet.js';
import type { ServerView } from './view.js';

export const ACTIONS = [
  'PAUSE', 'RESUME', 'RELOAD', 'RECONNECT', 'DISABLE', 'ENABLE', 'SHUTDOWN', 'KILL', 'KILL_CLIENT', 'SUSPEND', 'WAIT_CLOSE', 'SET', 'CACHE',
] as const;
export type Action = (typeof ACTIONS)[number];

/** A DISABLE / ENABLE argument naming a node (host:port) rather than a database. */
const NODE_NAME = /:\d+$/;

function usage(command: string, text: string): Buffer {
  return errorResponse(pgmuxError('adminWrongArguments', { args: { command }, hint: `Usage: ${text}` }));
}

function notice(message: string, tag: string): Buffer {
  return Buffer.concat([noticeResponse({ code: '00000', message }), commandComplete(tag)]);
}

/**
 * SET key = value (or TO value): the key and the value with one level of quotes removed
 * ('' inside single quotes is one quote, as in SQL). Null when the text is not that shape.
 */
export function parseSet(text: string): { key: string; value: string } | null {
  const m = /^set\s+([a-z_][a-z0-9_]*)\s*(?:=|\s+to\s+)\s*(.*)$/is.exec(text);
  if (m === null || m[2] === '') return null;
  let value = m[2]!.trim();
  if (value.length >= 2 && value.startsWith("'") && value.endsWith("'")) value = value.slice(1, -1).replace(/''/g, "'");
  else if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
  return { key: m[1]!.toLowerCase(), value };
}

/** Runs one action; `args` are the words after the verb (quotes removed), `text` the whole command. */
export async function runAction(view: ServerView, action: Action, args: string[], text: string): Promise<Buffer> {
  switch (action) {
    case 'PAUSE': {
      if (args.length > 1) return usage('PAUSE', 'PAUSE [database]');
      await view.pause(args[0] ?? null);
      return commandComplete('PAUSE');
    }
    case 'RESUME': {
      if (args.length > 1) return usage('RESUME', 'RESUME [database]');
      const db = args[0] ?? null;
      const wasPaused = db === null ? view.isPaused() || view.isSuspended() || anyDatabasePaused(view) : view.isPaused(db);
      view.resume(db);
      if (!wasPaused) return notice(db === null ? 'nothing was paused' : `database "${db}" was not paused`, 'RESUME');
      return commandComplete('RESUME');
    }
    case 'SUSPEND': {
      if (args.length > 0) return usage('SUSPEND', 'SUSPEND');
      view.suspend();
      return commandComplete('SUSPEND');
    }
    case 'RELOAD': {
      if (args.length > 0) return usage('RELOAD', 'RELOAD');
      const r = await view.reload();
      if (!r.ok) return errorResponse(pgmuxError('reloadRefused', { args: { reason: r.message } }));
      return notice(r.message, 'RELOAD');
    }
    case 'SET': {
      const set = parseSet(text);
      if (set === null) return usage('SET', "SET key = value (a quoted 'value' may contain spaces)");
      const r = await view.set(set.key, set.value);
      if (r.ok) return notice(r.message, 'SET');
      if (r.refused === 'unknown') return errorResponse(pgmuxError('adminUnknownSetting', { args: { key: set.key }, hint: 'SHOW CONFIG lists the settings.' }));
      if (r.refused === 'restart') return errorResponse(pgmuxError('adminSettingNeedsRestart', { args: { key: r.message } }));
      if (r.refused === 'invalid') return errorResponse(pgmuxError('adminSettingInvalid', { args: { reason: r.message } }));
      return errorResponse(pgmuxError('reloadRefused', { args: { reason: r.message } }));
    }
    case 'RECONNECT': {
      if (args.length > 1) return usage('RECONNECT', 'RECONNECT [database]');
      view.reconnect(args[0] ?? null);
      return commandComplete('RECONNECT');
    }
    case 'CACHE': {
      if ((args[0] ?? '').toUpperCase() !== 'CLEAR' || args.length > 2) return usage('CACHE', 'CACHE CLEAR [table]');
      const n = view.clearCache(args[1]);
      return notice(`${n} query cache entries dropped`, 'CACHE');
    }
    case 'WAIT_CLOSE': {
      if (args.length > 1) return usage('WAIT_CLOSE', 'WAIT_CLOSE [database]');
      await view.waitClose(args[0] ?? null);
      return commandComplete('WAIT_CLOSE');
    }
    case 'KILL': {
      if (args.length > 1) return usage('KILL', 'KILL [database]');
      view.kill(args[0] ?? null);
      return commandComplete('KILL');
    }
    case 'KILL_CLIENT': {
      if (args.length !== 1 || !/^\d+$/.test(args[0]!)) return usage('KILL_CLIENT', 'KILL_CLIENT <client id> (the id column of SHOW CLIENTS)');
      if (!view.killClient(Number(args[0]))) return errorResponse(pgmuxError('adminUnknownClient', { args: { id: args[0]! } }));
      return commandComplete('KILL_CLIENT');
    }
    case 'DISABLE':
    case 'ENABLE':
      return disableOrEnable(view, action, args);
    case 'SHUTDOWN': {
      const mode = (args[0] ?? '').toUpperCase();
      if (args.length > 1 || (mode !== '' && mode !== 'WAIT_FOR_SERVERS' && mode !== 'WAIT_FOR_CLIENTS')) {
        return usage('SHUTDOWN', 'SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]');
      }
      // After this answer has been written: shutdown tells idle clients (this one too) 57P01.
      setImmediate(() => view.shutdown(mode === 'WAIT_FOR_CLIENTS' ? 'wait_for_clients' : mode === 'WAIT_FOR_SERVERS' ? 'wait_for_servers' : undefined));
      return commandComplete('SHUTDOWN');
    }
  }
}

/** DISABLE / ENABLE: a host:port argument is a node (no new transactions), anything else a database (no new clients). */
function disableOrEnable(view: ServerView, action: 'DISABLE' | 'ENABLE', args: string[]): Buffer {
  if (args.length !== 1) return usage(action, `${action} <database> | ${action} <host:port>`);
  const name = args[0]!;
  if (!NODE_NAME.test(name)) {
    if (action === 'DISABLE') {
      view.disableDatabase(name);
      return commandComplete('DISABLE');
    }
    if (!view.enableDatabase(name)) return notice(`database "${name}" was not disabled`, 'ENABLE');
    return commandComplete('ENABLE');
  }
  const known = view.topology().nodes.map((n) => n.name);
  if (!known.includes(name) || (action === 'DISABLE' && !view.disableNode(name))) {
    return errorResponse(pgmuxError('adminUnknownNode', { args: { node: name }, hint: `Nodes: ${known.join(', ') || '(none)'}.` }));
  }
  if (action === 'DISABLE') return commandComplete('DISABLE');
  if (!view.enableNode(name)) return notice(`node "${name}" was not disabled`, 'ENABLE');
  return commandComplete('ENABLE');
}

function anyDatabasePaused(view: ServerView): boolean {
  const dbs = new Set(view.clients().map((c) => c.database));
  return [...dbs].some((d) => view.isPaused(d));
}
