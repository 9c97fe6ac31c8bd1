// The running pgmux server: the listener, the services a client session receives (auth
// store, client registry, topology view, pool registry), the topology monitor, the admin
// view and actions, and the janitor that drives every timeout from one timer.

import cluster from 'node:cluster';
import net from 'node:net';
import { leanIoSupported } from '../net/leanSocket.js';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import type { AuthEntry } from '../auth/authFile.js';
import { AuthStore } from '../auth/authStore.js';
import { BackendConnection, type NodeAddress } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import { PoolRegistry } from '../pool/poolRegistry.js';
import { ClientSession } from '../session/clientSession.js';
import { ClusterMonitor, type PrimaryChangeEvent } from '../cluster/monitor.js';
import { lagPolicyOf } from '../cluster/replicaHealth.js';
import { isHealthy, type TopologySnapshot } from '../cluster/snapshot.js';
import { PgmuxError, pgmuxError } from '../protocol/errors.js';
import type { AdminService, SessionContext } from '../session/sessionContext.js';
import { ConnectionLimits } from './limits.js';
import { listenUnix, unixSocketPath } from './unixSocket.js';
import { reloadTls } from '../net/tls.js';
import { ClientRegistry } from './clientRegistry.js';
import { PeerDirectory } from '../cluster/peers.js';
import { splitLimits } from './workers.js';
import { TopologyView } from './topologyView.js';
import { reloadHba } from '../auth/hba.js';
import { StatementNames } from '../session/preparedStatements.js';
import { NotificationHub } from '../session/notifications.js';
import { AdminConsole } from '../admin/console.js';
import type { BackendView, ClientView, DatabaseView, PoolView, ServerCounters, ServerView, TrafficTotals } from '../admin/view.js';
import { startHttp, type RunningHttp } from '../admin/http.js';
import { pgpoolShow } from '../admin/pgmuxShow.js';
import { createMetrics } from '../observability/metrics.js';
import { ConfigError, parseConfigObject, validate } from '../config/load.js';
import { SETTINGS } from '../config/schema.js';
import { ADMIN_DATABASES, ClientState } from '../session/clientState.js';
import { TrafficStats } from '../observability/trafficStats.js';

/** Upper bounds (ms) of the pool wait-time histogram buckets. */
const WAIT_BUCKETS_MS = [0.1, 1, 5, 10, 50, 100, 500, 1000, 5000, 30000];
import { Classifier, type Classification } from '../routing/classifier.js';
import type { FunctionRef } from '../routing/functionLists.js';
import { FunctionCatalogs, FUNCTION_CATALOG_SQL, type CatalogOptions } from '../routing/functionCatalog.js';
import { chooseRead } from '../routing/policy.js';
import { QueryCache } from '../cache/queryCache.js';
import { RelationCatalogs, RELATIONS_SQL, type RelationGraph } from '../routing/relationCatalog.js';
import { InvalidationBus, primaryBusConnector } from '../cache/invalidationBus.js';
import { healthCheckLogin } from '../cluster/healthCheckLogin.js';
import { queryCacheAnywhere, queryCacheFor } from '../config/databases.js';
import type { CacheVerdict } from '../routing/cacheability.js';
import { FALLBACK, poolConfigFor, resolveDatabase, type DatabaseTarget } from '../config/databases.js';

export interface RunningPgmux {
  /** Port clients connect to (the real one when listen port was 0). */
  port: number;
  /** Port of the HTTP listener, null when http is off. */
  httpPort: number | null;
  /** Path of the Unix-domain socket file, null when unix_socket_dir is off. */
  unixSocket: string | null;
  /**
   * The server. Named `proxy` from when the class was Proxy: over a hundred uses in the
   * tests and tools reach into it by that name.
   */
  readonly proxy: PgmuxServer;
  /** Stop accepting, end clients and backends; resolves when everything is closed. */
  close(reason?: string): Promise<void>;
}

const JANITOR_INTERVAL_MS = 200;

const VERSION = '0.1.0';

