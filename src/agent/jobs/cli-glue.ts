import { Option, type Command } from 'commander';
import { AgentError } from '../../errors.ts';
import { JOB_STATES, type JobEvent, type JobProgress, type JobRecord, type JobRequest } from '../../jobs-wire.ts';
import type { ProgressEvent } from '../../progress.ts';
import { logStoreRetries } from '../../transport/stores/store-telemetry.ts';
import { readTokenFile } from '../../transport/ws/auth.ts';
import { createProgressLine, printJson, renderTable } from '../cli-output.ts';
import { loadConfig } from '../config.ts';
import { createLogger } from '../logger.ts';
import { formatBytes } from '../../units.ts';
import { errorOfRecord, LocalAgent, type AgentApi, type AgentStatus, type JobTicket } from './api.ts';
import { JobEngine } from './engine.ts';
import { recoverAtStart } from './recovery.ts';
import { validateRequest } from './runners.ts';

/**
 * The CLI's side of jobs and of --remote: every command talks to an AgentApi — this process
 * (with its own job engine, sharing the node's locks with the daemon) or, with --remote, the
 * daemon through the protocol client — and prints the same output either way.
 */
interface CliOptions {
  config: string;
  json?: boolean;
  logLevel: string;
  remote?: string;
  tokenFile?: string;
}

export async function openAgent(cmd: Command): Promise<AgentApi> {
  const opts = cmd.optsWithGlobals<CliOptions>();
  if (opts.remote !== undefined) {
    if (!opts.tokenFile) throw new AgentError('E_USAGE', '--remote needs --token-file FILE (a token never goes on the command line)');
    // The daemon's token file format; with several tokens (a daemon's file), the first is used.
    const [token] = await readTokenFile(opts.tokenFile, '--token-file');
    // An HTTP header carries visible ASCII only; anything else would fail inside ws as an internal error.
    if (!/^[\x21-\x7e]+$/.test(token)) throw new AgentError('E_SECRET_UNAVAILABLE', `--token-file: the token in ${opts.tokenFile} holds spaces or characters outside visible ASCII: a token is one word of visible ASCII`);
    const { RemoteAgent } = await import('../remote-client.ts'); // ws loads only with --remote
    return RemoteAgent.connect({ url: opts.remote, token });
  }
  if (opts.tokenFile !== undefined) throw new AgentError('E_USAGE', '--token-file goes with --remote URL');
  const config = await loadConfig(opts.config);
  const logger = createLogger(opts.logLevel, 2);
  logStoreRetries(logger);
  // Every agent start, the CLI's too: thaw what a crash left frozen, settle dead jobs.
  await recoverAtStart(config, logger, { sweepStores: false });
  return new LocalAgent(config, new JobEngine({ config, logger, program: 'cli' }), 'cli');
}

export async function withAgent<T>(cmd: Command, run: (agent: AgentApi) => Promise<T>): Promise<T> {
  const agent = await openAgent(cmd);
  try {
    return await run(agent);
  } finally {
    await agent.close();
  }
}

/**
 * Runs a job to its end and returns its result (what --json prints): in this process through
 * its job engine (waiting, and saying so, while the environment or the node's slots are busy),
 * or in the daemon with --remote. `confirm` runs after the request was checked, before it is
 * queued. SIGINT/SIGTERM cancel the job cleanly.
 */
export async function runJob<T>(cmd: Command, request: JobRequest, options: { confirm?: () => Promise<void> } = {}): Promise<T> {
  return withAgent(cmd, async (agent) => {
    if (agent instanceof LocalAgent) validateRequest(agent.config, request);
    await options.confirm?.();
    const ticket = await agent.submit(request);
    return (await followJob(cmd, agent, ticket)) as T;
  });
}

/** `--no-wait`: queues the job in the daemon and returns its ticket at once. */
export async function submitJob(cmd: Command, request: JobRequest): Promise<JobTicket> {
  if (cmd.optsWithGlobals<CliOptions>().remote === undefined) {
    throw new AgentError('E_USAGE', '--no-wait needs --remote: a job run in-process ends with this command');
  }
  return withAgent(cmd, (agent) => agent.submit(request));
}

