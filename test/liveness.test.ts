import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { currentProcess, isAlive, isProcessAlive, processStartTime } from '../src/liveness.ts';
import { CrashJournal } from '../src/snapshot/crash-journal.ts';
import { waitFor } from './support/daemon.ts';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

function state(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/stat`, 'utf8').then((text) => text.slice(text.lastIndexOf(')') + 2).split(' ')[0]!);
}

/**
 * A zombie: `sleep 0.1` exits under a parent that never reaps it (the shell exec'd into
 * `sleep 5`, which does not wait for children). Resolves to the zombie's pid.
 */
async function zombie(): Promise<number> {
  const parent = spawn('sh', ['-c', 'sleep 0.1 & echo $!; exec sleep 5'], { stdio: ['ignore', 'pipe', 'ignore'] });
  children.push(parent);
  const pid = Number(await new Promise<string>((resolve) => parent.stdout!.once('data', (chunk: Buffer) => resolve(chunk.toString().trim()))));
  await waitFor('the child to become a zombie', async () => (await state(pid)) === 'Z', 5_000);
  return pid;
}

describe('liveness: pid plus start time, and a zombie is dead', () => {
  it('a zombie exists for kill(pid, 0) but is not alive', async () => {
    const pid = await zombie();
    expect(() => process.kill(pid, 0)).not.toThrow(); // what liveness used to trust
    expect(isProcessAlive(pid)).toBe(false);
    expect(isAlive({ pid, startTime: processStartTime(pid) })).toBe(false);
    expect(isAlive({ pid, startTime: null })).toBe(false);
  });

  it('a reused pid (another start time) is another process', () => {
    const self = currentProcess();
    expect(self.startTime).toEqual(expect.any(Number));
    expect(isAlive(self)).toBe(true);
    expect(isAlive({ pid: self.pid, startTime: self.startTime! + 1 })).toBe(false);
    expect(isAlive({ pid: self.pid, startTime: null })).toBe(true);
  });

  it('an exited, reaped process and impossible pids are dead', async () => {
    const child = spawn('true');
    const pid = child.pid!;
    await new Promise((resolve) => child.once('exit', resolve));
    expect(isProcessAlive(pid)).toBe(false);
    for (const bad of [0, -1, 1.5]) expect(isProcessAlive(bad)).toBe(false);
  });
});

describe('crash journal records name their owner by pid and start time', () => {
  const schema = z.object({ pid: z.number().int(), what: z.string() });
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a live owner is not a leftover; a zombie, a reused pid and a legacy record of our own pid are', async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sa-liveness-'));
    const journal = new CrashJournal(dir, 'things', schema);
    const mine = await journal.record('mine', { pid: process.pid, what: 'live' });
    expect(JSON.parse(await readFile(mine, 'utf8'))).toEqual({ pid: process.pid, startTime: currentProcess().startTime, what: 'live' });

    const sleeper = spawn('sleep', ['5']);
    children.push(sleeper);
    const zombiePid = await zombie();
    const write = (name: string, record: object) => writeFile(path.join(dir!, 'things', `${name}.json`), JSON.stringify(record));
    await write('zombie', { pid: zombiePid, startTime: processStartTime(zombiePid), what: 'zombie' });
    await write('reused', { pid: sleeper.pid, startTime: processStartTime(sleeper.pid!)! - 1, what: 'reused' });
    await write('legacy-other', { pid: sleeper.pid, what: 'legacy, live pid' });
    await write('legacy-own', { pid: process.pid, what: 'legacy, our pid: an earlier process' });

    const leftovers = (await journal.leftovers()).map((l) => l.record.what).sort();
    expect(leftovers).toEqual(['legacy, our pid: an earlier process', 'reused', 'zombie']);
    const entries = await journal.entries();
    expect(entries.filter((e) => e.ownerAlive).map((e) => e.record.what).sort()).toEqual(['legacy, live pid', 'live']);
    await journal.remove(mine);
    expect((await readdir(path.join(dir, 'things'))).sort()).toEqual(['legacy-other.json', 'legacy-own.json', 'reused.json', 'zombie.json']);
  });
});
