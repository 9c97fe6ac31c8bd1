import net from 'node:net';
import tls from 'node:tls';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBackendTls, buildClientTls, connectTls, pgClientSsl, upgradeClientSocket, type ClientTls, type ServerTlsMode } from '../../src/net/tls.js';
import { makeTestPki, type TestPki } from '../support/certs.js';

let pki: TestPki;
let clientTls: ClientTls;

beforeAll(() => {
  pki = makeTestPki();
  clientTls = buildClientTls({ certFile: pki.server.cert, keyFile: pki.server.key, caFile: null, minVersion: 'TLSv1.2', ciphers: null });
});
afterAll(() => pki?.cleanup());

type Answer = 'S' | 'N' | 'S+junk' | 'silent' | 'E';

/**
 * A fake PostgreSQL server for the negotiation: reads the 8-byte SSLRequest, answers, and
 * after 'S' runs the TLS server side and echoes what it gets. Resolves its port.
 */
async function fakeServer(answer: Answer, tlsState: ClientTls = clientTls): Promise<{ port: number; seen: Buffer[]; close: () => void }> {
  const seen: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('data', (first: Buffer) => {
      seen.push(first);
      if (answer === 'silent') return;
      if (answer === 'E') {
        s.end(Buffer.from('E\0\0\0\x05x'));
        return;
      }
      if (answer === 'N') {
        s.write('N');
        s.on('data', (d: Buffer) => s.write(d));
        return;
      }
      if (answer === 'S+junk') {
        s.write(Buffer.from('SZ\0\0\0\x05I'));
        return;
      }
      s.write('S');
      const t = upgradeClientSocket(s, tlsState, { alpn: true });
      t.on('error', () => {});
      t.on('data', (d: Buffer) => t.write(d));
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as net.AddressInfo).port,
    seen,
    close: () => {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

async function echo(sock: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    sock.once('data', (d: Buffer) => resolve(d.toString()));
    sock.once('error', reject);
    sock.write(text);
  });
}

async function negotiate(answer: Answer, mode: ServerTlsMode, opts: { host?: string; ca?: string | null; timeoutMs?: number; tlsState?: ClientTls } = {}) {
  const srv = await fakeServer(answer, opts.tlsState);
  const socket = net.connect({ host: '127.0.0.1', port: srv.port });
  try {
    const ca = opts.ca === undefined ? readFileSync(pki.ca.cert) : opts.ca === null ? null : readFileSync(opts.ca);
    const s = await connectTls(socket, { mode, ca, host: opts.host ?? '127.0.0.1', timeoutMs: opts.timeoutMs ?? 5000 });
    const reply = await echo(s, 'ping');
    s.destroy();
    return { tls: s instanceof tls.TLSSocket, reply, sslRequest: srv.seen[0] };
  } finally {
    srv.close();
  }
}

describe('connectTls (backend side)', () => {
  it('sends SSLRequest and runs TLS after S; verify-full checks IP and DNS names', async () => {
    const r = await negotiate('S', 'verify-full');
    expect(r).toEqual({ tls: true, reply: 'ping', sslRequest: Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]) });
    expect((await negotiate('S', 'verify-full', { host: 'localhost' })).tls).toBe(true);
  });

  it('verify-full refuses a certificate for another name', async () => {
    await expect(negotiate('S', 'verify-full', { host: '127.0.0.2' })).rejects.toThrow(/IP: 127\.0\.0\.2 is not in the cert's list|does not match/);
  });

  it('verify-ca checks the chain but not the name', async () => {
    expect((await negotiate('S', 'verify-ca', { host: '127.0.0.2' })).tls).toBe(true);
    await expect(negotiate('S', 'verify-ca', { ca: pki.otherCa.cert })).rejects.toThrow(/self[- ]signed|unable to verify|unable to get/i);
    await expect(negotiate('S', 'verify-full', { ca: pki.otherCa.cert })).rejects.toThrow(/self[- ]signed|unable to verify|unable to get/i);
  });

  it('require and prefer encrypt without verifying', async () => {
    expect((await negotiate('S', 'require', { ca: pki.otherCa.cert })).tls).toBe(true);
    expect((await negotiate('S', 'prefer', { ca: null, host: 'nowhere.invalid' })).tls).toBe(true);
  });

  it("'N': prefer goes on in plaintext, every stricter mode refuses", async () => {
    expect(await negotiate('N', 'prefer')).toMatchObject({ tls: false, reply: 'ping' });
    for (const mode of ['require', 'verify-ca', 'verify-full'] as const) {
      await expect(negotiate('N', mode)).rejects.toThrow(`the server does not support TLS, but server_tls is ${mode}`);
    }
  });

  it('refuses bytes sent after S before the handshake, an error answer, and silence', async () => {
    await expect(negotiate('S+junk', 'require')).rejects.toThrow(/unexpected 7-byte answer to SSLRequest/);
    await expect(negotiate('E', 'prefer')).rejects.toThrow(/sent an error/);
    await expect(negotiate('silent', 'require', { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
  });

  it('a closed connection rejects', async () => {
    const srv = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const socket = net.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port });
    await expect(connectTls(socket, { mode: 'require', ca: null, host: '127.0.0.1' })).rejects.toThrow(/closed|ECONNRESET/);
    expect(socket.destroyed).toBe(true);
    srv.close();
  });

  it('buildBackendTls reads the CA and names server_tls_ca_file in errors', () => {
    expect(buildBackendTls('disable', '/nonexistent')).toEqual({ mode: 'disable', ca: null });
    expect(buildBackendTls('verify-full', pki.ca.cert).ca).toEqual(readFileSync(pki.ca.cert));
    expect(() => buildBackendTls('verify-ca', join(pki.dir, 'nope.crt'))).toThrow(/^server_tls_ca_file: cannot read ".*nope\.crt": no such file$/);
    const junk = join(pki.dir, 'junk.crt');
    writeFileSync(junk, '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n');
    expect(() => buildBackendTls('verify-ca', junk)).toThrow(/^server_tls_ca_file: ".*junk\.crt" is not a PEM certificate file: certificate 1/);
    writeFileSync(junk, 'hello\n');
    expect(() => buildBackendTls('verify-ca', junk)).toThrow(/^server_tls_ca_file: ".*junk\.crt" holds no PEM certificate$/);
    expect(() => buildClientTls({ certFile: pki.server.cert, keyFile: pki.server.key, caFile: junk, minVersion: 'TLSv1.2', ciphers: null })).toThrow(/^client_tls_ca_file: .* holds no PEM certificate/);
  });
});

describe('pgClientSsl (health checks through node-postgres)', () => {
  it('maps server_tls to pg\'s ssl option', () => {
    const ca = Buffer.from('CA');
    expect(pgClientSsl({ mode: 'disable', ca: null })).toBe(false);
    expect(pgClientSsl({ mode: 'prefer', ca })).toBe(false);
    expect(pgClientSsl({ mode: 'require', ca })).toEqual({ rejectUnauthorized: false });
    expect(pgClientSsl({ mode: 'verify-full', ca })).toEqual({ rejectUnauthorized: true, ca });
    const vca = pgClientSsl({ mode: 'verify-ca', ca: null });
    expect(vca).toMatchObject({ rejectUnauthorized: true });
    expect(vca && vca.checkServerIdentity?.('x', {} as never)).toBeUndefined();
  });
});

describe('buildClientTls (client side)', () => {
  const base = () => ({ certFile: pki.server.cert, keyFile: pki.server.key, caFile: null, minVersion: 'TLSv1.2' as const, ciphers: null });

  it('names the key at fault', () => {
    expect(() => buildClientTls({ ...base(), certFile: join(pki.dir, 'missing.crt') })).toThrow(/^client_tls_cert_file: cannot read .*missing\.crt": no such file/);
    expect(() => buildClientTls({ ...base(), keyFile: pki.dir })).toThrow(/^client_tls_key_file: cannot read .*: is a directory/);
    expect(() => buildClientTls({ ...base(), caFile: join(pki.dir, 'x') })).toThrow(/^client_tls_ca_file: cannot read/);
    expect(() => buildClientTls({ ...base(), certFile: pki.server.key })).toThrow(/^client_tls_cert_file: .* is not a PEM certificate/);
    const other = pki.issue('other-key');
    expect(() => buildClientTls({ ...base(), keyFile: other.key })).toThrow(/^client_tls_key_file: .* is not a usable private key for .*server\.crt.*mismatch/i);
    expect(() => buildClientTls({ ...base(), ciphers: 'NO-SUCH-CIPHER' })).toThrow(/^client_tls_ciphers: "NO-SUCH-CIPHER" is not usable/);
  });

  it('min version TLSv1.3 refuses a TLSv1.2-only client', async () => {
    const strict = buildClientTls({ ...base(), minVersion: 'TLSv1.3' });
    const srv = await fakeServer('S', strict);
    try {
      const socket = net.connect({ host: '127.0.0.1', port: srv.port });
      await new Promise((r) => socket.once('connect', r));
      socket.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
      await new Promise((r) => socket.once('data', r));
      const t = tls.connect({ socket, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
      await expect(new Promise((res, rej) => { t.once('secureConnect', res); t.once('error', rej); })).rejects.toThrow(/protocol version|alert/i);
      t.destroy();
    } finally {
      srv.close();
    }
  });

  it('with a CA file: no client certificate is fine, one from another CA is refused', async () => {
    const withCa = buildClientTls({ ...base(), caFile: pki.ca.cert });
    expect(withCa.requestCert).toBe(true);
    const srv = await fakeServer('S', withCa);
    try {
      const attempt = async () => {
        const socket = net.connect({ host: '127.0.0.1', port: srv.port });
        const s = await connectTls(socket, { mode: 'require', ca: null, host: '127.0.0.1' });
        return echo(s, 'hi').finally(() => s.destroy());
      };
      expect(await attempt()).toBe('hi');
      // A client certificate needs tls.connect's own options: negotiate by hand.
      const bad = pki.issue('bad-client', { signer: 'other' });
      const good = pki.issue('good-client');
      const withCert = async (c: { cert: string; key: string }) => {
        const socket = net.connect({ host: '127.0.0.1', port: srv.port });
        await new Promise((r) => socket.once('connect', r));
        socket.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]));
        await new Promise((r) => socket.once('data', r));
        const t = tls.connect({ socket, rejectUnauthorized: false, cert: readFileSync(c.cert), key: readFileSync(c.key) });
        await new Promise((res, rej) => { t.once('secureConnect', res); t.once('error', rej); });
        return new Promise<string>((resolve) => {
          let got = '';
          t.on('data', (d: Buffer) => { got += d.toString(); resolve(got); });
          t.on('error', () => resolve(`closed:${got}`));
          t.on('close', () => resolve(`closed:${got}`));
          t.write('hi');
        }).finally(() => t.destroy());
      };
      expect(await withCert(good)).toBe('hi');
      expect(await withCert(bad)).toBe('closed:');
    } finally {
      srv.close();
    }
  });
});
