// A client session's part in the query cache (src/cache/queryCache.ts): answering a lone
// cacheable request at a transaction's start from the cache, copying a missed one's reply
// on its way to the client and storing it, and learning from every request the transaction
// sends what it may write, so that its end drops exactly those tables' entries.
//
// What may be cached is decided in src/routing/ (cacheability.ts, relationCatalog.ts); the
// extended-protocol units in cacheableUnit.ts.

import type { HeldMessage } from '../protocol/framer.js';
import { FrontendMsg, readyForQuery } from '../protocol/messages.js';
import { queryCacheAnywhere, type DatabaseTarget } from '../config/databases.js';
import type { Config } from '../config/types.js';
import type { Classification } from '../routing/classifier.js';
import { RelationGraph } from '../routing/relationCatalog.js';
import { cacheKey, tableListed } from '../cache/queryCache.js';
import { replicaLagBoundMs } from '../cache/replicaLagBound.js';
import type { SessionContext } from './sessionContext.js';
import type { RequestTracker } from './requestTracker.js';
import type { ClientSettings } from './paramSync.js';
import { ReplyCapture } from './replyCapture.js';
import { cacheableUnit, type KnownStatement } from './cacheableUnit.js';

/** answer()'s "not yet": the relation catalog is loading; the session is routed again by routeAfterCatalog (identity only). */
export const WAIT_FOR_CATALOG = Buffer.alloc(0);

const NO_TABLES: readonly string[] = Object.freeze([]);
/** The transaction's requests are not followed (not tracking), so a write may have written anything. */
const UNTRACKED: readonly string[] = Object.freeze(['*']);

/** query_cache on for some entry; the two plain checks first spare the lookup when it is off (the default). */
const cacheOnAnywhere = (cfg: Config): boolean => cfg.queryCache || (cfg.databases.length > 0 && queryCacheAnywhere(cfg));

/** One read-only statement the classifier itself sent to a replica, leaving no session state. */
const cacheableRead = (c: Classification): boolean =>
  c.target === 'replica' && c.statements === 1 && c.beginsTransaction !== true && c.session === undefined && !c.reason.startsWith('hint ');

/** What the cache needs of its session. */
export interface SessionCacheHost {
  readonly target: DatabaseTarget;
  readonly user: string;
  readonly clientSettings: ClientSettings;
  /** When this client last wrote (read_your_writes: no entry stored before it). */
  lastWriteAt(): number;
  /** The transaction went to the primary as a write. */
  routedWrite(): boolean;
  knownStatement(name: string): KnownStatement | undefined;
  /** Called when the relation catalog answer() waited for is loaded. */
  readonly routeAfterCatalog: () => void;
}

export class SessionCache {
  /** The reply of the lone cacheable request running now, being copied. */
  private capture: ReplyCapture | null = null;
  /** This transaction's read waited for the relation catalog already. */
  private waitedForCatalog = false;
  /** Tables the running transaction may write ('*': any); null when the cache was off at its start. */
  private writes: readonly string[] | '*' | null = null;

  constructor(
    private readonly ctx: SessionContext,
    private readonly requests: RequestTracker,
    private readonly host: SessionCacheHost,
  ) {}

