/**
 * The freeze guard: a process of its own that enforces a freeze lease when the agent that took
 * it cannot — killed (SIGKILL, OOM), or stuck. Started by guard-client.ts before the first
 * freeze, with the lease's journal file as its argument, stdin a pipe from the agent and stdout
 * one back to it.
 *
 *   agent → guard (stdin):  "deadline <epoch ms>\n" once the lease is journaled;
 *                           "freeze <JSON path>\n": run `fsfreeze --freeze` on a filesystem the
 *                           journal entry names, answered "frozen <JSON path>" or
 *                           "failed <JSON {path, error, code}>"; "cancel\n": stop the freeze in
 *                           flight (its answer still comes, once its process has exited);
 *                           then nothing until the agent closes the pipe — itself, after a
 *                           clean thaw, or the kernel, when the agent dies.
 *   guard → agent (stdout): "ready\n" once listening; the answers above; "thawed <reason>\n"
 *                           if the guard thawed while the agent still runs (deadline, SIGTERM).
 *
 * The filesystem freezes run here, not in the agent: an `fsfreeze --freeze` child of an agent
 * that is SIGKILLed lives on, and its FIFREEZE could land after the guard had thawed, leaving
 * the filesystem frozen with nothing journaled. A freeze in flight is the guard's own child,
 * and the guard thaws only once it has exited. (cgroup freezes are writes the agent makes
 * itself: none of them can land after the agent is gone.)
 *
 * On EOF, at the deadline, or on SIGTERM/SIGINT it stops any freeze in flight, waits for it to
 * end, thaws what the journal file still names, removes the file and exits. After a clean thaw
 * the agent has removed the file first, so the guard finds nothing to do: closing the pipe is
 * the one way to end it, whoever ends it.
 */
import path from 'node:path';
import { createInterface } from 'node:readline';
import { FreezeJournal } from './journal.ts';
import { releaseEntry } from './recovery.ts';
import { filesystemTarget } from './targets.ts';

type Reason = 'agent-gone' | 'deadline' | 'signal';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: guard.ts <freeze journal file>\n');
  process.exit(2);
}
// <stateDir>/frozen/<name>.json
const journal = new FreezeJournal(path.dirname(path.dirname(file)));
let deadlineTimer: NodeJS.Timeout | undefined;
let releasing = false;
/** The freezes asked for, run one after the other; settled once every one's process has exited. */
let freezes: Promise<void> = Promise.resolve();
/** Stops the freezes not yet answered. */
const inFlight = new Set<AbortController>();

async function release(reason: Reason): Promise<void> {
  if (releasing) return;
  releasing = true;
  clearTimeout(deadlineTimer);
  // A freeze still running could land after the thaw: stop it, and thaw only once it has ended.
  for (const controller of inFlight) controller.abort();
  await freezes;
  const entry = await journal.read(file!);
  if (!entry) process.exit(0); // thawed and removed by the agent: a clean end
  const released = await releaseEntry(journal, entry, await journal.entries());
  const failed = released.failures.length > 0;
  log(failed ? 50 : 40, {
    env: entry.record.env,
    agentPid: entry.record.pid,
    reason,
    thawed: released.thawed,
    ...(released.kept.length > 0 ? { kept: released.kept } : {}),
    ...(failed ? { failures: released.failures } : {}),
    msg: failed
      ? 'THAW FAILED: the freeze guard could not thaw; the daemon and the next agent start retry'
      : `the freeze guard thawed the writers: ${{ 'agent-gone': 'the agent died or let go of the lease without thawing', deadline: 'the freeze deadline passed', signal: 'the guard was told to stop' }[reason]}`,
  });
  if (reason !== 'agent-gone') process.stdout.write(`thawed ${reason}\n`);
  process.exitCode = failed ? 1 : 0;
  // Let the line to the agent drain; nothing else keeps this process alive now.
  process.stdin.destroy();
}

/** One pino-shaped JSON line on stderr (the agent's: the terminal, or the daemon's journal). */
function log(level: number, fields: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ level, time: new Date().toISOString(), pid: process.pid, component: 'freeze-guard', ...fields })}\n`);
}

// An agent that has gone away must not take the guard down with EPIPE.
process.stdout.on('error', () => {});
process.on('SIGTERM', () => void release('signal'));
process.on('SIGINT', () => void release('signal'));
/** Freezes `mount` — only a filesystem the journal entry names, so that whatever the guard freezes it also thaws. */
function freeze(mount: string): void {
  const controller = new AbortController();
  inFlight.add(controller);
  freezes = freezes.then(async () => {
    try {
      if (releasing || controller.signal.aborted) throw new Error('the freeze guard is thawing: not frozen');
      const entry = await journal.read(file!);
      if (!entry?.record.targets.some((t) => t.kind === 'fsfreeze' && t.path === mount)) throw new Error(`${mount} is not in the freeze journal ${file}: not frozen`);
      await filesystemTarget(mount).freeze(controller.signal);
      process.stdout.write(`frozen ${JSON.stringify(mount)}\n`);
    } catch (error) {
      const code = (error as { code?: unknown }).code === 'E_CANCELLED' ? 'E_CANCELLED' : 'E_CAPTURE_FAILED';
      process.stdout.write(`failed ${JSON.stringify({ path: mount, error: (error as Error).message, code })}\n`);
    } finally {
      inFlight.delete(controller);
    }
  });
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const deadline = /^deadline (\d+)$/.exec(line);
  if (deadline && !releasing) {
    clearTimeout(deadlineTimer);
    deadlineTimer = setTimeout(() => void release('deadline'), Math.max(0, Number(deadline[1]) - Date.now()));
  } else if (line.startsWith('freeze ')) {
    let mount: unknown;
    try {
      mount = JSON.parse(line.slice('freeze '.length));
    } catch {
      // answered below as not a path
    }
    if (typeof mount === 'string') freeze(mount);
    else process.stdout.write(`failed ${JSON.stringify({ path: String(mount), error: 'not a path' })}\n`);
  } else if (line === 'cancel') {
    for (const controller of inFlight) controller.abort();
  }
});
lines.on('close', () => void release('agent-gone'));
process.stdin.on('error', () => void release('agent-gone'));
process.stdout.write('ready\n');
