// The running proxy: listener, client registry and cancel keys, pools, topology monitor
// and the janitor that drives every timeout from one timer.

import net from 'node:net';
import pg from 'pg';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { loadAuthFile, secretKind, type AuthEntry } from '../auth/authFile.js';
import { BackendConnection, type BackendCredentials, type NodeAddress } from '../pool/backend.js';
import { Pool } from '../pool/pool.js';
import { ClientSession } from '../session/clientSession.js';
import { ClusterMonitor } from '../cluster/monitor.js';
import { isHealthy, lagPolicyOf, type NodeSnapshot, type TopologySnapshot } from '../cluster/topology.js';
import { cancelRequest } from '../protocol/messages.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import type { ProxyContext } from './context.js';
import { ConnectionLimits } from './limits.js';
import { backendTlsFor, pgClientSsl, reloadTls } from './tls.js';
import { reloadHba } from './hba.js';
import { StatementNames } from '../session/preparedStatements.js';
import { NotificationHub } from '../session/notifications.js';
import { AdminConsole } from '../admin/console.js';
import type { BackendView, ClientView, PoolView, ProxyCounters, ProxyView } from '../admin/view.js';
import { startHttp, type RunningHttp } from '../admin/http.js';
import { createMetrics } from '../observability/metrics.js';

/** Upper bounds (ms) of the pool wait-time histogram buckets. */
const WAIT_BUCKETS_MS = [0.1, 1, 5, 10, 50, 100, 500, 1000, 5000, 30000];
import { Classifier, type Classification, type FunctionRef } from '../routing/classifier.js';
import { FunctionCatalogs, VOLATILE_FUNCTIONS_SQL, type CatalogOptions } from '../routing/functionCatalog.js';
import { ReadBalancer, type ReadPolicy } from '../routing/balancer.js';
import { chooseRead, loginNodeOf } from '../routing/policy.js';

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
/** How long an auth_query result is reused. */
const AUTH_QUERY_CACHE_MS = 30_000;

const VERSION = '0.1.0';

export class Proxy implements ProxyContext, ProxyView {
  readonly version = VERSION;
  readonly startedAt = Date.now();
  private cfgVersion = 1;
  /** Re-reads the configuration for RELOAD / SIGHUP (the CLI passes its loader). */
  reloadSource: (() => Config) | null = null;
  /** Asks the process to shut down gracefully (admin SHUTDOWN). */
  onShutdownRequest: (() => void) | null = null;
  listening = false;
  readonly stats: ProxyCounters = {
    bytesIn: 0,
    bytesOut: 0,
    clientLogins: 0,
    clientLoginFailures: 0,
    transactions: new Map(),
    waitMsSum: 0,
    waitCount: 0,
    waitBucketsMs: WAIT_BUCKETS_MS,
    waitBucketCounts: new Array(WAIT_BUCKETS_MS.length + 1).fill(0),
    failovers: 0,
    readRetries: 0,
    backendResets: 0,
    backendConnectFailures: 0,
  };
  /** Databases paused by PAUSE (null entry = everything). */
  private readonly paused = new Set<string | null>();
  private readonly parked = new Set<ClientSession>();
  readonly disabledNodes = new Set<string>();
  private recycleBefore = 0;
  readonly admin: AdminConsole;
  readonly clock = { now: Date.now() };
  readonly clientSet = new Set<ClientSession>();
  /** Every connection, logged in or not: the janitor's and shutdown's list. */
  private readonly connections = new Set<ClientSession>();
  private readonly byPid = new Map<number, ClientSession>();
  private readonly poolMap = new Map<string, Pool>();
  private readonly nodes = new Map<string, NodeAddress>();
  private authEntries: Map<string, AuthEntry>;
  private readonly learnedPasswords = new Map<string, string>();
  /** SCRAM pass-through keys clients proved (memory only). */
  private readonly learnedScramKeys = new Map<string, { clientKey: Buffer; serverKey: Buffer }>();
  /** auth_query results (entry or undefined for an unknown user), with when they expire. */
  private readonly authQueryCache = new Map<string, { entry: AuthEntry | undefined; expires: number }>();
  private readonly authQueryInFlight = new Map<string, Promise<AuthEntry | undefined>>();
  /** Lookups that went to the database (for tests and SHOW-style stats). */
  authQueryLookups = 0;
  /** Logins waiting for any node to log in through (loginNode). */
  private readonly loginWaiters = new Set<{ resolve: (n: NodeAddress | null) => void; timer: NodeJS.Timeout }>();
  private janitor: NodeJS.Timeout | null = null;
  shuttingDown = false;
  readonly limits = new ConnectionLimits();
  readonly statementNames = new StatementNames();
  readonly notifications: NotificationHub;
  readonly monitor: ClusterMonitor;
  private classifier: Classifier;
  /** Per database: its volatile functions (reads calling one go to the primary). */
  readonly functionCatalogs: FunctionCatalogs;
  readonly readBalancer: ReadBalancer;
  private readPolicy!: ReadPolicy;

