/**
 * The URL of a module beside `base` (the caller's import.meta.url) that is loaded by path
 * rather than imported: a worker thread's or a child process's entry. `name` has no extension:
 * it takes the caller's own — `.ts` when the agent runs from its sources (Node strips the
 * types), `.js` when it runs from the build (dist/), since tsc rewrites import specifiers but
 * not the paths handed to `new Worker()` or `spawn()`.
 */
export function siblingModule(base: string, name: string): URL {
  return new URL(`./${name}${base.slice(base.lastIndexOf('.'))}`, base);
}
