import type { JobProgress } from '../../jobs-wire.ts';
import type { ProgressEvent } from '../../progress.ts';

/** Rate is measured over windows of at least this long, smoothed. */
const WINDOW_MS = 1_000;
const SMOOTHING = 0.5;

/**
 * Turns an operation's progress events (phase, element, raw bytes so far, expected total)
 * into a job's progress: bytes per element, a smoothed rate, and an ETA where the size is known.
 */
export class ProgressTracker {
  readonly #progress: JobProgress;
  #windowStart = { at: Date.now(), bytes: 0 };
  #rate: number | undefined;
  #started = false;

  constructor() {
    // Keyed by service names from the config: without a prototype, an element named
    // 'constructor' gets its own entry instead of finding (and writing onto) Object.
    const elements = Object.create(null) as JobProgress['elements'];
    this.#progress = { phase: 'prepare', elements, bytes: 0, updatedAt: new Date().toISOString() };
  }

  /** Applies an event; returns true when the phase or element changed. */
  update(event: ProgressEvent, now = Date.now()): boolean {
    const progress = this.#progress;
    const changed = !this.#started || event.phase !== progress.phase || event.element !== progress.element;
    this.#started = true;
    progress.phase = event.phase;
    progress.element = event.element;
    if (event.element !== undefined) {
      const element = (progress.elements[event.element] ??= { bytes: 0 });
      if (event.bytes !== undefined) element.bytes = event.bytes;
      if (event.totalBytes !== undefined) element.totalBytes = event.totalBytes;
    }
    progress.bytes = Object.values(progress.elements).reduce((sum, e) => sum + e.bytes, 0);
    if (changed) this.#windowStart = { at: now, bytes: progress.bytes };
    const elapsed = now - this.#windowStart.at;
    if (elapsed >= WINDOW_MS) {
      const rate = ((progress.bytes - this.#windowStart.bytes) * 1000) / elapsed;
      this.#rate = this.#rate === undefined ? rate : SMOOTHING * rate + (1 - SMOOTHING) * this.#rate;
      this.#windowStart = { at: now, bytes: progress.bytes };
    }
    progress.rate = this.#rate === undefined ? undefined : Math.round(this.#rate);
    const current = event.element === undefined ? undefined : progress.elements[event.element];
    progress.etaSeconds =
      current?.totalBytes !== undefined && this.#rate !== undefined && this.#rate > 0
        ? Math.max(0, Math.round((current.totalBytes - current.bytes) / this.#rate))
        : undefined;
    progress.updatedAt = new Date(now).toISOString();
    return changed;
  }

  snapshot(): JobProgress {
    const { rate, etaSeconds, element, ...rest } = this.#progress;
    return {
      ...rest,
      elements: Object.fromEntries(Object.entries(this.#progress.elements).map(([name, e]) => [name, { ...e }])),
      ...(element !== undefined ? { element } : {}),
      ...(rate !== undefined ? { rate } : {}),
      ...(etaSeconds !== undefined ? { etaSeconds } : {}),
    };
  }
}
