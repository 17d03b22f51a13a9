import type { Logger } from 'pino';
import type { JournalEntry } from '../crash-journal.ts';
import type { FreezeJournal, FreezeRecord } from './journal.ts';
import { savedTarget, thawAll, type ThawFailure } from './targets.ts';

/**
 * A lease whose owner still runs is its owner's (and its guard's) to end — until its deadline
 * has been past this long: then the owner is stuck, and whoever finds it thaws.
 */
const DEADLINE_GRACE_MS = 1_000;

export type FreezeEntry = JournalEntry<FreezeRecord>;

export interface Released {
  entry: FreezeEntry;
  /** Targets thawed (already thawed ones count: thawing is idempotent). */
  thawed: number;
  /** Targets left frozen because another live lease holds them too. */
  kept: string[];
  failures: ThawFailure[];
}

/** Whether nobody is left to end this lease: its owner is gone, or long past its deadline. */
export function isExpired(entry: FreezeEntry, now = Date.now()): boolean {
  if (!entry.ownerAlive) return true;
  return entry.record.deadline !== undefined && now > Date.parse(entry.record.deadline) + DEADLINE_GRACE_MS;
}

/**
 * Thaws what `entry` names and removes it once everything is thawed. A target that another
 * unexpired lease (of `others`) names too is left frozen: that lease's owner froze it again
 * after this one's owner died, and thawing it would break that backup's point in time.
 */
export async function releaseEntry(journal: FreezeJournal, entry: FreezeEntry, others: readonly FreezeEntry[]): Promise<Released> {
  const held = new Set(others.filter((other) => other.file !== entry.file && !isExpired(other)).flatMap((other) => other.record.targets.map((t) => t.path)));
  const kept = entry.record.targets.filter((t) => held.has(t.path)).map((t) => t.path);
  const targets = entry.record.targets.filter((t) => !held.has(t.path)).map(savedTarget);
  const failures = await thawAll(targets);
  if (failures.length === 0) await journal.remove(entry.file);
  return { entry, thawed: targets.length - failures.length, kept, failures };
}

/** Releases every expired lease in the journal. */
export async function releaseExpired(journal: FreezeJournal): Promise<Released[]> {
  const entries = await journal.entries();
  const released: Released[] = [];
  for (const entry of entries.filter((e) => isExpired(e))) released.push(await releaseEntry(journal, entry, entries));
  return released;
}

export function logReleased(logger: Logger, { entry, thawed, kept, failures }: Released, who: string): void {
  const { env, pid, since, targets } = entry.record;
  const why = entry.ownerAlive ? `its owner (pid ${pid}) is past its deadline` : `its owner (pid ${pid}) is gone`;
  if (failures.length > 0) {
    logger.error({ phase: 'recovery', env, pid, since, failures }, `THAW FAILED: ${who} could not thaw what a freeze left frozen (${why}); retried until it succeeds`);
  } else {
    logger.warn({ phase: 'recovery', env, pid, since, targets: targets.length, thawed, ...(kept.length > 0 ? { kept } : {}) }, `${who} thawed what a freeze left frozen: ${why}`);
  }
}

/**
 * Thaws what an earlier agent froze and did not live to thaw (its journal record is still
 * there and its process is gone). Runs at every start, before anything new is frozen.
 */
export async function thawLeftovers(journal: FreezeJournal, logger: Logger): Promise<number> {
  let thawed = 0;
  for (const released of await releaseExpired(journal)) {
    logReleased(logger, released, 'the agent start');
    thawed += released.thawed;
  }
  return thawed;
}
