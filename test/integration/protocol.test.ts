// Real clients and the wire protocol through pgmux: psql, pgbench in every query mode,
// COPY both ways, cancel requests, notices and parameter status, and the extended
// protocol (pipelining, Describe, errors inside a batch, unnamed statements, Flush).
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { pgbenchBin, pgClient, primaryPort, psqlBin, runPg, waitUntilRunning } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import {
  bindMsg,
  describeMsg,
  executeMsg,
  firstError,
  flushMsg,
  parseErrorFields,
  parseMsg,
  parseParameterStatus,
  queryMsg,
  RawClient,
  rows,
  sendCancel,
  syncMsg,
  typedMessage,
  type PgMessage,
} from '../support/rawClient.js';

const clients: Array<pg.Client | RawClient> = [];
async function connect(port: number, opts: Parameters<typeof pgClient>[1] = {}): Promise<pg.Client> {
  const c = await pgClient(port, opts);
  c.on('error', () => {});
  clients.push(c);
  return c;
}
async function raw(port: number, params: Record<string, string> = {}): Promise<RawClient> {
  const c = await RawClient.login(port, params);
  clients.push(c);
  return c;
}

function psqlArgs(port: number, ...rest: string[]): string[] {
  return ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'app', ...rest];
}

function pgbenchArgs(port: number, ...rest: string[]): string[] {
  return ['-n', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', ...rest, 'app'];
}

/** Asserts pgbench ran clean; returns the number of transactions processed. */
function checkPgbench(r: { code: number | null; stdout: string; stderr: string }): number {
  const out = r.stdout + r.stderr;
  expect(r.code, out).toBe(0);
  expect(out).toMatch(/number of failed transactions: 0 \(/);
  const m = /number of transactions actually processed: (\d+)/.exec(out);
  expect(m, out).not.toBeNull();
  const n = Number(m![1]);
  expect(n).toBeGreaterThan(0);
  expect(out).not.toMatch(/\berror\b|aborted/i);
  return n;
}

function sha256(s: string | Buffer): string {
  return createHash('sha256').update(s).digest('hex');
}

const types = (msgs: PgMessage[]) => msgs.map((m) => m.type).join('');

/**
 * Only the primary as a node: these tests are about the wire protocol and pooling, not
 * read routing, so every statement must land on the one pool being watched.
 */
function primaryOnly() {
  return { nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] };
}

/** Runs a binary and collects stdout as raw bytes (runPg decodes chunks as strings). */
function runBytes(bin: string, args: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: { ...process.env, PGCONNECT_TIMEOUT: '10' }, stdio: ['pipe', 'pipe', 'pipe'], timeout: 30_000 });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

/**
 * Clients leave before their proxy closes: a graceful shutdown waits (shutdown_timeout) for
 * clients still linked to a backend, which in session mode is every connected client.
 */
async function closeClients(): Promise<void> {
  const all = clients.splice(0);
  for (const c of all) {
    if (c instanceof RawClient) c.destroy();
    else await c.end().catch(() => {});
  }
}

afterAll(closeClients);

