import { AgentError } from '../../errors.ts';

/**
 * The path an archive entry names, relative to the restore directory: '' for the directory
 * itself ('.' or './', as `tar -C dir .` writes), otherwise components joined by '/'.
 * Anything that could reach outside the restore directory is refused.
 */
export function entryPath(name: string): string {
  const { path, problem } = parse(name);
  if (problem !== undefined) throw unsafeEntry(name, problem);
  return path;
}

/** The same rules for where a hard link entry points, reported against the entry. */
export function linkTargetPath(entry: string, target: string): string {
  const { path, problem } = parse(target);
  if (problem !== undefined) throw unsafeEntry(entry, `its hard link target ${JSON.stringify(target)}: ${problem}`);
  return path;
}

export function unsafeEntry(name: string, reason: string): AgentError {
  return new AgentError(
    'E_UNSAFE_ARCHIVE_ENTRY',
    `refusing archive entry ${JSON.stringify(name)}: ${reason}. Nothing is restored from this archive; it was not written by storage-agent or has been tampered with`,
    { details: { entry: name } },
  );
}

function parse(name: string): { path: string; problem?: string } {
  if (name === '') return { path: '', problem: 'the name is empty' };
  if (name.includes('\0')) return { path: '', problem: 'the name contains a NUL byte' };
  if (name.startsWith('/')) return { path: '', problem: 'it is an absolute path' };
  const parts = name.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) return { path: '', problem: "it has a '..' component" };
  return { path: parts.join('/') };
}
