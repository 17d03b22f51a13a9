import { defineConfig } from 'vitest/config';
import { TEST_WORKERS } from './test/support/workers.ts';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Each worker's own TMPDIR (test/support/worker-tmp.ts).
    setupFiles: ['test/support/setup-worker.ts'],
    // Files run side by side, each worker against servers of its own (test/support/workers.ts).
    fileParallelism: TEST_WORKERS > 1,
    maxWorkers: TEST_WORKERS,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