describe('protocol through pgmux (transaction mode, pool_size 5)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ ...primaryOnly(), poolSize: 5, poolMode: 'transaction' });
  });
  afterAll(async () => {
    await closeClients();
    await proxy?.close();
  });

  it('psql -c "select 42" prints 42', async () => {
    const r = await runPg(psqlBin(), psqlArgs(proxy.port, '-c', 'select 42'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('42\n');
  });

  it('psql with a multi-statement -c and several -c', async () => {
    const r = await runPg(
      psqlBin(),
      psqlArgs(proxy.port, '-c', 'create temp table mt(a int); insert into mt values (5), (6); select sum(a) * 2 from mt', '-c', 'select 1 + 1', '-c', 'select 3'),
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(-3)).toEqual(['22', '2', '3']);
  });

  it('psql reports a server error with its SQLSTATE and exit code 1', async () => {
    const r = await runPg(psqlBin(), psqlArgs(proxy.port, '-v', 'VERBOSITY=verbose', '-c', 'select 1/0'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/22012/);
  });

  it('pgbench -M simple, 50 clients: zero failed transactions', async () => {
    const r = await runPg(pgbenchBin(), pgbenchArgs(proxy.port, '-M', 'simple', '-c', '50', '-j', '2', '-T', '4'), { timeoutMs: 40_000 });
    checkPgbench(r);
    for (const p of proxy.proxy.allPools()) expect(p.size).toBeLessThanOrEqual(5);
  }, 45_000);

  it('pgbench -M extended, 50 clients: zero failed transactions', async () => {
    const r = await runPg(pgbenchBin(), pgbenchArgs(proxy.port, '-M', 'extended', '-c', '50', '-j', '2', '-T', '4'), { timeoutMs: 40_000 });
    checkPgbench(r);
    for (const p of proxy.proxy.allPools()) expect(p.size).toBeLessThanOrEqual(5);
  }, 45_000);

  it('COPY 100k rows in and out through psql is byte-identical', async () => {
    const table = `copy_rt_${process.pid}`;
    const direct = await connect(primaryPort());
    await direct.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id int, txt text, note text)`);
    const seed = randomBytes(16).toString('hex');
    const lines: string[] = [];
    for (let i = 0; i < 100_000; i++) {
      const note = i % 7 === 0 ? '\\N' : `ünï ${i % 13} \\t tab\\\\slash`;
      lines.push(`${i}\t${sha256(seed + i).slice(0, 24)}\t${note}`);
    }
    const data = Buffer.from(lines.join('\n') + '\n', 'utf8');
    const copyIn = await runBytes(psqlBin(), psqlArgs(proxy.port, '-c', `COPY ${table} FROM STDIN`), data);
    expect(copyIn.stderr).toBe('');
    expect(copyIn.code).toBe(0);
    expect(copyIn.stdout.toString().trim()).toBe('COPY 100000');
    const n = await direct.query(`SELECT count(*)::int AS n FROM ${table}`);
    expect(n.rows[0].n).toBe(100_000);
    const copyOut = await runBytes(psqlBin(), ['-X', '-q', '-h', '127.0.0.1', '-p', String(proxy.port), '-U', 'postgres', '-d', 'app', '-c', `COPY (SELECT * FROM ${table} ORDER BY id) TO STDOUT`]);
    expect(copyOut.stderr).toBe('');
    expect(copyOut.code).toBe(0);
    expect(copyOut.stdout.length).toBe(data.length);
    expect(sha256(copyOut.stdout)).toBe(sha256(data));
    // The pool is fine afterwards.
    const c = await connect(proxy.port);
    expect((await c.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(100_000);
    await direct.query(`DROP TABLE ${table}`);
  }, 60_000);

  it('a CopyFail from the client aborts the COPY with 57014 and the session goes on', async () => {
    const table = `copy_fail_${process.pid}`;
    const direct = await connect(primaryPort());
    await direct.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id int)`);
    const c = await raw(proxy.port);
    c.send(queryMsg(`COPY ${table} FROM STDIN`));
    const g = await c.read();
    expect(g?.type).toBe('G');
    c.send(typedMessage('d', Buffer.from('1\n2\n')));
    c.send(typedMessage('f', Buffer.from('client gave up\0')));
    const msgs = await c.readUntil('Z');
    expect(firstError(msgs)?.code).toBe('57014');
    expect(rows(await c.query(`SELECT count(*) FROM ${table}`))).toEqual([['0']]);
    await direct.query(`DROP TABLE ${table}`);
  });

  it('CancelRequest with the key pgmux gave cancels pg_sleep(10) within 1 s', async () => {
    const c = await raw(proxy.port);
    expect(c.pid).not.toBe(0);
    c.send(queryMsg('SELECT pg_sleep(10)'));
    await waitUntilRunning('SELECT pg_sleep(10)');
    const t0 = Date.now();
    await sendCancel(proxy.port, c.pid, c.secret);
    const msgs = await c.readUntil('Z', 5000);
    const elapsed = Date.now() - t0;
    const e = firstError(msgs);
    expect(e?.code).toBe('57014');
    expect(e?.message).toMatch(/cancel/);
    expect(elapsed).toBeLessThan(1000);
    expect(msgs.at(-1)!.body.toString()).toBe('I');
    // The session (and the backend it ran on) still work.
    expect(rows(await c.query('SELECT 5'))).toEqual([['5']]);
  });

  it('CancelRequest with a wrong secret or unknown pid does nothing', async () => {
    const c = await raw(proxy.port);
    c.send(queryMsg("SELECT pg_sleep(0.5), 'done'"));
    await waitUntilRunning("SELECT pg_sleep(0.5), 'done'");
    await sendCancel(proxy.port, c.pid, (c.secret ^ 0x5a5a) | 0);
    await sendCancel(proxy.port, (c.pid ^ 0x1234) & 0x7fffffff, c.secret);
    const msgs = await c.readUntil('Z', 5000);
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(msgs)).toEqual([['', 'done']]);
  });

  it('a CancelRequest for an idle client does not disturb its next query', async () => {
    const c = await raw(proxy.port);
    await sendCancel(proxy.port, c.pid, c.secret);
    // Deliberate pause: a cancel wrongly forwarded to some backend would land within it.
    await new Promise((r) => setTimeout(r, 100));
    const msgs = await c.query('SELECT pg_sleep(0.2), 1');
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(msgs)).toEqual([['', '1']]);
  });

  it('the cancel key differs per client and is not the backend pid', async () => {
    const a = await raw(proxy.port);
    const b = await raw(proxy.port);
    expect(a.pid).not.toBe(b.pid);
    const realPid = rows(await a.query('SELECT pg_backend_pid()'))[0]![0];
    expect(String(a.pid)).not.toBe(realPid);
  });

  it('NoticeResponse from RAISE NOTICE reaches the client', async () => {
    const c = await connect(proxy.port);
    const notices: Array<{ message: string; code?: string }> = [];
    c.on('notice', (n) => notices.push({ message: n.message ?? '', code: (n as unknown as { code?: string }).code }));
    await c.query("DO $$ BEGIN RAISE NOTICE 'hello from pgmux %', 42; END $$");
    expect(notices.map((n) => n.message)).toEqual(['hello from pgmux 42']);
    // Extended protocol too.
    await c.query("SELECT set_config('client_min_messages', 'notice', false), $1::int", [1]);
    await c.query("DO $$ BEGIN RAISE WARNING 'w1'; RAISE NOTICE 'n2'; END $$");
    expect(notices.map((n) => n.message)).toEqual(['hello from pgmux 42', 'w1', 'n2']);
  });

  it('ParameterStatus after SET application_name reaches the client', async () => {
    const c = await raw(proxy.port);
    const msgs = await c.query("SET application_name = 'x_via_pgmux'");
    expect(firstError(msgs)).toBeUndefined();
    const ps = msgs.filter((m) => m.type === 'S').map((m) => parseParameterStatus(m.body));
    expect(ps).toContainEqual(['application_name', 'x_via_pgmux']);
    const tz = await c.query("SET TimeZone = 'Asia/Kolkata'");
    expect(tz.filter((m) => m.type === 'S').map((m) => parseParameterStatus(m.body))).toContainEqual(['TimeZone', 'Asia/Kolkata']);
  });

  it('ParameterStatus values sent at login are the real ones', async () => {
    const c = await raw(proxy.port, { application_name: 'login_ps', client_encoding: 'UTF8' });
    expect(c.params.get('application_name')).toBe('login_ps');
    expect(c.params.get('client_encoding')).toBe('UTF8');
    expect(c.params.get('server_version')).toMatch(/^\d+/);
    expect(c.params.get('integer_datetimes')).toBe('on');
    expect(c.params.has('TimeZone')).toBe(true);
  });

  it('pg: 50 queries fired without awaiting on one client all get their own answers', async () => {
    const c = await connect(proxy.port);
    const ps = [];
    for (let i = 0; i < 50; i++) ps.push(c.query('SELECT $1::int * 2 AS v, $2::text AS s', [i, `q${i}`]));
    const rs = await Promise.all(ps);
    rs.forEach((r, i) => expect(r.rows).toEqual([{ v: i * 2, s: `q${i}` }]));
  });

  it('raw: 50 pipelined Parse/Bind/Execute/Sync batches in one write', async () => {
    const c = await raw(proxy.port);
    const parts: Buffer[] = [];
    for (let i = 0; i < 50; i++) {
      parts.push(parseMsg('', 'SELECT $1::int + 1000'), bindMsg('', '', [String(i)]), executeMsg(), syncMsg());
    }
    c.send(Buffer.concat(parts));
    const got: string[] = [];
    for (let i = 0; i < 50; i++) {
      const msgs = await c.readUntil('Z');
      expect(types(msgs)).toBe('12DCZ');
      got.push(rows(msgs)[0]![0]!);
    }
    expect(got).toEqual(Array.from({ length: 50 }, (_, i) => String(i + 1000)));
    expect(c.buffered).toBe(0);
  });

  it('raw: many statements in one batch under one Sync', async () => {
    const c = await raw(proxy.port);
    const parts: Buffer[] = [];
    for (let i = 0; i < 10; i++) parts.push(parseMsg('', `SELECT ${i} AS n`), bindMsg('', ''), executeMsg());
    parts.push(syncMsg());
    c.send(Buffer.concat(parts));
    const msgs = await c.readUntil('Z');
    expect(types(msgs)).toBe('12DC'.repeat(10) + 'Z');
    expect(rows(msgs).map((r) => r[0])).toEqual(Array.from({ length: 10 }, (_, i) => String(i)));
  });

  it('raw: Describe of a named statement returns ParameterDescription and RowDescription', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([
      parseMsg('s_desc', 'SELECT $1::int + 1 AS x, $2::text AS y'),
      describeMsg('S', 's_desc'),
      bindMsg('', 's_desc', ['41', 'hi']),
      executeMsg(),
      typedMessageClose('S', 's_desc'),
      syncMsg(),
    ]));
    const msgs = await c.readUntil('Z');
    expect(types(msgs)).toBe('1tT2DC3Z');
    const t = msgs.find((m) => m.type === 't')!;
    expect(t.body.readInt16BE(0)).toBe(2);
    expect([t.body.readInt32BE(2), t.body.readInt32BE(6)]).toEqual([23, 25]); // int4, text
    const rd = msgs.find((m) => m.type === 'T')!;
    expect(rd.body.readInt16BE(0)).toBe(2);
    expect(rd.body.toString('utf8', 2, rd.body.indexOf(0, 2))).toBe('x');
    expect(rows(msgs)).toEqual([['42', 'hi']]);
  });

  it('raw: Describe of a portal and of a no-data statement', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([
      parseMsg('', 'SELECT 1 AS a'),
      bindMsg('', ''),
      describeMsg('P', ''),
      executeMsg(),
      parseMsg('', 'SET LOCAL statement_timeout = 0'),
      describeMsg('S', ''),
      syncMsg(),
    ]));
    const msgs = await c.readUntil('Z');
    expect(types(msgs)).toBe('12TDC1tnZ');
  });

  it('raw: an error in the middle of a pipelined batch skips the rest until Sync; the next query works', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([
      parseMsg('', 'SELECT 1'),
      bindMsg('', ''),
      executeMsg(),
      parseMsg('', 'SELECT 1/(g - 1) FROM generate_series(1, 1) g'), // fails while executing
      bindMsg('', ''),
      executeMsg(),
      parseMsg('', 'SELECT 3'),
      bindMsg('', ''),
      executeMsg(),
      syncMsg(),
      parseMsg('', 'SELECT 4'),
      bindMsg('', ''),
      executeMsg(),
      syncMsg(),
    ]));
    const first = await c.readUntil('Z');
    expect(types(first)).toBe('12DC12EZ');
    expect(parseErrorFields(first.find((m) => m.type === 'E')!.body).code).toBe('22012');
    expect(first.at(-1)!.body.toString()).toBe('I');
    const second = await c.readUntil('Z');
    expect(types(second)).toBe('12DCZ');
    expect(rows(second)).toEqual([['4']]);
    expect(rows(await c.query('SELECT 5'))).toEqual([['5']]);
  });

  it('raw: an error inside an explicit transaction leaves it aborted until ROLLBACK', async () => {
    const c = await raw(proxy.port);
    expect((await c.query('BEGIN')).at(-1)!.body.toString()).toBe('T');
    c.send(Buffer.concat([parseMsg('', 'SELECT 1/0'), bindMsg('', ''), executeMsg(), syncMsg()]));
    const m1 = await c.readUntil('Z');
    expect(m1.at(-1)!.body.toString()).toBe('E');
    const m2 = await c.query('SELECT 1');
    expect(firstError(m2)?.code).toBe('25P02');
    const m3 = await c.query('ROLLBACK');
    expect(m3.at(-1)!.body.toString()).toBe('I');
    expect(rows(await c.query('SELECT 6'))).toEqual([['6']]);
  });

  it('raw: unnamed statements are reused and replaced within a batch', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([
      parseMsg('', 'SELECT $1::text || \'-a\''),
      bindMsg('', '', ['x']),
      executeMsg(),
      bindMsg('', '', ['y']), // same unnamed statement, new portal
      executeMsg(),
      parseMsg('', 'SELECT $1::int * 10'), // replaces the unnamed statement
      bindMsg('', '', ['7']),
      executeMsg(),
      syncMsg(),
    ]));
    const msgs = await c.readUntil('Z');
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(msgs)).toEqual([['x-a'], ['y-a'], ['70']]);
  });

  it('raw: Execute with a row limit returns PortalSuspended, then the rest', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([
      typedBegin(),
      parseMsg('', 'SELECT g FROM generate_series(1, 5) g'),
      bindMsg('p1', ''),
      executeMsg('p1', 2),
      executeMsg('p1', 0),
      syncMsg(),
    ]));
    const begin = await c.readUntil('Z'); // BEGIN (simple query) first
    expect(types(begin)).toBe('CZ');
    const batch = await c.readUntil('Z');
    expect(types(batch)).toBe('12DDsDDDCZ');
    expect(rows(batch).map((r) => r[0])).toEqual(['1', '2', '3', '4', '5']);
    expect(batch.at(-1)!.body.toString()).toBe('T');
    await c.query('COMMIT');
  });

  it('a batch held open with Flush keeps its backend until Sync (pool_size 1)', async () => {
    const p1 = await startProxy({ ...primaryOnly(), poolSize: 1, queryWaitTimeoutMs: 5000 });
    try {
      const a = await RawClient.login(p1.port);
      const b = await RawClient.login(p1.port);
      clients.push(a, b);
      a.send(Buffer.concat([parseMsg('', 'SELECT pg_backend_pid()'), bindMsg('', ''), executeMsg(), flushMsg()]));
      const first = await a.readUntil('C');
      const pid1 = rows(first)[0]![0];
      // B's query must wait: A's batch is still open.
      b.send(queryMsg('SELECT pg_backend_pid()'));
      // Deliberate pause: B must get nothing for a while, not just at one instant.
      await new Promise((r) => setTimeout(r, 300));
      expect(b.buffered).toBe(0);
      a.send(Buffer.concat([parseMsg('', 'SELECT pg_backend_pid()'), bindMsg('', ''), executeMsg(), syncMsg()]));
      const rest = await a.readUntil('Z');
      expect(rows(rest)[0]![0]).toBe(pid1);
      const bm = await b.readUntil('Z');
      expect(firstError(bm)).toBeUndefined();
      expect(rows(bm)[0]![0]).toBe(pid1);
    } finally {
      await closeClients();
      await p1.close();
    }
  });
});

