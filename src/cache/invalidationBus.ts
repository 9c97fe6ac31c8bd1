// Cache coherence across pgmux instances and other writers, with no server beyond the
// primary: invalidations travel as NOTIFY on the channel pgmux_cache_invalidate. NOTIFY is
// scoped to one database (a trigger's pg_notify in `app` reaches only listeners in `app`),
// so the bus keeps one control connection per cached database on the primary, LISTENs there
// and publishes there. While that connection is down notifications are lost, so the cache is
// told of a gap (clear the database) when it goes and again once LISTEN is back in effect.

import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { FrameReader } from '../protocol/framer.js';
import { BackendMsg, queryMessage, readCstr } from '../protocol/messages.js';
import { BackendConnection, type BackendOwner, type NodeAddress } from '../pool/backend.js';
import type { HealthCheckLogin } from '../cluster/healthCheckLogin.js';
import type { Config } from '../config/types.js';
import { backendTlsFor } from '../net/tls.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';

export const INVALIDATION_CHANNEL = 'pgmux_cache_invalidate';
/** Sender tag of the triggers `pgmux cache install-triggers` installs. */
export const TRIGGER_SENDER = 'trg';
/** PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; leave room for the JSON frame. */
export const MAX_PAYLOAD_BYTES = 7900;
const RECONNECT_DELAY_MS = 200;
/**
 * A listener connection that stops answering (a partitioned or hung primary) hears nothing
 * and says nothing: TCP keepalive would take minutes to notice. An empty query every
 * heartbeat, unanswered for two, drops it (a gap).
 */
const DEFAULT_HEARTBEAT_MS = 5000;
/** Publishes queued while disconnected beyond this collapse to one whole-database message. */
const MAX_QUEUED = 256;

/** Opens a control connection to `database` on the current primary. */
export type BusConnector = (database: string) => Promise<BackendConnection>;

/**
 * The connector PgmuxServer gives the bus: the node the topology calls primary now, with the
 * health checks' login (a control connection, outside the pools' limits) to the cached database.
 */
export function primaryBusConnector(o: {
  primary: (timeoutMs: number) => Promise<NodeAddress | null>;
  login: () => HealthCheckLogin;
  config: () => Config;
}): BusConnector {
  return async (database) => {
    const cfg = o.config();
    const node = await o.primary(cfg.failoverTimeoutMs);
    if (node === null) throw new PgmuxError(pgmuxError('noPrimary'));
    const login = o.login();
    return BackendConnection.connect({
      node,
      user: login.user,
      database,
      credentials: login.credentials,
      connectTimeoutMs: cfg.serverConnectTimeoutMs,
      tls: backendTlsFor(cfg),
    });
  };
}

export interface InvalidationHandler {
  /** Another instance or a trigger changed these tables; ['*'] = the whole database. */
  onInvalidate(database: string, tables: readonly string[]): void;
  /** Invalidations for `database` may have been missed: forget everything cached for it. */
  onGap(database: string): void;
}

interface Message {
  i: string;
  d: string;
  t: string[] | '*';
}

/**
 * One NOTIFY payload per chunk of tables that fits under MAX_PAYLOAD_BYTES. A single name
 * too long to fit (it cannot be a real identifier) invalidates the whole database instead.
 */
export function encodeInvalidation(nonce: string, database: string, tables: readonly string[] | '*'): string[] {
  const whole = (): string => JSON.stringify({ i: nonce, d: database, t: '*' } satisfies Message);
  if (tables === '*' || tables.length === 0 || tables.includes('*')) return [whole()];
  const base = Buffer.byteLength(JSON.stringify({ i: nonce, d: database, t: [] } satisfies Message));
  const out: string[] = [];
  let chunk: string[] = [];
  let bytes = base;
  for (const t of tables) {
    const cost = Buffer.byteLength(JSON.stringify(t)) + 1;
    if (base + cost > MAX_PAYLOAD_BYTES) return [whole()];
    if (bytes + cost > MAX_PAYLOAD_BYTES) {
      out.push(JSON.stringify({ i: nonce, d: database, t: chunk } satisfies Message));
      chunk = [];
      bytes = base;
    }
    chunk.push(t);
    bytes += cost;
  }
  out.push(JSON.stringify({ i: nonce, d: database, t: chunk } satisfies Message));
  return out;
}

