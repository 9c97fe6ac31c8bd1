// Authenticates one client against the auth file: trust, cleartext password, md5 or
// SCRAM-SHA-256. Pure message-in / message-out; the session owns the socket.
//
// Like PgBouncer, the method adapts to the stored secret where one method cannot work:
// md5 requested but only a SCRAM verifier stored -> SCRAM; SCRAM requested but only an md5
// hash stored -> md5. An unknown user goes through the same exchange and fails at the end,
// so user names cannot be probed.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { AuthMethod } from '../config/types.js';
import type { AuthEntry } from '../auth/authFile.js';
import { md5Secret, verifyMd5 } from '../auth/md5.js';
import { parseScramVerifier, SCRAM_DEFAULT_ITERATIONS, ScramServerSession, type ScramVerifier } from '../auth/scram.js';
import { plainVerifiers, scramKeyCache } from '../auth/scramCache.js';
import { AuthCode, authenticationRequest, authenticationSASL, readCstr } from '../protocol/messages.js';
import { pgmuxError, type ErrorSpec } from '../protocol/errors.js';

export type AuthStep =
  | { kind: 'send'; message: Buffer }
  | {
      kind: 'ok';
      message?: Buffer;
      password?: string;
      /**
       * SCRAM against a stored verifier: the ClientKey the client proved and the verifier's
       * ServerKey, enough to log in to a backend holding the same verifier (pass-through).
       */
      clientKey?: Buffer;
      serverKey?: Buffer;
    }
  | { kind: 'fail'; error: ErrorSpec }
  /** PBKDF2 runs on the threadpool (a password's first login): the step comes later. */
  | { kind: 'wait'; next: Promise<AuthStep> };

type Phase = 'password' | 'md5' | 'sasl-initial' | 'sasl-final' | 'done';

/**
 * Verifiers by auth entry object: an entry lives until RELOAD or a new auth_query result
 * replaces it, so a repeat login skips parsing (and the HMAC that keys plainVerifiers).
 */
const verifierByEntry = new WeakMap<AuthEntry, ScramVerifier>();

function verifierFor(entry: AuthEntry): ScramVerifier | Promise<ScramVerifier> {
  const known = verifierByEntry.get(entry);
  if (known !== undefined) return known;
  const v = entry.kind === 'scram' ? parseScramVerifier(entry.secret)! : plainVerifiers.verifierFor(entry.user, entry.secret);
  if (v instanceof Promise) return v.then((ready) => (verifierByEntry.set(entry, ready), ready));
  verifierByEntry.set(entry, v);
  return v;
}

/**
 * A verifier nobody can satisfy, for unknown users: random keys (no password behind them,
 * so no PBKDF2), and a salt fixed per user name, so asking twice does not tell an unknown
 * user from a known one.
 */
const dummyKeySeed = randomBytes(32);
function dummyVerifier(user: string): ScramVerifier {
  const salt = createHash('sha256').update(dummyKeySeed).update(user).digest().subarray(0, 16);
  return { iterations: SCRAM_DEFAULT_ITERATIONS, salt, storedKey: randomBytes(32), serverKey: randomBytes(32) };
}

export class ClientAuthenticator {
  private phase: Phase = 'done';
  private salt = Buffer.alloc(0);
  private scram: ScramServerSession | null = null;
  private verifier: ScramVerifier | Promise<ScramVerifier> | null = null;

  constructor(
    private method: AuthMethod,
    private user: string,
    private entry: AuthEntry | undefined,
    /** tls-server-end-point data when the client is on TLS: SCRAM-SHA-256-PLUS is offered. */
    private channelBinding: Buffer | null = null,
  ) {}

