// Hand-built topology snapshots for unit tests of what reads them (balancer, routing policy):
// how states are derived is the topology tests' business.
import { parseLsn, type NodeSnapshot, type TopologySnapshot } from '../../src/cluster/snapshot.js';

/** An up, caught-up replica at index `index` (127.0.0.1:5432+index), with `over` applied. */
export function syntheticNode(index: number, over: Partial<NodeSnapshot> = {}): NodeSnapshot {
  return {
    index,
    name: `127.0.0.1:${5432 + index}`,
    host: '127.0.0.1',
    port: 5432 + index,
    weight: 1,
    role: 'replica',
    state: 'up',
    timeline: 1,
    systemId: '1',
    walLsn: parseLsn('0/3000000'),
    receiveLsn: null,
    lagBytes: 0,
    lagMs: 0,
    lagExclusions: 0,
    lastCheckAt: 1,
    lastOkAt: 1,
    consecutiveFailures: 0,
    ...over,
  };
}

/** A snapshot of `nodes` whose primary is nodes[primaryIndex] (null: no primary since 0). */
export function syntheticTopology(nodes: NodeSnapshot[], primaryIndex: number | null): TopologySnapshot {
  return {
    version: 1,
    takenAt: 1,
    nodes,
    primary: primaryIndex === null ? null : nodes[primaryIndex]!,
    systemId: '1',
    primaryLostAt: primaryIndex === null ? 0 : null,
    fork: null,
  };
}