  constructor(
    private cfg: Config,
    readonly logger: Logger,
  ) {
    this.authEntries = cfg.authFile ? loadAuthFile(cfg.authFile) : new Map();
    // Certificates and the HBA file, read now so a bad one fails the start, not a client.
    reloadTls(cfg);
    reloadHba(cfg);
    this.monitor = new ClusterMonitor(cfg, logger, () => this.authEntries);
    this.monitor.on('snapshot', (s: TopologySnapshot) => this.onTopology(s));
    this.monitor.on('snapshot', () => this.wakeLoginWaiters());
    this.classifier = new Classifier({ writeFunctions: cfg.writeFunctions });
    this.functionCatalogs = new FunctionCatalogs((db, user) => this.loadFunctionCatalog(db, user), logger, catalogOptions(cfg));
    this.readBalancer = new ReadBalancer(() => this.readPolicy);
    this.applyReadPolicy();
    this.admin = new AdminConsole(this);
    // The listener connection for LISTEN/NOTIFY: one per (database, user), on the primary,
    // outside the pools' size limits.
    this.notifications = new NotificationHub(async (database, user) => {
      const node = await this.primary(this.cfg.failoverTimeoutMs);
      if (node === null) throw new PgmuxError(pgmuxError('noPrimary'));
      return BackendConnection.connect({ node, user, database, credentials: this.credentialsFor(user), connectTimeoutMs: this.cfg.serverConnectTimeoutMs });
    }, logger);
  }

  private applyReadPolicy(): void {
    this.readPolicy = { fallbackToPrimary: this.cfg.fallbackToPrimary };
    // Lag limits are the monitor's: it decides once per round which replicas are lagging.
    this.monitor.setLagPolicy(lagPolicyOf(this.cfg));
  }

  classify(sql: string): Classification {
    return this.classifier.classify(sql);
  }

  volatileCall(database: string, user: string, calls: readonly FunctionRef[]): string | null | Promise<void> {
    return this.functionCatalogs.check(database, user, calls, this.clock.now);
  }

  /** Set by start --workers: the other workers' catalogs of `database` are stale too. */
  onFunctionsChanged: ((database: string) => void) | null = null;

  functionsChanged(database: string): void {
    this.functionCatalogs.changed(database);
    this.onFunctionsChanged?.(database);
  }

