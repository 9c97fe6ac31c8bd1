// Loading one database's catalog (functionCatalog.ts: its functions; relationCatalog.ts: its
// relations), the part both share: one load at a time with a timeout, `stale` cleared only
// by a load that began after the last change, and back-off after failures.

/** What a per-database catalog keeps about its loading. */
export interface CatalogLoadState {
  loadedAt: number;
  /** A change came after the last load started: the next use must load again. */
  stale: boolean;
  /** Bumped by every change: a load started before it does not clear `stale`. */
  generation: number;
  /** The load in flight (never rejects). */
  loading: Promise<void> | null;
  /** After a failed load, no new attempt before this. */
  retryAt: number;
  failures: number;
}

/** Where a catalog reports loads and failures (the server's logger). */
export interface CatalogLog {
  warn(fields: Record<string, unknown>, msg: string): void;
  info(fields: Record<string, unknown>, msg: string): void;
  debug(fields: Record<string, unknown>, msg: string): void;
}

/** Retry after a failed load: 1 s, doubling up to this. */
const MAX_RETRY_MS = 60_000;

export function newCatalogLoadState(): CatalogLoadState {
  return { loadedAt: 0, stale: false, generation: 0, loading: null, retryAt: 0, failures: 0 };
}

/** Something changed what the catalog holds: the next use loads it again, at once. */
export function catalogChanged(d: CatalogLoadState): void {
  d.stale = true;
  d.generation++;
  d.retryAt = 0;
}

/**
 * Starts a load (sets and returns `d.loading`, which never rejects). `loaded` keeps the
 * value (`recovered`: after failures); `failed` is told whether the failure starts a streak
 * (warn once per streak).
 */
export function startCatalogLoad<T>(
  d: CatalogLoadState,
  load: () => Promise<T>,
  timeoutMs: number,
  loaded: (value: T, recovered: boolean) => void,
  failed: (err: Error, firstOfStreak: boolean) => void,
): Promise<void> {
  const generation = d.generation;
  let timer: NodeJS.Timeout | null = null;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
  });
  d.loading = Promise.race([load(), timeout])
    .then(
      (value) => {
        const recovered = d.failures > 0;
        d.loadedAt = Date.now();
        d.failures = 0;
        d.retryAt = 0;
        if (d.generation === generation) d.stale = false;
        loaded(value, recovered);
      },
      (err: Error) => {
        d.failures++;
        d.retryAt = Date.now() + Math.min(MAX_RETRY_MS, 1000 * 2 ** Math.min(d.failures - 1, 16));
        failed(err, d.failures === 1);
      },
    )
    .finally(() => {
      if (timer !== null) clearTimeout(timer);
      d.loading = null;
    });
  return d.loading;
}
