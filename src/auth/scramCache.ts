// Caches what SCRAM's PBKDF2 (4,096 iterations and up) derives from a password, so only a
// password's first login pays for it and it runs on libuv's threadpool, never on the event
// loop: after that, a login costs a few HMACs (as PgBouncer keeps ClientKey/ServerKey).
//
// Entries are keyed by an HMAC of (password, salt, iterations) under a key made at start:
// the cache never holds a plaintext password, and a changed password, salt or iteration
// count (auth file RELOAD, a new auth_query result, ALTER ROLE) is simply a miss.

import { createHmac, randomBytes } from 'node:crypto';
import { deriveScramKeys, SCRAM_DEFAULT_ITERATIONS, type ScramKeys, type ScramVerifier } from './scram.js';

const SCRAM_SALT_LEN = 16;
/** Distinct (password, salt, iterations) kept; each entry is a few hundred bytes. */
const DEFAULT_KEY_LIMIT = 10_000;

/** Never leaves the process: cache keys mean nothing outside it. */
const cacheKeyKey = randomBytes(32);

function cacheKey(password: string, salt: Buffer, iterations: number): string {
  return createHmac('sha256', cacheKeyKey).update(`${iterations}:${salt.length}:`).update(salt).update(password, 'utf8').digest('base64');
}

/** Bounded LRU of derived keys, with concurrent derivations of one password shared. */
export class ScramKeyCache {
  private readonly keys = new Map<string, ScramKeys>();
  private readonly inFlight = new Map<string, Promise<ScramKeys>>();
  /** PBKDF2 runs started (tests and stats: a warm cache leaves this alone). */
  derivations = 0;

  constructor(private readonly limit = DEFAULT_KEY_LIMIT) {}

  get size(): number {
    return this.keys.size;
  }

  get(password: string, salt: Buffer, iterations: number): ScramKeys | undefined {
    const id = cacheKey(password, salt, iterations);
    const hit = this.keys.get(id);
    if (hit !== undefined) {
      // Least recently used first: a hit moves to the end.
      this.keys.delete(id);
      this.keys.set(id, hit);
    }
    return hit;
  }

  /**
   * Derives on the threadpool without caching: only keys a login proved (the client's
   * proof matched, the backend's signature verified) are kept, so wrong guesses cannot
   * evict the right ones.
   */
  derive(password: string, salt: Buffer, iterations: number): Promise<ScramKeys> {
    const id = cacheKey(password, salt, iterations);
    let p = this.inFlight.get(id);
    if (p === undefined) {
      this.derivations++;
      p = deriveScramKeys(password, salt, iterations).finally(() => this.inFlight.delete(id));
      this.inFlight.set(id, p);
    }
    return p;
  }

  /** Keeps keys a login proved. */
  set(password: string, salt: Buffer, iterations: number, keys: ScramKeys): void {
    const id = cacheKey(password, salt, iterations);
    this.keys.delete(id);
    if (this.keys.size >= this.limit) this.keys.delete(this.keys.keys().next().value!);
    this.keys.set(id, keys);
  }
}

/**
 * The verifier pgmux makes up for a user whose secret it holds in cleartext (auth file,
 * auth_query, server password): one salt per user and password, kept, so a repeat login
 * offers the same salt and needs no PBKDF2 at all. A changed password gets a new salt.
 */
export class PlainVerifiers {
  private readonly byUser = new Map<string, { id: string; verifier: ScramVerifier | null; pending: Promise<ScramVerifier> | null }>();

  constructor(
    private readonly keyCache: ScramKeyCache,
    private readonly limit = DEFAULT_KEY_LIMIT,
  ) {}

  get size(): number {
    return this.byUser.size;
  }

  /** The user's verifier now, or a promise of it while its first derivation runs. */
  verifierFor(user: string, password: string): ScramVerifier | Promise<ScramVerifier> {
    const salt0 = Buffer.alloc(0);
    const id = cacheKey(password, salt0, 0);
    const found = this.byUser.get(user);
    if (found !== undefined && found.id === id) {
      this.byUser.delete(user);
      this.byUser.set(user, found);
      return found.verifier ?? found.pending!;
    }
    const salt = randomBytes(SCRAM_SALT_LEN);
    const iterations = SCRAM_DEFAULT_ITERATIONS;
    const entry = { id, verifier: null as ScramVerifier | null, pending: null as Promise<ScramVerifier> | null };
    entry.pending = this.keyCache.derive(password, salt, iterations).then(
      (k) => {
        const v: ScramVerifier = { iterations, salt, storedKey: k.storedKey, serverKey: k.serverKey };
        entry.verifier = v;
        entry.pending = null;
        return v;
      },
      (err: Error) => {
        if (this.byUser.get(user) === entry) this.byUser.delete(user);
        throw err;
      },
    );
    this.byUser.delete(user);
    if (this.byUser.size >= this.limit) this.byUser.delete(this.byUser.keys().next().value!);
    this.byUser.set(user, entry);
    return entry.pending;
  }
}

/** The process's caches: shared by every pgmux instance in it (keys say which password). */
export const scramKeyCache = new ScramKeyCache();
export const plainVerifiers = new PlainVerifiers(scramKeyCache);
