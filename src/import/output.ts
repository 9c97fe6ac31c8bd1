// The importer's output: pgmux keys in the settings schema's order, each value checked by
// pgmux's own parser (a value it refuses becomes a warning), written as YAML with the
// warnings in its header.

import { Document } from 'yaml';
import { ConfigError, parseConfigObject } from '../config/load.js';
import { SETTINGS, settingRank } from '../config/schema.js';
import type { ImportKind, ImportResult, ImportedFile } from './importConfig.js';
import { defaultSourceSecurity, weakenings, type ClientAuthLevel, type SourceSecurity } from './security.js';

export class Output {
  readonly values = new Map<string, unknown>();
  readonly warnings: string[] = [];
  /** What the source refused or required, filled by the importer; checked against the result in finish(). */
  readonly source: SourceSecurity = defaultSourceSecurity();
  /** Files the YAML refers to that the importer produced (pool_passwd -> userlist). */
  readonly files: ImportedFile[] = [];
  /** An HBA file the importer wrote itself, and the login rule it enforces (for security.ts). */
  generatedHba: { path: string; auth: ClientAuthLevel } | null = null;

  warn(message: string): void {
    this.warnings.push(message);
  }

  /**
   * Sets a pgmux key after checking the value with load.ts; a value pgmux refuses is dropped
   * with a warning naming the original setting.
   */
  set(key: string, value: unknown, from: string): boolean {
    try {
      parseConfigObject({ [key]: value }, 'import', { baseDir: '/' });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      const why = err.message.replace(/ \(in import\)$/, '');
      this.warn(`${from}: not carried over, pgmux refuses the value: ${why}`);
      return false;
    }
    this.values.set(key, value);
    return true;
  }

  /**
   * set() for a key another branch of issue #17 adds to the schema (the query_cache* keys):
   * checked like set() once the schema knows it, written as given until then.
   */
  setAhead(key: string, value: unknown, from: string): boolean {
    if (SETTINGS.some((s) => s.key === key)) return this.set(key, value, from);
    this.values.set(key, value);
    return true;
  }

  finish(kind: ImportKind): ImportResult {
    const poolSize = this.values.get('pool_size');
    const minPool = this.values.get('min_pool_size');
    if (typeof poolSize === 'number' && typeof minPool === 'number' && minPool > poolSize) {
      this.values.delete('min_pool_size');
      this.warn(`min_pool_size ${minPool} is larger than pool_size ${poolSize}: left out (pgmux requires min_pool_size <= pool_size)`);
    }
    const auth = this.values.get('auth');
    if (auth !== undefined && auth !== 'trust' && !this.values.has('auth_file') && !this.values.has('auth_user')) {
      this.warn(`auth ${String(auth)} needs auth_file (a PgBouncer-style userlist.txt); add one before starting pgmux`);
    }
    if (!this.values.has('nodes')) this.warn('no PostgreSQL server found: add nodes (host:port of the primary and every replica) before starting pgmux');

    const obj: Record<string, unknown> = {};
    const keys = [...this.values.keys()].sort((a, b) => settingRank(a) - settingRank(b));
    for (const key of keys) obj[key] = this.values.get(key);

    const doc = new Document(obj);
    const source = kind === 'pgbouncer' ? 'a PgBouncer pgbouncer.ini' : 'a Pgpool-II pgpool.conf';
    const header = [
      ` pgmux configuration imported from ${source} by \`pgmux import\`.`,
      ' Check it with: pgmux check-config --config pgmux.yaml   (keys: docs/configuration.md)',
      ' pgmux discovers which node is the primary; nodes lists every server, weight = share of reads.',
    ];
    const weaker = weakenings(this.source, this.values, this.generatedHba);
    if (weaker.length > 0) {
      header.push('', ` WEAKER THAN THE SOURCE (imported with --allow-weaker) (${weaker.length}):`);
      for (const w of weaker) header.push(`   - ${w.replace(/\n/g, ' ')}`);
    }
    if (this.warnings.length > 0) {
      header.push('', ` Not carried over or changed (${this.warnings.length}):`);
      for (const w of this.warnings) header.push(`   - ${w.replace(/\n/g, ' ')}`);
    }
    doc.commentBefore = header.join('\n');
    return { yaml: doc.toString({ lineWidth: 0 }), warnings: [...this.warnings], weakenings: weaker, files: [...this.files], values: obj };
  }
}
