// The query result cache's store: raw backend reply bytes by key, bounded by bytes (LRU) and
// by age (TTL), with an index from table to entries so a write can drop what it made stale.
// It knows nothing of SQL or sockets: the classifier says what is cacheable and which tables
// a statement reads or writes, the session builds keys and moves bytes.

export interface QueryCacheOptions {
  /** Total bytes of stored replies (keys included) before the least recently used go. */
  maxBytes: number;
  /** Replies larger than this are not stored. */
  maxEntryBytes: number;
  /** Default lifetime of an entry. */
  ttlMs: number;
  /** Clock (ms); tests pass their own. */
  now?: () => number;
}

export interface QueryCacheStats {
  entries: number;
  bytes: number;
  hits: number;
  misses: number;
  evictions: number;
  invalidations: number;
  byTable: Array<{ database: string; table: string; entries: number; bytes: number }>;
}

/** What a request needs to find its entry again: everything that can change the answer. */
export interface CacheKeyParts {
  user: string;
  /** The client's settings fingerprint (search_path, role, TimeZone, ...). */
  settings: string;
  sql: string;
  /**
   * Extended protocol only: the unit's shape and a digest of its parameter types, formats and
   * values and result formats (src/session/cacheableUnit.ts); a digest, not the values, so a
   * lookup copies nothing of the Bind.
   */
  unit?: string;
}

interface Entry {
  readonly database: string;
  readonly mapKey: string;
  readonly reply: Buffer;
  /** Bare table names (see bareName) the entry reads. */
  readonly tables: readonly string[];
  readonly storedAt: number;
  /** Lowered by configure() when the default TTL it was stored with shrinks. */
  expiresAt: number;
  /** Stored with the default TTL (no per-statement ttl hint): a RELOAD's shorter TTL applies to it. */
  readonly defaultTtl: boolean;
  readonly size: number;
}

/** Bookkeeping per entry beyond the reply bytes and key text. */
const ENTRY_OVERHEAD_BYTES = 128;

/**
 * Entries are indexed by the last part of a table name: a write to `s.t` drops entries that
 * read `t` through any schema. Matching more than the exact table is safe (more misses);
 * matching less would serve stale rows, and an unqualified name's schema depends on
 * search_path, which pgmux does not resolve.
 */
/**
 * Is `table` (as the classifier names it: schema.table when written so, else bare) on `list`
 * (query_cache_exclude_tables)? A bare entry matches the name in every schema; a bare table
 * matches a qualified entry of that name too (search_path may resolve it there).
 */
export function tableListed(list: readonly string[], table: string): boolean {
  const bare = bareName(table);
  for (const e of list) {
    if (e === table || (bareName(e) === bare && (!e.includes('.') || !table.includes('.')))) return true;
  }
  return false;
}

function checkBounds(opts: Omit<QueryCacheOptions, 'now'>): void {
  for (const [name, v] of [['maxBytes', opts.maxBytes], ['maxEntryBytes', opts.maxEntryBytes], ['ttlMs', opts.ttlMs]] as const) {
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`${name} must be a non-negative number, got ${v}`);
  }
}

/** Table name -> bare name: the classifier hands out the same few names on every request. */
const bareNames = new Map<string, string>();

function bareName(table: string): string {
  let bare = bareNames.get(table);
  if (bare === undefined) {
    const dot = table.lastIndexOf('.');
    bare = (dot < 0 ? table : table.slice(dot + 1)).toLowerCase();
    if (bareNames.size >= 10_000) bareNames.clear();
    bareNames.set(table, bare);
  }
  return bare;
}

/** The bare names of a verdict's tables, without duplicates: the verdict's array is cached by text, so is this. */
const bareLists = new WeakMap<readonly string[], readonly string[]>();

function bareTables(tables: readonly string[]): readonly string[] {
  let bare = bareLists.get(tables);
  if (bare === undefined) {
    bare = [...new Set(tables.map(bareName))];
    bareLists.set(tables, bare);
  }
  return bare;
}

/**
 * (settings fingerprint, user) -> a number that names the pair in keys: the fingerprint runs to
 * hundreds of characters, and a key that carried it would be copied and hashed whole on every
 * lookup. Numbers are never reused, so forgetting the pairs (past MAX_SCOPES) only makes the
 * entries keyed by the old numbers unreachable (they age out), never another pair's.
 */
const scopes = new Map<string, Map<string, number>>();
const MAX_SCOPES = 10_000;
let scopeCount = 0;
let nextScope = 0;

