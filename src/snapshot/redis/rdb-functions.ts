import { open, type FileHandle } from 'node:fs/promises';
import { AgentError, throwIfCancelled } from '../../errors.ts';

/*
 * Finds the function libraries an RDB carries (issue #10). A library is Lua code the target
 * runs with the whole keyspace within reach, and loading an RDB replaces the target's: a forged
 * RDB could plant one, or replace a function the application calls. Redis writes them before
 * the first database, but its loader takes the opcode anywhere at top level, so the whole file
 * is walked: every value is skipped by its encoding, nothing is held but the libraries' code.
 */

const OP_SLOT_INFO = 0xf4;
const OP_FUNCTION2 = 0xf5;
const OP_FUNCTION_PRE_GA = 0xf6;
const OP_MODULE_AUX = 0xf7;
const OP_IDLE = 0xf8;
const OP_FREQ = 0xf9;
const OP_AUX = 0xfa;
const OP_RESIZEDB = 0xfb;
const OP_EXPIRETIME_MS = 0xfc;
const OP_EXPIRETIME = 0xfd;
const OP_SELECTDB = 0xfe;
const OP_EOF = 0xff;

/** Value types whose whole value is one string (ziplist, intset and listpack encodings). */
const ONE_STRING = new Set([0, 9, 10, 11, 12, 13, 16, 17, 20]);

const MAX_LIBRARY_BYTES = 64 * 1024 * 1024;

/** Reads a file forward through a 1 MiB window; long strings are skipped without reading. */
class Cursor {
  readonly #handle: FileHandle;
  readonly #size: number;
  #buffer = Buffer.alloc(0);
  #start = 0;
  position = 0;

  constructor(handle: FileHandle, size: number) {
    this.#handle = handle;
    this.#size = size;
  }

