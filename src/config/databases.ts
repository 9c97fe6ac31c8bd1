// The databases and users sections (PgBouncer's [databases] / [users]): their parsing, and
// what a client's (database, user) resolves to at login: the entry, the database and user
// its backends log in as, the password scoped to that entry, its pool mode and route.
//
// Resolution runs once per client (handshake); the session keeps the DatabaseTarget and never
// looks the entry up again on the hot path.

import type { Config, DatabaseEntry, DatabaseRoute, PoolMode, UserEntry } from './types.js';
import { Invalid, parseBoolean, parseEnum, parseInteger, show, type Raw } from './values.js';

export const DATABASE_ROUTES: readonly DatabaseRoute[] = ['any', 'replica', 'primary'];
const POOL_MODES: readonly PoolMode[] = ['transaction', 'session'];

/** The fallback entry's name, as in PgBouncer. */
export const FALLBACK = '*';

const DATABASE_KEYS = ['dbname', 'user', 'password', 'pool_size', 'min_pool_size', 'pool_mode', 'max_db_connections', 'route', 'query_cache'] as const;
const USER_KEYS = ['pool_mode', 'max_user_connections'] as const;

/** PgBouncer connection-string keys pgmux does not take per entry, and why. */
const NOT_PER_ENTRY: Record<string, string> = {
  host: 'pgmux discovers the primary and replicas among `nodes`; route: replica | primary picks the role',
  port: 'pgmux discovers the primary and replicas among `nodes`; route: replica | primary picks the role',
  auth_user: 'set auth_user globally',
  auth_dbname: 'set auth_dbname globally',
  reserve_pool: 'pgmux has no reserve pool',
  connect_query: 'pgmux runs no connect query',
  client_encoding: 'clients set it in their startup packet',
  datestyle: 'clients set it in their startup packet',
  timezone: 'clients set it in their startup packet',
  application_name: 'clients set it in their startup packet',
};

/**
 * PgBouncer's entry value, `dbname=appdb pool_size=5 password='a b'`: space-separated
 * key=value pairs, values optionally in single (or double) quotes with \ escapes and
 * doubled quotes.
 */
export function parseConnString(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  const n = s.length;
  const space = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
  while (i < n) {
    while (i < n && space(s[i])) i++;
    if (i >= n) break;
    const keyStart = i;
    while (i < n && s[i] !== '=' && !space(s[i])) i++;
    const key = s.slice(keyStart, i).toLowerCase();
    while (i < n && space(s[i])) i++;
    if (key === '' || s[i] !== '=') throw new Invalid(`${JSON.stringify(s)}: expected key=value pairs like "dbname=appdb pool_size=5"`);
    i++;
    while (i < n && space(s[i])) i++;
    let value = '';
    const quote = s[i];
    if (quote === "'" || quote === '"') {
      i++;
      for (;;) {
        if (i >= n) throw new Invalid(`${JSON.stringify(s)}: the value of ${key} has no closing quote`);
        const c = s[i]!;
        if (c === '\\' && i + 1 < n) {
          value += s[i + 1];
          i += 2;
        } else if (c === quote && s[i + 1] === quote) {
          value += c;
          i += 2;
        } else if (c === quote) {
          i++;
          break;
        } else {
          value += c;
          i++;
        }
      }
    } else {
      while (i < n && !space(s[i])) value += s[i++];
    }
    if (key in out) throw new Invalid(`${JSON.stringify(s)}: ${key} is given twice`);
    out[key] = value;
  }
  return out;
}

