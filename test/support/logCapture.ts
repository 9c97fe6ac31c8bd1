// pgmux's own logger (JSON lines, with its redaction) writing into an array that a test
// reads, instead of to standard output.
import type { LogLevel } from '../../src/config/types.js';
import { createLogger, type Logger } from '../../src/observability/logger.js';

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** pino's numeric levels, as they appear in `LogLine.level`. */
export const LEVEL = { debug: 20, info: 30, warn: 40, error: 50 } as const;

export interface CapturedLog {
  logger: Logger;
  /** Every line logged so far, parsed, oldest first. */
  lines: LogLine[];
}

export function captureLogger(level: LogLevel = 'debug'): CapturedLog {
  const lines: LogLine[] = [];
  const destination = {
    write(chunk: string | Buffer): boolean {
      for (const s of chunk.toString().split('\n')) if (s) lines.push(JSON.parse(s) as LogLine);
      return true;
    },
  };
  return { logger: createLogger(level, { pretty: false, destination: destination as unknown as NodeJS.WritableStream }), lines };
}
