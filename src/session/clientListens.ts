// One client's subscriptions on the shared listener (notifications.ts), and the
// notifications that wait for the client's transaction to end before they go out, as they
// would on a direct connection.

import { errorResponse } from '../protocol/messages.js';
import { asError, PgmuxError, pgmuxError, type ErrorSpec } from '../protocol/errors.js';
import type { Classification } from '../routing/classifier.js';
import type { ListenOp } from '../routing/sessionEffects.js';
import type { NotificationHub, NotificationSink } from './notifications.js';
import type { HeldMessages } from './heldMessages.js';
import { planListen, runListenPlan } from './listenRequests.js';
import type { RequestTracker } from './requestTracker.js';

export class ClientListens {
  /** Subscribed to at least one channel since the last UNLISTEN * / DISCARD ALL. */
  private listening = false;
  /** Notifications that arrived inside a transaction. */
  private waiting: Buffer[] = [];

  constructor(
    private readonly hub: NotificationHub,
    private readonly sink: NotificationSink,
    /** The client's (database, user): known once it has logged in. */
    private readonly who: () => { database: string; user: string },
  ) {}

  /** One LISTEN / UNLISTEN on the shared listener; resolves to an ErrorResponse when it failed. */
  readonly change = (op: ListenOp): Promise<Buffer | null> | null => {
    const { database, user } = this.who();
    if (op.kind === 'unlisten') {
      this.hub.unsubscribe(this.sink, database, user, op.channel);
      return null;
    }
    this.listening = true;
    return this.hub.subscribe(this.sink, database, user, op.channel!).then(
      () => null,
      (err: Error) => {
        const spec: ErrorSpec = err instanceof PgmuxError ? asError(err.spec) : pgmuxError('backendUnavailable', { detail: err.message });
        return errorResponse(spec);
      },
    );
  };

  /**
   * LISTEN / UNLISTEN alone at a transaction's start, simple or extended protocol: the
   * subscription lives on pgmux's shared listener connection, not on a pooled backend
   * (src/session/notifications.ts); pgmux answers as PostgreSQL would, through `done`.
   * False when the held messages are something else.
   */
  answer(held: HeldMessages, requests: RequestTracker, classify: (sql: string) => Classification, done: (out: Buffer[]) => void): boolean {
    const plan = planListen(held.list, classify, requests.listenStatements);
    if (plan === null) return false;
    held.take();
    requests.forgetFirst();
    // Named like any other statement, so a later batch that mixes it with others still works.
    if (plan.parsed.length > 0) requests.remember(plan.parsed.filter((p) => !requests.stmts.has(p.name)));
    runListenPlan(plan, this.change, done);
    return true;
  }

  /** LISTEN / UNLISTEN ran on the client's own (pinned) backend: hear those channels from there only. */
  movedToBackend(ops: readonly ListenOp[]): void {
    if (!this.listening) return;
    const { database, user } = this.who();
    for (const op of ops) this.hub.unsubscribe(this.sink, database, user, op.channel);
  }

  /** DISCARD ALL ran, or the client left: every subscription ends. */
  endAll(): void {
    if (!this.listening) return;
    this.listening = false;
    const { database, user } = this.who();
    this.hub.unsubscribe(this.sink, database, user, null);
  }

  /** A notification that must wait for the client's transaction to end. */
  hold(msg: Buffer): void {
    this.waiting.push(msg);
  }

  get anyWaiting(): boolean {
    return this.waiting.length > 0;
  }

  /** Writes what waited, if anything. */
  flush(write: (out: Buffer) => unknown): void {
    const out = this.take();
    if (out !== null) write(out);
  }

  /** What waited, in one buffer, or null. */
  take(): Buffer | null {
    if (this.waiting.length === 0) return null;
    const out = Buffer.concat(this.waiting);
    this.waiting = [];
    return out;
  }
}
