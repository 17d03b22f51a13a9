/**
 * The benchmark's input trees: deterministic, generated once and reused.
 *
 * `npx node bench/tree.ts DIR SIZE` (SIZE such as 1g) makes or checks one tree. A tree of
 * SIZE has the same 20,000 small files (1–200 KiB, log-uniform, ~735 MiB) in 1,000
 * directories, plus as many 50 MiB files under large/ as bring it to SIZE: 6 for 1g, 47 for
 * 3g. Content is a mix of log-like text and random bytes, tuned so `zstd -1` compresses it
 * ~2.3×, like real uploads. The same SIZE always gives the same bytes (seeded generators:
 * a xorshift PRNG for sizes, templates and words, AES-256-CTR for the random parts).
 *
 * A marker file beside the tree (DIR.ready, holding the generator version and the totals) is
 * written last; a tree without it is removed and made again.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Bump when the generated content changes, so cached trees are made again. */
const GENERATOR_VERSION = 4;
const SMALL_FILES = 20_000;
const TOP_DIRS = 40;
const SUB_DIRS = 25;
const MIN_SMALL = 1024;
const MAX_SMALL = 200 * 1024;
const LARGE_FILE = 50 * 1024 * 1024;
/** Share of 4–64 KiB segments that are random bytes instead of text. */
const RANDOM_SHARE = 0.18;
/** Share of template words replaced by another word, and one number per this many words. */
const SWAP_SHARE = 0.15;
const NUMBER_EVERY = 12;
/** Fixed mtime (2024-01-01): the archives of a tree do not depend on when it was made. */
const MTIME = new Date('2024-01-01T00:00:00Z');

export interface TreeInfo {
  version: number;
  dir: string;
  targetBytes: number;
  files: number;
  directories: number;
  bytes: number;
}

/** "1g", "512m", "3G", "1.5g" → bytes (binary units). */
export function parseTreeSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)([kmg])i?b?$/i.exec(text.trim());
  if (!match) throw new Error(`tree size ${JSON.stringify(text)}: use a size such as 1g or 512m`);
  const unit = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[match[2]!.toLowerCase() as 'k' | 'm' | 'g'];
  return Math.round(Number(match[1]) * unit);
}

