// Every pool pgmux holds, one per (node, database entry, backend user), created on first
// use; and why recently dropped pools failed, so a client asking again for a missing
// database does not log the same warning again.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { BackendCredentials, NodeAddress } from './backend.js';
import { Pool, type PoolCounters } from './pool.js';
import { ConnectionBudget, type BudgetMember } from './connectionBudget.js';
import { limitsFor, poolConfigFor, type DatabaseTarget } from '../config/databases.js';

export class PoolRegistry {
  private readonly byKey = new Map<string, Pool>();
  /** What each pool serves: its databases entry, backend user, database and credentials. */
  private readonly targets = new WeakMap<Pool, DatabaseTarget>();
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

  pool(node: NodeAddress, target: DatabaseTarget): Pool {
    const key = node.name + '\0' + target.key;
    let p = this.byKey.get(key);
    if (!p || p.isClosed) {
      const knownFailure = this.droppedFailures.get(key) ?? null;
      this.droppedFailures.delete(key);
      const onDrop = (dropped: Pool) => {
        if (this.byKey.get(key) === dropped) this.byKey.delete(key);
        if (this.droppedFailures.size >= 1000) this.droppedFailures.clear();
        if (dropped.lastFailure !== null) this.droppedFailures.set(key, dropped.lastFailure);
      };
      const entry = target.entry;
      const user = target.backendUser;
      const budgets = [
        this.budget(`db\0${node.name}\0${entry}`, `max_db_connections of database "${entry}" on ${node.name}`, () => this.limitsFor(entry, user).maxDb),
        this.budget(`user\0${node.name}\0${user}`, `max_user_connections of user "${user}" on ${node.name}`, () => this.limitsFor(entry, user).maxUser),
      ];
      const budgetMembers = (b: ConnectionBudget) => this.membersOf(b);
      p = new Pool(node, target.dbname, user, this.entryConfig(target.section), this.entryCredentials(target), this.logger, this.counters, {
        onDrop, knownFailure, budgets, budgetMembers,
      });
      this.byKey.set(key, p);
      this.targets.set(p, target);
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

  /** The pool's configuration: its entry's pool_size / min_pool_size, re-derived only when the configuration object changes (RELOAD). */
  private entryConfig(section: string): () => Config {
    let seen: Config | null = null;
    let sized: Config | null = null;
    return () => {
      const c = this.config();
      if (c !== seen) {
        seen = c;
        sized = poolConfigFor(c, section);
      }
      return sized!;
    };
  }

  /** An entry's password serves that entry's backends only; otherwise the backend user's usual credentials. */
  private entryCredentials(target: DatabaseTarget): () => BackendCredentials {
    const password = target.password;
    if (password !== null) return () => ({ password });
    const user = target.backendUser;
    return () => this.credentials(user);
  }

  /** The databases entry (as clients name it) a pool serves. */
  entryOf(pool: Pool): string {
    return this.targets.get(pool)?.entry ?? pool.database;
  }

  /**
   * Backend budgets per node of a databases entry (max_db_connections) and of a backend user
   * (max_user_connections), the entry's / user's value over the global one; 0 = unlimited.
   * For the budget enforcement here: pools of one entry share its budget, whatever their user.
   */
  limitsFor(entryName: string, backendUser: string): { maxDb: number; maxUser: number } {
    return limitsFor(this.config(), entryName, backendUser);
  }

  targetOf(pool: Pool): DatabaseTarget | undefined {
    return this.targets.get(pool);
  }

  /** Every pool held now (forgetting one while iterating is safe). */
  all(): IterableIterator<Pool> {
    return this.byKey.values();
  }

  /** A pool that was closed: the next client of its (node, entry, user) gets a new one. */
  forget(pool: Pool): void {
    const t = this.targets.get(pool);
    if (t === undefined) return;
    const key = pool.node.name + '\0' + t.key;
    if (this.byKey.get(key) === pool) this.byKey.delete(key);
  }

  /** Shutdown: every backend of every pool closes. */
  closeAll(): void {
    for (const p of this.byKey.values()) p.closeAll('shutdown');
    this.byKey.clear();
  }
}
