import { readdir, readFile, readlink } from 'node:fs/promises';

/**
 * The established TCP connections process `pid` holds to `port` (any address): what a driver
 * has open to a server, seen from outside it — the socket inodes among its descriptors, matched
 * against its network namespace's /proc/PID/net/tcp{,6}.
 */
export async function connectionsTo(port: number, pid: number | 'self' = 'self'): Promise<number> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode) inodes.add(inode);
  }
  let count = 0;
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      const remotePort = Number.parseInt(fields[2]?.split(':')[1] ?? '', 16);
      const established = fields[3] === '01';
      if (established && remotePort === port && inodes.has(fields[9] ?? '')) count++;
    }
  }
  return count;
}
