/**
 * The protocol between packTree and its worker: the worker's input, its messages, and flow
 * control in shared memory (so that the worker can block).
 *
 * The worker spends one credit per chunk it posts and sleeps in `Atomics.wait` when it has
 * none; the main thread grants a credit back for each chunk its reader has taken. Memory is
 * thus bounded by the credits, whatever the size of the tree.
 */

import type { MessagePort } from 'node:worker_threads';
import type { ErrorCode } from '../../errors.ts';
import type { FileSegment } from '../driver.ts';
import type { PackStats } from './pack.ts';

export interface PackWorkerData {
  root: string;
  excludes: string[];
  chunkSize: number;
  control: Int32Array;
  /** Chunks (ArrayBuffers of chunkSize) handed back for reuse; read with receiveMessageOnPort. */
  recycled: MessagePort;
  /** Mark file segments, and skip the files this parent holds unchanged (path → signature). */
  parent?: ReadonlyMap<string, string> | undefined;
}

export type PackWorkerMessage =
  | { kind: 'chunk'; chunk: ArrayBuffer; length: number }
  /** A file's segment begins at `offset` of the bytes sent (FileSegment); posted before the chunk that holds it. */
  | { kind: 'segment'; offset: number; segment: FileSegment }
  | { kind: 'done'; stats: PackStats }
  | { kind: 'failed'; code: ErrorCode; message: string; details: Record<string, unknown> | undefined };

const CREDIT = 0;
const CANCEL = 1;
/** 0 while a held pack waits for its start (packTree's `held`), 1 once it may walk. */
const START = 2;

export function createControl(initialCredit: number, { held = false } = {}): Int32Array {
  const control = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  control[CREDIT] = initialCredit;
  control[START] = held ? 0 : 1;
  return control;
}

/** Lets a held pack's worker walk. */
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
export class PackCancelled extends Error {}

export function throwIfCancelRequested(control: Int32Array): void {
  if (Atomics.load(control, CANCEL) !== 0) throw new PackCancelled('pack cancelled');
}

/** Worker side: blocks until the pack may start walking, or is cancelled. */
export function awaitStart(control: Int32Array): void {
  for (;;) {
    throwIfCancelRequested(control);
    if (Atomics.load(control, START) !== 0) return;
    Atomics.wait(control, START, 0);
  }
}

/** Worker side: takes one credit, blocking until one is granted or the pack is cancelled. */
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