/** The tables a payload names (['*'] for all), or null for a payload that is not ours. */
export function decodeInvalidation(payload: string): Message | null {
  let m: unknown;
  try {
    m = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof m !== 'object' || m === null) return null;
  const { i, d, t } = m as Record<string, unknown>;
  if (typeof i !== 'string' || typeof d !== 'string') return null;
  if (t === '*') return { i, d, t };
  if (!Array.isArray(t) || !t.every((x) => typeof x === 'string')) return null;
  return { i, d, t: t as string[] };
}

/** A string literal that reads the same whatever standard_conforming_strings says. */
function literal(s: string): string {
  return "E'" + s.replace(/\\/g, '\\\\').replace(/'/g, "''") + "'";
}

function notifySql(payloads: readonly string[]): string {
  return payloads.map((p) => `SELECT pg_notify('${INVALIDATION_CHANNEL}', ${literal(p)})`).join('; ');
}

class DatabaseListener implements BackendOwner {
  private backend: BackendConnection | null = null;
  private connecting = false;
  private readonly reader = new FrameReader(1024 * 1024);
  /** LISTEN acknowledged on the current connection: notifications are being received. */
  listening = false;
  /** A connection was up before: the next LISTEN follows a gap. */
  private everListened = false;
  /** Payloads not yet sent, and those sent whose ReadyForQuery has not come (resent if the connection dies). */
  private queued: string[] = [];
  /**
   * A publish is on the wire: what is published meanwhile waits for its ReadyForQuery and goes
   * out as one statement, duplicates merged (under a stream of writes to one table that is
   * one NOTIFY per round trip, not one per write; the others hear of it no later than the
   * next round trip).
   */
  private publishing = false;
  private readonly inFlight: Array<{ payloads: string[] | null; sentAt: number; failed: boolean }> = [];
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  /** Connect attempts failed in a row: only the first is logged as a warning. */
  private failures = 0;
  reconnects = 0;
  received = 0;
  published = 0;

  constructor(
    readonly database: string,
    private readonly bus: InvalidationBus,
  ) {}

  get nodeName(): string | null {
    return this.backend?.node.name ?? null;
  }

  get pid(): number | null {
    return this.backend?.pid ?? null;
  }

  start(): void {
    if (this.closed || this.backend !== null || this.connecting) return;
    this.connecting = true;
    this.bus.connect(this.database).then(
      (b) => {
        this.connecting = false;
        if (this.closed) {
          b.close('shutdown');
          return;
        }
        this.backend = b;
        this.failures = 0;
        b.socket.setKeepAlive(true, 1000);
        b.link(this);
        this.send(`SET application_name = 'pgmux-cache-bus'; LISTEN ${INVALIDATION_CHANNEL}`, null);
        this.flush();
        this.heartbeat ??= setInterval(() => this.beat(), this.bus.heartbeatMs);
        this.heartbeat.unref();
      },
      (err: Error) => {
        this.connecting = false;
        const log = this.failures++ === 0 ? this.bus.logger.warn : this.bus.logger.debug;
        log.call(this.bus.logger, { db: this.database, err: err.message }, 'cache invalidation listener cannot connect; retrying');
        this.retryLater();
      },
    );
  }

  publish(payloads: string[]): void {
    this.published += payloads.length;
    // One copy of each waiting payload: a stream of writes to one table must not fill the
    // queue up to the whole-database collapse while a publish is on the wire.
    for (const p of payloads) if (!this.queued.includes(p)) this.queued.push(p);
    if (this.queued.length > MAX_QUEUED) this.queued = encodeInvalidation(this.bus.nonce, this.database, '*');
    this.flush();
  }

  private flush(): void {
    if (this.backend === null || this.queued.length === 0 || this.publishing) return;
    const payloads = this.queued;
    this.queued = [];
    this.publishing = true;
    this.send(notifySql(payloads), payloads);
  }

  private send(sql: string, payloads: string[] | null): void {
    const b = this.backend!;
    b.pendingRfq++;
    this.inFlight.push({ payloads, sentAt: Date.now(), failed: false });
    b.write(queryMessage(sql));
  }

  private beat(): void {
    if (this.backend === null) return;
    const oldest = this.inFlight[0];
    if (oldest !== undefined && Date.now() - oldest.sentAt > 2 * this.bus.heartbeatMs) {
      this.bus.logger.warn({ db: this.database, node: this.nodeName }, 'cache invalidation listener not answering; reconnecting');
      this.drop();
      return;
    }
    if (oldest === undefined) this.send('', []);
  }

  /** Drops the connection (e.g. it is not on the primary any more); the reconnect reports a gap. */
  drop(): void {
    this.backend?.close('node_gone');
  }

  private retryLater(): void {
    if (this.closed || this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.start();
    }, RECONNECT_DELAY_MS);
    this.retryTimer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    const b = this.backend;
    this.backend = null;
    b?.close('shutdown');
  }

  // ---- BackendOwner ------------------------------------------------------------------

  onBackendData(buf: Buffer, start: number, end: number): void {
    this.reader.push(Buffer.from(buf.subarray(start, end)));
    while (this.reader.next()) {
      if (this.reader.type !== BackendMsg.NotificationResponse) continue;
      const m = this.reader.msg;
      const ch = readCstr(m, this.reader.bodyStart + 4, this.reader.end); // after the notifying backend's pid
      if (ch === null || ch[0] !== INVALIDATION_CHANNEL) continue;
      const payload = readCstr(m, ch[1], this.reader.end);
      if (payload === null) continue;
      // This instance's own messages come back too: told apart before any parsing.
      if (payload[0].startsWith(this.bus.ownPrefix)) continue;
      const msg = decodeInvalidation(payload[0]);
      if (msg === null) {
        this.bus.logger.warn({ db: this.database, payload: payload[0].slice(0, 200) }, 'cache invalidation: unreadable payload; clearing the database');
        this.bus.handler.onInvalidate(this.database, ['*']);
        continue;
      }
      if (msg.i === this.bus.nonce) continue;
      this.received++;
      // The payload's database is informational: NOTIFY never leaves the database it was sent in.
      this.bus.handler.onInvalidate(this.database, msg.t === '*' ? ['*'] : msg.t);
    }
  }

  onBackendReady(): void {
    const done = this.inFlight.shift();
    if (done === undefined) return;
    if (done.payloads !== null && done.payloads.length > 0) this.publishing = false;
    if (done.failed) {
      // LISTEN not in effect, or a publish that did not go out (e.g. this is no primary any
      // more): start over on a new connection, which sends the publish again.
      if (done.payloads !== null) this.queued = [...done.payloads, ...this.queued];
      this.drop();
      return;
    }
    this.flush();
    if (done.payloads === null && !this.listening) {
      this.listening = true;
      if (this.everListened) {
        this.reconnects++;
        this.bus.logger.info({ db: this.database, node: this.nodeName }, 'cache invalidation listener back; cache cleared for the gap');
        this.bus.handler.onGap(this.database);
      }
      this.everListened = true;
    }
  }
  /** Called in order with onBackendReady (the data may be forwarded later, in one run). */
  onBackendError(fields: Map<string, string>): void {
    const running = this.inFlight[0];
    if (running !== undefined) running.failed = true;
    this.bus.logger.warn({ db: this.database, code: fields.get('C'), error: fields.get('M') }, 'cache invalidation bus query failed');
  }
  onBackendParameter(): void {}
  onBackendHiddenError(): void {}
  onBackendDrain(): void {}

  onBackendLost(_b: BackendConnection, why: string): void {
    this.backend = null;
    const wasListening = this.listening;
    this.listening = false;
    this.publishing = false;
    this.reader.takeRemaining();
    // A publish whose ReadyForQuery never came may not have committed: send it again.
    const unsent = this.inFlight.splice(0).flatMap((f) => f.payloads ?? []);
    this.queued = [...unsent, ...this.queued];
    if (this.closed) return;
    this.bus.logger.warn({ db: this.database, why }, 'cache invalidation listener lost; reconnecting');
    if (wasListening) this.bus.handler.onGap(this.database);
    this.retryLater();
  }
}

