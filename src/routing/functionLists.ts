// Function-name lists: the built-in functions that write or hold session state, and the
// write_functions / read_only_functions settings, compiled into sets the classifier and the
// per-database volatility check (functionCatalog.ts) match calls against.

import { lex } from './lexer.js';

/** A function call as written: `schema.name(` or `name(` (schema null); unquoted names lowercased. */
export interface FunctionRef {
  readonly schema: string | null;
  readonly name: string;
}

/** Functions that write or hold session state, matched by exact name (any schema). */
const BUILTIN_WRITE_FUNCTIONS = [
  // sequences
  'nextval',
  'setval',
  'currval',
  'lastval',
  // transaction ids: assign one (a write on a standby is impossible)
  'txid_current',
  'txid_current_if_assigned',
  // session state and notifications
  'set_config',
  'setseed',
  'pg_notify',
  // large objects (server-side API without the lo_ prefix)
  'loread',
  'lowrite',
  // WAL and backup control
  'pg_switch_wal',
  'pg_switch_xlog',
  'pg_start_backup',
  'pg_stop_backup',
  'pg_drop_replication_slot',
  'pg_sync_replication_slots',
  'pg_log_standby_snapshot',
  // index maintenance and catalog writes
  'brin_summarize_new_values',
  'brin_summarize_range',
  'brin_desummarize_range',
  'gin_clean_pending_list',
  'pg_import_system_collations',
  // act on the node they run on: never meant for a random replica
  'pg_promote',
  'pg_cancel_backend',
  'pg_terminate_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  // per-node statistics and adminpack
  'pg_stat_statements_reset',
  'pg_file_write',
  'pg_file_rename',
  'pg_file_unlink',
  'pg_file_sync',
];

/** Functions that write or hold session state, matched by name prefix (any schema). */
const BUILTIN_WRITE_PREFIXES = [
  'pg_advisory_', // pg_advisory_lock, _xact_lock, _unlock, _unlock_all, _shared ...
  'pg_try_advisory_',
  'pg_current_xact_id', // pg_current_xact_id, pg_current_xact_id_if_assigned
  'pg_current_wal_', // pg_current_wal_lsn, _insert_lsn, _flush_lsn
  'pg_current_xlog_', // pre-10 names
  'lo_', // lo_create, lo_import, lo_open, lo_put, lo_unlink, lo_from_bytea ...
  'pg_create_', // pg_create_restore_point, pg_create_*_replication_slot
  'pg_copy_', // pg_copy_*_replication_slot
  'pg_logical_', // pg_logical_emit_message, pg_logical_slot_get_changes ...
  'pg_replication_', // pg_replication_origin_*, pg_replication_slot_advance
  'pg_wal_replay_', // standby-only controls: must never pick a random replica
  'pg_backup_', // pg_backup_start, pg_backup_stop
  'pg_stat_reset', // pg_stat_reset, pg_stat_reset_shared, ...
];

interface FunctionRule {
  schema: string | null;
  name: string;
}

/** A compiled set of function names (write_functions, read_only_functions). */
export class FunctionSet {
  private readonly exact = new Map<string, (string | null)[]>();
  private readonly prefixes: FunctionRule[] = [];
  /** First characters of the prefixes: most calls (count, coalesce, ...) skip the prefix loop. */
  private readonly prefixStarts = new Set<string>();

  add(schema: string | null, name: string, prefix: boolean): void {
    if (prefix) {
      this.prefixes.push({ schema, name });
      this.prefixStarts.add(name[0]!);
      return;
    }
    const list = this.exact.get(name);
    if (list) list.push(schema);
    else this.exact.set(name, [schema]);
  }

  /**
   * Whether a call of `schema.name(` (schema null when unqualified) is in the set. An
   * unqualified entry matches any schema; a qualified one its schema, and unqualified calls.
   */
  matches(schema: string | null, name: string): boolean {
    const schemas = this.exact.get(name);
    if (schemas !== undefined) {
      for (const s of schemas) if (s === null || schema === null || s === schema) return true;
    }
    if (!this.prefixStarts.has(name[0]!)) return false;
    for (const p of this.prefixes) {
      if (name.startsWith(p.name) && (p.schema === null || schema === null || p.schema === schema)) return true;
    }
    return false;
  }
}

/** Parses a function list entry: `name`, `schema.name`, `"Quoted"`, `prefix*`, optionally `()`. */
export function parseFunctionEntry(entry: string, setting = 'write_functions'): { schema: string | null; name: string; prefix: boolean } {
  const fail = (): never => {
    throw new Error(
      `invalid ${setting} entry ${JSON.stringify(entry)}: expected name, schema.name or a name prefix ending in *`,
    );
  };
  if (typeof entry !== 'string') fail();
  const { tokens, complete } = lex(entry);
  if (!complete) fail();
  const parts: string[] = [];
  let k = 0;
  for (;;) {
    const t = tokens[k];
    if (t === undefined || !(t.kind === 'ident' || t.kind === 'keyword' || t.kind === 'quotedIdent') || t.value === '') fail();
    parts.push(t!.value);
    k++;
    if (tokens[k]?.kind === 'punct' && tokens[k]!.value === '.') {
      k++;
      continue;
    }
    break;
  }
  let prefix = false;
  if (tokens[k]?.kind === 'op' && tokens[k]!.value === '*') {
    prefix = true;
    k++;
  }
  if (tokens[k]?.value === '(' && tokens[k + 1]?.value === ')') k += 2;
  if (k !== tokens.length || parts.length > 2) fail();
  return parts.length === 2 ? { schema: parts[0]!, name: parts[1]!, prefix } : { schema: null, name: parts[0]!, prefix };
}

/** The built-in writing functions plus `extra` (the write_functions setting). */
export function compileWriteFunctions(extra: readonly string[] | undefined): FunctionSet {
  const set = new FunctionSet();
  for (const n of BUILTIN_WRITE_FUNCTIONS) set.add(null, n, false);
  for (const p of BUILTIN_WRITE_PREFIXES) set.add(null, p, true);
  if (extra !== undefined) {
    if (!Array.isArray(extra)) throw new Error('write_functions must be a list of function names');
    for (const e of extra) {
      const r = parseFunctionEntry(e);
      set.add(r.schema, r.name, r.prefix);
    }
  }
  return set;
}

/** A set of just the listed functions (`setting` names the list in error messages). */
export function compileFunctionList(entries: readonly string[], setting: string): FunctionSet {
  if (!Array.isArray(entries)) throw new Error(`${setting} must be a list of function names`);
  const set = new FunctionSet();
  for (const e of entries) {
    const r = parseFunctionEntry(e, setting);
    set.add(r.schema, r.name, r.prefix);
  }
  return set;
}

/** The built-in writing functions alone: the set when write_functions is empty. */
export const DEFAULT_WRITE_FUNCTIONS = compileWriteFunctions(undefined);
