import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../src/config/schema.js';
import { configToObject, loadConfig, parseConfigObject, ConfigError } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { limitsFor, parseConnString, poolConfigFor, queryCacheAnywhere, resolveDatabase } from '../../src/config/databases.js';
import { workerConfig } from '../../src/server/workers.js';
import { decideRoute, loginNodeOf, type RouteClass } from '../../src/routing/policy.js';
import { ReadBalancer } from '../../src/routing/balancer.js';
import { syntheticNode, syntheticTopology } from '../support/snapshots.js';
import type { NodeSnapshot } from '../../src/cluster/snapshot.js';

// The databases / users sections: parsing (YAML mapping, PgBouncer's connection string, env
// JSON), resolution at login, per-entry pool sizes and limits, and route: replica | primary
// in the routing policy.

function cfgOf(doc: Record<string, unknown>): Config {
  return { ...DEFAULTS, ...parseConfigObject(doc, 'test.yaml', { baseDir: '/' }) };
}

function parseError(doc: Record<string, unknown>): string {
  try {
    parseConfigObject(doc, 'test.yaml', { baseDir: '/' });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

const SECTION = {
  databases: {
    appdb: {},
    appdb_ro: { dbname: 'appdb', route: 'replica' },
    appdb_rw: { dbname: 'appdb', route: 'primary' },
    reporting: { dbname: 'appdb', user: 'report', password: 's3cret', pool_size: 5, pool_mode: 'session', max_db_connections: 10 },
  },
  users: { batch: { pool_mode: 'session', max_user_connections: 5 } },
};

describe('PgBouncer connection strings', () => {
  it('reads key=value pairs, quoted values with escapes and doubled quotes', () => {
    expect(parseConnString("dbname=appdb  pool_size=5 password='a b\\'c' user=\"x\"\"y\" route = replica")).toEqual({
      dbname: 'appdb', pool_size: '5', password: "a b'c", user: 'x"y', route: 'replica',
    });
    expect(parseConnString('')).toEqual({});
  });

  it('accepts an entry given as a connection string', () => {
    const c = cfgOf({ databases: { appdb_ro: 'dbname=appdb pool_size=5 route=replica' } });
    expect(c.databases).toEqual([
      { name: 'appdb_ro', dbname: 'appdb', user: null, password: null, poolSize: 5, minPoolSize: null, poolMode: null, maxDbConnections: null, route: 'replica' },
    ]);
  });

  it('refuses a malformed string, an unclosed quote and a key given twice', () => {
    expect(parseError({ databases: { a: 'dbname' } })).toMatch(/databases: database "a": .*expected key=value pairs/);
    expect(parseError({ databases: { a: "password='x" } })).toMatch(/no closing quote/);
    expect(parseError({ databases: { a: 'dbname=x dbname=y' } })).toMatch(/dbname is given twice/);
  });
});

describe('databases / users parsing', () => {
  it('refuses unknown keys, naming the valid ones', () => {
    const msg = parseError({ databases: { appdb: { db_name: 'x' } } });
    expect(msg).toMatch(/database "appdb": unknown key "db_name"/);
    expect(msg).toMatch(/valid keys: dbname, user, password, pool_size, min_pool_size, pool_mode, max_db_connections, route/);
    expect(parseError({ users: { bob: { pool_size: 3 } } })).toMatch(/user "bob": unknown key "pool_size" \(valid keys: pool_mode, max_user_connections\)/);
  });

  it('says why PgBouncer keys that are not per entry here are refused', () => {
    expect(parseError({ databases: { appdb: 'host=db1 dbname=appdb' } })).toMatch(/unknown key "host" \(pgmux discovers the primary and replicas among `nodes`/);
  });

  it('refuses bad values with the entry and key named', () => {
    expect(parseError({ databases: { appdb: { route: 'standby' } } })).toMatch(/databases: database "appdb": route: "standby" is not supported \(expected one of any, replica, primary\)/);
    expect(parseError({ databases: { appdb: { pool_size: 0 } } })).toMatch(/database "appdb": pool_size: 0 is out of range/);
    expect(parseError({ databases: { appdb: { pool_mode: 'statement' } } })).toMatch(/pool_mode: "statement" is not supported \(statement pooling is not offered/);
    expect(parseError({ databases: { appdb: { pool_size: 2, min_pool_size: 3 } } })).toMatch(/min_pool_size 3 is larger than its pool_size 2/);
    expect(parseError({ databases: ['appdb'] })).toMatch(/databases: a list is not a mapping/);
    expect(parseError({ databases: { appdb: 5 } })).toMatch(/database "appdb": 5 is not a mapping/);
  });

  it('reads the sections from the environment as JSON', () => {
    const c = loadConfig({}, { PGMUX_DATABASES: '{"appdb_ro": "dbname=appdb route=replica"}', PGMUX_USERS: '{"batch": {"pool_mode": "session"}}' }, { requireNodes: false });
    expect(c.databases.map((e) => [e.name, e.dbname, e.route])).toEqual([['appdb_ro', 'appdb', 'replica']]);
    expect(c.users).toEqual([{ name: 'batch', poolMode: 'session', maxUserConnections: null }]);
    expect(() => loadConfig({}, { PGMUX_DATABASES: 'appdb_ro=dbname=appdb' }, { requireNodes: false })).toThrow(/PGMUX_DATABASES: .*not a mapping \(expected databases as a YAML mapping, or as a JSON object in the environment\)/);
  });

  it('masks entry passwords in check-config / SHOW CONFIG and reads the output back', () => {
    const c = cfgOf(SECTION);
    const shown = configToObject(c);
    expect(shown.databases).toMatchObject({ reporting: { dbname: 'appdb', user: 'report', password: '********', pool_size: 5 }, appdb_ro: { dbname: 'appdb', route: 'replica' } });
    expect(JSON.stringify(shown)).not.toContain('s3cret');
    const revealed = configToObject(c, { reveal: true });
    expect(cfgOf({ databases: revealed.databases, users: revealed.users }).databases).toEqual(c.databases);
    expect(cfgOf({ users: revealed.users }).users).toEqual(c.users);
  });
});

describe('resolveDatabase', () => {
  it('passes every name through without a section (implicit *)', () => {
    const t = resolveDatabase(DEFAULTS, 'whatever', 'alice')!;
    expect(t).toMatchObject({ entry: 'whatever', section: '*', dbname: 'whatever', backendUser: 'alice', password: null, poolMode: 'transaction', route: 'any' });
  });

  it('refuses names a section without * does not have', () => {
    expect(resolveDatabase(cfgOf(SECTION), 'other', 'alice')).toBeNull();
  });

  it("serves other names through '*' unchanged", () => {
    const c = cfgOf({ databases: { ...SECTION.databases, '*': {} } });
    expect(resolveDatabase(c, 'other', 'alice')).toMatchObject({ entry: 'other', section: '*', dbname: 'other', backendUser: 'alice', route: 'any' });
  });

  it('renames, forces the user and scopes the password to its entry', () => {
    const c = cfgOf(SECTION);
    const rep = resolveDatabase(c, 'reporting', 'alice')!;
    expect(rep).toMatchObject({ entry: 'reporting', dbname: 'appdb', backendUser: 'report', password: 's3cret', poolMode: 'session' });
    const plain = resolveDatabase(c, 'appdb', 'alice')!;
    expect(plain).toMatchObject({ dbname: 'appdb', backendUser: 'alice', password: null });
    // Separate pools for separate entries, even on the same database.
    expect(new Set([rep.key, plain.key, resolveDatabase(c, 'appdb_ro', 'alice')!.key]).size).toBe(3);
  });

  it('takes the pool mode from users, then the entry, then pool_mode', () => {
    const c = cfgOf(SECTION);
    expect(resolveDatabase(c, 'appdb', 'batch')!.poolMode).toBe('session');
    expect(resolveDatabase(c, 'appdb', 'alice')!.poolMode).toBe('transaction');
    expect(resolveDatabase(c, 'reporting', 'alice')!.poolMode).toBe('session');
    const userTx = cfgOf({ ...SECTION, users: { alice: { pool_mode: 'transaction' } } });
    expect(resolveDatabase(userTx, 'reporting', 'alice')!.poolMode).toBe('transaction');
  });

  it('gives each entry its own pool_size (split across workers) and limits', () => {
    const c = cfgOf({ ...SECTION, pool_size: 20, workers: 2 });
    expect(poolConfigFor(c, 'reporting').poolSize).toBe(5);
    expect(poolConfigFor(c, 'appdb')).toBe(c);
    expect(poolConfigFor(workerConfig(c), 'reporting').poolSize).toBe(3);
    expect(limitsFor(c, 'reporting', 'report')).toEqual({ maxDb: 10, maxUser: 0 });
    expect(limitsFor(c, 'appdb', 'batch')).toEqual({ maxDb: 0, maxUser: 5 });
    expect(limitsFor({ ...c, maxDbConnections: 7 }, 'appdb', 'x')).toEqual({ maxDb: 7, maxUser: 0 });
  });
});

describe('route: replica | primary in the routing policy', () => {
  const P = (over: Partial<NodeSnapshot> = {}) => syntheticNode(0, { name: 'n0', role: 'primary', weight: 1, ...over });
  const R = (i: number, over: Partial<NodeSnapshot> = {}) => syntheticNode(i, { name: `n${i}`, ...over });
  const WRITE: RouteClass = { target: 'primary', reason: 'INSERT' };
  const READ: RouteClass = { target: 'replica', reason: 'read-only SELECT' };
  const topoOf = (nodes: NodeSnapshot[]) => {
    const i = nodes.findIndex((n) => n.role === 'primary' && n.state !== 'down');
    return syntheticTopology(nodes, i < 0 ? null : i);
  };
  const CFG = { readYourWrites: 'window' as const, readYourWritesWindowMs: 1000, fallbackToPrimary: true, failoverTimeoutMs: 5000 };

  function decide(topoNodes: NodeSnapshot[], only: 'replica' | 'primary', route: RouteClass | null, disabled: string[] = [], attempts = 1) {
    const topology = topoOf(topoNodes);
    const balancer = new ReadBalancer(() => ({ fallbackToPrimary: true }));
    // A write just now: read_your_writes would send reads to the primary.
    return decideRoute({ route, volatile: null, only }, { minLsn: null, lastWriteAt: 99_999, avoidNode: null, attempts }, { topology, disabledNodes: new Set(disabled), paused: false, now: 100_000 }, CFG, balancer);
  }

  it('sends writes, hints and session-mode transactions of a replica-only entry to a replica', () => {
    for (const route of [WRITE, READ, null, { target: 'primary', reason: 'hint /* pgmux:primary */' } as RouteClass]) {
      const d = decide([P(), R(1)], 'replica', route);
      expect(d.kind === 'node' && d.node.name).toBe('n1');
    }
  });

  it('never falls back to the primary (read weight, fallback_to_primary, disabled or lagging replicas)', () => {
    for (const nodes of [[P()], [P(), R(1, { state: 'lagging' })], [P(), R(1, { weight: 0 })]]) {
      const d = decide(nodes, 'replica', READ);
      expect(d.kind).toBe('error');
      expect(d.kind === 'error' && d.error).toBe('noReplicaForEntry');
    }
    expect(decide([P(), R(1)], 'replica', READ, ['n1']).kind).toBe('error');
    // A promoted replica is a primary now: no longer eligible.
    expect(decide([P({ state: 'down' }), R(1, { role: 'primary' })], 'replica', READ).kind).toBe('error');
  });

  it('waits once for a replica before the error, as reads wait for a primary', () => {
    const d = decide([P()], 'replica', READ, [], 0);
    expect(d.kind === 'waitForReplica' && d.timeoutMs).toBe(5000);
    expect(decide([P()], 'replica', READ, [], 1).kind).toBe('error');
  });

  it('sends reads of a primary-only entry to the primary', () => {
    const d = decide([P(), R(1)], 'primary', READ);
    expect(d.kind === 'node' && `${d.node.name} ${d.write}`).toBe('n0 true');
  });

  it('logs a replica-only entry in through a replica only', () => {
    const t = topoOf([P(), R(1)]);
    expect(loginNodeOf(t, new Set())!.name).toBe('n0');
    expect(loginNodeOf(t, new Set(), true)!.name).toBe('n1');
    expect(loginNodeOf(topoOf([P()]), new Set(), true)).toBeNull();
  });
});

describe('query_cache per database entry', () => {
  it('an entry may turn the cache on (or off) against the global setting; writes invalidate once any entry has it', () => {
    const cfg = cfgOf({ nodes: ['db1:5432'], databases: { cached: { dbname: 'app', query_cache: 'on' }, plain: { dbname: 'app' } } });
    expect(cfg.databases.find((e) => e.name === 'plain')!.queryCache).toBeUndefined();
    expect(resolveDatabase(cfg, 'cached', 'u')!.queryCache).toBe(true);
    expect(resolveDatabase(cfg, 'plain', 'u')!.queryCache).toBe(false);
    expect(queryCacheAnywhere(cfg)).toBe(true);
    expect(configToObject(cfg).databases).toMatchObject({ cached: { query_cache: 'on' } });
    const global = cfgOf({ nodes: ['db1:5432'], query_cache: 'on', databases: { off: { query_cache: 'off' }, '*': {} } });
    expect(resolveDatabase(global, 'off', 'u')!.queryCache).toBe(false);
    expect(resolveDatabase(global, 'other', 'u')!.queryCache).toBe(true);
    expect(queryCacheAnywhere(cfgOf({ nodes: ['db1:5432'] }))).toBe(false);
    expect(parseError({ databases: { x: { query_cache: 'maybe' } } })).toMatch(/query_cache/);
  });
});
