// The process logger: pino, JSON lines by default (one object per line, ISO timestamps), or
// pino-pretty's human format when asked to, or when writing to a terminal outside CI.
// Anything under a `password` or `secret` key is redacted wherever it appears one level deep.

import pino from 'pino';
import pretty from 'pino-pretty';
import type { LogLevel } from '../config/types.js';

export type Logger = pino.Logger;

export interface LoggerOptions {
  /** true: human format; false: JSON lines; default: human iff the destination is a TTY and CI is unset. */
  pretty?: boolean;
  /** Default: standard output. */
  destination?: NodeJS.WritableStream;
}

export const REDACT_PATHS = [
  'password',
  '*.password',
  'secret',
  '*.secret',
  'serverPassword',
  '*.serverPassword',
  'server_password',
  '*.server_password',
  'healthCheckPassword',
  '*.healthCheckPassword',
];

export function createLogger(level: LogLevel, opts: LoggerOptions = {}): Logger {
  const target = opts.destination ?? process.stdout;
  const isTty = (target as { isTTY?: boolean }).isTTY === true;
  const usePretty = opts.pretty ?? (isTty && !process.env.CI);
  const options: pino.LoggerOptions = {
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (usePretty) {
    const stream = pretty({
      destination: opts.destination ?? 1,
      colorize: isTty && !process.env.NO_COLOR,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      sync: true,
    });
    return pino(options, stream);
  }
  return pino(options, opts.destination ?? pino.destination({ dest: 1, sync: true }));
}
