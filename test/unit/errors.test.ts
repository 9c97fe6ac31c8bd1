import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERRORS, pgmuxError } from '../../src/protocol/errors.js';
import { errorResponse, parseFields, readyForQuery, backendKeyData, parameterStatus } from '../../src/protocol/messages.js';

/** An entry's message with every fact it names filled in with `x`. */
function sampleMessage(message: string | ((args: never) => string)): string {
  if (typeof message === 'string') return message;
  return (message as (args: unknown) => string)(new Proxy({}, { get: () => 'x' }));
}

describe('error catalogue', () => {
  it('every entry has a real five-character SQLSTATE, a severity and a lower-case message (acronyms aside)', () => {
    for (const [name, e] of Object.entries(ERRORS)) {
      expect(e.code, name).toMatch(/^[0-9A-Z]{5}$/);
      expect(['ERROR', 'FATAL'], name).toContain(e.severity);
      const message = sampleMessage(e.message);
      expect(message.length, name).toBeGreaterThan(0);
      // Lower case, as PostgreSQL's style guide says, unless it starts with an acronym (SSL, SQL).
      expect(message, name).toMatch(/^([a-z]|[A-Z]{2,})/);
    }
  });

  it('defines each error once: no two entries share a SQLSTATE and message', () => {
    const seen = new Map<string, string>();
    for (const [name, e] of Object.entries(ERRORS)) {
      const key = `${e.code} ${sampleMessage(e.message)}`;
      expect(seen.get(key), `${name} repeats ${seen.get(key)}`).toBeUndefined();
      seen.set(key, name);
    }
  });

  it('fills a message with the facts it names and keeps fixed detail and hint', () => {
    const e = pgmuxError('wrongPassword', { args: { user: 'alice' } });
    expect(e).toEqual({ severity: 'FATAL', code: '28P01', message: 'password authentication failed for user "alice"' });
    const p = pgmuxError('sqlPrepareInTransactionMode');
    expect(p.detail).toMatch(/one database connection/);
    expect(p.hint).toMatch(/pool_mode session/);
    expect(pgmuxError('adminUnknownNode', { args: { node: 'h:1' }, hint: 'Nodes: a:1.' }).hint).toBe('Nodes: a:1.');
  });

  it('never uses one code for unrelated failures (auth vs protocol vs capacity)', () => {
    expect(ERRORS.wrongPassword.code).toBe('28P01');
    expect(ERRORS.protocolViolation.code).toBe('08P01');
    expect(ERRORS.tooManyClients.code).toBe('53300');
    expect(ERRORS.adminShutdown.code).toBe('57P01');
    expect(ERRORS.unsupportedProtocol.code).toBe('0A000');
  });

  it('builds an ErrorResponse that decodes back to the same fields', () => {
    const msg = errorResponse(pgmuxError('poolWaitTimeout', { detail: 'waited 5 ms' }));
    expect(String.fromCharCode(msg[0]!)).toBe('E');
    expect(msg.readInt32BE(1)).toBe(msg.length - 1);
    const f = parseFields(msg, 5, msg.length);
    expect(f.get('S')).toBe('FATAL');
    expect(f.get('C')).toBe('53300');
    expect(f.get('D')).toBe('waited 5 ms');
    expect(f.get('H')).toMatch(/pool_size/);
  });
});

describe('golden bytes', () => {
  it('ReadyForQuery, BackendKeyData, ParameterStatus', () => {
    expect(readyForQuery('I')).toEqual(Buffer.from([0x5a, 0, 0, 0, 5, 0x49]));
    expect(backendKeyData(1, -1)).toEqual(Buffer.from([0x4b, 0, 0, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]));
    expect(parameterStatus('a', 'b')).toEqual(Buffer.from([0x53, 0, 0, 0, 8, 0x61, 0, 0x62, 0]));
  });
});

describe('every client-visible error comes from the catalogue', () => {
  // errors.ts holds the catalogue; messages.ts encodes what it is given (notices included).
  // Anywhere else, a severity or SQLSTATE written by hand is an error that bypasses it.
  const srcDir = fileURLToPath(new URL('../../src/', import.meta.url));
  const exempt = new Set(['protocol/errors.ts', 'protocol/messages.ts']);
  const bypasses: Array<[RegExp, string]> = [
    [/\bseverity\s*:\s*['"`]/, 'a severity written by hand'],
    [/\bcode\s*:\s*['"`](?!00000)/, 'a SQLSTATE written by hand (00000 is a notice)'],
    [/errorResponse\(\s*\{/, 'an ErrorResponse from an object literal'],
    [/\bfatal\(\s*\{/, 'fatal() with an object literal'],
    [/new PgmuxError\(\s*\{/, 'a PgmuxError from an object literal'],
    [/:\s*ErrorSpec\s*=\s*\{/, 'an ErrorSpec literal'],
  ];

  it('no source file outside src/protocol/ builds an error by hand', () => {
    const found: string[] = [];
    const files = (readdirSync(srcDir, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(50);
    for (const file of files) {
      const rel = file.split('\\').join('/');
      if (exempt.has(rel)) continue;
      readFileSync(join(srcDir, file), 'utf8')
        .split('\n')
        .forEach((line, i) => {
          for (const [re, what] of bypasses) if (re.test(line)) found.push(`src/${rel}:${i + 1}: ${what}: ${line.trim()}`);
        });
    }
    expect(found, 'add an entry to ERRORS in src/protocol/errors.ts and use pgmuxError()').toEqual([]);
  });
});
