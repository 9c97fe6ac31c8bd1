// The running proxy: listener, client registry and cancel keys, pools, topology monitor
// and the janitor that drives every timeout from one timer.

import net from 'node:net';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { loadAuthFile, type AuthEntry } from '../auth/authFile.js';
import { BackendConnection, type BackendCredentials, type NodeAddress } from '../pool/backend.js';
import { Pool } from '../pool/pool.js';
import { ClientSession } from '../session/clientSession.js';
import { ClusterMonitor } from '../cluster/monitor.js';
import type { NodeSnapshot, TopologySnapshot } from '../cluster/topology.js';
import { cancelRequest } from '../protocol/messages.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import type { ProxyContext } from './context.js';
import { StatementNames } from '../session/preparedStatements.js';
import { Classifier, type Classification } from '../routing/classifier.js';
import { ReadBalancer, type LagLimits, type ReadPolicy } from '../routing/balancer.js';

export interface RunningPgmux {
  /** Port clients connect to (the real one when listen port was 0). */
  port: number;
  /** Port of the HTTP listener, null when http is off. */
  httpPort: number | null;
  readonly proxy: Proxy;
  /** Stop accepting, end clients and backends; resolves when everything is closed. */
  close(reason?: string): Promise<void>;
}

const JANITOR_INTERVAL_MS = 200;

export class Proxy implements ProxyContext {
  readonly clock = { now: Date.now() };
  readonly clients = new Set<ClientSession>();
  private readonly byPid = new Map<number, ClientSession>();
  private readonly pools = new Map<string, Pool>();
  private readonly nodes = new Map<string, NodeAddress>();
  private authEntries: Map<string, AuthEntry>;
  private readonly learnedPasswords = new Map<string, string>();
  private janitor: NodeJS.Timeout | null = null;
  shuttingDown = false;
  readonly statementNames = new StatementNames();
  readonly monitor: ClusterMonitor;
  private classifier: Classifier;
  private readonly balancer: ReadBalancer;
  private readPolicy!: ReadPolicy;
  /** Transactions routed, per node name. */
  readonly routed = new Map<string, { reads: number; writes: number }>();

  constructor(
    private cfg: Config,
    readonly logger: Logger,
  ) {
    this.authEntries = cfg.authFile ? loadAuthFile(cfg.authFile) : new Map();
    this.monitor = new ClusterMonitor(cfg, logger);
    this.monitor.on('snapshot', (s: TopologySnapshot) => this.onTopology(s));
    this.classifier = new Classifier({ writeFunctions: cfg.writeFunctions });
    this.balancer = new ReadBalancer(() => this.readPolicy);
    this.applyReadPolicy();
  }

  private applyReadPolicy(): void {
    const perNode = new Map<string, Partial<LagLimits>>();
    for (const n of this.cfg.nodes) {
      const o: Partial<LagLimits> = {};
      if (n.maxLagBytes !== undefined) o.maxLagBytes = n.maxLagBytes;
      if (n.maxLagMs !== undefined) o.maxLagMs = n.maxLagMs;
      perNode.set(`${n.host}:${n.port}`, o);
    }
    this.readPolicy = {
      maxLagBytes: this.cfg.maxLagBytes,
      maxLagMs: this.cfg.maxLagMs,
      perNode,
      lagHysteresis: this.cfg.lagHysteresis,
      fallbackToPrimary: this.cfg.fallbackToPrimary,
    };
  }

  classify(sql: string): Classification {
    return this.classifier.classify(sql);
  }

  chooseRead(minLsn: bigint | null, maxLagMsHint: number | null, avoid: string | null): { node: NodeAddress | null; reason: string } {
    let topo = this.monitor.snapshot();
    if (avoid !== null) topo = { ...topo, nodes: topo.nodes.filter((n) => n.name !== avoid) };
    const c = this.balancer.choose(topo, minLsn, maxLagMsHint);
    return { node: c.node ? this.nodeAddress(c.node) : null, reason: c.reason };
  }

  async primaryAfterFailure(failed: NodeAddress, timeoutMs: number): Promise<NodeAddress | null> {
    const deadline = Date.now() + timeoutMs;
    const since = Date.now();
    while (!this.shuttingDown) {
      await this.monitor.pollNow().catch(() => {});
      const p = this.monitor.snapshot().primary;
      // A new primary, or the same one answering health checks again (a blip).
      if (p !== null && (p.name !== failed.name || (p.consecutiveFailures === 0 && p.lastOkAt > since))) return this.nodeAddress(p);
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((r) => setTimeout(r, Math.min(left, Math.max(50, this.cfg.healthCheckPeriodMs / 4))));
    }
    return null;
  }

  countRouted(node: NodeAddress, kind: 'read' | 'write'): void {
    let c = this.routed.get(node.name);
    if (!c) {
      c = { reads: 0, writes: 0 };
      this.routed.set(node.name, c);
    }
    if (kind === 'read') c.reads++;
    else c.writes++;
  }

  config(): Config {
    return this.cfg;
  }

  async start(): Promise<void> {
    await this.monitor.start();
    this.janitor = setInterval(() => this.sweep(), JANITOR_INTERVAL_MS);
    this.janitor.unref();
  }

  // ---- ProxyContext -----------------------------------------------------------------

  authEntry(user: string): AuthEntry | undefined {
    return this.authEntries.get(user);
  }

  learnPassword(user: string, password: string): void {
    this.learnedPasswords.set(user, password);
  }

