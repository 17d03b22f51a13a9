import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { AgentError, isErrorCode } from '../../errors.ts';
import { isFinished, type JobEvent, type JobRecord, type JobRequest, type JobState } from '../../jobs-wire.ts';
import { isProcessAlive } from '../../liveness.ts';
import { downloadKey, type Manifest } from '../../snapshot/manifest.ts';
import { findElement, materializeElement, storedObjectOfSize } from '../../snapshot/pipeline/artifacts.ts';
import { listBackups, readManifest, type BackupSummary } from '../../snapshot/pipeline/catalog.ts';
import { pitrWindows, type PitrWindow } from '../../snapshot/pipeline/point-in-time.ts';
import { binlogArchive } from '../binlog-archive.ts';
import type { Config } from '../config.ts';
import { checkName } from '../../snapshot/names.ts';
import type { ObjectStore } from '../../transport/stores/object-store.ts';
import type { ServedAgent } from '../../transport/ws/server.ts';
import { environmentOf, pitrServices } from '../config.ts';
import { loadKeyRing } from '../keys.ts';
import { backupStorage, openStore } from '../stores.ts';
import { ManifestCache } from './read-cache.ts';
import { scheduleStates, type ScheduleState } from '../scheduler.ts';
import { nodeIdOf } from '../node-id.ts';
import { AGENT_VERSION, HOST } from '../version.ts';
import type { BinlogStreamView } from '../binlog-streams.ts';
import type { JobEngine, JobFilter } from './engine.ts';
import { hostFacts, type HostFacts } from './host.ts';

export interface AgentStatus {
  agent: { version: string; host: string; nodeId: string; program: 'daemon' | 'cli'; pid: number; startedAt: string; uptimeSeconds: number; accepting: boolean };
  /** The daemon of this node, as its state file says. */
  daemon: { running: boolean; pid?: number; url?: string };
  host: HostFacts;
  jobs: { queued: number; running: number; concurrency: number };
  /** Jobs queued or running on this node (every agent process), oldest first. */
  active: JobRecord[];
  /** Automated backups per environment with a schedule: last and next run (the daemon's). */
  schedules: ScheduleState[];
  /** The daemon's binlog streams (pitr:), with their lag; absent from a CLI without the daemon. */
  binlogStreams?: BinlogStreamView[];
}

export interface EnvSummary {
  name: string;
  store: string;
  services: { name: string; kind: string }[];
  /** Writers frozen for consistent backups (cgroups or filesystems configured). */
  freeze: boolean;
}

/** What `backup.create` and the other job methods answer at once. */
export interface JobTicket {
  jobId: string;
  backupId?: string;
  state: JobState;
  position?: number;
  waitingFor?: string;
}

export interface UrlResult {
  url: string;
  expiresAt: string;
  /**
   * What the URL must serve: the element's sha256 and size from the authenticated manifest
   * (for a repository element, of the archive the agent wrote from its authenticated chunks).
   * The URL serves whatever the bucket holds, and whoever can write the bucket can replace it:
   * a downloader who checks these gets the backup's bytes or knows it did not.
   */
  sha256: string;
  bytes: number;
}

/**
 * The agent as the CLI and the protocol see it. The in-process implementation (below) and the
 * protocol client (remote-client.ts) implement the same interface, and every protocol method
 * is one of these calls: a command gives the same result in-process and with --remote.
 */
export interface AgentApi {
  readonly mode: 'local' | 'remote';
  status(): Promise<AgentStatus>;
  envList(): Promise<EnvSummary[]>;
  backupList(params: { env: string }): Promise<BackupSummary[]>;
  /** The restorable window of each mysql service with pitr: (docs/pitr.md). */
  backupWindow(params: { env: string }): Promise<PitrWindow[]>;
  backupShow(params: { env: string; id: string }): Promise<Manifest>;
  backupUrl(params: { env: string; id: string; element: string; expiresSeconds: number; allowUnauthenticated?: boolean }): Promise<UrlResult>;
  submit(request: JobRequest, options?: { requestId?: string }): Promise<JobTicket>;
  jobGet(jobId: string): Promise<JobRecord>;
  jobList(filter?: JobFilter): Promise<JobRecord[]>;
  jobCancel(jobId: string): Promise<JobRecord>;
  /** Follows a job to its end; `onEvent` sees queue changes and progress on the way. */
  follow(jobId: string, onEvent?: (event: JobEvent) => void): Promise<JobRecord>;
  /** The failure of a finished job as an AgentError (in-process: the original one). */
  failureOf(job: JobRecord): AgentError;
  close(): Promise<void>;
}

