#!/usr/bin/env -S node --experimental-strip-types --disable-warning=ExperimentalWarning --max-semi-space-size=8
// --max-semi-space-size=8: V8 grows the main isolate's young generation (up to 64 MiB a
// semi-space here) while the SDK loads; capped at 8 MiB, a 477 MiB tree to S3 peaked at 244–258
// MiB against 251–264 (18 of 19 runs ≤ 256, issue #9) for ~3 % more CPU (docs/benchmarks.md).
// It has to be a command-line flag: v8.setFlagsFromString here would come after the main
// heap is configured and change only the workers'.
import { enableCompileCache } from 'node:module';

// Stripping the types of and compiling ~100 modules costs ~0.3 s of every command; V8's code
// cache of them cuts that to a few ms. It lives beside the dependencies (owned by whoever
// installed them, unlike a shared /tmp), or where NODE_COMPILE_CACHE says (the systemd unit);
// where it cannot be written, the agent simply runs without it. Worker threads (the pack
// worker) find it through the environment, which halves their start-up.
process.env.NODE_COMPILE_CACHE ??= new URL('../../node_modules/.cache/storage-agent-compile', import.meta.url).pathname;
enableCompileCache(process.env.NODE_COMPILE_CACHE);
const { runCli } = await import('./cli.ts');

// A reader that went away (`… | head -1`, a pipe closed early) is not a failure of the command:
// what it would have read is dropped, quietly, and the exit code stays the command's own outcome
// (README "Exit codes"). Unhandled, the 'error' event would end the process with a stack trace;
// any other write error still does.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}

process.exitCode = await runCli(process.argv.slice(2));


// The outcome is decided and printed (stdout and stderr are synchronous for files and pipes).
// What may still run is best-effort cleanup that a store outage can stretch for minutes (SDK
// retries of a failed backup's delete; its leftovers are journaled and swept by the next
// start): it gets a short grace, never the caller's terminal. An unref'd timer ends nothing
// that finishes sooner.
setTimeout(() => process.exit(), 2_000).unref();