  start(): AuthStep {
    const entry = this.entry;
    let method = this.method;
    if (method === 'trust') return { kind: 'ok' };
    if (method === 'md5' && entry?.kind === 'scram') method = 'scram-sha-256';
    else if (method === 'scram-sha-256' && entry?.kind === 'md5') method = 'md5';
    switch (method) {
      case 'password':
        this.phase = 'password';
        return { kind: 'send', message: authenticationRequest(AuthCode.CleartextPassword) };
      case 'md5':
        this.phase = 'md5';
        this.salt = randomBytes(4);
        return { kind: 'send', message: authenticationRequest(AuthCode.MD5Password, this.salt) };
      default:
        this.phase = 'sasl-initial';
        // A plain password's first login starts PBKDF2 now: it runs while the client answers.
        this.verifier = entry ? verifierFor(entry) : dummyVerifier(this.user);
        if (this.verifier instanceof Promise) this.verifier.catch(() => {});
        return {
          kind: 'send',
          message: authenticationSASL(this.channelBinding ? ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'] : ['SCRAM-SHA-256']),
        };
    }
  }

  /** Handles one PasswordMessage / SASLInitialResponse / SASLResponse body. */
  onPasswordMessage(buf: Buffer, start: number, end: number): AuthStep {
    const failed = (): AuthStep => ({
      kind: 'fail',
      error: pgmuxError('wrongPassword', { args: { user: this.user } }),
    });
    switch (this.phase) {
      case 'password': {
        this.phase = 'done';
        const s = readCstr(buf, start, end);
        if (!s || !this.entry || s[0] === '') return failed();
        const password = s[0];
        const ok = checkPlain(this.entry, password);
        if (typeof ok === 'boolean') return ok ? { kind: 'ok', password } : failed();
        return { kind: 'wait', next: ok.then((yes) => (yes ? { kind: 'ok', password } : failed())) };
      }
      case 'md5': {
        this.phase = 'done';
        const s = readCstr(buf, start, end);
        if (!s || !this.entry) return failed();
        return verifyMd5(this.entry, this.salt, s[0]) ? { kind: 'ok' } : failed();
      }
      case 'sasl-initial': {
        const mech = readCstr(buf, start, end);
        if (!mech || end - mech[1] < 4) return this.protocolError('malformed SASLInitialResponse');
        const plus = mech[0] === 'SCRAM-SHA-256-PLUS' && this.channelBinding !== null;
        if (mech[0] !== 'SCRAM-SHA-256' && !plus) {
          return { kind: 'fail', error: pgmuxError('invalidSaslMechanism', { args: { mechanism: mech[0]! } }) };
        }
        const len = buf.readInt32BE(mech[1]);
        const data = buf.toString('utf8', mech[1] + 4, len < 0 ? mech[1] + 4 : Math.min(end, mech[1] + 4 + len));
        const v = this.verifier!;
        if (v instanceof Promise) return { kind: 'wait', next: v.then((ready) => this.serverFirst(ready, data, plus)) };
        return this.serverFirst(v, data, plus);
      }
      case 'sasl-final': {
        this.phase = 'done';
        try {
          const r = this.scram!.handleClientFinal(buf.toString('utf8', start, end));
          if (!r.ok || !this.entry) return failed();
          const step: AuthStep = { kind: 'ok', message: authenticationRequest(AuthCode.SASLFinal, Buffer.from(r.serverFinal)) };
          if (this.entry.kind === 'scram' && r.clientKey) {
            step.clientKey = r.clientKey;
            step.serverKey = (this.verifier as ScramVerifier).serverKey;
          }
          return step;
        } catch (err) {
          return this.protocolError((err as Error).message);
        }
      }
      default:
        return this.protocolError('unexpected password message');
    }
  }

  /** SASLInitialResponse, once the verifier is there. */
  private serverFirst(verifier: ScramVerifier, data: string, plus: boolean): AuthStep {
    this.verifier = verifier;
    try {
      this.scram = new ScramServerSession(verifier, {
        channelBinding: this.channelBinding,
        mechanism: plus ? 'SCRAM-SHA-256-PLUS' : 'SCRAM-SHA-256',
      });
      const serverFirst = this.scram.handleClientFirst(data);
      this.phase = 'sasl-final';
      return { kind: 'send', message: authenticationRequest(AuthCode.SASLContinue, Buffer.from(serverFirst)) };
    } catch (err) {
      return this.protocolError((err as Error).message);
    }
  }

  private protocolError(detail: string): AuthStep {
    this.phase = 'done';
    return { kind: 'fail', error: pgmuxError('malformedAuthMessage', { detail }) };
  }
}

/** A cleartext password against the stored secret; against a SCRAM verifier PBKDF2 may have to run first. */
function checkPlain(entry: AuthEntry, password: string): boolean | Promise<boolean> {
  switch (entry.kind) {
    case 'plain':
      return safeEqual(entry.secret, password);
    case 'md5':
      return safeEqual(entry.secret, md5Secret(entry.user, password));
    case 'scram': {
      const v = parseScramVerifier(entry.secret);
      if (!v) return false;
      const hit = scramKeyCache.get(password, v.salt, v.iterations);
      if (hit !== undefined) return timingSafeEqual(hit.storedKey, v.storedKey);
      return scramKeyCache.derive(password, v.salt, v.iterations).then((keys) => {
        if (!timingSafeEqual(keys.storedKey, v.storedKey)) return false;
        scramKeyCache.set(password, v.salt, v.iterations, keys);
        return true;
      });
    }
  }
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
