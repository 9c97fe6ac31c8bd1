// What a client's startup packet asks for, split into what pgmux itself uses (user,
// database) and the session settings it must apply on every backend the client uses
// (application_name, TimeZone, `options=-c statement_timeout=5s`, custom GUCs, ...).
// PgBouncer refuses most of these; pgmux accepts them all and lets PostgreSQL judge them.

import { PgmuxError, pgmuxError } from '../protocol/errors.js';

/** Parameters PostgreSQL reports with ParameterStatus that a session may change. */
const SETTABLE_REPORTED: Record<string, string> = {
  application_name: 'application_name',
  client_encoding: 'client_encoding',
  datestyle: 'DateStyle',
  intervalstyle: 'IntervalStyle',
  timezone: 'TimeZone',
  standard_conforming_strings: 'standard_conforming_strings',
  default_transaction_read_only: 'default_transaction_read_only',
};

/** Canonical (ParameterStatus) name of a reported parameter, or null if not reported. */
export function reportedName(name: string): string | null {
  return SETTABLE_REPORTED[name.toLowerCase()] ?? null;
}

export function isSettableReported(statusName: string): boolean {
  return SETTABLE_REPORTED[statusName.toLowerCase()] === statusName;
}

export interface StartupRequest {
  user: string;
  database: string;
  /** Session settings in the order given: name (as sent, or canonical if reported) -> raw value. */
  settings: Map<string, string>;
  /** `_pq_.` protocol options we do not support (reported via NegotiateProtocolVersion). */
  protocolOptions: string[];
  replication: string | null;
}

/** A startup option pgmux cannot read: sent to the client as its catalogue error. */
export class StartupParamError extends PgmuxError {}

/**
 * Splits `options` the way the PostgreSQL backend does: words separated by spaces,
 * a backslash escapes the next character.
 */
export function splitOptions(options: string): string[] {
  const words: string[] = [];
  let cur = '';
  let has = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) {
      cur += options[++i];
      has = true;
    } else if (ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r') {
      if (has) words.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
      has = true;
    }
  }
  if (has) words.push(cur);
  return words;
}

/** `-c name=value`, `-cname=value` and `--name=value` settings from an `options` string. */
export function parseOptions(options: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const words = splitOptions(options);
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    let setting: string | undefined;
    if (w === '-c') setting = words[++i];
    else if (w.startsWith('-c')) setting = w.slice(2);
    else if (w.startsWith('--')) setting = w.slice(2);
    else throw new StartupParamError(pgmuxError('unsupportedStartupOption', { args: { option: w } }));
    if (setting === undefined) throw new StartupParamError(pgmuxError('startupOptionWithoutValue'));
    const eq = setting.indexOf('=');
    if (eq <= 0) throw new StartupParamError(pgmuxError('startupOptionNotNameValue', { args: { option: setting } }));
    out.push([setting.slice(0, eq).replace(/-/g, '_'), setting.slice(eq + 1)]);
  }
  return out;
}

export function parseStartup(params: Map<string, string>): StartupRequest {
  const user = params.get('user') ?? '';
  const database = params.get('database') || user;
  const settings = new Map<string, string>();
  const protocolOptions: string[] = [];
  let replication: string | null = null;
  const put = (name: string, value: string) => {
    const canonical = reportedName(name) ?? name.toLowerCase();
    settings.delete(canonical); // a later setting wins, and moves to the end
    settings.set(canonical, value);
  };
  for (const [k, v] of params) {
    if (k === 'user' || k === 'database') continue;
    if (k === 'options') {
      for (const [name, value] of parseOptions(v)) put(name, value);
    } else if (k === 'replication') {
      replication = v;
    } else if (k.startsWith('_pq_.')) {
      protocolOptions.push(k);
    } else {
      put(k, v);
    }
  }
  return { user, database, settings, protocolOptions, replication };
}
