#!/usr/bin/env -S node --experimental-strip-types --disable-warning=ExperimentalWarning
import { runCli } from './cli.ts';

process.exitCode = await runCli(process.argv.slice(2));
