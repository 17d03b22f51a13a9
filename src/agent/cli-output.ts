import type { Writable } from 'node:stream';
import { AgentError } from '../errors.ts';
import type { ProgressEvent } from '../progress.ts';
import { formatBytes } from '../units.ts';

/** A plain text table: columns padded to their widest cell. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function printJson(out: Writable, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function errorJson(error: AgentError): { error: { code: string; message: string; details?: Record<string, unknown> } } {
  return { error: { code: error.code, message: error.message, ...(error.details ? { details: error.details } : {}) } };
}

/**
 * One status line on a TTY, rewritten in place at most 10 times a second: phase, element,
 * bytes, rate, and the ETA where the size is known. Silent when not on a TTY.
 */
export function createProgressLine(out: Writable & { isTTY?: boolean; columns?: number }): { update: (e: ProgressEvent) => void; end: () => void } {
  if (!out.isTTY) return { update: () => {}, end: () => {} };
  let last = 0;
  let started = Date.now();
  let element: string | undefined;
  let shown = false;
  const update = (event: ProgressEvent) => {
    if (event.element !== element) {
      element = event.element;
      started = Date.now();
    }
    const now = Date.now();
    if (now - last < 100) return;
    last = now;
    const seconds = (now - started) / 1000;
    const rate = event.bytes !== undefined && seconds > 0 ? event.bytes / seconds : undefined;
    const parts = [event.phase, event.element ?? ''];
    if (event.bytes !== undefined) parts.push(formatBytes(event.bytes) + (event.totalBytes ? ` / ${formatBytes(event.totalBytes)}` : ''));
    if (rate) parts.push(`${formatBytes(rate)}/s`);
    if (rate && event.totalBytes && event.bytes !== undefined) parts.push(`ETA ${Math.max(0, Math.round((event.totalBytes - event.bytes) / rate))}s`);
    out.write(`\r\x1b[K${parts.filter(Boolean).join('  ')}`.slice(0, (out.columns ?? 120) + 4));
    shown = true;
  };
  return { update, end: () => shown && out.write('\r\x1b[K') };
}
