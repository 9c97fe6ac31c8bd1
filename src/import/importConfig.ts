// `pgmux import`: a PgBouncer pgbouncer.ini or a Pgpool-II pgpool.conf -> a pgmux YAML config.
//
// Every setting with a pgmux equivalent is translated into the key load.ts accepts (and each
// emitted value is run through parseConfigObject, so the output always loads); everything
// else becomes one warning line naming the setting, its value and why it was not carried
// over. The warnings are also written into the YAML's header comment, so a file produced with
// `pgmux import old.ini > pgmux.yaml` keeps the record of what still needs a human.
//
// It never lowers security silently: each importer describes what its source refused or
// required (security.ts), and the result is compared with it; every weakening is returned in
// `weakenings`, and the CLI refuses to write the result unless --allow-weaker.
//
// Here: the entry point. output.ts collects and checks the keys and writes the YAML;
// pgbouncer.ts and pgpool.ts translate each format; values.ts has the value conversions
// both use; poolPasswd.ts reads Pgpool-II's pool_passwd (AES included).

import { readFileSync } from 'node:fs';
import { Output } from './output.js';
import { importPgbouncer } from './pgbouncer.js';
import { importPgpool } from './pgpool.js';

export type ImportKind = 'pgbouncer' | 'pgpool';

export const IMPORT_KINDS: readonly ImportKind[] = ['pgbouncer', 'pgpool'];

/** A file the produced YAML refers to (written next to it by the CLI). */
export interface ImportedFile {
  /** The path as the YAML names it. */
  path: string;
  content: string;
  /** What it is, for the CLI's "wrote ..." line. */
  what: string;
}

export interface ImportResult {
  yaml: string;
  warnings: string[];
  /** Each way the result would accept a login the source refused or drop TLS it required. */
  weakenings: string[];
  files: ImportedFile[];
  /** The emitted keys and values (what the YAML holds). */
  values: Record<string, unknown>;
}

export interface ImportOptions {
  kind?: ImportKind;
  /** Relative paths in the source (auth_hba_file, pool_passwd, pool_hba.conf) resolve here; default the cwd. */
  sourceDir?: string;
  /** Reads a file the source refers to; null when it cannot be read. Default: the file system. */
  readFile?: (path: string) => string | null;
  /** Pgpool-II's key for AES passwords (pool_key / ~/.pgpoolkey); null = none. */
  pgpoolKey?: string | null;
  /** Where the key came from, for messages. */
  pgpoolKeyFrom?: string;
  /** The path the YAML names for an auth file the importer writes (pool_passwd -> userlist). */
  authFilePath?: string;
}

export function readFileOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/** The input is neither a pgbouncer.ini nor a pgpool.conf. */
export class ImportError extends Error {
  override name = 'ImportError';
}

/** pgpool.conf has backend_hostname0 (or its clustering mode); pgbouncer.ini has [databases] / [pgbouncer] sections. */
export function detectKind(text: string): ImportKind | null {
  if (/^[ \t]*(backend_hostname\d+|backend_clustering_mode|master_slave_mode)[ \t]*=/m.test(text)) return 'pgpool';
  if (/^[ \t]*\[[ \t]*(databases|pgbouncer)[ \t]*\]/im.test(text)) return 'pgbouncer';
  return null;
}

export function importConfig(text: string, options: ImportKind | ImportOptions = {}): ImportResult {
  const opts: ImportOptions = typeof options === 'string' ? { kind: options } : options;
  const k = opts.kind ?? detectKind(text);
  if (k === null) {
    throw new ImportError(
      'cannot tell what this file is: expected a pgbouncer.ini ([databases] / [pgbouncer] sections) ' +
        'or a pgpool.conf (backend_hostname0 = ... or backend_clustering_mode = ...); name it with --kind pgbouncer|pgpool',
    );
  }
  const out = new Output();
  const full: Required<ImportOptions> = {
    kind: k,
    sourceDir: opts.sourceDir ?? process.cwd(),
    readFile: opts.readFile ?? readFileOrNull,
    pgpoolKey: opts.pgpoolKey ?? null,
    pgpoolKeyFrom: opts.pgpoolKeyFrom ?? 'the Pgpool-II key file',
    authFilePath: opts.authFilePath ?? 'pgmux-userlist.txt',
  };
  if (k === 'pgbouncer') importPgbouncer(text, out, full);
  else importPgpool(text, out, full);
  return out.finish(k);
}
