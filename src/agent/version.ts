import { hostname } from 'node:os';
import pkg from '../../package.json' with { type: 'json' };

export const AGENT_VERSION: string = pkg.version;
export const HOST: string = hostname();