function scopeOf(user: string, settings: string): number {
  if (scopeCount >= MAX_SCOPES) {
    scopes.clear();
    scopeCount = 0;
  }
  let byUser = scopes.get(settings);
  if (byUser === undefined) scopes.set(settings, (byUser = new Map()));
  let id = byUser.get(user);
  if (id === undefined) {
    byUser.set(user, (id = nextScope++));
    scopeCount++;
  }
  return id;
}

/** An unambiguous key text: every variable-length part carries its length. */
export function cacheKey(p: CacheKeyParts): string {
  let k = `${scopeOf(p.user, p.settings)}|${p.sql.length}:${p.sql}|`;
  if (p.unit !== undefined) k += `x${p.unit}`;
  return k;
}

export class QueryCache {
  #maxBytes: number;
  #maxEntryBytes: number;
  #ttlMs: number;
  readonly #now: () => number;
  /** Insertion order = recency: a hit moves its entry to the end, eviction takes the front. */
  readonly #entries = new Map<string, Entry>();
  /** database -> bare table -> entries reading it. */
  readonly #byTable = new Map<string, Map<string, Set<Entry>>>();
  /** database -> invalidations so far: a reply captured across an invalidation is not stored. */
  readonly #epochs = new Map<string, number>();
  /** clear() of everything: it voids replies in flight for databases that hold no entry too. */
  #clears = 0;
  /** database -> bare table (or '*') -> when it was last invalidated: replicas may still show what came before. */
  readonly #invalidatedAt = new Map<string, Map<string, number>>();
  #bytes = 0;
  #hits = 0;
  #misses = 0;
  #evictions = 0;
  #invalidations = 0;

