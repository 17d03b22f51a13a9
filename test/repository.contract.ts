import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { indexPrefix, packsPrefix, repositoryKeysPrefix } from '../src/transport/repository/layout.ts';
import { openRepository, type Repository, type RepositoryOptions } from '../src/transport/repository/repository.ts';
import type { PlatformKeys } from '../src/transport/repository/repository-keys.ts';
import { dumpLike, editRows } from './support/dump-like.ts';

/** Small chunks and packs, so a few MiB exercise many chunks, several packs and coalesced reads. */
const SMALL: Omit<RepositoryOptions, 'create'> = { chunker: { minBytes: 16 << 10, avgBytes: 64 << 10, maxBytes: 256 << 10 }, packBytes: 1 << 20 };

function platformKey(id: string): PlatformKeys {
  const secret = randomBytes(32);
  return { signing: { id, secret }, verifying: new Map([[id, secret]]) };
}

/** Half random, half text: compressible and not, like real dumps and trees. */
function content(bytes: number): Buffer {
  const text = Buffer.from('INSERT INTO orders VALUES (1,"widget",42.00),(2,"gadget",7.50);\n'.repeat(Math.ceil(bytes / 2 / 64)));
  return Buffer.concat([randomBytes(bytes / 2), text]).subarray(0, bytes);
}

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix)) keys.push(info.key);
  return keys;
}

async function rewrite(store: ObjectStore, key: string, change: (bytes: Buffer) => Buffer): Promise<void> {
  const bytes = change(await buffer(await store.get(key)));
  await store.put(key, Readable.from([bytes]));
}

async function bytesUnder(store: ObjectStore, prefix: string): Promise<number> {
  let total = 0;
  for await (const info of store.list(prefix)) total += info.size;
  return total;
}