  /** pg_proc is the same on every node: the primary's (newest), else any node reads serve from. */
  private async loadFunctionCatalog(database: string, user: string): Promise<string | null> {
    const topo = this.monitor.snapshot();
    const node = topo.primary ?? chooseRead(topo, this.disabledNodes, null, null, null, this.readBalancer).node;
    if (node === null) throw new Error('no node is up');
    const row = await this.pool(this.nodeAddress(node), database, user).queryRow(VOLATILE_FUNCTIONS_SQL);
    return row?.[0] ?? null;
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

  countRouted(node: NodeAddress, kind: 'read' | 'write', waitedMs: number): void {
    let c = this.stats.transactions.get(node.name);
    if (!c) {
      c = { read: 0, write: 0 };
      this.stats.transactions.set(node.name, c);
    }
    c[kind]++;
    const st = this.stats;
    st.waitMsSum += waitedMs;
    st.waitCount++;
    const b = st.waitBucketsMs;
    let i = 0;
    while (i < b.length && waitedMs > b[i]!) i++;
    st.waitBucketCounts[i]!++;
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

  learnScramKeys(user: string, clientKey: Buffer, serverKey: Buffer): void {
    this.learnedScramKeys.set(user, { clientKey, serverKey });
  }

  /**
   * auth_query: the user's stored secret, looked up on the primary as auth_user. Results
   * (including "no such user") are cached for AUTH_QUERY_CACHE_MS; concurrent logins of
   * one user share one lookup. Rejects when the lookup itself fails.
   */
  async lookupAuthEntry(user: string): Promise<AuthEntry | undefined> {
    const cached = this.authQueryCache.get(user);
    if (cached && cached.expires > Date.now()) return cached.entry;
    let p = this.authQueryInFlight.get(user);
    if (!p) {
      p = this.runAuthQuery(user).finally(() => this.authQueryInFlight.delete(user));
      this.authQueryInFlight.set(user, p);
    }
    return p;
  }

  private async runAuthQuery(user: string): Promise<AuthEntry | undefined> {
    const cfg = this.cfg;
    const authUser = cfg.authUser;
    if (authUser === null) return undefined;
    // pg_authid / pg_shadow are readable on a replica too: no need to wait for a primary.
    const node = await this.loginNode(cfg.serverConnectTimeoutMs);
    if (node === null) throw new Error('no primary or replica is available to run auth_query');
    const fileEntry = this.authEntries.get(authUser);
    const password = cfg.authUserPassword ?? (fileEntry?.kind === 'plain' ? fileEntry.secret : undefined);
    this.authQueryLookups++;
    const client = new pg.Client({
      host: node.host,
      port: node.port,
      user: authUser,
      password,
      database: cfg.authDbname,
      application_name: 'pgmux-auth-query',
      connectionTimeoutMillis: cfg.serverConnectTimeoutMs || undefined,
      query_timeout: cfg.serverConnectTimeoutMs || undefined,
      ssl: pgClientSsl(backendTlsFor(cfg)),
    });
    client.on('error', () => {});
    let entry: AuthEntry | undefined;
    try {
      await client.connect();
      const r = await client.query({ text: cfg.authQuery, values: [user], rowMode: 'array' });
      const row = r.rows[0] as unknown[] | undefined;
      const secret = row?.[1];
      if (typeof secret === 'string' && secret !== '') {
        const kind = secretKind(secret);
        entry = { user, secret: kind === 'md5' ? secret.toLowerCase() : secret, kind };
      }
    } catch (err) {
      // Never log the secret: only the error text of the lookup.
      this.logger.warn({ user, node: node.name, err: (err as Error).message }, 'auth_query failed');
      throw err;
    } finally {
      client.end().catch(() => {});
    }
    if (this.authQueryCache.size >= 10_000) {
      // Unknown names are not worth keeping: drop the expired ones (secrets stay for credentialsFor).
      const now = Date.now();
      for (const [k, v] of this.authQueryCache) if (v.entry === undefined && v.expires <= now) this.authQueryCache.delete(k);
    }
    this.authQueryCache.set(user, { entry, expires: Date.now() + AUTH_QUERY_CACHE_MS });
    return entry;
  }

  private credentialsFor(user: string): BackendCredentials {
    const e = this.authEntries.get(user) ?? this.authQueryCache.get(user)?.entry;
    if (e?.kind === 'plain') return { password: e.secret };
    const learned = this.learnedPasswords.get(user) ?? this.cfg.serverPassword;
    if (e?.kind === 'md5') return { md5Secret: e.secret, password: learned };
    const keys = this.learnedScramKeys.get(user);
    return keys ? { password: learned, scramKeys: keys } : { password: learned };
  }

  async primary(timeoutMs: number): Promise<NodeAddress | null> {
    const now = this.monitor.snapshot().primary;
    if (now !== null) return this.nodeAddress(now);
    const p = await this.monitor.waitForPrimary(timeoutMs);
    return p ? this.nodeAddress(p) : null;
  }

  private loginNodeNow(): NodeAddress | null {
    const n = loginNodeOf(this.monitor.snapshot(), this.disabledNodes);
    return n === null ? null : this.nodeAddress(n);
  }

  loginNode(timeoutMs: number): Promise<NodeAddress | null> {
    const now = this.loginNodeNow();
    if (now !== null || timeoutMs <= 0 || this.shuttingDown) return Promise.resolve(now);
    return new Promise((resolve) => {
      const waiter = {
        resolve,
        timer: setTimeout(() => {
          this.loginWaiters.delete(waiter);
          resolve(null);
        }, timeoutMs),
      };
      this.loginWaiters.add(waiter);
    });
  }

  private wakeLoginWaiters(): void {
    if (this.loginWaiters.size === 0) return;
    const node = this.loginNodeNow();
    if (node === null) return;
    for (const w of this.loginWaiters) {
      clearTimeout(w.timer);
      w.resolve(node);
    }
    this.loginWaiters.clear();
  }

  /** One NodeAddress object per host:port, so sessions can compare by identity. */
  nodeAddress(n: NodeSnapshot): NodeAddress {
    let a = this.nodes.get(n.name);
    if (!a) {
      a = { host: n.host, port: n.port, name: n.name };
      this.nodes.set(n.name, a);
    }
    return a;
  }

  pool(node: NodeAddress, database: string, user: string): Pool {
    const key = node.name + '\0' + database + '\0' + user;
    let p = this.poolMap.get(key);
    if (!p || p.isClosed) {
      const knownFailure = this.droppedPoolFailures.get(key) ?? null;
      this.droppedPoolFailures.delete(key);
      const onDrop = (dropped: Pool) => {
        if (this.poolMap.get(key) === dropped) this.poolMap.delete(key);
        if (this.droppedPoolFailures.size >= 1000) this.droppedPoolFailures.clear();
        if (dropped.lastFailure !== null) this.droppedPoolFailures.set(key, dropped.lastFailure);
      };
      p = new Pool(node, database, user, () => this.cfg, () => this.credentialsFor(user), this.logger, this.stats, { onDrop, knownFailure });
      this.poolMap.set(key, p);
    }
    return p;
  }

  /**
   * Why the pools dropped for a login failure failed (pool key -> logged text), so a client
   * asking again for a missing database does not log the same warning again.
   */
  private readonly droppedPoolFailures = new Map<string, string>();

  allPools(): Pool[] {
    return [...this.poolMap.values()];
  }

  register(client: ClientSession): boolean {
    if (this.shuttingDown || this.clientSet.size >= this.cfg.maxClientConn) return false;
    this.clientSet.add(client);
    this.byPid.set(client.pid, client);
    return true;
  }

  /** Open client connections, logged in or not. */
  get connectionCount(): number {
    return this.connections.size;
  }

  track(client: ClientSession): void {
    this.connections.add(client);
  }

  untrack(client: ClientSession): void {
    this.connections.delete(client);
  }

  unregister(client: ClientSession): void {
    this.clientSet.delete(client);
    if (this.byPid.get(client.pid) === client) this.byPid.delete(client.pid);
  }

  /** Called for a cancel key no local client has (start --workers: another worker may own it). */
  onUnknownCancel: ((pid: number, secret: number) => void) | null = null;

  /** `forwarded`: the key came from another worker, so it is not passed on again. */
  cancel(pid: number, secret: number, forwarded = false): void {
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
    s.setTimeout(this.cfg.serverConnectTimeoutMs, () => s.destroy());
  }

  // ---- topology ---------------------------------------------------------------------

  private lastPrimary: string | null = null;
  /** Last non-null primary: a different one later is a failover. */
  private lastKnownPrimary: string | null = null;
  private readonly lastRole = new Map<string, string>();

  private onTopology(s: TopologySnapshot): void {
    const primary = s.primary?.name ?? null;
    if (primary !== this.lastPrimary) {
      this.logger.info({ from: this.lastPrimary, to: primary }, 'primary changed');
      this.lastPrimary = primary;
      if (primary !== null) {
        if (this.lastKnownPrimary !== null && this.lastKnownPrimary !== primary) {
          this.stats.failovers++;
          this.logger.warn({ from: this.lastKnownPrimary, to: primary }, 'failover: writes now go to the new primary');
        }
        this.lastKnownPrimary = primary;
      }
    }
    const changed = new Set<string>();
    for (const n of s.nodes) {
      // up <-> lagging is not a change here: a lagging replica keeps its backends (reads in
      // flight finish; the balancer sends it no new ones).
      const role = `${n.role}/${isHealthy(n.state) ? 'up' : n.state}`;
      if (this.lastRole.get(n.name) !== role) changed.add(n.name);
      this.lastRole.set(n.name, role);
    }
    // A node that is down, fenced, diverged or misconfigured loses its backends now (clients
    // inside a transaction there get 08006); a node whose role changed is drained: idle
    // backends closed now, busy ones when their transactions end.
    for (const [key, pool] of this.poolMap) {
      const n = s.nodes.find((x) => x.name === pool.node.name);
      if (!n || !isHealthy(n.state)) {
        pool.closeAll('node_gone');
        this.poolMap.delete(key);
      } else if (changed.has(n.name)) {
        pool.close('node_gone', new PgmuxError(pgmuxError('backendUnavailable', { detail: `${n.name} changed role to ${n.role}` })));
        this.poolMap.delete(key);
      }
    }
  }

  // ---- janitor ----------------------------------------------------------------------

  private sweep(): void {
    const now = Date.now();
    this.clock.now = now;
    for (const c of this.connections) c.sweep(now);
    for (const p of this.poolMap.values()) p.sweep(now);
  }

  /**
   * Graceful: idle clients are told 57P01 now; clients inside a transaction finish it
   * (each is closed when its backend is released) until shutdown_timeout, then everything
   * is closed.
   */
  async close(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    for (const c of [...this.connections]) if (!c.inTransaction) c.fatal(pgmuxError('adminShutdown'), 'shutdown');
    const deadline = Date.now() + this.cfg.shutdownTimeoutMs;
    while (this.connections.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const c of [...this.connections]) c.fatal(pgmuxError('adminShutdown', { detail: 'shutdown_timeout reached inside a transaction' }), 'shutdown');
    if (this.janitor) clearInterval(this.janitor);
    this.notifications.close();
    for (const p of this.poolMap.values()) p.closeAll('shutdown');
    this.poolMap.clear();
    for (const w of this.loginWaiters) {
      clearTimeout(w.timer);
      w.resolve(null);
    }
    this.loginWaiters.clear();
    await this.monitor.stop();
  }

  // ---- ProxyView (admin console, HTTP, metrics) --------------------------------------

  configVersion(): number {
    return this.cfgVersion;
  }

  clients(): ClientView[] {
    return [...this.clientSet].map((c) => c.view());
  }

  backends(): BackendView[] {
    const out: BackendView[] = [];
    for (const p of this.poolMap.values()) {
      for (const b of p.backends()) {
        out.push({
          id: b.id,
          node: b.node.name,
          database: b.database,
          user: b.user,
          state: b.state,
          pid: b.pid,
          createdAt: b.createdAt,
          lastReleasedAt: b.lastReleasedAt,
          preparedStatements: b.prepared.size,
          resets: b.resets,
          clientId: (b.owner as ClientSession | null)?.id ?? null,
        });
      }
    }
    return out;
  }

  pools(): PoolView[] {
    const now = Date.now();
    return [...this.poolMap.values()].map((p) => ({ node: p.node.name, database: p.database, user: p.user, stats: p.stats(now), totalConnects: p.totalConnects }));
  }

  topology(): TopologySnapshot {
    return this.monitor.snapshot();
  }

  counters(): ProxyCounters {
    return this.stats;
  }

  classifierStats(): { hits: number; misses: number; entries: number } {
    return { hits: this.classifier.cacheHits, misses: this.classifier.cacheMisses, entries: this.classifier.cacheEntries };
  }

  isPaused(database?: string): boolean {
    return this.paused.has(null) || (database !== undefined && this.paused.has(database));
  }

  isReady(): boolean {
    if (!this.listening || this.shuttingDown || this.paused.has(null)) return false;
    // Without a primary pgmux still takes traffic while a replica serves reads.
    const topo = this.monitor.snapshot();
    return topo.primary !== null || topo.nodes.some((n) => n.role === 'replica' && n.state === 'up');
  }

  /** A client whose transaction must wait for RESUME. */
  park(client: ClientSession): void {
    this.parked.add(client);
  }

  unpark(client: ClientSession): void {
    this.parked.delete(client);
  }

  async pause(database: string | null): Promise<void> {
    this.paused.add(database);
    this.logger.info({ database }, 'paused');
    // PAUSE returns once no transaction of the paused database(s) holds a backend.
    while ([...this.clientSet].some((c) => c.inTransaction && (database === null || c.database === database))) {
      await new Promise((r) => setTimeout(r, 20));
      if (!this.paused.has(database)) return;
    }
  }

  resume(database: string | null): void {
    if (database === null) this.paused.clear();
    else this.paused.delete(database);
    this.logger.info({ database }, 'resumed');
    for (const c of [...this.parked]) {
      if (!this.isPaused(c.database)) {
        this.parked.delete(c);
        c.resumeFromPause();
      }
    }
  }

  async reload(): Promise<{ ok: boolean; message: string }> {
    if (!this.reloadSource) return { ok: false, message: 'no configuration source to reload from (started without a loader)' };
    let next: Config;
    let entries: Map<string, AuthEntry>;
    try {
      next = this.reloadSource();
      entries = next.authFile ? loadAuthFile(next.authFile) : new Map();
      // Certificates and the HBA file as they are on disk now (rotation); bad ones refuse the reload.
      reloadTls(next);
      reloadHba(next);
    } catch (err) {
      const message = (err as Error).message;
      this.logger.error({ err: message }, 'reload refused: the running configuration stays');
      return { ok: false, message };
    }
    const prev = this.cfg;
    const restartNeeded = ['listen', 'http'].filter((k) => JSON.stringify(prev[k as keyof Config]) !== JSON.stringify(next[k as keyof Config]));
    this.cfg = { ...next, listen: prev.listen, http: prev.http };
    this.authEntries = entries;
    if (JSON.stringify(prev.writeFunctions) !== JSON.stringify(next.writeFunctions)) this.classifier = new Classifier({ writeFunctions: next.writeFunctions });
    this.functionCatalogs.configure(catalogOptions(next));
    this.applyReadPolicy();
    this.logger.level = next.logLevel;
    this.monitor.setConfig(this.cfg);
    this.monitor.setNodes(next.nodes);
    for (const p of this.poolMap.values()) p.fitToSize(); // pool_size applies now, not at the next sweep
    this.cfgVersion++;
    const message = `configuration ${this.cfgVersion} loaded` + (restartNeeded.length ? `; ${restartNeeded.join(', ')} change only on restart` : '');
    this.logger.info({ version: this.cfgVersion, nodes: next.nodes.map((n) => `${n.host}:${n.port}@${n.weight}`) }, message);
    return { ok: true, message };
  }

  reconnect(): void {
    this.recycleBefore = Date.now();
    for (const p of this.poolMap.values()) p.recycle(this.recycleBefore);
  }

  disableNode(name: string): boolean {
    const n = this.monitor.snapshot().nodes.find((x) => x.name === name);
    if (!n) return false;
    this.disabledNodes.add(name);
    for (const p of this.poolMap.values()) if (p.node.name === name) p.recycle(Date.now());
    this.logger.info({ node: name }, 'node disabled: no new reads');
    return true;
  }

  enableNode(name: string): boolean {
    const had = this.disabledNodes.delete(name);
    if (had) this.logger.info({ node: name }, 'node enabled');
    return had;
  }

  isDisabled(name: string): boolean {
    return this.disabledNodes.has(name);
  }

  shutdown(): void {
    if (this.onShutdownRequest) this.onShutdownRequest();
    else void this.close();
  }

  adminRole(user: string): 'admin' | 'stats' | null {
    if (this.cfg.adminUsers.includes(user)) return 'admin';
    if (this.cfg.statsUsers.includes(user)) return 'stats';
    return null;
  }

  adminQuery(sql: string, role: 'admin' | 'stats'): Promise<Buffer> {
    return this.admin.run(sql, role);
  }
}

function catalogOptions(cfg: Config): CatalogOptions {
  return {
    readOnlyFunctions: cfg.readOnlyFunctions,
    refreshMs: cfg.functionCatalogRefreshMs,
    loadTimeoutMs: cfg.serverConnectTimeoutMs > 0 ? cfg.serverConnectTimeoutMs : 15_000,
  };
}

export interface StartOptions {
  logger: Logger;
  /** Loads the configuration again for RELOAD / SIGHUP. */
  reloadConfig?: () => Config;
}

export async function startPgmux(config: Config, opts: StartOptions): Promise<RunningPgmux> {
  const logger = opts.logger;
  const proxy = new Proxy(config, logger);
  proxy.reloadSource = opts.reloadConfig ?? null;
  await proxy.start();
  const server = net.createServer({ noDelay: true }, (socket) => {
    if (!proxy.limits.acceptOrRefuse(socket, proxy.config(), (msg, fields) => logger.warn(fields, msg))) return;
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
  proxy.listening = true;
  logger.info({ listen: `${config.listen.host}:${port}`, nodes: config.nodes.map((n) => `${n.host}:${n.port}`), poolMode: config.poolMode, poolSize: config.poolSize }, 'pgmux listening');
  let http: RunningHttp | null = null;
  if (config.http) {
    try {
      http = await startHttp(proxy, createMetrics(proxy), config.http, logger);
    } catch (err) {
      server.close();
      await proxy.close();
      throw err;
    }
  }
  let closing: Promise<void> | null = null;
  const running: RunningPgmux = {
    port,
    httpPort: http?.port ?? null,
    proxy,
    close(reason?: string) {
      closing ??= (async () => {
        logger.info({ reason: reason ?? 'close' }, 'pgmux shutting down');
        proxy.listening = false;
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        await proxy.close();
        await closed;
        await http?.close();
      })();
      return closing;
    },
  };
  proxy.onShutdownRequest = () => void running.close('admin SHUTDOWN');
  return running;
}
