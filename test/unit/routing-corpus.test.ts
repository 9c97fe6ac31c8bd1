// The routing corpus (test/fixtures/routing.tsv, format in test/fixtures/README.md) is the
// floor every classifier change must pass. It is part of the repository, so every clone runs it.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { classifySql, type Target } from '../../src/routing/classifier.js';

const corpusUrl = new URL('../fixtures/routing.tsv', import.meta.url);

/**
 * Corpus lines the classifier still gets wrong, by line number, with what it returns today.
 * Each is asserted as still wrong, so the fix that makes it right fails here until its line
 * is removed from this list (and then joins the cases that must pass). Empty: the corpus
 * passes in full.
 */
const knownMisroutes = new Map<number, Target>();

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
  readFileSync(corpusUrl, 'utf8')
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

describe('routing corpus (test/fixtures/routing.tsv)', () => {
  const cases = loadCases();
  const passing = cases.filter((c) => !knownMisroutes.has(c.line));
  const misrouted = cases.filter((c) => knownMisroutes.has(c.line));

  it('has cases, and every known misroute names a corpus line', () => {
    expect(cases.length).toBeGreaterThanOrEqual(80);
    const lines = new Set(cases.map((c) => c.line));
    for (const line of knownMisroutes.keys()) expect(lines.has(line), `routing.tsv:${line} is not a case`).toBe(true);
  });

  it.each(passing.map((c) => [c.line, c.expected, c.sql] as const))('line %i: %s <- %j', (_line, expected, sql) => {
    const c = classifySql(sql);
    expect(c.target, c.reason).toBe(expected);
  });

  it.skipIf(misrouted.length === 0).each(misrouted.map((c) => [c.line, c.expected, c.sql] as const))(
    'known misroute, line %i: should be %s <- %j',
    (line, expected, sql) => {
      const c = classifySql(sql);
      expect(c.target, `routing.tsv:${line} is now routed right (${c.reason}): remove it from knownMisroutes`).not.toBe(expected);
      expect(c.target).toBe(knownMisroutes.get(line));
    },
  );
});