export class PgmuxServer implements SessionContext, ServerView {
  readonly version = VERSION;
  readonly startedAt = Date.now();
  private cfgVersion = 1;
  /** Re-reads the configuration for RELOAD / SIGHUP (the CLI passes its loader). */
  reloadSource: (() => Config) | null = null;
  /** Asks the process to shut down gracefully (admin SHUTDOWN). */
  onShutdownRequest: (() => void) | null = null;
  listening = false;
  readonly stats: ServerCounters = {
    bytesIn: 0,
    bytesOut: 0,
    clientLogins: 0,
    clientLoginFailures: 0,
    proxyHeaderRefusals: 0,
    transactions: new Map(),
    waitMsSum: 0,
    waitCount: 0,
    waitBucketsMs: WAIT_BUCKETS_MS,
    waitBucketCounts: new Array(WAIT_BUCKETS_MS.length + 1).fill(0),
    failovers: 0,
    readRetries: 0,
    pipelined: 0,
    backendResets: 0,
    backendConnectFailures: 0,
    backendConnects: 0,
  };
  /** Per (database entry, user) totals since start (SHOW STATS, labelled metrics). */
  readonly traffic = new TrafficStats();
  /** Databases paused by PAUSE (null entry = everything). */
  private readonly paused = new Set<string | null>();
  private readonly parked = new Set<ClientSession>();
  /** SUSPEND: no transaction starts until RESUME. */
  private suspended = false;
  /** Databases DISABLE closed to new clients. */
  private readonly disabledDatabases = new Set<string>();
  /** SHUTDOWN WAIT_FOR_CLIENTS: new clients are refused while the last ones finish. */
  private refusingClients = false;
  private recycleBefore = 0;
  readonly adminConsole: AdminConsole;
  /** What sessions may ask of PAUSE / RESUME and the console. */
  readonly admin: AdminService;
  readonly clock = { now: Date.now() };
  /** Client connections, max_client_conn and cancel keys. */
  readonly registry: ClientRegistry;
  /** The other instances: cancel forwarding, live peer count. */
  readonly peers: PeerDirectory;
  /** Auth file, auth_query cache and what clients proved. */
  readonly auth: AuthStore;
  /** The cluster as sessions see it, and the waits for a node. */
  readonly nodes: TopologyView;
  /** One pool per (node, database, user). */
  private readonly poolRegistry: PoolRegistry;
  private janitor: NodeJS.Timeout | null = null;
  shuttingDown = false;
  readonly limits = new ConnectionLimits();
  readonly statementNames = new StatementNames();
  readonly notifications: NotificationHub;
  readonly monitor: ClusterMonitor;
  private classifier: Classifier;
  /** Per database: its volatile functions (reads calling one go to the primary). */
  readonly functionCatalogs: FunctionCatalogs;
  /** Query results (query_cache); RELOAD applies new bounds (applyQueryCacheConfig). */
  readonly queryCache: QueryCache;
  /** Per cached database: how its relations hang together (what a write invalidates, what may be cached). */
  readonly relationCatalogs: RelationCatalogs;
  /**
   * query_cache_mode notify / triggers: invalidations to and from the other instances (and
   * triggers) over NOTIFY on the primary; null with the cache off or in local mode.
   */
  cacheBus: InvalidationBus | null;

  /** The configuration as loaded; `cfg` is this instance's share of it under peer_budgets. */
  private configured: Config;

  constructor(
    private cfg: Config,
    readonly logger: Logger,
  ) {
    this.configured = cfg;
    const config = () => this.cfg;
    const closing = () => this.shuttingDown;
    this.auth = new AuthStore(config, (timeoutMs) => this.nodes.loginNode(timeoutMs), logger);
    // Certificates and the HBA file, read now so a bad one fails the start, not a client.
    reloadTls(cfg);
    reloadHba(cfg);
    this.monitor = new ClusterMonitor(cfg, logger, () => this.auth.fileEntries());
    this.monitor.on('primaryChange', (e: PrimaryChangeEvent) => this.onPrimaryChange(e));
    this.monitor.on('snapshot', (s: TopologySnapshot) => this.onTopology(s));
    this.nodes = new TopologyView(this.monitor, config, closing);
    this.peers = new PeerDirectory(config, logger);
    this.peers.onLiveChange = () => this.applyPeerShare();
    this.registry = new ClientRegistry(config, logger, closing, this.peers);
    this.poolRegistry = new PoolRegistry(config, (user) => this.auth.credentialsFor(user), logger, this.stats);
    this.classifier = new Classifier({ writeFunctions: cfg.writeFunctions });
    this.queryCache = new QueryCache({ maxBytes: cfg.queryCacheBytes, maxEntryBytes: cfg.queryCacheMaxEntryBytes, ttlMs: cfg.queryCacheTtlMs, now: () => this.clock.now });
    this.cacheBus = cacheBusWanted(cfg) ? this.newCacheBus() : null;
    this.functionCatalogs = new FunctionCatalogs((db, user) => this.loadCatalog(FUNCTION_CATALOG_SQL, db, user), logger, catalogOptions(cfg));
    this.relationCatalogs = new RelationCatalogs((db, user) => this.loadCatalog(RELATIONS_SQL, db, user), logger, catalogOptions(cfg));
    this.applyReadPolicy();
    this.adminConsole = new AdminConsole(this);
    this.admin = {
      isPaused: (database) => this.isPaused(database),
      park: (client) => void this.parked.add(client),
      unpark: (client) => void this.parked.delete(client),
      loginRefusal: (database) =>
        this.refusingClients
          ? pgmuxError('shuttingDownNoNewClients')
          : this.disabledDatabases.has(database)
            ? pgmuxError('databaseDisabled', { args: { database } })
            : null,
      roleOf: (user) => (this.cfg.adminUsers.includes(user) ? 'admin' : this.cfg.statsUsers.includes(user) ? 'stats' : null),
      run: (sql, role) => this.adminConsole.run(sql, role),
      pgpoolShow: (name) => pgpoolShow(this, name),
    };
    // The listener connection for LISTEN/NOTIFY: one per (database, user), on the primary,
    // outside the pools' size limits.
    this.notifications = new NotificationHub(async (database, user) => {
      const node = await this.nodes.primary(this.cfg.failoverTimeoutMs);
      if (node === null) throw new PgmuxError(pgmuxError('noPrimary'));
      // A databases entry that forces this user with a password: the listener logs in with it too.
      const password = this.cfg.databases.find((e) => e.password !== null && e.user === user && (e.dbname ?? e.name) === database)?.password;
      const credentials = password !== undefined && password !== null ? { password } : this.auth.credentialsFor(user);
      return BackendConnection.connect({ node, user, database, credentials, connectTimeoutMs: this.cfg.serverConnectTimeoutMs });
    }, logger);
  }

