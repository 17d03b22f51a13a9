import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { z } from 'zod';
import { isProcessAlive } from '../liveness.ts';

/**
 * Records of work that changes something outside the agent and must be undone if the agent
 * dies half way (a frozen cgroup, a Redis made a replica): written to the state directory
 * BEFORE the change and removed only after it is undone, so that an agent killed in between
 * (SIGKILL, power) leaves the record, and the next start undoes what it names.
 */
export class CrashJournal<T extends { pid: number }> {
  readonly #dir: string;
  readonly #schema: z.ZodType<T>;

  constructor(stateDir: string, dirName: string, schema: z.ZodType<T>) {
    this.#dir = path.join(stateDir, dirName);
    this.#schema = schema;
  }

  /** Writes `record` as `<name>.json` (atomically); returns the file to remove once undone. */
  async record(name: string, record: T): Promise<string> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const file = path.join(this.#dir, `${name}.json`);
    await writeFile(`${file}.tmp`, JSON.stringify(record), { mode: 0o600 });
    await rename(`${file}.tmp`, file);
    return file;
  }

  async remove(file: string): Promise<void> {
    await rm(file, { force: true });
  }

  /**
   * Records left by processes that are gone: what a crash left undone. Our own pid's records
   * count too: this runs at start, before this process changes anything.
   */
  async leftovers(): Promise<{ file: string; record: T }[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return [];
    }
    const found: { file: string; record: T }[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const file = path.join(this.#dir, name);
      try {
        const parsed = this.#schema.safeParse(JSON.parse(await readFile(file, 'utf8')));
        if (parsed.success && (parsed.data.pid === process.pid || !isProcessAlive(parsed.data.pid))) found.push({ file, record: parsed.data });
      } catch {
        // unreadable: not ours to act on
      }
    }
    return found;
  }
}
