// `pgmux demo`: a throw-away primary + streaming replicas from this machine's PostgreSQL
// binaries, pgmux in front of them, and a DSN to paste into psql. Ctrl-C removes it all.

import type { HostPort, PoolMode } from '../config/types.js';
import { DEFAULTS } from '../config/load.js';
import type { Logger } from '../observability/logger.js';
import { startPgmux } from '../server/pgmux.js';
import { LocalCluster } from './localCluster.js';

export interface DemoOptions {
  /** Streaming replicas next to the primary (0..10, CLI default 2). */
  replicas: number;
  /** Where pgmux listens (CLI default 127.0.0.1:6432). */
  listen: HostPort;
  poolMode: PoolMode;
  poolSize: number;
  logger: Logger;
}

export interface RunningDemo {
  /** Stop pgmux and the throw-away cluster; the CLI calls it on SIGINT/SIGTERM. */
  close(reason?: string): Promise<void>;
}

export async function runDemo(opts: DemoOptions): Promise<RunningDemo> {
  const log = opts.logger;
  log.info({ replicas: opts.replicas }, 'starting a local PostgreSQL primary and streaming replicas');
  const cluster = await LocalCluster.start({ replicas: opts.replicas, log: (line) => log.debug(line) });
  const onExit = () => cluster.stopSync();
  process.on('exit', onExit);
  try {
    await cluster.query('node0', 'CREATE DATABASE app');
    await cluster.query(
      'node0',
      `CREATE TABLE posts (id bigserial PRIMARY KEY, title text NOT NULL, likes int NOT NULL DEFAULT 0);
       INSERT INTO posts (title) SELECT 'post ' || g FROM generate_series(1, 100) g;`,
      { database: 'app' },
    );
    await cluster.waitForStreaming();
    const pgmux = await startPgmux(
      {
        ...DEFAULTS,
        listen: opts.listen,
        nodes: cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })),
        poolMode: opts.poolMode,
        poolSize: opts.poolSize,
        // What a newcomer looks at next: the admin console and /metrics (any free port).
        adminUsers: ['postgres'],
        http: { host: opts.listen.host === '0.0.0.0' || opts.listen.host === '::' ? '127.0.0.1' : opts.listen.host, port: 0 },
      },
      { logger: log },
    );
    const host = opts.listen.host === '0.0.0.0' || opts.listen.host === '::' ? '127.0.0.1' : opts.listen.host;
    const dsn = `postgresql://postgres@${host.includes(':') ? `[${host}]` : host}:${pgmux.port}/app`;
    const lines = [
      '',
      'pgmux demo is running.',
      ...cluster.nodes.map((n, i) => `  ${i === 0 ? 'primary ' : 'replica '} ${n.name}  ${n.host}:${n.port}`),
      `  pgmux     ${host}:${pgmux.port}  (${opts.poolMode} pooling, pool_size ${opts.poolSize})`,
      '',
      `Connect with:  psql "${dsn}"`,
      `Admin console: psql "${dsn.slice(0, dsn.lastIndexOf('/'))}/pgmux" -c 'SHOW NODES'`,
      `Metrics:       curl http://${host.includes(':') ? `[${host}]` : host}:${pgmux.httpPort}/metrics`,
      '',
      'Press Ctrl-C to stop everything and remove the temporary cluster.',
      '',
    ];
    process.stdout.write(lines.join('\n') + '\n');
    return {
      async close(reason?: string) {
        log.info({ reason: reason ?? 'close' }, 'stopping demo');
        await pgmux.close(reason);
        await cluster.stop();
        process.off('exit', onExit);
      },
    };
  } catch (err) {
    await cluster.stop();
    process.off('exit', onExit);
    throw err;
  }
}
