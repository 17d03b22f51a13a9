/**
 * How many test files run side by side, each with a set of servers of its own (an RGW and a
 * MariaDB: some tests stop or kill theirs; global-setup.ts starts them, servers.ts picks a
 * worker's). Two, for two cores: many files mostly wait (on a daemon's next flush, a replayed
 * second, the RGW), so a second file fills the gaps. TEST_WORKERS=1 runs them one at a time.
 */
export const TEST_WORKERS = Math.max(1, Number(process.env.TEST_WORKERS ?? 2));

/** Which of the workers running at once this one is, 1…TEST_WORKERS (vitest's VITEST_POOL_ID; 1 outside a worker). */
export function workerNumber(): number {
  return Number(process.env.VITEST_POOL_ID ?? 1);
}
