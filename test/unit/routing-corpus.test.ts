// The shared routing corpus (../shared/corpus/routing.tsv, next to the repository) is the
// floor every classifier change must pass. It lives outside the repository, so in a user's
// clone it is absent and this suite is skipped; test/unit/classifier.test.ts stands alone.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { classifySql, type Target } from '../../src/routing/classifier.js';

const corpusUrl = new URL('../../../shared/corpus/routing.tsv', import.meta.url);
const corpusPath = fileURLToPath(corpusUrl);
const exists = existsSync(corpusPath);

/** Decodes the corpus escapes: \n, \t and \\ (any other backslash stays as written). */
function decodeCorpusSql(s: string): string {
  return s.replace(/\\([nt\\])/g, (_, c: string) => (c === 'n' ? '\n' : c === 't' ? '\t' : '\\'));
}

interface Case {
  line: number;
  expected: Target;
  sql: string;
}

function loadCases(): Case[] {
  const cases: Case[] = [];
  readFileSync(corpusPath, 'utf8')
    .split('\n')
    .forEach((raw, idx) => {
      const line = raw.replace(/\r$/, '');
      if (line.trim() === '' || line.startsWith('#')) return;
      const tab = line.indexOf('\t');
      if (tab < 0) throw new Error(`routing.tsv:${idx + 1}: no tab separator`);
      const expected = line.slice(0, tab);
      if (expected !== 'primary' && expected !== 'replica') {
        throw new Error(`routing.tsv:${idx + 1}: expected 'primary' or 'replica', got ${JSON.stringify(expected)}`);
      }
      cases.push({ line: idx + 1, expected, sql: decodeCorpusSql(line.slice(tab + 1)) });
    });
  return cases;
}

describe.skipIf(!exists)(
  exists
    ? 'routing corpus (../shared/corpus/routing.tsv)'
    : `routing corpus: skipped, ${corpusPath} is absent (the corpus lives in ../shared next to the repository, not in a clone)`,
  () => {
    const cases = exists ? loadCases() : [];

    it('has cases', () => {
      expect(cases.length).toBeGreaterThan(0);
    });

    it.each(cases.map((c) => [c.line, c.expected, c.sql] as const))('line %i: %s <- %j', (_line, expected, sql) => {
      const c = classifySql(sql);
      expect(c.target, c.reason).toBe(expected);
    });
  },
);
