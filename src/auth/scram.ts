/**
 * SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it.
 *
 * Pure state machines, no I/O:
 *  - ScramServerSession: pgmux authenticating a client against a stored verifier
 *    (mirrors src/backend/libpq/auth-scram.c).
 *  - ScramClientSession: pgmux logging in to a backend, either with a password or
 *    with stored ClientKey/ServerKey (mirrors src/interfaces/libpq/fe-auth-scram.c).
 *
 * Channel binding (SCRAM-SHA-256-PLUS) is not supported yet: the server rejects a
 * 'p=' gs2 header and the client always sends 'n,,'.
 */
import { createHash, createHmac, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
export const SCRAM_DEFAULT_ITERATIONS = 4096;
const SCRAM_KEY_LEN = 32; // SHA-256 output
const SCRAM_DEFAULT_SALT_LEN = 16;
const SCRAM_RAW_NONCE_LEN = 18; // PostgreSQL's SCRAM_RAW_NONCE_LEN
/** Client-side cap on the iteration count a server may demand (each new password pays for it once). */
const SCRAM_DEFAULT_MAX_ITERATIONS = 1_000_000;

export class ScramError extends Error {
  override name = 'ScramError';
}

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

// ---------------------------------------------------------------------------
// Primitives

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/** Synchronous PBKDF2: tools and tests only. Logins derive with deriveScramKeys (threadpool) and cache (scramCache.ts). */
function saltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(saslprep(password), 'utf8'), salt, iterations, SCRAM_KEY_LEN, 'sha256');
}

/** What a password, salt and iteration count give: all a login needs, on either side. */
export interface ScramKeys {
  clientKey: Buffer;
  serverKey: Buffer;
  storedKey: Buffer;
}

function keysFromSalted(salted: Buffer): ScramKeys {
  const clientKey = hmac(salted, 'Client Key');
  return { clientKey, serverKey: hmac(salted, 'Server Key'), storedKey: sha256(clientKey) };
}

/** PBKDF2 on libuv's threadpool: 4,096 iterations and up must not stall every other client. */
export function deriveScramKeys(password: string, salt: Buffer, iterations: number): Promise<ScramKeys> {
  return new Promise((resolve, reject) => {
    pbkdf2(Buffer.from(saslprep(password), 'utf8'), salt, iterations, SCRAM_KEY_LEN, 'sha256', (err, salted) => {
      if (err) reject(err);
      else resolve(keysFromSalted(salted));
    });
  });
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 decode (padding required); null when malformed. */
function decodeBase64(s: string): Buffer | null {
  if (!BASE64_RE.test(s)) return null;
  return Buffer.from(s, 'base64');
}

/** RFC 5802 "printable": %x21-2B / %x2D-7E (printable ASCII except ','). */
function isPrintable(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

function randomNonce(bytes: number): string {
  // base64 only yields printable characters other than ','.
  return randomBytes(bytes).toString('base64');
}

// ---------------------------------------------------------------------------
// SASLprep (RFC 4013)

/* RFC 3454 C.1.2: non-ASCII space characters, mapped to SPACE. */
const NON_ASCII_SPACE = /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000]/gu;
/* RFC 3454 B.1: commonly mapped to nothing. */
const MAPPED_TO_NOTHING = /[\u00AD\u034F\u1806\u180B-\u180D\u200C\u200D\u2060\uFE00-\uFE0F\uFEFF]/gu;
/* RFC 4013 2.3 prohibited output: C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8, C.9,
 * plus unassigned code points (A.1, approximated with the engine's \p{Cn}). */
const PROHIBITED =
  /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000\u0000-\u001F\u007F\u0080-\u009F\u06DD\u070F\u180E\u200C\u200D\u2028\u2029\u2060-\u2063\u206A-\u206F\uFEFF\uFFF9-\uFFFD\u{1D173}-\u{1D17A}\uE000-\uF8FF\u{F0000}-\u{FFFFD}\u{100000}-\u{10FFFD}\uFDD0-\uFDEF\u2FF0-\u2FFB\u0340\u0341\u200E\u200F\u202A-\u202E\u{E0001}\u{E0020}-\u{E007F}\p{Cn}]/u;
