import type { Logger } from 'pino';
import type { FreezeJournal } from './journal.ts';
import { cgroupTarget, filesystemTarget, type FreezeTarget } from './targets.ts';

/**
 * Thaws what an earlier agent froze and did not live to thaw (its journal record is still
 * there and its process is gone). Runs at every start, before anything new is frozen.
 */
export async function thawLeftovers(journal: FreezeJournal, logger: Logger): Promise<number> {
  let thawed = 0;
  for (const { file, record } of await journal.leftovers()) {
    let ok = true;
    for (const saved of [...record.targets].reverse()) {
      try {
        const target: FreezeTarget = saved.kind === 'fsfreeze' ? filesystemTarget(saved.path) : await cgroupTarget(saved.path);
        await target.thaw();
        thawed++;
      } catch (error) {
        ok = false;
        logger.error({ env: record.env, path: saved.path, err: (error as Error).message }, 'could not thaw what a previous run froze');
      }
    }
    if (ok) {
      await journal.remove(file);
      logger.warn({ env: record.env, pid: record.pid, since: record.since, targets: record.targets.length }, 'thawed what a crashed run left frozen');
    }
  }
  return thawed;
}