  /**
   * query_cache: a lone cacheable simple Query, or a lone extended-protocol unit up to its
   * Sync (cacheableUnit.ts), at a transaction's start is answered from the cache (the stored
   * reply, then ReadyForQuery('I')), or its reply is captured on its way.
   */
  /** `lone`: the analysis of a lone simple Query (answerLocally took it), else null. */
  answer(held: readonly HeldMessage[], lone: Classification | null): Buffer | null {
    const host = this.host;
    if (!this.ctx.queryCacheOn(host.target)) return null;
    const cfg = this.ctx.config();
    // Each worker process has its own cache and sees only its own writes: not served until
    // invalidations travel between workers.
    if (cfg.workers > 1) return null;
    if (this.requests.pinned !== null || this.requests.roleChanged || host.target.poolMode !== 'transaction') return null;
    const m = held[0]!;
    let sql: string;
    let unit: string | undefined;
    if (m.type === FrontendMsg.Query) {
      if (lone === null || !cacheableRead(lone)) return null;
      sql = m.buf.toString('utf8', m.start + 5, m.end - 1);
    } else {
      const u = cacheableUnit(held, host.knownStatement);
      if (u === null || !cacheableRead(this.ctx.classify(u.sql))) return null;
      sql = u.sql;
      unit = u.unit;
    }
    // The key holds the text as decoded from UTF-8: bytes that are not UTF-8 (a LATIN1
    // client_encoding) all decode to U+FFFD, and two different statements would share a key.
    if (sql.includes('\uFFFD')) return null;
    const verdict = this.ctx.cacheVerdict(sql);
    if (!verdict.ok) return null;
    const excluded = cfg.queryCacheExcludeTables;
    if (excluded.length > 0 && verdict.tables.some((t) => tableListed(excluded, t))) return null;
    const cache = this.ctx.queryCache;
    const database = host.target.dbname;
    // Another instance's (or a trigger's) invalidations may be missed while not listening.
    if (!this.ctx.cacheCoherent(database)) return null;
    // What the names read stand for (views, partitions, temporary and foreign tables) and so
    // which writes make the entry stale: the database's relation graph, loaded once.
    let graph: RelationGraph | null = null;
    if (verdict.tables.length > 0) {
      const g = this.ctx.cacheRelations(host.target);
      if (!(g instanceof RelationGraph)) {
        // Wait once: a graph made stale again while it loaded (DDL after DDL) is not waited for twice.
        if (g === null || this.waitedForCatalog) {
          this.waitedForCatalog = false;
          return null;
        }
        this.waitedForCatalog = true;
        void g.then(host.routeAfterCatalog);
        return WAIT_FOR_CATALOG;
      }
      this.waitedForCatalog = false;
      if (g.uncacheableRead(verdict.tables, cfg.queryCacheTables) !== null) return null;
      // An excluded table is one written where pgmux cannot see: so are the views and parents over it.
      if (excluded.length > 0 && g.dependenciesOf(verdict.tables).some((t) => tableListed(excluded, t))) return null;
      graph = g;
    }
    // Privileges and row-level security follow the backend login; the client name is kept too.
    const key = cacheKey({ user: `${host.user}\0${host.target.backendUser}`, settings: host.clientSettings.fingerprint, sql, unit });
    // read_your_writes: nothing stored before (or in the same clock tick as) this client's last write.
    const notBefore = cfg.readYourWrites === 'off' ? 0 : host.lastWriteAt() + 1;
    const hit = cache.get(database, key, notBefore);
    if (hit !== undefined) {
      this.requests.forgetFirst();
      return Buffer.concat([hit, readyForQuery('I')]);
    }
    // A replica may lag behind the last write to these tables: a replica's reply is stored only
    // once that write is older than the lag pgmux routes reads within (plus one health check);
    // the primary's always (it has every committed write).
    const lagBoundMs = replicaLagBoundMs(cfg);
    const needsPrimary = lagBoundMs === Infinity || cache.quietForMs(database, graph === null ? verdict.tables : graph.dependenciesOf(verdict.tables)) <= lagBoundMs;
    this.capture = new ReplyCapture(database, key, verdict.tables, verdict.ttlMs, cache.epoch(database), cache.maxEntryBytes, needsPrimary);
    return null;
  }

  /** A transaction starts on a backend: follow what its requests write (requestSent) when the cache is on anywhere. */
  transactionStarting(): void {
    if (!cacheOnAnywhere(this.ctx.config())) return;
    const tracking = this.requests.tracking;
    this.requests.collectWrites = tracking;
    this.writes = tracking ? NO_TABLES : UNTRACKED;
  }

  /** Part of the reply to the request answer() let through. */
  replyData(out: Buffer): void {
    if (this.capture !== null) this.capture.add(out);
  }

  /** The request's reply is complete (its first ReadyForQuery); `stored` false: not to be kept (a re-run batch). */
  replyDone(stored: boolean, onPrimary: boolean): void {
    const capture = this.capture;
    if (capture === null) return;
    this.capture = null;
    if (stored && (!capture.needsPrimary || onPrimary)) capture.storeIn(this.ctx.queryCache);
  }

  /** The reply will not be seen whole (queued behind another unit, backend lost). */
  dropCapture(): void {
    this.capture = null;
  }

  /** A request sent in this transaction: what it may write joins what the transaction writes. */
  requestSent(c: Classification | null): void {
    const w = this.writes;
    if (w === null || w === '*' || w === UNTRACKED) return;
    if (c === null) {
      this.writes = '*';
      return;
    }
    const t = c.writesTables;
    if (t === undefined) {
      // A read that calls a function that may write (or one the catalog does not know yet): any table.
      if (c.calls !== undefined && this.ctx.volatileCall(this.host.target, c.calls) !== null) this.writes = '*';
      return;
    }
    if (t === '*') this.writes = '*';
    else if (t.length > 0) this.writes = w.length === 0 ? t : [...new Set([...w, ...t])];
  }

  /** The transaction ended (or its backend was lost): drop the cache entries of what it may have written. */
  transactionEnded(): void {
    if (!cacheOnAnywhere(this.ctx.config())) return;
    const w = this.writes;
    this.writes = null;
    this.requests.collectWrites = false;
    // Requests not followed (or the cache turned on mid-transaction): a write may have written anything.
    if (w === null || w === UNTRACKED) {
      if (this.host.routedWrite()) this.ctx.invalidateCache(this.host.target.dbname, '*');
      return;
    }
    // An empty list: nothing sent writes data (reads, SET, LOCK, ...); the store reads [] as "everything".
    if (w === '*' || w.length > 0) this.ctx.invalidateCache(this.host.target.dbname, w);
  }
}