/** An entry's value: a mapping, PgBouncer's connection string, or nothing (all defaults). */
function entryObject(name: string, v: Raw, what: string): Record<string, unknown> {
  if (v === null || v === undefined) return {};
  if (typeof v === 'string') {
    try {
      return parseConnString(v);
    } catch (err) {
      if (err instanceof Invalid) throw new Invalid(`${what} ${JSON.stringify(name)}: ${err.message}`);
      throw err;
    }
  }
  if (typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  throw new Invalid(`${what} ${JSON.stringify(name)}: ${show(v)} is not a mapping (expected {key: value} or "key=value ...")`);
}

/** A section's raw value: a mapping (YAML), or the same as JSON (PGMUX_DATABASES / PGMUX_USERS). */
function sectionMap(v: Raw, section: string): Array<[string, unknown]> {
  if (v === null || v === undefined) return [];
  if (typeof v === 'string') {
    if (v.trim() === '') return [];
    try {
      v = JSON.parse(v) as unknown;
    } catch {
      throw new Invalid(`${show(v)} is not a mapping (expected ${section} as a YAML mapping, or as a JSON object in the environment)`);
    }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Invalid(`${show(v)} is not a mapping of entry names to settings`);
  return Object.entries(v as Record<string, unknown>);
}

function checkKeys(o: Record<string, unknown>, valid: readonly string[], what: string, name: string): void {
  for (const k of Object.keys(o)) {
    if ((valid as readonly string[]).includes(k)) continue;
    const why = NOT_PER_ENTRY[k.toLowerCase()];
    const valids = `valid keys: ${valid.join(', ')}`;
    throw new Invalid(`${what} ${JSON.stringify(name)}: unknown key ${JSON.stringify(k)} (${why !== undefined ? `${why}; ` : ''}${valids})`);
  }
}

function field<T>(o: Record<string, unknown>, key: string, what: string, name: string, parse: (v: Raw) => T): T | null {
  const v = o[key];
  if (v === undefined || v === null || v === '') return null;
  try {
    return parse(v);
  } catch (err) {
    if (err instanceof Invalid) throw new Invalid(`${what} ${JSON.stringify(name)}: ${key}: ${err.message}`);
    throw err;
  }
}

const text = (what: string) => (v: Raw): string => {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  throw new Invalid(`${show(v)} is not ${what}`);
};

export function parseDatabases(v: Raw): DatabaseEntry[] {
  const out: DatabaseEntry[] = [];
  for (const [name, raw] of sectionMap(v, 'databases')) {
    if (name === '') throw new Invalid('an entry has an empty name');
    const o = entryObject(name, raw, 'database');
    checkKeys(o, DATABASE_KEYS, 'database', name);
    const e: DatabaseEntry = {
      name,
      dbname: field(o, 'dbname', 'database', name, text('a database name')),
      user: field(o, 'user', 'database', name, text('a user name')),
      password: field(o, 'password', 'database', name, text('a password')),
      poolSize: field(o, 'pool_size', 'database', name, (x) => parseInteger(x, 1, 10000)),
      minPoolSize: field(o, 'min_pool_size', 'database', name, (x) => parseInteger(x, 0, 10000)),
      poolMode: field(o, 'pool_mode', 'database', name, (x) => parseEnum(x, POOL_MODES, { statement: 'statement pooling is not offered' })),
      maxDbConnections: field(o, 'max_db_connections', 'database', name, (x) => parseInteger(x, 0, 1_000_000)),
      route: field(o, 'route', 'database', name, (x) => parseEnum(x, DATABASE_ROUTES)) ?? 'any',
    };
    // Set only when given, so entries without it compare equal to those built before the key existed.
    const queryCache = field(o, 'query_cache', 'database', name, parseBoolean);
    if (queryCache !== null) e.queryCache = queryCache;
    if (e.poolSize !== null && e.minPoolSize !== null && e.minPoolSize > e.poolSize) {
      throw new Invalid(`database ${JSON.stringify(name)}: min_pool_size ${e.minPoolSize} is larger than its pool_size ${e.poolSize}`);
    }
    out.push(e);
  }
  return out;
}

export function parseUsers(v: Raw): UserEntry[] {
  const out: UserEntry[] = [];
  for (const [name, raw] of sectionMap(v, 'users')) {
    if (name === '') throw new Invalid('an entry has an empty name');
    const o = entryObject(name, raw, 'user');
    checkKeys(o, USER_KEYS, 'user', name);
    out.push({
      name,
      poolMode: field(o, 'pool_mode', 'user', name, (x) => parseEnum(x, POOL_MODES, { statement: 'statement pooling is not offered' })),
      maxUserConnections: field(o, 'max_user_connections', 'user', name, (x) => parseInteger(x, 0, 1_000_000)),
    });
  }
  return out;
}

/** The section as YAML writes it back (check-config, SHOW CONFIG); passwords masked unless `reveal`. */
export function showDatabases(entries: readonly DatabaseEntry[], reveal: boolean): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const e of entries) {
    const o: Record<string, unknown> = {};
    if (e.dbname !== null) o.dbname = e.dbname;
    if (e.user !== null) o.user = e.user;
    if (e.password !== null) o.password = reveal ? e.password : '********';
    if (e.poolSize !== null) o.pool_size = e.poolSize;
    if (e.minPoolSize !== null) o.min_pool_size = e.minPoolSize;
    if (e.poolMode !== null) o.pool_mode = e.poolMode;
    if (e.maxDbConnections !== null) o.max_db_connections = e.maxDbConnections;
    if (e.route !== 'any') o.route = e.route;
    if (e.queryCache !== undefined) o.query_cache = e.queryCache ? 'on' : 'off';
    out[e.name] = o;
  }
  return out;
}