  private credentialsFor(user: string): BackendCredentials {
    const e = this.authEntries.get(user);
    if (e?.kind === 'plain') return { password: e.secret };
    const learned = this.learnedPasswords.get(user) ?? this.cfg.serverPassword;
    if (e?.kind === 'md5') return { md5Secret: e.secret, password: learned };
    return { password: learned };
  }

  currentPrimary(): NodeAddress | null {
    const p = this.monitor.snapshot().primary;
    return p ? this.nodeAddress(p) : null;
  }

  async primary(timeoutMs: number): Promise<NodeAddress | null> {
    const now = this.currentPrimary();
    if (now !== null) return now;
    const p = await this.monitor.waitForPrimary(timeoutMs);
    return p ? this.nodeAddress(p) : null;
  }

  /** One NodeAddress object per host:port, so sessions can compare by identity. */
  private nodeAddress(n: NodeSnapshot): NodeAddress {
    let a = this.nodes.get(n.name);
    if (!a) {
      a = { host: n.host, port: n.port, name: n.name };
      this.nodes.set(n.name, a);
    }
    return a;
  }

  pool(node: NodeAddress, database: string, user: string): Pool {
    const key = node.name + '\0' + database + '\0' + user;
    let p = this.pools.get(key);
    if (!p || p.isClosed) {
      p = new Pool(node, database, user, () => this.cfg, () => this.credentialsFor(user), this.logger);
      this.pools.set(key, p);
    }
    return p;
  }

  allPools(): Pool[] {
    return [...this.pools.values()];
  }

  register(client: ClientSession): boolean {
    if (this.shuttingDown || this.clients.size >= this.cfg.maxClientConn) return false;
    this.clients.add(client);
    this.byPid.set(client.pid, client);
    return true;
  }

  unregister(client: ClientSession): void {
    this.clients.delete(client);
    if (this.byPid.get(client.pid) === client) this.byPid.delete(client.pid);
  }

  cancel(pid: number, secret: number): void {
    const c = this.byPid.get(pid);
    // Unknown key or wrong secret: ignored, as PostgreSQL does.
    if (!c || c.secret !== secret) return;
    const b = c.cancelTarget;
    if (b) this.cancelBackend(b);
  }

  cancelBackend(b: BackendConnection): void {
    const s = net.connect({ host: b.node.host, port: b.node.port });
    s.on('connect', () => s.end(cancelRequest(b.pid, b.secret)));
    s.on('error', (err) => this.logger.warn({ node: b.node.name, err: err.message }, 'cancel request failed'));
    s.setTimeout(this.cfg.serverConnectTimeoutMs, () => s.destroy());
  }

  // ---- topology ---------------------------------------------------------------------

  private lastPrimary: string | null = null;
  private readonly lastRole = new Map<string, string>();

  private onTopology(s: TopologySnapshot): void {
    const primary = s.primary?.name ?? null;
    if (primary !== this.lastPrimary) {
      this.logger.info({ from: this.lastPrimary, to: primary }, 'primary changed');
      this.lastPrimary = primary;
    }
    const changed = new Set<string>();
    for (const n of s.nodes) {
      const role = `${n.role}/${n.state}`;
      if (this.lastRole.get(n.name) !== role) changed.add(n.name);
      this.lastRole.set(n.name, role);
    }
    // A node that is down, fenced or misconfigured loses its backends now (clients inside
    // a transaction there get 08006); a node whose role changed is drained: idle backends
    // closed now, busy ones when their transactions end.
    for (const [key, pool] of this.pools) {
      const n = s.nodes.find((x) => x.name === pool.node.name);
      if (!n || n.state !== 'up') {
        pool.closeAll('node_gone');
        this.pools.delete(key);
      } else if (changed.has(n.name)) {
        pool.close('node_gone', new PgmuxError(pgmuxError('backendUnavailable', { detail: `${n.name} changed role to ${n.role}` })));
        this.pools.delete(key);
      }
    }
  }

  // ---- janitor ----------------------------------------------------------------------

  private sweep(): void {
    const now = Date.now();
    this.clock.now = now;
    for (const c of this.clients) c.sweep(now);
    for (const p of this.pools.values()) p.sweep(now);
  }

  async close(): Promise<void> {
    this.shuttingDown = true;
    if (this.janitor) clearInterval(this.janitor);
    for (const c of [...this.clients]) c.fatal(pgmuxError('adminShutdown'), 'shutdown');
    for (const p of this.pools.values()) p.closeAll('shutdown');
    this.pools.clear();
    await this.monitor.stop();
  }
}

export async function startPgmux(config: Config, opts: { logger: Logger }): Promise<RunningPgmux> {
  const logger = opts.logger;
  const proxy = new Proxy(config, logger);
  await proxy.start();
  const server = net.createServer({ noDelay: true }, (socket) => {
    new ClientSession(socket, proxy);
  });
  server.maxConnections = config.maxClientConn + 100; // room to tell the excess why
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  logger.info({ listen: `${config.listen.host}:${port}`, nodes: config.nodes.map((n) => `${n.host}:${n.port}`), poolMode: config.poolMode, poolSize: config.poolSize }, 'pgmux listening');
  let closing: Promise<void> | null = null;
  return {
    port,
    httpPort: null,
    proxy,
    close(reason?: string) {
      closing ??= (async () => {
        logger.info({ reason: reason ?? 'close' }, 'pgmux shutting down');
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        await proxy.close();
        await closed;
      })();
      return closing;
    },
  };
}