describe('protocol through pgmux (session mode)', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ ...primaryOnly(), poolSize: 12, poolMode: 'session' });
  });
  afterAll(async () => {
    await closeClients();
    await proxy?.close();
  });

  it('pgbench -M prepared, 10 clients: zero failed transactions', async () => {
    const r = await runPg(pgbenchBin(), pgbenchArgs(proxy.port, '-M', 'prepared', '-c', '10', '-j', '2', '-T', '4'), { timeoutMs: 40_000 });
    checkPgbench(r);
  }, 45_000);

  it('a named prepared statement survives across transactions in session mode', async () => {
    const c = await raw(proxy.port);
    c.send(Buffer.concat([parseMsg('keep', 'SELECT $1::int + 1'), syncMsg()]));
    expect(types(await c.readUntil('Z'))).toBe('1Z');
    await c.query('BEGIN; SELECT 1; COMMIT');
    c.send(Buffer.concat([bindMsg('', 'keep', ['9']), executeMsg(), syncMsg()]));
    const m = await c.readUntil('Z');
    expect(firstError(m)).toBeUndefined();
    expect(rows(m)).toEqual([['10']]);
  });
});

function typedMessageClose(kind: 'S' | 'P', name: string): Buffer {
  return typedMessage('C', Buffer.concat([Buffer.from(kind), Buffer.from(name + '\0')]));
}
function typedBegin(): Buffer {
  return queryMsg('BEGIN');
}
