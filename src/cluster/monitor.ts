// The topology monitor: one persistent control connection per node, polled in parallel
// every healthCheckPeriodMs; each round's probes go through deriveTopology() and the
// result is published as an immutable snapshot. The router only ever reads snapshots.
//
// Events (after every round, in this order):
//   'nodeState'     { node: NodeSnapshot, from: NodeState, to: NodeState }
//   'roleChange'    { node: NodeSnapshot, from: NodeRole, to: NodeRole }
//   'primaryChange' { from: NodeSnapshot | null, to: NodeSnapshot | null }
//   'snapshot'      TopologySnapshot
//
// The probe query: probe.ts; the optional onRoleChange hook: roleChangeHook.ts.

import { backendTlsFor } from '../net/tls.js';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { AuthEntry } from '../auth/authFile.js';
import type { Config, NodeConfig } from '../config/types.js';
import { BackendConnection } from '../pool/backend.js';
import { healthCheckLogin, sameLogin, type HealthCheckLogin } from './healthCheckLogin.js';
import { parseProbeRow, probeErrorText, queryProbe } from './probe.js';
import { lagLimitsFor, lagPolicyOf, type LagPolicy } from './replicaHealth.js';
import { RoleChangeHooks, type HookRun } from './roleChangeHook.js';
import { deriveTopology, emptyTopology } from './topology.js';
import { formatLsn, nodeName, type NodeRole, type NodeSnapshot, type NodeState, type ProbeResult, type TopologySnapshot } from './snapshot.js';

/** Longest gap between two checks of a down node, in periods. */
const MAX_BACKOFF_PERIODS = 5;

export interface NodeStateEvent {
  node: NodeSnapshot;
  from: NodeState;
  to: NodeState;
}

export interface RoleChangeEvent {
  node: NodeSnapshot;
  from: NodeRole;
  to: NodeRole;
}

export interface PrimaryChangeEvent {
  from: NodeSnapshot | null;
  to: NodeSnapshot | null;
}

interface NodeRuntime {
  cfg: NodeConfig;
  name: string;
  client: BackendConnection | null;
  /** Set when the control connection closed: reconnect before the next query. */
  broken: boolean;
  /** Bumped by closeClient(): a connect that was given up on meanwhile closes what it got. */
  generation: number;
  /** The monitor's loginVersion the client logged in with: an older one reconnects at the next check. */
  loginVersion: number;
  /** Current backoff while down, in periods (1 = every round). */
  backoff: number;
  /** Epoch ms before which a down node is not checked again. */
  nextCheckAt: number;
}

/** Someone waiting for a snapshot in which `pick` finds a node. */
interface Waiter {
  pick: (s: TopologySnapshot) => NodeSnapshot | null;
  resolve: (n: NodeSnapshot | null) => void;
  timer: NodeJS.Timeout;
}

/**
 * Down reasons compared without their numbers: "timed out after 987 ms" and "... 991 ms"
 * are one reason, logged once.
 */
function reasonKey(reason: string | undefined): string {
  return (reason ?? '').replace(/\d+/g, '#');
}

export class ClusterMonitor extends EventEmitter {
  private config: Config;
  private readonly log: Logger;
  /** The auth file as pgmux has it loaded now (the health-check login may come from it). */
  private readonly authEntries: () => ReadonlyMap<string, AuthEntry>;
  private login: HealthCheckLogin;
  /** Bumped when the login settings change (RELOAD). */
  private loginVersion = 0;
  private nodeCfgs: NodeConfig[];
  private readonly runtimes = new Map<string, NodeRuntime>();
  private current: TopologySnapshot;
  /** backendsOn(): per node name, from its last successful check. */
  private readonly backendsSeen = new Map<string, ReadonlyMap<string, number>>();
  private timer: NodeJS.Timeout | null = null;
  private started: Promise<void> | null = null;
  private stopped = false;
  private inFlight: Promise<void> | null = null;
  private followUp: Promise<void> | null = null;
  private waiters = new Set<Waiter>();
  private readonly roleChangeHooks: RoleChangeHooks;
  private lagPolicy: LagPolicy;

