// Every pool pgmux holds, one per (node, database, user), created on first use; and why
// recently dropped pools failed, so a client asking again for a missing database does not
// log the same warning again.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { BackendCredentials, NodeAddress } from './backend.js';
import { Pool, type PoolCounters } from './pool.js';

export class PoolRegistry {
  private readonly byKey = new Map<string, Pool>();
  /** Why the pools dropped for a login failure failed (pool key -> logged text). */
  private readonly droppedFailures = new Map<string, string>();

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
      p = new Pool(node, database, user, this.config, () => this.credentials(user), this.logger, this.counters, { onDrop, knownFailure });
      this.byKey.set(key, p);
    }
    return p;
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