export function ticketOf(job: JobRecord): JobTicket {
  return {
    jobId: job.id,
    ...(job.backupId ? { backupId: job.backupId } : {}),
    state: job.state,
    ...(job.position !== undefined ? { position: job.position } : {}),
    ...(job.waitingFor !== undefined ? { waitingFor: job.waitingFor } : {}),
  };
}

/** A failed job's stored error as an AgentError with its stable code. */
export function errorOfRecord(job: JobRecord): AgentError {
  const code = job.error?.code;
  const message = job.error?.message ?? `job ${job.id} ended ${job.state}`;
  return new AgentError(isErrorCode(code) ? code : job.state === 'cancelled' ? 'E_CANCELLED' : 'E_INTERNAL', message, job.error?.details ? { details: job.error.details } : undefined);
}


/** The agent in this process: the job engine for jobs, the stores for reads; the daemon serves it (ServedAgent). */
export class LocalAgent implements AgentApi, ServedAgent {
  readonly mode = 'local' as const;
  readonly engine: JobEngine;
  readonly program: 'daemon' | 'cli';
  readonly #startedAt = new Date();
  #config: Config;
  /** Stores opened for reads, by name (S3 clients are reused); dropped on reload. */
  readonly #stores = new Map<string, Promise<ObjectStore>>();
  readonly #manifests = new ManifestCache();
  /** Set by the daemon: its scheduler's live view (otherwise schedule.json is read). */
  schedules: (() => ScheduleState[]) | undefined;
  /** Set by the daemon: its binlog streams. */
  binlogStreams: (() => BinlogStreamView[]) | undefined;

  constructor(config: Config, engine: JobEngine, program: 'daemon' | 'cli') {
    this.#config = config;
    this.engine = engine;
    this.program = program;
  }

  get config(): Config {
    return this.#config;
  }

  reload(config: Config): void {
    this.#config = config;
    this.#stores.clear();
    this.#manifests.clear();
    this.engine.reload(config);
  }

