import { afterEach, describe, expect, it } from 'vitest';
import { cgroupTarget } from '../src/snapshot/freeze/targets.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('cgroup freezers reach FROZEN every time (real cgroups)', () => {
  const cgroups: TestCgroup[] = [];
  afterEach(async () => {
    await Promise.all(cgroups.splice(0).map((c) => c.remove()));
  });

  // A shell forking a child every 2 ms: its vfork() parks the parent where cgroup v1 never
  // counts it frozen, about 1 freeze in 100 here, unless the freezer is asked again.
  it.each(['v1', 'v2'] as const)('cgroup %s with a fork-heavy writer: 300 freezes in a row each land, and each thaws', async (version) => {
    const cgroup = await createCgroup(version);
    cgroups.push(cgroup);
    cgroup.spawn('sh', ['-c', 'while true; do sleep 0.002; done']);
    await sleep(100);
    const target = await cgroupTarget(cgroup.path);
    expect(target.kind).toBe(`cgroup-${version}`);
    let landed = 0;
    for (let i = 0; i < 300; i++) {
      await target.freeze(AbortSignal.timeout(5000));
      if (await cgroup.isFrozen()) landed++;
      await target.thaw();
      await sleep(3);
    }
    expect(landed).toBe(300);
    expect(await cgroup.isFrozen()).toBe(false);
  }, 60_000);
});
