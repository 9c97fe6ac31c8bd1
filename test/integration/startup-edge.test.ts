// Messages at the edges of the startup phase: Terminate (or anything else) sent before, with,
// or right after the startup packet, and during password authentication. Where PostgreSQL
// itself is the reference, the same bytes go to the harness's primary too.
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { primaryPort } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import { firstError, queryMsg, RawClient, startupPacket, syncMsg, terminateMsg, type PgMessage } from '../support/rawClient.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-startup-edge-'));
const authFile = join(dir, 'users.txt');
const md5Secret = (user: string, password: string) => 'md5' + createHash('md5').update(password + user).digest('hex');
writeFileSync(authFile, `"app_md5" "${md5Secret('app_md5', 'md5pass')}"\n"app_scram" "scrampass"\n`);

const primaryOnly = () => ({ nodes: [{ host: '127.0.0.1', port: primaryPort(), weight: 1 }] });
const startup = (user: string) => startupPacket({ user, database: 'app' });

/** Sends each part in its own write (a short pause between), then reads until the server closes. */
async function converse(port: number, parts: Buffer[]): Promise<{ msgs: PgMessage[]; closed: boolean }> {
  const c = await RawClient.connect(port);
  try {
    for (const [i, p] of parts.entries()) {
      if (i > 0) await new Promise((r) => setTimeout(r, 50)); // deliberate: separate TCP segments
      c.send(p);
    }
    let msgs: PgMessage[] = [];
    try {
      msgs = await c.readAll(3000);
    } catch {
      // timed out: reported as not closed
    }
    return { msgs, closed: c.closed };
  } finally {
    c.destroy();
  }
}

const types = (msgs: PgMessage[]) => msgs.map((m) => m.type).join('');

/**
 * node-postgres: connect() and end() right away. end() writes Terminate while the socket
 * still connects, so it goes out before the startup packet. Returns every error seen.
 */
async function connectThenEnd(port: number, user: string, password?: string): Promise<string[]> {
  const errors: string[] = [];
  const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: 'app' });
  c.on('error', (e) => errors.push(`error event: ${e.message}`));
  // A quiet close leaves connect() pending (pg ignores it once end() was called), as with PostgreSQL.
  void c.connect().catch((e: Error) => errors.push(`connect: ${e.message}`));
  await c.end().catch((e: Error) => errors.push(`end: ${e.message}`));
  // Deliberate pause: late errors must have had time to show up.
  await new Promise((r) => setTimeout(r, 300));
  return errors;
}

describe('startup edges, trust', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ ...primaryOnly(), poolSize: 2 });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('Terminate before the startup packet, same write (what node-postgres sends): a quiet close, as PostgreSQL', async () => {
    const bytes = Buffer.concat([terminateMsg(), startup('postgres')]);
    const direct = await converse(primaryPort(), [bytes]);
    expect(direct).toEqual({ msgs: [], closed: true });
    const r = await converse(proxy.port, [bytes]);
    expect(firstError(r.msgs)).toBeUndefined();
    expect(r).toEqual({ msgs: [], closed: true });
  });

  it('Terminate alone where the startup packet belongs: a quiet close', async () => {
    const r = await converse(proxy.port, [terminateMsg(), startup('postgres')]);
    expect(r).toEqual({ msgs: [], closed: true });
  });

  it('Terminate in the same write as the startup packet: logged in, then a quiet close', async () => {
    const r = await converse(proxy.port, [Buffer.concat([startup('postgres'), terminateMsg()])]);
    expect(firstError(r.msgs)).toBeUndefined();
    expect(types(r.msgs)).toMatch(/^R(S)+KZ$/);
    expect(r.closed).toBe(true);
  });

  it('Terminate right after the startup packet (next write): logged in, then a quiet close', async () => {
    const r = await converse(proxy.port, [startup('postgres'), terminateMsg()]);
    expect(firstError(r.msgs)).toBeUndefined();
    expect(types(r.msgs)).toMatch(/^R(S)+KZ$/);
    expect(r.closed).toBe(true);
  });

  it('node-postgres connect(); end(): no error', async () => {
    expect(await connectThenEnd(proxy.port, 'postgres')).toEqual([]);
  });

  it('a Query where the startup packet belongs: 08P01 naming the message, then close', async () => {
    for (const bytes of [Buffer.concat([queryMsg('SELECT 1'), startup('postgres')]), syncMsg()]) {
      const r = await converse(proxy.port, [bytes]);
      const e = firstError(r.msgs);
      expect(e?.code).toBe('08P01');
      expect(e?.message).toMatch(/^expected startup packet, got message type "[QS]"$/);
      expect(r.closed).toBe(true);
    }
  });

  it('a startup packet longer than PostgreSQL allows: 08P01, then close', async () => {
    const r = await converse(proxy.port, [startupPacket({ user: 'postgres', database: 'app', application_name: 'x'.repeat(20_000) })]);
    const e = firstError(r.msgs);
    expect(e?.code).toBe('08P01');
    expect(e?.message).toBe('invalid length of startup packet');
    expect(r.closed).toBe(true);
  });

  it('the proxy still serves a normal client', async () => {
    const c = await RawClient.login(proxy.port);
    try {
      const msgs = await c.query('SELECT 1');
      expect(firstError(msgs)).toBeUndefined();
    } finally {
      c.end();
    }
  });
});

describe('startup edges, password authentication', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ ...primaryOnly(), auth: 'md5', authFile, poolSize: 2 });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('Terminate before the startup packet: a quiet close', async () => {
    const r = await converse(proxy.port, [Buffer.concat([terminateMsg(), startup('app_md5')])]);
    expect(r).toEqual({ msgs: [], closed: true });
  });

  it('node-postgres connect(); end(): no error', async () => {
    expect(await connectThenEnd(proxy.port, 'app_md5', 'md5pass')).toEqual([]);
  });

  // PostgreSQL answers Terminate in place of the password with FATAL 08P01 ("expected
  // password response" / "expected SASL response") rather than closing quietly: so does pgmux.
  for (const user of ['app_md5', 'app_scram']) {
    for (const [how, parts] of [
      ['same write', [Buffer.concat([startup(user), terminateMsg()])]],
      ['next write', [startup(user), terminateMsg()]],
    ] as const) {
      it(`${user}: Terminate instead of the password (${how}): 08P01 and close, as PostgreSQL`, async () => {
        const direct = await converse(primaryPort(), [...parts]);
        expect(direct.msgs[0]?.type).toBe('R');
        expect(firstError(direct.msgs)?.code).toBe('08P01');
        expect(direct.closed).toBe(true);

        const r = await converse(proxy.port, [...parts]);
        expect(types(r.msgs)).toBe('RE');
        expect(r.msgs[0]!.body.readInt32BE(0)).not.toBe(0); // a password was asked for
        const e = firstError(r.msgs);
        expect(e?.code).toBe('08P01');
        expect(e?.message).toBe('expected password response, got message type "X"');
        expect(r.closed).toBe(true);
      });
    }
  }

  it('a Query instead of the password: 08P01 and close', async () => {
    const r = await converse(proxy.port, [startup('app_md5'), queryMsg('SELECT 1')]);
    expect(types(r.msgs)).toBe('RE');
    const e = firstError(r.msgs);
    expect(e?.code).toBe('08P01');
    expect(e?.message).toBe('expected password response, got message type "Q"');
    expect(r.closed).toBe(true);
  });
});
