import { existsSync, writeFileSync } from 'node:fs';

/**
 * A test seam for crash tests: with STORAGE_AGENT_PAUSE_AT=<phase> in its environment, the
 * process stops at that phase — writes its pid to STORAGE_AGENT_PAUSE_FILE and waits until a
 * test removes that file (forever without one) — so that a test can SIGKILL it exactly there,
 * or act (another node's prune) and let it go on. Unset (always, in production) it costs one
 * comparison. Phases are named where they are reached ('freeze:frozen', 'restore:commit:db'…).
 */
export async function reachedPhase(phase: string): Promise<void> {
  if (process.env.STORAGE_AGENT_PAUSE_AT !== phase) return;
  const file = process.env.STORAGE_AGENT_PAUSE_FILE;
  if (!file) return new Promise<never>(() => setInterval(() => {}, 60_000));
  writeFileSync(file, `${process.pid}\n`);
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (existsSync(file)) return;
      clearInterval(timer);
      resolve();
    }, 20);
  });
}
