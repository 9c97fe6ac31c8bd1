// Value conversions the PgBouncer and Pgpool-II importers share: numbers, durations,
// booleans and listen addresses as those tools write them, into what load.ts accepts.

import { isAbsolute, resolve } from 'node:path';
import { formatHostPort } from '../config/load.js';


export function isInteger(s: string): boolean {
  return /^[+-]?\d+$/.test(s.trim());
}

/** A whole number as a number (so the YAML shows 20, not "20"); anything else as given. */
export function intOrString(s: string): number | string {
  return isInteger(s) ? Number(s.trim()) : s.trim();
}

/** Seconds as PgBouncer and Pgpool-II write them: a plain number stays a number (pgmux reads seconds). */
export function seconds(s: string): number | string {
  const t = s.trim();
  return /^\d+(\.\d+)?$/.test(t) ? Number(t) : t;
}

/** A PostgreSQL-style time value with a default unit -> a pgmux duration string in its largest exact unit. */
export function pgTime(s: string, defaultUnit: 'ms' | 's'): string | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$/i.exec(s);
  if (!m) return null;
  const factor: Record<string, number> = { us: 0.001, ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 };
  const ms = Number(m[1]) * factor[(m[2] ?? defaultUnit).toLowerCase()]!;
  if (ms === 0) return '0';
  if (!Number.isInteger(ms)) return `${Math.max(1, Math.round(ms))}ms`;
  for (const [unit, f] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % f === 0) return `${ms / f}${unit}`;
  }
  return `${ms}ms`;
}

export function isOn(s: string): boolean {
  return ['on', 'true', 'yes', '1'].includes(s.trim().toLowerCase());
}

export function isOff(s: string): boolean {
  return ['off', 'false', 'no', '0'].includes(s.trim().toLowerCase());
}

/** `*` and empty mean every address. */
export function listenHost(addr: string): string {
  const first = addr.split(',')[0]!.trim();
  return first === '*' || first === '' ? '0.0.0.0' : first;
}

export function hostPort(host: string, port: number): string {
  return formatHostPort({ host, port });
}

/** A file the source names: relative paths are taken from the source file's directory (pgmux writes absolute ones). */
export function sourcePath(p: string, sourceDir: string): string {
  return isAbsolute(p) ? p : resolve(sourceDir, p);
}
