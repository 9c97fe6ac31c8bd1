/**
 * Auth file in PgBouncer's userlist.txt format:
 *
 *   ; comment            (also '#')
 *   "user" "secret"      extra fields after the second are ignored
 *   "o""brien" "pa""ss"  a doubled quote inside a quoted string is a literal quote
 *
 * The secret is a cleartext password, an md5 secret ('md5' + 32 hex digits) or a
 * SCRAM-SHA-256 verifier ('SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>').
 * When a user appears twice the later line wins (as in PgBouncer).
 */
import { readFileSync } from 'node:fs';
import { parseScramVerifier } from './scram.js';

export type SecretKind = 'plain' | 'md5' | 'scram';

export interface AuthEntry {
  user: string;
  secret: string;
  kind: SecretKind;
}

export class AuthFileError extends Error {
  override name = 'AuthFileError';
  constructor(
    message: string,
    readonly source?: string,
    readonly line?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const MD5_SECRET_RE = /^md5[0-9a-fA-F]{32}$/;

/** Classify a secret as PostgreSQL's get_password_type() would. */
export function secretKind(secret: string): SecretKind {
  if (MD5_SECRET_RE.test(secret)) return 'md5';
  if (parseScramVerifier(secret)) return 'scram';
  return 'plain';
}

const EXPECTED = 'expected "user" "password"';

/**
 * Parse a quoted string starting at s[pos] === '"'.
 * Returns the unescaped value and the index just past the closing quote, or null if unterminated.
 */
function readQuoted(s: string, pos: number): { value: string; end: number } | null {
  let value = '';
  let i = pos + 1;
  for (;;) {
    const q = s.indexOf('"', i);
    if (q < 0) return null;
    value += s.slice(i, q);
    if (s[q + 1] === '"') {
      value += '"';
      i = q + 2;
      continue;
    }
    return { value, end: q + 1 };
  }
}

function isSpace(c: string | undefined): boolean {
  return c === ' ' || c === '\t' || c === '\r' || c === '\v' || c === '\f';
}

function skipSpaces(s: string, pos: number): number {
  while (pos < s.length && isSpace(s[pos])) pos++;
  return pos;
}

/**
 * Parse auth file text. `source` (usually the path) only decorates error messages.
 * Throws AuthFileError on a malformed line, e.g.
 * `auth file /etc/pgmux/userlist.txt line 3: expected "user" "password"`.
 */
export function parseAuthFile(text: string, source?: string): Map<string, AuthEntry> {
  const entries = new Map<string, AuthEntry>();
  const where = source !== undefined && source !== '' ? `auth file ${source}` : 'auth file';
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // UTF-8 BOM
  const lines = text.split('\n');

  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!;
    const lineNo = n + 1;
    const fail = (detail: string): AuthFileError =>
      new AuthFileError(`${where} line ${lineNo}: ${detail}`, source, lineNo);

    let pos = skipSpaces(line, 0);
    if (pos >= line.length) continue; // blank
    if (line[pos] === ';' || line[pos] === '#') continue; // comment
    if (line[pos] !== '"') throw fail(EXPECTED);

    const user = readQuoted(line, pos);
    if (!user) throw fail(`${EXPECTED} (unterminated quoted user name)`);
    pos = user.end;
    if (!isSpace(line[pos])) throw fail(EXPECTED);
    pos = skipSpaces(line, pos);
    if (line[pos] !== '"') throw fail(EXPECTED);

    const secret = readQuoted(line, pos);
    if (!secret) throw fail(`${EXPECTED} (unterminated quoted password)`);
    // Anything after the second field is ignored (PgBouncer skips the rest of the line).

    if (user.value === '') throw fail(`${EXPECTED} (empty user name)`);
    const kind = secretKind(secret.value);
    // md5 hex is case-insensitive here; normalise so comparisons with clients' lowercase hex work.
    const value = kind === 'md5' ? secret.value.toLowerCase() : secret.value;
    entries.set(user.value, { user: user.value, secret: value, kind });
  }
  return entries;
}

/** Read and parse an auth file; I/O problems are reported as AuthFileError too. */
export function loadAuthFile(path: string): Map<string, AuthEntry> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new AuthFileError(`auth file ${path}: cannot read: ${(err as Error).message}`, path, undefined, { cause: err });
  }
  return parseAuthFile(text, path);
}
