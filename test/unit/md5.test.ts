import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import type { AuthEntry } from '../../src/auth/authFile.js';
import { md5Response, md5Secret, verifyMd5 } from '../../src/auth/md5.js';
import { formatScramVerifier, makeScramVerifier } from '../../src/auth/scram.js';

const require = createRequire(import.meta.url);
// pg's own client-side md5 computation (what node-postgres sends to a server).
const pgUtils = require('pg/lib/crypto/utils.js') as {
  postgresMd5PasswordHash(user: string, password: string, salt: Buffer): Promise<string>;
};

const md5hex = (s: string | Buffer) => createHash('md5').update(s).digest('hex');
const salt = Buffer.from([0x01, 0x02, 0xfe, 0xff]);

describe('md5Secret', () => {
  it('is md5 + hex(md5(password + user))', () => {
    expect(md5Secret('postgres', 'postgres')).toBe('md5' + md5hex('postgrespostgres'));
    expect(md5Secret('postgres', 'postgres')).toBe('md53175bce1d3201d16594cebf9d7eb3f9d');
  });

  it('matches a PostgreSQL-generated md5 secret (role carol, password secret)', () => {
    expect(md5Secret('carol', 'secret')).toBe('md57c53eaf86052083b816bfc7c7a6edf5d');
  });

  it('hashes UTF-8 bytes', () => {
    expect(md5Secret('jörg', 'pässword')).toBe('md5' + md5hex(Buffer.from('pässwordjörg', 'utf8')));
  });
});

describe('md5Response', () => {
  it('is md5 + hex(md5(hex_part + salt)), from a password or a stored secret', () => {
    const inner = md5hex('postgrespostgres');
    const expected = 'md5' + md5hex(Buffer.concat([Buffer.from(inner), salt]));
    expect(md5Response({ user: 'postgres', secret: 'postgres', kind: 'plain' }, salt)).toBe(expected);
    expect(md5Response({ user: 'postgres', secret: 'md5' + inner, kind: 'md5' }, salt)).toBe(expected);
    expect(md5Response({ user: 'postgres', secret: 'md5' + inner.toUpperCase(), kind: 'md5' }, salt)).toBe(
      expected,
    );
  });

  it('matches what the pg package sends', async () => {
    const fromPg = await pgUtils.postgresMd5PasswordHash('alice', 'wonder land', salt);
    expect(md5Response({ user: 'alice', secret: 'wonder land', kind: 'plain' }, salt)).toBe(fromPg);
    expect(md5Response({ user: 'alice', secret: md5Secret('alice', 'wonder land'), kind: 'md5' }, salt)).toBe(fromPg);
  });
});

describe('verifyMd5', () => {
  const plain: AuthEntry = { user: 'alice', secret: 'wonder land', kind: 'plain' };
  const hashed: AuthEntry = { user: 'alice', secret: md5Secret('alice', 'wonder land'), kind: 'md5' };
  const good = md5Response({ user: 'alice', secret: 'wonder land', kind: 'plain' }, salt);

  it('accepts the right response for plain and md5 entries', () => {
    expect(verifyMd5(plain, salt, good)).toBe(true);
    expect(verifyMd5(hashed, salt, good)).toBe(true);
  });

  it('rejects wrong password, wrong salt, wrong user binding, odd lengths', () => {
    expect(verifyMd5(plain, salt, md5Response({ user: 'alice', secret: 'wrong', kind: 'plain' }, salt))).toBe(false);
    expect(verifyMd5(plain, Buffer.from([0, 0, 0, 0]), good)).toBe(false);
    expect(verifyMd5({ ...plain, user: 'bob' }, salt, good)).toBe(false);
    expect(verifyMd5(plain, salt, '')).toBe(false);
    expect(verifyMd5(plain, salt, good + 'x')).toBe(false);
    expect(verifyMd5(plain, salt, good.slice(0, -1))).toBe(false);
    expect(verifyMd5(plain, salt, 'wonder land')).toBe(false); // cleartext is not an md5 response
  });

  it('scram entries cannot do md5', () => {
    const scram: AuthEntry = {
      user: 'alice',
      secret: formatScramVerifier(makeScramVerifier('wonder land', { iterations: 16 })),
      kind: 'scram',
    };
    expect(verifyMd5(scram, salt, good)).toBe(false);
  });
});