  private applyReadPolicy(): void {
    this.nodes.configure(this.cfg);
    // Lag limits are the monitor's: it decides once per round which replicas are lagging.
    this.monitor.setLagPolicy(lagPolicyOf(this.cfg));
  }

  classify(sql: string): Classification {
    return this.classifier.classify(sql);
  }

  private newCacheBus(): InvalidationBus {
    return new InvalidationBus(
      primaryBusConnector({ primary: (t) => this.nodes.primary(t), login: () => healthCheckLogin(this.cfg, this.auth.fileEntries()), config: () => this.cfg }),
      { onInvalidate: (db, tables) => this.dropCached(db, tables), onGap: (db) => this.dropCached(db, '*') },
      this.logger,
    );
  }

  /**
   * RELOAD of the query_cache settings: new bounds now (a smaller size evicts at once); off
   * drops everything, so nothing stored before can be served after writes made while off
   * invalidated nothing; a mode change starts or stops the invalidation listener and drops
   * everything too (entries stored in local mode never heard the other instances' writes).
   */
  private applyQueryCacheConfig(prev: Config): void {
    const next = this.cfg;
    this.queryCache.configure({ maxBytes: next.queryCacheBytes, maxEntryBytes: next.queryCacheMaxEntryBytes, ttlMs: next.queryCacheTtlMs });
    const wasOn = queryCacheAnywhere(prev);
    const on = queryCacheAnywhere(next);
    if ((wasOn && !on) || (on && prev.queryCacheMode !== next.queryCacheMode)) this.queryCache.clear();
    // While off, DDL invalidated nothing, so the relation graphs may be out of date: read them afresh.
    if (wasOn !== on) this.relationCatalogs.forget();
    const wantBus = cacheBusWanted(next);
    if (wantBus && this.cacheBus === null) this.cacheBus = this.newCacheBus();
    else if (!wantBus && this.cacheBus !== null) {
      this.cacheBus.close();
      this.cacheBus = null;
    }
  }

  /** query_cache for `target`'s clients under the configuration as it is now (RELOAD included). */
  queryCacheOn(target: DatabaseTarget): boolean {
    return queryCacheFor(this.cfg, target.section);
  }

  /** May `database`'s cache entries be served and stored now? Not while its invalidation listener is not listening. */
  cacheCoherent(database: string): boolean {
    return this.cacheBus === null || this.cacheBus.ready(database);
  }

  /** A write through this instance: its own entries go now, the other instances' by NOTIFY. */
  invalidateCache(database: string, tables: readonly string[] | '*'): void {
    this.dropCached(database, tables);
    this.cacheBus?.publish(database, tables);
  }

  /**
   * Every invalidation, whoever wrote (this instance, another, a trigger), goes through here:
   * the written names become every name whose cached reads they may change. A whole
   * database (DDL, a gap) may have changed its relations too: their graph is read again.
   */
  private dropCached(database: string, tables: readonly string[] | '*'): void {
    if (tables === '*' || tables.length === 0 || tables.includes('*')) {
      this.relationCatalogs.changed(database);
      this.queryCache.invalidateTables(database, '*');
      return;
    }
    const graph = this.relationCatalogs.forWrite(database);
    this.queryCache.invalidateTables(database, graph === undefined ? tables : graph === null ? '*' : graph.affectedBy(tables));
  }

