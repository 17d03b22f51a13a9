import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { currentProcess, isAlive, type ProcessIdentity } from '../liveness.ts';
import { writeStateFile } from '../state-file.ts';

/**
 * Who wrote a record. Records written before start times were kept have none: their pid alone
 * decides (and our own pid is then an earlier process's: we never wrote one without it).
 */
const ownerSchema = z.object({ pid: z.number().int(), startTime: z.number().int().nullable().optional() });

export interface JournalEntry<T> {
  file: string;
  record: T;
  /** Whether the process that wrote it still runs (pid and start time; a zombie is dead). */
  ownerAlive: boolean;
}

/**
 * Records of work that changes something outside the agent and must be undone if the agent
 * dies half way (a frozen cgroup, a Redis made a replica): written to the state directory
 * BEFORE the change and removed only after it is undone, so that an agent killed in between
 * (SIGKILL, power) leaves the record, and whoever finds it with its owner gone undoes what it
 * names. Each record carries its owner's pid and start time, written here.
 */
export class CrashJournal<T extends { pid: number }> {
  readonly #stateDir: string;
  readonly #dir: string;
  readonly #schema: z.ZodType<T>;

  constructor(stateDir: string, dirName: string, schema: z.ZodType<T>) {
    this.#stateDir = stateDir;
    this.#dir = path.join(stateDir, dirName);
    this.#schema = schema;
  }

  /** The file record(name, …) writes. */
  fileOf(name: string): string {
    return path.join(this.#dir, `${name}.json`);
  }

  /**
   * Writes `record` as `<name>.json` (atomically), owned by this process whatever pid it names;
   * returns the file to remove once undone.
   */
  async record(name: string, record: T): Promise<string> {
    const file = this.fileOf(name);
    const owner: ProcessIdentity = currentProcess();
    await writeStateFile(this.#stateDir, file, JSON.stringify({ ...record, pid: owner.pid, startTime: owner.startTime }));
    return file;
  }

  async remove(file: string): Promise<void> {
    await rm(file, { force: true });
  }

  /** The record in `file`; undefined when it is gone (undone) or cannot be read. */
  async read(file: string): Promise<JournalEntry<T> | undefined> {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(file, 'utf8'));
    } catch {
      return undefined; // gone, or unreadable: not ours to act on
    }
    const parsed = this.#schema.safeParse(raw);
    const owner = ownerSchema.safeParse(raw);
    if (!parsed.success || !owner.success) return undefined;
    const { pid, startTime } = owner.data;
    const ownerAlive = startTime === undefined || startTime === null ? pid !== process.pid && isAlive({ pid, startTime: null }) : isAlive({ pid, startTime });
    return { file, record: parsed.data, ownerAlive };
  }

  /** Every readable record, with whether its owner still runs. */
  async entries(): Promise<JournalEntry<T>[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return [];
    }
    const found: JournalEntry<T>[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const entry = await this.read(path.join(this.#dir, name));
      if (entry) found.push(entry);
    }
    return found;
  }

  /** Records left by processes that are gone: what a crash left undone. */
  async leftovers(): Promise<{ file: string; record: T }[]> {
    return (await this.entries()).filter((entry) => !entry.ownerAlive).map(({ file, record }) => ({ file, record }));
  }
}
