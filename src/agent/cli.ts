import { inspect } from 'node:util';
import { Command, CommanderError, Option } from 'commander';
import { AgentError, ExitCode, toAgentError } from '../errors.ts';
import { VERIFY_ALL } from '../jobs-wire.ts';
import { checkBackupId, checkName } from '../snapshot/names.ts';
import { logStoreRetries } from '../transport/stores/store-telemetry.ts';
import { downloadElement, findElement } from '../snapshot/pipeline/artifacts.ts';
import { readManifest, type BackupSummary } from '../snapshot/pipeline/catalog.ts';
import { createProgressLine, errorJson, printJson, renderTable } from './cli-output.ts';
import { DEFAULT_CONFIG_PATH, loadConfig } from './config.ts';
import { confirmDestructive } from './confirm.ts';
import type { OperationContext } from './context.ts';
import { recoverAtStart } from './jobs/recovery.ts';
import { FreezeJournal } from '../snapshot/freeze/journal.ts';
import { thawLeftovers } from '../snapshot/freeze/recovery.ts';
import { createLogger, LOG_LEVELS } from './logger.ts';
import { loadKeyRing } from './keys.ts';
import { adoptEnvironment, describeOwner, type OwnerView } from './ownership.ts';
import { backupStorage, openEnvironmentStore } from './stores.ts';
import { formatBytes, parseDuration } from '../units.ts';
import { AGENT_VERSION } from './version.ts';
// Jobs, the daemon and --remote (issue #4).
import type { Manifest } from '../snapshot/manifest.ts';
import type { ElementCheck } from '../snapshot/pipeline/artifacts.ts';
import { addControlPlaneCommands, runJob, submitJob, withAgent } from './jobs/cli-glue.ts';
import type { PruneResult } from './prune.ts';
import { describeStop } from '../snapshot/binlog/gather.ts';
import { parsePoint } from '../snapshot/pipeline/point-in-time.ts';
import type { RestoreSummary } from '../snapshot/pipeline/restore.ts';

/** restore, get, url and verify: the one way past E_MANIFEST_UNAUTHENTICATED, for backups made before keys existed. */
const ALLOW_UNAUTHENTICATED = '--allow-unauthenticated';
const ALLOW_UNAUTHENTICATED_HELP = 'accept a backup whose manifest carries no MAC (made before keys existed); an invalid MAC is refused all the same';

interface CreateOptions {
  live?: boolean;
  element?: string[];
  keepFor?: string;
  codeRef?: string;
  wait?: boolean;
  replaceOldest?: boolean;
  scheduled?: boolean;
}

interface GlobalOptions {
  config: string;
  json?: boolean;
  logLevel: string;
}

/** Runs the CLI and returns the exit code (documented in README "Exit codes"). */
export async function runCli(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  // Ctrl-C cancels whatever runs (the commands' own handlers abort cleanly); the exit code is
  // then 130, as a shell expects of an interrupted command. A SIGTERM cancel stays E_CANCELLED (9).
  let interrupted = false;
  const onInt = () => (interrupted = true);
  process.on('SIGINT', onInt);
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
    if (failure.code === 'E_CANCELLED' && interrupted) {
      process.stderr.write('cancelled (Ctrl-C)\n');
      return ExitCode.sigint;
    }
    process.stderr.write(`error [${failure.code}]: ${failure.message}\n`);
    if (['debug', 'trace'].includes(program.opts<GlobalOptions>().logLevel)) process.stderr.write(`${inspect(failure, { depth: 6 })}\n`);
    return failure.exitCode;
  } finally {
    process.off('SIGINT', onInt);
  }
}

