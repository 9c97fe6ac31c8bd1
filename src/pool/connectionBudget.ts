// PgBouncer's max_db_connections / max_user_connections: how many backends all the pools of one
// (node, database) or one (node, user) may hold together. A pool counts a backend here from the
// moment it starts connecting until the backend closes (or the connect fails).
//
// A pool that could open a backend but finds a budget spent waits on it: it is woken when a
// backend of the budget closes. To make that happen, the pools sharing the budget give up
// backends they are not using: an idle one is closed at once (the least recently used pool
// first), and one coming back idle is closed instead of kept while another pool waits.

/** What a budget asks of a pool that shares it. */
export interface BudgetMember {
  /** Closes one idle backend if it has one (its close gives the slot back); false if none. */
  giveUpIdle(): boolean;
  /** A slot came free: try to connect again for the clients waiting. */
  onBudgetFreed(): void;
}

export class ConnectionBudget {
  /** Backends counted now (connecting or open). */
  used = 0;
  /** Pools waiting for a slot, in the order they asked. */
  private readonly blocked: BudgetMember[] = [];

  constructor(
    /** For logs and errors: e.g. `max_db_connections` of "appdb" on 10.0.0.1:5432. */
    readonly name: string,
    /** The limit now (RELOAD may change it); 0 = unlimited. */
    private readonly limit: () => number,
  ) {}

  get max(): number {
    return this.limit();
  }

  hasRoom(): boolean {
    const max = this.limit();
    return max <= 0 || this.used < max;
  }

  take(): void {
    this.used++;
  }

  /** A counted backend closed or failed to connect: the first waiting pool may use the slot. */
  give(): void {
    if (this.used > 0) this.used--;
    // The woken pool may not need it any more (its clients left): then the next one.
    while (this.blocked.length > 0 && this.hasRoom()) {
      const before = this.used;
      this.blocked.shift()!.onBudgetFreed();
      if (this.used > before) break;
    }
  }

  /** Other pools waiting for a slot (a backend coming back idle should close instead). */
  get hasWaiters(): boolean {
    return this.blocked.length > 0;
  }

  /**
   * `member` needs a slot and found none: it is queued, and one idle backend of another pool
   * sharing the budget is closed if there is one. `members` are the pools sharing it.
   */
  wait(member: BudgetMember, members: Iterable<BudgetMember>): void {
    if (!this.blocked.includes(member)) this.blocked.push(member);
    for (const m of members) if (m !== member && m.giveUpIdle()) return;
  }

  /** A pool that no longer waits (its clients got backends or left, or it closed). */
  leave(member: BudgetMember): void {
    const i = this.blocked.indexOf(member);
    if (i >= 0) this.blocked.splice(i, 1);
  }
}
