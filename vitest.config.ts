import { defineConfig } from 'vitest/config';

// Two projects: `vitest run` (npm test) runs both, `vitest run --project unit` (npm run
// test:unit) only the unit tests, which never start PostgreSQL.
//
// Integration files in parallel, measured (2026-12-07, 2-core box shared with other test runs,
// load 2-3; `npm test` wall time, build included, 59 files / 1294 tests): all integration
// files serial 226 s, green. Then a group of six beside each other on two workers
// (session-diff, ~60 s, on the shared cluster, next to the five files that only use their own
// LocalCluster: failover, lag, no-primary, read-your-writes, topology-states; the rest serial
// after them; a second shared cluster for that group): 186 s and 176 s green, then 261 s
// red: session-diff found pgmux answering differently from a direct connection (an advisory
// xact lock held by an aborted transaction looked free through pgmux; seed 164210531) while
// topology-states was starting its cluster beside it. The same seed and path replayed alone
// pass. Not stable, so not adopted: ~45 s faster is not worth a differential test that fails
// under CPU contention (nor hiding what may be a real race). Every integration file runs alone.
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          // vitest's default is cores - 1 workers: one on a 2-core box, i.e. serial. Two
          // workers took the unit group from ~16 s to 8-13 s, green in three runs.
          maxWorkers: 2,
          // Before the integration group, so the timing-sensitive integration tests do not
          // share the CPU with a burst of parallel unit files.
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // One real cluster (primary + 2 replicas) shared by every integration file.
          globalSetup: ['test/support/globalSetup.ts'],
          // Serial: the files share that cluster (and its databases, roles and settings),
          // several assert on timings, and running even the private-cluster files beside
          // another file was not stable (measured above).
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
