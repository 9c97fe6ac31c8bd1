// The backoff after failed backend connects, and which login failures drop a pool.
import { describe, expect, it } from 'vitest';
import { connectFailureText, connectRetryDelayMs, isPermanentLoginFailure } from '../../src/pool/connectRetry.js';
import { BackendError, PgmuxError, pgmuxError } from '../../src/protocol/errors.js';

function backendError(code: string, message = 'x'): BackendError {
  return new BackendError(new Map([['S', 'FATAL'], ['C', code], ['M', message]]), Buffer.alloc(0));
}

describe('connectRetryDelayMs', () => {
  it('is 0 before any failure, then 100 ms doubling per consecutive failure', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7, 8].map((n) => connectRetryDelayMs(n, 15_000))).toEqual([0, 100, 200, 400, 800, 1600, 3200, 6400, 12_800]);
  });

  it('stops at server_login_retry, however many failures', () => {
    expect(connectRetryDelayMs(9, 15_000)).toBe(15_000);
    expect(connectRetryDelayMs(1000, 15_000)).toBe(15_000);
    expect(connectRetryDelayMs(3, 250)).toBe(250);
    expect(connectRetryDelayMs(1, 250)).toBe(100);
  });
});

describe('isPermanentLoginFailure', () => {
  it.each(['3D000', '28000', '28P01', '42501'])('%s from the backend: retrying cannot help', (code) => {
    expect(isPermanentLoginFailure(backendError(code))).toBe(true);
  });

  it.each(['08006', '57P03', '53300', '57P01', 'XX000'])('%s from the backend: worth retrying', (code) => {
    expect(isPermanentLoginFailure(backendError(code))).toBe(false);
  });

  it("pgmux's own errors count by their SQLSTATE; plain errors are retried", () => {
    expect(isPermanentLoginFailure(new PgmuxError(pgmuxError('authMethodUnavailable')))).toBe(true);
    expect(isPermanentLoginFailure(new PgmuxError(pgmuxError('backendUnavailable', { detail: 'n1: connect ECONNREFUSED' })))).toBe(false);
    expect(isPermanentLoginFailure(new Error('socket hang up'))).toBe(false);
  });
});

describe('connectFailureText', () => {
  it("keeps the detail of pgmux's own errors, where the socket error is", () => {
    expect(connectFailureText(new PgmuxError(pgmuxError('backendUnavailable', { detail: 'n1: connect ECONNREFUSED 127.0.0.1:1' })))).toBe(
      'could not connect to the database node: n1: connect ECONNREFUSED 127.0.0.1:1',
    );
    expect(connectFailureText(backendError('3D000', 'database "nope" does not exist'))).toBe('database "nope" does not exist');
  });
});
