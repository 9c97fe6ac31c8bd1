// `pgmux start --workers N`: N worker processes (node:cluster) share the listen port; the
// primary process only supervises.
//
//   - Accepts: where Node has `listen({ reusePort })` (22.12+ / 23.1+, on Linux or FreeBSD)
//     and the port is fixed, each worker binds the TCP port itself with SO_REUSEPORT and the
//     kernel spreads the accepts; no process hands sockets over. Otherwise (older Node, or
//     listen port 0, which would give each worker its own port) the primary holds the
//     listener and node:cluster deals the connections round-robin. The Unix-domain socket is
//     always the primary's shared listener (SO_REUSEPORT does not spread AF_UNIX accepts).
//     The choice is logged once and shown in /status (acceptSpread).
//   - Limits hold for the whole group: each worker gets ceil(limit / N) (at least 1) of
//     pool_size, min_pool_size, max_client_conn and the per-database / per-user /
//     unauthenticated client limits (0 = off stays off).
//   - Cancel keys are unique across workers (worker index in the top bits of the 31-bit
//     pid). A worker that receives a CancelRequest for a key it does not know sends it to
//     the primary, which broadcasts it to the other workers; ClientRegistry.cancel ignores keys it
//     does not own, so broadcasting is safe.
//   - The primary serves the HTTP port: /metrics aggregates every worker's registry
//     (prom-client AggregatorRegistry over cluster IPC), /readyz is 200 when at least one
//     worker is ready, /healthz 200 while the primary runs, /status lists the workers.
//   - A transaction that sends DDL that may change a database's functions (CREATE FUNCTION,
//     ...) tells every worker through the primary when the DDL is sent (reads calling user
//     functions go to the primary meanwhile) and when the transaction ends (the catalog is
//     stale: reloaded before the next such read).
//   - SIGINT/SIGTERM to the primary: every worker shuts down gracefully; exit 0 once all
//     have exited cleanly. SIGHUP is passed on (each worker reloads). A worker that dies
//     while the group runs is restarted; one that keeps dying before it listens stops the
//     group (exit 1).
//
// Messages (cluster IPC, objects with a `pgmux` field):
//   worker -> primary: cancel {pid, secret}, functionsChanging {database}, functions {database},
//                      ready {ready}, listening, shutdown (admin SHUTDOWN)
//   primary -> worker: cancel {pid, secret}, functionsChanging {database}, functions {database},
//                      shutdown

import cluster, { type Worker } from 'node:cluster';
import { startProbeServer, type RunningHttp } from '../admin/http.js';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { AggregatorRegistry, Gauge, type PrometheusContentType } from 'prom-client';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { cancelPidSpace } from '../session/clientSession.js';
import type { RunningPgmux } from './pgmux.js';
import { removeStaleSocket, unixSocketPath } from './unixSocket.js';

/** Set by the primary for each worker it forks. */
export const WORKER_INDEX_ENV = 'PGMUX_WORKER_INDEX';
/** Set by the primary for each worker it forks: how the TCP listener is shared (AcceptSpread). */
export const WORKER_ACCEPT_ENV = 'PGMUX_WORKER_ACCEPT';
/** Bits of the 31-bit cancel pid that carry the worker index (workers is at most 64). */
const WORKER_BITS = 6;
const READY_POLL_MS = 250;
/** A worker that exits this many times in a row before listening stops the group. */
const MAX_START_FAILURES = 3;
const RESTART_DELAY_MS = 1000;

type Message =
  | { pgmux: 'cancel'; pid: number; secret: number }
  | { pgmux: 'functions'; database: string }
  | { pgmux: 'functionsChanging'; database: string }
  | { pgmux: 'ready'; ready: boolean }
  | { pgmux: 'listening' }
  | { pgmux: 'shutdown' };

function isMessage(m: unknown): m is Message {
  return typeof m === 'object' && m !== null && typeof (m as { pgmux?: unknown }).pgmux === 'string';
}

/** How the workers share the TCP port: their own SO_REUSEPORT listeners, or the primary's via node:cluster. */
export type AcceptSpread = 'reusePort' | 'cluster';

/** Platforms where libuv's UV_TCP_REUSEPORT balances accepts across the sockets (macOS does not). */
const REUSEPORT_PLATFORMS: readonly string[] = ['linux', 'freebsd'];

