// One cacheable request's reply on its way to the client (query_cache): the bytes the client
// was sent, copied as they pass, and whether they may be stored when the request ends.

import type { QueryCache } from '../cache/queryCache.js';

const ERROR_RESPONSE = 0x45; // E
const NOTICE_RESPONSE = 0x4e; // N
const PARAMETER_STATUS = 0x53; // S
const NOTIFICATION_RESPONSE = 0x41; // A
const READY_FOR_QUERY = 0x5a; // Z
const IDLE = 0x49; // I

export class ReplyCapture {
  #chunks: Buffer[] = [];
  #bytes = 0;
  #over = false;

  constructor(
    readonly database: string,
    readonly key: string,
    readonly tables: readonly string[],
    readonly ttlMs: number | undefined,
    /** QueryCache.epoch() when the request was sent: an invalidation since then voids the reply. */
    readonly epoch: number,
    readonly maxBytes: number,
    /** A write to its tables is too recent for a replica's reply: stored only if the primary answered. */
    readonly needsPrimary: boolean,
  ) {}

  /** Copies `out` (it may be a view of a shared read buffer); past maxBytes nothing is kept. */
  add(out: Buffer): void {
    if (this.#over) return;
    this.#bytes += out.length;
    if (this.#bytes > this.maxBytes + 6) {
      this.#over = true;
      this.#chunks = [];
      return;
    }
    this.#chunks.push(Buffer.from(out));
  }

  /**
   * Stores the reply up to (not including) its first ReadyForQuery, when it is whole, under
   * the bound, ended idle, and carried nothing that must reach the client each time
   * (ErrorResponse, NoticeResponse, ParameterStatus, NotificationResponse).
   */
  storeIn(cache: QueryCache): boolean {
    // An invalidation since the request was sent voids the reply: known before any copying.
    if (this.#over || cache.epoch(this.database) !== this.epoch) return false;
    const reply = storable(this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks));
    if (reply === null) return false;
    return cache.set(this.database, this.key, this.tables, reply, this.epoch, this.ttlMs);
  }
}

/** The messages before the first ReadyForQuery('I') of `buf`, or null when it may not be cached. */
export function storable(buf: Buffer): Buffer | null {
  let i = 0;
  while (i + 5 <= buf.length) {
    const type = buf[i]!;
    const len = buf.readInt32BE(i + 1);
    if (len < 4) return null;
    if (type === ERROR_RESPONSE || type === NOTICE_RESPONSE || type === PARAMETER_STATUS || type === NOTIFICATION_RESPONSE) return null;
    if (type === READY_FOR_QUERY) return i + 6 <= buf.length && buf[i + 5] === IDLE ? buf.subarray(0, i) : null;
    i += 1 + len;
  }
  return null;
}
