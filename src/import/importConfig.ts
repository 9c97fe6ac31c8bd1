// `pgmux import`: a PgBouncer pgbouncer.ini or a Pgpool-II pgpool.conf -> a pgmux YAML config.
//
// Every setting with a pgmux equivalent is translated into the key load.ts accepts (and each
// emitted value is run through parseConfigObject, so the output always loads); everything
// else becomes one warning line naming the setting, its value and why it was not carried
// over. The warnings are also written into the YAML's header comment, so a file produced with
// `pgmux import old.ini > pgmux.yaml` keeps the record of what still needs a human.
//
// Here: the entry point. output.ts collects and checks the keys and writes the YAML;
// pgbouncer.ts and pgpool.ts translate each format; values.ts has the value conversions
// both use.

import { Output } from './output.js';
import { importPgbouncer } from './pgbouncer.js';
import { importPgpool } from './pgpool.js';

export type ImportKind = 'pgbouncer' | 'pgpool';

export const IMPORT_KINDS: readonly ImportKind[] = ['pgbouncer', 'pgpool'];

export interface ImportResult {
  yaml: string;
  warnings: string[];
}

/** The input is neither a pgbouncer.ini nor a pgpool.conf. */
export class ImportError extends Error {
  override name = 'ImportError';
}

/** pgpool.conf has backend_hostname0; pgbouncer.ini has [databases] / [pgbouncer] sections. */
export function detectKind(text: string): ImportKind | null {
  if (/^[ \t]*backend_hostname\d+[ \t]*=/m.test(text)) return 'pgpool';
  if (/^[ \t]*\[[ \t]*(databases|pgbouncer)[ \t]*\]/im.test(text)) return 'pgbouncer';
  return null;
}

export function importConfig(text: string, kind?: ImportKind): ImportResult {
  const k = kind ?? detectKind(text);
  if (k === null) {
    throw new ImportError(
      'cannot tell what this file is: expected a pgbouncer.ini ([databases] / [pgbouncer] sections) ' +
        'or a pgpool.conf (backend_hostname0 = ...); name it with --kind pgbouncer|pgpool',
    );
  }
  const out = new Output();
  if (k === 'pgbouncer') importPgbouncer(text, out);
  else importPgpool(text, out);
  return out.finish(k);
}
