// TLS on both sides of pgmux.
//
// Client side: pgmux answers a client's SSLRequest with 'S' and runs the TLS handshake as
// the server (upgradeClientSocket), using a SecureContext built from the client_tls_* files
// (buildClientTls). Contexts are built once per loaded configuration; RELOAD builds a new
// one from the files on disk (reloadTls), so rotating a certificate is: replace the files,
// RELOAD. Connections already open keep the context they started with.
//
// Backend side: PostgreSQL's own negotiation (connectTls): pgmux sends SSLRequest on the
// fresh TCP connection, reads exactly one byte ('S' or 'N'), and on 'S' runs the handshake
// as the client, verifying the server as server_tls says (libpq's sslmode names).

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

import type { ClientTlsMode, Config, ServerTlsMode, TlsMinVersion } from '../config/types.js';

export type { ClientTlsMode, ServerTlsMode, TlsMinVersion };

export const CLIENT_TLS_MODES: readonly ClientTlsMode[] = ['disable', 'allow', 'require'];
export const SERVER_TLS_MODES: readonly ServerTlsMode[] = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'];
export const TLS_MIN_VERSIONS: readonly TlsMinVersion[] = ['TLSv1.2', 'TLSv1.3'];

/** ALPN protocol name PostgreSQL 17+ uses for TLS connections. */
export const PG_ALPN = 'postgresql';

/** A TLS setting that cannot be used; `key` is the config key to blame. */
export class TlsConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`${key}: ${message}`);
    this.name = 'TlsConfigError';
  }
}

function readPem(key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : (err as Error).message;
    throw new TlsConfigError(key, `cannot read ${JSON.stringify(path)}: ${why}`);
  }
}

function opensslReason(err: unknown): string {
  const e = err as { message?: string; reason?: string };
  return e.reason ?? String(e.message ?? err).replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, '');
}

/**
 * Every certificate in a CA bundle must parse (OpenSSL skips what it cannot read, which
 * would turn a damaged file into "no CA": every verification failing, mysteriously).
 */
function checkCaBundle(key: string, path: string, pem: Buffer): void {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new TlsConfigError(key, `${JSON.stringify(path)} holds no PEM certificate`);
  for (const [i, b] of blocks.entries()) {
    try {
      new X509Certificate(b);
    } catch (err) {
      throw new TlsConfigError(key, `${JSON.stringify(path)} is not a PEM certificate file: certificate ${i + 1}: ${opensslReason(err)}`);
    }
  }
}

// ---- client side (pgmux is the TLS server) -------------------------------------------

export interface ClientTlsSettings {
  certFile: string;
  keyFile: string;
  /** CA for verifying client certificates a client chooses to present; null = none asked for. */
  caFile: string | null;
  minVersion: TlsMinVersion;
  /** OpenSSL cipher list (TLS 1.2) and/or TLS 1.3 suite names; null = Node's default. */
  ciphers: string | null;
}

export interface ClientTls {
  context: tls.SecureContext;
  /** Client certificates are asked for (a CA file is set) and verified when presented. */
  requestCert: boolean;
}

/** Reads the files and builds the context; errors name the config key at fault. */
export function buildClientTls(s: ClientTlsSettings): ClientTls {
  const cert = readPem('client_tls_cert_file', s.certFile);
  const key = readPem('client_tls_key_file', s.keyFile);
  const ca = s.caFile === null ? undefined : readPem('client_tls_ca_file', s.caFile);
  const base: tls.SecureContextOptions = { minVersion: s.minVersion };
  if (s.ciphers !== null) base.ciphers = s.ciphers;
  try {
    tls.createSecureContext(base);
  } catch (err) {
    throw new TlsConfigError('client_tls_ciphers', `${JSON.stringify(s.ciphers)} is not usable: ${opensslReason(err)}`);
  }
  try {
    tls.createSecureContext({ ...base, cert });
  } catch (err) {
    throw new TlsConfigError('client_tls_cert_file', `${JSON.stringify(s.certFile)} is not a PEM certificate: ${opensslReason(err)}`);
  }
  if (ca !== undefined) checkCaBundle('client_tls_ca_file', s.caFile!, ca);
  try {
    return { context: tls.createSecureContext({ ...base, cert, key, ca }), requestCert: ca !== undefined };
  } catch (err) {
    throw new TlsConfigError('client_tls_key_file', `${JSON.stringify(s.keyFile)} is not a usable private key for ${JSON.stringify(s.certFile)}: ${opensslReason(err)}`);
  }
}

/**
 * Starts the server side of the handshake on a client socket that was just told 'S' (or
 * whose first bytes were a TLS ClientHello: direct TLS). The returned socket carries the
 * protocol from here on; handshake failures surface as its 'error' event. A client
 * certificate, when asked for and presented, must verify against the CA file.
 */