/** True when this Node has `server.listen({ reusePort })`: 22.12+ on 22.x, 23.1+, 24+. */
export function nodeHasReusePort(version: string = process.versions.node, platform: string = process.platform): boolean {
  if (!REUSEPORT_PLATFORMS.includes(platform)) return false;
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major >= 24 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/** The supervisor's choice, with the reason it is logged with. */
export function acceptSpreadFor(listenPort: number, hasReusePort: boolean = nodeHasReusePort()): { spread: AcceptSpread; reason: string } {
  if (!hasReusePort) return { spread: 'cluster', reason: `Node ${process.version} on ${process.platform} has no listen({ reusePort })` };
  if (listenPort === 0) return { spread: 'cluster', reason: 'listen port 0: each worker would bind a port of its own' };
  return { spread: 'reusePort', reason: 'each worker listens with SO_REUSEPORT; the kernel spreads the accepts' };
}

/**
 * With reusePort a port held by another SO_REUSEPORT listener of the same user (a second pgmux
 * group) would be joined silently, splitting its traffic: bind it once without the flag first,
 * so a port in use is an error as it is with the cluster's listener.
 */
function refusePortInUse(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'EADDRINUSE' ? new Error(`listen: ${host}:${port} is in use by another process; stop it or use another listen port`) : err);
    });
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

export function isPrimaryProcess(): boolean {
  return cluster.isPrimary;
}

/** One worker's share of a group-wide limit: ceil(total / workers), at least 1. */
export function workerShare(total: number, workers: number): number {
  return Math.max(1, Math.ceil(total / Math.max(1, workers)));
}

/** The configuration one worker runs with: limits split, no HTTP listener (the primary has it). */
export function workerConfig(c: Config): Config {
  if (c.workers <= 1) return c;
  return { ...splitLimits(c, c.workers), http: null };
}

/** One of n's share of every backend and client limit (also peer_budgets' split across instances). */
export function splitLimits(c: Config, n: number): Config {
  if (n <= 1) return c;
  const split = (v: number): number => (v > 0 ? workerShare(v, n) : v);
  const poolSize = workerShare(c.poolSize, n);
  return {
    ...c,
    poolSize,
    minPoolSize: Math.min(split(c.minPoolSize), poolSize),
    // Each entry's own pool_size is split the same way.
    databases: c.databases.map((e) => {
      const entryPool = e.poolSize === null ? null : workerShare(e.poolSize, n);
      return { ...e, poolSize: entryPool, minPoolSize: e.minPoolSize === null ? null : Math.min(split(e.minPoolSize), entryPool ?? poolSize) };
    }),
    maxClientConn: workerShare(c.maxClientConn, n),
    maxDbConnections: split(c.maxDbConnections),
    maxUserConnections: split(c.maxUserConnections),
    maxDbClientConnections: split(c.maxDbClientConnections),
    maxUserClientConnections: split(c.maxUserClientConnections),
    maxUnauthenticatedConnections: split(c.maxUnauthenticatedConnections),
  };
}

/** Cancel pids of worker `index`: the index in the top WORKER_BITS bits of the 31. */
export function setWorkerPidSpace(index: number): void {
  const low = 31 - WORKER_BITS;
  cancelPidSpace.mask = (1 << low) - 1;
  cancelPidSpace.high = (index & ((1 << WORKER_BITS) - 1)) << low;
}

// ---- worker ---------------------------------------------------------------------------

export interface WorkerOptions {
  logger: Logger;
  reloadConfig: () => Config;
  /** Runs the service until its signals emitter says SIGINT/SIGTERM; resolves with the exit code. */
  serve(service: RunningPgmux, logger: Logger, signals: NodeJS.EventEmitter): Promise<number>;
}

function send(m: Message): void {
  if (process.connected && process.send) process.send(m);
}

