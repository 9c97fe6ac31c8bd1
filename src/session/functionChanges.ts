// One client's part in keeping the function catalogs true (src/routing/functionCatalog.ts):
// a transaction that sends DDL which may change its database's functions (CREATE FUNCTION,
// ALTER ... VOLATILE, DROP, ...) says so once when it sends it, so that reads calling
// functions go to the primary meanwhile, and once more when it ends (committed, rolled back,
// or ended with the connection), after which the catalog is read again.

import type { SessionContext } from './sessionContext.js';

export class FunctionChanges {
  /** This transaction sent such DDL: say so when it ends. */
  private open = false;

  constructor(
    private readonly ctx: Pick<SessionContext, 'functionsChanging' | 'functionsChanged'>,
    private readonly database: () => string,
  ) {}

  /** The transaction sent DDL that may change the database's functions (told once per transaction). */
  sent(): void {
    if (this.open) return;
    this.open = true;
    this.ctx.functionsChanging(this.database());
  }

  /** The transaction ended: others see the change from here on, not before. */
  ended(): void {
    if (!this.open) return;
    this.open = false;
    this.ctx.functionsChanged(this.database());
  }
}