export function upgradeClientSocket(socket: net.Socket, server: ClientTls, opts: { alpn?: boolean } = {}): tls.TLSSocket {
  const options: tls.TLSSocketOptions = {
    isServer: true,
    secureContext: server.context,
    requestCert: server.requestCert,
    rejectUnauthorized: false,
  };
  if (opts.alpn) options.ALPNProtocols = [PG_ALPN];
  const t = new tls.TLSSocket(socket, options);
  if (server.requestCert) {
    t.once('secure', () => {
      const peer = t.getPeerCertificate();
      if (!peer || Object.keys(peer).length === 0) return; // none presented: fine
      const why = clientCertError(t);
      if (why !== null) t.destroy(new Error(`client certificate rejected: ${why}`));
    });
  }
  return t;
}

/**
 * Direct TLS (PostgreSQL 17's sslnegotiation=direct): the client's first bytes are a TLS
 * ClientHello, already read as `head`. They are replayed into the handshake through a
 * stream over the socket. ALPN "postgresql" is required, as PostgreSQL requires it (it keeps
 * a TLS connection meant for another protocol from being taken for PostgreSQL).
 */
export function upgradeDirectTls(socket: net.Socket, head: Buffer, server: ClientTls): tls.TLSSocket {
  const stream = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end();
      cb();
    },
    destroy(err, cb) {
      socket.destroy();
      cb(err);
    },
  });
  socket.on('data', (d: Buffer) => {
    if (!stream.push(d)) socket.pause();
  });
  socket.on('end', () => stream.push(null));
  socket.on('close', () => stream.destroy());
  socket.on('error', (err) => stream.destroy(err));
  stream.push(head);
  const t = upgradeClientSocket(stream as unknown as net.Socket, server, { alpn: true });
  t.once('secure', () => {
    if (t.alpnProtocol !== PG_ALPN) t.destroy(new Error(`direct TLS connection without ALPN "${PG_ALPN}"`));
  });
  return t;
}

/**
 * OpenSSL's verdict on the certificate the client presented. Only a tls.Server fills in
 * `authorized`; a TLSSocket made from an accepted socket has to ask its handle, as
 * tls.Server itself does. Fails closed if that ever goes away.
 */
function clientCertError(t: tls.TLSSocket): string | null {
  const handle = (t as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'cannot verify client certificates on this Node.js version';
  const err = handle.verifyError();
  return err ? (err.code ?? err.message) : null;
}

// ---- backend side (pgmux is the TLS client) -------------------------------------------

export interface BackendTls {
  mode: ServerTlsMode;
  /** PEM CA bundle for verify-ca / verify-full; null = Node's built-in root certificates. */
  ca: Buffer | null;
}

export function buildBackendTls(mode: ServerTlsMode, caFile: string | null): BackendTls {
  if (mode === 'disable') return { mode, ca: null };
  const ca = caFile === null ? null : readPem('server_tls_ca_file', caFile);
  if (ca !== null) checkCaBundle('server_tls_ca_file', caFile!, ca);
  return { mode, ca };
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

export interface ConnectTlsOptions {
  mode: ServerTlsMode;
  ca: Buffer | null;
  /** The host pgmux connected to: checked against the certificate for verify-full. */
  host: string;
  /** Bounds the whole negotiation (TCP connect included); 0 = none. */
  timeoutMs?: number;
}

/**
 * PostgreSQL's SSLRequest negotiation towards a backend, on a socket that is connected or
 * still connecting. Resolves the socket to speak the protocol on: a TLSSocket after 'S', or
 * the plain socket after 'N' when server_tls is prefer. Rejects (and destroys the socket)
 * when the server refuses TLS that is required, sends anything but one byte, fails the
 * handshake or its certificate check, closes, or the timeout passes.
 */
export function connectTls(socket: net.Socket, opts: ConnectTlsOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let done = false;
    let current: net.Socket = socket;
    const timer =
      opts.timeoutMs && opts.timeoutMs > 0
        ? setTimeout(() => fail(new Error(`TLS negotiation timed out after ${opts.timeoutMs} ms`)), opts.timeoutMs)
        : null;
    const cleanup = () => {
      if (timer) clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      socket.removeListener('connect', onConnect);
    };
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      cleanup();
      current.removeListener('error', onError);
      current.removeListener('close', onClose);
      current.destroy();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error) => fail(err);
    const onClose = () => fail(new Error('the server closed the connection during TLS negotiation'));
    const onConnect = () => socket.write(SSL_REQUEST);
    const onData = (chunk: Buffer) => {
      socket.removeListener('data', onData);
      // Exactly one byte: anything after it was sent before the handshake and cannot be
      // trusted (CVE-2021-23222), so it is refused rather than read.
      if (chunk.length !== 1) {
        fail(new Error(chunk[0] === 0x45 ? 'the server sent an error instead of answering the SSLRequest' : `unexpected ${chunk.length}-byte answer to SSLRequest`));
        return;
      }
      const answer = chunk[0];
      if (answer === 0x4e /* N */) {
        if (opts.mode !== 'prefer') {
          fail(new Error(`the server does not support TLS, but server_tls is ${opts.mode}`));
          return;
        }
        done = true;
        cleanup();
        resolve(socket);
        return;
      }
      if (answer !== 0x53 /* S */) {
        fail(new Error(answer === 0x45 ? 'the server sent an error instead of answering the SSLRequest' : `unexpected answer 0x${answer!.toString(16)} to SSLRequest`));
        return;
      }
      const verify = opts.mode === 'verify-ca' || opts.mode === 'verify-full';
      const options: tls.ConnectionOptions = {
        socket,
        host: opts.host,
        rejectUnauthorized: verify,
        ALPNProtocols: [PG_ALPN],
      };
      // SNI carries host names only (RFC 6066).
      if (!isIpLiteral(opts.host)) options.servername = opts.host;
      if (opts.ca !== null) options.ca = opts.ca;
      if (opts.mode === 'verify-ca') options.checkServerIdentity = () => undefined;
      const t = tls.connect(options);
      current = t;
      t.on('error', onError);
      t.on('close', onClose);
      t.once('secureConnect', () => {
        if (done) return;
        done = true;
        cleanup();
        t.removeListener('error', onError);
        t.removeListener('close', onClose);
        resolve(t);
      });
    };
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('data', onData);
    if (socket.connecting) socket.once('connect', onConnect);
    else onConnect();
  });
}

