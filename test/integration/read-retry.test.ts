// Re-running lone reads whose replica backend dies before answering, for every protocol:
// simple Query, node-postgres' extended protocol (unnamed and named statements) and raw
// Parse/Bind/Describe/Execute/Sync. The backend serving the read is found on its replica
// (pg_stat_activity, by a tag in the statement text) and killed with pg_terminate_backend,
// whose FATAL 57P01 is about the backend, not the query: the client must get its result,
// with no error and no doubled ParseComplete/BindComplete/RowDescription. Writes, reads
// inside a transaction and pipelined requests are never re-run. Then a replica stopped
// with a fast shutdown (FATAL 57P01 to every backend) on a private cluster.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { LocalCluster } from '../../src/embedded/localCluster.js';
import { nodePorts, pgClient, primaryPort, replicaPorts } from '../support/cluster.js';
import { startProxy, testConfig, type TestProxy } from '../support/pgmux.js';
import {
  bindMsg,
  describeMsg,
  executeMsg,
  parseErrorFields,
  parseMsg,
  queryMsg,
  RawClient,
  rows,
  syncMsg,
  type PgMessage,
} from '../support/rawClient.js';
import { sleep, waitFor } from '../support/wait.js';

/** How long each tagged statement runs: time enough to find and kill its backend. */
const SLEEP_S = 1;

let nextTag = 1;
/** A marker unique to one test's statement text, to find its backend in pg_stat_activity. */
function tag(): string {
  return `rr_tag_${process.pid}_${nextTag++}`;
}

/** Types of the messages, e.g. '12TDCZ'. */
function types(msgs: PgMessage[]): string {
  return msgs.map((m) => m.type).join('');
}

