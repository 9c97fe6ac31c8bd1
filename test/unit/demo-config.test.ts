// What `pgmux demo` keeps for itself of the settings it loads (src/embedded/demo.ts).
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../src/config/load.js';
import { demoConfig } from '../../src/embedded/demo.js';

const cluster = [{ host: '127.0.0.1', port: 5500, weight: 1 }];

describe('demoConfig', () => {
  it('runs on its own cluster, with postgres as an admin user and /metrics on a free port', () => {
    const c = demoConfig({ ...DEFAULTS, listen: { host: '127.0.0.1', port: 6432 }, nodes: [{ host: 'db1', port: 5432, weight: 1 }], adminUsers: ['ops'] }, cluster);
    expect(c.nodes).toEqual(cluster);
    expect(c.adminUsers).toEqual(['ops', 'postgres']);
    expect(c.http).toEqual({ host: '127.0.0.1', port: 0 });
  });

  it('keeps a configured http address and every other setting', () => {
    const loaded = { ...DEFAULTS, listen: { host: '0.0.0.0', port: 6000 }, http: { host: '0.0.0.0', port: 9187 }, adminUsers: ['postgres'], poolSize: 3 };
    const c = demoConfig(loaded, cluster);
    expect(c).toEqual({ ...loaded, nodes: cluster });
  });
});