  constructor(config: Config, logger: Logger, authEntries: () => ReadonlyMap<string, AuthEntry> = () => new Map()) {
    super();
    this.config = config;
    this.lagPolicy = lagPolicyOf(config);
    this.authEntries = authEntries;
    this.login = healthCheckLogin(config, authEntries());
    this.log = logger.child({ component: 'monitor' });
    this.roleChangeHooks = new RoleChangeHooks(this.log, () => this.config.onRoleChange ?? null);
    this.nodeCfgs = config.nodes.map((n) => ({ ...n }));
    for (const cfg of this.nodeCfgs) this.runtimes.set(nodeName(cfg), this.newRuntime(cfg));
    this.current = emptyTopology(this.nodeCfgs, Date.now());
  }

  private get period(): number {
    return Math.max(10, this.config.healthCheckPeriodMs);
  }

  private get timeoutMs(): number {
    return Math.max(10, this.config.healthCheckTimeoutMs);
  }

  private newRuntime(cfg: NodeConfig): NodeRuntime {
    return { cfg, name: nodeName(cfg), client: null, broken: false, generation: 0, loginVersion: 0, backoff: 1, nextCheckAt: 0 };
  }

  /** Starts polling; resolves once the first round of checks has completed. */
  start(): Promise<void> {
    if (this.started) return this.started;
    this.stopped = false;
    this.log.info(
      { nodes: this.nodeCfgs.map(nodeName), periodMs: this.period, user: this.login.user, database: this.login.database, loginFrom: this.login.source },
      'topology monitor starting',
    );
    this.startTimer();
    this.started = this.runRound();
    return this.started;
  }