export function showUsers(entries: readonly UserEntry[]): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const u of entries) {
    const o: Record<string, unknown> = {};
    if (u.poolMode !== null) o.pool_mode = u.poolMode;
    if (u.maxUserConnections !== null) o.max_user_connections = u.maxUserConnections;
    out[u.name] = o;
  }
  return out;
}

// ---- resolution -----------------------------------------------------------------------------

/** What one client's (database, user) resolved to at login; shared by nothing, never changed. */
export interface DatabaseTarget {
  /** The name pools, SHOW DATABASES and PAUSE know: the entry's, or for '*' (and no section) the name asked for. */
  readonly entry: string;
  /** The databases-section entry that matched: its name, or '*' (also when there is no section). */
  readonly section: string;
  /** The database its backends connect to. */
  readonly dbname: string;
  /** The user its backends log in as. */
  readonly backendUser: string;
  /** The entry's password for those logins (only this entry's backends use it); null = the usual credentials. */
  readonly password: string | null;
  readonly poolMode: PoolMode;
  readonly route: DatabaseRoute;
  /** query_cache for this entry's clients: the entry's own, else the global one. */
  readonly queryCache: boolean;
  /**
   * Everything that makes its backends what they are (entry, backend user, database,
   * password): the pool key after the node. A RELOAD that changes one of them gives new
   * clients a new pool; pool_size and the like apply to the running pool instead.
   */
  readonly key: string;
}

/** A session's target before its login resolved one (never used to reach a backend). */
export const UNRESOLVED: DatabaseTarget = Object.freeze({
  entry: '', section: '', dbname: '', backendUser: '', password: null, poolMode: 'transaction', route: 'any', queryCache: false, key: '',
});

const byName = new WeakMap<readonly DatabaseEntry[], Map<string, DatabaseEntry>>();
const usersByName = new WeakMap<readonly UserEntry[], Map<string, UserEntry>>();

function entryOf(entries: readonly DatabaseEntry[], name: string): DatabaseEntry | undefined {
  let m = byName.get(entries);
  if (m === undefined) {
    m = new Map(entries.map((e) => [e.name, e]));
    byName.set(entries, m);
  }
  return m.get(name);
}

function userOf(users: readonly UserEntry[], name: string): UserEntry | undefined {
  if (users.length === 0) return undefined;
  let m = usersByName.get(users);
  if (m === undefined) {
    m = new Map(users.map((u) => [u.name, u]));
    usersByName.set(users, m);
  }
  return m.get(name);
}

