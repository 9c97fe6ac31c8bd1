// Hand-made and malformed client bytes: each gets the right SQLSTATE and a closed
// connection, and the proxy goes on serving everyone else.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgClient } from '../support/cluster.js';
import { startProxy, type TestProxy } from '../support/pgmux.js';
import {
  firstError,
  gssEncRequest,
  parseErrorFields,
  PROTOCOL_3_0,
  RawClient,
  rows,
  sslRequest,
  startupPacket,
  typedMessage,
  untypedPacket,
  type PgErrorFields,
  type PgMessage,
} from '../support/rawClient.js';

const MiB = 1024 * 1024;

/** A normal client through the proxy still gets answers. */
async function assertHealthy(port: number): Promise<void> {
  const c = await pgClient(port);
  try {
    const r = await c.query('SELECT 41 + 1 AS n');
    expect(r.rows).toEqual([{ n: 42 }]);
  } finally {
    await c.end();
  }
}

/** Reads until the server closes; returns the messages and the first ErrorResponse. */
async function readToClose(c: RawClient, timeoutMs = 3000): Promise<{ msgs: PgMessage[]; closed: boolean }> {
  let msgs: PgMessage[] = [];
  try {
    msgs = await c.readAll(timeoutMs);
  } catch {
    // timeout: report not closed
  }
  return { msgs, closed: c.closed };
}

/**
 * Sends `bytes` on a new connection and expects an ErrorResponse with `code`, then the
 * connection closed, and pgmux still serving a normal client. Returns the error.
 */
async function expectRejected(port: number, bytes: Buffer, code: string): Promise<PgErrorFields | undefined> {
  const c = await RawClient.connect(port);
  c.send(bytes);
  const { msgs, closed } = await readToClose(c);
  const e = firstError(msgs);
  expect(e?.code).toBe(code);
  expect(closed).toBe(true);
  await assertHealthy(port);
  return e;
}

