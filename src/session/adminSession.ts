// The admin console side of a client connection (virtual database "pgmux"): its login
// welcome and its simple-query commands. No backend is involved; pgmux answers.

import { backendKeyData, errorResponse, FrontendMsg, parameterStatus, readyForQuery } from '../protocol/messages.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import type { SessionContext } from './sessionContext.js';
import type { ClientCloseReason } from './clientState.js';

export type AdminRole = 'admin' | 'stats';

/** What the admin console needs from the session that owns the connection. */
export interface AdminHost {
  write(data: Buffer): void;
  close(reason: ClientCloseReason): void;
  /** A command runs: later messages wait in the reader. */
  suspend(): void;
  /** The command answered: go on reading (unless the connection closed meanwhile). */
  resume(): void;
}

/**
 * The admin branch of a login: the user's console role, and what PostgreSQL would send
 * after AuthenticationOk (a fixed ParameterStatus set, BackendKeyData, ReadyForQuery).
 * Throws a PgmuxError for a user that is neither in admin_users nor in stats_users.
 */
export function adminWelcome(
  ctx: SessionContext,
  user: string,
  applicationName: string,
  pid: number,
  secret: number,
): { role: AdminRole; welcome: Buffer } {
  const role = ctx.admin.roleOf(user);
  if (role === null) {
    throw new PgmuxError(
      pgmuxError('adminNotAllowed', { args: { user } }),
    );
  }
  const params: Array<[string, string]> = [
    ['server_version', '15.0 (pgmux)'],
    ['server_encoding', 'UTF8'],
    ['client_encoding', 'UTF8'],
    ['DateStyle', 'ISO, MDY'],
    ['integer_datetimes', 'on'],
    ['standard_conforming_strings', 'on'],
    ['application_name', applicationName],
  ];
  return { role, welcome: Buffer.concat([...params.map(([k, v]) => parameterStatus(k, v)), backendKeyData(pid, secret), readyForQuery('I')]) };
}

export class AdminSession {
  constructor(
    private readonly ctx: SessionContext,
    private readonly host: AdminHost,
    readonly role: AdminRole,
  ) {}

  onMessage(type: number, buf: Buffer, bodyStart: number, end: number): void {
    if (type === FrontendMsg.Terminate) {
      this.host.close('client_terminate');
      return;
    }
    if (type !== FrontendMsg.Query) {
      this.host.write(
        Buffer.concat([
          errorResponse(pgmuxError('adminSimpleQueryOnly')),
          readyForQuery('I'),
        ]),
      );
      return;
    }
    // Commands run one at a time (PAUSE may wait); later ones stay in the reader.
    this.host.suspend();
    const sql = buf.toString('utf8', bodyStart, end - 1);
    this.ctx
      .admin.run(sql, this.role)
      .then(
        (out) => this.host.write(Buffer.concat([out, readyForQuery('I')])),
        (err: Error) => this.host.write(Buffer.concat([errorResponse(pgmuxError('adminCommandFailed', { args: { error: err.message } })), readyForQuery('I')])),
      )
      .finally(() => this.host.resume());
  }
}
