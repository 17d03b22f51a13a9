import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, TestClient, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

const bearer = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });

describe('what /metrics and /healthz show without a token', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    const source = path.join(sandbox.dir, 'site');
    await mkdir(source);
    await writeFile(path.join(source, 'index.html'), 'hello');
    await sandbox.writeConfig({ daemon: daemonSection(tokens), environments: { 'secret-shop': filesEnv({ uploads: source }) } });
    daemon = await startDaemon(sandbox.configPath);
    // One backup, so that /metrics has a per-environment series to hide.
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await client.call<{ jobId: string }>('backup.create', { env: 'secret-shop' });
    await client.call('job.subscribe', { jobId: ticket.jobId });
    await client.waitForNotification((n) => n.method === 'job.finished');
    await client.close();
  });
  afterAll(async () => {
    await daemon?.stop();
    await sandbox?.cleanup();
  });

  it('/metrics: 401 without a token or with a wrong one; a viewer token gets the metrics', async () => {
    for (const init of [{}, bearer(`${tokens.viewer}x`), { headers: { Authorization: `Basic ${Buffer.from(`u:${tokens.viewer}`).toString('base64')}` } }]) {
      const refused = await fetch(`${daemon.http}/metrics`, init);
      expect(refused.status).toBe(401);
      expect(refused.headers.get('www-authenticate')).toBe('Bearer realm="storage-agent"');
      const body = await refused.text();
      expect(body).not.toContain('storage_agent_');
      expect(body).not.toContain('secret-shop');
    }
    for (const token of [tokens.viewer, tokens.admin]) {
      const answer = await fetch(`${daemon.http}/metrics`, bearer(token));
      expect(answer.status).toBe(200);
      const text = await answer.text();
      expect(text).toMatch(/storage_agent_backup_stored_bytes_total\{env="secret-shop"\} [1-9]/);
      expect(text).toMatch(/storage_agent_process_resident_memory_bytes \d+/);
    }
  });

  it('/healthz: the status only without a token; version and job counts with one', async () => {
    const open = await fetch(`${daemon.http}/healthz`);
    expect(open.status).toBe(200);
    expect(await open.text()).toBe('{"status":"ok"}\n');
    const wrong = await fetch(`${daemon.http}/healthz`, bearer(`${tokens.viewer}x`));
    expect(await wrong.json()).toEqual({ status: 'ok' });
    const known = await fetch(`${daemon.http}/healthz`, bearer(tokens.viewer));
    expect(await known.json()).toEqual({ status: 'ok', version: expect.any(String), jobs: { running: 0, queued: 0 } });
  });

  it('daemon.metrics.requireToken: false opens /metrics to scrapers (taken on SIGHUP); /healthz stays minimal', async () => {
    const config = await readFile(sandbox.configPath, 'utf8');
    try {
      await sandbox.writeConfig({
        daemon: daemonSection(tokens, { metrics: { requireToken: false } }),
        environments: { 'secret-shop': filesEnv({ uploads: path.join(sandbox.dir, 'site') }) },
      });
      const reloads = daemon.logs().filter((l) => l.msg === 'SIGHUP: config reloaded').length;
      daemon.child.kill('SIGHUP');
      await daemon.waitForLog('the reload', () => daemon.logs().filter((l) => l.msg === 'SIGHUP: config reloaded').length > reloads);
      const open = await fetch(`${daemon.http}/metrics`);
      expect(open.status).toBe(200);
      expect(await open.text()).toMatch(/storage_agent_backup_stored_bytes_total\{env="secret-shop"\} [1-9]/);
      expect(await (await fetch(`${daemon.http}/healthz`)).json()).toEqual({ status: 'ok' });
    } finally {
      await writeFile(sandbox.configPath, config);
    }
  });
});