/** The store, whose puts and deletes fail after `allowed` of them: a process killed between two writes. */
function stopAfterWrites(store: ObjectStore, allowed: number): ObjectStore {
  let writes = 0;
  const gate = () => {
    if (writes++ >= allowed) throw new Error('stopped');
  };
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function') return value;
      if (property === 'put' || property === 'delete') {
        return async (...args: unknown[]) => {
          gate();
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      }
      return (value as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

async function stored(repository: Repository, data: Buffer) {
  const result = await repository.writeStream(Readable.from([data]));
  await repository.commit();
  return result;
}

/**
 * One suite, every store: the Repository contract (src/transport/repository/repository.ts)
 * against a real ObjectStore — the fs store and the Ceph RGW.
 */
export function repositoryContract(name: string, makeStore: () => Promise<ObjectStore>): void {
  describe(`repository contract: ${name}`, () => {
    it('gives back a stored stream byte for byte, through a repository opened again', async () => {
      const store = await makeStore();
      const keys = platformKey('platform-1');
      const data = content(6 << 20);
      const first = await stored(await openRepository(store, 'shop', keys, { create: true, ...SMALL }), data);
      expect(first.rawBytes).toBe(data.length);
      expect(first.chunks).toBeGreaterThan(20);
      // The repeated text dedups within the stream itself.
      expect(first.newChunks).toBeLessThan(first.chunks);
      expect(first.newBytes).toBeLessThan(data.length);
      const reader = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
      expect(sha(await buffer(reader.readStream(first.root)))).toBe(sha(data));
      expect((await keysUnder(store, packsPrefix('shop'))).length).toBeGreaterThan(1);
      await expect(reader.check(first.root, { readData: true })).resolves.toEqual({ chunks: first.chunks, bytes: data.length });
    });

    it('stores an unchanged stream again for nothing, and an edited one for the chunks around the edit', async () => {
      const store = await makeStore();
      const keys = platformKey('platform-1');
      const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
      const data = content(4 << 20);
      const first = await stored(repository, data);
      const again = await stored(repository, data);
      expect(again).toMatchObject({ root: first.root, newChunks: 0, newBytes: 0 });
      const edited = Buffer.concat([data.subarray(0, 2 << 20), Buffer.from('one changed row'), data.subarray(2 << 20)]);
      const next = await stored(await openRepository(store, 'shop', keys, { create: true, ...SMALL }), edited);
      // The chunk holding the edit, its neighbour at most, and the tree listing them.
      expect(next.newChunks).toBeLessThanOrEqual(4);
      expect(sha(await buffer((await openRepository(store, 'shop', keys, { create: false, ...SMALL })).readStream(next.root)))).toBe(sha(edited));
    });

    it('stores a dump dumped again with rows changed here and there as deltas against its parent, through generations and a collection', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const open = (create = true) => openRepository(store, 'shop', keys, { create, ...SMALL });
      const first = dumpLike(4 << 20, 0);
      const second = editRows(first, 1);
      const third = editRows(second, 2);
      const a = await stored(await open(), Buffer.from(first));
      const write = async (data: Buffer, parent: string) => {
        const repository = await open();
        // In pieces of their own, as a dump arrives: chunks spanning pieces are buffers of their own too, which move to the workers.
        const pieces = Array.from({ length: Math.ceil(data.length / 4096) }, (_, i) => Buffer.from(data.subarray(i * 4096, (i + 1) * 4096)));
        const written = await repository.writeStream(Readable.from(pieces), { parent });
        await repository.commit();
        return written;
      };
      const b = await write(second, a.root);
      // Without deltas every chunk is new (each holds changed rows): a few hundred bytes each
      // instead, a chunk between moved cuts against both parent chunks it overlaps. The goal is
      // ≤ 10 %; 120 runs stored 0.70–1.01 % (docs/repository.md).
      expect(b.newChunks).toBe(b.chunks);
      expect(b.newBytes).toBeLessThan(a.newBytes * 0.02);
      const c = await write(third, b.root);
      // Against a parent that is itself deltas: as much (9.7 KB of 1.17 MB once, the second 9.5 KB).
      expect(c.newBytes).toBeLessThan(a.newBytes * 0.02);
      const reader = await open(false);
      expect(sha(await buffer(reader.readStream(b.root)))).toBe(sha(second));
      expect(sha(await buffer(reader.readStream(c.root)))).toBe(sha(third));
      await expect(reader.check(c.root, { readData: true })).resolves.toEqual({ chunks: c.chunks, bytes: third.length });

      // Only the third is live: its bases (the first's chunks) are kept, the second's deltas go.
      await (await open()).collectGarbage([c.root], { repackUnused: 0.05, orphanAgeMs: 0 });
      const collected = await open(false);
      expect(sha(await buffer(collected.readStream(c.root)))).toBe(sha(third));
      await expect(collected.check(b.root)).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT' });

      // A damaged base fails the delta that needs it, in verify and in a read.
      const packs = await keysUnder(store, packsPrefix('shop'));
      for (const pack of packs) {
        await rewrite(store, pack, (bytes) => {
          bytes[20]! ^= 0x01;
          return bytes;
        });
      }
      const damaged = await open(false);
      expect((await damaged.checkMany([c.root], { readData: true })).get(c.root)).toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /does not authenticate/ });
      await expect(buffer(damaged.readStream(c.root))).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT' });
    });

    it('a new chunk that straddles two of the parent\'s (its cut moved) is a delta against both: it costs as little as one in place, and both bases outlive a collection', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const open = (create = true) => openRepository(store, 'shop', keys, { create, ...SMALL });
      const first = dumpLike(4 << 20, 0);
      const a = await stored(await open(), Buffer.from(first));
      const cutsOf = async (root: string) => {
        let at = 0;
        return (await (await open(false)).chunksOf(root)).map((chunk) => (at += chunk.bytes)).slice(0, -1);
      };
      const cuts = await cutsOf(a.root);
      // One row in a hundred changed, and a byte just before every fifth cut: inside the window
      // the cut's hash looks at, so that cut moves (the chunker is keyed: where, only this run knows).
      const second = editRows(first, 1);
      for (const cut of cuts.filter((_, i) => i % 5 === 2)) second[cut - 3] = second[cut - 3] === 0x30 ? 0x31 : 0x30;
      const repository = await open();
      const b = await repository.writeStream(Readable.from([Buffer.from(second)]), { parent: a.root });
      await repository.commit();
      const after = await cutsOf(b.root);
      const moved = cuts.filter((cut) => !after.includes(cut));
      expect(moved.length).toBeGreaterThanOrEqual(3);
      // 0.8–1.5 % of the first in twenty runs (a chunk over three of the parent's, where a cut
      // went, still stores a part new); with one base each (the part from the other neighbour
      // stored as new bytes), 9–18 %.
      expect(b.newBytes).toBeLessThan(a.newBytes * 0.03);
      // Only the second is live: every base of its deltas is kept, and it reads back.
      await (await open()).collectGarbage([b.root], { repackUnused: 0, orphanAgeMs: 0 });
      const collected = await open(false);
      expect(sha(await buffer(collected.readStream(b.root)))).toBe(sha(second));
      await expect(collected.check(b.root, { readData: true })).resolves.toEqual({ chunks: b.chunks, bytes: second.length });
    });

    it('cuts at segment marks, and puts a reused segment\'s chunks in place of its bytes', async () => {
      const store = await makeStore();
      const repository = await openRepository(store, 'shop', platformKey('k'), { create: true, ...SMALL });
      const [a, b, between] = [content(300 << 10), content(200 << 10), Buffer.from('between the two')];
      // Copies: writeStream takes the buffers it is given over (they move to the workers).
      const items = (reuseA?: readonly { id: string; bytes: number }[]) => [
        ...(reuseA ? [{ reuse: 'a', chunks: reuseA }] : [{ segment: 'a', bytes: a.length }, Buffer.from(a.subarray(0, 1000)), Buffer.from(a.subarray(1000))]),
        Buffer.from(between),
        { segment: 'b', bytes: b.length },
        Buffer.from(b),
      ];
      const first = await repository.writeStream(Readable.from(items()));
      await repository.commit();
      expect(first.segments.map((s) => s.key)).toEqual(['a', 'b']);
      const chunks = await repository.chunksOf(first.root);
      const [segA, segB] = first.segments as unknown as [{ first: number; count: number }, { first: number; count: number }];
      // Each segment's chunks hold exactly its bytes.
      expect(chunks.slice(segA.first, segA.first + segA.count).reduce((sum, c) => sum + c.bytes, 0)).toBe(a.length);
      expect(chunks.slice(segB.first, segB.first + segB.count).reduce((sum, c) => sum + c.bytes, 0)).toBe(b.length);
      const again = await repository.writeStream(Readable.from(items(chunks.slice(segA.first, segA.first + segA.count))));
      expect(again).toMatchObject({ root: first.root, newChunks: 0 });
      expect(sha(await buffer(repository.readStream(again.root)))).toBe(sha(Buffer.concat([a, between, b])));
      await expect(repository.writeStream(Readable.from([{ reuse: 'x', chunks: [{ id: 'ab'.repeat(32), bytes: 5 }] }]))).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT' });
    });

    it('stores an empty stream and a stream of one byte', async () => {
      const store = await makeStore();
      const repository = await openRepository(store, 'shop', platformKey('k'), { create: true, ...SMALL });
      const empty = await stored(repository, Buffer.alloc(0));
      const one = await stored(repository, Buffer.from('x'));
      expect((await buffer(repository.readStream(empty.root))).length).toBe(0);
      expect((await buffer(repository.readStream(one.root))).toString()).toBe('x');
    });

    it('keeps content out of the bucket: no plaintext, ids keyed per repository', async () => {
      const store = await makeStore();
      const marker = Buffer.from('CUSTOMER-CARD-4111111111111111 '.repeat(4096));
      const a = await stored(await openRepository(store, 'a', platformKey('k'), { create: true, ...SMALL }), marker);
      const b = await stored(await openRepository(store, 'b', platformKey('k'), { create: true, ...SMALL }), marker);
      expect(a.root).not.toBe(b.root); // the same content has other ids in another environment
      for (const key of await keysUnder(store, '')) {
        const bytes = await buffer(await store.get(key));
        expect(bytes.includes('CUSTOMER-CARD')).toBe(false);
      }
    });

    it('opens under a rotated platform key, and refuses a node without the key', async () => {
      const store = await makeStore();
      const old = platformKey('platform-2025');
      const data = content(1 << 20);
      const written = await stored(await openRepository(store, 'shop', old, { create: true, ...SMALL }), data);
      const fresh = platformKey('platform-2026');
      const both: PlatformKeys = { signing: fresh.signing, verifying: new Map([...old.verifying, ...fresh.verifying]) };
      await openRepository(store, 'shop', both, { create: true, ...SMALL }); // re-wraps under the new key
      expect(await keysUnder(store, repositoryKeysPrefix('shop'))).toEqual([`${repositoryKeysPrefix('shop')}platform-2025.json`, `${repositoryKeysPrefix('shop')}platform-2026.json`]);
      const newOnly = await openRepository(store, 'shop', fresh, { create: false, ...SMALL });
      expect(sha(await buffer(newOnly.readStream(written.root)))).toBe(sha(data));
      await expect(openRepository(store, 'shop', platformKey('stranger'), { create: true })).rejects.toMatchObject({ code: 'E_REPOSITORY_KEY', message: /platform-2025, platform-2026/ });
      // Same id, other secret: the key object does not open.
      await expect(openRepository(store, 'shop', platformKey('platform-2026'), { create: false })).rejects.toMatchObject({ code: 'E_REPOSITORY_KEY', message: /does not open/ });
      await expect(openRepository(store, 'nothing-here', fresh, { create: false })).rejects.toMatchObject({ code: 'E_REPOSITORY_KEY', message: /no key object/ });
    });

    it('refuses a key object copied from another environment', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      await stored(await openRepository(store, 'a', keys, { create: true, ...SMALL }), content(1 << 16));
      const [source] = await keysUnder(store, repositoryKeysPrefix('a'));
      await store.put(`${repositoryKeysPrefix('b')}k.json`, await store.get(source!));
      await expect(openRepository(store, 'b', keys, { create: false })).rejects.toMatchObject({ code: 'E_REPOSITORY_KEY' });
    });

    it('names a changed, truncated or missing pack, and verify reads data only when asked', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const written = await stored(await openRepository(store, 'shop', keys, { create: true, ...SMALL }), content(3 << 20));
      const packs = await keysUnder(store, packsPrefix('shop'));
      const reader = async () => openRepository(store, 'shop', keys, { create: false, ...SMALL });

      await rewrite(store, packs[0]!, (bytes) => {
        bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
        return bytes;
      });
      await expect(buffer((await reader()).readStream(written.root))).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /does not authenticate/ });
      await expect((await reader()).check(written.root)).resolves.toMatchObject({ chunks: written.chunks });
      await expect((await reader()).check(written.root, { readData: true })).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT' });

      await rewrite(store, packs[1]!, (bytes) => bytes.subarray(0, bytes.length - 100));
      await expect((await reader()).check(written.root)).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /shorter than its index/ });

      await store.delete([packs[1]!]);
      await expect((await reader()).check(written.root)).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /missing/ });
    });

    it('checks many streams at once, each chunk read once: a damaged chunk fails exactly the streams that hold it', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const parts = { a: content(1 << 18), b: content(1 << 18), c: content(1 << 18), d: content(1 << 18) };
      // Each part a segment (cut before and after): its chunks are the same in every stream. Each
      // writer's new chunks go to packs of its own: the second's holds c's (b's are known), first.
      const packsBefore = new Set<string>();
      const write = async (...names: (keyof typeof parts)[]) => {
        const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
        // Copies: writeStream takes the buffers it is given over (they move to the workers).
        const written = await repository.writeStream(Readable.from(names.flatMap((n) => [{ segment: n, bytes: parts[n].length }, Buffer.from(parts[n])])));
        await repository.commit();
        const added = (await keysUnder(store, packsPrefix('shop'))).filter((k) => !packsBefore.has(k));
        for (const k of added) packsBefore.add(k);
        return { root: written.root, packs: added };
      };
      const first = await write('a', 'b');
      const second = await write('b', 'c');
      const third = await write('c', 'd');
      const reader = async () => openRepository(store, 'shop', keys, { create: false, ...SMALL });
      expect([...(await (await reader()).checkMany([first.root, second.root, third.root], { readData: true })).values()]).toEqual([undefined, undefined, undefined]);

      // A byte of the second writer's first blob (c's first chunk): past the nonce, in the ciphertext.
      await rewrite(store, second.packs[0]!, (bytes) => {
        bytes[20]! ^= 0x01;
        return bytes;
      });
      const damaged = await (await reader()).checkMany([first.root, second.root, third.root], { readData: true });
      expect(damaged.get(first.root)).toBeUndefined();
      for (const root of [second.root, third.root]) expect(damaged.get(root)).toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /does not authenticate/ });
      // Without readData only structure is checked: indexed, packs there and long enough.
      expect([...(await (await reader()).checkMany([first.root, second.root, third.root])).values()]).toEqual([undefined, undefined, undefined]);
    });

    it('leaves a forged index out, and a stream without its index is not readable', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
      const data = content(1 << 20);
      const written = await stored(repository, data);
      await store.put(`${indexPrefix('shop')}${'ab'.repeat(32)}`, Readable.from([randomBytes(500)]));
      const reader = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
      expect(reader.rejectedIndexes).toEqual([{ key: `${indexPrefix('shop')}${'ab'.repeat(32)}`, why: 'it does not authenticate under the repository key' }]);
      expect(sha(await buffer(reader.readStream(written.root)))).toBe(sha(data));

      // Written but never committed (a backup killed before its index): not in any index.
      const uncommitted = await repository.writeStream(Readable.from([content(1 << 18)]));
      const later = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
      await expect(buffer(later.readStream(uncommitted.root))).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT', message: /not in its index/ });
    });

    it('collects what no live stream needs, and every live stream still reads back', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
      const shared = content(2 << 20);
      const a = await stored(repository, Buffer.concat([shared, randomBytes(2 << 20)]));
      const b = await stored(repository, Buffer.concat([shared, randomBytes(1 << 20)]));
      const before = await bytesUnder(store, packsPrefix('shop'));
      const dry = await (await openRepository(store, 'shop', keys, { create: true, ...SMALL })).collectGarbage([b.root], { repackUnused: 0.05, orphanAgeMs: 0, dryRun: true });
      expect(dry.deletedPacks).toBeGreaterThan(0);
      expect(await bytesUnder(store, packsPrefix('shop'))).toBe(before);

      const result = await (await openRepository(store, 'shop', keys, { create: true, ...SMALL })).collectGarbage([b.root], { repackUnused: 0.05, orphanAgeMs: 0 });
      expect(result).toMatchObject({ deletedPacks: dry.deletedPacks, repackedPacks: dry.repackedPacks });
      const after = await bytesUnder(store, packsPrefix('shop'));
      expect(after).toBeLessThan(before - (1 << 20)); // a's own 2 MiB (random: incompressible) is gone
      expect(await keysUnder(store, indexPrefix('shop'))).toHaveLength(1);
      const reader = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
      await expect(reader.check(b.root, { readData: true })).resolves.toMatchObject({ chunks: b.chunks });
      await expect(reader.check(a.root)).rejects.toMatchObject({ code: 'E_REPOSITORY_CORRUPT' });
      // Nothing left to do the second time.
      expect(await reader.collectGarbage([b.root], { repackUnused: 0.05, orphanAgeMs: 0 })).toMatchObject({ deletedPacks: 0, repackedPacks: 0 });
    });

    it('merges many index objects into one, nothing else to collect', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
      const streams = [];
      for (let i = 0; i < 18; i++) streams.push(await stored(repository, randomBytes(1 << 12)));
      expect(await keysUnder(store, indexPrefix('shop'))).toHaveLength(18);
      await repository.collectGarbage(streams.map((s) => s.root), { repackUnused: 0.05, orphanAgeMs: 0 });
      expect(await keysUnder(store, indexPrefix('shop'))).toHaveLength(1);
      const reader = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
      for (const { root } of streams) expect((await buffer(reader.readStream(root))).length).toBe(1 << 12);
    });

    it('a collection that stops at any store write leaves every live stream readable, and the next one finishes', async () => {
      const store = await makeStore();
      const keys = platformKey('k');
      const live: { root: string; data: Buffer }[] = [];
      const repository = await openRepository(store, 'shop', keys, { create: true, ...SMALL });
      // The middle stream is dropped: its chunks share packs with the others' (repacks), and fill some alone (deletes).
      for (let i = 0; i < 3; i++) {
        const data = Buffer.concat([content(1 << 20), randomBytes(1 << 19)]);
        const written = await stored(repository, data);
        if (i !== 1) live.push({ root: written.root, data });
      }
      const checkLive = async () => {
        const reader = await openRepository(store, 'shop', keys, { create: false, ...SMALL });
        for (const { root, data } of live) expect(sha(await buffer(reader.readStream(root)))).toBe(sha(data));
      };
      for (let allowed = 0; ; allowed++) {
        const failing = stopAfterWrites(store, allowed);
        const attempt = await openRepository(failing, 'shop', keys, { create: false, ...SMALL });
        const outcome = await attempt.collectGarbage(live.map((l) => l.root), { repackUnused: 0.05, orphanAgeMs: 0 }).then(
          () => 'done',
          (error: Error) => error.message,
        );
        await checkLive();
        if (outcome === 'done') break;
        expect(outcome).toBe('stopped');
        expect(allowed).toBeLessThan(50);
      }
    });

    it('stops a write on its signal', async () => {
      const store = await makeStore();
      const repository = await openRepository(store, 'shop', platformKey('k'), { create: true, ...SMALL });
      const controller = new AbortController();
      const endless = new Readable({
        read() {
          this.push(randomBytes(1 << 16));
        },
      });
      setTimeout(() => controller.abort(), 100);
      await expect(repository.writeStream(endless, { signal: controller.signal })).rejects.toMatchObject({ code: 'E_CANCELLED' });
    });
  });
}
