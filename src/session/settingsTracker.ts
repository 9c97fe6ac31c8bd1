// Which of a client's settings a transaction may have changed, and how to learn their new
// values before its backend goes back to the pool.
//
// The statement analysis (src/routing/sessionEffects.ts) names the settings a SET, RESET
// or set_config() touches; it does not evaluate them. At the end of the transaction one
// hidden query on the same backend reads them back, so what the client carries to its next
// backend is what PostgreSQL itself holds: a SET rolled back, a SET LOCAL, a failed SET or
// `SET x TO DEFAULT` all come out right with no SQL semantics in pgmux.
//
// Reported parameters (TimeZone, DateStyle, application_name, ...) need none of this:
// PostgreSQL sends ParameterStatus when they change.

import { sqlLiteral } from '../protocol/messages.js';
import type { BackendConnection } from '../pool/backend.js';
import type { SessionEffects } from '../routing/sessionEffects.js';
import { reportedName } from './startupParams.js';

export class SettingsTracker {
  /** Unreported settings touched since the last read-back. */
  private touched: string[] = [];
  /** RESET ALL / DISCARD ALL / RESET SESSION AUTHORIZATION: everything known may have changed. */
  private all = false;

  /** Records what a statement may change. */
  note(fx: SessionEffects): void {
    for (const name of fx.settings) {
      if (reportedName(name) === null && !this.touched.includes(name)) this.touched.push(name);
    }
    if (fx.resetsAll) this.all = true;
  }

  /** Settings may have changed since the last read-back. */
  get dirty(): boolean {
    return this.all || this.touched.length > 0;
  }

  /**
   * The names to read back: what was touched, plus (after RESET ALL and the like) every
   * unreported setting the client or the backend carries, plus `extra`
   * (track_extra_parameters). Clears the record.
   */
  take(client: ReadonlyMap<string, string>, backend: ReadonlyMap<string, string>, extra: readonly string[]): string[] {
    const names = this.touched;
    const add = (n: string): void => {
      if (reportedName(n) === null && !names.includes(n)) names.push(n);
    };
    if (this.all) {
      for (const n of client.keys()) add(n);
      for (const n of backend.keys()) add(n);
    }
    for (const n of extra) add(n);
    this.touched = [];
    this.all = false;
    return names;
  }
}

/**
 * One hidden query on `b` (no client linked) reads back `names` into `client` (the client's
 * unreported settings) and `b.applied` (what the backend carries), and with `lsn` the
 * primary's WAL insert position, which it resolves (read_your_writes=lsn).
 */
export async function readBack(
  b: BackendConnection,
  lsn: boolean,
  names: readonly string[],
  client: Map<string, string>,
): Promise<string | null> {
  const cols = readBackColumns(names);
  if (lsn) cols.unshift('pg_current_wal_insert_lsn()');
  const row = await b.queryRow(`SELECT ${cols.join(', ')}`);
  if (row === null) throw new Error('reading back session settings returned no row');
  let i = 0;
  const walLsn = lsn ? (row[i++] ?? null) : null;
  for (const p of names) {
    const v = row[i++];
    // Carried to the client's next backends; this backend already has it.
    if (v == null) {
      client.delete(p);
      b.applied.delete(p);
    } else {
      client.set(p, v);
      b.applied.set(p, v);
    }
  }
  if (names.length > 0) b.syncedFingerprint = null;
  return walLsn;
}

/**
 * One SELECT column per name: the setting's value when the client must carry it, NULL when
 * the backend is at its default.
 *
 * Built-in settings are compared with their reset value (the database's and role's
 * default), so a client that set one back to its default shares backends with clients that
 * never touched it. Custom settings (`myapp.tenant_id`) are placeholders PostgreSQL does
 * not list in pg_settings: once defined in a session they read '' after RESET, never NULL
 * again, so their value is carried as it is (NULL only while never defined).
 *
 * `role` is not in pg_settings either (GUC_NO_SHOW_ALL): read that way a SET ROLE came
 * back NULL, so the client lost its role on its next backend and the backend it left kept
 * it. It reads 'none' when no role is set (RESET ROLE, SET ROLE NONE). Session
 * authorization is never read back: SET SESSION AUTHORIZATION pins the client.
 */
export function readBackColumns(names: readonly string[]): string[] {
  return names.map((p) => {
    const lit = sqlLiteral(p);
    if (p.includes('.')) return `current_setting(${lit}, true)`;
    if (p === 'role') return `NULLIF(current_setting('role'), 'none')`;
    return `(SELECT CASE WHEN current_setting(${lit}, true) IS DISTINCT FROM reset_val THEN current_setting(${lit}, true) END FROM pg_settings WHERE name = ${lit})`;
  });
}