  clearCache(table?: string): number {
    if (table === undefined) return this.queryCache.clear();
    let n = 0;
    for (const database of new Set(this.queryCache.stats().byTable.map((t) => t.database))) {
      const graph = this.relationCatalogs.forWrite(database);
      // No current graph: no entry there reads a table through one (see dropCached), the name alone does.
      n += this.queryCache.invalidateTables(database, graph === undefined || graph === null ? [table] : graph.affectedBy([table.toLowerCase()]));
    }
    return n;
  }

  /**
   * The relation graph a cacheable read in the target's database is checked against: null
   * when there is no current one (do not cache), or a promise to wait for (it is loading).
   */
  cacheRelations(target: DatabaseTarget): RelationGraph | null | Promise<void> {
    // A session keeps its target: registered once per target, no key string built per read.
    if (!this.relationTargets.has(target)) {
      this.relationTargets.add(target);
      const key = target.dbname + '\0' + target.backendUser;
      if (!this.catalogTargets.has(key)) {
        if (this.catalogTargets.size >= 1000) this.catalogTargets.clear();
        this.catalogTargets.set(key, target);
      }
    }
    return this.relationCatalogs.forRead(target.dbname, target.backendUser, this.clock.now);
  }

  cacheVerdict(sql: string): CacheVerdict {
    return this.classifier.cacheVerdict(sql);
  }

  private readonly relationTargets = new WeakSet<DatabaseTarget>();

  /** Per (database, backend user) whose function catalog is loaded: a target to log in with (an entry's password included). */
  private readonly catalogTargets = new Map<string, DatabaseTarget>();

  volatileCall(target: DatabaseTarget, calls: readonly FunctionRef[]): string | null | Promise<void> {
    const key = target.dbname + '\0' + target.backendUser;
    if (!this.catalogTargets.has(key)) {
      if (this.catalogTargets.size >= 1000) this.catalogTargets.clear();
      this.catalogTargets.set(key, target);
    }
    return this.functionCatalogs.check(target.dbname, target.backendUser, calls, this.clock.now);
  }

  /** Set by start --workers: the other workers hear of the DDL too (sent, then ended). */
  onFunctionsChanging: ((database: string) => void) | null = null;
  onFunctionsChanged: ((database: string) => void) | null = null;

  functionsChanging(database: string): void {
    this.functionCatalogs.changing(database, Date.now());
    this.onFunctionsChanging?.(database);
  }

  functionsChanged(database: string): void {
    this.functionCatalogs.changed(database);
    this.onFunctionsChanged?.(database);
  }