/** A worker process: startPgmux with its share of the limits, wired to the primary. */
export async function runWorker(config: Config, opts: WorkerOptions): Promise<number> {
  const index = Number(process.env[WORKER_INDEX_ENV] ?? 0);
  setWorkerPidSpace(index);
  const logger = opts.logger.child({ worker: index });
  const { startPgmux } = await import('./pgmux.js');
  const { createMetrics } = await import('../observability/metrics.js');
  const reusePort = process.env[WORKER_ACCEPT_ENV] === 'reusePort';
  const server = await startPgmux(workerConfig(config), { logger, reloadConfig: () => workerConfig(opts.reloadConfig()), reusePort });
  const proxy = server.proxy;

  // /metrics: the primary's AggregatorRegistry asks every worker for this registry.
  const metrics = createMetrics(proxy);
  new Gauge({ name: 'pgmux_worker_info', help: 'One series per worker process (start --workers), value 1.', labelNames: ['worker', 'pid'], registers: [metrics.registry] }).set(
    { worker: String(index), pid: String(process.pid) },
    1,
  );
  new AggregatorRegistry(); // installs the worker side of prom-client's cluster IPC
  AggregatorRegistry.setRegistries([metrics.registry]);

  // Signals from the primary (IPC) or straight at this process, passed on once.
  const signals = new EventEmitter();
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    signals.emit(signal, signal);
  };
  const onSigterm = () => stop('SIGTERM');
  const onSigint = () => stop('SIGINT');
  const onSighup = () => void proxy.reload();
  process.on('SIGTERM', onSigterm);
  process.on('SIGINT', onSigint);
  process.on('SIGHUP', onSighup);

  proxy.onUnknownCancel = (pid, secret) => send({ pgmux: 'cancel', pid, secret });
  proxy.onShutdownRequest = () => send({ pgmux: 'shutdown' });
  proxy.onFunctionsChanging = (database) => send({ pgmux: 'functionsChanging', database });
  proxy.onFunctionsChanged = (database) => send({ pgmux: 'functions', database });
  const onMessage = (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.pgmux === 'cancel') proxy.registry.cancel(m.pid, m.secret, true);
    else if (m.pgmux === 'functionsChanging') proxy.functionCatalogs.changing(m.database, Date.now());
    else if (m.pgmux === 'functions') proxy.functionCatalogs.changed(m.database);
    else if (m.pgmux === 'shutdown') stop('SIGTERM');
  };
  process.on('message', onMessage);

  let lastReady: boolean | null = null;
  const poll = () => {
    const ready = proxy.isReady();
    if (ready !== lastReady) send({ pgmux: 'ready', ready });
    lastReady = ready;
  };
  send({ pgmux: 'listening' });
  poll();
  const timer = setInterval(poll, READY_POLL_MS);
  timer.unref();

  const code = await opts.serve(server, logger, signals);
  clearInterval(timer);
  send({ pgmux: 'ready', ready: false });
  process.off('SIGTERM', onSigterm);
  process.off('SIGINT', onSigint);
  process.off('SIGHUP', onSighup);
  process.off('message', onMessage);
  // The CLI exits with `code` (its exit timer also ends the IPC channel).
  return code;
}

// ---- primary --------------------------------------------------------------------------

interface Slot {
  index: number;
  worker: Worker | null;
  ready: boolean;
  listening: boolean;
  startFailures: number;
  restarts: number;
}

