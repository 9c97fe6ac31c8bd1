import { describe, expect, it } from 'vitest';
import type { NodeSnapshot } from '../../src/cluster/snapshot.js';
import { DEFAULTS } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { PgmuxServer } from '../../src/server/pgmux.js';
import { captureLogger } from '../support/logCapture.js';

// A primary change is detected (and logged) by the monitor alone; the server counts
// failovers from the monitor's 'primaryChange' event and logs nothing of its own.
// No PostgreSQL: the monitor is never started, its events are emitted by hand.

describe('failover counting', () => {
  it('counts a new primary other than the last known one, once, and logs no line of its own', () => {
    const { logger, lines } = captureLogger('debug');
    const cfg: Config = { ...DEFAULTS, nodes: [{ host: '127.0.0.1', port: 1, weight: 1 }] };
    const server = new PgmuxServer(cfg, logger);
    const node = (name: string) => ({ name }) as NodeSnapshot;
    const change = (from: string | null, to: string | null) =>
      server.monitor.emit('primaryChange', { from: from === null ? null : node(from), to: to === null ? null : node(to) });

    change(null, 'a'); // first primary seen: not a failover
    expect(server.counters().failovers).toBe(0);
    change('a', null); // lost: nothing to count yet
    change(null, 'a'); // the same one back (a restart): not a failover
    expect(server.counters().failovers).toBe(0);
    change('a', null);
    change(null, 'b'); // a different one after a gap: one failover
    expect(server.counters().failovers).toBe(1);
    change('b', 'c'); // switchover seen in one round
    expect(server.counters().failovers).toBe(2);
    expect(lines).toEqual([]);
  });
});