  /**
   * One value of a catalog query (FUNCTION_CATALOG_SQL, RELATIONS_SQL) in `database` as
   * `user`: on the primary (newest), else on a node reads are served from (the catalogs are
   * the same on every node, replicas replay them).
   */
  private async loadCatalog(sql: string, database: string, user: string): Promise<string | null> {
    const topo = this.monitor.snapshot();
    const node = topo.primary ?? chooseRead(topo, this.nodes.disabledNodes, null, null, null, this.nodes.readBalancer).node;
    if (node === null) throw new Error('no node is up');
    const target = this.catalogTargets.get(database + '\0' + user) ?? resolveDatabase(this.cfg, database, user);
    if (target === null) throw new Error(`database "${database}" is not served`);
    const row = await this.pool(this.nodes.nodeAddress(node), target).queryRow(sql);
    return row?.[0] ?? null;
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

  peerCounts(): { live: number; cancelsForwarded: number; cancelsDropped: number } {
    return { live: this.peers.livePeers(), ...this.peers.counters };
  }

  private peerShare(c: Config): Config {
    return c.peerBudgets ? splitLimits(c, this.peers.livePeers()) : c;
  }

  /** peer_budgets: the live peer count changed, so this instance's share did. */
  private applyPeerShare(): void {
    if (!this.configured.peerBudgets) return;
    this.cfg = this.peerShare(this.configured);
    for (const p of this.poolRegistry.all()) p.fitToSize();
    this.logger.info({ livePeers: this.peers.livePeers(), maxDbConnections: this.cfg.maxDbConnections, poolSize: this.cfg.poolSize }, 'peer_budgets: limits re-split');
  }

  async start(): Promise<void> {
    await this.monitor.start();
    this.janitor = setInterval(() => this.sweep(), JANITOR_INTERVAL_MS);
    this.janitor.unref();
    this.adminConsole.start();
    this.peers.start();
  }

  /** auth_query lookups that went to the database (tests). */
  get authQueryLookups(): number {
    return this.auth.authQueryLookups;
  }

  pool(node: NodeAddress, target: DatabaseTarget): Pool {
    return this.poolRegistry.pool(node, target);
  }

  allPools(): Pool[] {
    return [...this.poolRegistry.all()];
  }

  /** Open client connections, logged in or not. */
  get connectionCount(): number {
    return this.registry.connections.size;
  }

  /** Called for a cancel key no local client has (start --workers: another worker may own it). */
  set onUnknownCancel(f: ((pid: number, secret: number) => void) | null) {
    this.registry.onUnknownCancel = f;
  }

  // ---- topology ---------------------------------------------------------------------

  /** Last non-null primary: a different one later is a failover. */
  private lastKnownPrimary: string | null = null;
  private readonly lastRole = new Map<string, string>();

  /**
   * The monitor detects and logs primary changes; here they are only counted: a new primary
   * other than the last known one (directly, or after a spell without any) is a failover.
   */
  private onPrimaryChange(e: PrimaryChangeEvent): void {
    const primary = e.to?.name ?? null;
    if (primary === null) return;
    if (this.lastKnownPrimary !== null && this.lastKnownPrimary !== primary) this.stats.failovers++;
    this.lastKnownPrimary = primary;
    this.cacheBus?.primaryChanged(primary);
  }

  private onTopology(s: TopologySnapshot): void {
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
    for (const pool of this.poolRegistry.all()) {
      const n = s.nodes.find((x) => x.name === pool.node.name);
      if (!n || !isHealthy(n.state)) {
        pool.closeAll('node_gone');
        this.poolRegistry.forget(pool);
      } else if (changed.has(n.name) && n.role !== 'replica' && this.poolRegistry.targetOf(pool)?.route === 'replica') {
        // A replica-only entry's node was promoted: not even a running transaction goes on there.
        pool.closeAll('node_gone');
        this.poolRegistry.forget(pool);
      } else if (changed.has(n.name)) {
        pool.close('node_gone', new PgmuxError(pgmuxError('backendUnavailable', { detail: `${n.name} changed role to ${n.role}` })));
        this.poolRegistry.forget(pool);
      }
    }
  }

  // ---- janitor ----------------------------------------------------------------------

  private sweep(): void {
    const now = Date.now();
    this.clock.now = now;
    for (const c of this.registry.connections) c.sweep(now);
    for (const p of this.poolRegistry.all()) p.sweep(now);
  }

  /**
   * Graceful: idle clients are told 57P01 now; clients inside a transaction finish it
   * (each is closed when its backend is released) until shutdown_timeout, then everything
   * is closed.
   */
  async close(): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    for (const c of [...this.registry.connections]) if (!c.inTransaction) c.fatal(pgmuxError('adminShutdown'), 'shutdown');
    const deadline = Date.now() + this.cfg.shutdownTimeoutMs;
    while (this.registry.connections.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const c of [...this.registry.connections]) c.fatal(pgmuxError('adminShutdown', { detail: 'shutdown_timeout reached inside a transaction' }), 'shutdown');
    if (this.janitor) clearInterval(this.janitor);
    this.peers.stop();
    this.adminConsole.stop();
    this.notifications.close();
    this.cacheBus?.close();
    this.poolRegistry.closeAll();
    await this.monitor.stop(); // logins still waiting for a node get none
  }

  // ---- ServerView (admin console, HTTP, metrics) --------------------------------------

  configVersion(): number {
    return this.cfgVersion;
  }

  clients(): ClientView[] {
    return [...this.registry.clients].map((c) => c.view());
  }

  backends(): BackendView[] {
    const out: BackendView[] = [];
    for (const p of this.poolRegistry.all()) {
      for (const b of p.backends()) {
        out.push({
          id: b.id,
          node: b.node.name,
          database: this.poolRegistry.entryOf(p),
          user: b.user,
          state: b.state,
          pid: b.pid,
          createdAt: b.createdAt,
          lastReleasedAt: b.lastReleasedAt,
          preparedStatements: b.prepared.size,
          resets: b.resets,
          clientId: (b.owner as ClientSession | null)?.id ?? null,
          closeNeeded: p.closeNeeded(b),
          localAddr: b.socket.localAddress ?? null,
          localPort: b.socket.localPort ?? null,
        });
      }
    }
    return out;
  }

  pools(): PoolView[] {
    const now = Date.now();
    return [...this.poolRegistry.all()].map((p) => ({ node: p.node.name, database: this.poolRegistry.entryOf(p), user: p.user, stats: p.stats(now), totalConnects: p.totalConnects }));
  }

  topology(): TopologySnapshot {
    return this.monitor.snapshot();
  }

  counters(): ServerCounters {
    return this.stats;
  }

