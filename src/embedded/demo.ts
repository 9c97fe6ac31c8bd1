// PLACEHOLDER written by the CLI/config work so src/cli.ts type-checks; the real demo
// replaces this whole file. Contract used by src/cli.ts (`pgmux demo`):
import type { HostPort, PoolMode } from '../config/types.js';
import type { Logger } from '../observability/logger.js';

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

export async function runDemo(_opts: DemoOptions): Promise<RunningDemo> {
  throw new Error('not implemented');
}
