import { describe, expect, it } from 'vitest';
import { ERRORS, pgmuxError } from '../../src/protocol/errors.js';
import { errorResponse, parseFields, readyForQuery, backendKeyData, parameterStatus } from '../../src/protocol/messages.js';

describe('error catalogue', () => {
  it('every entry has a real five-character SQLSTATE, a severity and a lower-case message', () => {
    for (const [name, e] of Object.entries(ERRORS)) {
      expect(e.code, name).toMatch(/^[0-9A-Z]{5}$/);
      expect(['ERROR', 'FATAL'], name).toContain(e.severity);
      expect(e.message[0], name).toBe(e.message[0]!.toLowerCase());
    }
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
