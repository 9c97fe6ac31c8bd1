// The catalogue of errors pgmux itself raises. Every error a client sees from pgmux (not
// from a backend, whose errors pass through byte for byte) is built from one entry here,
// so SQLSTATEs stay real and consistent and each message has one definition.
// test/unit/errors.test.ts guards the catalogue and fails on an error built by hand elsewhere.

export type Severity = 'ERROR' | 'FATAL';

export interface ErrorSpec {
  severity: Severity;
  /** Five-character SQLSTATE. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

/**
 * A catalogue entry. A message that names facts of the case (a user, a database, a message
 * type) is a function of them: callers pass them as `args`, never a message of their own.
 * `detail` / `hint` here are fixed texts; a call adds its own when they carry facts.
 */
interface Entry {
  severity: Severity;
  code: string;
  message: string | ((args: never) => string);
  detail?: string;
  hint?: string;
}

function spec<M extends Entry['message']>(severity: Severity, code: string, message: M, hint?: string, detail?: string): Entry & { message: M } {
  const e: Entry & { message: M } = { severity, code, message };
  if (hint !== undefined) e.hint = hint;
  if (detail !== undefined) e.detail = detail;
  return e;
}

export const ERRORS = {
  // ---- protocol and startup (08P01 unless PostgreSQL uses another code) ----
  protocolViolation: spec('FATAL', '08P01', 'protocol violation'),
  messageTooLarge: spec('FATAL', '08P01', 'message too large', 'Raise max_message_size or send smaller messages.'),
  invalidMessageLength: spec('FATAL', '08P01', 'invalid message length'),
  unsupportedProtocol: spec('FATAL', '0A000', 'unsupported frontend protocol', 'Use protocol version 3.0 (any PostgreSQL driver from the last 20 years).'),
  invalidStartupLayout: spec('FATAL', '08P01', 'invalid startup packet layout', undefined, 'expected NUL-terminated name/value pairs ending with a NUL byte'),
  invalidStartupLength: spec('FATAL', '08P01', 'invalid length of startup packet'),
  unexpectedStartupMessage: spec('FATAL', '08P01', ({ type }: { type: string }) => `expected startup packet, got message type "${type}"`),
  proxyHeaderInvalid: spec('FATAL', '08P01', 'invalid PROXY protocol header'),
  proxyHeaderMissing: spec('FATAL', '08P01', 'PROXY protocol header required', 'This address is in proxy_protocol_trusted: connect through the load balancer, or remove the address from the list.'),
  proxyHeaderUntrusted: spec('FATAL', '08P01', 'PROXY protocol header from an untrusted address', 'Add the load balancer\'s address to proxy_protocol_trusted.'),
  unexpectedPasswordMessage: spec('FATAL', '08P01', ({ type }: { type: string }) => `expected password response, got message type "${type}"`),
  sslRequestWhenEncrypted: spec('FATAL', '08P01', 'SSLRequest on a connection that is already encrypted'),
  unencryptedAfterSslRequest: spec(
    'FATAL',
    '08P01',
    'received unencrypted data after SSL request',
    undefined,
    'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
  ),
  tlsUnavailable: spec('FATAL', '58000', 'TLS is not available', 'See the pgmux log.'),
  unsupportedStartupOption: spec(
    'FATAL',
    '42704',
    ({ option }: { option: string }) => `unsupported option "${option}" in startup options; only -c name=value and --name=value are accepted`,
  ),
  startupOptionWithoutValue: spec('FATAL', '42704', 'option -c needs a name=value argument'),
  startupOptionNotNameValue: spec('FATAL', '42704', ({ option }: { option: string }) => `option "${option}" is not of the form name=value`),
  replicationNotSupported: spec('ERROR', '0A000', 'replication connections are not supported through pgmux', 'Connect to the database node directly for replication.'),

  // ---- authentication ----
  missingUser: spec('FATAL', '28000', 'no PostgreSQL user name specified in startup packet'),
  // Unknown users get this too, at the end of the exchange: no hint that the user exists.
  wrongPassword: spec('FATAL', '28P01', ({ user }: { user: string }) => `password authentication failed for user "${user}"`),
  authMethodUnavailable: spec('FATAL', '28000', 'authentication method not available for this user'),
  tlsRequired: spec('FATAL', '28000', 'SSL required: client_tls is require, plaintext connections are refused', 'Connect with sslmode=require (or verify-ca, verify-full).'),
  /** The message is PostgreSQL's own wording (hbaRefusal()): host, user, database, encryption. */
  hbaRefused: spec('FATAL', '28000', ({ refusal }: { refusal: string }) => refusal),
  invalidSaslMechanism: spec('FATAL', '08P01', ({ mechanism }: { mechanism: string }) => `client selected an invalid SASL authentication mechanism "${mechanism}"`),
  malformedAuthMessage: spec('FATAL', '08P01', 'malformed authentication message'),
  authQueryFailed: spec('FATAL', '08006', ({ user }: { user: string }) => `pgmux could not look up the password of user "${user}" (auth_query)`),
  noBackendPassword: spec(
    'FATAL',
    '28000',
    ({ user }: { user: string }) => `pgmux has no password to log in to the database as "${user}"`,
    "Put the user's password in the auth file (plain or md5), or set server_password.",
  ),

  // ---- limits ----
  tooManyClients: spec('FATAL', '53300', 'too many client connections', 'Raise max_client_conn or use fewer client connections.'),
  tooManyDatabaseConnections: spec(
    'FATAL',
    '53300',
    ({ database }: { database: string }) => `too many connections for database "${database}"`,
    'Raise max_db_client_connections or use fewer client connections.',
  ),
  tooManyUserConnections: spec(
    'FATAL',
    '53300',
    ({ user }: { user: string }) => `too many connections for role "${user}"`,
    'Raise max_user_client_connections or use fewer client connections.',
  ),
  tooManyLoggingIn: spec(
    'FATAL',
    '53300',
    'too many connections still logging in',
    'Retry shortly; raise max_unauthenticated_connections or lower client_login_timeout if this persists.',
  ),
  poolWaitTimeout: spec('FATAL', '53300', 'timed out waiting for a backend connection', 'Raise pool_size or query_wait_timeout, or shorten transactions.'),

  // ---- nodes ----
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
  noReplicaForEntry: spec(
    'FATAL',
    '08006',
    'no replica available for a replica-only database (route: replica)',
    'This entry never uses the primary: check the replicas, the lag limits and disabled nodes, or connect to an entry with route any.',
  ),
  noNodeAvailable: spec('FATAL', '08006', 'no database node available', 'Check the database nodes (SHOW NODES on the admin console says why each is down).'),
  backendUnavailable: spec('FATAL', '08006', 'could not connect to the database node'),
  backendLost: spec('FATAL', '08006', 'the connection to the database node was lost', 'Reconnect and retry the transaction.'),

  // ---- session ----
  loginTimeout: spec('FATAL', '08P01', 'startup and authentication not finished in time', 'Raise client_login_timeout if clients are slow to log in.'),
  clientIdleTimeout: spec('FATAL', '57P05', 'terminating connection due to client_idle_timeout'),
  idleInTransactionTimeout: spec('FATAL', '25P03', 'terminating connection due to idle_transaction_timeout'),
  adminShutdown: spec('FATAL', '57P01', 'terminating connection due to administrator command', 'pgmux is shutting down; reconnect.'),
  sqlPrepareInTransactionMode: spec(
    'ERROR',
    '0A000',
    'SQL-level PREPARE, EXECUTE and DEALLOCATE are not supported in transaction pooling mode',
    "Use protocol-level prepared statements (your driver's prepare/named statements), run them inside one transaction, or use pool_mode session.",
    'The prepared statement would stay on one database connection while the next transaction may run on another.',
  ),

  // ---- databases section ----
  /** PostgreSQL's own wording and SQLSTATE for a database that does not exist (drivers branch on 3D000). */
  unknownDatabase: spec('FATAL', '3D000', ({ database }: { database: string }) => `database "${database}" does not exist`),
  replicaOnlyWrite: spec(
    'ERROR',
    '25006',
    ({ database }: { database: string }) => `cannot execute a write on database "${database}": its route is replica (read-only)`,
    'Run writes through an entry with route any or primary.',
  ),
  replicaOnlyListen: spec(
    'ERROR',
    '0A000',
    ({ database }: { database: string }) => `LISTEN is not available on database "${database}": its route is replica`,
    'Notifications come from the primary: LISTEN through an entry with route any or primary.',
  ),

  // ---- admin console ----
  adminNotAllowed: spec('FATAL', '28000', ({ user }: { user: string }) => `user "${user}" may not use the admin console`, 'List the user in admin_users or stats_users.'),
  adminSimpleQueryOnly: spec('ERROR', '0A000', 'the admin console accepts simple queries only', 'Use psql, or a simple-protocol query.'),
  adminOneCommandPerQuery: spec('ERROR', '42601', 'the admin console runs one command per query'),
  pgpoolShowUnsupported: spec(
    'ERROR',
    '0A000',
    ({ name }: { name: string }) => `pgmux does not answer Pgpool-II's SHOW pool_${name}`,
    'pgmux answers SHOW pool_nodes and SHOW pool_version on any database; for pools, clients and statistics use the admin console (database pgbouncer): SHOW POOLS, SHOW CLIENTS, SHOW STATS.',
  ),
  adminUnknownCommand: spec('ERROR', '42601', ({ command }: { command: string }) => `unknown admin command "${command}"`),
  adminWrongArguments: spec('ERROR', '42601', ({ command }: { command: string }) => `wrong arguments for ${command}`),
  adminPermissionDenied: spec(
    'ERROR',
    '42501',
    ({ command }: { command: string }) => `permission denied for admin command ${command}`,
    'Stats users (stats_users) may run SHOW commands only; list the user in admin_users to run the others.',
  ),
  adminUnknownNode: spec('ERROR', '42704', ({ node }: { node: string }) => `unknown node "${node}"`),
  adminUnknownClient: spec('ERROR', '42704', ({ id }: { id: string }) => `no client with id ${id}`, 'SHOW CLIENTS lists the ids.'),
  adminUnknownSetting: spec('ERROR', '42704', ({ key }: { key: string }) => `unknown setting "${key}"`),
  adminSettingNeedsRestart: spec(
    'ERROR',
    '55P02',
    ({ key }: { key: string }) => `setting "${key}" cannot be changed while pgmux runs`,
    'Change it in the configuration file and restart pgmux.',
  ),
  adminSettingInvalid: spec('ERROR', '22023', ({ reason }: { reason: string }) => `invalid value: ${reason}`),
  /** KILL / KILL_CLIENT: what the killed clients are told. */
  adminKilled: spec('FATAL', '57P01', 'terminating connection due to an administrator\'s KILL', 'Reconnect; a killed database holds new transactions until RESUME.'),
  databaseDisabled: spec(
    'FATAL',
    '55000',
    ({ database }: { database: string }) => `database "${database}" is not accepting connections`,
    'An administrator ran DISABLE on it; ENABLE on the admin console lets clients in again.',
  ),
  shuttingDownNoNewClients: spec('FATAL', '57P01', 'pgmux is shutting down and accepts no new clients', 'Connect to another pgmux instance.'),
  reloadRefused: spec(
    'ERROR',
    'F0000',
    ({ reason }: { reason: string }) => `configuration reload refused: ${reason}`,
    'The running configuration stays in place; fix the configuration and RELOAD again.',
  ),
  /** An admin command failed in a way pgmux did not foresee: the exception's own text. */
  adminCommandFailed: spec('ERROR', 'XX000', ({ error }: { error: string }) => error),
} as const satisfies Record<string, Entry>;

export type ErrorKind = keyof typeof ERRORS;

/** What a call adds to its entry: facts for `detail`, a `hint` naming this case's values. */
export interface ErrorFacts {
  detail?: string;
  hint?: string;
}

/** The facts an entry's message names (never when its message is fixed). */
type MessageArgs<K extends ErrorKind> = (typeof ERRORS)[K]['message'] extends (args: infer A) => string ? A : never;

/**
 * One constructor: a catalogue entry plus the facts of this case. An entry whose message
 * names facts requires them (`args`); the message itself always comes from the catalogue.
 */
export function pgmuxError<K extends ErrorKind>(
  kind: K,
  ...facts: [MessageArgs<K>] extends [never] ? [facts?: ErrorFacts] : [facts: ErrorFacts & { args: MessageArgs<K> }]
): ErrorSpec {
  const entry: Entry = ERRORS[kind];
  const f = facts[0] as (ErrorFacts & { args?: unknown }) | undefined;
  const message = typeof entry.message === 'string' ? entry.message : (entry.message as (args: unknown) => string)(f?.args);
  const out: ErrorSpec = { severity: entry.severity, code: entry.code, message };
  const detail = f?.detail ?? entry.detail;
  if (detail !== undefined) out.detail = detail;
  const hint = f?.hint ?? entry.hint;
  if (hint !== undefined) out.hint = hint;
  return out;
}

/** The same error as a non-fatal ERROR: the session goes on (e.g. one LISTEN failed). */
export function asError(spec: ErrorSpec): ErrorSpec {
  return { ...spec, severity: 'ERROR' };
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

  /** The backend's own error, as FATAL: the client's login or transaction cannot go on. */
  asFatal(): ErrorSpec {
    const f = this.fields;
    const spec: ErrorSpec = { severity: 'FATAL', code: f.get('C') ?? 'XX000', message: f.get('M') ?? 'backend error' };
    if (f.has('D')) spec.detail = f.get('D');
    if (f.has('H')) spec.hint = f.get('H');
    return spec;
  }
}
