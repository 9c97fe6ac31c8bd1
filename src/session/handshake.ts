// A client connection from its first byte to ReadyForQuery: TLS (SSLRequest or direct),
// GSSENC refusal, CancelRequest, the StartupMessage, pg_hba rules, authentication
// (auth file or auth_query) and the welcome PostgreSQL sends after AuthenticationOk. It
// also owns what the connection counts against (unauthenticated, per-user and
// per-database limits) until the connection closes.

import type net from 'node:net';
import pino from 'pino';
import type tls from 'node:tls';
import type { FrameReader } from '../protocol/framer.js';
import {
  authenticationRequest,
  AuthCode,
  backendKeyData,
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  FrontendMsg,
  negotiateProtocolVersion,
  parameterStatus,
  parseStartupParams,
  readyForQuery,
  SSL_REQUEST_CODE,
} from '../protocol/messages.js';
import { PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import type { BackendConnection, NodeAddress } from '../pool/backend.js';
import type { Pool, PoolWaiter } from '../pool/pool.js';
import type { Logger } from '../observability/logger.js';
import type { SessionContext } from './sessionContext.js';
import { clientTlsFor, upgradeDirectTls, upgradeClientSocket } from '../net/tls.js';
import { hbaRefusal, hbaRulesFor, matchHba } from '../auth/hba.js';
import { tlsServerEndPoint } from '../auth/scram.js';
import { ClientAuthenticator, type AuthStep } from './clientAuth.js';
import { isSettableReported, parseStartup, StartupParamError } from './startupParams.js';
import { buildSyncSql, settingsFingerprint, settingsSignature } from './paramSync.js';
import { adminWelcome, type AdminRole } from './adminSession.js';
import { ADMIN_DATABASES, ClientState, type ClientCloseReason } from './clientState.js';
import { knownDatabasesHint, resolveDatabase, type DatabaseTarget } from '../config/databases.js';

const WELCOME_CACHE_LIMIT = 256;
const EMPTY = Buffer.alloc(0);
const AUTH_OK = authenticationRequest(AuthCode.Ok);
/** 'N' to SSLRequest / GSSENCRequest: a Buffer made once, not a string encoded per connection. */
const REFUSED = Buffer.from('N');
type Welcome = ReadonlyArray<readonly [string, string]>;
/**
 * Per cached welcome (the pool's array, one per settings key): its ParameterStatus bytes
 * and the settings fingerprint a client logging in with it starts with, made once.
 */
const welcomeFacts = new WeakMap<Welcome, { bytes: Buffer; fingerprint: string }>();

function factsOf(welcome: Welcome, settings: ReadonlyMap<string, string>): { bytes: Buffer; fingerprint: string } {
  let facts = welcomeFacts.get(welcome);
  if (facts === undefined) {
    facts = {
      bytes: Buffer.concat(welcome.map(([k, v]) => parameterStatus(k, v))),
      fingerprint: settingsFingerprint(new Map(welcome), settings),
    };
    welcomeFacts.set(welcome, facts);
  }
  return facts;
}

/** Who the startup packet says the client is, and the settings it asked for. */
export interface ClientIdentity {
  user: string;
  database: string;
  applicationName: string;
  /** Reported parameters (ParameterStatus names) as the client set them. */
  reported: Map<string, string>;
  /** Unreported settings (statement_timeout, search_path, custom GUCs, ...). */
  settings: Map<string, string>;
}

/** How the login ended: a pooled session with the parameters it was told, or the admin console. */
export type LoggedIn =
  | { kind: 'pooled'; welcome: ReadonlyArray<readonly [string, string]>; fingerprint: string }
  | { kind: 'admin'; role: AdminRole };

/** What the handshake needs from the session that owns the connection. */
export interface HandshakeHost {
  readonly state: ClientState;
  /** The connection's logger (client id; user and database once identified). */
  readonly log: Logger;
  write(data: Buffer | string): void;
  fatal(spec: ErrorSpec, reason: ClientCloseReason): void;
  close(reason: ClientCloseReason): void;
  failWith(err: Error, reason: ClientCloseReason): void;
  /** TLS: the session stops using the plain socket; `upgrade` makes the one it uses from now on. */
  swapSocket(upgrade: (plain: net.Socket) => net.Socket): void;
  identify(who: ClientIdentity): void;
  /** Counts the client against max_client_conn (and gives it a cancel key); false when full. */
  register(): boolean;
  setState(state: ClientState.Auth | ClientState.Login): void;
  /** An async step runs (auth_query lookup, login): messages wait in the reader. */
  suspend(): void;
  /** The lookup ended: handle what waited. */
  resume(): void;
  /** What the client's database and user resolved to (databases section), once per client. */
  resolved(target: DatabaseTarget): void;
  /** The session's pool for its database and user on `node`. */
  poolFor(node: NodeAddress): Pool;
  /** The welcome was written: the session goes Idle (or Admin) and reads on. */
  loggedIn(how: LoggedIn): void;
}

/** Fixed facts about the connection, for logs, pg_hba and BackendKeyData. */
export interface ClientPeer {
  readonly id: number;
  /** IP address; null on a Unix-domain socket (HBA `local` lines, no TLS). */
  readonly address: string | null;
  readonly remote: string;
  /** Proxy-issued cancel key. */
  readonly pid: number;
  readonly secret: number;
}

const ignore = (): void => {};
const loginOverLog = pino({ enabled: false });

/**
 * What a handshake points to once the login is over. The handshake lives as long as the
 * client (it holds the connection-limit admission released at close) but needs nothing of
 * the session any more: dropping the host, the authenticator and the startup maps keeps
 * about 1.5 KiB per idle client unreachable (memory per idle client, issue #14).
 */
const LOGIN_OVER: HandshakeHost = {
  state: ClientState.Closed,
  log: loginOverLog,
  write: ignore,
  fatal: ignore,
  close: ignore,
  failWith: ignore,
  swapSocket: ignore,
  identify: ignore,
  register: () => false,
  setState: ignore,
  suspend: ignore,
  resume: ignore,
  resolved: ignore,
  poolFor: () => {
    throw new Error('pgmux: the login is over');
  },
  loggedIn: ignore,
};

export class ClientHandshake {
  /** The TLS socket once the connection is encrypted (its certificate feeds channel binding). */
  private tlsSocket: tls.TLSSocket | null = null;
  private auth: ClientAuthenticator | null = null;
  private user = '';
  private database = '';
  private applicationName = '';
  // The same maps the session holds: finishLogin() completes `reported` with the database's defaults.
  private reported = new Map<string, string>();
  private settings = new Map<string, string>();
  /** Counted in limits.unauthenticated until authentication ends. */
  private unauthenticated = true;
  /** Counted against max_db_connections / max_user_connections. */
  private admitted = false;
  /**
   * AuthenticationOk (after SASLFinal for SCRAM), not written yet: it goes out with the
   * welcome in one write, as PgBouncer sends it (one syscall fewer per login).
   */
  private authOk: Buffer | null = null;
  /** Waiting for a backend to learn what this client's settings report. */
  private loginWait: { pool: Pool; waiter: PoolWaiter } | null = null;

  constructor(
    private readonly ctx: SessionContext,
    private host: HandshakeHost,
    private readonly reader: FrameReader,
    private readonly peer: ClientPeer,
  ) {
    ctx.limits.unauthenticated++;
  }

  /** The connection closed: nothing it waits for or counts against stays behind. */
  release(): void {
    if (this.loginWait !== null) {
      this.loginWait.pool.cancelWait(this.loginWait.waiter);
      this.loginWait = null;
    }
    this.leaveUnauthenticated();
    if (this.admitted) {
      this.admitted = false;
      this.ctx.limits.release(this.user, this.database);
    }
  }

  /** Authentication is over (or the connection is): one fewer connection logging in. */
  private leaveUnauthenticated(): void {
    if (!this.unauthenticated) return;
    this.unauthenticated = false;
    this.ctx.limits.unauthenticated--;
  }

  // ---- startup packets ----------------------------------------------------------------

  /** An untyped packet in state Startup: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage. */
  onStartupPacket(buf: Buffer, start: number, end: number): void {
    const host = this.host;
    const code = end - start >= 8 ? buf.readInt32BE(start + 4) : 0;
    if (code === SSL_REQUEST_CODE) {
      this.onSslRequest();
      return;
    }
    if (code === GSSENC_REQUEST_CODE) {
      // GSS encryption is not offered: 'N' lets the client go on (TLS or plaintext).
      host.write(REFUSED);
      return;
    }
    if (code === CANCEL_REQUEST_CODE) {
      if (end - start === 16) this.ctx.registry.cancel(buf.readInt32BE(start + 8), buf.readInt32BE(start + 12));
      host.close('cancel_request');
      return;
    }
    // As in PgBouncer and PostgreSQL, TLS is for the network: a Unix-domain socket client
    // never needs it (and could not get it, see onSslRequest).
    if (this.tlsSocket === null && this.peer.address !== null && this.ctx.config().clientTls === 'require') {
      host.fatal(
        pgmuxError('tlsRequired'),
        'protocol_error',
      );
      return;
    }
    if (code >>> 16 !== 3) {
      host.fatal(pgmuxError('unsupportedProtocol', { detail: `client asked for protocol ${code >>> 16}.${code & 0xffff}; pgmux speaks 3.0` }), 'protocol_error');
      return;
    }
    const params = parseStartupParams(buf, start + 8, end);
    if (params === null) {
      host.fatal(pgmuxError('invalidStartupLayout'), 'protocol_error');
      return;
    }
    let req;
    try {
      req = parseStartup(params);
    } catch (err) {
      if (err instanceof StartupParamError) {
        host.fatal(err.spec, 'protocol_error');
        return;
      }
      throw err;
    }
    this.reader.setTyped(true);
    if ((code & 0xffff) > 0 || req.protocolOptions.length > 0) {
      host.write(negotiateProtocolVersion(0, req.protocolOptions));
    }
    if (!req.user) {
      host.fatal(pgmuxError('missingUser'), 'protocol_error');
      return;
    }
    if (req.replication !== null && req.replication !== 'false' && req.replication !== 'off' && req.replication !== '0') {
      host.fatal(
        pgmuxError('replicationNotSupported'),
        'protocol_error',
      );
      return;
    }
    this.user = req.user;
    this.database = req.database;
    for (const [k, v] of req.settings) {
      if (k === 'application_name') this.applicationName = v;
      // Reported names come back canonical from parseStartup (e.g. 'TimeZone').
      if (isSettableReported(k)) {
        this.reported.set(k, v);
      } else {
        this.settings.set(k, v);
      }
    }
    host.identify({ user: this.user, database: this.database, applicationName: this.applicationName, reported: this.reported, settings: this.settings });
    const cfg = this.ctx.config();
    // pg_hba.conf rules: who may connect, and how they authenticate.
    let method = cfg.auth;
    const rules = hbaRulesFor(cfg);
    if (rules !== null) {
      const q = { ssl: this.tlsSocket !== null, database: this.database, user: this.user, address: this.peer.address };
      const rule = matchHba(rules, q);
      if (rule === null || rule.method === 'reject') {
        this.ctx.stats.clientLoginFailures++;
        host.log.info({ remote: this.peer.remote, hbaLine: rule?.line ?? null }, 'connection refused by hba_file');
        host.fatal(pgmuxError('hbaRefused', { args: { refusal: hbaRefusal(rule, q) } }), 'auth_failed');
        return;
      }
      method = rule.method;
    }
    if (!host.register()) {
      host.fatal(pgmuxError('tooManyClients', { detail: `max_client_conn is ${this.ctx.config().maxClientConn}` }), 'too_many_clients');
      return;
    }
    host.setState(ClientState.Auth);
    const entry = this.ctx.auth.authEntry(this.user);
    if (entry !== undefined || cfg.authUser === null || method === 'trust') {
      this.auth = new ClientAuthenticator(method, this.user, entry, this.channelBinding());
      this.onAuthStep(this.auth.start());
      return;
    }
    // auth_query: fetch the user's secret (primary, else a replica); nothing is read meanwhile.
    host.suspend();
    this.ctx.auth.lookupAuthEntry(this.user).then(
      (found) => {
        if (host.state !== ClientState.Auth) return;
        // An unknown user still goes through the exchange and fails at its end (28P01).
        this.auth = new ClientAuthenticator(method, this.user, found, this.channelBinding());
        this.onAuthStep(this.auth.start());
        host.resume();
      },
      (err: Error) => {
        if (host.state !== ClientState.Auth) return;
        this.ctx.stats.clientLoginFailures++;
        host.fatal(
          pgmuxError('authQueryFailed', { args: { user: this.user }, detail: err.message }),
          'auth_failed',
        );
      },
    );
  }

  /**
   * The reader failed on a startup-phase packet. node-postgres's end() while it is still
   * connecting queues Terminate ahead of the startup packet, so a typed message can sit
   * where a startup packet belongs; its type byte then reads as the high byte of the length
   * (no startup packet is that long). Terminate closes quietly, as PostgreSQL does.
   */
  onStartupFrameError(declaredLength: number): void {
    const type = declaredLength >>> 24;
    if (type === FrontendMsg.Terminate) {
      this.host.close('client_terminate');
      return;
    }
    const letter = (type >= 0x41 && type <= 0x5a) || (type >= 0x61 && type <= 0x7a);
    this.host.fatal(
      letter
        ? pgmuxError('unexpectedStartupMessage', { args: { type: String.fromCharCode(type) } })
        : pgmuxError('invalidStartupLength', { detail: `declared length ${declaredLength}` }),
      'protocol_error',
    );
  }

  // ---- TLS ------------------------------------------------------------------------------

  /**
   * SSLRequest: 'S' and the TLS handshake when client_tls allows it, else 'N'. Bytes sent
   * after the SSLRequest but before the handshake would be read as if they came over TLS:
   * refused, as PostgreSQL does (CVE-2021-23214).
   */
  private onSslRequest(): void {
    const cfg = this.ctx.config();
    const host = this.host;
    if (this.tlsSocket !== null) {
      host.fatal(pgmuxError('sslRequestWhenEncrypted'), 'protocol_error');
      return;
    }
    // PostgreSQL answers 'N' on a Unix-domain socket whatever its ssl setting.
    if (cfg.clientTls === 'disable' || this.peer.address === null) {
      host.write(REFUSED);
      return;
    }
    if (this.reader.pending > 0) {
      host.fatal(
        pgmuxError('unencryptedAfterSslRequest'),
        'protocol_error',
      );
      return;
    }
    let server;
    try {
      server = clientTlsFor(cfg);
    } catch (err) {
      this.host.log.error({ err: (err as Error).message }, 'TLS is configured but unusable');
      server = null;
    }
    if (server === null) {
      host.fatal(pgmuxError('tlsUnavailable'), 'protocol_error');
      return;
    }
    host.write('S');
    host.swapSocket((plain) => (this.tlsSocket = upgradeClientSocket(plain, server, { alpn: true })));
  }

  /** Direct TLS (PostgreSQL 17 clients with sslnegotiation=direct): TLS from the first byte. */
  onDirectTls(first: Buffer): void {
    const cfg = this.ctx.config();
    let server = null;
    try {
      if (this.peer.address !== null) server = clientTlsFor(cfg);
    } catch (err) {
      this.host.log.error({ err: (err as Error).message }, 'TLS is configured but unusable');
    }
    if (server === null) {
      // A TLS client cannot read a plaintext error: just close, as PostgreSQL does.
      this.host.close('protocol_error');
      return;
    }
    this.ctx.stats.bytesIn += first.length;
    this.host.swapSocket((plain) => (this.tlsSocket = upgradeDirectTls(plain, first, server)));
  }

  /** On TLS: the tls-server-end-point binding data of our certificate (SCRAM-SHA-256-PLUS). */
  private channelBinding(): Buffer | null {
    if (this.tlsSocket === null) return null;
    const cert = this.tlsSocket.getCertificate?.();
    const raw = cert && 'raw' in cert ? (cert.raw as Buffer | undefined) : undefined;
    return raw ? tlsServerEndPoint(raw) : null;
  }

  // ---- authentication -------------------------------------------------------------------

  /** A message in state Auth: only the password (or SASL) response belongs here. */
  onAuthMessage(type: number, buf: Buffer, bodyStart: number, end: number): void {
    if (type !== FrontendMsg.Password) {
      this.host.fatal(pgmuxError('unexpectedPasswordMessage', { args: { type: String.fromCharCode(type) } }), 'protocol_error');
      return;
    }
    this.onAuthStep(this.auth!.onPasswordMessage(buf, bodyStart, end));
  }

  private onAuthStep(step: AuthStep): void {
    const host = this.host;
    switch (step.kind) {
      case 'send':
        host.write(step.message);
        return;
      case 'wait':
        host.suspend();
        step.next.then(
          (next) => {
            if (host.state !== ClientState.Auth) return;
            this.onAuthStep(next);
            // 'ok' suspends again until the login is done; 'fail' closed the connection.
            if (next.kind === 'send') host.resume();
          },
          (err: Error) => {
            if (host.state !== ClientState.Auth) return;
            this.ctx.stats.clientLoginFailures++;
            host.failWith(err, 'auth_failed');
          },
        );
        return;
      case 'fail':
        this.ctx.stats.clientLoginFailures++;
        host.log.info({ remote: this.peer.remote, code: step.error.code }, 'client authentication failed');
        host.fatal(step.error, 'auth_failed');
        return;
      case 'ok': {
        this.auth = null;
        this.leaveUnauthenticated();
        // Per-database / per-user limits count authenticated clients only (as PostgreSQL's
        // CONNECTION LIMIT does): nobody can lock a user out without its password.
        const refused = this.ctx.limits.admit(this.user, this.database, this.ctx.config());
        if (refused !== null) {
          host.fatal(refused, 'too_many_clients');
          return;
        }
        this.admitted = true;
        if (step.password !== undefined) this.ctx.auth.learnPassword(this.user, step.password);
        if (step.clientKey && step.serverKey) this.ctx.auth.learnScramKeys(this.user, step.clientKey, step.serverKey);
        this.authOk = step.message ? Buffer.concat([step.message, AUTH_OK]) : AUTH_OK;
        host.setState(ClientState.Login);
        host.suspend();
        this.finishLogin().catch((err: Error) => {
          this.ctx.stats.clientLoginFailures++;
          this.flushAuthOk();
          host.failWith(err, 'login_failed');
        });
        return;
      }
    }
  }

  /**
   * Sends what PostgreSQL sends after AuthenticationOk. The ParameterStatus values come
   * from a real backend carrying this client's settings, so bad settings fail the login
   * with PostgreSQL's own error, as they would on a direct connection. Clients with
   * settings already seen on this pool skip the backend round trip. That backend is the
   * primary's, else a replica's while there is no primary (reads go on during a failover).
   */
  private async finishLogin(): Promise<void> {
    const cfg = this.ctx.config();
    const host = this.host;
    if (ADMIN_DATABASES.includes(this.database)) {
      const { role, welcome } = adminWelcome(this.ctx, this.user, this.applicationName, this.peer.pid, this.peer.secret);
      this.flushAuthOk();
      host.write(welcome);
      host.loggedIn({ kind: 'admin', role });
      this.loginOver();
      return;
    }
    const refusal = this.ctx.admin.loginRefusal(this.database);
    if (refusal !== null) throw new PgmuxError(refusal);
    // After authentication, as PostgreSQL checks it: the hint names no entry to a stranger.
    const target = resolveDatabase(cfg, this.database, this.user);
    if (target === null) {
      throw new PgmuxError(pgmuxError('unknownDatabase', { args: { database: this.database }, hint: knownDatabasesHint(cfg) }));
    }
    host.resolved(target);
    const node = await this.ctx.nodes.loginNode(cfg.failoverTimeoutMs, target.route === 'replica');
    if (host.state !== ClientState.Login) return;
    if (node === null && target.route === 'replica') {
      throw new PgmuxError(pgmuxError('noReplicaForEntry', { detail: `No replica of "${this.database}" answered health checks within failover_timeout (${cfg.failoverTimeoutMs} ms).` }));
    }
    if (node === null) {
      throw new PgmuxError(
        pgmuxError('noNodeAvailable', { detail: `No primary and no replica answered health checks within failover_timeout (${cfg.failoverTimeoutMs} ms).` }),
      );
    }
    const pool = host.poolFor(node);
    const settingsKey = settingsSignature(this.reported) + '\x01' + settingsSignature(this.settings);
    let welcome = pool.welcomeBySettings.get(settingsKey);
    if (welcome === undefined) {
      const b = await new Promise<BackendConnection>((resolve, reject) => {
        this.loginWait = { pool, waiter: { onBackendAcquired: resolve, onAcquireFailed: reject } };
        pool.acquire(this.loginWait.waiter, this.ctx.clock.now);
      });
      this.loginWait = null;
      if (host.state !== ClientState.Login) {
        pool.release(b);
        return;
      }
      // What the client did not set is the database's default, not whatever the
      // backend's previous client left there.
      for (const [k, v] of b.defaults) if (isSettableReported(k) && !this.reported.has(k)) this.reported.set(k, v);
      try {
        const sql = buildSyncSql({ reported: this.reported, settings: this.settings }, b);
        if (sql !== null) await b.runInternal(sql);
      } catch (err) {
        // What pgmux believes this backend carries is now uncertain: never reuse it.
        pool.discard(b, 'reset_failed');
        throw err;
      }
      // pgmux takes writes (they wait for a primary): a login through a replica must not
      // tell the client it reached a standby (libpq's target_session_attrs=read-write
      // reads in_hot_standby, PostgreSQL 14+).
      // A replica-only entry is a standby to its clients, and says so.
      welcome = target.route === 'replica' ? [...b.params] : [...b.params].map(([k, v]): [string, string] => (k === 'in_hot_standby' ? [k, 'off'] : [k, v]));
      pool.release(b);
      if (pool.welcomeBySettings.size >= WELCOME_CACHE_LIMIT) pool.welcomeBySettings.clear();
      pool.welcomeBySettings.set(settingsKey, welcome);
    }
    if (host.state !== ClientState.Login) return;
    const authOk = this.authOk ?? EMPTY;
    this.authOk = null;
    const facts = factsOf(welcome, this.settings);
    host.write(Buffer.concat([authOk, facts.bytes, backendKeyData(this.peer.pid, this.peer.secret), readyForQuery('I')]));
    host.loggedIn({ kind: 'pooled', welcome, fingerprint: facts.fingerprint });
    this.loginOver();
  }

  /** Lets go of everything only the login needed; release() still works. */
  private loginOver(): void {
    this.host = LOGIN_OVER;
    this.auth = null;
    this.tlsSocket = null;
  }

  /** AuthenticationOk goes out on its own when no welcome follows (admin console, failed login). */
  private flushAuthOk(): void {
    if (this.authOk === null || this.host.state === ClientState.Closed) return;
    this.host.write(this.authOk);
    this.authOk = null;
  }
}
