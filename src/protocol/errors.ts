// The catalogue of errors pgmux itself raises. Every error a client sees from pgmux (not
// from a backend, whose errors pass through byte for byte) is built from one entry here,
// so SQLSTATEs stay real and consistent. test/unit/errors.test.ts guards the catalogue.

export type Severity = 'ERROR' | 'FATAL';

export interface ErrorSpec {
  severity: Severity;
  /** Five-character SQLSTATE. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function spec(severity: Severity, code: string, message: string, hint?: string): ErrorSpec {
  return hint === undefined ? { severity, code, message } : { severity, code, message, hint };
}

export const ERRORS = {
  protocolViolation: spec('FATAL', '08P01', 'protocol violation'),
  messageTooLarge: spec('FATAL', '08P01', 'message too large', 'Raise max_message_size or send smaller messages.'),
  unsupportedProtocol: spec('FATAL', '0A000', 'unsupported frontend protocol', 'Use protocol version 3.0 (any PostgreSQL driver from the last 20 years).'),
  missingUser: spec('FATAL', '28000', 'no PostgreSQL user name specified in startup packet'),
  unknownUser: spec('FATAL', '28P01', 'password authentication failed'),
  wrongPassword: spec('FATAL', '28P01', 'password authentication failed'),
  authMethodUnavailable: spec('FATAL', '28000', 'authentication method not available for this user'),
  tooManyClients: spec('FATAL', '53300', 'too many client connections', 'Raise max_client_conn or use fewer client connections.'),
  poolWaitTimeout: spec('FATAL', '53300', 'timed out waiting for a backend connection', 'Raise pool_size or query_wait_timeout, or shorten transactions.'),
  // Class 08 (connection exception) is what retry logic treats as "reconnect and retry"
  // (HikariCP evicts, Npgsql IsTransient, psycopg OperationalError); FATAL makes pools
  // reconnect, which works during the gap: logins and reads need no primary.
  noPrimary: spec(
    'FATAL',
    '08006',
    'no primary node available',
    'Retry the transaction once a replica is promoted or the primary is back; read-only transactions are still served by the replicas meanwhile.',
  ),
  noReadNode: spec('FATAL', '08006', 'no node available for reads', 'Enable fallback_to_primary, or check the replicas and the lag limits.'),
  backendUnavailable: spec('FATAL', '08006', 'could not connect to the database node'),
  backendLost: spec('FATAL', '08006', 'the connection to the database node was lost', 'Reconnect and retry the transaction.'),
  loginTimeout: spec('FATAL', '08P01', 'startup and authentication not finished in time', 'Raise client_login_timeout if clients are slow to log in.'),
  clientIdleTimeout: spec('FATAL', '57P05', 'terminating connection due to client_idle_timeout'),
  idleInTransactionTimeout: spec('FATAL', '25P03', 'terminating connection due to idle_transaction_timeout'),
  adminShutdown: spec('FATAL', '57P01', 'terminating connection due to administrator command', 'pgmux is shutting down; reconnect.'),
  featureNotSupported: spec('ERROR', '0A000', 'feature not supported'),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorKind = keyof typeof ERRORS;

/** One constructor: a catalogue entry plus the facts of this case. */
export function pgmuxError(kind: ErrorKind, extra?: { message?: string; detail?: string; hint?: string }): ErrorSpec {
  const base = ERRORS[kind];
  const out: ErrorSpec = { ...base };
  if (extra?.message !== undefined) out.message = extra.message;
  if (extra?.detail !== undefined) out.detail = extra.detail;
  if (extra?.hint !== undefined) out.hint = extra.hint;
  return out;
}

/** An error raised inside pgmux that carries what the client should be sent. */
export class PgmuxError extends Error {
  constructor(readonly spec: ErrorSpec) {
    super(spec.message);
  }
}

/** A FATAL/ERROR a backend sent us while we were acting for a client (e.g. login). */
export class BackendError extends Error {
  constructor(
    readonly fields: Map<string, string>,
    readonly raw: Buffer,
  ) {
    super(fields.get('M') ?? 'backend error');
  }
  get code(): string {
    return this.fields.get('C') ?? 'XX000';
  }
}
