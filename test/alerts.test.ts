/**
 * docs/alerts.yaml (issue #12): valid Prometheus rules (promtool check rules), alerts that fire
 * when they should and only then (promtool test rules, on synthetic series), and expressions
 * that name only metrics a real daemon exposes.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens } from './support/daemon.ts';

const RULES = path.resolve(import.meta.dirname, '../docs/alerts.yaml');
/** Debian's prometheus package ships it (scripts/test.sh installs it). */
const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((file) => existsSync(file));

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
interface RuleFile {
  groups: { name: string; rules: Rule[] }[];
}

const node = { job: 'storage-agent', instance: 'web-17:7800' };
const series = (name: string, labels: Record<string, string>) =>
  `${name}{${Object.entries({ ...node, ...labels }).map(([k, v]) => `${k}="${v}"`).join(',')}}`;
/** An alert as promtool reports it: the series' labels, the rule's, and the alert's name. */
const fired = (alert: string, severity: string, labels: Record<string, string>) => ({ exp_labels: { alertname: alert, severity, ...node, ...labels } });
const H = 3600;

describe('docs/alerts.yaml', () => {
  let sandbox: Sandbox;
  let rules: RuleFile;
  beforeAll(async () => {
    sandbox = await createSandbox();
    rules = parse(await readFile(RULES, 'utf8')) as RuleFile;
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  it('has the four alerts, each with an expression, labels and annotations', () => {
    const all = rules.groups.flatMap((group) => group.rules);
    expect(all.map((rule) => rule.alert).sort()).toEqual(['StorageAgentLongWritePause', 'StorageAgentNoRecentBackup', 'StorageAgentOrphanUploads', 'StorageAgentRestoreFailed']);
    for (const rule of all) {
      expect(rule.expr.trim().length, rule.alert).toBeGreaterThan(0);
      expect(['warning', 'critical'], rule.alert).toContain(rule.labels.severity);
      expect(Object.keys(rule.annotations).sort(), rule.alert).toEqual(['description', 'summary']);
    }
  });

  it('names only metrics a real daemon exposes', async () => {
    const tokens = await writeTokens(sandbox);
    const site = path.join(sandbox.dir, 'site');
    await mkdir(site);
    await sandbox.writeConfig({ daemon: daemonSection(tokens), environments: { shop: filesEnv({ site }) } });
    const daemon = await startDaemon(sandbox.configPath);
    let text: string;
    try {
      text = await (await fetch(`${daemon.http}/metrics`, { headers: { Authorization: `Bearer ${tokens.viewer}` } })).text();
    } finally {
      await daemon.stop();
    }
    // Every metric is declared (# TYPE) from the start, with or without samples yet.
    const declared = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name, type]) => (type === 'histogram' ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name!])));
    const named = rules.groups.flatMap((group) => group.rules).flatMap((rule) => [...rule.expr.matchAll(/\bstorage_agent_[a-z_]+/g)].map(([name]) => name));
    expect(named.length).toBeGreaterThan(0);
    expect(named.filter((name) => !declared.has(name))).toEqual([]);
  });

  it.skipIf(!PROMTOOL)(`passes promtool check rules${PROMTOOL ? '' : ' (skipped: no promtool; Debian package prometheus)'}`, async () => {
    const result = await execa(PROMTOOL!, ['check', 'rules', RULES], { reject: false });
    expect(result.exitCode, `${String(result.stdout)}${String(result.stderr)}`).toBe(0);
  });

  it.skipIf(!PROMTOOL)('fires when it should, and only then (promtool test rules)', async () => {
    // The expressions, durations and labels under test; the annotations' templates are checked above.
    const bare = path.join(sandbox.dir, 'alerts-bare.yaml');
    await writeFile(bare, stringify({ groups: rules.groups.map((group) => ({ ...group, rules: group.rules.map(({ annotations: _annotations, ...rule }) => rule) })) }));
    const backup = { kind: 'backup.create' };
    const restore = { kind: 'backup.restore' };
    const tests = {
      rule_files: [bare],
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          input_series: [
            // shop: one success at t=0, none since. blog: a success every minute.
            { series: series('storage_agent_last_success_timestamp_seconds', { env: 'shop', ...backup }), values: '0x1700' },
            { series: series('storage_agent_last_success_timestamp_seconds', { env: 'blog', ...backup }), values: '0+60x1700' },
            // fresh: its backups fail (at t=60) and none ever succeeded.
            { series: series('storage_agent_last_failure_timestamp_seconds', { env: 'fresh', ...backup }), values: '_ 60x1700' },
            // shop failed a restore at 1 h; blog failed one at 1 h and restored fine at 2 h.
            { series: series('storage_agent_last_failure_timestamp_seconds', { env: 'shop', ...restore }), values: `_x60 ${H}x1700` },
            { series: series('storage_agent_last_failure_timestamp_seconds', { env: 'blog', ...restore }), values: `_x60 ${H}x1700` },
            { series: series('storage_agent_last_success_timestamp_seconds', { env: 'blog', ...restore }), values: `_x120 ${2 * H}x1700` },
            // shop: a 3 s pause at 5 min; blog: pauses under a second only.
            { series: series('storage_agent_pause_seconds_count', { env: 'shop' }), values: '1x4 2x200' },
            { series: series('storage_agent_pause_seconds_bucket', { env: 'shop', le: '1' }), values: '1x200' },
            { series: series('storage_agent_pause_seconds_count', { env: 'blog' }), values: '1+1x200' },
            { series: series('storage_agent_pause_seconds_bucket', { env: 'blog', le: '1' }), values: '1+1x200' },
            // A sweep aborts two orphan uploads at 10 min; the other store never has any.
            { series: series('storage_agent_orphan_uploads_aborted_total', { store: 'ceph' }), values: '0x9 2x200' },
            { series: series('storage_agent_orphan_uploads_aborted_total', { store: 'default' }), values: '0x200' },
          ],
          alert_rule_test: [
            { eval_time: '25h', alertname: 'StorageAgentNoRecentBackup', exp_alerts: [fired('StorageAgentNoRecentBackup', 'critical', { env: 'fresh', ...backup })] },
            {
              eval_time: '27h',
              alertname: 'StorageAgentNoRecentBackup',
              exp_alerts: [fired('StorageAgentNoRecentBackup', 'critical', { env: 'shop', ...backup }), fired('StorageAgentNoRecentBackup', 'critical', { env: 'fresh', ...backup })],
            },
            { eval_time: '5m', alertname: 'StorageAgentNoRecentBackup', exp_alerts: [] }, // for: 10m
            { eval_time: '30m', alertname: 'StorageAgentRestoreFailed', exp_alerts: [] },
            { eval_time: '90m', alertname: 'StorageAgentRestoreFailed', exp_alerts: [fired('StorageAgentRestoreFailed', 'critical', { env: 'shop', ...restore }), fired('StorageAgentRestoreFailed', 'critical', { env: 'blog', ...restore })] },
            { eval_time: '3h', alertname: 'StorageAgentRestoreFailed', exp_alerts: [fired('StorageAgentRestoreFailed', 'critical', { env: 'shop', ...restore })] },
            { eval_time: '26h', alertname: 'StorageAgentRestoreFailed', exp_alerts: [] }, // over a day old
            { eval_time: '3m', alertname: 'StorageAgentLongWritePause', exp_alerts: [] },
            { eval_time: '20m', alertname: 'StorageAgentLongWritePause', exp_alerts: [fired('StorageAgentLongWritePause', 'warning', { env: 'shop' })] },
            { eval_time: '2h', alertname: 'StorageAgentLongWritePause', exp_alerts: [] },
            { eval_time: '5m', alertname: 'StorageAgentOrphanUploads', exp_alerts: [] },
            { eval_time: '30m', alertname: 'StorageAgentOrphanUploads', exp_alerts: [fired('StorageAgentOrphanUploads', 'warning', { store: 'ceph' })] },
            { eval_time: '2h', alertname: 'StorageAgentOrphanUploads', exp_alerts: [] },
          ],
        },
      ],
    };
    const file = path.join(sandbox.dir, 'alerts.test.yaml');
    await writeFile(file, stringify(tests));
    const result = await execa(PROMTOOL!, ['test', 'rules', file], { reject: false });
    expect(result.exitCode, `${String(result.stdout)}${String(result.stderr)}`).toBe(0);
  });
});
