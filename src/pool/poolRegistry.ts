// Every pool pgmux holds, one per (node, database, user), created on first use; and why
// recently dropped pools failed, so a client asking again for a missing database does not
// log the same warning again.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { BackendCredentials, NodeAddress } from './backend.js';
import { Pool, type PoolCounters } from './pool.js';
import { ConnectionBudget, type BudgetMember } from './connectionBudget.js';

export class PoolRegistry {
  private readonly byKey = new Map<string, Pool>();
  /** Why the pools dropped for a login failure failed (pool key -> logged text). */
  private readonly droppedFailures = new Map<string, string>();
  /** max_db_connections per (node, database) and max_user_connections per (node, user), made when first needed. */
  private readonly budgets = new Map<string, ConnectionBudget>();

  constructor(
    private readonly config: () => Config,
    private readonly credentials: (user: string) => BackendCredentials,
    private readonly logger: Logger,
    private readonly counters: PoolCounters,
  ) {}

  pool(node: NodeAddress, database: string, user: string): Pool {
    const key = node.name + '\0' + database + '\0' + user;
    let p = this.byKey.get(key);
    if (!p || p.isClosed) {
      const knownFailure = this.droppedFailures.get(key) ?? null;
      this.droppedFailures.delete(key);
      const onDrop = (dropped: Pool) => {
        if (this.byKey.get(key) === dropped) this.byKey.delete(key);
        if (this.droppedFailures.size >= 1000) this.droppedFailures.clear();
        if (dropped.lastFailure !== null) this.droppedFailures.set(key, dropped.lastFailure);
      };
      const budgets = [
        this.budget(`db\0${node.name}\0${database}`, `max_db_connections of database "${database}" on ${node.name}`, () => this.config().maxDbConnections),
        this.budget(`user\0${node.name}\0${user}`, `max_user_connections of user "${user}" on ${node.name}`, () => this.config().maxUserConnections),
      ];
      const budgetMembers = (b: ConnectionBudget) => this.membersOf(b);
      p = new Pool(node, database, user, this.config, () => this.credentials(user), this.logger, this.counters, { onDrop, knownFailure, budgets, budgetMembers });
      this.byKey.set(key, p);
    }
    return p;
  }

  private budget(key: string, name: string, limit: () => number): ConnectionBudget {
    let b = this.budgets.get(key);
    if (b === undefined) {
      b = new ConnectionBudget(name, limit);
      this.budgets.set(key, b);
    }
    return b;
  }

  /** The pools sharing a budget; the least recently used first would be better, any order is correct. */
  private *membersOf(budget: ConnectionBudget): Iterable<BudgetMember> {
    for (const p of this.byKey.values()) if (p.sharesBudget(budget)) yield p;
  }

  /** Every pool held now (forgetting one while iterating is safe). */
  all(): IterableIterator<Pool> {
    return this.byKey.values();
  }

  /** A pool that was closed: the next client of its (node, database, user) gets a new one. */
  forget(pool: Pool): void {
    const key = pool.node.name + '\0' + pool.database + '\0' + pool.user;
    if (this.byKey.get(key) === pool) this.byKey.delete(key);
  }

  /** Shutdown: every backend of every pool closes. */
  closeAll(): void {
    for (const p of this.byKey.values()) p.closeAll('shutdown');
    this.byKey.clear();
  }
}
