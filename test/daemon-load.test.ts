import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, TestClient, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

const ENVS = ['env-a', 'env-b', 'env-c', 'env-d', 'env-e'];
const CLIENTS = 20;

describe('the daemon under many clients: 20 clients × 5 environments at once', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    const environments: Record<string, unknown> = {};
    for (const env of ENVS) {
      const dir = path.join(sandbox.dir, env);
      await mkdir(dir);
      for (let i = 0; i < 20; i++) await writeFile(path.join(dir, `page-${i}.html`), `<p>${env} ${i}</p>`.repeat(200));
      environments[env] = filesEnv({ web: dir });
    }
    await sandbox.writeConfig({ daemon: daemonSection(tokens), jobs: { concurrency: 2 }, environments });
    daemon = await startDaemon(sandbox.configPath);
  });
  afterAll(async () => {
    await daemon?.stop();
    await sandbox.cleanup();
  });

  it('every job is queued (positions visible), runs one at a time per environment, and completes; none is lost', async () => {
    const clients = await Promise.all(Array.from({ length: CLIENTS }, () => TestClient.connect(daemon.url, tokens.admin)));
    // Every client asks for a backup of every environment, all at once.
    const submitted = await Promise.all(
      clients.flatMap((client, c) =>
        ENVS.map(async (env) => {
          const ticket = await client.call<{ jobId: string; backupId: string; state: string; position?: number }>('backup.create', { env, requestId: `c${c}-${env}` });
          await client.call('job.subscribe', { jobId: ticket.jobId });
          return { client, env, ...ticket };
        }),
      ),
    );
    expect(submitted).toHaveLength(CLIENTS * ENVS.length);
    expect(new Set(submitted.map((s) => s.jobId)).size).toBe(100);
    const queued = submitted.filter((s) => s.state === 'queued');
    expect(queued.length).toBeGreaterThan(90); // at most 2 start at once
    expect(Math.max(...queued.map((s) => s.position ?? 0))).toBeGreaterThan(50);

    const finished = await Promise.all(
      submitted.map(({ client, jobId }) => client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === jobId, 240_000)),
    );
    expect(finished.map((f) => f.params.state)).toEqual(Array(100).fill('succeeded'));
    for (const client of clients) {
      // Exactly one job.finished per subscribed job, to the client that subscribed.
      const mine = submitted.filter((s) => s.client === client).map((s) => s.jobId).sort();
      expect(client.notifications.filter((n) => n.method === 'job.finished').map((n) => n.params.id as string).sort()).toEqual(mine);
    }

    const viewer = await TestClient.connect(daemon.url, tokens.viewer);
    for (const env of ENVS) {
      const backups = await viewer.call<{ id: string; restorable: boolean }[]>('backup.list', { env });
      expect(backups.filter((b) => b.restorable).map((b) => b.id).sort()).toEqual(submitted.filter((s) => s.env === env).map((s) => s.backupId).sort());
      // One at a time per environment: no two jobs of an environment overlapped.
      const jobs = (await viewer.call<{ startedAt: string; finishedAt: string }[]>('job.list', { env, limit: 1000 })).sort((a, b) => a.startedAt.localeCompare(b.startedAt));
      expect(jobs).toHaveLength(CLIENTS);
      for (let i = 1; i < jobs.length; i++) expect(Date.parse(jobs[i]!.startedAt)).toBeGreaterThanOrEqual(Date.parse(jobs[i - 1]!.finishedAt));
    }
    const metrics = await (await fetch(`${daemon.http}/metrics`, { headers: { Authorization: `Bearer ${tokens.viewer}` } })).text();
    expect(metrics).toContain('storage_agent_jobs_finished_total{kind="backup.create",status="succeeded"} 100');
    await Promise.all([...clients, viewer].map((c) => c.close()));
  });
});
