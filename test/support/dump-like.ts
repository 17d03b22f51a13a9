import { createHash } from 'node:crypto';

/**
 * Rows of a mysqldump-like INSERT, each of random-looking values (a chunk dedups against nothing
 * but itself), the same every run. Where the chunks are cut still differs (each repository's
 * chunker has a key of its own), and edits move a few cuts in some runs: a second generation
 * costs 0.70–1.01 % of the first (120 runs: bench/delta-spread.ts, docs/repository.md).
 */
export function dumpLike(bytes: number, generation: number): Buffer {
  const rows: string[] = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const row = `(${i},'${createHash('sha256').update(`orders:${i}`).digest('hex').slice(0, 12)}',${generation},'2026-12-0${(i % 9) + 1}')`;
    rows.push(row);
    length += row.length + 1;
  }
  return Buffer.from(`INSERT INTO orders VALUES ${rows.join(',')};\n`).subarray(0, bytes);
}

/** The dump with one row in a hundred changed in place (its generation field). */
export function editRows(dump: Buffer, generation: number): Buffer {
  const edited = dump.toString('latin1').replace(/\((\d+),'([0-9a-f]+)',\d,/g, (row, i: string, hex: string) => (Number(i) % 100 === 7 ? `(${i},'${hex}',${generation},` : row));
  return Buffer.from(edited, 'latin1');
}