function isIpLiteral(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/**
 * server_tls as node-postgres's `ssl` option, for pgmux's own pg.Client connections (the
 * health-check monitor). pg has no fallback, so prefer means plaintext there.
 */
export function pgClientSsl(t: BackendTls): false | tls.ConnectionOptions {
  switch (t.mode) {
    case 'disable':
    case 'prefer':
      return false;
    case 'require':
      return { rejectUnauthorized: false };
    case 'verify-ca':
      return { rejectUnauthorized: true, checkServerIdentity: () => undefined, ...(t.ca ? { ca: t.ca } : {}) };
    case 'verify-full':
      return { rejectUnauthorized: true, ...(t.ca ? { ca: t.ca } : {}) };
  }
}

// ---- per-configuration contexts ---------------------------------------------------------
//
// Built state is keyed by the settings that produce it (not by the Config object: RELOAD
// copies the configuration), and replaced only by a successful reloadTls(). A reload whose
// files are bad therefore leaves the running contexts in place.

const clientContexts = new Map<string, ClientTls | null>();
const backendContexts = new Map<string, BackendTls>();

function clientContextKey(cfg: Config): string {
  if (cfg.clientTls === 'disable') return 'disable';
  return JSON.stringify([cfg.clientTlsCertFile, cfg.clientTlsKeyFile, cfg.clientTlsCaFile, cfg.clientTlsMinVersion, cfg.clientTlsCiphers]);
}

function backendKey(cfg: Config): string {
  return JSON.stringify([cfg.serverTls, cfg.serverTls === 'disable' ? null : cfg.serverTlsCaFile]);
}

function buildClientTlsFor(cfg: Config): ClientTls | null {
  if (cfg.clientTls === 'disable') return null;
  if (cfg.clientTlsCertFile === null) throw new TlsConfigError('client_tls_cert_file', `client_tls ${cfg.clientTls} needs a certificate`);
  if (cfg.clientTlsKeyFile === null) throw new TlsConfigError('client_tls_key_file', `client_tls ${cfg.clientTls} needs a private key`);
  return buildClientTls({
    certFile: cfg.clientTlsCertFile,
    keyFile: cfg.clientTlsKeyFile,
    caFile: cfg.clientTlsCaFile,
    minVersion: cfg.clientTlsMinVersion,
    ciphers: cfg.clientTlsCiphers,
  });
}

/** The client-side context for this configuration (null when client_tls is disable). */
export function clientTlsFor(cfg: Config): ClientTls | null {
  const key = clientContextKey(cfg);
  let s = clientContexts.get(key);
  if (s === undefined) {
    s = buildClientTlsFor(cfg);
    clientContexts.set(key, s);
  }
  return s;
}

/** The backend-side TLS settings (CA read) for this configuration. */
export function backendTlsFor(cfg: Config): BackendTls {
  const key = backendKey(cfg);
  let b = backendContexts.get(key);
  if (b === undefined) {
    b = buildBackendTls(cfg.serverTls, cfg.serverTlsCaFile);
    backendContexts.set(key, b);
  }
  return b;
}

/**
 * Builds both sides' TLS state from the files as they are now (config load, start,
 * RELOAD), replacing what was built for the same settings only when everything succeeds.
 * Throws TlsConfigError naming the key at fault.
 */
export function reloadTls(cfg: Config): void {
  const client = buildClientTlsFor(cfg);
  const backend = buildBackendTls(cfg.serverTls, cfg.serverTlsCaFile);
  clientContexts.set(clientContextKey(cfg), client);
  backendContexts.set(backendKey(cfg), backend);
}
