import { lstat, readdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { AgentError, cancelled, throwIfCancelled, toAgentError } from '../../errors.ts';
import { entryPath, linkTargetPath, unsafeEntry } from './entry-path.ts';
import { StagingWriter, type EntryAttributes } from './staging-writer.ts';
import { TarEndCheck } from './tar-end-check.ts';

export interface ExtractOptions {
  signal?: AbortSignal;
  /** Default: only when running as root, the only user who can give files away. */
  restoreOwners?: boolean;
  /**
   * Keep the setuid and setgid bits of files (the service's `keepSetuid`). Default: cleared,
   * since a tar from a compromised node could plant a setuid-root program in a mount (issue #10).
   */
  keepSetuid?: boolean;
}

/** How many paths of entries whose setuid/setgid bits were cleared the stats keep. */
const CLEARED_PATHS = 5;

export interface ExtractStats {
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
  /** File content bytes. */
  bytes: number;
  /** Set when files were restored without the setuid/setgid bits their archive gave them: how many, the first paths. */
  setuidCleared?: { files: number; paths: string[] };
}

/** What tar-stream sets beyond its published types: decoded pax records, where the data starts. */
type ParsedHeader = Omit<tar.Header, 'pax'> & { pax?: Record<string, string> | null; byteOffset?: number };

/** An entry's data as tar-stream hands it over (a streamx Readable of Buffers). */
interface EntryContent extends AsyncIterable<Buffer> {
  resume(): unknown;
}

/**
 * Extracts a tar stream into `dest`, an existing empty directory (a staging directory).
 *
 * Refuses, with E_UNSAFE_ARCHIVE_ENTRY, any entry that could write outside `dest` or is not a
 * file, directory, symlink or hard link; a stream that is not a complete tar archive fails with
 * E_ARCHIVE_CORRUPT. On failure `dest` holds partial output: the caller discards it.
 */
export async function extractTree(source: Readable, dest: string, options: ExtractOptions = {}): Promise<ExtractStats> {
  const { signal } = options;
  throwIfCancelled(signal);
  await assertEmptyDirectory(dest);

  const writer = new StagingWriter(dest, options.restoreOwners ?? process.getuid?.() === 0);
  const stats: ExtractStats = { files: 0, directories: 0, symlinks: 0, hardlinks: 0, bytes: 0 };
  const keepSetuid = options.keepSetuid ?? false;
  const end = new TarEndCheck();
  const extractor = tar.extract();
  let applying: Promise<void> = Promise.resolve();
  let entryFailure: AgentError | undefined;
  extractor.on('entry', (parsed, stream, next) => {
    const header = parsed as ParsedHeader;
    const content = stream as EntryContent;
    // When the source fails, tar-stream destroys the current entry with its error, maybe before
    // applyEntry has begun to read it (it first creates the entry's parents): without a
    // listener that 'error' would crash the process. The failure still reaches the restore,
    // through the pipeline and through the entry's reader.
    stream.on('error', () => {});
    // NaN, should tar-stream stop reporting byteOffset, makes every archive fail the end check.
    end.entry(header.byteOffset ?? Number.NaN, header.type === 'directory' ? 0 : header.size);
    applying = applyEntry(writer, header, content, stats, keepSetuid).then(
      () => next(),
      (error: unknown) => {
        content.resume();
        // Anything failing here is ours, not the archive's: keep it apart from parse errors,
        // and remember it, since the pipeline may report only the premature close it causes.
        entryFailure ??= toAgentError(error, 'E_RESTORE_FAILED');
        next(entryFailure);
      },
    );
  });

  // pipeline() passes the archive's parse error on to the source as well: only an error the
  // source raised while the archive was still being read is the source's own.
  let sourceError: unknown;
  source.once('error', (error) => {
    if (!extractor.destroying) sourceError = error;
  });
  try {
    await pipeline(
      source,
      async function* observe(chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          end.observe(chunk);
          yield chunk;
        }
      },
      extractor,
      { signal },
    );
    if (!end.isComplete()) throw new Error('the archive ends without its end-of-archive marker');
    await writer.settled(); // the files still being written: a cancel meanwhile stops the restore
    throwIfCancelled(signal);
    await writer.finish();
    return stats;
  } catch (error) {
    // Entries being written hold files open: let them close before the caller discards dest.
    await applying;
    await writer.settled();
    if (signal?.aborted) throw cancelled(signal);
    // The source failed first (a damaged repository, a store gone): what the entry being
    // written saw ("stream was destroyed") is only its consequence.
    if (sourceError !== undefined) throw toAgentError(sourceError, 'E_RESTORE_FAILED');
    if (entryFailure) throw entryFailure;
    if (error instanceof AgentError) throw error;
    throw new AgentError(
      'E_ARCHIVE_CORRUPT',
      `cannot restore into ${dest}: the archive is corrupt or truncated (${(error as Error).message}); restore another backup`,
      { cause: error },
    );
  }
}

