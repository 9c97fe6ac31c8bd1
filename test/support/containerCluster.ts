// The shared test cluster in containers, for machines where a Docker engine answers (see
// containerRuntime.ts): the postgres image as one primary and streaming replicas on a
// private network. Same settings as src/embedded/localCluster.ts where they matter to the
// tests. Written without an engine to run it on: the first run on a machine with one is its
// first test.
//
// Each node listens inside its container on the free host port it is published on, so
// inet_server_port() names the node as the tests know it, as with the local cluster.
import pg from 'pg';
import { GenericContainer, Network, Wait, type StartedNetwork, type StartedTestContainer } from 'testcontainers';
import { freePort } from '../../src/embedded/localCluster.js';
import type { ClusterNodeInfo } from './globalSetup.js';
import { waitFor } from './wait.js';

/** The same major version as the local binaries the harness uses otherwise. */
export const POSTGRES_IMAGE = 'postgres:15';
const PGDATA = '/var/lib/postgresql/data';
// Identical on every node: a replica refuses to start below the primary's max_connections.
const SETTINGS = ['max_connections=300', 'wal_level=replica', 'max_wal_senders=10', 'hot_standby=on', 'hot_standby_feedback=on', 'fsync=off'];
const serverArgs = (port: number) => [...SETTINGS, `port=${port}`].flatMap((s) => ['-c', s]);

// Runs once in the primary's initdb phase: let the replicas (any address on the private
// network) stream without a password. The image's own rule covers normal logins.
const REPLICATION_HBA = `#!/bin/sh\necho "host replication all all trust" >> "$PGDATA/pg_hba.conf"\n`;

// A replica: base backup from the primary (retried until it accepts), then a hot standby.
const replicaScript = (name: string, primaryPort: number, port: number) => `set -e
until pg_basebackup -h node0 -p ${primaryPort} -U postgres -D ${PGDATA} -R -X stream -c fast -d "application_name=${name}"; do rm -rf ${PGDATA}/*; sleep 1; done
chmod 700 ${PGDATA}
exec postgres -D ${PGDATA} ${serverArgs(port).join(' ')}`;

export class ContainerCluster {
  private constructor(
    private readonly network: StartedNetwork,
    readonly containers: StartedTestContainer[],
    private readonly ports: number[],
  ) {}

  static async start(opts: { replicas: number }): Promise<ContainerCluster> {
    const ports: number[] = [];
    for (let i = 0; i <= opts.replicas; i++) ports.push(await freePort());
    const network = await new Network().start();
    const started: StartedTestContainer[] = [];
    try {
      started.push(
        await new GenericContainer(POSTGRES_IMAGE)
          .withNetwork(network)
          .withNetworkAliases('node0')
          // PGPORT: the image's initdb-phase server and `exec pgbench` use the node's port too.
          .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust', PGPORT: String(ports[0]) })
          .withCopyContentToContainer([{ content: REPLICATION_HBA, target: '/docker-entrypoint-initdb.d/10-replication.sh', mode: 0o755 }])
          .withCommand(['postgres', ...serverArgs(ports[0]!)])
          .withExposedPorts({ container: ports[0]!, host: ports[0]! })
          // The image logs it twice: once for the initdb-phase server, once for the real one.
          .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
          .start(),
      );
      const replicas = await Promise.all(
        Array.from({ length: opts.replicas }, (_, i) =>
          new GenericContainer(POSTGRES_IMAGE)
            .withNetwork(network)
            .withNetworkAliases(`node${i + 1}`)
            .withUser('postgres')
            .withEntrypoint(['bash', '-c', replicaScript(`node${i + 1}`, ports[0]!, ports[i + 1]!)])
            .withExposedPorts({ container: ports[i + 1]!, host: ports[i + 1]! })
            .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept read-only connections/))
            .start(),
        ),
      );
      started.push(...replicas);
      return new ContainerCluster(network, started, ports);
    } catch (err) {
      await Promise.all(started.map((c) => c.stop().catch(() => {})));
      await network.stop().catch(() => {});
      throw err;
    }
  }

  /** node0 is the primary; host and port as seen from the test process. */
  nodes(): ClusterNodeInfo[] {
    // Many tests write 127.0.0.1 next to a node's port, as for the local cluster; a published
    // port answers there too, where "localhost" may resolve to ::1 first.
    const host = (c: StartedTestContainer) => (c.getHost() === 'localhost' ? '127.0.0.1' : c.getHost());
    return this.containers.map((c, i) => ({ name: `node${i}`, host: host(c), port: this.ports[i]!, dataDir: PGDATA }));
  }

  /** One statement as the superuser on the primary. */
  async query(sql: string, opts: { database?: string } = {}): Promise<void> {
    const n = this.nodes()[0]!;
    const client = new pg.Client({ host: n.host, port: n.port, user: 'postgres', database: opts.database ?? 'postgres' });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  }

  /** pgbench inside the primary's container (no local client binaries needed). */
  async pgbench(args: string[]): Promise<void> {
    const r = await this.containers[0]!.exec(['pgbench', ...args], { user: 'postgres' });
    if (r.exitCode !== 0) throw new Error(`pgbench ${args.join(' ')} failed (exit ${r.exitCode})\n${r.output.trim()}`);
  }

  async waitForStreaming(timeoutMs = 30_000): Promise<void> {
    const n = this.nodes()[0]!;
    const client = new pg.Client({ host: n.host, port: n.port, user: 'postgres', database: 'postgres' });
    await client.connect();
    const want = this.containers.length - 1;
    let streaming = 0;
    try {
      await waitFor(
        async () => {
          const r = await client.query("SELECT count(*)::int AS n FROM pg_stat_replication WHERE state = 'streaming'");
          streaming = r.rows[0].n as number;
          return streaming >= want;
        },
        timeoutMs,
        () => `replication streaming (${streaming} of ${want} replicas)`,
      );
    } finally {
      await client.end();
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.containers.map((c) => c.stop().catch(() => {})));
    await this.network.stop().catch(() => {});
  }
}
