// Connection limits that protect pgmux itself:
// - max_unauthenticated_connections: connections still logging in (startup, TLS handshake,
//   authentication). Past it, new connections are refused at accept with 53300, so a flood
//   of idle half-open connections cannot take every slot from real clients.
// - max_db_client_connections / max_user_client_connections: client connections per database
//   and per user,
//   checked once the startup packet names them (53300, PostgreSQL's wording).

import type net from 'node:net';
import type { Config } from '../config/types.js';
import { errorResponse } from '../protocol/messages.js';
import { pgmuxError, type ErrorSpec } from '../protocol/errors.js';

export class ConnectionLimits {
  /** Connections that have not finished authentication. */
  unauthenticated = 0;
  /** Connections refused at accept (for logs and SHOW). */
  refusedAtAccept = 0;
  private readonly byDb = new Map<string, number>();
  private readonly byUser = new Map<string, number>();
  private lastRefusalLogAt = 0;

  /** Count of admitted connections for a database. */
  databaseCount(database: string): number {
    return this.byDb.get(database) ?? 0;
  }

  userCount(user: string): number {
    return this.byUser.get(user) ?? 0;
  }

  /**
   * Counts one more client of (user, database), or returns the FATAL to send when a limit
   * is reached (nothing counted then). Each successful admit needs one release().
   */
  admit(user: string, database: string, cfg: Config): ErrorSpec | null {
    const db = this.byDb.get(database) ?? 0;
    const us = this.byUser.get(user) ?? 0;
    if (cfg.maxDbClientConnections > 0 && db >= cfg.maxDbClientConnections) {
      return pgmuxError('tooManyDatabaseConnections', { args: { database }, detail: `max_db_client_connections is ${cfg.maxDbClientConnections}` });
    }
    if (cfg.maxUserClientConnections > 0 && us >= cfg.maxUserClientConnections) {
      return pgmuxError('tooManyUserConnections', { args: { user }, detail: `max_user_client_connections is ${cfg.maxUserClientConnections}` });
    }
    this.byDb.set(database, db + 1);
    this.byUser.set(user, us + 1);
    return null;
  }

  release(user: string, database: string): void {
    dec(this.byDb, database);
    dec(this.byUser, user);
  }

  /**
   * At accept: true if the connection may go on. Otherwise it has been answered with
   * FATAL 53300 and is being closed (its input is drained so the close is clean).
   */
  acceptOrRefuse(socket: net.Socket, cfg: Config, warn: (msg: string, fields: object) => void, now = Date.now()): boolean {
    const max = cfg.maxUnauthenticatedConnections;
    if (max <= 0 || this.unauthenticated < max) return true;
    this.refusedAtAccept++;
    if (now - this.lastRefusalLogAt >= 1000) {
      this.lastRefusalLogAt = now;
      warn('refusing connections: too many still logging in', { maxUnauthenticatedConnections: max, refusedSoFar: this.refusedAtAccept });
    }
    socket.on('error', () => {});
    socket.resume();
    socket.end(
      errorResponse(
        pgmuxError('tooManyLoggingIn', { detail: `max_unauthenticated_connections is ${max}` }),
      ),
    );
    setTimeout(() => socket.destroy(), 5000).unref();
    return false;
  }
}

function dec(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}
