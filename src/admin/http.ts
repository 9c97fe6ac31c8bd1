// The HTTP listener: Prometheus metrics, liveness, readiness and a JSON status page.
//
//   GET /metrics  Prometheus text format (version 0.0.4)
//   GET /healthz  200 "ok" while the process runs (liveness)
//   GET /readyz   200 "ready" when pgmux takes traffic, else 503 with the reason
//                 ("shutting down", "paused", "no primary, and no replica serves reads",
//                 "not listening"); with no primary it stays ready while a replica serves reads
//   GET /status   JSON: version, configVersion, uptime, nodes, pools, clients by state
//
// GET and HEAD only (405 otherwise); any other path is 404.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HostPort } from '../config/types.js';
import { currentRole } from '../cluster/snapshot.js';
import type { Logger } from '../observability/logger.js';
import type { PgmuxMetrics } from '../observability/metrics.js';
import type { ServerView } from './view.js';

export interface RunningHttp {
  port: number;
  close(): Promise<void>;
}

function iso(ms: number): string | null {
  return ms > 0 ? new Date(ms).toISOString() : null;
}

/** Why pgmux is not ready, or null when it is. */
export function notReadyReason(view: ServerView): string | null {
  if (view.isReady()) return null;
  if (view.shuttingDown) return 'shutting down';
  if (view.isPaused()) return 'paused';
  if (view.topology().primary === null) return 'no primary, and no replica serves reads';
  return 'not listening';
}

export function statusObject(view: ServerView): Record<string, unknown> {
  const topo = view.topology();
  const v = view as ServerView & { isDisabled?: (name: string) => boolean };
  const clients: Record<string, number> = {};
  const all = view.clients();
  for (const c of all) clients[c.state] = (clients[c.state] ?? 0) + 1;
  const tx = view.counters().transactions;
  return {
    version: view.version,
    configVersion: view.configVersion(),
    startedAt: new Date(view.startedAt).toISOString(),
    uptimeSeconds: Math.round((Date.now() - view.startedAt) / 1000),
    ready: view.isReady(),
    notReadyReason: notReadyReason(view),
    paused: view.isPaused(),
    shuttingDown: view.shuttingDown,
    primary: topo.primary?.name ?? null,
    primaryLostAt: topo.primaryLostAt === null ? null : iso(topo.primaryLostAt),
    nodes: topo.nodes.map((n) => ({
      name: n.name,
      role: currentRole(n),
      lastRole: n.role,
      state: n.state,
      weight: n.weight,
      lagBytes: n.lagBytes,
      lagMs: n.lagMs,
      timeline: n.timeline,
      lastCheckAt: iso(n.lastCheckAt),
      lastOkAt: iso(n.lastOkAt),
      reason: n.reason ?? null,
      lagExclusions: n.lagExclusions,
      disabled: typeof v.isDisabled === 'function' ? v.isDisabled(n.name) : null,
      transactions: tx.get(n.name) ?? { read: 0, write: 0 },
    })),
    pools: view.pools().map((p) => ({
      node: p.node,
      database: p.database,
      user: p.user,
      active: p.stats.active,
      idle: p.stats.idle,
      connecting: p.stats.connecting,
      waiting: p.stats.waiting,
      maxWaitMs: p.stats.maxWaitMs,
    })),
    clients: { total: all.length, byState: clients },
  };
}

/** What the probe endpoints answer: one process (a PgmuxServer) or a worker supervisor. */
export interface ProbeSource {
  metrics(): Promise<{ contentType: string; body: string }>;
  /** null when ready, else why not (503 body). */
  notReady(): string | null;
  status(): unknown;
}

/** GET /metrics, /healthz, /readyz, /status over node:http; 405 for other methods. */
export async function startProbeServer(hostPort: HostPort, source: ProbeSource, logger: Logger): Promise<RunningHttp> {
  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const head = method === 'HEAD';
    const send = (status: number, contentType: string, body: string, extra: Record<string, string> = {}): void => {
      const buf = Buffer.from(body);
      res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': String(buf.length), 'Cache-Control': 'no-store', ...extra });
      res.end(head ? undefined : buf);
    };
    const text = 'text/plain; charset=utf-8';
    if (method !== 'GET' && !head) {
      send(405, text, 'method not allowed\n', { Allow: 'GET, HEAD' });
      return;
    }
    const path = (req.url ?? '/').split('?')[0]!;
    switch (path) {
      case '/metrics':
        source.metrics().then(
          (m) => send(200, m.contentType, m.body),
          (err: Error) => {
            logger.error({ err: err.message }, 'metrics collection failed');
            send(500, text, `metrics collection failed: ${err.message}\n`);
          },
        );
        return;
      case '/healthz':
        send(200, text, 'ok\n');
        return;
      case '/readyz': {
        const reason = source.notReady();
        if (reason === null) send(200, text, 'ready\n');
        else send(503, text, `not ready: ${reason}\n`);
        return;
      }
      case '/status':
        send(200, 'application/json; charset=utf-8', JSON.stringify(source.status(), null, 2) + '\n');
        return;
      default:
        send(404, text, 'not found: try /metrics, /healthz, /readyz or /status\n');
    }
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(hostPort.port, hostPort.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  logger.info({ http: `${hostPort.host}:${port}` }, 'http listening: /metrics /healthz /readyz /status');
  let closing: Promise<void> | null = null;
  return {
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // Scrapers holding keep-alive connections must not delay shutdown.
        setTimeout(() => server.closeAllConnections(), 1000).unref();
      });
      return closing;
    },
  };
}

export function startHttp(view: ServerView, metrics: PgmuxMetrics, hostPort: HostPort, logger: Logger): Promise<RunningHttp> {
  return startProbeServer(
    hostPort,
    {
      metrics: async () => ({ contentType: metrics.contentType, body: await metrics.render() }),
      notReady: () => notReadyReason(view),
      status: () => statusObject(view),
    },
    logger,
  );
}