describe('lone reads re-run when their replica backend dies (shared cluster)', () => {
  let proxy: TestProxy;
  const direct = new Map<number, pg.Client>();
  const open: Array<{ end(): unknown }> = [];

  beforeAll(async () => {
    proxy = await startProxy({
      // Reads go to the two replicas only, so a re-run has exactly one other place to go.
      nodes: testConfig().nodes.map((n, i) => ({ ...n, weight: i === 0 ? 0 : 1 })),
      http: { host: '127.0.0.1', port: 0 },
      poolSize: 4,
    });
    await waitFor(
      () => proxy.proxy.topology().primary !== null && proxy.proxy.topology().nodes.every((n) => n.state === 'up' && n.lagMs !== null),
      20_000,
      () => `all nodes up: ${JSON.stringify(proxy.proxy.topology().nodes.map((n) => [n.name, n.state]))}`,
    );
    for (const port of nodePorts()) direct.set(port, await pgClient(port));
    await direct.get(primaryPort())!.query('CREATE TABLE IF NOT EXISTS read_retry_t (id serial PRIMARY KEY, tag text)');
  });

  afterAll(async () => {
    for (const c of open) await Promise.resolve(c.end()).catch(() => {});
    await direct.get(primaryPort())?.query('DROP TABLE IF EXISTS read_retry_t').catch(() => {});
    for (const c of direct.values()) await c.end().catch(() => {});
    await proxy?.close();
  });

  async function connect(): Promise<pg.Client> {
    const c = await pgClient(proxy.port);
    c.on('error', () => {}); // a FATAL closes the connection; the query's promise reports it
    open.push(c);
    return c;
  }

  async function raw(): Promise<RawClient> {
    const c = await RawClient.login(proxy.port);
    open.push(c);
    return c;
  }

  /** pgmux_read_retries_total as /metrics shows it. */
  async function retriesMetric(): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${proxy.httpPort}/metrics`)).text();
    const m = /^pgmux_read_retries_total (\S+)$/m.exec(text);
    if (m === null) throw new Error('no pgmux_read_retries_total in /metrics');
    return Number(m[1]);
  }

  /**
   * The backend running the statement tagged `t` on any of `ports`, once it runs there.
   * (The tag is a parameter here, so this query's own text never matches.)
   */
  async function findServing(t: string, ports: number[]): Promise<{ port: number; pid: number }> {
    return waitFor(
      async () => {
        for (const port of ports) {
          const r = await direct.get(port)!.query("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND strpos(query, $1) > 0", [t]);
          if (r.rows.length > 0) return { port, pid: r.rows[0].pid as number };
        }
        return null;
      },
      10_000,
      () => `a backend running the statement tagged ${t}`,
    );
  }

  /** Terminates the backend running the statement tagged `t` (FATAL 57P01); returns its node's port. */
  async function terminateServing(t: string, ports: number[] = nodePorts()): Promise<number> {
    const { port, pid } = await findServing(t, ports);
    const k = await direct.get(port)!.query('SELECT pg_terminate_backend($1) AS ok', [pid]);
    expect(k.rows[0].ok).toBe(true);
    return port;
  }

  /** Runs `query` while the replica backend serving it is killed; checks it re-ran on the other replica. */
  async function readSurvives(t: string, query: () => Promise<{ v: unknown; port: unknown }>, want: unknown): Promise<void> {
    const before = proxy.proxy.stats.readRetries;
    const metricBefore = await retriesMetric();
    const running = query();
    const killedPort = await terminateServing(t, replicaPorts());
    const r = await running; // rejects (failing the test) if the client saw an error
    expect(r.v).toBe(want);
    const port = Number(r.port);
    expect(replicaPorts()).toContain(port);
    expect(port).not.toBe(killedPort);
    expect(proxy.proxy.stats.readRetries - before).toBe(1);
    expect((await retriesMetric()) - metricBefore).toBe(1);
  }

  it('re-runs an extended-protocol read with parameters (node-postgres) on the other replica', async () => {
    const c = await connect();
    const t = tag();
    await readSurvives(
      t,
      async () => (await c.query(`SELECT $1::int AS v, inet_server_port() AS port, pg_sleep(${SLEEP_S}) /* ${t} */`, [42])).rows[0],
      42,
    );
    // The connection goes on as usual.
    expect((await c.query('SELECT $1::text AS s', ['after'])).rows[0].s).toBe('after');
  });

  it('re-runs a named prepared statement, defined on the dead backend, on a fresh one', async () => {
    const c = await connect();
    const t = tag();
    const text = `SELECT $1::int AS v, inet_server_port() AS port, pg_sleep(${SLEEP_S}) /* ${t} */`;
    // First use: Parse/Bind/Describe/Execute/Sync, killed mid-query.
    await readSurvives(t, async () => (await c.query({ name: 'rr_named', text, values: [7] })).rows[0], 7);
    // Later uses: Bind only (node-postgres knows it prepared it), killed mid-query again.
    await readSurvives(t, async () => (await c.query({ name: 'rr_named', text, values: [8] })).rows[0], 8);
    const r = await c.query({ name: 'rr_named', text, values: [9] });
    expect(r.rows[0].v).toBe(9);
  });

  it('re-runs a simple-protocol read whose backend is terminated (FATAL 57P01)', async () => {
    const c = await connect();
    const t = tag();
    await readSurvives(t, async () => (await c.query(`SELECT 5 AS v, inet_server_port() AS port, pg_sleep(${SLEEP_S}) /* ${t} */`)).rows[0], 5);
  });

  it('raw Parse/Bind/Describe/Execute/Sync: one ParseComplete, BindComplete and RowDescription reach the client', async () => {
    for (const stmt of ['', 'rr_raw']) {
      const c = await raw();
      const t = tag();
      const before = proxy.proxy.stats.readRetries;
      c.send(
        Buffer.concat([
          parseMsg(stmt, `SELECT $1::int AS v, inet_server_port() AS port, pg_sleep(${SLEEP_S}) /* ${t} */`),
          bindMsg('', stmt, ['11']),
          describeMsg('P', ''),
          executeMsg(),
          syncMsg(),
        ]),
      );
      const killedPort = await terminateServing(t, replicaPorts());
      const msgs = await c.readUntil('Z', 15_000);
      expect(types(msgs), `statement "${stmt}"`).toBe('12TDCZ');
      const [[v, port]] = rows(msgs) as [[string, string]];
      expect(v).toBe('11');
      expect(Number(port)).not.toBe(killedPort);
      expect(proxy.proxy.stats.readRetries - before).toBe(1);
      if (stmt !== '') {
        // The named statement is usable afterwards (prepared again where needed).
        c.send(Buffer.concat([bindMsg('', stmt, ['12']), describeMsg('P', ''), executeMsg(), syncMsg()]));
        const again = await c.readUntil('Z', 15_000);
        expect(types(again)).toBe('2TDCZ');
        expect(rows(again)[0]![0]).toBe('12');
      }
    }
  });

  it("a read's own error is its answer: sent once, not re-run", async () => {
    const c = await connect();
    const before = proxy.proxy.stats.readRetries;
    await expect(c.query('SELECT $1::int / 0', [1])).rejects.toMatchObject({ code: '22012' });
    await expect(c.query('SELECT 1 / 0')).rejects.toMatchObject({ code: '22012' });
    const r = await raw();
    r.send(Buffer.concat([parseMsg('', 'SELECT * FROM rr_no_such_table'), bindMsg('', ''), describeMsg('P', ''), executeMsg(), syncMsg()]));
    const msgs = await r.readUntil('Z');
    expect(types(msgs)).toBe('EZ');
    expect(parseErrorFields(msgs[0]!.body).code).toBe('42P01');
    expect(proxy.proxy.stats.readRetries).toBe(before);
    expect((await c.query('SELECT $1::int AS v', [3])).rows[0].v).toBe(3);
  });

  it('never re-runs an extended-protocol write: the client gets an error, no row is added twice', async () => {
    const c = await connect();
    const t = tag();
    const before = proxy.proxy.stats.readRetries;
    const running = c.query(`INSERT INTO read_retry_t (tag) SELECT $1 FROM pg_sleep(${SLEEP_S}) RETURNING id /* ${t} */`, [t]);
    running.catch(() => {});
    expect(await terminateServing(t)).toBe(primaryPort());
    await expect(running).rejects.toThrow();
    // Killed before its commit: no row, where a re-run would have added one.
    await sleep(SLEEP_S * 1000 + 500); // deliberate: time enough for a re-run to have committed
    const n = await direct.get(primaryPort())!.query('SELECT count(*)::int AS n FROM read_retry_t WHERE tag = $1', [t]);
    expect(n.rows[0].n).toBe(0);
    expect(proxy.proxy.stats.readRetries).toBe(before);
  });

  it('never re-runs a read inside BEGIN ... COMMIT', async () => {
    const c = await connect();
    const t = tag();
    const before = proxy.proxy.stats.readRetries;
    await c.query('BEGIN');
    const running = c.query(`SELECT $1::int AS v, pg_sleep(${SLEEP_S}) /* ${t} */`, [1]);
    running.catch(() => {});
    await terminateServing(t);
    await expect(running).rejects.toThrow();
    expect(proxy.proxy.stats.readRetries).toBe(before);
  });

  it('never re-runs a pipelined batch of two Syncs', async () => {
    const c = await raw();
    const t = tag();
    const before = proxy.proxy.stats.readRetries;
    const read = (v: string) => [parseMsg('', `SELECT $1::int AS v, pg_sleep(${SLEEP_S}) /* ${t} */`), bindMsg('', '', [v]), describeMsg('P', ''), executeMsg(), syncMsg()];
    c.send(Buffer.concat([...read('1'), ...read('2')]));
    await terminateServing(t);
    const msgs = await c.readAll(15_000);
    expect(types(msgs)).toContain('E');
    expect(rows(msgs)).toEqual([]);
    expect(proxy.proxy.stats.readRetries).toBe(before);
  });

  it('never re-runs a read once the client sent another request after it', async () => {
    const c = await raw();
    const t = tag();
    const before = proxy.proxy.stats.readRetries;
    c.send(queryMsg(`SELECT 1 AS v, pg_sleep(${SLEEP_S}) /* ${t} */`));
    const { port, pid } = await findServing(t, nodePorts()); // on its backend before the second is sent
    c.send(queryMsg('SELECT 2 AS v'));
    await sleep(100); // deliberate: the second reaches pgmux, which forwards it behind the first
    await direct.get(port)!.query('SELECT pg_terminate_backend($1)', [pid]);
    // Re-running the first alone would leave the second unanswered: the client must get an
    // error and a closed connection instead.
    const msgs = await c.readAll(15_000);
    expect(types(msgs)).toContain('E');
    expect(c.closed).toBe(true);
    expect(proxy.proxy.stats.readRetries).toBe(before);
  });
});

describe('reads re-run when a replica is stopped with a fast shutdown (private cluster)', () => {
  let cluster: LocalCluster;
  let proxy: TestProxy;

  beforeAll(async () => {
    cluster = await LocalCluster.start({ replicas: 2 });
    const nodes = cluster.nodes.map((n, i) => ({ host: n.host, port: n.port, weight: i === 0 ? 0 : 1 }));
    proxy = await startProxy({ nodes, healthCheckPeriodMs: 200, poolSize: 4 });
    await waitFor(
      () => proxy.proxy.topology().primary !== null && proxy.proxy.topology().nodes.every((n) => n.state === 'up' && n.lagMs !== null),
      20_000,
      () => 'all nodes up',
    );
  });

  afterAll(async () => {
    await proxy?.close();
    await cluster?.stop();
  });

  it('extended and simple reads in flight on the stopped replica get their results, no error', async () => {
    const [, portA, portB] = cluster.nodes.map((n) => n.port) as [number, number, number];
    const CLIENTS = 4;
    const t = tag();
    const errors: string[] = [];
    const served = new Map<number, number>();
    let stop = false;
    const clients = await Promise.all(Array.from({ length: CLIENTS }, () => pgClient(proxy.port, { database: 'postgres' })));
    for (const c of clients) c.on('error', (e) => errors.push(`client error event: ${e.message}`));
    const before = proxy.proxy.stats.readRetries;
    const loops = clients.map(async (c, i) => {
      for (let n = 0; !stop; n++) {
        try {
          // Half the clients use parameters (extended protocol), half plain text (simple).
          const r =
            i % 2 === 0
              ? await c.query(`SELECT $1::int AS v, inet_server_port() AS port, pg_sleep(0.5) /* ${t} */`, [n])
              : await c.query(`SELECT ${n} AS v, inet_server_port() AS port, pg_sleep(0.5) /* ${t} */`);
          expect(r.rows[0].v).toBe(n);
          const port = Number(r.rows[0].port);
          served.set(port, (served.get(port) ?? 0) + 1);
        } catch (e) {
          errors.push((e as Error).message);
          return; // the connection is gone after a FATAL
        }
      }
    });
    await waitFor(() => (served.get(portB) ?? 0) >= 2, 20_000, () => `reads on node2: ${JSON.stringify([...served])}`);
    // Stopped while reads run there (each takes 0.5 s).
    const running = "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()";
    await waitFor(async () => (await cluster.query('node2', running, { params: [t] }))[0].n > 0, 20_000, () => 'reads running on node2');
    await cluster.stopNode('node2', 'fast');
    const afterStop = served.get(portA) ?? 0;
    // Reads go on, on the remaining replica.
    await waitFor(() => (served.get(portA) ?? 0) >= afterStop + CLIENTS * 2 || errors.length > 0, 20_000, () => 'reads after the stop');
    stop = true;
    await Promise.all(loops);
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
    expect(errors).toEqual([]);
    expect(proxy.proxy.stats.readRetries - before).toBeGreaterThan(0);
  });
});
