// The states a client connection goes through and why it ended: shared by the session and
// the parts it delegates to (handshake, admin console) without importing the session.

export enum ClientState {
  Startup = 'startup',
  Auth = 'auth',
  Login = 'login',
  Idle = 'idle',
  Waiting = 'waiting',
  Linked = 'linked',
  /** Logged in to the admin console (virtual database "pgmux"). */
  Admin = 'admin',
  Closed = 'closed',
}

/** The admin console's virtual database. */
export const ADMIN_DATABASE = 'pgmux';

/** Names the admin console answers to: its own, and PgBouncer's for runbooks and exporters. */
export const ADMIN_DATABASES: readonly string[] = [ADMIN_DATABASE, 'pgbouncer'];

export type ClientCloseReason =
  | 'client_terminate'
  | 'client_gone'
  | 'protocol_error'
  | 'auth_failed'
  | 'login_failed'
  | 'login_timeout'
  | 'idle_timeout'
  | 'idle_transaction_timeout'
  | 'pool_timeout'
  | 'backend_lost'
  | 'cancel_request'
  | 'ssl_request'
  /** A PROXY protocol header missing, malformed or from an untrusted sender. */
  | 'proxy_header'
  | 'shutdown'
  /** KILL / KILL_CLIENT on the admin console. */
  | 'admin_kill'
  | 'too_many_clients';
