import { statfs } from 'node:fs/promises';
import os from 'node:os';
import { formatBytes } from '../../units.ts';

/** What the agent knows about its host (systeminformation), for admission and `status`. */
export interface HostFacts {
  hostname: string;
  os: string;
  kernel: string;
  cpu: { brand: string; cores: number };
  load: [number, number, number];
  memory: { total: number; available: number };
  /** The filesystem holding the state directory (staging, journals, the embedded store). */
  disk: { size: number; available: number };
  uptimeSeconds: number;
}

let staticFacts: Promise<{ os: string; kernel: string; cpu: { brand: string; cores: number } }> | undefined;
let cached: { at: number; stateDir: string; resources: Promise<HostResources> } | undefined;
const CACHE_MS = 2_000;

/** What admission control looks at: free memory, and free disk where the state directory is. */
export type HostResources = Pick<HostFacts, 'memory' | 'disk'>;

/** Free memory and disk, at most a couple of seconds old. */
export function hostResources(stateDir: string): Promise<HostResources> {
  const now = Date.now();
  if (cached && cached.stateDir === stateDir && now - cached.at < CACHE_MS) return cached.resources;
  const resources = readResources(stateDir);
  cached = { at: now, stateDir, resources };
  resources.catch(() => {
    if (cached?.resources === resources) cached = undefined;
  });
  return resources;
}

/** systeminformation, loaded when first asked: commands that admit no job never need it. */
const systemInformation = async () => (await import('systeminformation')).default;

/** Everything `status` shows about the host. */
export async function hostFacts(stateDir: string): Promise<HostFacts> {
  const si = await systemInformation();
  staticFacts ??= Promise.all([si.osInfo(), si.cpu()]).then(([info, cpu]) => ({
    os: `${info.distro} ${info.release}`.trim(),
    kernel: info.kernel,
    cpu: { brand: `${cpu.manufacturer} ${cpu.brand}`.trim(), cores: cpu.cores },
  }));
  const [fixed, resources] = await Promise.all([staticFacts, hostResources(stateDir)]);
  const [l1, l5, l15] = os.loadavg();
  return {
    hostname: os.hostname(),
    ...fixed,
    load: [round(l1!), round(l5!), round(l15!)],
    ...resources,
    uptimeSeconds: Math.round(os.uptime()),
  };
}

async function readResources(stateDir: string): Promise<HostResources> {
  // statfs of the state directory itself, not systeminformation's fsSize: that runs `df`
  // synchronously (~10 ms of a blocked event loop per job) and matches mounts by path prefix.
  const [memory, disk] = await Promise.all([(await systemInformation()).mem(), statfs(stateDir).catch(() => undefined)]);
  return {
    memory: { total: memory.total, available: memory.available },
    // bavail: what an unprivileged writer may use (the root reserve is not ours to plan on).
    disk: disk ? { size: disk.blocks * disk.bsize, available: disk.bavail * disk.bsize } : { size: 0, available: 0 },
  };
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

export interface Floors {
  minFreeDiskBytes: number;
  minFreeMemoryBytes: number;
}

/** Why a job may not start on this host now, or undefined when it may. */
export function admissionProblem(facts: HostResources, floors: Floors): string | undefined {
  const problems: string[] = [];
  if (facts.disk.size > 0 && facts.disk.available < floors.minFreeDiskBytes) {
    problems.push(`free disk ${formatBytes(facts.disk.available)} is below the floor of ${formatBytes(floors.minFreeDiskBytes)} (jobs.minFreeDiskBytes)`);
  }
  if (facts.memory.available < floors.minFreeMemoryBytes) {
    problems.push(`free memory ${formatBytes(facts.memory.available)} is below the floor of ${formatBytes(floors.minFreeMemoryBytes)} (jobs.minFreeMemoryBytes)`);
  }
  return problems.length > 0 ? `waiting for host resources: ${problems.join('; ')}` : undefined;
}
