// An HBA file named by the source (PgBouncer's auth_hba_file, Pgpool-II's pool_hba.conf):
// carried as hba_file only when pgmux's own parser (src/auth/hba.ts) reads it exactly; a file
// pgmux would read differently is refused with the parser's reason, never rewritten loosely.

import { isAbsolute, resolve } from 'node:path';
import { HbaError, parseHba } from '../auth/hba.js';
import type { Output } from './output.js';

export interface HbaSource {
  /** The setting that names it, for messages. */
  from: string;
  /** The path as the source wrote it. */
  path: string;
  sourceDir: string;
  readFile: (path: string) => string | null;
}

/** Sets hba_file when pgmux can honour the file; returns whether it did. */
export function carryHba(h: HbaSource, out: Output): boolean {
  const abs = isAbsolute(h.path) ? h.path : resolve(h.sourceDir, h.path);
  const text = h.readFile(abs);
  if (text === null) {
    // Carried unchecked: pgmux reads it at start and refuses to start on anything it cannot honour.
    out.warn(`${h.from}: ${abs} could not be read here, so it was not checked; pgmux checks it at start and refuses to start if it uses something pgmux cannot honour`);
    return out.set('hba_file', abs, h.from);
  }
  try {
    parseHba(text, abs);
  } catch (err) {
    if (!(err instanceof HbaError)) throw err;
    out.warn(`${h.from}: not carried over: pgmux reads this file differently: ${err.message}; rewrite that line for pgmux (docs/configuration.md, hba_file)`);
    return false;
  }
  return out.set('hba_file', abs, h.from);
}