async function applyEntry(writer: StagingWriter, header: ParsedHeader, content: EntryContent, stats: ExtractStats, keepSetuid: boolean): Promise<void> {
  if (header.type !== 'file') content.resume();
  const path = entryPath(header.name);
  if (path === '' && header.type !== 'directory') throw unsafeEntry(header.name, 'it names the restore directory itself');
  const attributes = attributesOf(header);
  // Only files run as their owner or group: a setgid directory just passes its group on to new
  // entries, and the sticky bit only restricts deleting, so directories keep theirs.
  if (!keepSetuid && attributes.mode & SETUID_SETGID && header.type === 'file') {
    attributes.mode &= ~SETUID_SETGID;
    const cleared = (stats.setuidCleared ??= { files: 0, paths: [] });
    cleared.files++;
    if (cleared.paths.length < CLEARED_PATHS) cleared.paths.push(path);
  }
  // tar-stream leaves linkname null when the field is empty, whatever its types say.
  const linkname = header.linkname ?? '';
  switch (header.type) {
    case 'file':
      await writer.file(path, attributes, header.size, content);
      stats.files++;
      stats.bytes += header.size;
      return;
    case 'directory':
      // './' stands for the restore directory, whose owner and mode belong to the caller.
      if (path === '') return;
      await writer.directory(path, attributes);
      stats.directories++;
      return;
    case 'symlink':
      await writer.symlink(path, linkname, attributes);
      stats.symlinks++;
      return;
    case 'link':
      await writer.hardlink(path, linkTargetPath(header.name, linkname));
      stats.hardlinks++;
      return;
    default:
      throw unsafeEntry(
        header.name,
        `it is a ${header.type ?? 'entry of unknown type'}, and only files, directories, symbolic links and hard links are restored`,
      );
  }
}

const SETUID_SETGID = 0o6000;

/** pax records (GNU tar's posix format) carry ids and mtimes that the ustar fields cannot. */
function attributesOf(header: ParsedHeader): EntryAttributes {
  const pax = header.pax ?? {};
  const paxMtime = paxNumber(pax.mtime);
  return {
    mode: header.mode & 0o7777,
    uid: paxNumber(pax.uid) ?? header.uid,
    gid: paxNumber(pax.gid) ?? header.gid,
    mtime: paxMtime === undefined ? header.mtime : new Date(paxMtime * 1000),
  };
}

function paxNumber(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  return Number.isFinite(number) ? number : undefined;
}

async function assertEmptyDirectory(dest: string): Promise<void> {
  let empty: boolean;
  try {
    empty = (await lstat(dest)).isDirectory() && (await readdir(dest)).length === 0;
  } catch (error) {
    throw new AgentError('E_RESTORE_FAILED', `cannot restore into ${dest}: ${(error as Error).message}`, { cause: error });
  }
  if (!empty) {
    throw new AgentError('E_RESTORE_FAILED', `cannot restore into ${dest}: it must be an existing, empty directory`, {
      details: { path: dest },
    });
  }
}
