// When a pool may try a node again after failed connects, and which failures are worth
// retrying at all: pure decisions, so the arithmetic is tested without a socket.

import { BackendError, PgmuxError } from '../protocol/errors.js';

/** First retry delay after a failed connect; each further consecutive failure doubles it. */
export const FIRST_RETRY_DELAY_MS = 100;

/**
 * Delay before the next connect after `failures` consecutive failed ones (0 = none failed:
 * no delay): 100 ms, 200 ms, 400 ms ... capped at `capMs` (server_login_retry).
 */
export function connectRetryDelayMs(failures: number, capMs: number): number {
  if (failures <= 0) return 0;
  // 2^30 x 100 ms is far beyond any cap: stop doubling before the number grows silly.
  return Math.min(capMs, FIRST_RETRY_DELAY_MS * 2 ** Math.min(failures - 1, 30));
}

/**
 * SQLSTATEs of a login that will fail the same way until someone changes the database or
 * its roles: no such database, no such role or a wrong password, no CONNECT privilege.
 * Retrying them only fills the node's log with FATALs.
 */
const PERMANENT_LOGIN_FAILURES: ReadonlySet<string> = new Set(['3D000', '28000', '28P01', '42501']);

/** The SQLSTATE of a failed connect, or null (a socket error pgmux did not wrap). */
export function connectFailureCode(err: Error): string | null {
  if (err instanceof BackendError) return err.code;
  if (err instanceof PgmuxError) return err.spec.code;
  return null;
}

/** True when retrying the connect cannot help until the database or its roles change. */
export function isPermanentLoginFailure(err: Error): boolean {
  const code = connectFailureCode(err);
  return code !== null && PERMANENT_LOGIN_FAILURES.has(code);
}

/**
 * What a failed connect is logged as, and compared by to log a change only: pgmux's own
 * errors keep their facts (which socket error, which node) in the detail.
 */
export function connectFailureText(err: Error): string {
  if (err instanceof PgmuxError && err.spec.detail !== undefined) return `${err.message}: ${err.spec.detail}`;
  return err.message;
}
