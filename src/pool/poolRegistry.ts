// Every pool pgmux holds, one per (node, database entry, backend user), created on first
// use; and why recently dropped pools failed, so a client asking again for a missing
// database does not log the same warning again.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { BackendCredentials, NodeAddress } from './backend.js';
import { Pool, type PoolCounters } from './pool.js';
import { limitsFor, poolConfigFor, type DatabaseTarget } from '../config/databases.js';

export class PoolRegistry {
  private readonly byKey = new Map<string, Pool>();
  /** What each pool serves: its databases entry, backend user, database and credentials. */
  private readonly targets = new WeakMap<Pool, DatabaseTarget>();
  /** Why the pools dropped for a login failure failed (pool key -> logged text). */
  private readonly droppedFailures = new Map<string, string>();

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
      p = new Pool(node, target.dbname, target.backendUser, this.entryConfig(target.section), this.entryCredentials(target), this.logger, this.counters, { onDrop, knownFailure });
      this.byKey.set(key, p);
      this.targets.set(p, target);
    }
    return p;
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
