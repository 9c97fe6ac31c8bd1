// The SCRAM key cache: a login costs HMACs after a password's first one, a changed
// password, salt or iteration count misses, the cache stays bounded, and the keys it
// hands out are the ones PBKDF2 gives.
import { describe, expect, it } from 'vitest';
import { makeScramVerifier, ScramClientSession, ScramServerSession } from '../../src/auth/scram.js';
import { PlainVerifiers, ScramKeyCache } from '../../src/auth/scramCache.js';

const salt = Buffer.from('0123456789abcdef');
const ITER = 64;

describe('ScramKeyCache', () => {
  it('derives the keys makeScramVerifier makes, on the threadpool', async () => {
    const cache = new ScramKeyCache();
    const keys = await cache.derive('pencil', salt, ITER);
    const v = makeScramVerifier('pencil', { salt, iterations: ITER });
    expect(keys.storedKey.equals(v.storedKey)).toBe(true);
    expect(keys.serverKey.equals(v.serverKey)).toBe(true);
  });

  it('hit: the same password, salt and iterations come back without another derivation', async () => {
    const cache = new ScramKeyCache();
    expect(cache.get('pw', salt, ITER)).toBeUndefined();
    cache.set('pw', salt, ITER, await cache.derive('pw', salt, ITER));
    expect(cache.derivations).toBe(1);
    expect(cache.get('pw', salt, ITER)?.storedKey.equals(makeScramVerifier('pw', { salt, iterations: ITER }).storedKey)).toBe(true);
  });

  it('miss: a changed password, salt or iteration count', async () => {
    const cache = new ScramKeyCache();
    cache.set('pw', salt, ITER, await cache.derive('pw', salt, ITER));
    expect(cache.get('pw2', salt, ITER)).toBeUndefined();
    expect(cache.get('pw', Buffer.from('fedcba9876543210'), ITER)).toBeUndefined();
    expect(cache.get('pw', salt, ITER + 1)).toBeUndefined();
    // Salt and password are not simply concatenated: moving a byte between them misses too.
    expect(cache.get('wpw', salt.subarray(0, 15), ITER)).toBeUndefined();
  });

  it('derive alone caches nothing: only keys a login proved are kept', async () => {
    const cache = new ScramKeyCache();
    await cache.derive('guess', salt, ITER);
    expect(cache.get('guess', salt, ITER)).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it('concurrent derivations of one password share one PBKDF2 run', async () => {
    const cache = new ScramKeyCache();
    const all = await Promise.all(Array.from({ length: 20 }, () => cache.derive('pw', salt, ITER)));
    expect(cache.derivations).toBe(1);
    expect(new Set(all).size).toBe(1);
    await cache.derive('pw', salt, ITER);
    expect(cache.derivations).toBe(2); // not cached by derive, not in flight any more
  });

  it('bound: the least recently used entry goes first', async () => {
    const cache = new ScramKeyCache(3);
    const k = await cache.derive('x', salt, ITER);
    for (const p of ['a', 'b', 'c']) cache.set(p, salt, ITER, k);
    expect(cache.get('a', salt, ITER)).toBeDefined(); // 'a' is now the most recent
    cache.set('d', salt, ITER, k);
    expect(cache.size).toBe(3);
    expect(cache.get('b', salt, ITER)).toBeUndefined();
    expect(cache.get('a', salt, ITER)).toBeDefined();
    expect(cache.get('c', salt, ITER)).toBeDefined();
    expect(cache.get('d', salt, ITER)).toBeDefined();
  });

  it('a client session keeps derived keys only once the server signature verifies', async () => {
    const cache = new ScramKeyCache();
    const v = makeScramVerifier('right', { salt, iterations: ITER });
    // Wrong password: the server refuses, nothing is cached.
    const bad = new ScramClientSession('wrong');
    const badServer = new ScramServerSession(v);
    const badFinal = await bad.respondToServerFirst(badServer.handleClientFirst(bad.clientFirst()), cache);
    expect(badServer.handleClientFinal(badFinal).ok).toBe(false);
    expect(cache.size).toBe(0);
    // Right password: derived once, cached after verifyServerFinal, then answered at once.
    const first = new ScramClientSession('right');
    const server1 = new ScramServerSession(v);
    const reply = first.respondToServerFirst(server1.handleClientFirst(first.clientFirst()), cache);
    expect(reply).toBeInstanceOf(Promise);
    const r1 = server1.handleClientFinal(await reply);
    expect(r1.ok).toBe(true);
    first.verifyServerFinal(r1.serverFinal);
    expect(cache.size).toBe(1);
    const again = new ScramClientSession('right');
    const server2 = new ScramServerSession(v);
    const reply2 = again.respondToServerFirst(server2.handleClientFirst(again.clientFirst()), cache);
    expect(typeof reply2).toBe('string');
    const r2 = server2.handleClientFinal(reply2 as string);
    expect(r2.ok).toBe(true);
    again.verifyServerFinal(r2.serverFinal);
    expect(cache.derivations).toBe(2);
  });
});

describe('PlainVerifiers', () => {
  it('one verifier per user and password: a repeat login gets it at once, same salt', async () => {
    const keys = new ScramKeyCache();
    const pv = new PlainVerifiers(keys);
    const first = pv.verifierFor('alice', 'pw');
    expect(first).toBeInstanceOf(Promise);
    const v = await first;
    const again = pv.verifierFor('alice', 'pw');
    expect(again).toBe(v);
    expect(keys.derivations).toBe(1);
    expect(v.storedKey.equals(makeScramVerifier('pw', { salt: v.salt, iterations: v.iterations }).storedKey)).toBe(true);
  });

  it('a changed password misses and gets a new salt; a wrong password still fails against the new verifier', async () => {
    const pv = new PlainVerifiers(new ScramKeyCache());
    const old = await pv.verifierFor('alice', 'pw');
    const changed = await pv.verifierFor('alice', 'pw-new');
    expect(changed).not.toBe(old);
    expect(changed.salt.equals(old.salt)).toBe(false);
    const client = new ScramClientSession('pw');
    const server = new ScramServerSession(changed);
    expect(server.handleClientFinal(client.handleServerFirst(server.handleClientFirst(client.clientFirst()))).ok).toBe(false);
  });

  it('bound: users beyond the limit push out the least recently used', async () => {
    const pv = new PlainVerifiers(new ScramKeyCache(), 2);
    await pv.verifierFor('a', 'pw');
    await pv.verifierFor('b', 'pw');
    await pv.verifierFor('c', 'pw');
    expect(pv.size).toBe(2);
  });
});
