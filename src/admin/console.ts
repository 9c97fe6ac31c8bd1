// The admin console: SQL-ish commands on the virtual database "pgmux", answered with
// psql-friendly result sets built from the ProxyView.

import { errorResponse } from '../protocol/messages.js';
import { commandComplete, resultSet } from '../protocol/resultSet.js';
import type { ProxyView } from './view.js';

export type AdminRole = 'admin' | 'stats';

export class AdminConsole {
  constructor(private view: ProxyView) {}

  /** Response bytes for one Query (without ReadyForQuery). */
  async run(sql: string, role: AdminRole): Promise<Buffer> {
    const words = sql.trim().replace(/;+\s*$/, '').split(/\s+/).filter(Boolean);
    const cmd = words.map((w) => w.toUpperCase()).join(' ');
    if (cmd === 'SHOW VERSION') return resultSet(['version'], [[`pgmux ${this.view.version}`]]);
    if (cmd === '') return commandComplete('');
    return errorResponse({ severity: 'ERROR', code: '42601', message: `unknown admin command "${sql.trim()}"`, hint: 'SHOW VERSION' });
  }
}
