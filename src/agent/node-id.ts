import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Config } from './config.ts';

const MACHINE_ID_FILE = '/etc/machine-id';

let derived: string | undefined;

/**
 * This node's id: `nodeId` from the config, or `node-` and 12 hex digits of a hash of
 * /etc/machine-id (of the host name where there is none: a bare container). Hashed, as
 * systemd asks of applications (machine-id(5)): the raw id is meant to stay on the host, and
 * the bucket is shared. Cloned machines share a machine-id; their configs must then set nodeId
 * (README "Many nodes, one bucket").
 */
export function nodeIdOf(config: Config): string {
  if (config.nodeId) return config.nodeId;
  derived ??= deriveNodeId();
  return derived;
}

function deriveNodeId(): string {
  let machineId = '';
  try {
    machineId = readFileSync(MACHINE_ID_FILE, 'utf8').trim();
  } catch {
    // none: the host name below
  }
  const source = /^[0-9a-f]{32}$/.test(machineId) ? `machine-id ${machineId}` : `hostname ${hostname()}`;
  return `node-${createHash('sha256').update('storage-agent node id\n').update(source).digest('hex').slice(0, 12)}`;
}
