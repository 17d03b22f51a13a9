import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';

/**
 * Everything observable about a tree, path by path: kind, mode, owner, mtime, content hash or
 * link target. Two equal states mean the tree was restored (or left) exactly.
 */
export async function treeState(root: string): Promise<Record<string, string>> {
  const state: Record<string, string> = {};
  async function walk(dir: string): Promise<void> {
    for (const name of (await readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const rel = path.relative(root, full);
      const info = await lstat(full);
      const meta = `mode=${(info.mode & 0o7777).toString(8)} uid=${info.uid} gid=${info.gid}`;
      if (info.isSymbolicLink()) state[rel] = `link -> ${await readlink(full)} ${meta}`;
      else if (info.isDirectory()) {
        state[rel] = `dir ${meta} mtime=${Math.floor(info.mtimeMs / 1000)}`;
        await walk(full);
      } else {
        const hash = createHash('sha256').update(await readFile(full)).digest('hex');
        state[rel] = `file ${hash} ${meta} mtime=${Math.floor(info.mtimeMs / 1000)} nlink=${info.nlink}`;
      }
    }
  }
  await walk(root);
  return state;
}