  private startTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (this.inFlight || this.stopped) return; // previous round still running: skip
      void this.runRound();
    }, this.period);
    this.timer.unref();
  }

  /**
   * RELOAD: health-check settings apply at once. When the login (user, password, database,
   * timeout, TLS) changed, each control connection is replaced at its next check (a check
   * running now finishes on the old one: no failure is made up), a new period restarts the
   * timer, and a round runs now so a fixed login shows at once. The node list is setNodes()'s.
   */
  setConfig(config: Config): void {
    const prev = this.config;
    const prevLogin = this.login;
    const prevPeriod = this.period;
    this.config = config;
    this.login = healthCheckLogin(config, this.authEntries());
    const reconnect =
      !sameLogin(prevLogin, this.login) ||
      prev.healthCheckTimeoutMs !== config.healthCheckTimeoutMs ||
      prev.serverTls !== config.serverTls ||
      prev.serverTlsCaFile !== config.serverTlsCaFile;
    if (reconnect) {
      this.loginVersion++;
      for (const rt of this.runtimes.values()) {
        // A node down for the old login is checked now, not after its backoff.
        rt.backoff = 1;
        rt.nextCheckAt = 0;
      }
      this.log.info({ user: this.login.user, database: this.login.database, loginFrom: this.login.source }, 'health-check login changed: reconnecting');
    }
    if (this.timer && this.period !== prevPeriod) this.startTimer();
    if (this.started && !this.stopped) void this.pollNow();
  }

  /** Stops polling and closes the control connections. Pending waits get null. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(null);
    }
    this.waiters.clear();
    const round = this.inFlight;
    for (const rt of this.runtimes.values()) this.closeClient(rt);
    if (round) await round.catch(() => {});
    for (const rt of this.runtimes.values()) this.closeClient(rt);
    this.started = null;
  }

  /**
   * Client connections per database on `node` at its last successful check, whoever made them
   * (this pgmux, other instances, other applications); null when unknown (down, never checked).
   */
  backendsOn(node: string): ReadonlyMap<string, number> | null {
    return this.backendsSeen.get(node) ?? null;
  }

  /** The latest snapshot (immutable). */
  snapshot(): TopologySnapshot {
    return this.current;
  }

  /** The primary now if there is one, else the first one a snapshot shows; null on timeout. */
  waitForPrimary(timeoutMs: number): Promise<NodeSnapshot | null> {
    return this.waitFor((snap) => snap.primary, timeoutMs);
  }

  /**
   * The node `pick` finds in the snapshot now, else in the first later snapshot where it
   * finds one; null on timeout or stop.
   */
  waitFor(pick: (s: TopologySnapshot) => NodeSnapshot | null, timeoutMs: number): Promise<NodeSnapshot | null> {
    const now = pick(this.current);
    if (now !== null) return Promise.resolve(now);
    if (this.stopped || timeoutMs <= 0) return Promise.resolve(null);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        pick,
        resolve,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          resolve(null);
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  /**
   * An immediate round (e.g. a backend connect to the primary failed). If a round is
   * running, one more follows it; concurrent callers share that one.
   */
  pollNow(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (!this.inFlight) return this.runRound();
    if (!this.followUp) {
      this.followUp = this.inFlight.then(() => {
        this.followUp = null;
        return this.stopped ? undefined : this.runRound();
      });
    }
    return this.followUp;
  }

  /** Hot reload of the node list: add / remove / re-weight; unchanged nodes keep their state. */
  setNodes(nodes: NodeConfig[]): void {
    const next = nodes.map((n) => ({ ...n }));
    const names = new Set(next.map(nodeName));
    for (const [name, rt] of this.runtimes) {
      if (!names.has(name)) {
        this.closeClient(rt);
        this.runtimes.delete(name);
        this.log.info({ node: name }, 'node removed from the configuration');
      }
    }
    for (const cfg of next) {
      const name = nodeName(cfg);
      const rt = this.runtimes.get(name);
      if (rt) {
        rt.cfg = cfg;
      } else {
        this.runtimes.set(name, this.newRuntime(cfg));
        this.log.info({ node: name, weight: cfg.weight }, 'node added to the configuration');
      }
    }
    this.nodeCfgs = next;
    // Publish the new node list at once (no probes: unchanged nodes keep their state).
    this.publish(deriveTopology(this.current, [], Date.now(), this.deriveOpts()));
    if (this.started && !this.stopped) void this.pollNow();
  }

  /** Hot reload of the lag limits and read_without_primary_timeout: applied from the next round. */
  setLagPolicy(policy: LagPolicy): void {
    this.lagPolicy = policy;
  }

  private deriveOpts() {
    return { nodes: this.nodeCfgs, maxRetries: this.config.healthCheckMaxRetries, lagPolicy: this.lagPolicy };
  }

  // ---- rounds ----

  private runRound(): Promise<void> {
    if (this.inFlight) return this.inFlight;
    const round = this.doRound()
      .catch((err) => this.log.error({ err }, 'topology monitor round failed'))
      .finally(() => {
        if (this.inFlight === round) this.inFlight = null;
      });
    this.inFlight = round;
    return round;
  }

  private async doRound(): Promise<void> {
    const startedAt = Date.now();
    const targets = [...this.runtimes.values()].filter((rt) => startedAt >= rt.nextCheckAt);
    const results = await Promise.all(targets.map(async (rt) => ({ rt, probe: await this.probe(rt) })));
    if (this.stopped) return;
    // The node list may have changed while we were probing: map by name to current indexes.
    const indexByName = new Map(this.nodeCfgs.map((c, i) => [nodeName(c), i] as const));
    const probes: ProbeResult[] = [];
    for (const { rt, probe } of results) {
      const index = indexByName.get(rt.name);
      if (index === undefined || this.runtimes.get(rt.name) !== rt) continue;
      probes.push({ ...probe, index });
      if (probe.backendsByDatabase !== undefined) this.backendsSeen.set(rt.name, probe.backendsByDatabase);
      else if (!probe.ok) this.backendsSeen.delete(rt.name);
    }
    const next = deriveTopology(this.current, probes, Date.now(), this.deriveOpts());
    this.logDownReasons(this.current, next);
    // Backoff for down nodes: 1, 2, 4, 5, 5 ... periods between checks; reset once up.
    for (const { rt, probe } of results) {
      const node = next.nodes.find((n) => n.name === rt.name);
      if (!node) continue;
      if (node.state === 'down' && !probe.ok) {
        // Slack of half a period so timer jitter doesn't cost a whole extra period.
        rt.nextCheckAt = probe.at + rt.backoff * this.period - this.period / 2;
        rt.backoff = Math.min(rt.backoff * 2, MAX_BACKOFF_PERIODS);
      } else {
        rt.backoff = 1;
        rt.nextCheckAt = 0;
      }
    }
    this.publish(next);
  }

  private closeClient(rt: NodeRuntime): void {
    const c = rt.client;
    rt.client = null;
    rt.broken = false;
    rt.generation++;
    if (c) c.close('shutdown');
  }

  /**
   * A control connection with pgmux's own backend login (the pools' code): it takes md5
   * secrets from the auth file, SCRAM, and server_tls including prefer, which node-postgres
   * cannot; a node the pools can log in to looks up to the monitor too.
   */
  private async connect(rt: NodeRuntime): Promise<BackendConnection> {
    if (this.stopped) throw new Error('monitor stopped');
    const generation = rt.generation;
    const login = this.login;
    const loginVersion = this.loginVersion;
    const client = await BackendConnection.connect({
      node: { host: rt.cfg.host, port: rt.cfg.port, name: rt.name },
      user: login.user,
      database: login.database,
      credentials: login.credentials,
      connectTimeoutMs: this.timeoutMs,
      tls: backendTlsFor(this.config),
    });
    if (this.stopped || rt.generation !== generation) {
      // stopped, or given up on (timed out, login changed) while connecting
      client.close('shutdown');
      throw new Error('health check abandoned');
    }
    rt.client = client;
    rt.broken = false;
    rt.loginVersion = loginVersion;
    client.onClose(() => {
      if (rt.client === client) rt.broken = true; // e.g. the server went away under an idle connection
    });
    client.socket.setKeepAlive(true);
    await client.runInternal(`SET application_name = 'pgmux-monitor'; SET statement_timeout = ${this.timeoutMs}`);
    return client;
  }

  /** One health check: never rejects, bounded by healthCheckTimeoutMs. */
  private async probe(rt: NodeRuntime): Promise<Omit<ProbeResult, 'index'>> {
    let timer: NodeJS.Timeout | undefined;
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`health check timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    const work = (async () => {
      if (rt.client && (rt.broken || rt.loginVersion !== this.loginVersion)) this.closeClient(rt);
      const reused = rt.client !== null;
      let client = rt.client ?? (await this.connect(rt));
      try {
        return await queryProbe(client);
      } catch (err) {
        // A persistent connection can die between rounds (idle timeout, terminated
        // backend): one fresh retry before counting a failure.
        if (!reused || (err as Error).message?.includes('timeout')) throw err;
        this.closeClient(rt);
        client = await this.connect(rt);
        return await queryProbe(client);
      }
    })();
    work.catch(() => {}); // settles after the guard on a timeout
    try {
      const row = await Promise.race([work, guard]);
      if (!row) throw new Error('health check query returned no row');
      return { ok: true, ...parseProbeRow(row), at: Date.now() };
    } catch (err) {
      this.closeClient(rt);
      return { ok: false, error: probeErrorText(err), at: Date.now() };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- publishing ----

  private publish(next: TopologySnapshot): void {
    const prev = this.current;
    this.current = next;
    const prevByName = new Map(prev.nodes.map((n) => [n.name, n] as const));
    const hooks: HookRun[] = [];
    const oldPrimary = prev.primary?.name ?? '';
    const newPrimary = next.primary?.name ?? '';

    for (const node of next.nodes) {
      const before = prevByName.get(node.name);
      if (!before) continue;
      if (before.state !== node.state) {
        this.logState(node, before.state, before.lastCheckAt === 0);
        this.emit('nodeState', { node, from: before.state, to: node.state } satisfies NodeStateEvent);
        if (node.state === 'fenced' || node.state === 'diverged' || node.state === 'misconfigured') {
          hooks.push({ event: node.state, node: node.name, oldRole: before.role, newRole: node.role, oldPrimary, newPrimary });
        }
      }
      if (before.role !== node.role) {
        this.log.info({ node: node.name, from: before.role, to: node.role, timeline: node.timeline }, `node ${node.name} role ${before.role} -> ${node.role}`);
        this.emit('roleChange', { node, from: before.role, to: node.role } satisfies RoleChangeEvent);
        if (before.role !== 'unknown') {
          hooks.push({ event: 'role_change', node: node.name, oldRole: before.role, newRole: node.role, oldPrimary, newPrimary });
        }
      }
    }
    if (oldPrimary !== newPrimary) {
      if (next.primary) {
        this.log.info(
          { from: oldPrimary || null, to: newPrimary, timeline: next.primary.timeline, lsn: next.primary.walLsn === null ? null : formatLsn(next.primary.walLsn) },
          `primary is now ${newPrimary}`,
        );
      } else {
        const timeout = this.lagPolicy.readWithoutPrimaryTimeoutMs;
        this.log.warn(
          { from: oldPrimary, readWithoutPrimaryTimeoutMs: timeout },
          `no primary (was ${oldPrimary}): writes wait for one to appear; replicas keep serving reads ` +
            (timeout > 0 ? `for up to ${timeout} ms (read_without_primary_timeout)` : '(read_without_primary_timeout 0: no limit)'),
        );
      }
      this.emit('primaryChange', { from: prev.primary, to: next.primary } satisfies PrimaryChangeEvent);
      const before = next.primary ? prevByName.get(next.primary.name) : undefined;
      hooks.push({
        event: 'primary_change',
        node: newPrimary,
        oldRole: before?.role ?? 'unknown',
        newRole: next.primary ? 'primary' : '',
        oldPrimary,
        newPrimary,
      });
    }
    this.emit('snapshot', next);

    for (const w of this.waiters) {
      const n = w.pick(next);
      if (n === null) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(n);
    }
    for (const h of hooks) this.roleChangeHooks.enqueue(h);
  }

  /**
   * A node that stays down says why once, and again when the reason changes: state changes
   * alone would never log a node that fails from its very first check ("not checked yet"
   * -> a wrong password), and every check would be too many.
   */
  private logDownReasons(prev: TopologySnapshot, next: TopologySnapshot): void {
    const prevByName = new Map(prev.nodes.map((n) => [n.name, n] as const));
    for (const node of next.nodes) {
      const before = prevByName.get(node.name);
      if (!before || before.state !== 'down' || node.state !== 'down') continue; // state changes: publish() logs them
      if (node.lastCheckAt === before.lastCheckAt || reasonKey(node.reason) === reasonKey(before.reason)) continue;
      this.log.warn(
        { node: node.name, state: node.state, role: node.role, reason: node.reason, user: this.login.user, failures: node.consecutiveFailures },
        `node ${node.name} is down: ${node.reason ?? ''}`,
      );
    }
  }

  private logState(node: NodeSnapshot, from: NodeState, firstCheck: boolean): void {
    const fields = { node: node.name, from, to: node.state, role: node.role, timeline: node.timeline, reason: node.reason };
    switch (node.state) {
      case 'fenced':
        this.log.error(fields, `FENCED ${node.name}: ${node.reason ?? ''} — no traffic is routed to it`);
        break;
      case 'diverged':
        this.log.error(
          { ...fields, lsn: node.walLsn === null ? null : formatLsn(node.walLsn) },
          `DIVERGED ${node.name}: ${node.reason ?? ''} — no reads are routed to it`,
        );
        break;
      case 'misconfigured':
        this.log.error(fields, `MISCONFIGURED ${node.name}: ${node.reason ?? ''} — no traffic is routed to it`);
        break;
      case 'down':
        this.log.warn(fields, `node ${node.name} is down: ${node.reason ?? ''}`);
        break;
      case 'lagging':
        // At the first check a replica's data age is often not measurable yet (the primary's
        // WAL has no history to compare with): info then, so every start does not warn.
        this.log[firstCheck && node.lagMs === null ? 'info' : 'warn'](
          { ...fields, lagBytes: node.lagBytes, lagMs: node.lagMs, ...lagLimitsFor(this.lagPolicy, node.name) },
          `replica ${node.name} gets no reads: ${node.reason ?? ''} (lag ${node.lagBytes ?? '?'} bytes / ${node.lagMs === null ? '?' : Math.round(node.lagMs)} ms)`,
        );
        break;
      case 'up':
        if (from === 'lagging') {
          this.log.info(
            { ...fields, lagBytes: node.lagBytes, lagMs: node.lagMs, ...lagLimitsFor(this.lagPolicy, node.name) },
            `replica ${node.name} serves reads again: lag ${node.lagBytes ?? '?'} bytes / ${node.lagMs === null ? '?' : Math.round(node.lagMs)} ms, within the limits`,
          );
        } else if (from === 'diverged') {
          this.log.info(fields, `replica ${node.name} follows the primary again (timeline ${node.timeline}): serves reads again`);
        } else {
          this.log.info(fields, firstCheck ? `node ${node.name} is up (${node.role})` : `node ${node.name} is up again (${node.role})`);
        }
        break;
    }
  }

}

export type { NodeRole, NodeState, NodeSnapshot, TopologySnapshot };
