import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { sleep, waitFor } from './daemon.ts';

/**
 * The newest event time (ms) the stored binlog records of one service carry, read as files of
 * an fs store (`<store>/<env>/pitr/<service>`: a test trusts its own store); 0 when none.
 */
export async function newestStoredEventMs(serviceDir: string): Promise<number> {
  let newest = 0;
  for (const name of await readdir(serviceDir, { recursive: true }).catch(() => [])) {
    if (!name.endsWith('.json')) continue;
    const record = JSON.parse(await readFile(path.join(serviceDir, name), 'utf8')) as { lastEventMs: number | null };
    newest = Math.max(newest, record.lastEventMs ?? 0);
  }
  return newest;
}

/**
 * Waits until the stream has stored an event of a second after `second`, so that every
 * transaction of that second is in storage: once the server's clock has passed it, `mark`
 * writes a row, and its event is waited for.
 */
export async function waitStoredPast(serviceDir: string, second: number, server: { second(): Promise<number>; mark(): Promise<unknown> }): Promise<void> {
  while ((await server.second()) <= second) await sleep(200);
  await server.mark();
  await waitFor(`the stream to store past ${second}`, async () => (await newestStoredEventMs(serviceDir)) > second * 1000, 60_000);
}
