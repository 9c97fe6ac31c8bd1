// A TCP forwarder in front of a PostgreSQL node that records every connection's startup
// packet (which database it names, when) and can refuse the logins naming one database:
// counts a proxy's connect attempts exactly, and fails them while the topology monitor's
// own connection (another database) carries on.
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

/** pass: forward; reset: TCP reset after the startup packet; close: close after it. */
export type ForwardMode = 'pass' | 'reset' | 'close';

export interface SeenConnect {
  at: number;
  database: string | null;
}

/** The `database` parameter of a StartupMessage (protocol 3.0), or null. */
function startupDatabase(buf: Buffer): string | null {
  if (buf.length < 8 || buf.readInt32BE(4) !== 196608) return null;
  const fields = buf.toString('utf8', 8, Math.min(buf.length, buf.readInt32BE(0))).split('\0');
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'database') return fields[i + 1]!;
  return null;
}

export class Forwarder {
  /** What happens to new connections naming `target` (others always pass). */
  mode: ForwardMode = 'pass';
  readonly connects: SeenConnect[] = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly target: string,
  ) {}

  /** Listens on a free loopback port and forwards to 127.0.0.1:upstreamPort. */
  static async start(upstreamPort: number, target: string): Promise<Forwarder> {
    let self: Forwarder | null = null;
    const server = createServer((client) => self!.accept(client, upstreamPort));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new Forwarder(server, (server.address() as AddressInfo).port, target);
    return self;
  }

  /** Connections whose startup named `database` (default: the target). */
  attempts(database = this.target): number[] {
    return this.connects.filter((c) => c.database === database).map((c) => c.at);
  }

  private accept(client: Socket, upstreamPort: number): void {
    this.track(client);
    client.once('data', (first: Buffer) => {
      const database = startupDatabase(first);
      this.connects.push({ at: Date.now(), database });
      if (database === this.target && this.mode === 'reset') return void client.resetAndDestroy();
      if (database === this.target && this.mode === 'close') return void client.end();
      client.pause();
      const up = this.track(connect({ host: '127.0.0.1', port: upstreamPort }));
      up.on('connect', () => {
        up.write(first);
        client.pipe(up);
        up.pipe(client);
        client.resume();
      });
      up.on('close', () => client.destroy());
      client.on('close', () => up.destroy());
    });
  }

  private track(s: Socket): Socket {
    this.sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => this.sockets.delete(s));
    return s;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}