  constructor(opts: QueryCacheOptions) {
    checkBounds(opts);
    this.#maxBytes = opts.maxBytes;
    this.#maxEntryBytes = opts.maxEntryBytes;
    this.#ttlMs = opts.ttlMs;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * New bounds (RELOAD): a smaller size evicts the least recently used entries now, a smaller
   * entry bound drops the entries above it, a shorter TTL shortens the entries stored with the
   * default TTL (a statement's own ttl hint stays). Larger bounds apply to what comes next.
   */
  configure(opts: Omit<QueryCacheOptions, 'now'>): void {
    checkBounds(opts);
    const shorterTtl = opts.ttlMs < this.#ttlMs;
    this.#maxBytes = opts.maxBytes;
    this.#maxEntryBytes = opts.maxEntryBytes;
    this.#ttlMs = opts.ttlMs;
    for (const entry of [...this.#entries.values()]) {
      if (entry.reply.length > this.#maxEntryBytes) {
        this.#remove(entry);
        this.#evictions++;
      } else if (shorterTtl && entry.defaultTtl) entry.expiresAt = Math.min(entry.expiresAt, entry.storedAt + opts.ttlMs);
    }
    this.#evictToFit();
  }

  get maxEntryBytes(): number {
    return this.#maxEntryBytes;
  }

  /**
   * The stored reply for `key` in `database`, or undefined (counted as a miss). `notBefore`:
   * entries stored before this time do not count (read_your_writes: the client's last commit).
   */
  get(database: string, key: string, notBefore = 0): Buffer | undefined {
    const mapKey = `${database}\0${key}`;
    const entry = this.#entries.get(mapKey);
    if (entry === undefined) {
      this.#misses++;
      return undefined;
    }
    if (entry.expiresAt <= this.#now()) {
      this.#remove(entry);
      this.#misses++;
      return undefined;
    }
    if (entry.storedAt < notBefore) {
      this.#misses++;
      return undefined;
    }
    this.#entries.delete(mapKey);
    this.#entries.set(mapKey, entry);
    this.#hits++;
    return entry.reply;
  }

  /** A token to pass to set(): taken when the request is sent, it makes set() refuse a reply
   *  that an invalidation of the same database overtook. */
  epoch(database: string): number {
    // Both counts only grow, so a change to either changes the sum.
    return this.#clears + (this.#epochs.get(database) ?? 0);
  }

  /**
   * Stores a copy of `reply`. Returns false (nothing stored) when it is larger than the entry
   * bound or the cache, or when `database` saw an invalidation since `epoch`.
   */
  set(database: string, key: string, tables: readonly string[], reply: Buffer, epoch: number, ttlMs?: number): boolean {
    if (epoch !== this.epoch(database)) return false;
    const size = reply.length + key.length * 2 + ENTRY_OVERHEAD_BYTES;
    if (reply.length > this.#maxEntryBytes || size > this.#maxBytes) return false;
    const mapKey = `${database}\0${key}`;
    const old = this.#entries.get(mapKey);
    if (old !== undefined) this.#remove(old);
    const now = this.#now();
    const entry: Entry = {
      database,
      mapKey,
      reply: Buffer.from(reply),
      tables: bareTables(tables),
      storedAt: now,
      expiresAt: now + (ttlMs ?? this.#ttlMs),
      defaultTtl: ttlMs === undefined,
      size,
    };
    this.#entries.set(mapKey, entry);
    this.#bytes += size;
    let index = this.#byTable.get(database);
    if (index === undefined) this.#byTable.set(database, (index = new Map()));
    for (const t of entry.tables) {
      let set = index.get(t);
      if (set === undefined) index.set(t, (set = new Set()));
      set.add(entry);
    }
    this.#evictToFit();
    return true;
  }

  #evictToFit(): void {
    while (this.#bytes > this.#maxBytes) {
      const oldest = this.#entries.values().next().value as Entry;
      this.#remove(oldest);
      this.#evictions++;
    }
  }

  /**
   * Milliseconds since `database` or one of `tables` was last invalidated (Infinity: never).
   * A reply read from a replica sooner than its lag bound after that may predate the write.
   */
  quietForMs(database: string, tables: readonly string[]): number {
    const times = this.#invalidatedAt.get(database);
    if (times === undefined) return Infinity;
    let last = times.get('*') ?? -Infinity;
    for (const t of tables) last = Math.max(last, times.get(bareName(t)) ?? -Infinity);
    return this.#now() - last;
  }

  /** Drops the entries of `database` that read any of `tables` ('*' or [] = all of it). */
  invalidateTables(database: string, tables: readonly string[] | '*'): number {
    this.#epochs.set(database, (this.#epochs.get(database) ?? 0) + 1);
    let times = this.#invalidatedAt.get(database);
    if (times === undefined) this.#invalidatedAt.set(database, (times = new Map()));
    const now = this.#now();
    if (tables === '*' || tables.length === 0 || tables.includes('*')) times.set('*', now);
    else for (const t of tables) times.set(bareName(t), now);
    if (tables === '*' || tables.length === 0 || tables.includes('*')) return this.#dropDatabase(database);
    const index = this.#byTable.get(database);
    if (index === undefined) return 0;
    let n = 0;
    for (const t of tables) {
      const set = index.get(bareName(t));
      if (set === undefined) continue;
      for (const entry of [...set]) {
        this.#remove(entry);
        n++;
      }
    }
    this.#invalidations += n;
    return n;
  }

  /** Drops everything, a database's entries, or a database's entries that read `table`. */
  clear(database?: string, table?: string): number {
    if (database === undefined) {
      this.#clears++;
      let n = 0;
      for (const db of [...this.#byTable.keys()]) n += this.invalidateTables(db, table === undefined ? '*' : [table]);
      return n;
    }
    return this.invalidateTables(database, table === undefined ? '*' : [table]);
  }

  stats(): QueryCacheStats {
    const byTable: QueryCacheStats['byTable'] = [];
    for (const [database, index] of this.#byTable) {
      for (const [table, set] of index) {
        let bytes = 0;
        for (const e of set) bytes += e.size;
        byTable.push({ database, table, entries: set.size, bytes });
      }
    }
    byTable.sort((a, b) => (a.database === b.database ? a.table.localeCompare(b.table) : a.database.localeCompare(b.database)));
    return {
      entries: this.#entries.size,
      bytes: this.#bytes,
      hits: this.#hits,
      misses: this.#misses,
      evictions: this.#evictions,
      invalidations: this.#invalidations,
      byTable,
    };
  }

  #dropDatabase(database: string): number {
    let n = 0;
    for (const entry of [...this.#entries.values()]) {
      if (entry.database !== database) continue;
      this.#remove(entry);
      n++;
    }
    this.#invalidations += n;
    return n;
  }

  #remove(entry: Entry): void {
    if (this.#entries.get(entry.mapKey) !== entry) return;
    this.#entries.delete(entry.mapKey);
    this.#bytes -= entry.size;
    const index = this.#byTable.get(entry.database);
    if (index === undefined) return;
    for (const t of entry.tables) {
      const set = index.get(t);
      if (set === undefined) continue;
      set.delete(entry);
      if (set.size === 0) index.delete(t);
    }
    if (index.size === 0) this.#byTable.delete(entry.database);
  }
}
