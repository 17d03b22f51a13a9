/**
 * The protocol between a chunk stream (stream.ts) and its worker thread: the messages that
 * every such worker posts, and flow control in shared memory (so that the worker can block).
 *
 * The worker spends one credit per chunk it posts and sleeps in `Atomics.wait` when it has
 * none; the main thread grants a credit back for each chunk its reader has taken. Memory is
 * thus bounded by the credits, whatever the size of what the worker reads.
 */

import type { MessagePort } from 'node:worker_threads';
import type { ErrorCode } from '../../errors.ts';

/** What the main thread hands every chunk worker, besides its own input. */
export interface ChunkWorkerData {
  chunkSize: number;
  control: Int32Array;
  /** Chunks (ArrayBuffers of chunkSize) handed back for reuse; read with receiveMessageOnPort. */
  recycled: MessagePort;
}

export type ChunkWorkerMessage<Stats> =
  | { kind: 'chunk'; chunk: ArrayBuffer; length: number }
  | { kind: 'done'; stats: Stats }
  | { kind: 'failed'; code: ErrorCode; message: string; details: Record<string, unknown> | undefined };

const CREDIT = 0;
const CANCEL = 1;
/** 0 while a held worker waits for its start (packTree's `held`), 1 once it may go. */
const START = 2;

export function createControl(initialCredit: number, { held = false } = {}): Int32Array {
  const control = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  control[CREDIT] = initialCredit;
  control[START] = held ? 0 : 1;
  return control;
}

/** Lets a held worker start. */
export function grantStart(control: Int32Array): void {
  Atomics.store(control, START, 1);
  Atomics.notify(control, START);
}

export function grantCredit(control: Int32Array, credits: number): void {
  Atomics.add(control, CREDIT, credits);
  Atomics.notify(control, CREDIT);
}

export function requestCancel(control: Int32Array): void {
  Atomics.store(control, CANCEL, 1);
  Atomics.notify(control, CREDIT);
  Atomics.notify(control, START);
}

/** Thrown inside the worker to unwind (closing its fds) once the main thread has cancelled. */
export class WorkerCancelled extends Error {}

export function throwIfCancelRequested(control: Int32Array): void {
  if (Atomics.load(control, CANCEL) !== 0) throw new WorkerCancelled('cancelled by the reader');
}

/** Worker side: blocks until the worker may start, or is cancelled. */
export function awaitStart(control: Int32Array): void {
  for (;;) {
    throwIfCancelRequested(control);
    if (Atomics.load(control, START) !== 0) return;
    Atomics.wait(control, START, 0);
  }
}

/** Worker side: takes one credit, blocking until one is granted or the stream is cancelled. */
export function takeCredit(control: Int32Array): void {
  for (;;) {
    throwIfCancelRequested(control);
    if (Atomics.load(control, CREDIT) > 0) {
      // Only the worker ever takes credit, so nothing can race this decrement below zero.
      Atomics.sub(control, CREDIT, 1);
      return;
    }
    Atomics.wait(control, CREDIT, 0);
  }
}
