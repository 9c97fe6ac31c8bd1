// The health check's query and the reading of its answer: what monitor.ts sends each node
// every round and turns into a ProbeResult for deriveTopology.

import type { BackendConnection } from '../pool/backend.js';
import { BackendError, PgmuxError } from '../protocol/errors.js';
import { parseLsn, type ProbeResult } from './snapshot.js';

/**
 * One query that works on a primary and a replica alike. pg_is_in_recovery() is read once
 * (a promotion between two reads would make pg_current_wal_lsn() fail). Timeline: exact
 * on a primary from the current WAL file name (pg_control_checkpoint() lags behind a
 * promotion until the next checkpoint); on a replica the timeline its WAL receiver
 * receives (NULL unless the user is a superuser or has pg_read_all_stats, e.g. through
 * pg_monitor), else the newest of its last restartpoint's and its minimum recovery point's,
 * which can lag behind a timeline switch for minutes. tli_hidden: a WAL receiver runs but
 * this user may not see its timeline. backends: client connections per database, whoever made
 * them (every pgmux instance, other applications): what the node sees, next to the budgets.
 */
export const PROBE_SQL = `WITH r AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec),
w AS MATERIALIZED (SELECT (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1) AS tli,
  EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status IS NULL) AS hidden)
SELECT r.rec,
  CASE WHEN r.rec
    THEN coalesce(w.tli, (SELECT greatest(c.timeline_id, nullif(v.min_recovery_end_timeline, 0)) FROM pg_control_checkpoint() c, pg_control_recovery() v))
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  END AS tli,
  (r.rec AND w.hidden) AS tli_hidden,
  (SELECT system_identifier::text FROM pg_control_system()) AS sysid,
  CASE WHEN r.rec THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END AS lsn,
  pg_last_wal_receive_lsn()::text AS recv,
  extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 AS replay_age_ms,
  (SELECT json_object_agg(datname, n) FROM (SELECT datname, count(*) AS n FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND datname IS NOT NULL GROUP BY datname) s) AS backends
FROM r, w`;

/**
 * The probe row as one JSON object: BackendConnection.queryRow() returns text columns by
 * position; JSON keeps the column names and the booleans and numbers parseProbeRow() reads.
 */
const PROBE_JSON_SQL = `SELECT row_to_json(p)::text FROM (${PROBE_SQL}) p`;

/** Runs the probe on a control connection: the row as an object, or undefined when none came. */
export async function queryProbe(client: BackendConnection): Promise<Record<string, unknown> | undefined> {
  const row = await client.queryRow(PROBE_JSON_SQL);
  const json = row?.[0];
  return typeof json === 'string' ? (JSON.parse(json) as Record<string, unknown>) : undefined;
}

export function parseProbeRow(row: Record<string, unknown>): Omit<ProbeResult, 'index' | 'ok' | 'at'> {
  const num = (v: unknown): number | null => {
    if (v === null || v === undefined) return null;
    const n = typeof v === 'number' ? v : Number(v);
    return Number.isFinite(n) ? n : null;
  };
  const lsn = (v: unknown): bigint | null => (typeof v === 'string' && v ? parseLsn(v) : null);
  const inRecovery = row.rec === true;
  const out: Omit<ProbeResult, 'index' | 'ok' | 'at'> = {
    inRecovery,
    receiveLsn: lsn(row.recv),
    replayLagMs: inRecovery ? num(row.replay_age_ms) : null,
  };
  const tli = num(row.tli);
  if (tli !== null) out.timeline = tli;
  if (row.tli_hidden === true) out.timelineHidden = true;
  if (typeof row.sysid === 'string') out.systemId = row.sysid;
  const wal = lsn(row.lsn);
  if (wal !== null) out.walLsn = wal;
  if (row.backends !== null && typeof row.backends === 'object') {
    const byDb = new Map<string, number>();
    for (const [db, n] of Object.entries(row.backends as Record<string, unknown>)) {
      const v = num(n);
      if (v !== null) byDb.set(db, v);
    }
    out.backendsByDatabase = byDb;
  } else if (row.backends === null) out.backendsByDatabase = new Map();
  return out;
}

/** A failed check's reason, for the node's `reason` and the logs. */
export function probeErrorText(err: unknown): string {
  // The detail says what failed (e.g. "127.0.0.1:5433: connect ECONNREFUSED ..."), the message only that it did.
  if (err instanceof PgmuxError) return err.spec.detail ? `${err.spec.message}: ${err.spec.detail}` : err.spec.message;
  if (err instanceof BackendError) return `${err.message} (${err.code})`;
  if (err instanceof Error) {
    const code = (err as { code?: string }).code;
    return code && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
  }
  return String(err);
}
