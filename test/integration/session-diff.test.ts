// Differential test for session state under transaction pooling (issue item 7).
//
// fast-check generates interleavings of session-state statements from 3-6 clients. Each
// scenario runs twice, one run after the other (advisory locks and NOTIFY are database-wide):
//   1. the reference run: every client has its own direct connection to the primary;
//   2. the test run: every client connects through ONE pgmux (pool_size 2, transaction mode,
//      primary only) shared by the whole property, so state leaking from one scenario into
//      the next is caught too.
// Everything a client observes (each statement's rows or SQLSTATE, SHOW / current_setting,
// its temp relations, advisory locks, cursors, the notifications it received, the advisory
// locks left behind after it disconnects) must be the same in both runs.
//
// Knobs: PGMUX_DIFF_RUNS (default 1000), PGMUX_DIFF_SEED, PGMUX_DIFF_TARGET=direct (the
// "test" run also goes straight to the primary: a sanity check of the harness itself, which
// must never report a difference), PGMUX_DIFF_TIME_LIMIT_MS (whole property incl. shrinking).
//
// Feasibility with 2 backends: steps run strictly one after the other, so a client that
// holds a backend between steps (inside BEGIN, or pinned by a temp table, a session advisory
// lock or a WITH HOLD cursor) would starve a third client once two clients hold one. The
// generator allows at most ONE such holder; a step that would make a second client a holder
// is replaced by the holder releasing (COMMIT/ROLLBACK, DISCARD ALL or disconnect).
//
// Deliberately NOT generated (documented differences by design, not leaks):
// - SQL PREPARE / EXECUTE / DEALLOCATE outside an explicit transaction: pgmux answers 0A000.
//   Inside BEGIN..COMMIT only statements prepared in that same transaction are executed, and
//   the generator deallocates them before the transaction ends (a prepared statement cannot
//   follow its client to the next backend). Names are unique per run so a statement left by
//   an aborted transaction can never collide.
// - LISTEN / UNLISTEN inside an explicit transaction (LISTEN there pins the client by design;
//   UNLISTEN there goes to the pooled backend, not to pgmux's shared listener).
// - pg_try_advisory_lock / pg_advisory_lock by a client that is not the (single) holder: pgmux
//   pins on them by design (even when the try fails). Other clients probe ownership with
//   pg_try_advisory_xact_lock, which does not pin.
// - Custom GUC placeholders: PostgreSQL keeps a placeholder ('' after RESET) for the rest of
//   the session once it was ever set, which no pooler can undo (not even DISCARD ALL). So a
//   custom setting is observed as coalesce(current_setting(name, true), ''): unset and '' are
//   the same observation; every real value must match.
// - Multi-statement simple queries (their implicit-transaction rollback rules would make the
//   notification bookkeeping below much harder) and COPY.
//
// Extended protocol: node-postgres 8 sends Parse(unnamed)/Bind/Describe(portal)/Execute/Sync
// for `{ text, queryMode: 'extended' }` even without parameters (pg/lib/query.js:
// requiresPreparation() and prepare()/_getRows()); with queryMode unset and values [] it
// would use the simple protocol, so queryMode is what the generator uses.

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import pg from 'pg';
import { clusterInfo, pgClient, primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

// ---------------------------------------------------------------------------------------
// Scenarios

type Proto = 'simple' | 'ext';

type Tag = 'listen' | 'unlisten' | 'unlistenAll' | 'discard' | 'notify' | 'commit' | 'rollback';

interface SqlStep {
  kind: 'sql';
  c: number;
  /** SQL with placeholders {k0} {k1} (advisory keys) and {ps:N} (prepared names), filled per run. */
  sql: string;
  proto: Proto;
  tag?: Tag;
  ch?: string;
  payload?: string;
  /** The client is inside an explicit transaction when this statement is sent. */
  inTx: boolean;
}
interface ConnectStep {
  kind: 'connect';
  c: number;
}
interface DisconnectStep {
  kind: 'disconnect';
  c: number;
  /** The session used session advisory locks: afterwards, count the locks left on our keys. */
  locks: boolean;
}
interface BarrierStep {
  kind: 'barrier';
  /** Clients (connected, not inside a transaction) whose notifications are compared. */
  clients: number[];
  final: boolean;
  /** Some client LISTENed in this scenario. */
  listened: boolean;
}
type Step = SqlStep | ConnectStep | DisconnectStep | BarrierStep;

interface Scenario {
  clients: number;
  steps: Step[];
}

const COMMENTS = ['', '/* app=shop,route=/cart */ ', '-- traceparent=00-abc\n'];

/** Built-in and custom settings: SET value (SQL), set_config value (text), observation. */
const ALL_PARAMS: { set: string; show: string | null; cfg: string; vals: string[]; cfgVals: string[] }[] = [
  { set: 'search_path', show: 'search_path', cfg: 'search_path', vals: ['public', 'pg_catalog, public', '"$user", public'], cfgVals: ['pg_catalog'] },
  { set: 'statement_timeout', show: 'statement_timeout', cfg: 'statement_timeout', vals: ["'30s'", '0', "'1min'"], cfgVals: ['45s'] },
  { set: 'lock_timeout', show: 'lock_timeout', cfg: 'lock_timeout', vals: ["'10s'", '0'], cfgVals: ['20s'] },
  { set: 'work_mem', show: 'work_mem', cfg: 'work_mem', vals: ["'64kB'", "'4MB'"], cfgVals: ['2MB'] },
  { set: 'TimeZone', show: 'TimeZone', cfg: 'TimeZone', vals: ["'UTC'", "'Asia/Tokyo'"], cfgVals: ['America/New_York'] },
  { set: 'DateStyle', show: 'DateStyle', cfg: 'DateStyle', vals: ["'ISO, DMY'", "'SQL, MDY'"], cfgVals: ['German'] },
  { set: 'application_name', show: 'application_name', cfg: 'application_name', vals: ["'app_a'", "'app_b'"], cfgVals: ['app_c'] },
  { set: 'myapp.tenant_id', show: null, cfg: 'myapp.tenant_id', vals: ["'42'", "'7'"], cfgVals: ['7', '13'] },
  { set: '"MyApp".x', show: null, cfg: 'MyApp.x', vals: ["'on'", "'off'"], cfgVals: ['maybe'] },
];

const CHANNELS = ['jobs', '"Quoted"'];
/** The channel name as PostgreSQL stores it (and pg_notify() takes it). */
const chName = (ch: string): string => (ch.startsWith('"') ? ch.slice(1, -1) : ch);

const OBSERVE_ALL =
  "SELECT current_setting('search_path') AS search_path, current_setting('statement_timeout') AS statement_timeout, " +
  "current_setting('lock_timeout') AS lock_timeout, current_setting('work_mem') AS work_mem, current_setting('TimeZone') AS tz, " +
  "current_setting('DateStyle') AS datestyle, current_setting('application_name') AS app, " +
  "coalesce(current_setting('myapp.tenant_id', true), '') AS tenant, coalesce(current_setting('MyApp.x', true), '') AS myapp_x, " +
  '(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_rels, ' +
  "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS my_advisory_locks, " +
  '(SELECT count(*) FROM pg_cursors) AS cursors';

const ALL_OPS = [
  'observe', 'observe', 'show', 'showCustom',
  'set', 'set', 'set', 'setLocal', 'reset', 'setDefault', 'resetAll', 'setConfig', 'setConfig', 'setConfigLocal',
  'begin', 'begin', 'end', 'end',
  'createTemp', 'insertTemp', 'countTemp',
  'lock', 'unlock', 'tryLock', 'probe', 'probe',
  'declare', 'fetch', 'closeCursor',
  'listen', 'listen', 'unlisten', 'notify', 'notify', 'notify',
  'discard', 'prepare', 'execute', 'deallocate', 'error', 'disconnect',
] as const;
type Op = (typeof ALL_OPS)[number];
/**
 * PGMUX_DIFF_EXCLUDE=op,op,...: leave ops out (e.g. to look past one known bug while fixing
 * another); "custom" leaves out the custom GUCs. By hand only: npm test runs everything.
 */
const EXCLUDE = new Set((process.env.PGMUX_DIFF_EXCLUDE ?? '').split(',').filter(Boolean));
const OPS = ALL_OPS.filter((op) => !EXCLUDE.has(op));
const PARAMS = ALL_PARAMS.filter((p) => !(EXCLUDE.has('custom') && p.show === null));

/** Ops after which the client holds its backend (pgmux pins, or the transaction is open). */
const HOLDING: ReadonlySet<Op> = new Set<Op>(['begin', 'createTemp', 'lock', 'tryLock', 'declare', 'prepare', 'execute']);

interface RawStep {
  c: number;
  op: number;
  a: number;
  b: number;
  ext: boolean;
  cm: number;
}

interface ClientModel {
  connected: boolean;
  inTx: boolean;
  /** Ran a statement that pins (temp table, session advisory lock, WITH HOLD) since connect / DISCARD ALL. */
  pinned: boolean;
  usedLocks: boolean;
  /** Prepared in the current transaction and not yet deallocated. */
  prepared: number[];
}

/** Builds a feasible scenario; the model only decides what to send, never what comes back. */
export class ScenarioBuilder {
  readonly steps: Step[] = [];
  private readonly m: ClientModel[];
  private anyListen = false;
  private psCounter = 0;
  private proto: Proto = 'simple';
  private comment = '';

  constructor(readonly clients: number) {
    this.m = Array.from({ length: clients }, () => ({ connected: false, inTx: false, pinned: false, usedLocks: false, prepared: [] }));
    for (let c = 0; c < clients; c++) this.connect(c);
  }

  /** Protocol and leading comment for the following statements. */
  style(proto: Proto, comment = 0): this {
    this.proto = proto;
    this.comment = COMMENTS[comment]!;
    return this;
  }

  connect(c: number): this {
    this.m[c] = { connected: true, inTx: false, pinned: false, usedLocks: false, prepared: [] };
    this.steps.push({ kind: 'connect', c });
    return this;
  }

  sql(c: number, sql: string, extra: { tag?: Tag; ch?: string; payload?: string } = {}): this {
    const m = this.m[c]!;
    if (!m.connected) this.connect(c);
    this.steps.push({ kind: 'sql', c, sql: this.comment + sql, proto: this.proto, inTx: m.inTx, ...extra });
    return this;
  }

  barrier(final = false): this {
    if (!this.anyListen && !final) return this;
    const clients = this.m.flatMap((m, c) => (m.connected && !m.inTx ? [c] : []));
    if (clients.length > 0) this.steps.push({ kind: 'barrier', clients, final, listened: this.anyListen });
    return this;
  }

  observe(c: number): this {
    return this.sql(c, OBSERVE_ALL);
  }

  begin(c: number): this {
    this.sql(c, 'BEGIN');
    this.m[c]!.inTx = true;
    return this;
  }

  /** COMMIT or ROLLBACK, deallocating what this transaction prepared first. */
  end(c: number, commit: boolean): this {
    const m = this.m[c]!;
    for (const n of m.prepared) this.sql(c, `DEALLOCATE {ps:${n}}`);
    m.prepared = [];
    this.sql(c, commit ? 'COMMIT' : 'ROLLBACK', { tag: commit ? 'commit' : 'rollback' });
    m.inTx = false;
    return this;
  }

  discard(c: number): this {
    const m = this.m[c]!;
    if (!m.inTx) this.barrier();
    this.sql(c, 'DISCARD ALL', { tag: 'discard' });
    // Inside a transaction DISCARD ALL fails (25001) and changes nothing.
    if (!m.inTx) m.pinned = false;
    return this;
  }

  disconnect(c: number): this {
    const m = this.m[c]!;
    if (!m.connected) return this;
    this.barrier();
    this.steps.push({ kind: 'disconnect', c, locks: m.usedLocks });
    this.m[c] = { connected: false, inTx: false, pinned: false, usedLocks: false, prepared: [] };
    return this;
  }

  pin(c: number, sql: string): this {
    this.sql(c, sql);
    this.m[c]!.pinned = true;
    return this;
  }

  listen(c: number, ch: string): this {
    this.barrier();
    this.anyListen = true;
    return this.sql(c, `LISTEN ${ch}`, { tag: 'listen', ch: chName(ch) });
  }

  unlisten(c: number, ch: string | null): this {
    this.barrier();
    return ch === null ? this.sql(c, 'UNLISTEN *', { tag: 'unlistenAll' }) : this.sql(c, `UNLISTEN ${ch}`, { tag: 'unlisten', ch: chName(ch) });
  }

  notify(c: number, ch: string, viaFunction: boolean): this {
    const payload = `p${this.steps.length}`;
    const sql = viaFunction ? `SELECT pg_notify('${chName(ch)}', '${payload}')` : `NOTIFY ${ch}, '${payload}'`;
    return this.sql(c, sql, { tag: 'notify', ch: chName(ch), payload });
  }

  lock(c: number, sql: string): this {
    this.m[c]!.usedLocks = true;
    return this.pin(c, sql);
  }

  /** The client holding a backend between steps, if any. */
  holder(): number | null {
    const h = this.m.findIndex((m) => m.connected && (m.inTx || m.pinned));
    return h < 0 ? null : h;
  }

  /** Applies one generated step, adapted so that the scenario stays feasible. */
  apply(r: RawStep): void {
    const c = r.c % this.clients;
    const op = OPS[r.op % OPS.length]!;
    this.style(r.ext ? 'ext' : 'simple', r.cm % COMMENTS.length);
    const m = this.m[c]!;
    if (!m.connected) {
      this.connect(c);
      if (op === 'disconnect') return;
    }
    const h = this.holder();
    if (HOLDING.has(op) && h !== null && h !== c) {
      this.release(h, r.b);
      return;
    }
    const p = PARAMS[r.a % PARAMS.length]!;
    const v = p.vals[r.b % p.vals.length]!;
    const key = `{k${r.a % 2}}`;
    const ch = CHANNELS[r.b % CHANNELS.length]!;
    switch (op) {
      case 'observe':
        this.observe(c);
        return;
      case 'show':
        if (p.show !== null) this.sql(c, `SHOW ${p.show}`);
        else this.sql(c, `SELECT coalesce(current_setting('${p.cfg}', true), '') AS v`);
        return;
      case 'showCustom':
        this.sql(c, `SELECT coalesce(current_setting('${r.a % 2 === 0 ? 'myapp.tenant_id' : 'MyApp.x'}', true), '') AS v`); // read-only
        return;
      case 'set':
        this.sql(c, `SET ${p.set} ${r.b % 3 === 0 ? 'TO' : '='} ${v}`);
        return;
      case 'setLocal':
        this.sql(c, `SET LOCAL ${p.set} = ${v}`);
        return;
      case 'reset':
        this.sql(c, `RESET ${p.set}`);
        return;
      case 'setDefault':
        this.sql(c, `SET ${p.set} TO DEFAULT`);
        return;
      case 'resetAll':
        this.sql(c, 'RESET ALL');
        return;
      case 'setConfig':
      case 'setConfigLocal':
        this.sql(c, `SELECT set_config('${p.cfg}', '${p.cfgVals[r.b % p.cfgVals.length]}', ${op === 'setConfigLocal'}) AS v`);
        return;
      case 'begin':
        this.begin(c);
        return;
      case 'end':
        if (m.inTx) this.end(c, r.b % 3 !== 0);
        else this.observe(c);
        return;
      case 'createTemp':
        this.pin(c, r.b % 2 === 0 ? 'CREATE TEMP TABLE tmp_t (v int)' : 'CREATE TEMPORARY TABLE tmp_t (v int)');
        return;
      case 'insertTemp':
        this.sql(c, 'INSERT INTO tmp_t VALUES (1)');
        return;
      case 'countTemp':
        this.sql(c, 'SELECT count(*) AS n FROM tmp_t');
        return;
      case 'lock':
        this.lock(c, `SELECT pg_advisory_lock(${key})`);
        return;
      case 'tryLock':
        this.lock(c, `SELECT pg_try_advisory_lock(${key}) AS got`);
        return;
      case 'unlock':
        this.sql(c, `SELECT pg_advisory_unlock(${key}) AS released`);
        return;
      case 'probe':
        // Transaction-scoped: released at the end of the probing statement (outside BEGIN).
        this.sql(c, `SELECT pg_try_advisory_xact_lock(${key}) AS free`);
        return;
      case 'declare':
        if (!m.inTx) this.begin(c);
        else this.pin(c, 'DECLARE cur_a CURSOR WITH HOLD FOR SELECT generate_series(1, 5) AS n');
        return;
      case 'fetch':
        this.sql(c, 'FETCH 2 FROM cur_a');
        return;
      case 'closeCursor':
        this.sql(c, 'CLOSE cur_a');
        return;
      case 'listen':
        if (m.inTx) this.notify(c, ch, r.a % 2 === 1);
        else this.listen(c, ch);
        return;
      case 'unlisten':
        if (m.inTx) this.notify(c, ch, r.a % 2 === 1);
        else this.unlisten(c, r.a % 3 === 0 ? null : ch);
        return;
      case 'notify':
        this.notify(c, ch, r.a % 2 === 1);
        return;
      case 'discard':
        this.discard(c);
        return;
      case 'prepare':
        if (!m.inTx) this.begin(c);
        else {
          const n = this.psCounter++;
          m.prepared.push(n);
          this.sql(c, `PREPARE {ps:${n}} AS SELECT $1::int + 1 AS v`);
        }
        return;
      case 'execute':
        if (!m.inTx) this.begin(c);
        else if (m.prepared.length === 0) this.apply({ ...r, op: Math.max(0, OPS.indexOf('prepare')) });
        else this.sql(c, `EXECUTE {ps:${m.prepared[r.a % m.prepared.length]}}(41)`);
        return;
      case 'deallocate':
        if (m.inTx && m.prepared.length > 0) this.sql(c, `DEALLOCATE {ps:${m.prepared.splice(r.a % m.prepared.length, 1)[0]}}`);
        else this.observe(c);
        return;
      case 'error':
        this.sql(c, 'SELECT 1/0');
        return;
      case 'disconnect':
        this.disconnect(c);
        return;
    }
  }

  /** The holder lets go of its backend (or moves one step closer to it). */
  private release(h: number, b: number): void {
    const m = this.m[h]!;
    if (m.inTx) this.end(h, b % 3 !== 0);
    else if (b % 2 === 0) this.discard(h);
    else this.disconnect(h);
  }

  /** Last observations of every client, then all notifications, then everyone leaves. */
  finish(): Scenario {
    this.style('simple');
    for (let c = 0; c < this.clients; c++) if (this.m[c]!.connected) this.observe(c);
    this.barrier(true);
    return { clients: this.clients, steps: this.steps };
  }
}

function render(sc: Scenario, upTo = sc.steps.length - 1): string {
  const lines: string[] = [];
  sc.steps.slice(0, upTo + 1).forEach((s, i) => {
    const n = `#${String(i).padStart(3)}`;
    if (s.kind === 'sql') lines.push(`${n} c${s.c}${s.proto === 'ext' ? ' [extended]' : ''}: ${s.sql.replace(OBSERVE_ALL, '<observe all>').replace(/\n/g, '\\n')}`);
    else if (s.kind === 'connect') lines.push(`${n} c${s.c}: <connect>`);
    else if (s.kind === 'disconnect') lines.push(`${n} c${s.c}: <disconnect>${s.locks ? ' (then count advisory locks left)' : ''}`);
    else lines.push(`${n} <notifications so far of c${s.clients.join(', c')}${s.final ? ', final' : ''}>`);
  });
  return lines.join('\n');
}

const rawStep: fc.Arbitrary<RawStep> = fc.record({
  c: fc.nat(5),
  op: fc.nat(OPS.length - 1),
  a: fc.nat(11),
  b: fc.nat(11),
  ext: fc.boolean(),
  cm: fc.nat(COMMENTS.length - 1),
});

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .tuple(fc.integer({ min: 3, max: 6 }), fc.array(rawStep, { minLength: 10, maxLength: 25 }))
  .map(([n, raws]) => {
    const b = new ScenarioBuilder(n);
    for (const r of raws) b.apply(r);
    const sc = b.finish();
    Object.defineProperty(sc, fc.toStringMethod, { value: () => `\n${render(sc)}\n`, enumerable: false });
    return sc;
  });

// ---------------------------------------------------------------------------------------
// Running a scenario

interface Obs {
  step: number;
  c: number;
  v: string;
}

interface Conn {
  client: pg.Client;
  pid: number;
  /** channel:payload of every notification received. */
  received: string[];
  /** Reference run only: what PostgreSQL must deliver, from what the statements returned. */
  expected: string[];
  listening: Set<string>;
  pending: { ch: string; payload: string }[];
}

class HarnessError extends Error {}

const STEP_TIMEOUT_MS = 8000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sorted = (xs: string[]) => JSON.stringify([...xs].sort());

/**
 * Reads until `settled` holds or `timeoutMs` passes, and returns the last value read either
 * way: in the pgmux run a value that never settles is a difference for the diff to report.
 */
async function settle<T>(read: () => T | Promise<T>, settled: (v: T) => boolean, timeoutMs: number, intervalMs: number): Promise<{ value: T; ok: boolean }> {
  let value!: T;
  const ok = await vi
    .waitFor(
      async () => {
        value = await read();
        if (!settled(value)) throw new Error('not settled');
      },
      { timeout: timeoutMs, interval: intervalMs },
    )
    .then(
      () => true,
      () => false,
    );
  return { value, ok };
}

class Timeout extends Error {}
function timed<T>(p: Promise<T>, ms = STEP_TIMEOUT_MS): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Timeout()), ms)))]).finally(() => clearTimeout(t));
}

