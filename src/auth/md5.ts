/**
 * PostgreSQL's MD5 password authentication (AuthenticationMD5Password).
 *
 * Stored secret:   'md5' + hex(md5(password + user))
 * Wire response:   'md5' + hex(md5(hex(md5(password + user)) + salt))   (salt: 4 bytes)
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AuthEntry } from './authFile.js';

function md5Hex(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

/** 'md5' + hex(md5(password + user)), the form PostgreSQL stores in pg_authid and PgBouncer in userlist.txt. */
export function md5Secret(user: string, password: string): string {
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(password, 'utf8'), Buffer.from(user, 'utf8')]));
}

/**
 * What a client sends to a server asking AuthenticationMD5Password:
 * 'md5' + hex(md5(hex_part_of_secret + salt)). For kind 'plain' the secret is the
 * password and is first turned into md5Secret(user, password).
 */
export function md5Response(
  md5SecretOrPassword: { user: string; secret: string; kind: 'plain' | 'md5' },
  salt: Buffer,
): string {
  const { user, secret, kind } = md5SecretOrPassword;
  const stored = kind === 'md5' ? secret.toLowerCase() : md5Secret(user, secret);
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(stored.slice(3), 'ascii'), salt]));
}

/**
 * Check a client's PasswordMessage answer to AuthenticationMD5Password (constant-time compare).
 * Works for 'plain' and 'md5' entries; a 'scram' entry cannot do md5 and yields false.
 * Note: an md5 secret is bound to the user name it was made with, so entry.user must be the login user.
 */
export function verifyMd5(entry: AuthEntry, salt: Buffer, clientResponse: string): boolean {
  if (entry.kind !== 'plain' && entry.kind !== 'md5') return false;
  const expected = Buffer.from(md5Response({ user: entry.user, secret: entry.secret, kind: entry.kind }, salt), 'utf8');
  const got = Buffer.from(clientResponse, 'utf8');
  if (got.length !== expected.length) return false;
  return timingSafeEqual(got, expected);
}
