// The query cache and the extended protocol: a lone Parse/Bind/Describe/Execute/Sync unit, or a
// Bind of a named statement, answered from the cache byte for byte as PostgreSQL itself answers
// it; parameter values, formats and result formats kept apart; writes through pgmux making the
// next read fresh; node-postgres with parameters getting hits; a row limit never cached.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { pgClient, primaryPort, replicaPorts } from '../support/cluster.js';
import { bindMsg, describeMsg, executeMsg, parseMsg, queryMsg, RawClient, syncMsg, typedMessage, type PgMessage } from '../support/rawClient.js';
import { sleep, waitFor } from '../support/wait.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';

const wire = (msgs: PgMessage[]): string => msgs.map((m) => `${m.type}:${m.body.toString('hex')}`).join('|');
const types = (msgs: PgMessage[]): string => msgs.map((m) => m.type).join('');
const INT4 = 23;
const JDBC_JAR = '/usr/share/java/postgresql.jar';
const driversDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'drivers');

describe('query cache with the extended protocol', () => {
  const T = `qcx_items_${process.pid}`;
  /** A table the reads never touch. */
  const L = `qcx_log_${process.pid}`;
  /** A VOLATILE function that writes (made before pgmux first loads the function catalog). */
  const F = `qcx_bump_${process.pid}`;
  let proxy: TestProxy;
  const raws: RawClient[] = [];
  const clients: pg.Client[] = [];

  async function raw(port: number): Promise<RawClient> {
    const c = await RawClient.connect(port);
    raws.push(c);
    const login = await c.startup({ user: 'postgres', database: 'app' });
    expect(login.some((m) => m.type === 'E')).toBe(false);
    return c;
  }

  /** Sends one unit and reads its reply up to ReadyForQuery. */
  async function run(c: RawClient, ...msgs: Buffer[]): Promise<PgMessage[]> {
    c.send(Buffer.concat(msgs));
    return c.readUntil('Z', 10_000);
  }

  const stats = () => proxy.proxy.queryCache.stats();

  /** Past the lag bound of the last write through pgmux (max_lag_ms 100 + one health check): replies are stored again. */
  const settle = () => sleep(400);

  beforeAll(async () => {
    const admin = await pgClient(primaryPort());
    clients.push(admin);
    await admin.query(`DROP TABLE IF EXISTS ${T}, ${L}; CREATE TABLE ${T} (id int PRIMARY KEY, name text); CREATE TABLE ${L} (x int);
      INSERT INTO ${T} SELECT g, 'name ' || g FROM generate_series(1, 20) g;
      CREATE OR REPLACE FUNCTION ${F}(i int) RETURNS int LANGUAGE sql VOLATILE AS $$ UPDATE ${T} SET name = name || '+' WHERE id = i RETURNING 1 $$;`);
    for (const port of replicaPorts()) {
      const r = await pgClient(port);
      clients.push(r);
      await waitFor(async () => (await r.query(`SELECT count(*)::int AS n FROM pg_tables WHERE tablename = '${T}'`)).rows[0].n === 1, 10_000, () => 'the table on the replica');
    }
    proxy = await startProxy({ queryCache: true, maxLagMs: 100, queryCacheTtlMs: 60_000, http: { host: '127.0.0.1', port: 0 } });
    await waitFor(() => proxy.proxy.cacheCoherent('app'), 5000, () => 'the cache invalidation listener');
  });
  afterAll(async () => {
    for (const c of raws) c.destroy();
    for (const c of clients) await c.end().catch(() => {});
    await proxy?.close();
  });

  const SQL = `SELECT id, name FROM ${T} WHERE id <= $1 ORDER BY id`;

  it('unnamed Parse/Bind/Describe/Execute/Sync: the hit is byte-identical to the miss and to PostgreSQL direct, text and binary results', async () => {
    const c = await raw(proxy.port);
    const direct = await raw(primaryPort());
    for (const results of [[0], [1]]) {
      const unit = [parseMsg('', SQL, [INT4]), bindMsg('', '', ['3'], { results }), describeMsg('P', ''), executeMsg(), syncMsg()];
      const s0 = stats();
      const miss = await run(c, ...unit);
      expect(types(miss)).toBe('12TDDDCZ');
      const s1 = stats();
      expect(s1.entries).toBe(s0.entries + 1);
      const hit = await run(c, ...unit);
      expect(stats().hits).toBe(s1.hits + 1);
      expect(wire(hit)).toBe(wire(miss));
      expect(wire(await run(direct, ...unit))).toBe(wire(miss));
    }
  });

  it('named statements: Bind/Execute/Sync (and Describe statement first) served from the cache as PostgreSQL answers them', async () => {
    const c = await raw(proxy.port);
    const direct = await raw(primaryPort());
    // Prepared the way pgJDBC and psycopg do: Parse alone (pgmux answers it itself), used later.
    for (const client of [c, direct]) expect(types(await run(client, parseMsg('S_1', SQL), syncMsg()))).toBe('1Z');
    for (const unit of [
      [bindMsg('', 'S_1', ['2']), executeMsg(), syncMsg()],
      [describeMsg('S', 'S_1'), bindMsg('', 'S_1', ['4'], { results: [1] }), describeMsg('P', ''), executeMsg(), syncMsg()],
    ]) {
      const s0 = stats();
      const miss = await run(c, ...unit);
      expect(miss.some((m) => m.type === 'E')).toBe(false);
      expect(stats().entries).toBe(s0.entries + 1);
      const hit = await run(c, ...unit);
      expect(stats().hits).toBe(s0.hits + 1);
      expect(wire(hit)).toBe(wire(miss));
      expect(wire(await run(direct, ...unit))).toBe(wire(miss));
    }
    // Another client's name for the same text shares the entry (the name changes no byte).
    const other = await raw(proxy.port);
    await run(other, parseMsg('stmt_b', SQL), syncMsg());
    const h = stats().hits;
    const shared = await run(other, bindMsg('', 'stmt_b', ['2']), executeMsg(), syncMsg());
    expect(stats().hits).toBe(h + 1);
    expect(wire(shared)).toBe(wire(await run(direct, bindMsg('', 'S_1', ['2']), executeMsg(), syncMsg())));
  });

  it('different parameter values, parameter formats and result formats never share an entry', async () => {
    const c = await raw(proxy.port);
    const direct = await raw(primaryPort());
    const int4 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeInt32BE(v);
      return b;
    };
    const variants: Array<[Array<string | Buffer>, { params?: number[]; results?: number[] }]> = [
      [['5'], {}],
      [['6'], {}],
      [[int4(7)], { params: [1] }],
      [['5'], { results: [1] }],
      [['5'], { results: [0, 1] }],
    ];
    const units = variants.map(([params, formats]) => [parseMsg('', SQL, [INT4]), bindMsg('', '', params, formats), describeMsg('P', ''), executeMsg(), syncMsg()]);
    const e0 = stats().entries;
    for (const unit of units) await run(c, ...unit);
    expect(stats().entries).toBe(e0 + units.length);
    // Twice over, each served from its own entry: the bytes are PostgreSQL's for that variant.
    const h = stats().hits;
    for (const unit of units) expect(wire(await run(c, ...unit))).toBe(wire(await run(direct, ...unit)));
    expect(stats().hits).toBe(h + units.length);
  });

  it('a write through pgmux (extended protocol too) makes the next extended read fresh', async () => {
    await settle();
    const c = await raw(proxy.port);
    const read = [parseMsg('', `SELECT count(*) FROM ${T} WHERE id > $1`), bindMsg('', '', ['0']), describeMsg('P', ''), executeMsg(), syncMsg()];
    const countOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.toString('hex');
    const n0 = countOf(await run(c, ...read));
    const h = stats().hits;
    expect(countOf(await run(c, ...read))).toBe(n0);
    expect(stats().hits).toBe(h + 1);
    const w = await run(c, parseMsg('', `INSERT INTO ${T} VALUES ($1, 'new')`), bindMsg('', '', [String(1000 + Math.floor(Math.random() * 1000))]), executeMsg(), syncMsg());
    expect(w.some((m) => m.type === 'E')).toBe(false);
    // The entry is gone at once; a replica may not have replayed the INSERT yet (as without the cache).
    await waitFor(async () => countOf(await run(c, ...read)) !== n0, 3000, () => 'a read with the new row');
    expect(stats().hits).toBe(h + 1);
  });

  it('a write through a named statement (Bind/Execute/Sync alone) drops the entries of its table, and only those', async () => {
    const c = await raw(proxy.port);
    for (const [name, sql] of [['S_up', `UPDATE ${T} SET name = name || '!' WHERE id = $1`], ['S_ins', `INSERT INTO ${L} VALUES ($1)`]] as const) {
      expect(types(await run(c, parseMsg(name, sql), syncMsg()))).toBe('1Z');
    }
    const read = [parseMsg('', `SELECT name FROM ${T} WHERE id = $1`), bindMsg('', '', ['12']), describeMsg('P', ''), executeMsg(), syncMsg()];
    const nameOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.subarray(6).toString();
    await settle();
    const before = nameOf(await run(c, ...read));
    const h = stats().hits;
    // A write to another table leaves the entry alone (it named its table).
    expect(types(await run(c, bindMsg('', 'S_ins', ['1']), executeMsg(), syncMsg()))).toBe('2CZ');
    expect(nameOf(await run(c, ...read))).toBe(before);
    expect(stats().hits).toBe(h + 1);
    // A write to the table read drops it.
    expect(types(await run(c, bindMsg('', 'S_up', ['12']), executeMsg(), syncMsg()))).toBe('2CZ');
    await waitFor(async () => nameOf(await run(c, ...read)) === `${before}!`, 3000, () => 'a read that sees the UPDATE');
  });

  it('a read calling a VOLATILE function (routed as a write) makes the next read fresh, simple and extended', async () => {
    const c = await raw(proxy.port);
    const read = [parseMsg('', `SELECT name FROM ${T} WHERE id = $1`), bindMsg('', '', ['11']), describeMsg('P', ''), executeMsg(), syncMsg()];
    const nameOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.subarray(6).toString();
    const calls = [
      [parseMsg('', `SELECT ${F}($1)`), bindMsg('', '', ['11']), describeMsg('P', ''), executeMsg(), syncMsg()],
      [queryMsg(`SELECT ${F}(11)`)],
    ];
    for (const call of calls) {
      await settle();
      const before = nameOf(await run(c, ...read));
      const h = stats().hits;
      expect(nameOf(await run(c, ...read))).toBe(before);
      expect(stats().hits).toBe(h + 1); // served from the cache
      expect((await run(c, ...call)).some((m) => m.type === 'E')).toBe(false);
      await waitFor(async () => nameOf(await run(c, ...read)) === `${before}+`, 3000, () => 'a read that sees the function\'s UPDATE');
    }
  });

  it('node-postgres with parameters gets hits', async () => {
    await settle();
    const client = await pgClient(proxy.port);
    clients.push(client);
    const q = `SELECT name FROM ${T} WHERE id = $1`;
    const first = await client.query(q, [3]);
    const h = stats().hits;
    for (let i = 0; i < 3; i++) expect((await client.query(q, [3])).rows).toEqual(first.rows);
    expect((await client.query(q, [4])).rows).toEqual([{ name: 'name 4' }]);
    expect(stats().hits).toBe(h + 3);
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`^pgmux_query_cache_hits_total ${stats().hits}$`, 'm'));
  });

  it('pgJDBC with prepareThreshold=1 (named statements, Bind/Execute/Sync) gets hits, and sees its own update', async () => {
    await settle();
    const h = stats().hits;
    // Asynchronously: pgmux runs in this process.
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('java', ['-cp', JDBC_JAR, join(driversDir, 'JdbcCache.java'), '127.0.0.1', String(proxy.port), 'app', 'postgres', T], { timeout: 60_000 });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', (err) => resolve({ status: null, stdout, stderr: stderr + String(err) }));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    expect(r.status, `JdbcCache: ${r.stdout} ${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^ok reads=41$/m);
    expect(stats().hits - h).toBeGreaterThanOrEqual(20);
  }, 90_000);

  it('Execute with a row limit (PortalSuspended) is not cached', async () => {
    await settle();
    const c = await raw(proxy.port);
    const unit = [parseMsg('', SQL, [INT4]), bindMsg('', '', ['10']), executeMsg('', 2), syncMsg()];
    const s0 = stats();
    for (let i = 0; i < 2; i++) expect(types(await run(c, ...unit))).toBe('12DDsZ');
    expect(stats()).toMatchObject({ entries: s0.entries, hits: s0.hits });
  });

  it('a text in a client_encoding other than UTF8 is never keyed by a lossy decoding (simple and extended)', async () => {
    const c = await RawClient.connect(proxy.port);
    raws.push(c);
    expect((await c.startup({ user: 'postgres', database: 'app', client_encoding: 'LATIN1' })).some((m) => m.type === 'E')).toBe(false);
    // 'é' and 'è' in LATIN1 are one byte each, neither of them UTF-8: both would decode to U+FFFD.
    const latin1 = (sql: string) => Buffer.from(`${sql}\0`, 'latin1');
    const valueOf = (msgs: PgMessage[]) => msgs.find((m) => m.type === 'D')!.body.subarray(6).toString('latin1');
    for (const letter of ['é', 'è']) {
      const sql = `SELECT '${letter}'::text AS x FROM ${T} WHERE id = 1`;
      for (let i = 0; i < 2; i++) {
        c.send(typedMessage('Q', latin1(sql)));
        expect(valueOf(await c.readUntil('Z'))).toBe(letter);
        const unit = [typedMessage('P', Buffer.concat([Buffer.from([0]), latin1(sql), Buffer.from([0, 0])])), bindMsg('', ''), describeMsg('P', ''), executeMsg(), syncMsg()];
        expect(valueOf(await run(c, ...unit))).toBe(letter);
      }
    }
  });

  it('a parameter meaning the current time is not cached', async () => {
    const c = await raw(proxy.port);
    const unit = [parseMsg('', `SELECT count(*) FROM ${T} WHERE $1::timestamptz > '2000-01-01'`), bindMsg('', '', ['now']), describeMsg('P', ''), executeMsg(), syncMsg()];
    const s0 = stats();
    for (let i = 0; i < 2; i++) await run(c, ...unit);
    expect(stats()).toMatchObject({ entries: s0.entries, hits: s0.hits });
  });
});
