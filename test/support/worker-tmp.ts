import { chmodSync, mkdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { workerNumber } from './workers.ts';

/**
 * Each test worker has a temporary directory of its own: TMPDIR, which os.tmpdir() reads and every
 * child a test starts (CLI, daemon, mysqldump, redis-server) inherits. A test that checks a killed
 * command left nothing in the temp directory then sees what its own file made, never what the file
 * running beside it in the other worker (workers.ts) made meanwhile.
 */
export function useWorkerTmp(): void {
  process.env.TEST_TMP_ROOT ??= tmpdir();
  const dir = path.join(process.env.TEST_TMP_ROOT, `storage-agent-test-tmp-${workerNumber()}`);
  mkdirSync(dir, { recursive: true });
  // Like /tmp: children that run as another user (redis-server as redis) make their directories in it.
  chmodSync(dir, 0o1777);
  process.env.TMPDIR = dir;
}

/** The suite's own entries in the shared temp directory: workers' temp directories, servers, vitest's. */
const SUITE_ENTRY = /^(storage-agent-test-|vitest|node-compile-cache$)/;

/**
 * What is in the temp directories a command might write to: this worker's (as `name`) and the
 * shared one a child could name outright (as `/tmp/name`), the suite's own entries aside.
 */
export async function tempEntries(): Promise<string[]> {
  const root = process.env.TEST_TMP_ROOT ?? tmpdir();
  const shared = (await readdir(root)).filter((name) => !SUITE_ENTRY.test(name)).map((name) => path.join(root, name));
  return [...(await readdir(tmpdir())), ...shared];
}