/** The primary process: forks and supervises the workers, serves HTTP. Resolves with the exit code. */
export async function runSupervisor(config: Config, logger: Logger, signals: NodeJS.EventEmitter): Promise<number> {
  const n = config.workers;
  const slots: Slot[] = Array.from({ length: n }, (_, index) => ({ index, worker: null, ready: false, listening: false, startFailures: 0, restarts: 0 }));
  const byWorker = new Map<Worker, Slot>();
  const aggregator = new AggregatorRegistry<PrometheusContentType>();
  const accept = acceptSpreadFor(config.listen.port);
  let stopping = false;
  let failed = false;
  let badExit = false;
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));

  const fork = (slot: Slot) => {
    const w = cluster.fork({ [WORKER_INDEX_ENV]: String(slot.index), [WORKER_ACCEPT_ENV]: accept.spread });
    slot.worker = w;
    slot.ready = false;
    slot.listening = false;
    byWorker.set(w, slot);
  };

  const alive = () => slots.filter((s) => s.worker !== null);

  const onMessage = (w: Worker, m: unknown) => {
    if (!isMessage(m)) return;
    const slot = byWorker.get(w);
    if (!slot) return;
    switch (m.pgmux) {
      case 'cancel':
        logger.debug({ worker: slot.index, cancelPid: m.pid }, 'cancel key unknown to its worker: asking the others');
        for (const s of slots) if (s.worker && s.worker !== w && s.worker.isConnected()) s.worker.send({ pgmux: 'cancel', pid: m.pid, secret: m.secret });
        break;
      case 'functions':
      case 'functionsChanging':
        for (const s of slots) if (s.worker && s.worker !== w && s.worker.isConnected()) s.worker.send({ pgmux: m.pgmux, database: m.database });
        break;
      case 'ready':
        slot.ready = m.ready;
        break;
      case 'listening':
        slot.listening = true;
        slot.startFailures = 0;
        logger.debug({ worker: slot.index, workerPid: w.process.pid }, 'worker listening');
        break;
      case 'shutdown':
        logger.info({ worker: slot.index }, 'admin SHUTDOWN in a worker: shutting down all workers');
        shutdown('SIGTERM');
        break;
    }
  };

  const onExit = (w: Worker, code: number | null, signal: string | null) => {
    const slot = byWorker.get(w);
    if (!slot) return;
    byWorker.delete(w);
    slot.worker = null;
    slot.ready = false;
    if (stopping) {
      if (code !== 0) badExit = true;
      logger.debug({ worker: slot.index, code, signal }, 'worker exited');
      if (alive().length === 0) finish();
      return;
    }
    if (!slot.listening) slot.startFailures++;
    if (slot.startFailures >= MAX_START_FAILURES) {
      logger.error({ worker: slot.index, code, signal, attempts: slot.startFailures }, 'worker keeps failing before it listens: stopping');
      failed = true;
      shutdown('SIGTERM');
      if (alive().length === 0) finish();
      return;
    }
    slot.restarts++;
    const delay = slot.listening ? 0 : RESTART_DELAY_MS;
    logger.warn({ worker: slot.index, workerPid: w.process.pid, code, signal, restarts: slot.restarts }, 'worker exited unexpectedly: restarting');
    setTimeout(() => {
      if (!stopping) fork(slot);
    }, delay);
  };

  let httpServer: RunningHttp | null = null;
  const finish = () => {
    cluster.off('message', onMessage);
    cluster.off('exit', onExit);
    signals.off('SIGINT', onSignal);
    signals.off('SIGTERM', onSignal);
    signals.off('SIGHUP', onHup);
    const end = () => resolveDone(failed || badExit ? 1 : 0);
    if (httpServer) void httpServer.close().then(end);
    else end();
  };

  const shutdown = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, workers: alive().length }, 'pgmux shutting down: stopping workers');
    for (const s of alive()) {
      const w = s.worker!;
      if (w.isConnected()) w.send({ pgmux: 'shutdown' });
      else w.process.kill('SIGTERM');
    }
  };

  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal while shutting down: killing workers');
      for (const s of alive()) s.worker!.process.kill('SIGKILL');
      process.exit(1);
    }
    shutdown(signal);
    if (alive().length === 0) finish();
  };
  const onHup = () => {
    for (const s of alive()) s.worker!.process.kill('SIGHUP');
  };

  cluster.on('message', onMessage);
  cluster.on('exit', onExit);
  signals.on('SIGINT', onSignal);
  signals.on('SIGTERM', onSignal);
  signals.on('SIGHUP', onHup);

  // The workers share one Unix-domain socket listener held by this process (node:cluster
  // round-robin): a stale file is cleared here, once, not raced by N workers. With listen
  // port 0 the path is not known yet, and a fresh random port has no stale file.
  if (config.unixSocketDir !== null && config.listen.port !== 0) await removeStaleSocket(unixSocketPath(config.unixSocketDir, config.listen.port));
  if (accept.spread === 'reusePort') await refusePortInUse(config.listen.host, config.listen.port);
  if (config.http) {
    httpServer = await startSupervisorHttp(config.http, aggregator, slots, accept.spread, logger);
  }
  for (const s of slots) fork(s);
  logger.info(
    { workers: n, acceptSpread: accept.spread, why: accept.reason, poolSizePerWorker: workerShare(config.poolSize, n), maxClientConnPerWorker: workerShare(config.maxClientConn, n) },
    accept.spread === 'reusePort' ? 'pgmux supervising workers: accepts spread by the kernel (reusePort)' : 'pgmux supervising workers: accepts dealt by node:cluster round-robin',
  );
  return done;
}

function startSupervisorHttp(hostPort: { host: string; port: number }, aggregator: AggregatorRegistry<PrometheusContentType>, slots: readonly Slot[], acceptSpread: AcceptSpread, logger: Logger): Promise<RunningHttp> {
  return startProbeServer(
    hostPort,
    {
      metrics: async () => ({ contentType: aggregator.contentType, body: await aggregator.clusterMetrics() }),
      notReady: () => (slots.some((s) => s.worker !== null && s.ready) ? null : 'no worker ready'),
      status: () => ({ acceptSpread, workers: slots.map((s) => ({ index: s.index, pid: s.worker?.process.pid ?? null, ready: s.ready, listening: s.listening, restarts: s.restarts })) }),
    },
    logger,
  );
}