/* Lone surrogates cannot be encoded as UTF-8 at all. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Password normalisation as PostgreSQL's pg_saslprep() does it, with the fallback
 * PostgreSQL uses: when the password cannot be SASLprep'ed, the raw string is used.
 *
 * Simplifications versus src/common/saslprep.c (documented on purpose):
 *  - pure-ASCII passwords are returned unchanged (PostgreSQL does the same, it does not
 *    even reject ASCII control characters);
 *  - otherwise: C.1.2 -> SPACE, B.1 -> nothing, then NFKC via String.prototype.normalize;
 *    if the result contains a prohibited character the raw password is used instead;
 *  - "unassigned" is judged with the JS engine's Unicode tables (\p{Cn}), which are newer
 *    than the Unicode 3.2 tables PostgreSQL uses, so a character assigned after 3.2 is
 *    normalised here where PostgreSQL would fall back to the raw bytes;
 *  - the RFC 3454 section 6 bidi rule is not checked (JS regexps have no Bidi_Class);
 *    for right-to-left passwords that break it PostgreSQL uses the raw bytes while we
 *    use the NFKC form - for typical RTL text both are identical;
 *  - a JS string cannot carry invalid UTF-8, so PostgreSQL's "not valid UTF-8 -> raw
 *    bytes" case only maps to strings with lone surrogates, which are used raw.
 */
export function saslprep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  if (LONE_SURROGATE.test(password)) return password;
  const mapped = password.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '').normalize('NFKC');
  if (PROHIBITED.test(mapped)) return password;
  return mapped;
}

// ---------------------------------------------------------------------------
// Verifiers ("SCRAM secrets" in PostgreSQL's terms)

/** Parse 'SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>'; null when it is not one. */
export function parseScramVerifier(s: string): ScramVerifier | null {
  const m = /^SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(s);
  if (!m) return null;
  const iterations = Number(m[1]);
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > 0x7fffffff) return null;
  const salt = decodeBase64(m[2]!);
  const storedKey = decodeBase64(m[3]!);
  const serverKey = decodeBase64(m[4]!);
  if (!salt || salt.length === 0) return null;
  if (!storedKey || storedKey.length !== SCRAM_KEY_LEN) return null;
  if (!serverKey || serverKey.length !== SCRAM_KEY_LEN) return null;
  return { iterations, salt, storedKey, serverKey };
}

/** Build a verifier the way PostgreSQL's scram_build_secret() does (default 4096 iterations, 16-byte random salt). */
export function makeScramVerifier(password: string, opts: { salt?: Buffer; iterations?: number } = {}): ScramVerifier {
  const iterations = opts.iterations ?? SCRAM_DEFAULT_ITERATIONS;
  if (!Number.isSafeInteger(iterations) || iterations < 1) throw new RangeError(`invalid SCRAM iteration count: ${iterations}`);
  const salt = opts.salt ?? randomBytes(SCRAM_DEFAULT_SALT_LEN);
  if (salt.length === 0) throw new RangeError('SCRAM salt must not be empty');
  const k = keysFromSalted(saltedPassword(password, salt, iterations));
  return { iterations, salt: Buffer.from(salt), storedKey: k.storedKey, serverKey: k.serverKey };
}

export function formatScramVerifier(v: ScramVerifier): string {
  return (
    `${SCRAM_MECHANISM}$${v.iterations}:${v.salt.toString('base64')}` +
    `$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`
  );
}

// ---------------------------------------------------------------------------
// Message parsing

/**
 * Split a SCRAM message body into attribute/value pairs, in order.
 * Every element must look like '<letter>=<value>'.
 */
function parseAttributes(msg: string, what: string): Array<[string, string]> {
  if (msg.length === 0) throw new ScramError(`malformed SCRAM message: empty ${what}`);
  return msg.split(',').map((part) => {
    if (!/^[A-Za-z]=/.test(part)) throw new ScramError(`malformed SCRAM message: invalid attribute in ${what}`);
    return [part[0]!, part.slice(2)] as [string, string];
  });
}

