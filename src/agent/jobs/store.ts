import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeStateFile } from '../../state-file.ts';
import { JOB_ID_PATTERN, type JobRecord } from '../../jobs-wire.ts';

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

  constructor(stateDir: string) {
    this.#stateDir = stateDir;
    this.dir = path.join(stateDir, 'jobs');
  }

  save(record: JobRecord): Promise<void> {
    const text = JSON.stringify(record);
    const previous = this.#writes.get(record.id) ?? Promise.resolve();
    const next = previous.then(() => writeStateFile(this.#stateDir, this.#file(record.id), text));
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
    const records = await Promise.all((await this.ids()).map((id) => this.load(id)));
    return records.filter((r): r is JobRecord => r !== undefined);
  }

  /** The ids of the records on disk, oldest first (without reading them). */
  async ids(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    return names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).filter((id) => JOB_ID_PATTERN.test(id)).sort();
  }

  async remove(id: string): Promise<void> {
    await rm(this.#file(id), { force: true });
    await rm(this.#cancelFile(id), { force: true });
  }

  /** Atomic too: a failed write must not leave an empty `<id>.cancel` that the owner would obey. */
  requestCancel(id: string): Promise<void> {
    return writeStateFile(this.#stateDir, this.#cancelFile(id), new Date().toISOString());
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

  #file(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }

  #cancelFile(id: string): string {
    return path.join(this.dir, `${id}.cancel`);
  }
}
