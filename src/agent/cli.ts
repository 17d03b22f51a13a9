import { inspect } from 'node:util';
import { Command, CommanderError, Option } from 'commander';
import { AgentError, ExitCode, toAgentError } from '../errors.ts';
import { FreezeJournal } from '../snapshot/freeze/journal.ts';
import { thawLeftovers } from '../snapshot/freeze/recovery.ts';
import { checkBackupId, checkName } from '../snapshot/names.ts';
import { downloadElement, findElement, verifyBackup } from './artifacts.ts';
import { createBackup } from './backup.ts';
import { deleteBackup, listBackups, readManifest } from './catalog.ts';
import { createProgressLine, errorJson, printJson, renderTable } from './cli-output.ts';
import { DEFAULT_CONFIG_PATH, loadConfig, type Config } from './config.ts';
import { confirmDestructive } from './confirm.ts';
import type { OperationContext } from './context.ts';
import { createLogger, LOG_LEVELS } from './logger.ts';
import { restoreBackup } from './restore.ts';
import { openEnvironmentStore } from './stores.ts';
import { formatBytes, parseDuration } from './units.ts';
import { AGENT_VERSION } from './version.ts';

interface GlobalOptions {
  config: string;
  json?: boolean;
  logLevel: string;
}

/** Runs the CLI and returns the exit code (documented in README "Exit codes"). */
export async function runCli(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    // A command that reported its own failure in its output (verify) sets process.exitCode.
    return Number(process.exitCode ?? ExitCode.ok);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version "errors" are successes; any other parse error is a usage error.
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help' ? ExitCode.ok : ExitCode.usage;
    }
    const failure = toAgentError(error);
    if (program.opts<GlobalOptions>().json) printJson(process.stdout, errorJson(failure));
    process.stderr.write(`error [${failure.code}]: ${failure.message}\n`);
    if (['debug', 'trace'].includes(program.opts<GlobalOptions>().logLevel)) process.stderr.write(`${inspect(failure, { depth: 6 })}\n`);
    return failure.exitCode;
  }
}