function expectAttr(attrs: Array<[string, string]>, index: number, name: string, what: string): string {
  const a = attrs[index];
  if (!a || a[0] !== name) throw new ScramError(`malformed SCRAM message: expected attribute "${name}" in ${what}`);
  return a[1];
}

/** RFC 5802 saslname encoding: '=' -> '=3D', ',' -> '=2C'. */
function encodeSaslName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

// ---------------------------------------------------------------------------
// Server side

type ServerState = 'init' | 'first-sent' | 'done';

/**
 * tls-server-end-point channel-binding data (RFC 5929 section 4.1): the hash of the server's
 * DER certificate with its signature's hash, MD5 and SHA-1 replaced by SHA-256.
 */
export function tlsServerEndPoint(certDer: Buffer): Buffer {
  // The signature algorithm OIDs, as DER, looked up in the certificate bytes.
  const has = (hex: string) => certDer.includes(Buffer.from(hex, 'hex'));
  let alg = 'sha256';
  if (has('06092a864886f70d01010c') || has('06082a8648ce3d040303')) alg = 'sha384';
  else if (has('06092a864886f70d01010d') || has('06082a8648ce3d040304')) alg = 'sha512';
  return createHash(alg).update(certDer).digest();
}

/** Server side (pgmux towards a client). One instance per login attempt. */
export class ScramServerSession {
  private state: ServerState = 'init';
  private readonly nonceBytes: number;
  private readonly fixedNonce: string | undefined;
  private cbindFlag: 'n' | 'y' | 'p' = 'n';
  /** gs2 header as the client sent it (its base64, plus binding data, comes back in c=). */
  private gs2Header = '';
  private readonly channelBinding: Buffer | null;
  private readonly plus: boolean;
  private clientFirstBare = '';
  private serverFirst = '';
  private fullNonce = '';

  /**
   * @param opts.nonceBytes raw random bytes in the server nonce part (default 18, like PostgreSQL)
   * @param opts.nonce      fixed server nonce part, for tests only (must be printable, no ',')
   */
  constructor(
    private readonly verifier: ScramVerifier,
    opts: {
      nonceBytes?: number;
      nonce?: string;
      /**
       * tls-server-end-point data (RFC 5929) when the client is on TLS: the server offers
       * SCRAM-SHA-256-PLUS, and a client that supports binding must use it.
       */
      channelBinding?: Buffer | null;
      /** The mechanism the client chose. */
      mechanism?: 'SCRAM-SHA-256' | 'SCRAM-SHA-256-PLUS';
    } = {},
  ) {
    this.channelBinding = opts.channelBinding ?? null;
    this.plus = opts.mechanism === 'SCRAM-SHA-256-PLUS';
    if (this.plus && this.channelBinding === null) throw new ScramError('SCRAM-SHA-256-PLUS needs a TLS connection');
    this.nonceBytes = opts.nonceBytes ?? SCRAM_RAW_NONCE_LEN;
    if (!Number.isInteger(this.nonceBytes) || this.nonceBytes < 1) throw new RangeError('nonceBytes must be >= 1');
    if (opts.nonce !== undefined && (opts.nonce.length === 0 || !isPrintable(opts.nonce))) {
      throw new RangeError('fixed SCRAM nonce must be non-empty printable ASCII without ","');
    }
    this.fixedNonce = opts.nonce;
  }

