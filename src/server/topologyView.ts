// The cluster as client sessions see it: the monitor's newest snapshot, the nodes disabled
// on the admin console, the read balancer's round-robin position, one address object per
// node, and the waits for a node (a primary during a failover, any node to log in through),
// which are the monitor's own waits (ClusterMonitor.waitFor) with the address mapped.
// What to do with them is the routing policy's (src/routing/policy.ts).

import type { Config } from '../config/types.js';
import type { ClusterMonitor } from '../cluster/monitor.js';
import type { NodeSnapshot, TopologySnapshot } from '../cluster/snapshot.js';
import type { NodeAddress } from '../pool/backend.js';
import { ReadBalancer, type ReadPolicy } from '../routing/balancer.js';
import { loginNodeOf } from '../routing/policy.js';

/** What a client session asks of the cluster. */
export interface NodeDirectory {
  topology(): TopologySnapshot;
  /** Nodes disabled on the admin console: no new reads. */
  readonly disabledNodes: ReadonlySet<string>;
  /** The read balancer's round-robin position, shared by every client. */
  readonly readBalancer: ReadBalancer;
  /** One address object per node: sessions compare nodes by identity. */
  nodeAddress(n: NodeSnapshot): NodeAddress;
  /**
   * A node to log in through (ParameterStatus values, startup settings, auth_query): the
   * primary when there is one now, else an up replica whatever its lag; else waits up to
   * `timeoutMs` for either. Logins need no primary: reads go on during a failover.
   * `replicasOnly`: a replica-only entry's login never touches the primary.
   */
  loginNode(timeoutMs: number, replicasOnly?: boolean): Promise<NodeAddress | null>;
  /** Resolves true once an up replica with read weight is not disabled (false after `timeoutMs`). */
  replicaUp(timeoutMs: number): Promise<boolean>;
  /** The node that takes writes now, waiting up to `timeoutMs` for one during a failover. */
  primary(timeoutMs: number): Promise<NodeAddress | null>;
  /** After a failed connect to the primary: the next primary (failover), or null at the deadline. */
  primaryAfterFailure(failed: NodeAddress, timeoutMs: number): Promise<NodeAddress | null>;
}

export class TopologyView implements NodeDirectory {
  readonly disabledNodes = new Set<string>();
  readonly readBalancer: ReadBalancer;
  private readPolicy: ReadPolicy;
  private readonly addresses = new Map<string, NodeAddress>();

  constructor(
    private readonly monitor: ClusterMonitor,
    private readonly config: () => Config,
    /** Shutting down: nothing waits for a node any more. */
    private readonly closing: () => boolean,
  ) {
    this.readPolicy = { fallbackToPrimary: config().fallbackToPrimary };
    this.readBalancer = new ReadBalancer(() => this.readPolicy);
  }

  /** RELOAD: the balancer's policy from the new configuration. */
  configure(cfg: Config): void {
    this.readPolicy = { fallbackToPrimary: cfg.fallbackToPrimary };
  }

  topology(): TopologySnapshot {
    return this.monitor.snapshot();
  }

  async primary(timeoutMs: number): Promise<NodeAddress | null> {
    const p = await this.monitor.waitForPrimary(timeoutMs);
    return p ? this.nodeAddress(p) : null;
  }

  async primaryAfterFailure(failed: NodeAddress, timeoutMs: number): Promise<NodeAddress | null> {
    const deadline = Date.now() + timeoutMs;
    const since = Date.now();
    while (!this.closing()) {
      await this.monitor.pollNow().catch(() => {});
      const p = this.monitor.snapshot().primary;
      // A new primary, or the same one answering health checks again (a blip).
      if (p !== null && (p.name !== failed.name || (p.consecutiveFailures === 0 && p.lastOkAt > since))) return this.nodeAddress(p);
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((r) => setTimeout(r, Math.min(left, Math.max(50, this.config().healthCheckPeriodMs / 4))));
    }
    return null;
  }

  async replicaUp(timeoutMs: number): Promise<boolean> {
    const ready = (snap: TopologySnapshot) => snap.nodes.find((n) => n.role === 'replica' && n.state === 'up' && n.weight > 0 && !this.disabledNodes.has(n.name)) ?? null;
    return (await this.monitor.waitFor(ready, this.closing() ? 0 : timeoutMs)) !== null;
  }

  async loginNode(timeoutMs: number, replicasOnly = false): Promise<NodeAddress | null> {
    const n = await this.monitor.waitFor((snap) => loginNodeOf(snap, this.disabledNodes, replicasOnly), this.closing() ? 0 : timeoutMs);
    return n === null ? null : this.nodeAddress(n);
  }

  /** One NodeAddress object per host:port, so sessions can compare by identity. */
  nodeAddress(n: NodeSnapshot): NodeAddress {
    let a = this.addresses.get(n.name);
    if (!a) {
      a = { host: n.host, port: n.port, name: n.name };
      this.addresses.set(n.name, a);
    }
    return a;
  }
}
