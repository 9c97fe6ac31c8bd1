// `pgmux:` routing hints in a query's leading comments: `/* pgmux:primary */`,
// `/* pgmux:replica max_lag_ms=500 */`, `-- pgmux:replica`.

import type { Comment } from './lexer.js';
import type { Target } from './classifier.js';

export interface Hints {
  target?: Target;
  targetText?: string;
  maxLagMs?: number;
}

/** Splits a hint comment body into lowercased items: separators are whitespace, `,` and `;`;
 *  `key = value` is joined into `key=value`; a `pgmux:` prefix is dropped from each item. */
function hintItems(body: string): string[] {
  const items: string[] = [];
  const lower = body.toLowerCase();
  let joinNext = false;
  let start = -1;
  const n = lower.length;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? lower.charCodeAt(i) : 32;
    const sep = c === 32 || (c >= 9 && c <= 13) || c === 44 || c === 59 || c === 61; // ws , ; =
    if (!sep) {
      if (start < 0) start = i;
      continue;
    }
    if (start >= 0) {
      let item = lower.slice(start, i);
      if (item.startsWith('pgmux:')) item = item.slice(6);
      if (joinNext && items.length > 0) items[items.length - 1] += item;
      else items.push(item);
      joinNext = false;
      start = -1;
    }
    if (c === 61 && items.length > 0) {
      items[items.length - 1] += '=';
      joinNext = true;
    }
  }
  return items;
}

/** Parses `pgmux:` directives from the leading comments. */
export function parseHints(comments: Comment[]): Hints | null {
  let hints: Hints | null = null;
  for (const c of comments) {
    const body = c.text.trimStart();
    if (body.length < 6 || body.slice(0, 6).toLowerCase() !== 'pgmux:') continue;
    hints ??= {};
    for (const item of hintItems(body)) {
      if (item === 'primary' || item === 'replica') {
        if (hints.target === undefined || item === 'primary') {
          hints.target = item;
          hints.targetText = c.block ? `/* pgmux:${item} */` : `-- pgmux:${item}`;
        }
      } else if (hints.maxLagMs === undefined && item.startsWith('max_lag_ms=')) {
        const v = item.slice(11);
        if (v.length > 0 && v.length <= 15 && isDigits(v)) hints.maxLagMs = Number(v);
      }
    }
  }
  return hints;
}

function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

export interface CacheHints {
  /** `/* pgmux:nocache *\/`: never serve or store this statement's result. */
  nocache?: true;
  /** `/* pgmux:cache ttl=30s *\/`: cache the result (when the analysis allows) for this long. */
  ttlMs?: number;
}

/** Parses the query-cache directives from the leading comments: `cache`, `ttl=N[ms|s|min]`, `nocache`. */
export function parseCacheHints(comments: Comment[]): CacheHints | null {
  let hints: CacheHints | null = null;
  for (const c of comments) {
    const body = c.text.trimStart();
    if (body.length < 6 || body.slice(0, 6).toLowerCase() !== 'pgmux:') continue;
    for (const item of hintItems(body)) {
      if (item === 'nocache') (hints ??= {}).nocache = true;
      else if (item.startsWith('ttl=')) {
        const ms = parseHintDuration(item.slice(4));
        if (ms !== null) (hints ??= {}).ttlMs = ms;
      }
    }
  }
  return hints;
}

/** `30s`, `500ms`, `2min`, `30` (seconds) -> milliseconds; null when malformed. */
function parseHintDuration(v: string): number | null {
  let unit = 1000;
  let digits = v;
  if (v.endsWith('ms')) {
    unit = 1;
    digits = v.slice(0, -2);
  } else if (v.endsWith('min')) {
    unit = 60_000;
    digits = v.slice(0, -3);
  } else if (v.endsWith('s')) digits = v.slice(0, -1);
  if (digits.length === 0 || digits.length > 9 || !isDigits(digits)) return null;
  return Number(digits) * unit;
}
