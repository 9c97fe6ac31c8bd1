// Pgpool-II's pool_passwd -> a PgBouncer-style userlist (what pgmux's auth_file reads).
//
// A line is `user:secret`; the secret is `md5` + 32 hex digits (kept as an md5 verifier), a
// SCRAM-SHA-256 verifier (kept), `TEXT` + a plain password, `AES` + base64 of the password
// encrypted with the pool key (decrypted here), or, anything else, a plain password (Pgpool-II's
// get_password_type()). AES is Pgpool-II's aes_encrypt_with_password(): AES-256-CBC, key and IV
// from OpenSSL's EVP_BytesToKey(SHA-1, no salt, 1 round) over the key file's first line.

import { createDecipheriv, createCipheriv, createHash } from 'node:crypto';

export interface PoolPasswdEntry {
  user: string;
  secret: string;
  kind: 'md5' | 'scram' | 'plain';
}

export interface PoolPasswdResult {
  entries: PoolPasswdEntry[];
  /** Lines not carried, with the reason (never the secret). */
  problems: string[];
}

/** EVP_BytesToKey(EVP_aes_256_cbc(), EVP_sha1(), salt = NULL, password, count = 1): 32-byte key + 16-byte IV. */
function keyAndIv(password: string): { key: Buffer; iv: Buffer } {
  const parts: Buffer[] = [];
  let prev = Buffer.alloc(0);
  let total = 0;
  while (total < 48) {
    prev = createHash('sha1').update(prev).update(password, 'utf8').digest();
    parts.push(prev);
    total += prev.length;
  }
  const all = Buffer.concat(parts);
  return { key: all.subarray(0, 32), iv: all.subarray(32, 48) };
}

/** The password of an `AES...` secret (without the prefix); throws when the key is wrong. */
export function pgpoolAesDecrypt(base64: string, poolKey: string): string {
  const { key, iv } = keyAndIv(poolKey);
  const d = createDecipheriv('aes-256-cbc', key, iv);
  return Buffer.concat([d.update(Buffer.from(base64, 'base64')), d.final()]).toString('utf8');
}

/** What pg_enc writes after "AES" (for tests and for symmetry). */
export function pgpoolAesEncrypt(password: string, poolKey: string): string {
  const { key, iv } = keyAndIv(poolKey);
  const c = createCipheriv('aes-256-cbc', key, iv);
  return Buffer.concat([c.update(password, 'utf8'), c.final()]).toString('base64');
}

/** The key as Pgpool-II's read_pool_key() takes it: the first line, without its newline. */
export function poolKeyFromFile(text: string): string | null {
  const first = text.split('\n')[0]!;
  return first === '' ? null : first;
}

/** A pool_passwd secret -> a plain password or verifier; a string is the reason it cannot be used. */
export function decodePoolSecret(secret: string, poolKey: string | null, keyFrom: string): { secret: string; kind: PoolPasswdEntry['kind'] } | string {
  if (/^md5[0-9a-fA-F]{32}$/.test(secret)) return { secret, kind: 'md5' };
  if (secret.startsWith('SCRAM-SHA-256$')) return { secret, kind: 'scram' };
  if (secret.startsWith('TEXT')) return { secret: secret.slice(4), kind: 'plain' };
  if (secret.startsWith('AES')) {
    if (poolKey === null) return `an AES password and no pool key (${keyFrom} not found; give --pgpool-key-file)`;
    try {
      return { secret: pgpoolAesDecrypt(secret.slice(3), poolKey), kind: 'plain' };
    } catch {
      return `an AES password that ${keyFrom} does not decrypt (wrong key?)`;
    }
  }
  return { secret, kind: 'plain' };
}

export function parsePoolPasswd(text: string, poolKey: string | null, keyFrom: string): PoolPasswdResult {
  const entries: PoolPasswdEntry[] = [];
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    if (colon <= 0) {
      problems.push(`line ${i + 1}: not "user:password"`);
      return;
    }
    const user = line.slice(0, colon);
    const r = decodePoolSecret(line.slice(colon + 1), poolKey, keyFrom);
    if (typeof r === 'string') problems.push(`line ${i + 1} (user ${user}): ${r}; that user cannot log in`);
    else entries.push({ user, ...r });
  });
  return { entries, problems };
}

/** PgBouncer's userlist.txt: "user" "secret", doubled quotes inside. */
export function toUserlist(entries: readonly PoolPasswdEntry[]): string {
  const q = (s: string) => `"${s.replace(/"/g, '""')}"`;
  return entries.map((e) => `${q(e.user)} ${q(e.secret)}\n`).join('');
}
