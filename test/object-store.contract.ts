import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../src/errors.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { putSegmented, readSegmented } from '../src/transport/stores/segments.ts';

export interface ContractSubject {
  store: ObjectStore;
  /** A store like `store` whose largest object is `bytes` (to exercise segmenting). */
  withMaxObjectBytes(bytes: number): ObjectStore;
  /** Partial uploads the backend still holds (multipart uploads, temp files). */
  incompleteUploads(): Promise<number>;
}

const MiB = 1024 * 1024;

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(prefix)) keys.push(object.key);
  return keys;
}

function failingStream(bytesBeforeFailure: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= bytesBeforeFailure) {
        this.destroy(new Error('source failed half way'));
        return;
      }
      sent += MiB;
      this.push(randomBytes(MiB));
    },
  });
}

/**
 * One suite, every store: the ObjectStore contract (src/transport/stores/object-store.ts) checked
 * against the fs store and the real Ceph RGW alike.
 */
export function objectStoreContract(name: string, subject: () => Promise<ContractSubject>): void {
  describe(`ObjectStore contract: ${name}`, () => {
    it('round-trips an empty object, a small one and a multipart one byte for byte', async () => {
      const { store } = await subject();
      const bodies = { 'c/empty': Buffer.alloc(0), 'c/small': randomBytes(1000), 'c/large': randomBytes(12 * MiB + 17) };
      for (const [key, body] of Object.entries(bodies)) await store.put(key, Readable.from([body]));
      for (const [key, body] of Object.entries(bodies)) {
        const read = await buffer(await store.get(key));
        expect(read.equals(body), key).toBe(true);
        expect((await store.head(key))?.size).toBe(body.length);
      }
    });

    it('makes an object visible only once all of it is stored', async () => {
      const { store } = await subject();
      const body = new PassThrough();
      const put = store.put('v/object', body);
      body.write(randomBytes(6 * MiB));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await store.head('v/object')).toBeUndefined();
      expect(await keysUnder(store, 'v/')).toEqual([]);
      body.end(randomBytes(10));
      await put;
      expect((await store.head('v/object'))?.size).toBe(6 * MiB + 10);
    });

    it('leaves no object and no partial upload when the body fails, and keeps an older object', async () => {
      const { store, incompleteUploads } = await subject();
      await store.put('f/object', Readable.from([Buffer.from('old')]));
      await expect(store.put('f/object', failingStream(12 * MiB))).rejects.toThrow();
      expect((await buffer(await store.get('f/object'))).toString()).toBe('old');
      await expect(store.put('f/new', failingStream(12 * MiB))).rejects.toThrow();
      expect(await store.head('f/new')).toBeUndefined();
      expect(await incompleteUploads()).toBe(0);
    });

    it('stops on cancel with E_CANCELLED and leaves nothing behind', async () => {
      const { store, incompleteUploads } = await subject();
      const controller = new AbortController();
      const body = new PassThrough();
      const put = store.put('x/object', body, { signal: controller.signal });
      body.write(randomBytes(11 * MiB));
      setTimeout(() => controller.abort(new AgentError('E_CANCELLED', 'test cancel')), 500);
      await expect(put).rejects.toMatchObject({ code: 'E_CANCELLED' });
      expect(await store.head('x/object')).toBeUndefined();
      expect(await incompleteUploads()).toBe(0);
    });

    it('answers E_OBJECT_NOT_FOUND for a missing key and undefined from head', async () => {
      const { store } = await subject();
      await expect(store.get('missing/key')).rejects.toMatchObject({ code: 'E_OBJECT_NOT_FOUND' });
      expect(await store.head('missing/key')).toBeUndefined();
    });

    it('reads byte ranges: in the middle, at the start, ending exactly at the end, and empty ones', async () => {
      const { store } = await subject();
      const body = randomBytes(1000);
      await store.put('r/object', Readable.from([body]));
      await store.put('r/empty', Readable.from([Buffer.alloc(0)]));
      const range = async (key: string, offset: number, length: number) => buffer(await store.getRange(key, offset, length));
      expect((await range('r/object', 100, 250)).equals(body.subarray(100, 350))).toBe(true);
      expect((await range('r/object', 0, 10)).equals(body.subarray(0, 10))).toBe(true);
      expect((await range('r/object', 990, 10)).equals(body.subarray(990))).toBe(true);
      expect((await range('r/object', 0, 1000)).equals(body)).toBe(true);
      expect((await range('r/object', 999, 1)).equals(body.subarray(999))).toBe(true);
      for (const [key, offset] of [['r/object', 0], ['r/object', 500], ['r/object', 1000], ['r/empty', 0]] as const) {
        expect((await range(key, offset, 0)).length, `${key} at ${offset}`).toBe(0);
      }
    });

    it('rejects a range past the object\'s end with E_OBJECT_RANGE, and one of a missing key with E_OBJECT_NOT_FOUND', async () => {
      const { store } = await subject();
      await store.put('r/short', Readable.from([randomBytes(1000)]));
      await store.put('r/empty', Readable.from([Buffer.alloc(0)]));
      // Running past the end, starting at it, starting beyond it; and an empty range beyond it.
      for (const [key, offset, length] of [['r/short', 990, 11], ['r/short', 1000, 1], ['r/short', 5000, 10], ['r/short', 1001, 0], ['r/empty', 0, 1]] as const) {
        await expect(store.getRange(key, offset, length), `${key} ${offset}+${length}`).rejects.toMatchObject({
          code: 'E_OBJECT_RANGE',
          exitCode: 5,
          details: { key, offset, length },
        });
      }
      await expect(store.getRange('r/short', 990, 11)).rejects.toMatchObject({ details: { size: 1000 }, message: /has only 1000 bytes.*backup verify/ });
      await expect(store.getRange('missing/key', 0, 10)).rejects.toMatchObject({ code: 'E_OBJECT_NOT_FOUND' });
      await expect(store.getRange('missing/key', 0, 0)).rejects.toMatchObject({ code: 'E_OBJECT_NOT_FOUND' });
    });

    it('reads a multi-MiB object in ranges that concatenate to its bytes', async () => {
      const { store } = await subject();
      const body = randomBytes(12 * MiB + 17);
      await store.put('r/large', Readable.from([body]));
      const step = 5 * MiB - 3; // ranges that straddle the 5 MiB parts of a multipart object
      const pieces: Buffer[] = [];
      for (let offset = 0; offset < body.length; offset += step) {
        pieces.push(await buffer(await store.getRange('r/large', offset, Math.min(step, body.length - offset))));
      }
      expect(pieces.length).toBe(3);
      expect(Buffer.concat(pieces).equals(body)).toBe(true); // toEqual walks 12 MiB byte by byte: slow
    });

    it('stops a range read on cancel with E_CANCELLED: before it starts and while it streams', async () => {
      const { store } = await subject();
      await store.put('r/cancel', Readable.from([randomBytes(16 * MiB)]));
      const before = new AbortController();
      before.abort(new AgentError('E_CANCELLED', 'test cancel'));
      await expect(store.getRange('r/cancel', 0, 10, { signal: before.signal })).rejects.toMatchObject({ code: 'E_CANCELLED' });
      const during = new AbortController();
      const stream = await store.getRange('r/cancel', MiB, 15 * MiB, { signal: during.signal });
      const read = (async () => {
        for await (const _chunk of stream) during.abort(new AgentError('E_CANCELLED', 'test cancel'));
      })();
      await expect(read).rejects.toMatchObject({ code: 'E_CANCELLED' });
    });

    it('lists every object under a prefix once, in key order, and nothing outside it', async () => {
      const { store } = await subject();
      const keys = ['l/b/2', 'l/a/1', 'l/a/10', 'l/c', 'lx/outside', 'l/a/3'];
      for (const key of keys) await store.put(key, Readable.from([Buffer.from(key)]));
      expect(await keysUnder(store, 'l/')).toEqual(['l/a/1', 'l/a/10', 'l/a/3', 'l/b/2', 'l/c']);
      expect(await keysUnder(store, 'l/a/1')).toEqual(['l/a/1', 'l/a/10']);
      const sizes = [];
      for await (const object of store.list('l/b/')) sizes.push(object.size);
      expect(sizes).toEqual([5]);
    });

    it('deletes keys, and a missing key is not an error', async () => {
      const { store } = await subject();
      await store.put('d/1', Readable.from([Buffer.from('1')]));
      await store.put('d/2', Readable.from([Buffer.from('2')]));
      await store.delete(['d/1', 'd/never-existed']);
      expect(await keysUnder(store, 'd/')).toEqual(['d/2']);
    });

    it('rejects keys that could escape the store', async () => {
      const { store } = await subject();
      for (const key of ['../x', 'a/../../x', '', 'a//b']) {
        await expect(store.put(key, Readable.from([Buffer.from('x')])), key).rejects.toMatchObject({ code: 'E_INVALID_NAME' });
      }
    });

    it('splits an artifact larger than the largest object into segments and reads it back whole', async () => {
      const { withMaxObjectBytes } = await subject();
      const store = withMaxObjectBytes(10 * MiB);
      const body = randomBytes(23 * MiB + 5);
      const segments = await putSegmented(store, 's/artifact', Readable.from([body.subarray(0, 7 * MiB), body.subarray(7 * MiB)]));
      expect(segments.map((s) => s.key)).toEqual(['s/artifact', 's/artifact.0001', 's/artifact.0002']);
      expect(segments.map((s) => s.bytes)).toEqual([10 * MiB, 10 * MiB, 3 * MiB + 5]);
      const read = await buffer(readSegmented(store, segments.map((s) => s.key)));
      expect(read.equals(body)).toBe(true);
    });

    it('writes one empty object for an empty artifact', async () => {
      const { store } = await subject();
      const segments = await putSegmented(store, 'e/empty', Readable.from([]));
      expect(segments).toEqual([{ key: 'e/empty', bytes: 0 }]);
      expect((await store.head('e/empty'))?.size).toBe(0);
    });
  });
}
