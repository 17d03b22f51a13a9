/** Hand-made RDB files: what a forger writes, byte by byte. */

/** An RDB string: 6-bit or 32-bit length, then the bytes. */
export function rdbString(value: string | Buffer): Buffer {
  const bytes = Buffer.from(value);
  if (bytes.length < 64) return Buffer.concat([Buffer.from([bytes.length]), bytes]);
  const length = Buffer.alloc(5);
  length[0] = 0x80;
  length.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([length, bytes]);
}

/**
 * An RDB of one key `k` = `v` in db 0, then a function library (opcode 0xF5) and a zero
 * checksum, which Redis does not check. Redis writes libraries before the first database, but
 * loads one anywhere at the top level: a check that stops looking at the first key misses it.
 */
export function rdbWithLibraryAfterKey(library: string): Buffer {
  return Buffer.concat([
    Buffer.from('REDIS0010'),
    Buffer.from([0xfe, 0x00]),
    Buffer.from([0x00]),
    rdbString('k'),
    rdbString('v'),
    Buffer.from([0xf5]),
    rdbString(library),
    Buffer.from([0xff]),
    Buffer.alloc(8),
  ]);
}