let nonceCounter = 0;
const PROFILE = new Map<string, number>();

interface RunOptions {
  port: number;
  /** The reference run's observations: the test run waits (bounded) for settling values to match. */
  ref?: Obs[];
  nonce: number;
}

function keyOf(nonce: number, k: number): number {
  return 7_000_000 + nonce * 2 + k;
}

function fill(sql: string, nonce: number): string {
  return sql.replace(/\{k(\d)\}/g, (_, k) => String(keyOf(nonce, Number(k)))).replace(/\{ps:(\d+)\}/g, (_, n) => `ps_${nonce}_${n}`);
}

async function runScenario(sc: Scenario, control: pg.Client, o: RunOptions): Promise<Obs[]> {
  const obs: Obs[] = [];
  const conns: (Conn | null)[] = Array.from({ length: sc.clients }, () => null);
  const isRef = o.ref === undefined;
  let opened: pg.Client[] = [];
  const keys = [keyOf(o.nonce, 0), keyOf(o.nonce, 1)];
  const deliver = (ch: string, payload: string) => {
    for (const c of conns) if (c?.listening.has(ch)) c.expected.push(`${ch}:${payload}`);
  };
  try {
    for (let i = 0; i < sc.steps.length; i++) {
      const s = sc.steps[i]!;
      const t0 = performance.now();
      try {
        if (s.kind === 'connect') {
          // The opening connects of a scenario are made all at once (fresh sessions either way).
          if (i === 0) {
            const first = sc.steps.findIndex((x) => x.kind !== 'connect');
            const opening = sc.steps.slice(0, first < 0 ? sc.steps.length : first) as ConnectStep[];
            opened = await timed(Promise.all(opening.map(() => pgClient(o.port))));
          }
          const client = opened.shift() ?? (await timed(pgClient(o.port)));
          const conn: Conn = { client, pid: (client as unknown as { processID: number }).processID, received: [], expected: [], listening: new Set(), pending: [] };
          client.on('error', () => {});
          client.on('notification', (n) => conn.received.push(`${n.channel}:${n.payload ?? ''}`));
          conns[s.c] = conn;
        } else if (s.kind === 'sql') {
          const conn = conns[s.c]!;
          const text = fill(s.sql, o.nonce);
          let v: string;
          let ok = false;
          let command = '';
          try {
            const r: pg.QueryResult = await timed(
              s.proto === 'ext' ? conn.client.query({ text, queryMode: 'extended' } as pg.QueryConfig) : conn.client.query(text),
            );
            command = r.command;
            ok = true;
            v = `${r.command} ${JSON.stringify(r.rows)}`;
          } catch (err) {
            if (err instanceof Timeout) throw err;
            v = `ERROR ${(err as { code?: string }).code ?? (err as Error).message}`;
            // PostgreSQL sends the ErrorResponse before it aborts the transaction (which frees
            // its locks); node-postgres reports the error at once. One more round trip on this
            // connection (an empty query changes nothing, even in an aborted transaction) waits
            // for the abort, so the next step of another client sees the same locks both ways.
            await timed(conn.client.query('')).catch((e) => {
              if (e instanceof Timeout) throw e;
            });
          }
          obs.push({ step: i, c: s.c, v });
          // What PostgreSQL will deliver (only the reference run needs it; kept in both).
          if (ok) {
            if (s.tag === 'listen') conn.listening.add(s.ch!);
            else if (s.tag === 'unlisten') conn.listening.delete(s.ch!);
            else if (s.tag === 'unlistenAll' || s.tag === 'discard') conn.listening.clear();
            else if (s.tag === 'notify') {
              if (s.inTx) conn.pending.push({ ch: s.ch!, payload: s.payload! });
              else deliver(s.ch!, s.payload!);
            }
          }
          if (s.tag === 'commit' || s.tag === 'rollback') {
            const p = conn.pending;
            conn.pending = [];
            if (ok && command === 'COMMIT') for (const n of p) deliver(n.ch, n.payload);
          } else if (!ok && s.inTx) {
            // nothing: the transaction is aborted; its NOTIFYs go with it at COMMIT (-> ROLLBACK)
          }
        } else if (s.kind === 'disconnect') {
          const conn = conns[s.c]!;
          conns[s.c] = null;
          await timed(conn.client.end());
          if (s.locks) {
            const count = async () =>
              `advisory locks left on this scenario's keys after disconnect: ${
                (await control.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = ANY($1)", [keys])).rows[0].n
              }`;
            let v: string;
            if (isRef) {
              // The backend releases its locks when it exits, shortly after the socket closes.
              const gone = await settle(async () => (await control.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [conn.pid])).rowCount, (n) => n === 0, 5000, 2);
              if (!gone.ok) throw new HarnessError(`direct backend ${conn.pid} did not exit`);
              v = await count();
            } else {
              const want = o.ref![obs.length]?.v;
              v = (await settle(count, (x) => x === want, 1000, 5)).value;
            }
            obs.push({ step: i, c: s.c, v });
          }
        } else {
          // Notifications are asynchronous: wait (bounded) until they settle, then compare.
          const snap = () => s.clients.map((c) => `notifications received: ${sorted(conns[c]!.received)}`);
          let vals: string[];
          if (isRef) {
            const delivered = await settle(() => s.clients.every((c) => sorted(conns[c]!.received) === sorted(conns[c]!.expected)), (all) => all, 3000, 2);
            if (!delivered.ok) {
              throw new HarnessError(
                `reference run: notifications ${s.clients.map((c) => `c${c} got ${sorted(conns[c]!.received)} expected ${sorted(conns[c]!.expected)}`).join('; ')}`,
              );
            }
            vals = snap();
          } else {
            const want = s.clients.map((_, j) => o.ref![obs.length + j]?.v);
            vals = (await settle(snap, (got) => got.every((v, j) => v === want[j]), 1000, 5)).value;
            if (s.final && s.listened && vals.every((v, j) => v === want[j])) {
              // Nothing extra may arrive afterwards either: a deliberate pause.
              await sleep(20);
              vals = snap();
            }
          }
          s.clients.forEach((c, j) => obs.push({ step: i, c, v: vals[j]! }));
        }
      } catch (err) {
        if (err instanceof Timeout) {
          obs.push({ step: i, c: 'c' in s ? s.c : -1, v: `TIMEOUT after ${STEP_TIMEOUT_MS} ms` });
          return obs;
        }
        throw err;
      } finally {
        const k = `${isRef ? 'ref' : 'test'}:${s.kind}`;
        PROFILE.set(k, (PROFILE.get(k) ?? 0) + performance.now() - t0);
      }
    }
    return obs;
  } finally {
    // Nobody stays connected; anything stuck (e.g. on a leaked advisory lock) is cancelled.
    await control.query(
      "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    );
    await Promise.all(
      conns.map(async (c) => {
        if (c === null) return;
        try {
          await timed(c.client.end(), 2000);
        } catch {
          (c.client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        }
      }),
    );
  }
}

/** First difference between the reference observations and the test run's, or null. */
function firstDifference(sc: Scenario, ref: Obs[], got: Obs[], nonce: number): string | null {
  const n = Math.max(ref.length, got.length);
  for (let i = 0; i < n; i++) {
    const r = ref[i];
    const g = got[i];
    if (r?.v === g?.v && r?.step === g?.step) continue;
    const at = (r ?? g)!;
    const step = sc.steps[at.step]!;
    const what = step.kind !== 'sql' ? `<${step.kind}>` : fill(step.sql.replace(OBSERVE_ALL, '<observe all>'), nonce).replace(/\n/g, '\\n');
    return [
      `step #${at.step}, client c${at.c}: ${what}`,
      `  direct: ${r?.v ?? '(no observation)'}`,
      `  pgmux:  ${g?.v ?? '(no observation)'}`,
      'steps (SQL per client, in order; {k0},{k1} = advisory keys, {ps:N} = prepared names):',
      render(sc, at.step),
    ].join('\n');
  }
  return null;
}

// ---------------------------------------------------------------------------------------

const RUNS = Number(process.env.PGMUX_DIFF_RUNS ?? 1000);
const SEED = process.env.PGMUX_DIFF_SEED === undefined ? undefined : Number(process.env.PGMUX_DIFF_SEED);
/** fast-check's replay path (printed with the seed on failure). */
const PATH = process.env.PGMUX_DIFF_PATH;
const DIRECT_ONLY = process.env.PGMUX_DIFF_TARGET === 'direct';
// A bound for a run gone wrong, far above the 2-4 minutes 1,000 scenarios take here: all of
// them must run (checked below), a slow machine is not a reason to check fewer.
const TIME_LIMIT_MS = Number(process.env.PGMUX_DIFF_TIME_LIMIT_MS ?? (RUNS > 1000 ? 24 * 3600_000 : 20 * 60_000));

describe('session state through pgmux = session state on a direct connection (differential)', () => {
  let proxy: TestProxy | null = null;
  /** pgmux close() calls that had not finished after 1 s (reported; not what this test checks). */
  let closeTimeouts = 0;
  let control: pg.Client;

  const startDiffProxy = () =>
    startProxy({
      poolSize: 2,
      poolMode: 'transaction',
      nodes: [{ host: clusterInfo().nodes[0]!.host, port: primaryPort(), weight: 1 }],
      // A starved pool answers with an error (seen as a difference) instead of hanging.
      queryWaitTimeoutMs: 4000,
      shutdownTimeoutMs: 1000,
    });

  beforeAll(async () => {
    control = await pgClient(primaryPort());
    proxy = await startDiffProxy();
  });
  afterAll(async () => {
    await proxy?.close();
    await control?.end();
  });

  /** Stops the shared pgmux and starts a fresh one (nothing left from earlier scenarios). */
  async function restartProxy(): Promise<void> {
    const closing = proxy!.close().then(() => true);
    if (!(await Promise.race([closing, sleep(1000).then(() => false)]))) closeTimeouts++;
    // Whatever the old pgmux still holds on the primary goes too (no client of ours is
    // connected now, so every other session of database app is a pgmux backend or listener).
    await control.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid()");
    proxy = await startDiffProxy();
  }

  /** Runs one scenario both ways; the difference (readable) or null. */
  async function diff(sc: Scenario): Promise<string | null> {
    const nonce = ++nonceCounter;
    const ref = await runScenario(sc, control, { port: primaryPort(), nonce });
    const got = await runScenario(sc, control, { port: DIRECT_ONLY ? primaryPort() : proxy!.port, ref, nonce });
    return firstDifference(sc, ref, got, nonce);
  }

  async function expectSame(b: ScenarioBuilder): Promise<void> {
    // Each example on a fresh pgmux: its failure must not depend on what ran before.
    if (!DIRECT_ONLY) await restartProxy();
    const d = await diff(b.finish());
    if (d !== null) expect.fail(`pgmux differs from a direct connection:\n${d}`);
  }

  it(`${RUNS} random scenarios: every client sees what it would see on its own connection${DIRECT_ONLY ? ' (direct-vs-direct sanity run)' : ''}`, async () => {
    const t0 = Date.now();
    let n = 0;
    // Until the first failure all scenarios share one pgmux, so state leaking from one
    // scenario into a later one is caught too. After it, fast-check shrinks: every candidate
    // then runs on a fresh pgmux, or state left by an earlier (passing) candidate would make
    // the "minimal" counterexample meaningless.
    let shrinking = false;
    let previous: Scenario | null = null;
    await fc.assert(
      fc.asyncProperty(scenarioArb, async (sc) => {
        n++;
        if (shrinking && !DIRECT_ONLY) await restartProxy();
        const d = await diff(sc);
        const before = previous;
        previous = sc;
        if (d === null) return;
        if (shrinking || DIRECT_ONLY) throw new Error(`pgmux differs from a direct connection:\n${d}`);
        shrinking = true;
        await restartProxy();
        const fresh = await diff(sc);
        if (fresh !== null) throw new Error(`pgmux differs from a direct connection (also on a fresh pgmux):\n${fresh}`);
        throw new Error(
          'pgmux differs from a direct connection, but only after earlier scenarios ran on the same pgmux ' +
            `(state leaked between clients of different scenarios):\n${d}\nthe scenario that ran just before on that pgmux:\n${before ? render(before) : '(none)'}`,
        );
      }),
      { numRuns: RUNS, seed: SEED, path: PATH, interruptAfterTimeLimit: TIME_LIMIT_MS, markInterruptAsFailure: false },
    );
    if (process.env.PGMUX_DIFF_PROFILE) console.log([...PROFILE].map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`).join('\n'));
    if (closeTimeouts > 0) console.log(`[session-diff] pgmux close() took over 1 s ${closeTimeouts} time(s)`);
    console.log(`[session-diff] ${n} scenarios in ${((Date.now() - t0) / 1000).toFixed(1)} s${DIRECT_ONLY ? ' (direct vs direct)' : ''}`);
    if (PATH === undefined) expect(n, 'scenarios run before the time limit').toBeGreaterThanOrEqual(RUNS);
  }, 3 * 3600_000);

  // ---- fixed examples of the known leaks (readable failures) -----------------------------

  it('a custom GUC follows its client and does not leak', async () => {
    const b = new ScenarioBuilder(3);
    b.sql(0, "SET myapp.tenant_id = '42'");
    for (let k = 0; k < 3; k++) b.observe(1).observe(2).observe(0);
    await expectSame(b);
  });

  it('set_config(..., false) follows its client and does not leak', async () => {
    const b = new ScenarioBuilder(3);
    b.sql(0, "SELECT set_config('myapp.tenant_id', '7', false)").sql(0, "SELECT set_config('search_path', 'pg_catalog', false)");
    for (let k = 0; k < 3; k++) b.observe(1).observe(2).observe(0);
    await expectSame(b);
  });

  it('a SET after a leading /* comment */ or -- comment is tracked', async () => {
    const b = new ScenarioBuilder(3);
    b.style('simple', 1).sql(0, 'SET search_path = pg_catalog, public');
    b.style('simple', 2).sql(1, "SET statement_timeout = '1min'");
    b.style('simple');
    for (let k = 0; k < 3; k++) b.observe(2).observe(0).observe(1);
    await expectSame(b);
  });

  it('SET through the extended protocol is tracked', async () => {
    const b = new ScenarioBuilder(3);
    b.style('ext').sql(0, "SET lock_timeout = '10s'").sql(0, "SET TimeZone = 'Asia/Tokyo'");
    b.style('simple');
    for (let k = 0; k < 3; k++) b.observe(1).observe(2).observe(0);
    await expectSame(b);
  });

  it('LISTEN after a leading comment hears notifications', async () => {
    const b = new ScenarioBuilder(3);
    b.style('simple', 1).listen(0, 'jobs');
    b.style('simple').notify(1, 'jobs', false).notify(2, 'jobs', true);
    await expectSame(b);
  });

  it('LISTEN through the extended protocol hears notifications', async () => {
    const b = new ScenarioBuilder(3);
    b.style('ext').listen(0, '"Quoted"');
    b.style('simple').notify(1, '"Quoted"', false).observe(2).notify(2, '"Quoted"', true);
    await expectSame(b);
  });

  it('DISCARD ALL ends the LISTENs of its client', async () => {
    const b = new ScenarioBuilder(3);
    b.listen(0, 'jobs').notify(1, 'jobs', false).discard(0).notify(2, 'jobs', false);
    await expectSame(b);
  });

  it('a temp table of a client that left is gone for the next clients', async () => {
    const b = new ScenarioBuilder(4);
    b.pin(0, 'CREATE TEMP TABLE tmp_t (v int)').sql(0, 'INSERT INTO tmp_t VALUES (1)').disconnect(0);
    for (let k = 0; k < 2; k++) b.observe(1).sql(2, 'SELECT count(*) AS n FROM tmp_t').observe(3);
    await expectSame(b);
  });

  it('a session advisory lock of a client that left is released', async () => {
    const b = new ScenarioBuilder(3);
    b.lock(0, 'SELECT pg_advisory_lock({k0})').disconnect(0);
    for (let k = 0; k < 2; k++) b.sql(1, 'SELECT pg_try_advisory_xact_lock({k0}) AS free').observe(1).observe(2);
    await expectSame(b);
  });

  it('a WITH HOLD cursor of a client that left is gone for the next clients', async () => {
    const b = new ScenarioBuilder(3);
    b.begin(0).pin(0, 'DECLARE cur_a CURSOR WITH HOLD FOR SELECT generate_series(1, 5) AS n').end(0, true).sql(0, 'FETCH 2 FROM cur_a').disconnect(0);
    for (let k = 0; k < 2; k++) b.observe(1).sql(2, 'FETCH 2 FROM cur_a').observe(2);
    await expectSame(b);
  });
});
