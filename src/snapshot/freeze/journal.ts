import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { isProcessAlive } from '../../liveness.ts';

const recordSchema = z.object({
  pid: z.number().int(),
  env: z.string(),
  since: z.string(),
  targets: z.array(z.object({ kind: z.enum(['cgroup-v1', 'cgroup-v2', 'fsfreeze']), path: z.string() })),
});
export type FreezeRecord = z.infer<typeof recordSchema>;

/**
 * What is about to be frozen is written to the state directory BEFORE anything is frozen, and
 * removed only after everything is thawed: an agent that dies in between (SIGKILL, power)
 * leaves the record, and the next start thaws what it names.
 */
export class FreezeJournal {
  readonly #dir: string;

  constructor(stateDir: string) {
    this.#dir = path.join(stateDir, 'frozen');
  }

  async record(record: FreezeRecord): Promise<string> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const file = path.join(this.#dir, `${record.env}-${record.pid}.json`);
    await writeFile(`${file}.tmp`, JSON.stringify(record), { mode: 0o600 });
    await rename(`${file}.tmp`, file);
    return file;
  }

  async remove(file: string): Promise<void> {
    await rm(file, { force: true });
  }

  /**
   * Records left by processes that are gone: what a crash left frozen. Our own pid's records
   * count too: this runs at start, before this process freezes anything.
   */
  async leftovers(): Promise<{ file: string; record: FreezeRecord }[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return [];
    }
    const found: { file: string; record: FreezeRecord }[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const file = path.join(this.#dir, name);
      try {
        const parsed = recordSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
        if (parsed.success && (parsed.data.pid === process.pid || !isProcessAlive(parsed.data.pid))) found.push({ file, record: parsed.data });
      } catch {
        // unreadable: not ours to act on
      }
    }
    return found;
  }
}