  classifierStats(): { hits: number; misses: number; entries: number } {
    return { hits: this.classifier.cacheHits, misses: this.classifier.cacheMisses, entries: this.classifier.cacheEntries };
  }

  trafficTotals(): TrafficTotals[] {
    return this.traffic.totals();
  }

  trafficStats(): TrafficStats {
    return this.traffic;
  }

  databases(): DatabaseView[] {
    const cfg = this.cfg;
    // No section: the implicit '*' (every name passes through).
    const entries = cfg.databases.length > 0 ? cfg.databases : [null];
    const backends = new Map<string, number>();
    for (const p of this.poolRegistry.all()) {
      const section = this.poolRegistry.targetOf(p)?.section ?? FALLBACK;
      backends.set(section, (backends.get(section) ?? 0) + p.backends().length);
    }
    const clients = new Map<string, number>();
    for (const c of this.registry.clients) {
      const section = c.target.section;
      if (section !== '') clients.set(section, (clients.get(section) ?? 0) + 1);
    }
    const primary = this.monitor.snapshot().primary;
    const onPrimary = primary === null ? null : this.monitor.backendsOn(primary.name);
    return entries.map((e): DatabaseView => {
      const name = e?.name ?? FALLBACK;
      const sized = poolConfigFor(cfg, name);
      const dbname = e === null || name === FALLBACK ? e?.dbname ?? null : e.dbname ?? name;
      return {
        name,
        dbname,
        forceUser: e?.user ?? null,
        poolSize: sized.poolSize,
        minPoolSize: sized.minPoolSize,
        poolMode: e?.poolMode ?? cfg.poolMode,
        route: e?.route ?? 'any',
        maxDbConnections: e?.maxDbConnections ?? cfg.maxDbConnections,
        currentConnections: backends.get(name) ?? 0,
        clientConnections: clients.get(name) ?? 0,
        primaryConnectionsSeen: dbname === null || onPrimary === null ? null : onPrimary.get(dbname) ?? 0,
        paused: this.isPaused(name),
        disabled: this.disabledDatabases.has(name),
      };
    });
  }

  nodeConnectionsSeen(): Array<{ node: string; database: string; connections: number }> {
    const out: Array<{ node: string; database: string; connections: number }> = [];
    for (const n of this.monitor.snapshot().nodes) {
      const byDb = this.monitor.backendsOn(n.name);
      if (byDb !== null) for (const [database, connections] of byDb) out.push({ node: n.name, database, connections });
    }
    return out;
  }

  isPaused(database?: string): boolean {
    return this.suspended || this.paused.has(null) || (database !== undefined && this.paused.has(database));
  }

  isSuspended(): boolean {
    return this.suspended;
  }

  suspend(): void {
    this.suspended = true;
    this.logger.info('suspended');
  }

  isReady(): boolean {
    if (!this.listening || this.shuttingDown || this.paused.has(null)) return false;
    // Without a primary pgmux still takes traffic while a replica serves reads.
    const topo = this.monitor.snapshot();
    return topo.primary !== null || topo.nodes.some((n) => n.role === 'replica' && n.state === 'up');
  }

  async pause(database: string | null): Promise<void> {
    this.paused.add(database);
    this.logger.info({ database }, 'paused');
    // PAUSE returns once no transaction of the paused database(s) holds a backend.
    while ([...this.registry.clients].some((c) => c.inTransaction && (database === null || c.database === database))) {
      await new Promise((r) => setTimeout(r, 20));
      if (!this.paused.has(database)) return;
    }
  }

