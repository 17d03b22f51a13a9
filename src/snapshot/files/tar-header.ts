/**
 * POSIX tar (ustar + pax) header encoding for the pack worker.
 *
 * tar-stream 3 does not export its header encoder, and its `pack()` stream would copy every
 * chunk and run an async state machine per entry inside a worker that reads synchronously.
 * Encoding here also fixes what tar-stream's encoder gets wrong for backups: uids/gids above
 * 262143 and mtimes before 1970 or after 2038. A value that does not fit its ustar field goes
 * into a pax extended header, which GNU tar, bsdtar and tar-stream all read.
 */

export type TarEntryType = 'file' | 'link' | 'symlink' | 'directory';

export interface TarHeader {
  /** Relative path without a trailing '/' (added here for directories). */
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Whole seconds since the epoch: the precision of GNU tar's default format. */
  mtime: number;
  linkname?: string;
}

export const BLOCK = 512;

const TYPEFLAG: Record<TarEntryType, string> = { file: '0', link: '1', symlink: '2', directory: '5' };
const MAX_ID = 0o7777777;
const MAX_NUMBER = 0o77777777777;
const NAME_LENGTH = 100;
const PREFIX_LENGTH = 155;

/** One or more 512-byte blocks: a pax header and its records when needed, then the ustar header. */
export function encodeHeader(header: TarHeader): Buffer {
  const name = header.type === 'directory' ? `${header.name}/` : header.name;
  const pax: [string, string][] = [];

  const split = splitName(name);
  if (split === null) pax.push(['path', name]);
  const linkname = header.linkname ?? '';
  const linkFits = isAscii(linkname) && linkname.length <= NAME_LENGTH;
  if (!linkFits) pax.push(['linkpath', linkname]);
  const uidFits = fitsField(header.uid, MAX_ID);
  if (!uidFits) pax.push(['uid', String(header.uid)]);
  const gidFits = fitsField(header.gid, MAX_ID);
  if (!gidFits) pax.push(['gid', String(header.gid)]);
  const sizeFits = fitsField(header.size, MAX_NUMBER);
  if (!sizeFits) pax.push(['size', String(header.size)]);
  const mtimeFits = fitsField(header.mtime, MAX_NUMBER);
  if (!mtimeFits) pax.push(['mtime', String(header.mtime)]);

  const ustar = ustarBlock({
    name: split?.name ?? 'PaxHeader',
    prefix: split?.prefix ?? '',
    mode: header.mode & 0o7777,
    uid: uidFits ? header.uid : 0,
    gid: gidFits ? header.gid : 0,
    size: sizeFits ? header.size : 0,
    mtime: mtimeFits ? header.mtime : 0,
    typeflag: TYPEFLAG[header.type],
    linkname: linkFits ? linkname : '',
  });
  if (pax.length === 0) return ustar;

  const records = Buffer.from(pax.map(([key, value]) => paxRecord(key, value)).join(''), 'utf8');
  const paxHeader = ustarBlock({
    name: 'PaxHeader',
    prefix: '',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: records.length,
    mtime: 0,
    typeflag: 'x',
    linkname: '',
  });
  const padded = Buffer.alloc(padTo512(records.length));
  records.copy(padded);
  return Buffer.concat([paxHeader, padded, ustar]);
}

export function padTo512(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK;
}

interface UstarFields {
  name: string;
  prefix: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: string;
  linkname: string;
}

function ustarBlock(fields: UstarFields): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write(fields.name, 0, NAME_LENGTH, 'latin1');
  writeOctal(block, 100, 8, fields.mode);
  writeOctal(block, 108, 8, fields.uid);
  writeOctal(block, 116, 8, fields.gid);
  writeOctal(block, 124, 12, fields.size);
  writeOctal(block, 136, 12, fields.mtime);
  block.write(fields.typeflag, 156, 1, 'latin1');
  block.write(fields.linkname, 157, NAME_LENGTH, 'latin1');
  block.write('ustar\u000000', 257, 8, 'latin1');
  writeOctal(block, 329, 8, 0);
  writeOctal(block, 337, 8, 0);
  block.write(fields.prefix, 345, PREFIX_LENGTH, 'latin1');
  // The checksum is computed with its own field read as eight spaces.
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  writeOctal(block, 148, 7, sum);
  return block;
}

/** Zero-padded octal digits followed by a NUL, filling the field. */
function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(value.toString(8).padStart(length - 1, '0'), offset, length - 1, 'latin1');
  block[offset + length - 1] = 0;
}

function fitsField(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= max;
}

/** ustar stores names up to 255 ASCII bytes as prefix + '/' + name; null when pax is needed. */
function splitName(name: string): { prefix: string; name: string } | null {
  if (!isAscii(name)) return null;
  if (name.length <= NAME_LENGTH) return { prefix: '', name };
  // A directory's trailing '/' must stay in the name part, so search before it.
  let slash = name.lastIndexOf('/', name.length - 2);
  while (slash > 0) {
    if (slash <= PREFIX_LENGTH && name.length - slash - 1 <= NAME_LENGTH) {
      return { prefix: name.slice(0, slash), name: name.slice(slash + 1) };
    }
    if (name.length - slash - 1 > NAME_LENGTH) return null;
    slash = name.lastIndexOf('/', slash - 1);
  }
  return null;
}

function isAscii(text: string): boolean {
  return /^[\x01-\x7f]*$/.test(text);
}

/** "<length> <key>=<value>\n", where the length counts its own digits. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLength = Buffer.byteLength(body);
  let length = bodyLength + String(bodyLength).length;
  if (String(length).length !== String(bodyLength).length) length = bodyLength + String(length).length;
  return `${length}${body}`;
}