function buildProgram(): Command {
  const program = new Command('storage-agent')
    .description('Back up and restore the services of hosting environments to object storage')
    .version(AGENT_VERSION)
    .option('--config <file>', 'config file', DEFAULT_CONFIG_PATH)
    .option('--json', 'machine-readable output on stdout')
    .addOption(new Option('--log-level <level>', 'log level (JSON logs on stderr)').choices(LOG_LEVELS).default('warn'))
    .option('--remote <url>', 'send the command to the daemon at ws://HOST:PORT (or wss://) instead of running it here')
    .option('--token-file <file>', 'file holding the bearer token for --remote')
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (text) => process.stderr.write(text) });
  // On a terminal a person reads the human output; the JSON log lines (for journald and
  // scripts) would only clutter it and the progress line. --log-level brings them back.
  program.hook('preAction', (command) => {
    if (command.getOptionValueSource('logLevel') === 'default' && process.stderr.isTTY) command.setOptionValueWithSource('logLevel', 'silent', 'default');
  });

  const backup = program.command('backup').description('create, list, restore and manage backups').exitOverride();

  backup
    .command('create')
    .description('back up an environment (all its services, or --element)')
    .argument('<env>', 'environment')
    .option('--live', 'no write pause: read each service live')
    .option('--element <names>', 'comma-separated services to back up', splitList)
    .option('--keep-for <duration>', 'expire the backup after this long (e.g. 30d)')
    .option('--code-ref <sha>', 'the code revision to record in the manifest')
    .option('--replace-oldest', "at the environment's manualLimit: delete the oldest manual backup once this one is committed")
    .option('--scheduled', 'record the backup as scheduled (an external timer): kept by the retention rules, not counted against manualLimit')
    .option('--yes', 'no confirmation (create needs none; accepted for scripts)')
    .option('--no-wait', 'with --remote: queue the job and print its id at once')
    .exitOverride()
    .action(async (env: string, opts: CreateOptions, cmd: Command) => {
      const keepForMs = opts.keepFor === undefined ? undefined : parseDuration(opts.keepFor);
      if (opts.keepFor !== undefined && !keepForMs) throw new AgentError('E_USAGE', `--keep-for ${JSON.stringify(opts.keepFor)}: use a duration such as 12h, 30d or 2w`);
      if (opts.scheduled && opts.replaceOldest) throw new AgentError('E_USAGE', '--replace-oldest applies to manual backups, not --scheduled ones');
      const request = {
        kind: 'backup.create' as const,
        env,
        live: opts.live,
        elements: opts.element,
        keepForMs,
        codeRef: opts.codeRef,
        ...(opts.scheduled ? { trigger: 'scheduled' as const } : {}),
        ...(opts.replaceOldest ? { replaceOldest: true } : {}),
      };
      if (opts.wait === false) {
        const ticket = await submitJob(cmd, request);
        return output(cmd, ticket, () => `job ${ticket.jobId} ${ticket.state}: backup ${ticket.backupId} of ${env}${ticket.waitingFor ? ` (${ticket.waitingFor})` : ''}\n`);
      }
      const manifest = await runJob<Manifest>(cmd, request);
      output(cmd, manifest, () => {
        const warnings = manifest.elements.flatMap((e) => e.warnings.map((w) => `  warning: ${e.name}: ${w}`));
        const seconds = (Date.parse(manifest.completedAt) - Date.parse(manifest.createdAt)) / 1000;
        const raw = manifest.elements.reduce((sum, e) => sum + e.rawBytes, 0);
        // The pause's cause, when a mount that cannot be snapshotted was read with the writers frozen.
        const readFrozen = manifest.elements.filter((e) => e.readInsideFreeze).map((e) => e.name);
        const pause =
          manifest.pauseMs === null
            ? 'no write pause'
            : `writes paused ${manifest.pauseMs} ms${readFrozen.length ? `, ${readFrozen.join(', ')} read inside the pause (no snapshot of its filesystem)` : ''}`;
        return (
          `backup ${manifest.id} of ${manifest.env} created (${manifest.mode}, ${pause}) in ${seconds.toFixed(1)} s, ${formatBytes(raw / Math.max(seconds, 0.001))}/s: ` +
          `${manifest.elements.map((e) => `${e.name} ${formatBytes(e.rawBytes)} → ${formatBytes(e.storedBytes)}`).join(', ')}\n${warnings.length ? warnings.join('\n') + '\n' : ''}`
        );
      });
    });

  backup
    .command('list')
    .description('backups of an environment, newest first')
    .argument('<env>', 'environment')
    .exitOverride()
    .action(async (env: string, _opts: unknown, cmd: Command) => {
      const backups = await withAgent(cmd, (agent) => agent.backupList({ env }));
      output(cmd, backups, () => (backups.length === 0 ? `no backups of ${env} yet: 'backup create ${env}' makes one\n` : backupsTable(backups)));
    });

  backup
    .command('window')
    .description('the point-in-time restore window of each mysql service with pitr: (from the oldest base backup to the newest stored event)')
    .argument('<env>', 'environment')
    .exitOverride()
    .action(async (env: string, _opts: unknown, cmd: Command) => {
      const windows = await withAgent(cmd, (agent) => agent.backupWindow({ env }));
      output(cmd, windows, () =>
        windows.length === 0
          ? `no mysql service of ${env} has pitr: set: only whole backups restore (see docs/pitr.md)\n`
          : windows
              .map((w) =>
                w.to === null
                  ? `${w.service}: nothing stored yet (is the daemon running?)\n`
                  : `${w.service}: ${w.from ? `${shortTime(w.from)} (backup ${w.fromBackup})` : 'no base backup in the current chain yet: take a backup'} to ${shortTime(w.to)}; last stored ${shortTime(w.storedAt!)}\n` +
                    w.gaps.map((g) => `  not restorable: ${shortTime(g.from)} to ${shortTime(g.to)} (a restore, then its base backup ${g.backup})\n`).join(''),
              )
              .join(''),
      );
    });

  backup
    .command('show')
    .description("a backup's manifest")
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .exitOverride()
    .action(async (env: string, id: string, _opts: unknown, cmd: Command) => {
      const manifest = await withAgent(cmd, (agent) => agent.backupShow({ env, id }));
      output(cmd, manifest, () => `${JSON.stringify(manifest, null, 2)}\n`);
    });

  backup
    .command('restore')
    .description('restore a backup into its environment or --target')
    .argument('<env>', 'environment the backup belongs to')
    .argument('[id]', 'backup id (with --to-time/--to-position: the base backup; by default the newest before that point)')
    .option('--target <env>', 'restore into this environment instead')
    .option('--to-time <time>', 'point-in-time restore of the mysql services with pitr: to the end of this second (ISO 8601, e.g. 2026-12-01T10:15:30Z)')
    .option('--to-position <file:pos>', 'point-in-time restore to this position of the binlog (e.g. binlog.000042:1234)')
    .option('--to-gtid <gtid>', 'point-in-time restore up to and with this transaction (MariaDB GTID, e.g. 0-1-4242)')
    .option('--element <names>', 'comma-separated elements to restore', splitList)
    .option('--no-safety-backup', 'do not back up the target first (the pre-restore safety backup)')
    .option('--from-node <id>', "the backup was made by this other node (see 'backup list'): bring its data here all the same")
    .option(ALLOW_UNAUTHENTICATED, ALLOW_UNAUTHENTICATED_HELP)
    .option('--yes', 'do not ask for confirmation')
    .exitOverride()
    .action(async (env: string, id: string | undefined, opts: { target?: string; element?: string[]; yes?: boolean; safetyBackup?: boolean; allowUnauthenticated?: boolean; fromNode?: string; toTime?: string; toPosition?: string; toGtid?: string }, cmd: Command) => {
      const target = checkName('environment', opts.target ?? env);
      if (id !== undefined) checkBackupId(id);
      const point = parsePoint(opts);
      if (id === undefined && !point) throw new AgentError('E_USAGE', "backup restore needs a backup id (see 'backup list'), or --to-time/--to-position/--to-gtid");
      const request = {
        kind: 'backup.restore' as const,
        env,
        ...(id !== undefined ? { id } : {}),
        ...(opts.toTime !== undefined ? { toTime: opts.toTime } : {}),
        ...(opts.toPosition !== undefined ? { toPosition: opts.toPosition } : {}),
        ...(opts.toGtid !== undefined ? { toGtid: opts.toGtid } : {}),
        target,
        elements: opts.element,
        ...(opts.safetyBackup === false ? { safetyBackup: false } : {}),
        ...(opts.allowUnauthenticated ? { allowUnauthenticated: true } : {}),
        ...(opts.fromNode !== undefined ? { fromNode: checkName('node', opts.fromNode) } : {}),
      };
      const summary = await runJob<RestoreSummary>(cmd, request, {
        confirm: () =>
          confirmDestructive(
            point ? `restoring ${env}'s databases to ${describeStop(point)} overwrites the data of environment ${target}` : `restoring backup ${id} overwrites the data of environment ${target}`,
            target,
            opts.yes,
          ),
      });
      output(cmd, summary, () => {
        const s = summary.safetyBackup;
        const safety = !s
          ? ''
          : s.id
            ? `safety backup ${s.id} of ${summary.target} taken first (${s.elements.join(', ')}; expires ${s.keepUntil ? shortTime(s.keepUntil) : 'never'})${s.skipped.length ? `; skipped, nothing there yet: ${s.skipped.join(', ')}` : ''}\n`
            : `no safety backup: nothing there yet (${s.skipped.join(', ')})\n`;
        // What a restore changed on the way in (a files element's cleared setuid/setgid bits):
        // said here as well as in the facts, or an operator at a terminal never reads it.
        const warnings = summary.elements.flatMap((e) => (typeof e.facts.warning === 'string' ? [`  warning: ${e.name}: ${e.facts.warning}\n`] : []));
        // A point-in-time restore says what it reached: the last transaction applied.
        const replayed = summary.elements.flatMap((e) =>
          e.facts.lastAppliedPosition !== undefined
            ? [`  ${e.name}: replayed to ${e.facts.lastAppliedTime ?? 'the base backup (no transaction after it)'}${e.facts.lastAppliedGtid ? `, last transaction ${e.facts.lastAppliedGtid}` : ''}${e.facts.lastAppliedPosition ? ` at ${e.facts.lastAppliedPosition}` : ''}\n`]
            : [],
        );
        return `${safety}restored backup ${summary.id} into ${summary.target}: ${summary.elements.map((e) => e.name).join(', ')}\n${replayed.join('')}${warnings.join('')}`;
      });
    });

  backup
    .command('prune')
    .description("delete what the environment's retention does not keep: scheduled backups outside the rules, expired and failed ones")
    .argument('<env>', 'environment')
    .option('--dry-run', 'say what would be deleted, delete nothing')
    .exitOverride()
    .action(async (env: string, opts: { dryRun?: boolean }, cmd: Command) => {
      const result = await runJob<PruneResult>(cmd, { kind: 'backup.prune', env, ...(opts.dryRun ? { dryRun: true } : {}) });
      output(cmd, result, () => {
        const rows = [
          ...result.deleted.map((e) => ({ ...e, action: result.dryRun ? 'would delete' : 'deleted' })),
          ...result.kept.map((e) => ({ ...e, action: 'kept' })),
        ].sort((a, b) => (a.id < b.id ? 1 : -1));
        const table = rows.length
          ? renderTable(['Backup ID', 'Created', 'Trigger', 'Action', 'Reason'], rows.map((r) => [r.id, shortTime(r.createdAt), r.trigger ?? '-', r.action, r.reason]))
          : '';
        const repository = result.repository
          ? `repository: ${result.repository.deletedPacks} packs ${result.dryRun ? 'to delete' : 'deleted'} (${result.repository.repackedPacks} of them repacked), ${formatBytes(result.repository.freedBytes)} ${result.dryRun ? 'to free' : 'freed'}\n`
          : '';
        const binlog = (result.binlog ?? [])
          .map((b) => `binlog of ${b.service}: the window starts at backup ${b.base}; ${b.deletedRecords} older pieces ${result.dryRun ? 'to delete' : 'deleted'}\n`)
          .join('');
        return `${table}${result.deleted.length} ${result.dryRun ? 'would be deleted (dry run: nothing deleted)' : 'deleted'}, ${result.kept.length} kept\n${repository}${binlog}`;
      });
    });

  backup
    .command('get')
    .description('download one element as a standard archive (.tar.zst, .sql.gz, …)')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .requiredOption('--element <name>', 'element to download')
    .requiredOption('--to <path>', 'file or existing directory to write to')
    .option('--database <name>', 'mysql element of several databases: the one to write (it loads into any database)')
    .option('--all-databases', 'mysql element: the dump as taken (recreates its databases under their names)')
    .option(ALLOW_UNAUTHENTICATED, ALLOW_UNAUTHENTICATED_HELP)
    .exitOverride()
    .action(async (env: string, id: string, opts: { element: string; to: string; database?: string; allDatabases?: boolean; allowUnauthenticated?: boolean }, cmd: Command) => {
      const result = await withOperation(cmd, async (ctx) => {
        const store = await openEnvironmentStore(ctx.config, env);
        const manifest = await readManifest(store, env, id, { keys: await loadKeyRing(ctx.config), allowUnauthenticated: opts.allowUnauthenticated === true });
        return downloadElement(backupStorage(ctx.config, store, env), manifest, findElement(manifest, opts.element), opts.to, ctx.signal, { database: opts.database, allDatabases: opts.allDatabases, stateDir: ctx.config.stateDir });
      });
      const loads = result.database ? `; database ${result.database} without CREATE DATABASE/USE: it loads into the database you name` : '';
      output(cmd, result, () => `wrote ${result.path} (${formatBytes(result.bytes)}, ${result.verified}${loads})\n`);
    });

  backup
    .command('url')
    .description('a presigned, expiring download URL for one element (s3 stores)')
    .argument('<env>', 'environment')
    .argument('<id>', 'backup id')
    .requiredOption('--element <name>', 'element')
    .option('--expires <duration>', 'validity, at most 7d (S3 limit)', '1h')
    .option(ALLOW_UNAUTHENTICATED, ALLOW_UNAUTHENTICATED_HELP)
    .exitOverride()
    .action(async (env: string, id: string, opts: { element: string; expires: string; allowUnauthenticated?: boolean }, cmd: Command) => {
      const ms = parseDuration(opts.expires);
      if (!ms || ms < 1000 || ms > 7 * 86_400_000) throw new AgentError('E_USAGE', `--expires ${JSON.stringify(opts.expires)}: use a duration from 1s to 7d`);
      const { url, expiresAt, sha256, bytes } = await withAgent(cmd, (agent) =>
        agent.backupUrl({ env, id, element: opts.element, expiresSeconds: Math.round(ms / 1000), ...(opts.allowUnauthenticated ? { allowUnauthenticated: true } : {}) }),
      );
      // The URL first and alone on its line (`| head -1`); then what its bytes must be: the
      // bucket serves whatever it holds, only this check ties the download to the backup.
      output(cmd, { url, expiresAt, sha256, bytes }, () => `${url}\nsha256 ${sha256}  ${bytes} bytes  expires ${expiresAt}\ncheck: curl -s '${url}' | sha256sum   must print ${sha256}\n`);
    });

  backup
    .command('verify')
    .description("read back every object of a backup and check its sha256; for elements in the environment's repository, that every chunk is indexed and its pack there")
    .argument('<env>', 'environment')
    .argument('<id>', `backup id, or ${VERIFY_ALL}: every backup of the environment (repository chunks read once; a damaged chunk names each backup that holds it)`)
    .option('--read-data', "repository elements: also read every chunk and authenticate it (as a restore would)")
    .option(ALLOW_UNAUTHENTICATED, ALLOW_UNAUTHENTICATED_HELP)
    .exitOverride()
    .action(async (env: string, id: string, opts: { allowUnauthenticated?: boolean; readData?: boolean }, cmd: Command) => {
      const request = {
        kind: 'backup.verify' as const,
        env,
        id,
        ...(opts.allowUnauthenticated ? { allowUnauthenticated: true } : {}),
        ...(opts.readData ? { readData: true } : {}),
      };
      if (id === VERIFY_ALL) {
        const result = await runJob<{ ok: boolean; backups: { id: string; ok: boolean; elements: ElementCheck[]; code?: string; message?: string }[] }>(cmd, request);
        output(cmd, result, () =>
          renderTable(
            ['Backup', 'Element', 'Result', 'Size'],
            result.backups.flatMap((b) =>
              b.elements.length === 0
                ? [[b.id, '-', `FAILED ${b.code}: ${b.message}`, '-']]
                : b.elements.map((c) => [b.id, c.element, c.ok ? 'ok' : `FAILED ${c.code}: ${c.message}`, formatBytes(c.bytes)]),
            ),
          ),
        );
        const failed = result.backups.flatMap((b): { code?: string | undefined }[] => (b.elements.length === 0 ? [{ code: b.code }] : b.elements.filter((c) => !c.ok)))[0];
        if (failed) process.exitCode = new AgentError(failed.code as 'E_CHECKSUM_MISMATCH', '').exitCode;
        return;
      }
      const { elements: checks } = await runJob<{ id: string; ok: boolean; elements: ElementCheck[] }>(cmd, request);
      output(cmd, { id, ok: checks.every((c) => c.ok), elements: checks }, () =>
        renderTable(['Element', 'Result', 'Size'], checks.map((c) => [c.element, c.ok ? 'ok' : `FAILED ${c.code}: ${c.message}`, formatBytes(c.bytes)])),
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
      checkBackupId(id);
      const result = await runJob<{ id: string; deletedObjects: number }>(cmd, { kind: 'backup.delete', env, id }, {
        confirm: () => confirmDestructive(`deleting backup ${id} of ${env} cannot be undone`, env, opts.yes),
      });
      output(cmd, result, () => `deleted backup ${id} (${result.deletedObjects} objects)\n`);
    });

  // Ownership of environments in a shared bucket (issue #11, docs/ownership.md).
  const envCommand = program.command('env').description("which node owns an environment's backups").exitOverride();
  envCommand
    .command('owner')
    .description("the node that owns the environment's backups, and every claim on record")
    .argument('<env>', 'environment')
    .exitOverride()
    .action(async (env: string, _opts: unknown, cmd: Command) => {
      const view = await withOperation(cmd, async (ctx) => describeOwner(ctx.config, await openEnvironmentStore(ctx.config, env), env));
      output(cmd, view, () => ownerText(view));
    });
  envCommand
    .command('adopt')
    .description('make this node the owner (the old owner stale, or --force); its backups stay and become this node\'s to prune')
    .argument('<env>', 'environment')
    .option('--force', 'adopt even though the owner is live (stop its backups first: it may be writing)')
    .exitOverride()
    .action(async (env: string, opts: { force?: boolean }, cmd: Command) => {
      const view = await withOperation(cmd, async (ctx) => adoptEnvironment(ctx.config, await openEnvironmentStore(ctx.config, env), env, ctx.logger, opts.force === true));
      output(cmd, view, () => ownerText(view));
    });

  // The unit's ExecStopPost: systemd kills the whole cgroup when the daemon dies (KillMode=mixed),
  // the freeze guard included, so what a killed daemon left frozen is thawed right after, not
  // only when the daemon starts again (RestartSec later). Only the freeze journal: it is quick,
  // and the restarted daemon recovers the rest.
  program
    .command('thaw')
    .description('thaw what dead agent processes left frozen (run by the systemd unit once the daemon has stopped)')
    .exitOverride()
    .action(async (_opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<GlobalOptions>();
      const config = await loadConfig(opts.config);
      const thawed = await thawLeftovers(new FreezeJournal(config.stateDir), createLogger(opts.logLevel, 2));
      output(cmd, { thawed }, () => (thawed > 0 ? `thawed ${thawed} freeze targets left by a dead agent\n` : 'nothing left frozen\n'));
    });

  // Jobs, the daemon and status (issue #4): src/agent/jobs/cli-glue.ts.
  // The daemon's modules (ws, prom-client) load only for `storage-agent daemon`: a CLI run stays small.
  addControlPlaneCommands(program, async (options) => (await import('./daemon.ts')).runDaemon(options));

  return program;
}

