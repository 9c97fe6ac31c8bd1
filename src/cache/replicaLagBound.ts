// How long after a write a replica's reply may still predate it (query_cache stores a replica's
// reply only once the tables' last write is older): the lag pgmux routes reads within plus one
// health check, Infinity when some node has no lag limit. Computed once per configuration.

import type { Config } from '../config/types.js';

const bounds = new WeakMap<Config, number>();

export function replicaLagBoundMs(cfg: Config): number {
  let v = bounds.get(cfg);
  if (v === undefined) {
    v = cfg.maxLagMs === null || cfg.nodes.some((n) => n.maxLagMs === null) ? Infinity : Math.max(cfg.maxLagMs, ...cfg.nodes.map((n) => n.maxLagMs ?? 0)) + cfg.healthCheckPeriodMs;
    bounds.set(cfg, v);
  }
  return v;
}
