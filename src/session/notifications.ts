// LISTEN/NOTIFY under transaction pooling. A client's LISTEN cannot live on a pooled
// backend (the next transaction runs elsewhere and notifications go to whoever holds that
// backend), so pgmux keeps one listening connection per (database, user) on the primary,
// LISTENs there on the union of its clients' channels, and fans each notification out to
// the clients subscribed to its channel. The listener reconnects (to the new primary after a
// failover) and subscribes again.

import type { Logger } from 'pino';
import { FrameReader } from '../protocol/framer.js';
import { BackendMsg, queryMessage, readCstr } from '../protocol/messages.js';
import { BackendConnection, type BackendOwner } from '../pool/backend.js';

export interface NotificationSink {
  /** A whole NotificationResponse message for this client. */
  deliverNotification(msg: Buffer): void;
}

/** Opens a backend for the listener: on the current primary, as `user`, to `database`. */
export type ListenerConnector = (database: string, user: string) => Promise<BackendConnection>;

const RECONNECT_DELAY_MS = 200;

class Listener implements BackendOwner {
  private backend: BackendConnection | null = null;
  private connecting: Promise<void> | null = null;
  private readonly reader = new FrameReader(64 * 1024 * 1024);
  /**
   * Subscribers per channel; false while a subscriber is joining a channel others already
   * listen to: a notification still on its way from before the client's LISTEN must not
   * reach it (a direct connection would not see it), so it starts receiving only after a
   * round trip on the listener connection.
   */
  readonly channels = new Map<string, Map<NotificationSink, boolean>>();
  private closed = false;

  constructor(
    readonly database: string,
    readonly user: string,
    private connect: ListenerConnector,
    private logger: Logger,
  ) {}

  async subscribe(sink: NotificationSink, channel: string): Promise<void> {
    let subs = this.channels.get(channel);
    const isNew = subs === undefined;
    if (!subs) {
      subs = new Map();
      this.channels.set(channel, subs);
    }
    // A new channel has nothing in flight for it: its subscriber receives at once.
    if (!subs.has(sink)) subs.set(sink, isNew);
    try {
      await this.ensureConnected();
    } catch (err) {
      subs.delete(sink);
      if (subs.size === 0) this.channels.delete(channel);
      throw err;
    }
    // LISTEN again on a channel already listened to is a no-op for PostgreSQL: here it is
    // the round trip after which whatever arrives was sent after this client's LISTEN.
    this.send(`LISTEN ${quoteIdent(channel)}`);
    // As on a direct connection, LISTEN is answered once it is in effect: a NOTIFY
    // committed after the client saw LISTEN must reach it.
    await this.lastSent;
    if (this.channels.get(channel) === subs && subs.get(sink) === false) subs.set(sink, true);
  }

  unsubscribe(sink: NotificationSink, channel: string | null): void {
    for (const [ch, subs] of this.channels) {
      if (channel !== null && ch !== channel) continue;
      subs.delete(sink);
      if (subs.size === 0) {
        this.channels.delete(ch);
        this.send(`UNLISTEN ${quoteIdent(ch)}`);
      }
    }
  }

  get empty(): boolean {
    return this.channels.size === 0;
  }

  /** Settles when the listener connection has run everything sent so far. */
  private lastSent: Promise<void> = Promise.resolve();
  /** One per query in flight on the listener connection, settled by its ReadyForQuery. */
  private readonly acks: Array<() => void> = [];

  private send(sql: string): void {
    const b = this.backend;
    if (b === null) return; // resubscribed on reconnect
    b.pendingRfq++;
    this.lastSent = new Promise<void>((resolve) => this.acks.push(resolve));
    b.write(queryMessage(sql));
  }

  /** The connection is gone: nothing sent on it will be answered (the reconnect re-listens). */
  private settleAll(): void {
    for (const ack of this.acks.splice(0)) ack();
  }