/** Returns the tree's info, generating it first unless its marker says it is complete. */
export function ensureTree(dir: string, targetBytes: number, log: (line: string) => void = () => {}): TreeInfo {
  const marker = `${dir}.ready`;
  if (existsSync(marker)) {
    try {
      const info = JSON.parse(readFileSync(marker, 'utf8')) as TreeInfo;
      if (info.version === GENERATOR_VERSION && info.targetBytes === targetBytes && existsSync(dir)) return { ...info, dir };
    } catch {
      // unreadable marker: make the tree again
    }
  }
  rmSync(marker, { force: true });
  rmSync(dir, { recursive: true, force: true });
  log(`generating ${dir} (${(targetBytes / 1024 ** 3).toFixed(2)} GiB, once; reused while ${marker} exists)`);
  const started = performance.now();
  const info = generate(dir, targetBytes);
  writeFileSync(marker, `${JSON.stringify(info, null, 2)}\n`);
  log(`generated ${info.files} files, ${(info.bytes / 1024 ** 2).toFixed(0)} MiB in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return info;
}

function generate(dir: string, targetBytes: number): TreeInfo {
  const sizes = new Rng(1);
  const smallSizes = Array.from({ length: SMALL_FILES }, () => Math.round(MIN_SMALL * (MAX_SMALL / MIN_SMALL) ** sizes.next()));
  const smallBytes = smallSizes.reduce((a, b) => a + b, 0);
  const largeCount = Math.max(0, Math.round((targetBytes - smallBytes) / LARGE_FILE));
  const content = new Content(`tree-${targetBytes}`);
  let directories = 0;
  let bytes = 0;
  mkdirSync(dir, { recursive: true });
  const extensions = ['.txt', '.log', '.json', '.html', '.bin', '.dat', '.csv', '.php'];
  for (let t = 0; t < TOP_DIRS; t++) {
    for (let s = 0; s < SUB_DIRS; s++) {
      const sub = path.join(dir, `site-${String(t).padStart(2, '0')}`, `d${String(s).padStart(2, '0')}`);
      mkdirSync(sub, { recursive: true });
      directories += s === 0 ? 2 : 1;
      const perDir = SMALL_FILES / (TOP_DIRS * SUB_DIRS);
      for (let f = 0; f < perDir; f++) {
        const index = (t * SUB_DIRS + s) * perDir + f;
        const size = smallSizes[index]!;
        const file = path.join(sub, `file-${String(index).padStart(5, '0')}${extensions[index % extensions.length]}`);
        writeFileSync(file, content.bytes(size));
        utimesSync(file, MTIME, MTIME);
        bytes += size;
      }
    }
  }
  if (largeCount > 0) {
    const large = path.join(dir, 'large');
    mkdirSync(large);
    directories++;
    for (let i = 0; i < largeCount; i++) {
      const file = path.join(large, `blob-${String(i).padStart(3, '0')}.dat`);
      writeFileSync(file, content.bytes(LARGE_FILE));
      utimesSync(file, MTIME, MTIME);
      bytes += LARGE_FILE;
    }
  }
  return { version: GENERATOR_VERSION, dir, targetBytes, files: SMALL_FILES + largeCount, directories, bytes };
}

/** xorshift32: fast, seeded, good enough for choosing words, sizes and files to change. */
export class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = (seed * 2654435761) >>> 0 || 1;
  }
  u32(): number {
    let x = this.#state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.#state = x;
    return x;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** File contents: segments of log-like text and random bytes. */
class Content {
  readonly #rng: Rng;
  readonly #cipher;
  readonly #words: Buffer[];
  readonly #templates: number[][];
  readonly #levels = ['INFO', 'DEBUG', 'WARN', 'ERROR', 'INFO', 'INFO', 'DEBUG', 'TRACE'].map((l) => Buffer.from(` ${l} `));
  #clock = 1_700_000_000;

  constructor(seed: string) {
    const key = createHash('sha256').update(seed).digest();
    this.#rng = new Rng(key.readUInt32LE(0));
    this.#cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
    const letters = 'etaoinshrdlcumwfgypbvkjxqz';
    this.#words = Array.from({ length: 8192 }, () => {
      const length = 2 + this.#rng.below(9);
      let word = '';
      for (let i = 0; i < length; i++) word += letters[Math.floor(letters.length * this.#rng.next() ** 2)];
      return Buffer.from(word);
    });
    this.#templates = Array.from({ length: 256 }, () => Array.from({ length: 6 + this.#rng.below(15) }, () => Math.floor(8192 * this.#rng.next() ** 3)));
  }

  bytes(size: number): Buffer {
    const out = Buffer.allocUnsafe(size);
    let at = 0;
    while (at < size) {
      const segment = Math.min(size - at, 4096 + this.#rng.below(60 * 1024));
      if (this.#rng.next() < RANDOM_SHARE) this.#random(out, at, segment);
      else this.#text(out, at, segment);
      at += segment;
    }
    return out;
  }

  #random(out: Buffer, at: number, length: number): void {
    this.#cipher.update(out.subarray(at, at + length)).copy(out, at);
  }

  /** Log lines: a timestamp, a level, one of 256 templates of 6–20 words with some words swapped, numbers. */
  #text(out: Buffer, start: number, length: number): void {
    const end = start + length;
    const rng = this.#rng;
    let at = start;
    while (at < end) {
      this.#clock += rng.below(3);
      at += out.write(`${this.#clock}.${String(rng.below(1000)).padStart(3, '0')}`, at, end - at, 'latin1');
      if (at >= end) break;
      at += this.#levels[rng.below(8)]!.copy(out, at);
      const template = this.#templates[Math.floor(256 * rng.next() ** 2)]!;
      for (let w = 0; w < template.length && at < end; w++) {
        const u = rng.next();
        const word = u < SWAP_SHARE ? this.#words[Math.floor(8192 * u * u * (1 / SWAP_SHARE) ** 2)]! : this.#words[template[w]!]!;
        at += word.copy(out, at);
        if (at < end) out[at++] = w === template.length - 1 ? 0x0a : 0x20;
        if (rng.below(NUMBER_EVERY) === 0 && at < end) at += out.write(`${rng.below(100000)} `, at, end - at, 'latin1');
      }
    }
  }
}

if (import.meta.main) {
  const [dir, size] = process.argv.slice(2);
  if (!dir || !size) {
    console.error('usage: npx node bench/tree.ts DIR SIZE   (SIZE: 1g, 3g, 512m, ...)');
    process.exit(2);
  }
  const info = ensureTree(path.resolve(dir), parseTreeSize(size), (line) => console.error(line));
  console.log(JSON.stringify(info));
}
