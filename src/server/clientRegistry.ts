// Every client connection pgmux holds: all of them from accept to close (the janitor's and
// shutdown's list), the logged-in ones against max_client_conn, and their cancel keys.

import net from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { randomInt32, type BackendConnection } from '../pool/backend.js';
import type { PeerDirectory } from '../cluster/peers.js';
import { cancelRequest } from '../protocol/messages.js';
import type { ClientSession } from '../session/clientSession.js';

/** What a client session asks of the registry. */
export interface ClientConnections {
  /** Every connection from accept to close (timeouts apply before login too). */
  track(client: ClientSession): void;
  untrack(client: ClientSession): void;
  /** A logged-in client (counts against max_client_conn, owns a cancel key); false when full. */
  register(client: ClientSession): boolean;
  unregister(client: ClientSession): void;
  /** A client's CancelRequest (proxy-issued key): reaches the backend it uses now, if any. */
  cancel(pid: number, secret: number): void;
  /** The secret of a new client's cancel key (carries the peer id when peering is on). */
  newSecret(): number;
  /** Cancels whatever runs on this backend (its real key). */
  cancelBackend(backend: BackendConnection): void;
}

export class ClientRegistry implements ClientConnections {
  /** Logged-in clients. */
  readonly clients = new Set<ClientSession>();
  /** Every connection, logged in or not. */
  readonly connections = new Set<ClientSession>();
  private readonly byPid = new Map<number, ClientSession>();
  /** Called for a cancel key no local client has (start --workers: another worker may own it). */
  onUnknownCancel: ((pid: number, secret: number) => void) | null = null;

  constructor(
    private readonly config: () => Config,
    private readonly logger: Logger,
    /** Shutting down: no new logins. */
    private readonly closing: () => boolean,
    private readonly peers: PeerDirectory,
  ) {}

  newSecret(): number {
    return this.peers.stampSecret(randomInt32());
  }

  register(client: ClientSession): boolean {
    if (this.closing() || this.clients.size >= this.config().maxClientConn) return false;
    this.clients.add(client);
    this.byPid.set(client.pid, client);
    return true;
  }

  unregister(client: ClientSession): void {
    this.clients.delete(client);
    if (this.byPid.get(client.pid) === client) this.byPid.delete(client.pid);
  }

  track(client: ClientSession): void {
    this.connections.add(client);
  }

  untrack(client: ClientSession): void {
    this.connections.delete(client);
  }

  /** `forwarded`: the key came from another worker, so it is not passed on again. */
  cancel(pid: number, rawSecret: number, forwarded = false): void {
    // Another peer's key goes to that peer (src/cluster/peers.ts), not to our workers.
    const secret = this.peers.route({ pid, secret: rawSecret });
    if (secret === null) return;
    const c = this.byPid.get(pid);
    if (!c && !forwarded) this.onUnknownCancel?.(pid, secret);
    // Unknown key or wrong secret: ignored, as PostgreSQL does.
    if (!c || c.secret !== secret) return;
    const b = c.cancelTarget;
    if (b) this.cancelBackend(b);
  }

  cancelBackend(b: BackendConnection): void {
    const s = net.connect({ host: b.node.host, port: b.node.port });
    s.on('connect', () => s.end(cancelRequest(b.pid, b.secret)));
    s.on('error', (err) => this.logger.warn({ node: b.node.name, err: err.message }, 'cancel request failed'));
    s.setTimeout(this.config().serverConnectTimeoutMs, () => s.destroy());
  }
}
