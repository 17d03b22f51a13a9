import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { CrashJournal } from '../crash-journal.ts';
import type { StagedState } from '../driver.ts';

const recordSchema = z.object({
  pid: z.number().int(),
  jobId: z.string().optional(),
  env: z.string(),
  target: z.string(),
  backupId: z.string(),
  /** The pre-restore safety backup's id, chosen before it starts: a crash during it leaves objects. */
  safetyBackupId: z.string().optional(),
  since: z.string(),
  /**
   * staging: a crash leaves every target as it was, and recovery removes what was staged;
   * committing: every element was staged and verified, so recovery finishes the swaps.
   */
  phase: z.enum(['staging', 'committing']),
  elements: z.array(z.object({ name: z.string(), kind: z.enum(['files', 'mysql', 'redis']), state: z.record(z.string(), z.unknown()), committed: z.boolean() })),
});
export type RestoreRecord = z.infer<typeof recordSchema>;
export type ElementEntry = RestoreRecord['elements'][number];

const DIR = 'restores';

/**
 * A restore in progress, journaled in `<stateDir>/restores/` before anything is staged and
 * rewritten whenever a driver says where it stages, when the commit begins and after each
 * element is swapped in: what the next start of any agent process needs to leave the target
 * entirely old (a crash while staging) or entirely new (a crash while committing).
 * The restore's staged files (a Redis RDB) live in `<stateDir>/restores/<name>.d/`.
 */
export class RestoreJournal {
  readonly #journal: CrashJournal<RestoreRecord>;
  readonly #name: string;
  readonly record: RestoreRecord;
  readonly stagingDir: string;

  private constructor(stateDir: string, name: string, record: RestoreRecord) {
    this.#journal = new CrashJournal(stateDir, DIR, recordSchema);
    this.#name = name;
    this.record = record;
    this.stagingDir = stagingDirOf(stateDir, name);
  }

  static async begin(stateDir: string, fields: Omit<RestoreRecord, 'pid' | 'since' | 'phase' | 'elements'>): Promise<RestoreJournal> {
    const name = `${fields.target}-${process.pid}-${randomBytes(4).toString('hex')}`;
    const journal = new RestoreJournal(stateDir, name, { ...fields, pid: process.pid, since: new Date().toISOString(), phase: 'staging', elements: [] });
    await journal.save();
    await mkdir(journal.stagingDir, { mode: 0o700 });
    return journal;
  }

  /** The journal callback for one element's driver: its latest state, saved before it acts. */
  stagingOf(name: string, kind: ElementEntry['kind']): (state: StagedState) => Promise<void> {
    return async (state) => {
      const entry = this.record.elements.find((e) => e.name === name);
      if (entry) entry.state = { ...state };
      else this.record.elements.push({ name, kind, state: { ...state }, committed: false });
      await this.save();
    };
  }

  async save(): Promise<void> {
    await this.#journal.record(this.#name, this.record);
  }

  /** The restore ended (done, or nothing left staged): its record and staging directory go. */
  async finish(): Promise<void> {
    await rm(this.stagingDir, { recursive: true, force: true });
    await this.#journal.remove(this.#journal.fileOf(this.#name));
  }

  /** The journal of a dead process's restore, taken over to finish it. */
  static adopt(stateDir: string, file: string, record: RestoreRecord): RestoreJournal {
    return new RestoreJournal(stateDir, path.basename(file, '.json'), record);
  }

  /** Whether any restore is journaled (live or dead): one synchronous look, so that the common case costs a job start nothing. */
  static anyJournaled(stateDir: string): boolean {
    try {
      return readdirSync(path.join(stateDir, DIR)).some((name) => name.endsWith('.json'));
    } catch {
      return false;
    }
  }

  static leftovers(stateDir: string): Promise<{ file: string; record: RestoreRecord }[]> {
    return new CrashJournal(stateDir, DIR, recordSchema).leftovers();
  }
}

function stagingDirOf(stateDir: string, name: string): string {
  return path.join(stateDir, DIR, `${name}.d`);
}