/**
 * Publishes this instance's invalidations and delivers everyone else's. The integrator wires
 * it as: handler.onInvalidate -> queryCache.invalidateTables, handler.onGap -> queryCache.clear(db),
 * queryCache's own writes -> publish(). A database is cached coherently only while
 * ready(database) is true.
 */
export class InvalidationBus {
  /** Tells this instance's messages from the others' (they come back to their sender too). */
  readonly nonce = randomBytes(9).toString('base64url');
  /** How this instance's payloads begin (encodeInvalidation writes `i` first). */
  readonly ownPrefix = `{"i":${JSON.stringify(this.nonce)},`;
  private readonly listeners = new Map<string, DatabaseListener>();

  constructor(
    readonly connect: BusConnector,
    readonly handler: InvalidationHandler,
    readonly logger: Logger,
    readonly heartbeatMs = DEFAULT_HEARTBEAT_MS,
  ) {}

  /** Starts listening on `database` (idempotent); true once LISTEN is in effect there. */
  ready(database: string): boolean {
    return this.listenerFor(database).listening;
  }

  /** Tells the other instances that these tables of `database` changed ('*' or [] = all of it). */
  publish(database: string, tables: readonly string[] | '*'): void {
    this.listenerFor(database).publish(tables !== '*' && tables.length === 1 ? this.oneTable(database, tables[0]!) : encodeInvalidation(this.nonce, database, tables));
  }

