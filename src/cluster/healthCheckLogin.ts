// Which login the health checks use. PgBouncer needs no credentials of its own for its
// server checks; pgmux likewise defaults to a login it already has for the pools, so a
// fresh setup with password-only pg_hba rules does not show every node down.

import type { AuthEntry } from '../auth/authFile.js';
import type { Config } from '../config/types.js';
import type { BackendCredentials } from '../pool/backend.js';

export interface HealthCheckLogin {
  user: string;
  database: string;
  credentials: BackendCredentials;
  /** Which setting chose the user, for the log (never the secret). */
  source: 'health_check_user' | 'auth_user' | 'auth_file' | 'default';
}

/** What an auth-file entry lets pgmux log in with: a password or an md5 secret (a SCRAM verifier cannot be replayed). */
function fromEntry(entry: AuthEntry | undefined): BackendCredentials {
  if (entry?.kind === 'plain') return { password: entry.secret };
  if (entry?.kind === 'md5') return { md5Secret: entry.secret };
  return {};
}

/**
 * In order: health_check_user (with health_check_password, else its auth-file entry);
 * auth_user (with auth_user_password, else its auth-file entry, else none: the login
 * auth_query uses); the auth file's first user with a plain-text password (admin and
 * stats users are console logins, not database roles, and are skipped); postgres with no
 * password (trust).
 */
export function healthCheckLogin(cfg: Config, authEntries: ReadonlyMap<string, AuthEntry>): HealthCheckLogin {
  const database = cfg.healthCheckDatabase;
  if (cfg.healthCheckUser !== null) {
    const user = cfg.healthCheckUser;
    const credentials = cfg.healthCheckPassword !== null ? { password: cfg.healthCheckPassword } : fromEntry(authEntries.get(user));
    return { user, database, credentials, source: 'health_check_user' };
  }
  if (cfg.authUser !== null) {
    const user = cfg.authUser;
    const credentials = cfg.authUserPassword !== null ? { password: cfg.authUserPassword } : fromEntry(authEntries.get(user));
    return { user, database, credentials, source: 'auth_user' };
  }
  for (const entry of authEntries.values()) {
    if (entry.kind !== 'plain' || cfg.adminUsers.includes(entry.user) || cfg.statsUsers.includes(entry.user)) continue;
    return { user: entry.user, database, credentials: { password: entry.secret }, source: 'auth_file' };
  }
  return { user: 'postgres', database, credentials: {}, source: 'default' };
}

/** Same user, database and secret: an open control connection stays valid. */
export function sameLogin(a: HealthCheckLogin, b: HealthCheckLogin): boolean {
  return (
    a.user === b.user &&
    a.database === b.database &&
    (a.credentials.password ?? null) === (b.credentials.password ?? null) &&
    (a.credentials.md5Secret ?? null) === (b.credentials.md5Secret ?? null)
  );
}
