import { defineConfig } from 'vitest/config';

// Two projects: `vitest run` (npm test) runs both, `vitest run --project unit` (npm run
// test:unit) only the unit tests, which never start PostgreSQL.
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
          fileParallelism: true,
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
          // and several assert on timings. None has been shown safe to run beside another.
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