  /** Most writes name one table, the same few again and again: their payloads are kept. */
  private readonly oneTablePayloads = new Map<string, string[]>();

  private oneTable(database: string, table: string): string[] {
    const key = database + '\0' + table;
    let payloads = this.oneTablePayloads.get(key);
    if (payloads === undefined) {
      payloads = encodeInvalidation(this.nonce, database, [table]);
      if (this.oneTablePayloads.size >= 1000) this.oneTablePayloads.clear();
      this.oneTablePayloads.set(key, payloads);
    }
    return payloads;
  }

  /**
   * The primary is now `nodeName` (host:port): a listener on another node may sit on a
   * fenced old primary and hear nothing, so it reconnects (and reports a gap).
   */
  primaryChanged(nodeName: string | null): void {
    for (const l of this.listeners.values()) {
      const on = l.nodeName;
      if (on !== null && on !== nodeName) l.drop();
    }
  }

  stats(): Array<{ database: string; listening: boolean; node: string | null; pid: number | null; reconnects: number; received: number; published: number }> {
    return [...this.listeners.values()].map((l) => ({
      database: l.database,
      listening: l.listening,
      node: l.nodeName,
      pid: l.pid,
      reconnects: l.reconnects,
      received: l.received,
      published: l.published,
    }));
  }

  close(): void {
    for (const l of this.listeners.values()) l.close();
    this.listeners.clear();
  }

  private listenerFor(database: string): DatabaseListener {
    let l = this.listeners.get(database);
    if (l === undefined) {
      l = new DatabaseListener(database, this);
      this.listeners.set(database, l);
      l.start();
    }
    return l;
  }
}