  resume(database: string | null): void {
    if (database === null) {
      this.paused.clear();
      this.suspended = false;
    }
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
      entries = AuthStore.load(next);
      // Certificates and the HBA file as they are on disk now (rotation); bad ones refuse the reload.
      reloadTls(next);
      reloadHba(next);
    } catch (err) {
      const message = (err as Error).message;
      this.logger.error({ err: message }, 'reload refused: the running configuration stays');
      return { ok: false, message };
    }
    const prev = this.cfg;
    const listeners = { listen: 'listen', http: 'http', unixSocketDir: 'unix_socket_dir', unixSocketMode: 'unix_socket_mode', unixSocketGroup: 'unix_socket_group' } as const;
    const restartNeeded = Object.entries(listeners).filter(([f]) => JSON.stringify(prev[f as keyof Config]) !== JSON.stringify(next[f as keyof Config])).map(([, key]) => key);
    this.configured = { ...next, listen: prev.listen, http: prev.http, unixSocketDir: prev.unixSocketDir, unixSocketMode: prev.unixSocketMode, unixSocketGroup: prev.unixSocketGroup };
    this.cfg = this.peerShare(this.configured);
    this.auth.setEntries(entries);
    if (JSON.stringify(prev.writeFunctions) !== JSON.stringify(next.writeFunctions)) this.classifier = new Classifier({ writeFunctions: next.writeFunctions });
    this.functionCatalogs.configure(catalogOptions(next));
    this.relationCatalogs.configure(catalogOptions(next));
    this.applyReadPolicy();
    this.logger.level = next.logLevel;
    this.monitor.setConfig(this.cfg);
    this.monitor.setNodes(next.nodes);
    for (const p of this.poolRegistry.all()) p.fitToSize(); // pool_size applies now, not at the next sweep
    this.retireChangedEntries();
    this.applyQueryCacheConfig(prev);
    this.cfgVersion++;
    const message = `configuration ${this.cfgVersion} loaded` + (restartNeeded.length ? `; ${restartNeeded.join(', ')} change only on restart` : '');
    this.logger.info({ version: this.cfgVersion, nodes: next.nodes.map((n) => `${n.host}:${n.port}@${n.weight}`) }, message);
    return { ok: true, message };
  }

  /**
   * RELOAD changed or removed a databases entry: pools whose (database, user, password) no
   * longer match it close their backends as they come back (idle ones now) and new clients
   * get new pools. Clients of a removed entry keep their pools until they leave.
   */
  private retireChangedEntries(): void {
    const now = Date.now();
    for (const p of this.poolRegistry.all()) {
      const t = this.poolRegistry.targetOf(p);
      if (t === undefined) continue;
      // A forced user is the backend user whatever the client's: resolving as it gives the same target.
      const current = resolveDatabase(this.cfg, t.entry, t.backendUser);
      if (current !== null && current.key === t.key) continue;
      this.poolRegistry.forget(p);
      p.recycle(now);
    }
  }

  reconnect(database: string | null = null): void {
    this.recycleBefore = Date.now();
    for (const p of this.poolRegistry.all()) if (database === null || this.poolRegistry.entryOf(p) === database) p.recycle(this.recycleBefore);
  }

  async waitClose(database: string | null): Promise<void> {
    const pending = () => this.backends().some((b) => b.closeNeeded && (database === null || b.database === database));
    while (pending() && !this.shuttingDown) await new Promise((r) => setTimeout(r, 20));
  }

  kill(database: string | null): void {
    // PgBouncer: new clients of a killed database wait for RESUME.
    this.paused.add(database);
    for (const c of [...this.registry.connections]) {
      if (!isConsoleClient(c) && (database === null || c.database === database)) c.fatal(pgmuxError('adminKilled'), 'admin_kill');
    }
    for (const p of this.poolRegistry.all()) {
      if (database !== null && this.poolRegistry.entryOf(p) !== database) continue;
      p.closeAll('killed');
      this.poolRegistry.forget(p);
    }
    this.logger.info({ database }, 'killed');
  }

  killClient(id: number): boolean {
    const c = [...this.registry.connections].find((x) => x.id === id);
    if (c === undefined) return false;
    c.fatal(pgmuxError('adminKilled'), 'admin_kill');
    return true;
  }

  async set(key: string, value: string): Promise<{ ok: boolean; message: string; refused?: 'unknown' | 'restart' | 'invalid' }> {
    const spec = SETTINGS.find((s) => s.key === key || (s.aliases ?? []).includes(key));
    if (spec === undefined) return { ok: false, refused: 'unknown', message: key };
    if (spec.restartOnly) return { ok: false, refused: 'restart', message: spec.key };
    let next: Config;
    try {
      next = { ...this.configured, ...parseConfigObject({ [key]: value }, 'SET', { baseDir: process.cwd() }) };
      validate(next, false);
    } catch (err) {
      if (err instanceof ConfigError) return { ok: false, refused: 'invalid', message: err.message };
      throw err;
    }
    // Applied as RELOAD applies a file: the same checks and the same effects.
    const source = this.reloadSource;
    this.reloadSource = () => next;
    try {
      return await this.reload();
    } finally {
      this.reloadSource = source;
    }
  }

  disableDatabase(name: string): void {
    this.disabledDatabases.add(name);
    this.logger.info({ database: name }, 'database disabled: new clients refused');
  }

  enableDatabase(name: string): boolean {
    return this.disabledDatabases.delete(name);
  }

  isDatabaseDisabled(name: string): boolean {
    return this.disabledDatabases.has(name);
  }

  disableNode(name: string): boolean {
    const n = this.monitor.snapshot().nodes.find((x) => x.name === name);
    if (!n) return false;
    this.nodes.disabledNodes.add(name);
    for (const p of this.poolRegistry.all()) if (p.node.name === name) p.recycle(Date.now());
    this.logger.info({ node: name }, 'node disabled: no new reads');
    return true;
  }

  enableNode(name: string): boolean {
    const had = this.nodes.disabledNodes.delete(name);
    if (had) this.logger.info({ node: name }, 'node enabled');
    return had;
  }

  isDisabled(name: string): boolean {
    return this.nodes.disabledNodes.has(name);
  }

  shutdown(mode?: 'wait_for_servers' | 'wait_for_clients'): void {
    if (mode === 'wait_for_clients') {
      this.refusingClients = true;
      const check = setInterval(() => {
        if ([...this.registry.connections].some((c) => !isConsoleClient(c))) return;
        clearInterval(check);
        this.shutdown();
      }, 50);
      return;
    }
    // wait_for_servers is pgmux's graceful shutdown: running transactions finish, idle
    // clients are closed at once.
    if (this.onShutdownRequest) this.onShutdownRequest();
    else void this.close();
  }
}

