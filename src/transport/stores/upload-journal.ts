import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { isProcessAlive } from '../../liveness.ts';
import { writeStateFile } from '../../state-file.ts';

export const journalEntrySchema = z.object({
  store: z.string(),
  bucket: z.string(),
  key: z.string(),
  uploadId: z.string().optional(),
  startedAt: z.string(),
  /** The process that owns the upload: a live owner's entry is not an orphan. */
  pid: z.number().int(),
});
export type JournalEntry = z.infer<typeof journalEntrySchema>;

/**
 * Every multipart upload in flight is written down in the state directory before its first
 * byte goes out and removed only once it completed or was seen aborted, so the uploads a
 * crash or an outage leaves behind can be aborted by the next run (SPEC §6).
 * One small file per upload: concurrent jobs never rewrite each other's entries.
 */
export class UploadJournal {
  readonly #stateDir: string;
  readonly #dir: string;

  constructor(stateDir: string) {
    this.#stateDir = stateDir;
    this.#dir = path.join(stateDir, 'uploads');
  }

  /**
   * Write-then-rename so a crash never leaves a half-written entry. A failed write removes its
   * temp file (on a full state directory the create succeeds and the write does not); a full
   * one is E_NO_SPACE naming it, and put() then starts no upload it could not journal.
   */
  async record(entry: JournalEntry): Promise<void> {
    await writeStateFile(this.#stateDir, this.#fileOf(entry), JSON.stringify(entry));
  }

  async remove(entry: Pick<JournalEntry, 'store' | 'key'>): Promise<void> {
    await rm(this.#fileOf(entry), { force: true });
  }

  /** Entries of one store; unreadable entries are skipped (and reported by the caller's sweep). */
  async entries(store: string): Promise<JournalEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return [];
    }
    const found: JournalEntry[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      try {
        const parsed = journalEntrySchema.safeParse(JSON.parse(await readFile(path.join(this.#dir, name), 'utf8')));
        if (parsed.success && parsed.data.store === store) found.push(parsed.data);
      } catch {
        // A torn or foreign file is not ours to act on.
      }
    }
    return found;
  }

  /** Entries whose owning process is gone: what a crash left behind. */
  async orphans(store: string, live: ReadonlySet<string>): Promise<JournalEntry[]> {
    return (await this.entries(store)).filter((entry) => (entry.pid === process.pid ? !live.has(entry.key) : !isProcessAlive(entry.pid)));
  }

  #fileOf(entry: Pick<JournalEntry, 'store' | 'key'>): string {
    const id = createHash('sha256').update(`${entry.store}\0${entry.key}`).digest('hex').slice(0, 32);
    return path.join(this.#dir, `${id}.json`);
  }
}
