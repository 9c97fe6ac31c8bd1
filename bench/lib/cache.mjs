// The query cache's hit counters of a cache target, read before and after each run: pgmux's
// from /metrics, Pgpool-II's from SHOW pool_cache through Pgpool-II itself.

import pg from 'pg';

const HOST = '127.0.0.1';

/** Sum of a counter's samples in Prometheus text (every label set), or null when absent. */
export function promCounter(text, name) {
  let sum = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || (line[name.length] !== ' ' && line[name.length] !== '{')) continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum = (sum ?? 0) + v;
  }
  return sum;
}

/**
 * { hits, lookups } of `target` so far (lookups = reads the cache was asked for: hits + misses),
 * or { error }. `kind`: 'pgmux' | 'pgpool' (the target definition's `cache`).
 */
export async function readCacheCounters(kind, target, database) {
  try {
    if (kind === 'pgmux') {
      if (!target.httpPort) return { error: 'pgmux started without --http' };
      const res = await fetch(`http://${HOST}:${target.httpPort}/metrics`, { signal: AbortSignal.timeout(5000) });
      const text = await res.text();
      const hits = promCounter(text, 'pgmux_query_cache_hits_total');
      const misses = promCounter(text, 'pgmux_query_cache_misses_total');
      if (hits === null || misses === null) return { error: 'no pgmux_query_cache_hits_total / misses_total on /metrics' };
      return { hits, lookups: hits + misses };
    }
    if (kind === 'pgpool') {
      const client = new pg.Client({ host: HOST, port: target.port, user: 'postgres', database, connectionTimeoutMillis: 5000, query_timeout: 5000 });
      client.on('error', () => {});
      try {
        await client.connect();
        // num_selects: SELECTs answered by the nodes, i.e. the cache's misses (cache_hit_ratio
        // = num_cache_hits / (num_cache_hits + num_selects)).
        const { rows } = await client.query('SHOW pool_cache');
        const hits = Number(rows[0]?.num_cache_hits);
        const selects = Number(rows[0]?.num_selects);
        if (!Number.isFinite(hits) || !Number.isFinite(selects)) return { error: `SHOW pool_cache: unexpected columns ${Object.keys(rows[0] ?? {}).join(', ')}` };
        // Pgpool-II's own ratio (cumulative, two decimals) must agree with that reading of num_selects.
        const said = Number(rows[0]?.cache_hit_ratio);
        if (hits + selects > 0 && Number.isFinite(said) && Math.abs(said - hits / (hits + selects)) > 0.011) {
          return { error: `SHOW pool_cache: cache_hit_ratio ${said} is not num_cache_hits / (num_cache_hits + num_selects) = ${(hits / (hits + selects)).toFixed(3)}` };
        }
        return { hits, lookups: hits + selects };
      } finally {
        await client.end().catch(() => {});
      }
    }
    return { error: `no cache counters for ${kind}` };
  } catch (e) {
    return { error: e.message };
  }
}

/** The difference of two readings: { hits, lookups } or { error }. */
export function counterDelta(before, after) {
  if (before.error || after.error) return { error: before.error ?? after.error };
  return { hits: after.hits - before.hits, lookups: after.lookups - before.lookups };
}

/** "hit ratio 87.1% (…)" over the rounds' deltas, for the report's note column; null for none. */
export function hitRatioNote(deltas) {
  if (!deltas || deltas.length === 0) return null;
  const bad = deltas.find((d) => d.error);
  if (bad) return `hit ratio unknown: ${bad.error}`;
  const hits = deltas.reduce((a, d) => a + d.hits, 0);
  const lookups = deltas.reduce((a, d) => a + d.lookups, 0);
  if (lookups === 0) return 'hit ratio —: no cacheable reads counted';
  return `cache hit ratio ${((100 * hits) / lookups).toFixed(1)}% (${Math.round(hits).toLocaleString('en-US')} of ${Math.round(lookups).toLocaleString('en-US')} reads)`;
}