/** On the admin console, or logging in to it: KILL and SHUTDOWN WAIT_FOR_CLIENTS leave these alone. */
function isConsoleClient(c: ClientSession): boolean {
  return c.state === ClientState.Admin || ADMIN_DATABASES.includes(c.database);
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
  /** start --workers with reusePort: this worker binds the TCP port itself (SO_REUSEPORT), not through the primary. */
  reusePort?: boolean;
}

export async function startPgmux(config: Config, opts: StartOptions): Promise<RunningPgmux> {
  const logger = opts.logger;
  if (config.leanIo && !leanIoSupported()) logger.info({ node: process.version }, 'lean_io: this Node lacks the shared read buffer mechanism; sockets use the standard path');
  const pgmux = new PgmuxServer(config, logger);
  pgmux.reloadSource = opts.reloadConfig ?? null;
  await pgmux.start();
  const server = net.createServer({ noDelay: true }, (socket) => {
    if (!pgmux.limits.acceptOrRefuse(socket, pgmux.config(), (msg, fields) => logger.warn(fields, msg))) return;
    new ClientSession(socket, pgmux);
  });
  server.maxConnections = config.maxClientConn + 100; // room to tell the excess why
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: config.listen.port, host: config.listen.host, reusePort: opts.reusePort === true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  pgmux.peers.listenPort = port;
  // The Unix-domain socket: same sessions and limits; the flag tells them it is local.
  let unixServer: net.Server | null = null;
  let unixSocket: string | null = null;
  let http: RunningHttp | null = null;
  try {
    if (config.unixSocketDir !== null) {
      unixSocket = unixSocketPath(config.unixSocketDir, port);
      unixServer = net.createServer((socket) => {
        if (!pgmux.limits.acceptOrRefuse(socket, pgmux.config(), (msg, fields) => logger.warn(fields, msg))) return;
        new ClientSession(socket, pgmux, true);
      });
      unixServer.maxConnections = server.maxConnections;
      // --workers: the supervisor cleared a stale file before forking; each worker then shares
      // the primary's listener, which a probe from here would take for another process.
      await listenUnix(unixServer, unixSocket, { mode: config.unixSocketMode, group: config.unixSocketGroup, takeOverStale: !cluster.isWorker });
    }
    if (config.http) http = await startHttp(pgmux, createMetrics(pgmux), config.http, logger);
  } catch (err) {
    server.close();
    unixServer?.close();
    await pgmux.close();
    throw err;
  }
  pgmux.listening = true;
  logger.info({ listen: `${config.listen.host}:${port}`, unixSocket, nodes: config.nodes.map((n) => `${n.host}:${n.port}`), poolMode: config.poolMode, poolSize: config.poolSize }, 'pgmux listening');
  let closing: Promise<void> | null = null;
  const running: RunningPgmux = {
    port,
    httpPort: http?.port ?? null,
    unixSocket,
    proxy: pgmux,
    close(reason?: string) {
      closing ??= (async () => {
        logger.info({ reason: reason ?? 'close' }, 'pgmux shutting down');
        pgmux.listening = false;
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        // Closing the listener removes its socket file (libuv unlinks it).
        const unixClosed = new Promise<void>((resolve) => (unixServer ? unixServer.close(() => resolve()) : resolve()));
        await pgmux.close();
        await closed;
        await unixClosed;
        await http?.close();
      })();
      return closing;
    },
  };
  pgmux.onShutdownRequest = () => void running.close('admin SHUTDOWN');
  return running;
}

/** The invalidation bus runs while some entry caches and the mode is not local. */
function cacheBusWanted(cfg: Config): boolean {
  return queryCacheAnywhere(cfg) && cfg.queryCacheMode !== 'local';
}