function backupsTable(backups: readonly BackupSummary[]): string {
  return renderTable(
    ['Created', 'Backup ID', 'Node', 'Restorable', 'Authenticated', 'Trigger', 'Expires', 'Size', 'Pause'],
    backups.map((b) => [
      shortTime(b.createdAt),
      b.id,
      b.manifest?.agent.nodeId ?? '-',
      b.restorable ? 'yes' : `no (${b.status})`,
      b.authenticated ? 'yes' : b.manifest ? 'no (no MAC)' : 'no',
      b.manifest?.trigger ?? '-',
      b.manifest ? (b.manifest.keepUntil ? shortTime(b.manifest.keepUntil) : 'never') : '-',
      b.manifest ? formatBytes(b.manifest.elements.reduce((sum, e) => sum + e.storedBytes, 0)) : '-',
      b.manifest ? (b.manifest.pauseMs === null ? '-' : `${b.manifest.pauseMs} ms`) : '-',
    ]),
  );
}

function ownerText(view: OwnerView): string {
  const owner = view.owner;
  const head = owner
    ? `environment ${view.env} is owned by node ${owner.nodeId}${owner.nodeId === view.nodeId ? ' (this node)' : ''}, host ${owner.host}, since ${shortTime(owner.since)}; renewed ${shortTime(owner.renewedAt)}${owner.stale ? ' (stale)' : ''}\n`
    : `environment ${view.env} has no owner yet: the first node to write a backup of it becomes its owner (this node: ${view.nodeId})\n`;
  return head + (view.records.length > 1 ? renderTable(['Node', 'Host', 'State', 'Epoch', 'Renewed'], view.records.map((r) => [r.nodeId, r.host, r.state, String(r.epoch), `${shortTime(r.renewedAt)}${r.stale ? ' (stale)' : ''}`])) : '');
}

