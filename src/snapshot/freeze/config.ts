import { z } from 'zod';
import { absolutePath, duration } from '../../config-fields.ts';

/** The writers frozen for a consistent backup's point in time (SPEC §3), as an environment's config gives them. */
export const freezeSchema = z
  .object({
    /** cgroup directories: v1 (with freezer.state) or v2 (with cgroup.freeze). */
    cgroups: z.array(absolutePath.refine((p) => p.startsWith('/sys/fs/cgroup/') && !p.includes('..'), 'must be a cgroup directory under /sys/fs/cgroup')).default([]),
    /** Mount points to fsfreeze. */
    filesystems: z.array(absolutePath).default([]),
    /** Whatever happens, writers are thawed after this long. */
    deadline: duration.default(30_000),
  })
  .strict();
export type FreezeConfig = z.infer<typeof freezeSchema>;