function buildProgram(): Command {
  const program = new Command('storage-agent')
    .description('Back up and restore the services of hosting environments to object storage')
    .version(AGENT_VERSION)
    .option('--config <file>', 'config file', DEFAULT_CONFIG_PATH)
    .option('--json', 'machine-readable output on stdout')
    .addOption(new Option('--log-level <level>', 'log level (JSON logs on stderr)').choices(LOG_LEVELS).default('warn'))
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (text) => process.stderr.write(text) });

  const backup = program.command('backup').description('create, list, restore and manage backups').exitOverride();

  backup
    .command('create')
    .description('back up an environment (all its services, or --element)')
    .argument('<env>', 'environment')
    .option('--live', 'no write pause: read each service live')
    .option('--element <names>', 'comma-separated services to back up', splitList)
    .option('--keep-for <duration>', 'expire the backup after this long (e.g. 30d)')
    .option('--code-ref <sha>', 'the code revision to record in the manifest')
    .option('--yes', 'no confirmation (create needs none; accepted for scripts)')
    .exitOverride()
    .action(async (env: string, opts: { live?: boolean; element?: string[]; keepFor?: string; codeRef?: string }, cmd: Command) => {
      const keepForMs = opts.keepFor === undefined ? undefined : parseDuration(opts.keepFor);
      if (opts.keepFor !== undefined && !keepForMs) throw new AgentError('E_USAGE', `--keep-for ${JSON.stringify(opts.keepFor)}: use a duration such as 12h, 30d or 2w`);
      const manifest = await withOperation(cmd, (ctx) =>
        createBackup(ctx, { env, live: opts.live, elements: opts.element, keepForMs, codeRef: opts.codeRef }),
      );
      output(cmd, manifest, () => {
        const warnings = manifest.elements.flatMap((e) => e.warnings.map((w) => `  warning: ${e.name}: ${w}`));
        return `backup ${manifest.id} of ${manifest.env} created: ${manifest.elements
          .map((e) => `${e.name} ${formatBytes(e.rawBytes)} → ${formatBytes(e.storedBytes)}`)
          .join(', ')}\n${warnings.length ? warnings.join('\n') + '\n' : ''}`;
      });
    });

  backup
    .command('list')
    .description('backups of an environment, newest first')
    .argument('<env>', 'environment')
    .exitOverride()
    .action(async (env: string, _opts: unknown, cmd: Command) => {
      const { config } = await globals(cmd);
      const store = await openEnvironmentStore(config, env);
      const backups = await listBackups(store, env);
      output(cmd, backups, () =>
        renderTable(
          ['Created', 'Backup ID', 'Restorable', 'Size'],
          backups.map((b) => [
            b.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
            b.id,
            b.restorable ? 'yes' : `no (${b.status})`,
            b.manifest ? formatBytes(b.manifest.elements.reduce((sum, e) => sum + e.storedBytes, 0)) : '-',
          ]),
        ),
      );
    });

  backup
    .command('show')
    .description("a backup's manifest")
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .exitOverride()
    .action(async (env: string, id: string, _opts: unknown, cmd: Command) => {
      const { config } = await globals(cmd);
      const manifest = await readManifest(await openEnvironmentStore(config, env), env, id);
      output(cmd, manifest, () => `${JSON.stringify(manifest, null, 2)}\n`);
    });

  backup
    .command('restore')
    .description('restore a backup into its environment or --target')
    .argument('<env>', 'environment the backup belongs to')
    .argument('<id>', 'backup id')
    .option('--target <env>', 'restore into this environment instead')
    .option('--element <names>', 'comma-separated elements to restore', splitList)
    .option('--yes', 'do not ask for confirmation')
    .exitOverride()
    .action(async (env: string, id: string, opts: { target?: string; element?: string[]; yes?: boolean }, cmd: Command) => {
      const target = checkName('environment', opts.target ?? env);
      checkBackupId(id);
      await confirmDestructive(`restoring backup ${id} overwrites the data of environment ${target}`, target, opts.yes);
      const summary = await withOperation(cmd, (ctx) => restoreBackup(ctx, { env, id, target, elements: opts.element }));
      output(cmd, summary, () => `restored backup ${summary.id} into ${summary.target}: ${summary.elements.map((e) => e.name).join(', ')}\n`);
    });

  backup
    .command('get')
    .description('download one element as a standard archive (.tar.zst, .sql.gz, …)')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .requiredOption('--element <name>', 'element to download')
    .requiredOption('--to <path>', 'file or existing directory to write to')
    .exitOverride()
    .action(async (env: string, id: string, opts: { element: string; to: string }, cmd: Command) => {
      const result = await withOperation(cmd, async (ctx) => {
        const store = await openEnvironmentStore(ctx.config, env);
        const manifest = await readManifest(store, env, id);
        return downloadElement(store, manifest, findElement(manifest, opts.element), opts.to, ctx.signal);
      });
      output(cmd, result, () => `wrote ${result.path} (${formatBytes(result.bytes)}, sha256 verified)\n`);
    });

  backup
    .command('url')
    .description('a presigned, expiring download URL for one element (s3 stores)')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .requiredOption('--element <name>', 'element')
    .option('--expires <duration>', 'validity, at most 7d (S3 limit)', '1h')
    .exitOverride()
    .action(async (env: string, id: string, opts: { element: string; expires: string }, cmd: Command) => {
      const ms = parseDuration(opts.expires);
      if (!ms || ms < 1000 || ms > 7 * 86_400_000) throw new AgentError('E_USAGE', `--expires ${JSON.stringify(opts.expires)}: use a duration from 1s to 7d`);
      const { config } = await globals(cmd);
      const store = await openEnvironmentStore(config, env);
      const manifest = await readManifest(store, env, id);
      const element = findElement(manifest, opts.element);
      if (element.objects.length !== 1) throw new AgentError('E_PRESIGN_UNSUPPORTED', `element ${element.name} is stored in ${element.objects.length} segments: use 'backup get'`);
      const url = await store.presignGet(element.objects[0]!.key, Math.round(ms / 1000));
      const expiresAt = new Date(Date.now() + ms).toISOString();
      output(cmd, { url, expiresAt }, () => `${url}\n`);
    });

  backup
    .command('verify')
    .description('read back every object of a backup and check its sha256')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .exitOverride()
    .action(async (env: string, id: string, _opts: unknown, cmd: Command) => {
      const checks = await withOperation(cmd, async (ctx) => {
        const store = await openEnvironmentStore(ctx.config, env);
        return verifyBackup(store, await readManifest(store, env, id), ctx.signal);
      });
      output(cmd, { id, ok: checks.every((c) => c.ok), elements: checks }, () =>
        renderTable(['Element', 'Result', 'Bytes'], checks.map((c) => [c.element, c.ok ? 'ok' : `FAILED ${c.code}: ${c.message}`, String(c.bytes)])),
      );
      const failed = checks.find((c) => !c.ok);
      if (failed) process.exitCode = new AgentError(failed.code as 'E_CHECKSUM_MISMATCH', '').exitCode;
    });

  backup
    .command('delete')
    .description('delete a backup (manifest first, then its objects)')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .option('--yes', 'do not ask for confirmation')
    .exitOverride()
    .action(async (env: string, id: string, opts: { yes?: boolean }, cmd: Command) => {
      const { config } = await globals(cmd);
      checkBackupId(id);
      const store = await openEnvironmentStore(config, env);
      await confirmDestructive(`deleting backup ${id} of ${env} cannot be undone`, env, opts.yes);
      const result = await deleteBackup(store, env, id);
      output(cmd, { id, ...result }, () => `deleted backup ${id} (${result.deletedObjects} objects)\n`);
    });

  return program;
}

function splitList(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * Loads the config, and first of all thaws whatever a crashed run left frozen: every command
 * is an agent start as far as that promise goes.
 */
async function globals(cmd: Command): Promise<{ config: Config; logLevel: string; json: boolean }> {
  const opts = cmd.optsWithGlobals<GlobalOptions>();
  const config = await loadConfig(opts.config);
  await thawLeftovers(new FreezeJournal(config.stateDir), createLogger(opts.logLevel, 2));
  return { config, logLevel: opts.logLevel, json: opts.json === true };
}

/** Runs an operation with cancel on SIGINT/SIGTERM (cleanly: uploads aborted, nothing half-done). */
async function withOperation<T>(cmd: Command, run: (ctx: OperationContext) => Promise<T>): Promise<T> {
  const { config, logLevel, json } = await globals(cmd);
  const controller = new AbortController();
  const onSignal = (name: string) => controller.abort(new AgentError('E_CANCELLED', `cancelled by ${name}`));
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  const progress = json ? { update: () => {}, end: () => {} } : createProgressLine(process.stderr);
  try {
    return await run({ config, logger: createLogger(logLevel, 2), signal: controller.signal, onProgress: progress.update });
  } finally {
    progress.end();
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

function output(cmd: Command, value: unknown, human: () => string): void {
  if (cmd.optsWithGlobals<GlobalOptions>().json) printJson(process.stdout, value);
  else process.stdout.write(human());
}
