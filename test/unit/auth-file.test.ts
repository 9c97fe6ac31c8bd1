import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AuthFileError, loadAuthFile, parseAuthFile } from '../../src/auth/authFile.js';

const SCRAM =
  'SCRAM-SHA-256$4096:dWRu5AbNbuaKbcos+iSWAA==$gP+HxILZw59PmuS4wlZa/R9Kvm6SJgFXqY/VLtIE96U=:hpmFakrHCyMDvLbcdAQUiYX+BJXcQMH20GeipIX3WqM=';
const MD5 = 'md57c53eaf86052083b816bfc7c7a6edf5d';

function parseError(text: string, source?: string): AuthFileError {
  try {
    parseAuthFile(text, source);
  } catch (err) {
    expect(err).toBeInstanceOf(AuthFileError);
    return err as AuthFileError;
  }
  throw new Error('expected parseAuthFile to throw');
}

describe('parseAuthFile', () => {
  it('parses users and classifies secrets', () => {
    const m = parseAuthFile(`"alice" "pencil"\n"carol" "${MD5}"\n"bob" "${SCRAM}"\n`);
    expect([...m.keys()]).toEqual(['alice', 'carol', 'bob']);
    expect(m.get('alice')).toEqual({ user: 'alice', secret: 'pencil', kind: 'plain' });
    expect(m.get('carol')).toEqual({ user: 'carol', secret: MD5, kind: 'md5' });
    expect(m.get('bob')).toEqual({ user: 'bob', secret: SCRAM, kind: 'scram' });
  });

  it('handles doubled quotes, spaces and other characters inside quotes', () => {
    const m = parseAuthFile(`"o""brien" "pa""ss ""word"""\n"a b;#c" " sp ace "\n"q" """"`);
    expect(m.get('o"brien')?.secret).toBe('pa"ss "word"');
    expect(m.get('a b;#c')?.secret).toBe(' sp ace ');
    expect(m.get('q')?.secret).toBe('"');
  });

  it('ignores comments, blank lines, indentation, CRLF, a BOM and extra fields', () => {
    const text =
      '\uFEFF; pgbouncer comment\r\n# hash comment\r\n\r\n   \t\r\n  "u1"\t "p1"  "extra" ignored\r\n\t; "x" "y"\r\n"u2" "p2"';
    const m = parseAuthFile(text);
    expect([...m.entries()]).toEqual([
      ['u1', { user: 'u1', secret: 'p1', kind: 'plain' }],
      ['u2', { user: 'u2', secret: 'p2', kind: 'plain' }],
    ]);
  });

  it('empty text and empty password', () => {
    expect(parseAuthFile('').size).toBe(0);
    expect(parseAuthFile('"u" ""').get('u')).toEqual({ user: 'u', secret: '', kind: 'plain' });
  });

  it('later duplicates win', () => {
    expect(parseAuthFile('"u" "a"\n"u" "b"').get('u')?.secret).toBe('b');
  });

  it('md5 detection: exactly md5 + 32 hex; hex normalised to lower case', () => {
    expect(parseAuthFile(`"u" "${MD5.toUpperCase().replace('MD5', 'md5')}"`).get('u')).toEqual({
      user: 'u',
      secret: MD5,
      kind: 'md5',
    });
    expect(parseAuthFile(`"u" "${MD5}0"`).get('u')?.kind).toBe('plain');
    expect(parseAuthFile(`"u" "${MD5.slice(0, -1)}g"`).get('u')?.kind).toBe('plain');
    expect(parseAuthFile(`"u" "MD5${MD5.slice(3)}"`).get('u')?.kind).toBe('plain');
  });

  it('a broken SCRAM verifier is a plain password', () => {
    expect(parseAuthFile(`"u" "${SCRAM.slice(0, -4)}"`).get('u')?.kind).toBe('plain');
  });

  it.each([
    ['alice "pw"', 1],
    ['"alice" pw', 1],
    ['"alice"', 1],
    ['"alice""pw"', 1], // reads as user alice"pw with no password
    ['"alice" "pw', 1],
    ['"alice', 1],
    ['"" "pw"', 1],
    ['; ok\n"ok" "ok"\n\n"bad" \'pw\'', 4],
    ['"a" "b"\n"multi\nline" "pw"', 2],
  ])('rejects %j at line %i', (text, line) => {
    const err = parseError(text, '/etc/pgmux/userlist.txt');
    expect(err.line).toBe(line);
    expect(err.source).toBe('/etc/pgmux/userlist.txt');
    expect(err.message).toMatch(
      new RegExp(`^auth file /etc/pgmux/userlist\\.txt line ${line}: expected "user" "password"`),
    );
  });

  it('error message without a source', () => {
    expect(parseError('x').message).toBe('auth file line 1: expected "user" "password"');
  });

  it('error message for the documented example', () => {
    expect(parseError('"a" "b"\n; c\nbroken', 'users.txt').message).toBe(
      'auth file users.txt line 3: expected "user" "password"',
    );
  });
});

describe('loadAuthFile', () => {
  it('reads a file, and reports unreadable files as AuthFileError', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-authfile-'));
    try {
      const path = join(dir, 'userlist.txt');
      writeFileSync(path, `"alice" "pencil"\n"bob" "${SCRAM}"\n`);
      const m = loadAuthFile(path);
      expect(m.get('bob')?.kind).toBe('scram');
      writeFileSync(path, '"alice" "pencil"\nnope\n');
      expect(() => loadAuthFile(path)).toThrow(`auth file ${path} line 2: expected "user" "password"`);
      const missing = join(dir, 'missing.txt');
      expect(() => loadAuthFile(missing)).toThrow(AuthFileError);
      expect(() => loadAuthFile(missing)).toThrow(/cannot read/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
