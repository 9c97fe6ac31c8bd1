// What a client is told when pgmux ends its session: a timeout that ran out (the janitor
// checks a few times a second), a message pgmux cannot frame, or the error that ended its
// login or transaction.

import type { Config } from '../config/types.js';
import { FrameError } from '../protocol/framer.js';
import { BackendError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import { ClientState, type ClientCloseReason } from './clientState.js';

export interface ExpiredTimeout {
  readonly spec: ErrorSpec;
  readonly reason: ClientCloseReason;
}

/**
 * `idleInTransaction`: the client holds a backend inside a transaction block and nothing
 * runs there (the request tracker's predicate). Null when no timeout ran out.
 */
export function expiredTimeout(
  state: ClientState,
  cfg: Config,
  now: number,
  connectedAt: number,
  lastActiveAt: number,
  idleInTransaction: boolean,
): ExpiredTimeout | null {
  switch (state) {
    case ClientState.Startup:
    case ClientState.Auth:
    case ClientState.Login:
      if (cfg.clientLoginTimeoutMs > 0 && now - connectedAt > cfg.clientLoginTimeoutMs) {
        return { spec: pgmuxError('loginTimeout', { detail: `client_login_timeout is ${cfg.clientLoginTimeoutMs} ms` }), reason: 'login_timeout' };
      }
      return null;
    case ClientState.Idle:
      if (cfg.clientIdleTimeoutMs > 0 && now - lastActiveAt > cfg.clientIdleTimeoutMs) return { spec: pgmuxError('clientIdleTimeout'), reason: 'idle_timeout' };
      return null;
    case ClientState.Linked:
      if (cfg.idleTransactionTimeoutMs > 0 && idleInTransaction && now - lastActiveAt > cfg.idleTransactionTimeoutMs) {
        return { spec: pgmuxError('idleInTransactionTimeout'), reason: 'idle_transaction_timeout' };
      }
      return null;
    default:
      return null;
  }
}

/** A message the frame reader refused (FrameError.TooLarge or BadLength). */
export function frameErrorSpec(error: FrameError, length: number, maxMessageBytes: number): ErrorSpec {
  return error === FrameError.TooLarge
    ? pgmuxError('messageTooLarge', { detail: `message of ${length} bytes exceeds max_message_size (${maxMessageBytes} bytes)` })
    : pgmuxError('invalidMessageLength', { detail: `declared length ${length}` });
}

/**
 * The error that ends a client's login or transaction, as FATAL: a backend's own error as
 * the backend sent it, pgmux's from the catalogue; anything else is unexpected (the caller
 * logs it) and reported as backendUnavailable.
 */
export function fatalSpecOf(err: Error): ErrorSpec {
  if (err instanceof BackendError) return err.asFatal();
  if (err instanceof PgmuxError) return err.spec;
  return pgmuxError('backendUnavailable', { detail: err.message });
}
