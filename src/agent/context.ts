import type { RunContext } from '../snapshot/pipeline/context.ts';
import type { Config } from './config.ts';

/** What every operation gets: the config it runs under, and what a pipeline run gets (a logger, cancel, progress). */
export interface OperationContext extends RunContext {
  config: Config;
}