describe('bad client input', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 3, maxMessageBytes: 1 * MiB });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('the proxy serves a normal client to begin with', async () => {
    await assertHealthy(proxy.port);
  });

  it('unknown protocol version 2.0 -> 0A000 and close', async () => {
    await expectRejected(proxy.port, startupPacket({ user: 'postgres', database: 'app' }, 2 << 16), '0A000');
  });

  it('startup packet without user -> 28000 and close', async () => {
    const e = await expectRejected(proxy.port, startupPacket({ database: 'app' }), '28000');
    expect(e?.severity).toBe('FATAL');
  });

  it('malformed startup packet (no terminating NUL) -> 08P01 and close', async () => {
    // "user\0postgres\0database\0app\0" without the final NUL that ends the list.
    await expectRejected(proxy.port, untypedPacket(PROTOCOL_3_0, Buffer.from('user\0postgres\0database\0app\0')), '08P01');
  });

  it('startup packet whose value lacks its NUL -> 08P01 and close', async () => {
    await expectRejected(proxy.port, untypedPacket(PROTOCOL_3_0, Buffer.from('user\0postgres')), '08P01');
  });

  it('startup packet with a length below 8 -> 08P01 and close', async () => {
    const b = Buffer.alloc(8);
    b.writeInt32BE(3, 0);
    b.writeInt32BE(PROTOCOL_3_0, 4);
    await expectRejected(proxy.port, b, '08P01');
  });

  it('a typed message with length < 4 after login -> 08P01 and close', async () => {
    const c = await RawClient.login(proxy.port);
    const bad = Buffer.alloc(5);
    bad[0] = 'Q'.charCodeAt(0);
    bad.writeInt32BE(2, 1);
    c.send(bad);
    const { msgs, closed } = await readToClose(c);
    const e = firstError(msgs);
    expect(e?.code).toBe('08P01');
    expect(closed).toBe(true);
    await assertHealthy(proxy.port);
  });

  it('a message larger than maxMessageBytes -> 08P01 "too large" and close', async () => {
    const c = await RawClient.login(proxy.port);
    const hdr = Buffer.alloc(5 + 100);
    hdr[0] = 'Q'.charCodeAt(0);
    hdr.writeInt32BE(10 * MiB, 1); // claims 10 MiB, limit is 1 MiB
    c.send(hdr);
    const { msgs, closed } = await readToClose(c);
    const e = firstError(msgs);
    expect(e?.code).toBe('08P01');
    expect(e?.message).toMatch(/too large/i);
    expect(closed).toBe(true);
    await assertHealthy(proxy.port);
  });

  it('a startup packet larger than maxMessageBytes -> 08P01 and close', async () => {
    const b = Buffer.alloc(8);
    b.writeInt32BE(10 * MiB, 0);
    b.writeInt32BE(PROTOCOL_3_0, 4);
    await expectRejected(proxy.port, b, '08P01');
  });

  it('a message just under maxMessageBytes still works', async () => {
    const c = await RawClient.login(proxy.port);
    const big = 'x'.repeat(MiB - 1000);
    const msgs = await c.query(`SELECT length('${big}')`);
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(msgs)).toEqual([[String(MiB - 1000)]]);
    c.end();
  });

  it('a client that vanishes mid-startup leaves the proxy healthy', async () => {
    for (let i = 0; i < 5; i++) {
      const c = await RawClient.connect(proxy.port);
      const p = startupPacket({ user: 'postgres', database: 'app' });
      c.send(p.subarray(0, Math.floor(p.length / 2)));
      // Deliberate pause: the half packet reaches pgmux before the close, not with it.
      await new Promise((r) => setTimeout(r, 20));
      c.destroy();
    }
    // Also one that vanishes after a whole startup, before reading the answer.
    const c2 = await RawClient.connect(proxy.port);
    c2.send(startupPacket({ user: 'postgres', database: 'app' }));
    c2.destroy();
    // No client of this file is connected now: the registry must drain to empty.
    await expect.poll(() => proxy.proxy.connectionCount, { timeout: 2000 }).toBe(0);
    await assertHealthy(proxy.port);
  });

  it('SSLRequest gets "N" and then a plaintext startup works', async () => {
    const c = await RawClient.connect(proxy.port);
    c.send(sslRequest());
    expect((await c.readBytes(1)).toString()).toBe('N');
    const msgs = await c.startup({ user: 'postgres', database: 'app' });
    expect(firstError(msgs)).toBeUndefined();
    expect(msgs.at(-1)?.type).toBe('Z');
    expect(rows(await c.query('SELECT 7'))).toEqual([['7']]);
    c.end();
  });

  it('GSSENCRequest gets "N" and then a plaintext startup works', async () => {
    const c = await RawClient.connect(proxy.port);
    c.send(gssEncRequest());
    expect((await c.readBytes(1)).toString()).toBe('N');
    const msgs = await c.startup({ user: 'postgres', database: 'app' });
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(await c.query('SELECT 8'))).toEqual([['8']]);
    c.end();
  });

  it('protocol 3.1 gets NegotiateProtocolVersion (3.0) and then works', async () => {
    const c = await RawClient.connect(proxy.port);
    const msgs = await c.startup({ user: 'postgres', database: 'app' }, { version: (3 << 16) | 1 });
    const v = msgs.find((m) => m.type === 'v');
    expect(v).toBeDefined();
    expect(v!.body.readInt32BE(0)).toBe(0); // newest minor supported
    expect(v!.body.readInt32BE(4)).toBe(0); // no unrecognized options
    expect(firstError(msgs)).toBeUndefined();
    expect(msgs.at(-1)?.type).toBe('Z');
    expect(rows(await c.query('SELECT 9'))).toEqual([['9']]);
    c.end();
  });

  it('a _pq_.foo startup option gets NegotiateProtocolVersion naming it and then works', async () => {
    const c = await RawClient.connect(proxy.port);
    const msgs = await c.startup({ user: 'postgres', database: 'app', '_pq_.foo': 'bar' });
    const v = msgs.find((m) => m.type === 'v');
    expect(v).toBeDefined();
    expect(v!.body.readInt32BE(4)).toBe(1);
    expect(v!.body.toString('utf8', 8, v!.body.length - 1)).toBe('_pq_.foo');
    expect(firstError(msgs)).toBeUndefined();
    expect(rows(await c.query('SELECT 10'))).toEqual([['10']]);
    c.end();
  });

  it('replication=database -> 0A000 and close', async () => {
    await expectRejected(proxy.port, startupPacket({ user: 'postgres', database: 'app', replication: 'database' }), '0A000');
  });

  it('replication=true -> 0A000 and close', async () => {
    await expectRejected(proxy.port, startupPacket({ user: 'postgres', database: 'app', replication: 'true' }), '0A000');
  });

  it('an unknown message type after login gets PostgreSQL\'s 08P01 and the proxy stays healthy', async () => {
    const c = await RawClient.login(proxy.port);
    c.send(typedMessage('y', Buffer.from('junk')));
    const { msgs, closed } = await readToClose(c);
    const e = firstError(msgs);
    expect(e?.code).toBe('08P01');
    expect(e?.message).toMatch(/invalid frontend message type/);
    expect(closed).toBe(true);
    // The backend PostgreSQL closed must not be handed to anyone: several rounds of
    // clients over the pool all work.
    for (let i = 0; i < 5; i++) await assertHealthy(proxy.port);
  });

  it('a password message after login gets 08P01 and the proxy stays healthy', async () => {
    const c = await RawClient.login(proxy.port);
    c.send(typedMessage('p', Buffer.from('secret\0')));
    const { msgs, closed } = await readToClose(c);
    expect(firstError(msgs)?.code).toBe('08P01');
    expect(closed).toBe(true);
    for (let i = 0; i < 5; i++) await assertHealthy(proxy.port);
  });

  it('a CancelRequest with a short packet is ignored and closed', async () => {
    const c = await RawClient.connect(proxy.port);
    const b = Buffer.alloc(12);
    b.writeInt32BE(12, 0);
    b.writeInt32BE(80877102, 4);
    b.writeInt32BE(1234, 8);
    c.send(b);
    expect(await c.waitClosed(2000)).toBe(true);
    await assertHealthy(proxy.port);
  });
});