async function followJob(cmd: Command, agent: AgentApi, ticket: JobTicket): Promise<unknown> {
  const json = cmd.optsWithGlobals<CliOptions>().json === true;
  const progress = json ? { update: () => {}, end: () => {} } : createProgressLine(process.stderr);
  let lastWaiting: string | undefined;
  const sayWaiting = (state: string, position: number | undefined, waitingFor: string | undefined) => {
    if (state !== 'queued' || !waitingFor || waitingFor === lastWaiting) return;
    lastWaiting = waitingFor;
    progress.end();
    process.stderr.write(`storage-agent: job ${ticket.jobId} queued${position ? ` (position ${position})` : ''}: ${waitingFor}\n`);
  };
  sayWaiting(ticket.state, ticket.position, ticket.waitingFor);
  const onEvent = ({ job }: JobEvent) => {
    sayWaiting(job.state, job.position, job.waitingFor);
    const p = job.progress;
    if (job.state === 'running' && p) progress.update(progressEventOf(p));
  };
  const cancel = () => void agent.jobCancel(ticket.jobId).catch(() => {});
  // `on`, not `once`: execa's signal-exit re-raises a signal that no other listener is left to
  // handle, and a `once` listener is removed before it runs — the process would die mid-cancel.
  process.on('SIGINT', cancel);
  process.on('SIGTERM', cancel);
  let final: JobRecord;
  try {
    final = await agent.follow(ticket.jobId, onEvent);
  } finally {
    progress.end();
    process.off('SIGINT', cancel);
    process.off('SIGTERM', cancel);
  }
  if (final.state === 'succeeded') return final.result;
  throw agent.failureOf(final);
}

/** The progress line's event for a job's progress. The element is looked up as an own entry: its name comes from outside ("constructor"). */
function progressEventOf(p: JobProgress): ProgressEvent {
  const element = p.element !== undefined && Object.hasOwn(p.elements, p.element) ? p.elements[p.element] : undefined;
  return { phase: p.phase, element: p.element, bytes: element?.bytes, totalBytes: element?.totalBytes };
}

function print(cmd: Command, value: unknown, human: () => string): void {
  if (cmd.optsWithGlobals<CliOptions>().json) printJson(process.stdout, value);
  else process.stdout.write(human());
}

function describeJob(job: JobRecord): string {
  if (job.state === 'queued') return `#${job.position ?? '?'}${job.waitingFor ? `: ${job.waitingFor}` : ''}`;
  if (job.state === 'running' && job.progress) {
    const p = job.progress;
    return [p.phase, p.element, formatBytes(p.bytes), p.rate ? `${formatBytes(p.rate)}/s` : '', p.etaSeconds !== undefined ? `ETA ${p.etaSeconds}s` : '']
      .filter(Boolean)
      .join(' ');
  }
  if (job.error) return `${job.error.code}: ${job.error.message}`;
  return job.backupId ?? '';
}

function jobsTable(jobs: JobRecord[]): string {
  return renderTable(
    ['Created', 'Job ID', 'Kind', 'Env', 'State', 'Detail'],
    jobs.map((j) => [j.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), j.id, j.kind, j.env, j.state, describeJob(j)]),
  );
}

