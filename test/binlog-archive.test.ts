import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BinlogArchive, type SegmentSealing } from '../src/snapshot/binlog/archive.ts';
import { signRecord, type KeyRing } from '../src/snapshot/manifest-mac.ts';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';

const ENV = 'shop';
const SERVICE = 'db';
const keys: KeyRing = { signing: { id: 'k1', secret: randomBytes(32) }, verifying: new Map() };
(keys.verifying as Map<string, Buffer>).set('k1', keys.signing.secret);
/** Row bytes an application wrote: what the bucket must never show in clear. */
const SECRET_ROW = Buffer.from('customer 4711: card 4000-1234-5678-9010, Elm Street 12');

/** Segment `seq` of binlog.000001, starting at `offset`. */
const segment = (seq: number, offset: number) => {
  const bytes = Buffer.concat([SECRET_ROW, Buffer.from(` #${seq} `), randomBytes(200)]);
  return { file: 'binlog.000001', offset, end: offset + bytes.length, bytes, firstEventMs: 1_000 + seq, lastEventMs: 2_000 + seq, lastGtid: `0-1-${seq}`, closed: false };
};

/**
 * The stored binlog, sealed (an environment with a repository) and not: what the bucket holds,
 * and what a reader refuses. The archive is written as the daemon's stream writes it; the key
 * stands in for the repository's binlog key (test/pitr-repository.test.ts runs the real one).
 */