describe('bad input during authentication', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-badinput-'));
    const authFile = join(dir, 'userlist.txt');
    writeFileSync(authFile, '"postgres" "pgpass"\n');
    proxy = await startProxy({ poolSize: 2, auth: 'password', authFile });
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('a Query instead of the expected password -> 08P01 and close', async () => {
    const c = await RawClient.connect(proxy.port);
    c.send(startupPacket({ user: 'postgres', database: 'app' }));
    const r = await c.read();
    expect(r?.type).toBe('R');
    expect(r!.body.readInt32BE(0)).toBe(3); // cleartext password
    c.send(typedMessage('Q', Buffer.from('SELECT 1\0')));
    const { msgs, closed } = await readToClose(c);
    expect(firstError(msgs)?.code).toBe('08P01');
    expect(closed).toBe(true);
    const ok = await RawClient.login(proxy.port, {}, { password: 'pgpass' });
    expect(rows(await ok.query('SELECT 1'))).toEqual([['1']]);
    ok.end();
  });

  it('a garbage type byte during auth -> 08P01 and close', async () => {
    const c = await RawClient.connect(proxy.port);
    c.send(startupPacket({ user: 'postgres', database: 'app' }));
    expect((await c.read())?.type).toBe('R');
    c.send(typedMessage('\x01', Buffer.from('zz')));
    const { msgs, closed } = await readToClose(c);
    expect(firstError(msgs)?.code).toBe('08P01');
    expect(closed).toBe(true);
    const ok = await RawClient.login(proxy.port, {}, { password: 'pgpass' });
    expect(rows(await ok.query('SELECT 2'))).toEqual([['2']]);
    ok.end();
  });
});

describe('client_login_timeout', () => {
  let proxy: TestProxy;
  const raws: RawClient[] = [];
  beforeAll(async () => {
    proxy = await startProxy({ poolSize: 2, clientLoginTimeoutMs: 300 });
  });
  afterAll(async () => {
    // Should already be closed by the proxy; destroy anyway so a failure here cannot
    // also hang proxy.close() (server.close waits for every open connection).
    for (const r of raws) r.destroy();
    await proxy?.close();
  });

  it('a client that sends half a startup packet is cut off', async () => {
    const c = await RawClient.connect(proxy.port);
    raws.push(c);
    const p = startupPacket({ user: 'postgres', database: 'app' });
    c.send(p.subarray(0, 10));
    const t0 = Date.now();
    const { msgs, closed } = await readToClose(c, 3000);
    const elapsed = Date.now() - t0;
    expect(closed).toBe(true);
    expect(elapsed).toBeLessThan(1500);
    const e = firstError(msgs);
    expect(e?.code).toBe('08P01');
    expect(parseErrorFields(msgs.find((m) => m.type === 'E')!.body).severity).toBe('FATAL');
    await assertHealthy(proxy.port);
  });

  it('a client that sends nothing is cut off', async () => {
    const c = await RawClient.connect(proxy.port);
    raws.push(c);
    expect(await c.waitClosed(2000)).toBe(true);
    await assertHealthy(proxy.port);
  });

  it('a client that has sent a whole startup but never answers the password request is cut off', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-logintimeout-'));
    const authFile = join(dir, 'userlist.txt');
    writeFileSync(authFile, '"postgres" "pgpass"\n');
    const p2 = await startProxy({ poolSize: 1, clientLoginTimeoutMs: 300, auth: 'password', authFile });
    const c = await RawClient.connect(p2.port);
    try {
      c.send(startupPacket({ user: 'postgres', database: 'app' }));
      const r = await c.read();
      expect(r?.type).toBe('R');
      const { msgs, closed } = await readToClose(c, 3000);
      expect(closed).toBe(true);
      expect(firstError(msgs)?.code).toBe('08P01');
    } finally {
      c.destroy();
      await p2.close();
    }
  });
});

describe('shutdown with a client mid-startup', () => {
  it('proxy.close() finishes within 3 s while a client sits on half a startup packet', async () => {
    const p = await startProxy({ poolSize: 1 });
    const c = await RawClient.connect(p.port);
    c.send(startupPacket({ user: 'postgres', database: 'app' }).subarray(0, 6));
    // Deliberate pause: the partial packet reaches pgmux before close() starts.
    await new Promise((r) => setTimeout(r, 50));
    let done = false;
    const closing = p.close().then(() => (done = true));
    await Promise.race([closing, new Promise((r) => setTimeout(r, 3000))]);
    const clientClosed = c.closed;
    c.destroy(); // let close() complete either way
    await closing;
    expect(done).toBe(true);
    expect(clientClosed).toBe(true);
  });
});