function statusText(status: AgentStatus): string {
  const { agent, host, jobs } = status;
  // The node and its daemon first: the process answering (this CLI, or the daemon for --remote) says little.
  const stopping = agent.program === 'daemon' && !agent.accepting ? ', stopping' : '';
  const lines = [
    `node    ${agent.nodeId} on ${agent.host}, storage-agent ${agent.version}`,
    status.daemon
      ? `daemon  ${status.daemon.running ? `running, pid ${status.daemon.pid}${status.daemon.url ? `, ${status.daemon.url}` : ''}${stopping}` : 'not running'}`
      : undefined,
    `host    ${host.os}, kernel ${host.kernel}, ${host.cpu.cores} cores, load ${host.load.join(' ')}`,
    `memory  ${formatBytes(host.memory.available)} available of ${formatBytes(host.memory.total)}`,
    `disk    ${formatBytes(host.disk.available)} free of ${formatBytes(host.disk.size)} (state directory)`,
    `jobs    ${jobs.running} running, ${jobs.queued} queued, ${jobs.concurrency} at once`,
    ...(status.schedules ?? []).map(
      (s) => `backups ${s.env}: ${s.schedule}; next ${s.nextRunAt ? s.nextRunAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-'}${s.lastRunAt ? `, last ${s.lastRunAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}` : ''}`,
    ),
    ...(status.binlogStreams ?? []).map(
      (s) =>
        `binlog  ${s.env}/${s.service}: ${s.state}${s.file ? ` at ${s.file}:${s.end}` : ''}, lag ${(s.lagMs / 1000).toFixed(1)} s` +
        `${s.lastEventMs ? `, newest event ${new Date(s.lastEventMs).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z')}` : ''}${s.lastError ? `; last error: ${s.lastError}` : ''}`,
    ),
  ].filter((l): l is string => l !== undefined);
  return `${lines.join('\n')}\n${status.active.length ? `\n${jobsTable(status.active)}` : ''}`;
}

/** `daemon`, `jobs list|show|wait|cancel` and `status`. */
export function addControlPlaneCommands(program: Command, runDaemon: (options: { configPath: string; logLevel: string }) => Promise<number>): void {
  program
    .command('daemon')
    .description('run the agent daemon: the WebSocket protocol (/v1), /healthz and /metrics (see docs/protocol.md)')
    .exitOverride()
    .action(async (_opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<CliOptions>();
      if (opts.remote !== undefined) throw new AgentError('E_USAGE', 'daemon runs here: --remote does not apply');
      // The daemon logs one line per job phase: info unless --log-level says otherwise.
      const logLevel = program.getOptionValueSource('logLevel') === 'default' ? 'info' : opts.logLevel;
      process.exitCode = await runDaemon({ configPath: opts.config, logLevel });
    });

  const jobs = program.command('jobs').description('jobs of this node (daemon and CLI): list, show, wait, cancel').exitOverride();

  jobs
    .command('list')
    .description('jobs, newest first')
    .option('--env <env>', 'only this environment')
    .addOption(new Option('--state <state>', 'only jobs in this state').choices(JOB_STATES))
    .option('--limit <n>', 'at most this many', (v) => Number.parseInt(v, 10), 50)
    .exitOverride()
    .action(async (opts: { env?: string; state?: (typeof JOB_STATES)[number]; limit: number }, cmd: Command) => {
      if (!Number.isSafeInteger(opts.limit) || opts.limit < 1 || opts.limit > 1000) throw new AgentError('E_USAGE', '--limit: a number from 1 to 1000');
      const list = await withAgent(cmd, (agent) => agent.jobList({ ...(opts.env ? { env: opts.env } : {}), ...(opts.state ? { state: opts.state } : {}), limit: opts.limit }));
      print(cmd, list, () => (list.length ? jobsTable(list) : 'no jobs\n'));
    });

  jobs
    .command('show')
    .description("a job's record: state, progress, result or error")
    .argument('<id>', 'job id')
    .exitOverride()
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const job = await withAgent(cmd, (agent) => agent.jobGet(id));
      print(cmd, job, () => `${JSON.stringify(job, null, 2)}\n`);
    });

  jobs
    .command('wait')
    .description('follow a job to its end; the exit code is its outcome')
    .argument('<id>', 'job id')
    .exitOverride()
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const json = cmd.optsWithGlobals<CliOptions>().json === true;
      const job = await withAgent(cmd, async (agent) => {
        const progress = json ? { update: () => {}, end: () => {} } : createProgressLine(process.stderr);
        try {
          return await agent.follow(id, ({ job: j }) => {
            if (j.progress) progress.update(progressEventOf(j.progress));
          });
        } finally {
          progress.end();
        }
      });
      print(cmd, job, () => `job ${job.id} ${job.state}${job.error ? `: ${job.error.code}: ${job.error.message}` : ''}\n`);
      if (job.state !== 'succeeded') process.exitCode = errorOfRecord(job).exitCode;
    });

  jobs
    .command('cancel')
    .description('cancel a job: child processes killed, uploads aborted, writers thawed, no manifest')
    .argument('<id>', 'job id')
    .exitOverride()
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const job = await withAgent(cmd, (agent) => agent.jobCancel(id));
      print(cmd, job, () => `job ${job.id}: ${job.state === 'cancelled' ? 'cancelled' : job.cancelRequested ? 'cancel requested' : `already ${job.state}`}\n`);
    });

  program
    .command('status')
    .description('agent, host facts (systeminformation), queue and running jobs')
    .exitOverride()
    .action(async (_opts: unknown, cmd: Command) => {
      const status = await withAgent(cmd, (agent) => agent.status());
      print(cmd, status, () => statusText(status));
    });
}