describe('binlog archive: sealed segments', () => {
  let root: string;
  let store: FsObjectStore;
  let key: Buffer;
  let keyOpens: number;
  const sealing = (sealNew: boolean): SegmentSealing => ({
    sealNew,
    key: async () => {
      keyOpens++;
      return key;
    },
  });
  const chainDir = async () => {
    const pitr = path.join(root, ENV, 'pitr', SERVICE);
    const [chain] = await readdir(pitr);
    return { chain: chain!, dir: path.join(pitr, chain!) };
  };
  /** Writes `count` segments; the written bytes by seq. */
  const writeSegments = async (archive: BinlogArchive, count: number) => {
    const written: Buffer[] = [];
    for (let seq = 0, offset = 0; seq < count; seq++) {
      const next = segment(seq, offset); // each continues the last: the same file, from its end
      await archive.append(next, new AbortController().signal);
      written.push(next.bytes);
      offset = next.end;
    }
    return written;
  };

  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'binlog-archive-'));
    store = new FsObjectStore(root);
    key = randomBytes(32);
    keyOpens = 0;
  });
  afterEach(async () => rm(root, { recursive: true, force: true }));

  it('seals each segment: the bucket holds no row bytes and no zstd frame, and a reader gets the exact bytes back', async () => {
    const written = await writeSegments(new BinlogArchive(store, ENV, SERVICE, keys, sealing(true)), 3);
    const { chain, dir: chainPath } = await chainDir();
    for (const name of await readdir(chainPath)) {
      const bytes = await readFile(path.join(chainPath, name));
      expect(bytes.includes(SECRET_ROW.subarray(0, 16))).toBe(false);
      if (name.endsWith('.zst')) {
        expect(bytes.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe(false);
        await expect(promisify(zstdDecompress)(bytes)).rejects.toThrow();
      } else {
        const record = JSON.parse(bytes.toString('utf8')) as { sealed?: boolean };
        expect(record.sealed).toBe(true);
      }
    }
    const reader = new BinlogArchive(store, ENV, SERVICE, keys, sealing(false));
    for (let seq = 0; seq < 3; seq++) {
      expect((await reader.readSegment(await reader.readRecord(chain, seq))).equals(written[seq]!)).toBe(true);
    }
    expect(keyOpens).toBeGreaterThan(0);
  });

  it('a reader opens no key for an unsealed chain (an environment without a repository), and gets the bytes', async () => {
    const written = await writeSegments(new BinlogArchive(store, ENV, SERVICE, keys, sealing(false)), 2);
    expect(keyOpens).toBe(0);
    const { chain, dir: chainPath } = await chainDir();
    expect((await readFile(path.join(chainPath, '0000000000.zst'))).subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe(true);
    const reader = new BinlogArchive(store, ENV, SERVICE, keys, sealing(true));
    expect((await reader.readSegment(await reader.readRecord(chain, 1))).equals(written[1]!)).toBe(true);
    expect(keyOpens).toBe(0);
  });

  it('refuses a sealed segment moved to another seq, one under another key, and a record turned unsealed without the key', async () => {
    await writeSegments(new BinlogArchive(store, ENV, SERVICE, keys, sealing(true)), 3);
    const { chain, dir: chainPath } = await chainDir();
    const reader = new BinlogArchive(store, ENV, SERVICE, keys, sealing(false));
    const segmentPath = (seq: number) => path.join(chainPath, `${String(seq).padStart(10, '0')}.zst`);
    const recordPath = (seq: number) => path.join(chainPath, `${String(seq).padStart(10, '0')}.json`);

    // seq 1's sealed bytes stored as seq 2 (the record of 2 re-signed by a key holder to match
    // their size and sha256): the seal binds the place, so it still fails.
    const moved = await readFile(segmentPath(1));
    await writeFile(segmentPath(2), moved);
    const record2 = JSON.parse(await readFile(recordPath(2), 'utf8')) as Record<string, unknown>;
    const { mac: _mac, ...unsigned } = record2;
    const resigned = signRecord('storage-agent/binlog-record/v1\n', { ...unsigned, storedBytes: moved.length, sha256: createHash('sha256').update(moved).digest('hex') }, keys);
    await writeFile(recordPath(2), JSON.stringify(resigned));
    await expect(reader.readSegment(await reader.readRecord(chain, 2))).rejects.toMatchObject({ code: 'E_BINLOG_CHAIN', message: expect.stringContaining('does not match its record') });

    // The right bytes, opened with another repository's key.
    const otherKey = new BinlogArchive(store, ENV, SERVICE, keys, { sealNew: false, key: async () => randomBytes(32) });
    await expect(otherKey.readSegment(await otherKey.readRecord(chain, 1))).rejects.toMatchObject({ code: 'E_BINLOG_CHAIN' });

    // `sealed` dropped from a record by someone without the platform key: its MAC fails.
    const record0 = JSON.parse(await readFile(recordPath(0), 'utf8')) as Record<string, unknown>;
    delete record0.sealed;
    await writeFile(recordPath(0), JSON.stringify(record0));
    await expect(reader.readRecord(chain, 0)).rejects.toMatchObject({ code: 'E_BINLOG_CHAIN', message: expect.stringContaining('not authenticated') });
    // The untouched segment still reads.
    expect((await reader.readSegment(await reader.readRecord(chain, 1))).includes(SECRET_ROW)).toBe(true);
  });

  it("a record's newest event time never goes back: events replayed with their older times after newer ones", async () => {
    const archive = new BinlogArchive(store, ENV, SERVICE, keys, sealing(false));
    const first = segment(0, 0);
    await archive.append({ ...first, firstEventMs: 5_000, lastEventMs: 9_000 }, new AbortController().signal);
    // `mariadb-binlog | mysql` into another database: the server logs those rows with the times they first had.
    await archive.append({ ...segment(1, first.end), firstEventMs: 3_000, lastEventMs: 4_000 }, new AbortController().signal);
    const { chain } = await chainDir();
    const reader = new BinlogArchive(store, ENV, SERVICE, keys, sealing(false));
    expect(await reader.readRecord(chain, 1)).toMatchObject({ firstEventMs: 3_000, lastEventMs: 9_000 });
  });

  it('a key that cannot be opened fails the append with its own error and stores nothing', async () => {
    const archive = new BinlogArchive(store, ENV, SERVICE, keys, {
      sealNew: true,
      key: async () => {
        throw Object.assign(new Error('the repository of environment shop cannot be opened'), { code: 'E_REPOSITORY_KEY' });
      },
    });
    await expect(archive.append(segment(0, 0), new AbortController().signal)).rejects.toMatchObject({ code: 'E_REPOSITORY_KEY' });
    await expect(readdir(path.join(root, ENV, 'pitr'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