  async status(): Promise<AgentStatus> {
    const active = (await this.engine.list({ limit: 10_000 })).filter((j) => !isFinished(j.state)).reverse();
    const summary = this.engine.summary();
    return {
      agent: {
        version: AGENT_VERSION,
        host: HOST,
        nodeId: nodeIdOf(this.#config),
        program: this.program,
        pid: process.pid,
        startedAt: this.#startedAt.toISOString(),
        uptimeSeconds: Math.round((Date.now() - this.#startedAt.getTime()) / 1000),
        accepting: summary.accepting,
      },
      daemon: await daemonState(this.#config.stateDir),
      host: await hostFacts(this.#config.stateDir),
      jobs: {
        queued: active.filter((j) => j.state === 'queued').length,
        running: active.filter((j) => j.state === 'running').length,
        concurrency: summary.concurrency,
      },
      active,
      schedules: this.schedules ? this.schedules() : await scheduleStates(this.#config),
      ...(this.binlogStreams ? { binlogStreams: this.binlogStreams() } : {}),
    };
  }

  async envList(): Promise<EnvSummary[]> {
    return Object.entries(this.#config.environments).map(([name, env]) => ({
      name,
      store: env.store ?? this.#config.defaultStore,
      services: Object.entries(env.services).map(([service, s]) => ({ name: service, kind: s.kind })),
      freeze: (env.freeze?.cgroups.length ?? 0) + (env.freeze?.filesystems.length ?? 0) > 0,
    }));
  }

  async backupList({ env }: { env: string }): Promise<BackupSummary[]> {
    return listBackups(await this.#readStore(env), env, await loadKeyRing(this.#config));
  }

  async backupWindow({ env }: { env: string }): Promise<PitrWindow[]> {
    const streamed = pitrServices(environmentOf(this.#config, checkName('environment', env))).map((s) => s.name);
    const store = await this.#readStore(env);
    const keys = await loadKeyRing(this.#config);
    return pitrWindows(store, env, keys, streamed.map((name) => binlogArchive(this.#config, store, env, name, keys, { writer: false })));
  }

  async backupShow({ env, id }: { env: string; id: string }): Promise<Manifest> {
    // Shown with or without a MAC (how an operator looks at a backup made before keys existed:
    // its manifest has no mac field); a MAC that fails is refused, never shown as ours.
    return readManifest(await this.#readStore(env), env, id, { keys: await loadKeyRing(this.#config), allowUnauthenticated: true });
  }

  async backupUrl({ env, id, element: name, expiresSeconds, allowUnauthenticated }: { env: string; id: string; element: string; expiresSeconds: number; allowUnauthenticated?: boolean }): Promise<UrlResult> {
    const store = await this.#readStore(env);
    const manifest = await readManifest(store, env, id, { keys: await loadKeyRing(this.#config), allowUnauthenticated: allowUnauthenticated === true });
    const element = findElement(manifest, name);
    if (element.repository) {
      // Chunks no URL can serve: a standard archive is written beside the repository for the
      // URL's lifetime (prune deletes it once expired), and that is what the URL serves.
      if (store.kind === 'fs') throw new AgentError('E_PRESIGN_UNSUPPORTED', `the fs store cannot presign URLs: use 'backup get'`);
      const expiresAt = new Date(Date.now() + expiresSeconds * 1000);
      const key = downloadKey(env, id, element.name, `.${element.format}.zst`, expiresAt);
      const written = await materializeElement(backupStorage(this.#config, store, env), manifest, element, key, new AbortController().signal);
      return { url: await store.presignGet(key, expiresSeconds), expiresAt: expiresAt.toISOString(), ...written };
    }
    if (element.objects.length !== 1) throw new AgentError('E_PRESIGN_UNSUPPORTED', `element ${element.name} is stored in ${element.objects.length} segments: use 'backup get'`);
    // The manifest's MAC vouches for the sha256 and size, not for the object: no URL to an
    // object whose size already shows it is not the one the manifest names.
    const url = await store.presignGet(await storedObjectOfSize(store, manifest, element), expiresSeconds);
    return { url, expiresAt: new Date(Date.now() + expiresSeconds * 1000).toISOString(), sha256: element.sha256!, bytes: element.storedBytes };
  }

  async submit(request: JobRequest, options: { requestId?: string } = {}): Promise<JobTicket> {
    return ticketOf(await this.engine.submit(request, options));
  }

  jobGet(jobId: string): Promise<JobRecord> {
    return this.engine.require(jobId);
  }

  jobList(filter: JobFilter = {}): Promise<JobRecord[]> {
    return this.engine.list(filter);
  }

  jobCancel(jobId: string): Promise<JobRecord> {
    return this.engine.cancel(jobId);
  }

  /** The control plane's job.subscribe (transport/ws/server.ts): the job's events until it finishes. */
  watch(jobId: string, listener: (event: JobEvent) => void): () => void {
    return this.engine.watch(jobId, listener);
  }

  /** Jobs running and queued in this process (the daemon's /healthz). */
  jobCounts(): { running: number; queued: number } {
    return this.engine.summary();
  }

  async follow(jobId: string, onEvent?: (event: JobEvent) => void): Promise<JobRecord> {
    await this.engine.require(jobId);
    const off = onEvent ? this.engine.watch(jobId, onEvent) : () => {};
    try {
      return await this.engine.wait(jobId);
    } finally {
      off();
    }
  }

  failureOf(job: JobRecord): AgentError {
    return this.engine.failureOf(job.id) ?? errorOfRecord(job);
  }

  async close(): Promise<void> {
    await this.engine.close();
  }

  /** The environment's store for reads: opened once per config, manifests cached. */
  #readStore(env: string): Promise<ObjectStore> {
    const name = environmentOf(this.#config, checkName('environment', env)).store ?? this.#config.defaultStore;
    let store = this.#stores.get(name);
    if (!store) {
      store = openStore(this.#config, name).then((opened) => this.#manifests.wrap(name, opened));
      store.catch(() => this.#stores.delete(name));
      this.#stores.set(name, store);
    }
    return store;
  }
}

async function daemonState(stateDir: string): Promise<AgentStatus['daemon']> {
  try {
    const state = JSON.parse(await readFile(path.join(stateDir, 'daemon.json'), 'utf8')) as { pid: number; url?: string };
    return isProcessAlive(state.pid) ? { running: true, pid: state.pid, ...(state.url ? { url: state.url } : {}) } : { running: false };
  } catch {
    return { running: false };
  }
}
