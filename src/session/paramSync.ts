// One client's session settings (ClientSettings), and what makes a pooled backend carry them
// before the client's own messages run on it: the reported parameters the client sees
// (TimeZone, DateStyle, application_name, ...) and the unreported settings it asked for at
// startup (statement_timeout, search_path, custom GUCs). One hidden simple Query does it all.
//
// set_config() takes the value exactly as a startup packet would (no SQL parsing of the
// value), which matters for list settings such as search_path.

import { sqlLiteral } from '../protocol/messages.js';
import { isSettableReported } from './startupParams.js';

export interface SessionSettings {
  /** Reported parameters as the client knows them (ParameterStatus names). */
  readonly reported: ReadonlyMap<string, string>;
  /** Unreported settings the client asked for (lower-case name -> value). */
  readonly settings: ReadonlyMap<string, string>;
}

export interface BackendSettings {
  readonly params: ReadonlyMap<string, string>;
  /** Unreported settings pgmux applied earlier; updated by this function. */
  readonly applied: Map<string, string>;
}

/**
 * Makes `backend` carry `client`'s settings (one hidden query), unless it already carries
 * exactly these: `fingerprint` names them (settingsFingerprint), so the check is one compare.
 */
export function alignSettings(
  client: SessionSettings,
  backend: BackendSettings & { syncedFingerprint: string | null; sendHidden(sql: string): void },
  fingerprint: string,
): void {
  if (backend.syncedFingerprint === fingerprint) return;
  const sql = buildSyncSql(client, backend);
  if (sql !== null) backend.sendHidden(sql);
  backend.syncedFingerprint = fingerprint;
}

/** Returns the SQL that aligns `backend` with `client`, or null when they already agree. */
export function buildSyncSql(client: SessionSettings, backend: BackendSettings): string | null {
  let calls = '';
  for (const [name, value] of client.reported) {
    if (backend.params.get(name) === value || !isSettableReported(name)) continue;
    calls += (calls ? ', ' : '') + `set_config(${sqlLiteral(name)}, ${sqlLiteral(value)}, false)`;
  }
  for (const [name, value] of client.settings) {
    if (backend.applied.get(name) === value) continue;
    calls += (calls ? ', ' : '') + `set_config(${sqlLiteral(name)}, ${sqlLiteral(value)}, false)`;
    backend.applied.set(name, value);
  }
  let resets = '';
  for (const name of backend.applied.keys()) {
    if (client.settings.has(name)) continue;
    resets += `RESET ${quoteGucName(name)}; `;
    backend.applied.delete(name);
  }
  if (!calls && !resets) return null;
  return (calls ? `SELECT ${calls}; ` : '') + resets;
}

/** `a.b` -> `"a"."b"`: GUC names may be dotted (custom) and need quoting per part. */
export function quoteGucName(name: string): string {
  return name
    .split('.')
    .map((p) => '"' + p.replace(/"/g, '""') + '"')
    .join('.');
}

/** A stable key for a set of startup settings (for caching what a login reports). */
export function settingsSignature(settings: ReadonlyMap<string, string>): string {
  let sig = '';
  for (const [k, v] of settings) sig += k + '\0' + v + '\0';
  return sig;
}

/** One string object per distinct settings fingerprint (cheap identity comparisons). */
const fingerprints = new Map<string, string>();

/** Identifies a client's session settings; equal settings give the same string object. */
export function settingsFingerprint(reported: ReadonlyMap<string, string>, settings: ReadonlyMap<string, string>): string {
  const s = settingsSignature(reported) + '\x01' + settingsSignature(settings);
  let v = fingerprints.get(s);
  if (v === undefined) {
    if (fingerprints.size > 10_000) fingerprints.clear();
    fingerprints.set(s, s);
    v = s;
  }
  return v;
}

/**
 * One client's session settings and the fingerprint that names them: computed when a
 * backend needs aligning, and again only after they changed (the login's welcome, a
 * ParameterStatus, a read-back after SET).
 */
export class ClientSettings implements SessionSettings {
  /** Reported parameters as this client knows them. */
  reported = new Map<string, string>();
  /** Unreported startup settings (statement_timeout, search_path, custom GUCs, ...). */
  settings = new Map<string, string>();
  private cached: string | null = null;

  /** Identifies these settings; equal strings mean equal settings. */
  get fingerprint(): string {
    this.cached ??= settingsFingerprint(this.reported, this.settings);
    return this.cached;
  }

  /**
   * Logged in: the reported parameters are the ones the welcome told the client. The
   * handshake knows the fingerprint of a cached welcome, so it is not computed per login.
   */
  welcome(params: Iterable<readonly [string, string]>, fingerprint: string | null = null): void {
    this.reported = new Map(params);
    this.cached = fingerprint;
  }

  /** A backend reported a parameter (ParameterStatus) the client sees from now on. */
  report(name: string, value: string): void {
    if (this.reported.get(name) === value) return;
    this.reported.set(name, value);
    this.cached = null;
  }

  /** The unreported settings changed in place (read back after the client's SET). */
  changed(): void {
    this.cached = null;
  }
}