function shortTime(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function splitList(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * Runs an operation in this process (commands whose arguments name local paths, which the
 * protocol never does), with cancel on SIGINT/SIGTERM: uploads aborted, nothing half-done.
 * Like every agent start, it first recovers from a crashed run (thaw, dead jobs).
 */
async function withOperation<T>(cmd: Command, run: (ctx: OperationContext) => Promise<T>): Promise<T> {
  const opts = cmd.optsWithGlobals<GlobalOptions & { remote?: string }>();
  if (opts.remote !== undefined) throw new AgentError('E_USAGE', `'${cmd.name()}' runs on the node itself: the protocol never names paths; drop --remote`);
  const config = await loadConfig(opts.config);
  const logger = createLogger(opts.logLevel, 2);
  logStoreRetries(logger);
  await recoverAtStart(config, logger, { sweepStores: false });
  const controller = new AbortController();
  const onSignal = (name: string) => controller.abort(new AgentError('E_CANCELLED', `cancelled by ${name}`));
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  // `on`, not `once` (see followJob in jobs/cli-glue.ts): execa's signal-exit re-raises a signal
  // no other listener handles, and a `once` listener is gone by the time it looks.
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  const progress = opts.json ? { update: () => {}, end: () => {} } : createProgressLine(process.stderr);
  try {
    return await run({ config, logger, signal: controller.signal, onProgress: progress.update });
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
