import { describe, it, expect } from 'vitest';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { coordinatorEnv, agentEnv } from '../../packages/shared/src/config.js';
import { repoRoot } from '../harness/processes.js';

// No Docker engine or Kubernetes API here: check the deploy files against the code instead, so an entry
// point or an environment variable cannot drift from what the services read.
const known = new Set([...Object.keys(coordinatorEnv.shape), ...Object.keys(agentEnv.shape), 'POD_IP', 'SYNCFLOW_COORDINATOR']);
const entry = (cmd: string[] | undefined) => cmd?.find((c) => c.endsWith('.js'));

describe('deploy/', () => {
  it('Kubernetes manifests parse, name existing entry points and only known variables', () => {
    const dir = join(repoRoot, 'deploy/k8s');
    const docs = readdirSync(dir).filter((f) => f.endsWith('.yaml'))
      .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => ({ f, doc: d.toJS() })));
    expect(docs.length).toBeGreaterThanOrEqual(6);
    for (const { f, doc } of docs) {
      expect(doc.apiVersion, f).toBeTruthy();
      expect(doc.kind, f).toBeTruthy();
      expect(doc.metadata?.name, f).toBeTruthy();
      if (doc.kind === 'ConfigMap' || doc.kind === 'Secret') {
        for (const k of Object.keys(doc.data ?? doc.stringData ?? {})) expect(known, `${f}: ${k}`).toContain(k);
      }
      if (doc.kind !== 'Deployment') continue;
      expect(doc.spec.selector.matchLabels).toEqual(expect.objectContaining(doc.spec.template.metadata.labels));
      for (const c of doc.spec.template.spec.containers) {
        const js = entry(c.command);
        expect(js && existsSync(join(repoRoot, js.replace(/dist\/main\.js$/, 'src/main.ts'))), `${f}: ${js}`).toBe(true);
        for (const e of c.env ?? []) expect(known, `${f}: ${e.name}`).toContain(e.name);
      }
    }
  });

  it('the compose file names existing entry points and only known variables', () => {
    const compose = parse(readFileSync(join(repoRoot, 'deploy/docker-compose.yml'), 'utf8'), { merge: true });
    const ours = Object.entries<Record<string, unknown>>(compose.services).filter(([, s]) => s.image === 'syncflow:latest');
    expect(ours.map(([n]) => n).sort()).toEqual(['agent-a', 'agent-b', 'cli', 'coordinator']);
    for (const [name, s] of ours) {
      const js = entry((s.command ?? s.entrypoint) as string[]);
      expect(js && existsSync(join(repoRoot, js.replace(/dist\/main\.js$/, 'src/main.ts'))), `${name}: ${js}`).toBe(true);
      for (const k of Object.keys((s.environment ?? {}) as object)) expect(known, `${name}: ${k}`).toContain(k);
    }
    expect(compose.services.jaeger.environment.COLLECTOR_OTLP_ENABLED).toBe('true');
  });
});
