import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { toAgentError } from '../../errors.ts';
import { writeStateFile } from '../../state-file.ts';
import type { JobStore } from './store.ts';
import { isFinished, type JobRecord } from '../../jobs-wire.ts';

export type Labels = Record<string, string>;

export interface CounterSeries {
  labels: Labels;
  value: number;
}

export interface HistogramSeries {
  labels: Labels;
  /** Observations per bucket (not cumulative); the last one is +Inf. */
  counts: number[];
  sum: number;
}

/** What a finished job record adds to the tally (metrics.ts says what each record is worth). */
export interface TallyWriter {
  add(name: string, labels: Labels, value?: number): void;
  /** Keeps the largest value seen (the last success, the last failure). */
  latest(name: string, labels: Labels, value: number): void;
  observe(name: string, labels: Labels, value: number): void;
}

interface TallyFile {
  version: 1;
  counted: string[];
  counters: Record<string, CounterSeries[]>;
  latest: Record<string, CounterSeries[]>;
  histograms: Record<string, { bounds: number[]; series: HistogramSeries[] }>;
}

/**
 * Running totals of the node's finished jobs — those of CLI runs as much as the daemon's —
 * folded in from the job store, each record exactly once, and kept in `<stateDir>/metrics.json`.
 *
 * Why not count the records at each scrape: the store keeps only the newest `jobs.history`
 * records, so counts taken from it fall whenever old records are pruned, and Prometheus reads a
 * counter that falls as a reset (a spurious burst in every rate()). Seeding in-memory counters
 * from the store at start has the same flaw at every restart. Totals that are only ever added
 * to, and saved before they are shown, survive restarts and pruning alike: a record is folded
 * in once (its id is remembered while the store still has it) and its worth stays after it is
 * pruned. Only the daemon keeps the tally; a CLI run's jobs count when the daemon next looks,
 * as long as their records are still kept.
 */
export class JobTally implements TallyWriter {
  readonly #file: string;
  readonly #stateDir: string;
  readonly #store: JobStore;
  readonly #logger: Logger;
  readonly #fold: (record: JobRecord, into: TallyWriter) => void;
  readonly #bounds: ReadonlyMap<string, readonly number[]>;
  readonly #counted = new Set<string>();
  readonly #counters = new Map<string, Map<string, CounterSeries>>();
  readonly #latest = new Map<string, Map<string, CounterSeries>>();
  readonly #histograms = new Map<string, Map<string, HistogramSeries>>();
  #dirty = false;
  #refreshing: Promise<JobRecord[]> | undefined;
  #again = false;
  #saving: Promise<void> = Promise.resolve();

  /**
   * `histograms`: each histogram's bucket upper bounds (+Inf implied). A saved histogram whose
   * bounds differ (a new version changed them) starts again from empty.
   */
  constructor(options: {
    stateDir: string;
    store: JobStore;
    logger: Logger;
    histograms: ReadonlyMap<string, readonly number[]>;
    fold: (record: JobRecord, into: TallyWriter) => void;
  }) {
    this.#stateDir = options.stateDir;
    this.#file = path.join(options.stateDir, 'metrics.json');
    this.#store = options.store;
    this.#logger = options.logger;
    this.#bounds = options.histograms;
    this.#fold = options.fold;
    this.#load();
  }

