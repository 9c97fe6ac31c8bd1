import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Integration tests share one real cluster started once (test/support/globalSetup.ts).
    globalSetup: ['test/support/globalSetup.ts'],
    pool: 'forks',
    fileParallelism: false,
  },
});