  private ensureConnected(): Promise<void> {
    if (this.backend !== null) return Promise.resolve();
    this.connecting ??= this.connect(this.database, this.user).then(
      (b) => {
        this.connecting = null;
        if (this.closed) {
          b.close('shutdown');
          return;
        }
        this.backend = b;
        b.link(this);
        // Everything subscribed so far (also what was subscribed while we were away).
        if (this.channels.size > 0) this.send([...this.channels.keys()].map((c) => `LISTEN ${quoteIdent(c)}`).join('; '));
        this.logger.info({ db: this.database, user: this.user, channels: this.channels.size, pid: b.pid }, 'notification listener connected');
      },
      (err: Error) => {
        this.connecting = null;
        throw err;
      },
    );
    return this.connecting;
  }

  close(): void {
    this.closed = true;
    this.settleAll();
    this.backend?.close('shutdown');
    this.backend = null;
  }

  // ---- BackendOwner: the listener connection's stream --------------------------------

  onBackendData(buf: Buffer, start: number, end: number): void {
    this.reader.push(Buffer.from(buf.subarray(start, end)));
    while (this.reader.next()) {
      if (this.reader.type !== BackendMsg.NotificationResponse) continue;
      const m = this.reader.msg;
      const s = this.reader.bodyStart + 4; // after the notifying backend's pid
      const ch = readCstr(m, s, this.reader.end);
      if (!ch) continue;
      const subs = this.channels.get(ch[0]);
      if (!subs) continue;
      let msg: Buffer | null = null;
      for (const [sink, receiving] of subs) {
        if (!receiving) continue;
        msg ??= Buffer.from(m.subarray(this.reader.msgStart, this.reader.end));
        sink.deliverNotification(msg);
      }
    }
  }

  onBackendReady(): void {
    this.acks.shift()?.();
  }
  onBackendParameter(): void {}
  onBackendHiddenError(): void {}
  onBackendDrain(): void {}

  onBackendLost(_b: BackendConnection, why: string): void {
    this.backend = null;
    this.settleAll();
    this.reader.takeRemaining();
    if (this.closed || this.channels.size === 0) return;
    this.logger.warn({ db: this.database, user: this.user, why }, 'notification listener lost; reconnecting');
    const retry = (): void => {
      if (this.closed || this.channels.size === 0) return;
      this.ensureConnected().catch(() => setTimeout(retry, RECONNECT_DELAY_MS).unref());
    };
    setTimeout(retry, RECONNECT_DELAY_MS).unref();
  }
}

export class NotificationHub {
  private readonly listeners = new Map<string, Listener>();

  constructor(
    private connect: ListenerConnector,
    private logger: Logger,
  ) {}

  subscribe(sink: NotificationSink, database: string, user: string, channel: string): Promise<void> {
    const key = database + '\0' + user;
    let l = this.listeners.get(key);
    if (!l) {
      l = new Listener(database, user, this.connect, this.logger);
      this.listeners.set(key, l);
    }
    return l.subscribe(sink, channel);
  }

  /** UNLISTEN channel, UNLISTEN * (channel null), or the client left. */
  unsubscribe(sink: NotificationSink, database: string, user: string, channel: string | null): void {
    const key = database + '\0' + user;
    const l = this.listeners.get(key);
    if (!l) return;
    l.unsubscribe(sink, channel);
    if (l.empty) {
      l.close();
      this.listeners.delete(key);
    }
  }

  /** Channels currently listened to, per (database, user), for the admin view. */
  stats(): Array<{ database: string; user: string; channels: number; subscribers: number }> {
    return [...this.listeners.values()].map((l) => ({
      database: l.database,
      user: l.user,
      channels: l.channels.size,
      subscribers: [...l.channels.values()].reduce((n, s) => n + s.size, 0),
    }));
  }

  close(): void {
    for (const l of this.listeners.values()) l.close();
    this.listeners.clear();
  }
}

function quoteIdent(s: string): string {
  return '"' + s.replace(/"/g, '""') + '"';
}
