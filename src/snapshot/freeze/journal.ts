import { z } from 'zod';
import { CrashJournal } from '../crash-journal.ts';

const savedTargetSchema = z.object({ kind: z.enum(['cgroup-v1', 'cgroup-v2', 'fsfreeze']), path: z.string() });
export type SavedTarget = z.infer<typeof savedTargetSchema>;

const recordSchema = z.object({
  pid: z.number().int(),
  env: z.string(),
  since: z.string(),
  /** When the lease ends whatever happens (ISO); records of earlier versions have none. */
  deadline: z.string().datetime({ offset: true }).optional(),
  targets: z.array(savedTargetSchema),
});
export type FreezeRecord = z.infer<typeof recordSchema>;

/** What is about to be frozen, journaled before anything is frozen (crash-journal.ts). */
export class FreezeJournal extends CrashJournal<FreezeRecord> {
  constructor(stateDir: string) {
    super(stateDir, 'frozen', recordSchema);
  }
}