  async bytes(n: number): Promise<Buffer> {
    if (this.position + n > this.#size) throw truncated(this.position);
    if (this.position < this.#start || this.position + n > this.#start + this.#buffer.length) {
      const length = Math.max(n, 1 << 20);
      const buffer = Buffer.alloc(Math.min(length, this.#size - this.position));
      await this.#handle.read(buffer, 0, buffer.length, this.position);
      this.#buffer = buffer;
      this.#start = this.position;
    }
    const at = this.position - this.#start;
    this.position += n;
    return this.#buffer.subarray(at, at + n);
  }

  async byte(): Promise<number> {
    return (await this.bytes(1))[0]!;
  }

  skip(n: number): void {
    if (this.position + n > this.#size) throw truncated(this.position);
    this.position += n;
  }

  /** A length; `encoded` when it is a special string encoding (an integer or LZF). */
  async length(): Promise<{ value: number; encoded: boolean }> {
    const first = await this.byte();
    const kind = first >> 6;
    if (kind === 0) return { value: first & 0x3f, encoded: false };
    if (kind === 1) return { value: ((first & 0x3f) << 8) | (await this.byte()), encoded: false };
    if (kind === 3) return { value: first & 0x3f, encoded: true };
    if (first === 0x80) return { value: (await this.bytes(4)).readUInt32BE(0), encoded: false };
    if (first === 0x81) {
      const value = (await this.bytes(8)).readBigUInt64BE(0);
      if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(this.position, 'a length beyond the file');
      return { value: Number(value), encoded: false };
    }
    throw corrupt(this.position, `an unknown length encoding 0x${first.toString(16)}`);
  }

  async count(): Promise<number> {
    const { value, encoded } = await this.length();
    if (encoded) throw corrupt(this.position, 'an encoded string where a length belongs');
    return value;
  }

  /** A string: skipped, or read (and decompressed) when `keep`. */
  async string(keep = false): Promise<Buffer | undefined> {
    const { value, encoded } = await this.length();
    if (!encoded) {
      if (!keep) {
        this.skip(value);
        return undefined;
      }
      if (value > MAX_LIBRARY_BYTES) throw corrupt(this.position, 'a function library over 64 MiB');
      return Buffer.from(await this.bytes(value));
    }
    if (value <= 2) {
      const bytes = await this.bytes(1 << value);
      return keep ? Buffer.from(String(value === 0 ? bytes.readInt8(0) : value === 1 ? bytes.readInt16LE(0) : bytes.readInt32LE(0))) : undefined;
    }
    if (value !== 3) throw corrupt(this.position, `an unknown string encoding ${value}`);
    const compressed = await this.count();
    const length = await this.count();
    if (!keep) {
      this.skip(compressed);
      return undefined;
    }
    if (length > MAX_LIBRARY_BYTES) throw corrupt(this.position, 'a function library over 64 MiB');
    return lzfDecompress(await this.bytes(compressed), length, this.position);
  }
}

/**
 * The function libraries in an RDB file, by name (`#!lua name=<lib>`; "?" when the code has
 * no such line). Fails E_ARCHIVE_CORRUPT on bytes that are no RDB, and E_RESTORE_FAILED on a
 * value type this walker does not know, naming the way out.
 */
export async function rdbFunctionLibraries(file: string, signal: AbortSignal): Promise<string[]> {
  const handle = await open(file, 'r');
  try {
    const cursor = new Cursor(handle, (await handle.stat()).size);
    cursor.skip(9); // REDIS0010: checked by checkRdb
    const libraries: string[] = [];
    for (let records = 0; ; records++) {
      if ((records & 0xffff) === 0) throwIfCancelled(signal);
      const type = await cursor.byte();
      switch (type) {
        case OP_EOF:
          return libraries;
        case OP_FUNCTION2: {
          const code = (await cursor.string(true))!.toString('utf8');
          libraries.push(/^#!\w+[^\n]*\bname=(\S+)/.exec(code)?.[1] ?? '?');
          continue;
        }
        case OP_FUNCTION_PRE_GA:
          // Redis 7.0 release candidates' format: a function all the same; its layout is not walked.
          libraries.push('?');
          return libraries;
        case OP_SELECTDB:
        case OP_IDLE:
          await cursor.count();
          continue;
        case OP_RESIZEDB:
          await cursor.count();
          await cursor.count();
          continue;
        case OP_SLOT_INFO:
          for (let k = 0; k < 3; k++) await cursor.count();
          continue;
        case OP_AUX:
          await cursor.string();
          await cursor.string();
          continue;
        case OP_EXPIRETIME_MS:
          cursor.skip(8);
          continue;
        case OP_EXPIRETIME:
          cursor.skip(4);
          continue;
        case OP_FREQ:
          cursor.skip(1);
          continue;
        case OP_MODULE_AUX:
          await cursor.count(); // module id
          await cursor.count(); // when opcode
          await cursor.count(); // when
          await skipModuleValue(cursor);
          continue;
        default:
          await cursor.string(); // the key
          await skipValue(cursor, type);
      }
    }
  } finally {
    await handle.close();
  }
}

async function skipValue(cursor: Cursor, type: number): Promise<void> {
  if (ONE_STRING.has(type)) {
    await cursor.string();
    return;
  }
  switch (type) {
    case 1: // list
    case 2: // set
    case 14: {
      // quicklist: ziplists
      for (let n = await cursor.count(); n > 0; n--) await cursor.string();
      return;
    }
    case 3: {
      // zset: member, then a double as a length-prefixed string (253-255: NaN, ±inf)
      for (let n = await cursor.count(); n > 0; n--) {
        await cursor.string();
        const length = await cursor.byte();
        if (length < 253) cursor.skip(length);
      }
      return;
    }
    case 4: {
      for (let n = await cursor.count() * 2; n > 0; n--) await cursor.string();
      return;
    }
    case 5: {
      // zset 2: member, then a binary double
      for (let n = await cursor.count(); n > 0; n--) {
        await cursor.string();
        cursor.skip(8);
      }
      return;
    }
    case 7:
      await cursor.count(); // module id
      await skipModuleValue(cursor);
      return;
    case 18: {
      // quicklist 2: container kind, then the node
      for (let n = await cursor.count(); n > 0; n--) {
        await cursor.count();
        await cursor.string();
      }
      return;
    }
    case 15:
    case 19:
    case 21:
      await skipStream(cursor, type);
      return;
    default:
      throw new AgentError(
        'E_RESTORE_FAILED',
        `the backup's RDB holds a value of type ${type} (at byte ${cursor.position}), which this agent cannot walk to look for function libraries (a newer Redis, or a pre-release module format); ` +
          'set functions: keep on the redis service to restore it without that check',
      );
  }
}

async function skipStream(cursor: Cursor, type: number): Promise<void> {
  for (let n = await cursor.count(); n > 0; n--) {
    await cursor.string(); // master id
    await cursor.string(); // listpack
  }
  const ids = type >= 19 ? 8 : 3; // length, last id (2); then first id, max deleted id (2 each), entries added
  for (let k = 0; k < ids; k++) await cursor.count();
  for (let groups = await cursor.count(); groups > 0; groups--) {
    await cursor.string();
    await cursor.count();
    await cursor.count();
    if (type >= 19) await cursor.count(); // entries read
    for (let pending = await cursor.count(); pending > 0; pending--) {
      cursor.skip(16 + 8); // id, delivery time
      await cursor.count(); // delivery count
    }
    for (let consumers = await cursor.count(); consumers > 0; consumers--) {
      await cursor.string();
      cursor.skip(type >= 21 ? 16 : 8); // seen time (and active time)
      for (let pending = await cursor.count(); pending > 0; pending--) cursor.skip(16);
    }
  }
}

/** A module value in the self-describing MODULE_2 format: typed fields until EOF (0). */
async function skipModuleValue(cursor: Cursor): Promise<void> {
  for (;;) {
    const opcode = await cursor.count();
    if (opcode === 0) return;
    if (opcode === 1 || opcode === 2) await cursor.count();
    else if (opcode === 3) cursor.skip(4);
    else if (opcode === 4) cursor.skip(8);
    else if (opcode === 5) await cursor.string();
    else throw corrupt(cursor.position, `an unknown module field opcode ${opcode}`);
  }
}

/** LZF (liblzf's lzf_d.c), as Redis compresses long strings. */
function lzfDecompress(input: Buffer, length: number, at: number): Buffer {
  const output = Buffer.alloc(length);
  let i = 0;
  let o = 0;
  while (i < input.length) {
    const control = input[i++]!;
    if (control < 32) {
      const n = control + 1;
      if (o + n > length || i + n > input.length) throw corrupt(at, 'a damaged LZF string');
      input.copy(output, o, i, i + n);
      i += n;
      o += n;
    } else {
      let n = control >> 5;
      if (n === 7) n += input[i++]!;
      const back = o - ((control & 0x1f) << 8) - input[i++]! - 1;
      n += 2;
      if (back < 0 || o + n > length) throw corrupt(at, 'a damaged LZF string');
      for (let k = 0; k < n; k++) output[o++] = output[back + k]!;
    }
  }
  if (o !== length) throw corrupt(at, 'a damaged LZF string');
  return output;
}

function truncated(at: number): AgentError {
  return corrupt(at, 'its end before the EOF opcode');
}

function corrupt(at: number, what: string): AgentError {
  return new AgentError('E_ARCHIVE_CORRUPT', `the backup's RDB has ${what} (at byte ${at}); restore another backup`);
}
