// `pgmux demo`: a throw-away primary + streaming replicas from this machine's PostgreSQL
// binaries, pgmux in front of them, and a DSN to paste into psql. Ctrl-C removes it all.

import type { Config, NodeConfig } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { startPgmux } from '../server/pgmux.js';
import { LocalCluster } from './localCluster.js';

export interface DemoOptions {
  /** Streaming replicas next to the primary (0..10, CLI default 2). */
  replicas: number;
  /** Settings as `start` would load them (defaults, PGMUX_CONFIG, PGMUX_*, flags); see demoConfig. */
  config: Config;
  logger: Logger;
}

const wildcard = (host: string) => host === '0.0.0.0' || host === '::' || host === '';

/**
 * What the demo runs with: the loaded settings, except where the demo must own them. Its
 * nodes are the throw-away cluster's (configured nodes are ignored); `postgres` is an admin
 * console user (added to admin_users); the HTTP listener is on (the configured address, else a
 * free port next to the listen address), so both can be printed.
 */
export function demoConfig(loaded: Config, nodes: NodeConfig[]): Config {
  const host = wildcard(loaded.listen.host) ? '127.0.0.1' : loaded.listen.host;
  return {
    ...loaded,
    nodes,
    adminUsers: loaded.adminUsers.includes('postgres') ? loaded.adminUsers : [...loaded.adminUsers, 'postgres'],
    http: loaded.http ?? { host, port: 0 },
  };
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
    if (opts.config.nodes.length > 0) log.warn({ nodes: opts.config.nodes.length }, 'configured nodes ignored: the demo runs its own cluster');
    // What a newcomer looks at next: the admin console and /metrics.
    const config = demoConfig(opts.config, cluster.nodes.map((n) => ({ host: n.host, port: n.port, weight: 1 })));
    const pgmux = await startPgmux(config, { logger: log });
    const host = wildcard(config.listen.host) ? '127.0.0.1' : config.listen.host;
    const bracket = (h: string) => (h.includes(':') ? `[${h}]` : h);
    const dsn = `postgresql://postgres@${bracket(host)}:${pgmux.port}/app`;
    const httpHost = config.http === null || wildcard(config.http.host) ? '127.0.0.1' : config.http.host;
    const lines = [
      '',
      'pgmux demo is running.',
      ...cluster.nodes.map((n, i) => `  ${i === 0 ? 'primary ' : 'replica '} ${n.name}  ${n.host}:${n.port}`),
      `  pgmux     ${host}:${pgmux.port}  (${config.poolMode} pooling, pool_size ${config.poolSize})`,
      '',
      `Connect with:  psql "${dsn}"`,
      ...(pgmux.unixSocket === null ? [] : [`Unix socket:   psql -h ${config.unixSocketDir} -p ${pgmux.port} -U postgres app    (${pgmux.unixSocket})`]),
      `Admin console: psql "${dsn.slice(0, dsn.lastIndexOf('/'))}/pgmux" -c 'SHOW NODES'`,
      `Metrics:       curl http://${bracket(httpHost)}:${pgmux.httpPort}/metrics`,
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