  /**
   * Body of SASLInitialResponse's data (client-first-message). Returns server-first-message,
   * or throws ScramError with a message fit for a client.
   */
  handleClientFirst(clientFirst: string): string {
    if (this.state !== 'init') throw new ScramError('unexpected SCRAM client-first-message');
    this.state = 'done'; // any failure below ends the exchange

    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    const flag = clientFirst[0];
    let rest: string;
    if (flag === 'p') {
      if (!this.plus) {
        throw new ScramError(
          'The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.',
        );
      }
      if (!clientFirst.startsWith('p=tls-server-end-point,')) {
        throw new ScramError('unsupported SCRAM channel-binding type (only tls-server-end-point is supported)');
      }
      this.cbindFlag = 'p';
      rest = clientFirst.slice('p=tls-server-end-point,'.length);
    } else if (this.plus) {
      throw new ScramError('The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.');
    } else if ((flag === 'n' || flag === 'y') && clientFirst[1] === ',') {
      // 'y': the client supports channel binding but thinks the server does not. When we
      // offered SCRAM-SHA-256-PLUS that is a downgrade attempt (as PostgreSQL judges it).
      if (flag === 'y' && this.channelBinding !== null) {
        throw new ScramError('SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the server does not; this server does.');
      }
      this.cbindFlag = flag;
      rest = clientFirst.slice(2);
    } else {
      throw new ScramError('malformed SCRAM message: unexpected channel-binding flag in client-first-message');
    }
    if (rest.startsWith('a=')) throw new ScramError('client uses authorization identity, but it is not supported');
    if (rest[0] !== ',') throw new ScramError('malformed SCRAM message: unexpected attribute in client-first-message');
    const bare = rest.slice(1);
    this.gs2Header = clientFirst.slice(0, clientFirst.length - bare.length);

    const attrs = parseAttributes(bare, 'client-first-message');
    if (attrs[0]?.[0] === 'm') throw new ScramError('client requires an unsupported SCRAM extension');
    // The user name is ignored, as PostgreSQL does: the startup packet's user counts.
    expectAttr(attrs, 0, 'n', 'client-first-message');
    const clientNonce = expectAttr(attrs, 1, 'r', 'client-first-message');
    if (clientNonce.length === 0) throw new ScramError('malformed SCRAM message: empty nonce in client-first-message');
    if (!isPrintable(clientNonce)) throw new ScramError('non-printable characters in SCRAM nonce');
    // Any further attributes are extensions, ignored (as PostgreSQL does).

    const serverNonce = this.fixedNonce ?? randomNonce(this.nonceBytes);
    this.clientFirstBare = bare;
    this.fullNonce = clientNonce + serverNonce;
    this.serverFirst = `r=${this.fullNonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'first-sent';
    return this.serverFirst;
  }

  /**
   * Body of SASLResponse (client-final-message). Returns { ok, serverFinal }.
   * ok=true: the proof verified, serverFinal is 'v=<ServerSignature>' (send it in
   * AuthenticationSASLFinal) and clientKey is the recovered ClientKey.
   * ok=false: wrong password; serverFinal is 'e=invalid-proof' (PostgreSQL sends an
   * ErrorResponse 28P01 instead of a server-final-message in that case).
   * Malformed messages / nonce mismatch throw ScramError.
   */
  handleClientFinal(clientFinal: string): { ok: boolean; serverFinal: string; clientKey?: Buffer } {
    if (this.state !== 'first-sent') throw new ScramError('unexpected SCRAM client-final-message');
    this.state = 'done';

    const attrs = parseAttributes(clientFinal, 'client-final-message');
    const cbind = expectAttr(attrs, 0, 'c', 'client-final-message');
    // Without channel binding the value is base64 of the gs2 header: 'n,,' -> biws, 'y,,' -> eSws;
    // with it, base64 of the gs2 header followed by the binding data.
    const expectedCbind =
      this.cbindFlag === 'p'
        ? Buffer.concat([Buffer.from(this.gs2Header), this.channelBinding!]).toString('base64')
        : this.cbindFlag === 'n'
          ? 'biws'
          : 'eSws';
    if (cbind !== expectedCbind) {
      throw new ScramError('unexpected SCRAM channel-binding attribute in client-final-message');
    }
    const nonce = expectAttr(attrs, 1, 'r', 'client-final-message');
    if (nonce !== this.fullNonce) throw new ScramError('SCRAM nonce mismatch');

    const last = attrs[attrs.length - 1]!;
    if (attrs.length < 3 || last[0] !== 'p') {
      throw new ScramError('malformed SCRAM message: could not find proof in client-final-message');
    }
    for (let i = 2; i < attrs.length - 1; i++) {
      if (attrs[i]![0] === 'p') throw new ScramError('malformed SCRAM message: garbage at end of client-final-message');
    }
    const proof = decodeBase64(last[1]);
    if (!proof || proof.length !== SCRAM_KEY_LEN) {
      throw new ScramError('malformed SCRAM message: malformed proof in client-final-message');
    }

    const withoutProof = clientFinal.slice(0, clientFinal.length - last[1].length - 3); // strip ',p=<proof>'
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;

    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    const ok = timingSafeEqual(sha256(clientKey), this.verifier.storedKey);
    if (!ok) return { ok: false, serverFinal: 'e=invalid-proof' };
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: `v=${serverSignature.toString('base64')}`, clientKey };
  }
}

// ---------------------------------------------------------------------------
// Client side

type ClientState = 'init' | 'first-sent' | 'keys-needed' | 'final-sent' | 'done';

/** Where a client session gets and keeps derived keys (scramCache.ts's ScramKeyCache). */
export interface ScramKeySource {
  get(password: string, salt: Buffer, iterations: number): ScramKeys | undefined;
  derive(password: string, salt: Buffer, iterations: number): Promise<ScramKeys>;
  set(password: string, salt: Buffer, iterations: number, keys: ScramKeys): void;
}

/** Stored keys that let pgmux log in without the password (the client's recovered ClientKey + the verifier's ServerKey). */
export interface ScramStoredKeys {
  clientKey: Buffer;
  serverKey: Buffer;
}

/** Client side (pgmux towards a backend). */
export class ScramClientSession {
  private state: ClientState = 'init';
  private readonly clientNonce: string;
  private readonly user: string;
  private readonly maxIterations: number;
  private expectedServerSignature: Buffer | null = null;
  private serverFirst = '';
  private serverNonce = '';
  /** Keys derived for this login: cached once the server proves it knows the same password. */
  private learned: { cache: ScramKeySource; salt: Buffer; iterations: number; keys: ScramKeys } | null = null;

  /**
   * @param secret the password, or { clientKey, serverKey } to log in with stored keys. With stored
   *   keys the backend's verifier must have been built from the same salt/iterations.
   * @param opts.nonce         fixed client nonce, for tests only (printable, no ',')
   * @param opts.user          user name sent in client-first (default '', like libpq; the server ignores it)
   * @param opts.maxIterations refuse servers demanding more PBKDF2 iterations (default 1,000,000; 0 = no limit)
   */
  constructor(
    private readonly secret: string | ScramStoredKeys,
    opts: { nonce?: string; user?: string; maxIterations?: number } = {},
  ) {
    if (typeof secret !== 'string') {
      if (secret.clientKey.length !== SCRAM_KEY_LEN || secret.serverKey.length !== SCRAM_KEY_LEN) {
        throw new RangeError('SCRAM ClientKey and ServerKey must be 32 bytes');
      }
    }
    if (opts.nonce !== undefined && (opts.nonce.length === 0 || !isPrintable(opts.nonce))) {
      throw new RangeError('fixed SCRAM nonce must be non-empty printable ASCII without ","');
    }
    this.clientNonce = opts.nonce ?? randomNonce(SCRAM_RAW_NONCE_LEN);
    this.user = opts.user ?? '';
    this.maxIterations = opts.maxIterations ?? SCRAM_DEFAULT_MAX_ITERATIONS;
  }

  private get clientFirstBare(): string {
    return `n=${encodeSaslName(this.user)},r=${this.clientNonce}`;
  }

  /** client-first-message: 'n,,n=,r=<nonce>' (PostgreSQL sends an empty user name). */
  clientFirst(): string {
    if (this.state !== 'init') throw new ScramError('SCRAM client-first-message already sent');
    this.state = 'first-sent';
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes the AuthenticationSASLContinue data, returns the client-final-message (PBKDF2 inline: tests and tools). */
  handleServerFirst(serverFirst: string): string {
    const first = this.readServerFirst(serverFirst);
    const keys = typeof this.secret === 'string' ? keysFromSalted(saltedPassword(this.secret, first.salt, first.iterations)) : this.secret;
    return this.clientFinal(keys);
  }

  /**
   * Takes the AuthenticationSASLContinue data. The client-final-message comes at once with
   * stored keys or keys the cache holds, else once the threadpool derived them; keys derived
   * from the password are cached only when the server's signature verifies.
   */
  respondToServerFirst(serverFirst: string, cache: ScramKeySource): string | Promise<string> {
    const first = this.readServerFirst(serverFirst);
    const password = this.secret;
    if (typeof password !== 'string') return this.clientFinal(password);
    const hit = cache.get(password, first.salt, first.iterations);
    if (hit !== undefined) return this.clientFinal(hit);
    return cache.derive(password, first.salt, first.iterations).then((keys) => {
      this.learned = { cache, salt: first.salt, iterations: first.iterations, keys };
      return this.clientFinal(keys);
    });
  }

  /** Checks server-first-message; the salt and iteration count say which keys the proof needs. */
  private readServerFirst(serverFirst: string): { salt: Buffer; iterations: number } {
    if (this.state !== 'first-sent') throw new ScramError('unexpected SCRAM server-first-message');
    this.state = 'done';

    const attrs = parseAttributes(serverFirst, 'server-first-message');
    if (attrs[0]?.[0] === 'm') throw new ScramError('server requires an unsupported SCRAM extension');
    const nonce = expectAttr(attrs, 0, 'r', 'server-first-message');
    if (nonce.length <= this.clientNonce.length || !nonce.startsWith(this.clientNonce) || !isPrintable(nonce)) {
      throw new ScramError('invalid SCRAM response (nonce mismatch)');
    }
    const saltB64 = expectAttr(attrs, 1, 's', 'server-first-message');
    const salt = decodeBase64(saltB64);
    if (!salt || salt.length === 0) throw new ScramError('malformed SCRAM message (invalid salt)');
    const iterText = expectAttr(attrs, 2, 'i', 'server-first-message');
    if (!/^[1-9][0-9]*$/.test(iterText)) throw new ScramError('malformed SCRAM message (invalid iteration count)');
    const iterations = Number(iterText);
    if (!Number.isSafeInteger(iterations) || iterations > 0x7fffffff) {
      throw new ScramError('malformed SCRAM message (invalid iteration count)');
    }
    if (this.maxIterations !== 0 && iterations > this.maxIterations) {
      throw new ScramError(`SCRAM iteration count ${iterations} exceeds the limit of ${this.maxIterations}`);
    }
    if (attrs.length !== 3) throw new ScramError('malformed SCRAM message (garbage at end of server-first-message)');
    this.serverFirst = serverFirst;
    this.serverNonce = nonce;
    this.state = 'keys-needed';
    return { salt, iterations };
  }

  private clientFinal(keys: { clientKey: Buffer; serverKey: Buffer }): string {
    if (this.state !== 'keys-needed') throw new ScramError('unexpected SCRAM server-first-message');
    const withoutProof = `c=biws,r=${this.serverNonce}`;
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientSignature = hmac(sha256(keys.clientKey), authMessage);
    const proof = xor(keys.clientKey, clientSignature);
    this.expectedServerSignature = hmac(keys.serverKey, authMessage);
    this.state = 'final-sent';
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Takes the AuthenticationSASLFinal data; throws ScramError on an 'e=' error or a wrong server signature. */
  verifyServerFinal(serverFinal: string): void {
    if (this.state !== 'final-sent' || !this.expectedServerSignature) {
      throw new ScramError('unexpected SCRAM server-final-message');
    }
    this.state = 'done';
    const attrs = parseAttributes(serverFinal, 'server-final-message');
    if (attrs[0]![0] === 'e') throw new ScramError(`error received from server in SCRAM exchange: ${attrs[0]![1]}`);
    const sigB64 = expectAttr(attrs, 0, 'v', 'server-final-message');
    const sig = decodeBase64(sigB64);
    if (!sig || sig.length !== SCRAM_KEY_LEN) throw new ScramError('malformed SCRAM message (invalid server signature)');
    if (attrs.length !== 1) throw new ScramError('malformed SCRAM message (garbage at end of server-final-message)');
    if (!timingSafeEqual(sig, this.expectedServerSignature)) throw new ScramError('incorrect server signature');
    const l = this.learned;
    if (l !== null && typeof this.secret === 'string') l.cache.set(this.secret, l.salt, l.iterations, l.keys);
  }
}