/** The section's entry a client asking for `name` gets: its own, else '*'; undefined when refused. No section: null (implicit '*'). */
function matchEntry(cfg: Config, name: string): DatabaseEntry | null | undefined {
  if (cfg.databases.length === 0) return null;
  return entryOf(cfg.databases, name) ?? entryOf(cfg.databases, FALLBACK);
}

/**
 * What a client asking for database `name` as `user` gets, or null when the databases
 * section has no such entry and no '*' (FATAL 3D000). Pool mode: the user's entry, else the
 * database entry's, else pool_mode.
 */
export function resolveDatabase(cfg: Config, name: string, user: string): DatabaseTarget | null {
  const e = matchEntry(cfg, name);
  if (e === undefined) return null;
  const isFallback = e === null || e.name === FALLBACK;
  const dbname = e?.dbname ?? name;
  const backendUser = e?.user ?? user;
  const password = e?.password ?? null;
  const entry = isFallback ? name : e.name;
  return {
    entry,
    section: e?.name ?? FALLBACK,
    dbname,
    backendUser,
    password,
    poolMode: userOf(cfg.users, user)?.poolMode ?? e?.poolMode ?? cfg.poolMode,
    route: e?.route ?? 'any',
    queryCache: e?.queryCache ?? cfg.queryCache,
    key: entry + '\0' + backendUser + '\0' + dbname + '\0' + (password ?? ''),
  };
}

/** The hint of FATAL 3D000: which names the databases section serves. */
export function knownDatabasesHint(cfg: Config): string {
  const names = cfg.databases.map((e) => e.name);
  const shown = names.length > 20 ? `${names.slice(0, 20).join(', ')}, ...` : names.join(', ');
  return `pgmux serves the databases of its databases section: ${shown}; add an entry (or '*') to serve others.`;
}

/**
 * The configuration a pool of entry `section` runs with: the entry's pool_size /
 * min_pool_size over the global ones (same object when it sets neither).
 */
export function poolConfigFor(cfg: Config, section: string): Config {
  const e = cfg.databases.length === 0 ? undefined : entryOf(cfg.databases, section);
  if (e === undefined || (e.poolSize === null && e.minPoolSize === null)) return cfg;
  const poolSize = e.poolSize ?? cfg.poolSize;
  return { ...cfg, poolSize, minPoolSize: Math.min(e.minPoolSize ?? cfg.minPoolSize, poolSize) };
}

/**
 * Backend-connection budgets of a pool, for src/pool/ to enforce: the entry's
 * max_db_connections and the user's max_user_connections over the global ones; 0 = unlimited.
 * `entryName` is a DatabaseTarget's entry (an entry's name, or a name '*' served).
 */
export function limitsFor(cfg: Config, entryName: string, backendUser: string): { maxDb: number; maxUser: number } {
  const e = cfg.databases.length === 0 ? undefined : entryOf(cfg.databases, entryName) ?? entryOf(cfg.databases, FALLBACK);
  return {
    maxDb: e?.maxDbConnections ?? cfg.maxDbConnections,
    maxUser: userOf(cfg.users, backendUser)?.maxUserConnections ?? cfg.maxUserConnections,
  };
}

const cacheAnywhere = new WeakMap<Config, boolean>();

/**
 * query_cache for the clients of section entry `section` (DatabaseTarget.section) under `cfg`
 * as it is now: a RELOAD applies to clients already connected, not only to new ones.
 */
export function queryCacheFor(cfg: Config, section: string): boolean {
  if (cfg.databases.length === 0) return cfg.queryCache;
  return entryOf(cfg.databases, section)?.queryCache ?? cfg.queryCache;
}

/**
 * Whether any entry (or the global setting) has query_cache on: then every write transaction
 * invalidates, whichever entry it came through (two entries may name one database).
 */
export function queryCacheAnywhere(cfg: Config): boolean {
  let v = cacheAnywhere.get(cfg);
  if (v === undefined) {
    v = cfg.queryCache || cfg.databases.some((e) => e.queryCache === true);
    cacheAnywhere.set(cfg, v);
  }
  return v;
}