  /**
   * Folds in the records that finished since the last call (any process's) and saves the
   * tally; resolves with the records not finished yet. Concurrent calls share one pass.
   */
  refresh(): Promise<JobRecord[]> {
    this.#refreshing ??= this.#passes().finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  /**
   * A job of this process finished: fold it in now (after the pass under way, which may have
   * listed the directory before its record was written), before the history trims it away.
   */
  jobFinished(): void {
    if (this.#refreshing) this.#again = true;
    else this.refresh().catch((error: unknown) => this.#logger.warn({ err: toAgentError(error).message }, 'could not update the metrics tally'));
  }

  async #passes(): Promise<JobRecord[]> {
    let open: JobRecord[];
    do {
      this.#again = false;
      open = await this.#refreshOnce();
    } while (this.#again);
    return open;
  }

  add(name: string, labels: Labels, value = 1): void {
    const series = seriesOf(this.#counters, name, labels, () => ({ labels, value: 0 }));
    series.value += value;
    this.#dirty = true;
  }

  latest(name: string, labels: Labels, value: number): void {
    const series = seriesOf(this.#latest, name, labels, () => ({ labels, value }));
    series.value = Math.max(series.value, value);
    this.#dirty = true;
  }

  observe(name: string, labels: Labels, value: number): void {
    const bounds = this.#boundsOf(name);
    const series = seriesOf(this.#histograms, name, labels, () => ({ labels, counts: new Array<number>(bounds.length + 1).fill(0), sum: 0 }));
    const bucket = bounds.findIndex((bound) => value <= bound);
    series.counts[bucket === -1 ? bounds.length : bucket]! += 1;
    series.sum += value;
    this.#dirty = true;
  }

  /** Adds to a counter outside the job records (the daemon's sweeps), saved at once. */
  addNow(name: string, labels: Labels, value: number): void {
    this.add(name, labels, value);
    void this.#save();
  }

  counters(name: string): CounterSeries[] {
    return [...(this.#counters.get(name)?.values() ?? [])];
  }

  latestValues(name: string): CounterSeries[] {
    return [...(this.#latest.get(name)?.values() ?? [])];
  }

  histogram(name: string): { bounds: readonly number[]; series: HistogramSeries[] } {
    return { bounds: this.#boundsOf(name), series: [...(this.#histograms.get(name)?.values() ?? [])] };
  }

  async #refreshOnce(): Promise<JobRecord[]> {
    const ids = await this.#store.ids();
    const present = new Set(ids);
    for (const id of this.#counted) {
      if (present.has(id)) continue;
      // Pruned: its worth stays in the totals, and it can never come back to be counted again.
      this.#counted.delete(id);
      this.#dirty = true;
    }
    const open: JobRecord[] = [];
    for (const id of ids) {
      if (this.#counted.has(id)) continue;
      const record = await this.#store.load(id);
      if (!record) continue;
      if (!isFinished(record.state)) {
        open.push(record);
        continue;
      }
      try {
        this.#fold(record, this);
      } catch (error) {
        // A record of an unexpected shape (another version's) must not stop every scrape.
        this.#logger.warn({ jobId: id, err: (error as Error).message }, 'a job record could not be counted in the metrics');
      }
      this.#counted.add(id);
      this.#dirty = true;
    }
    await this.#save();
    return open;
  }

  /** Saves when something changed; a failed save is logged and retried with the next change or scrape. */
  #save(): Promise<void> {
    this.#saving = this.#saving.then(async () => {
      if (!this.#dirty) return;
      this.#dirty = false;
      try {
        await writeStateFile(this.#stateDir, this.#file, JSON.stringify(this.#toFile()));
      } catch (error) {
        this.#dirty = true;
        this.#logger.warn({ file: this.#file, err: toAgentError(error).message }, 'could not save the metrics tally; retried at the next scrape');
      }
    });
    return this.#saving;
  }

  #toFile(): TallyFile {
    const values = <T>(map: Map<string, Map<string, T>>) => Object.fromEntries([...map].map(([name, series]) => [name, [...series.values()]]));
    return {
      version: 1,
      counted: [...this.#counted],
      counters: values(this.#counters),
      latest: values(this.#latest),
      histograms: Object.fromEntries([...this.#histograms].map(([name, series]) => [name, { bounds: [...this.#boundsOf(name)], series: [...series.values()] }])),
    };
  }

  /**
   * Read once, at start (the daemon's). A missing file is a first start: every record the store
   * still has is folded in. An unreadable one is logged and started over the same way.
   */
  #load(): void {
    try {
      const saved = JSON.parse(readFileSync(this.#file, 'utf8')) as TallyFile;
      if (saved.version !== 1) throw new Error(`unknown version ${String(saved.version)}`);
      for (const id of saved.counted) this.#counted.add(id);
      for (const [name, series] of Object.entries(saved.counters)) for (const s of series) seriesOf(this.#counters, name, s.labels, () => s);
      for (const [name, series] of Object.entries(saved.latest)) for (const s of series) seriesOf(this.#latest, name, s.labels, () => s);
      for (const [name, { bounds, series }] of Object.entries(saved.histograms)) {
        if (JSON.stringify(bounds) !== JSON.stringify(this.#bounds.get(name))) continue;
        for (const s of series) seriesOf(this.#histograms, name, s.labels, () => s);
      }
    } catch (error) {
      for (const map of [this.#counters, this.#latest, this.#histograms]) map.clear();
      this.#counted.clear();
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.#logger.warn({ file: this.#file, err: (error as Error).message }, 'the metrics tally cannot be read: counting again from the job records kept');
      }
    }
  }

  #boundsOf(name: string): readonly number[] {
    const bounds = this.#bounds.get(name);
    if (!bounds) throw new Error(`histogram ${name} has no buckets`);
    return bounds;
  }
}

function seriesOf<T>(map: Map<string, Map<string, T>>, name: string, labels: Labels, create: () => T): T {
  let byLabels = map.get(name);
  if (!byLabels) map.set(name, (byLabels = new Map()));
  const key = JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
  let series = byLabels.get(key);
  if (!series) byLabels.set(key, (series = create()));
  return series;
}
