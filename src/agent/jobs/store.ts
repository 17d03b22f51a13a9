import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stateDirWriteError } from '../../errors.ts';
import { JOB_ID_PATTERN, type JobRecord } from './types.ts';

/**
 * Job records, one JSON file per job in `<stateDir>/jobs/`, written by the process that owns
 * the job (write to a temp file, then rename: a crash never leaves a torn record). Any agent
 * process reads them all: that is how `jobs list` sees the daemon's jobs, and how a restarted
 * agent learns every job's fate. A cancel request for a job another process owns is a file
 * `<id>.cancel` beside its record, which the owner polls.
 */
export class JobStore {
  readonly dir: string;
  readonly #stateDir: string;
  /** Writes of one record are chained, so an older state never overwrites a newer one. */
  readonly #writes = new Map<string, Promise<void>>();
  #sequence = 0;

  constructor(stateDir: string) {
    this.#stateDir = stateDir;
    this.dir = path.join(stateDir, 'jobs');
  }

  save(record: JobRecord): Promise<void> {
    const text = JSON.stringify(record);
    const previous = this.#writes.get(record.id) ?? Promise.resolve();
    const next = previous.then(() => this.#writeAtomically(this.#file(record.id), text));
    const settled = next.catch(() => {});
    this.#writes.set(record.id, settled);
    void settled.then(() => {
      if (this.#writes.get(record.id) === settled) this.#writes.delete(record.id);
    });
    return next;
  }

  async load(id: string): Promise<JobRecord | undefined> {
    if (!JOB_ID_PATTERN.test(id)) return undefined;
    try {
      return JSON.parse(await readFile(this.#file(id), 'utf8')) as JobRecord;
    } catch {
      return undefined;
    }
  }

  /** Every readable record, oldest first. */
  async all(): Promise<JobRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const ids = names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).filter((id) => JOB_ID_PATTERN.test(id)).sort();
    const records = await Promise.all(ids.map((id) => this.load(id)));
    return records.filter((r): r is JobRecord => r !== undefined);
  }

  async remove(id: string): Promise<void> {
    await rm(this.#file(id), { force: true });
    await rm(this.#cancelFile(id), { force: true });
  }

  /** Atomic too: a failed write must not leave an empty `<id>.cancel` that the owner would obey. */
  requestCancel(id: string): Promise<void> {
    return this.#writeAtomically(this.#cancelFile(id), new Date().toISOString());
  }

  /** Ids with a pending cancel request. */
  async cancelRequests(): Promise<Set<string>> {
    try {
      return new Set((await readdir(this.dir)).filter((n) => n.endsWith('.cancel')).map((n) => n.slice(0, -7)));
    } catch {
      return new Set();
    }
  }

  async clearCancelRequest(id: string): Promise<void> {
    await rm(this.#cancelFile(id), { force: true });
  }

  /** Waits for the writes in flight (at shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.#writes.values()]);
  }

  /**
   * Temp file, then rename. A write that fails (a full state directory) removes its temp file:
   * on a full disk the create succeeds and the write does not, which would leave an empty
   * `.tmp` behind for every attempt.
   */
  async #writeAtomically(file: string, text: string): Promise<void> {
    const temp = `${file}.${process.pid}.${this.#sequence++}.tmp`;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      await writeFile(temp, text, { mode: 0o600 });
      await rename(temp, file);
    } catch (error) {
      await rm(temp, { force: true }).catch(() => {}); // the write's error is the one to report
      throw stateDirWriteError(error, this.#stateDir, file);
    }
  }

  #file(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }

  #cancelFile(id: string): string {
    return path.join(this.dir, `${id}.cancel`);
  }
}
