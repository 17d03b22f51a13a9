/**
 * packTree against GNU tar on one tree: `npx node bench/pack-tree.ts DIR [RUNS]`.
 *
 * Both archives are counted in this process; tar writes to a pipe because with
 * `-f /dev/null` GNU tar skips reading file contents. Runs alternate so that drift on a shared
 * machine hits both alike; the best run of each counts. Warm the page cache with a first run.
 */
import { spawn } from 'node:child_process';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { packTree } from '../src/snapshot/files/pack.ts';

interface Run {
  bytes: number;
  seconds: number;
  cpuSeconds: number;
}

const [dir, runsArgument = '3'] = process.argv.slice(2);
if (dir === undefined) {
  console.error('usage: npx node bench/pack-tree.ts DIR [RUNS]');
  process.exit(2);
}
const runs = Number(runsArgument);

async function timed(label: string, start: () => { stream: Readable; done: Promise<unknown> }): Promise<Run> {
  let bytes = 0;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      callback();
    },
  });
  const cpuBefore = process.cpuUsage();
  const before = performance.now();
  const { stream, done } = start();
  await Promise.all([pipeline(stream, sink), done]);
  const seconds = (performance.now() - before) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const run = { bytes, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
  console.log(`${label.padEnd(9)} ${mbps(run).toFixed(0).padStart(5)} MB/s  ${seconds.toFixed(2)} s  ${bytes} bytes  node CPU ${run.cpuSeconds.toFixed(2)} s`);
  return run;
}

function gnuTar(): { stream: Readable; done: Promise<unknown> } {
  const child = spawn('tar', ['-cf', '-', '-C', dir as string, '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const done = new Promise((resolve, reject) =>
    child.once('close', (code) => (code === 0 ? resolve(code) : reject(new Error(`tar exited with ${code}`)))),
  );
  return { stream: child.stdout, done };
}

function ours(): { stream: Readable; done: Promise<unknown> } {
  const { stream, stats } = packTree(dir as string);
  return { stream, done: stats };
}

function mbps(run: Run): number {
  return run.bytes / 1e6 / run.seconds;
}

function best(results: Run[]): Run {
  return results.reduce((a, b) => (mbps(a) >= mbps(b) ? a : b));
}

await timed('warm-up', gnuTar);
const tarRuns: Run[] = [];
const packRuns: Run[] = [];
for (let i = 0; i < runs; i++) {
  tarRuns.push(await timed('GNU tar', gnuTar));
  packRuns.push(await timed('packTree', ours));
}
const tarBest = best(tarRuns);
const packBest = best(packRuns);
console.log(
  `best of ${runs}: GNU tar ${mbps(tarBest).toFixed(0)} MB/s, packTree ${mbps(packBest).toFixed(0)} MB/s, ratio ${(mbps(packBest) / mbps(tarBest)).toFixed(2)}`,
);
