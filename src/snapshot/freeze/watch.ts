import type { Logger } from 'pino';
import type { FreezeJournal } from './journal.ts';
import { logReleased, releaseExpired } from './recovery.ts';

/** How often the daemon looks at the freeze journal: a dead freezer's writers wait at most this. */
export const WATCH_INTERVAL_MS = 250;

/**
 * The daemon's watch over every freeze on the node, its own and the CLI's: a lease whose owner
 * died (and whose guard died with it, or never ran) is thawed within WATCH_INTERVAL_MS, not at
 * the next agent start. Reading a small directory four times a second costs nothing measurable.
 * Returns stop(); the timer never keeps the process alive.
 */
export function watchFreezes(journal: FreezeJournal, logger: Logger, intervalMs = WATCH_INTERVAL_MS): () => void {
  // A thaw that keeps failing is logged once, not four times a second.
  const failing = new Set<string>();
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      for (const released of await releaseExpired(journal)) {
        const failed = released.failures.length > 0;
        if (!failed || !failing.has(released.entry.file)) logReleased(logger, released, 'the daemon');
        if (failed) failing.add(released.entry.file);
        else failing.delete(released.entry.file);
      }
    } catch (error) {
      logger.error({ err: (error as Error).message }, 'could not read the freeze journal');
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
