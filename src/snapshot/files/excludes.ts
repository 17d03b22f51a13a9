/**
 * Exclude patterns for packing a tree, gitignore-like and relative to the packed root:
 *
 * - `cache`, `*.tmp`: a pattern without '/' matches an entry's name at any depth.
 * - `styles/`: a trailing '/' restricts the pattern to directories.
 * - `web/sites/default/files/css`, `/cache`: any other '/' anchors the pattern at the root; it
 *   is matched against the whole relative path.
 * - Globs (picomatch): `*` and `?` stay within one path component, `**` spans components,
 *   `[abc]` and `{a,b}` work. `*` also matches names starting with '.', as in gitignore.
 * - No negation: a pattern starting with '!' is rejected rather than silently read literally.
 *
 * An excluded directory is not descended into, so nothing below it is packed.
 *
 * picomatch rather than node's `path.matchesGlob`: the latter cannot let `*` match dotfiles
 * (`*.tmp` would miss `.draft.tmp`), and picomatch compiles each pattern once.
 */
import picomatch from 'picomatch';
import { AgentError } from '../../errors.ts';

export type ExcludeMatcher = (relativePath: string, isDirectory: boolean) => boolean;

interface CompiledPattern {
  directoryOnly: boolean;
  anchored: boolean;
  test: (path: string) => boolean;
}

export function compileExcludes(patterns: readonly string[]): ExcludeMatcher {
  const compiled = patterns.map(compilePattern);
  if (compiled.length === 0) return () => false;
  return (relativePath, isDirectory) => {
    const slash = relativePath.lastIndexOf('/');
    const basename = slash === -1 ? relativePath : relativePath.slice(slash + 1);
    return compiled.some(
      (pattern) =>
        (isDirectory || !pattern.directoryOnly) && pattern.test(pattern.anchored ? relativePath : basename),
    );
  };
}

function compilePattern(pattern: string): CompiledPattern {
  const directoryOnly = pattern.endsWith('/');
  let body = directoryOnly ? pattern.slice(0, -1) : pattern;
  const anchored = body.includes('/');
  if (body.startsWith('/')) body = body.slice(1);
  if (body === '' || body.startsWith('!')) {
    throw new AgentError(
      'E_CONFIG_INVALID',
      `exclude pattern ${JSON.stringify(pattern)} is not supported: give a name, a glob or a path relative to the files root (negation with '!' is not supported)`,
      { details: { pattern } },
    );
  }
  return { directoryOnly, anchored, test: picomatch(body, { dot: true }) };
}
