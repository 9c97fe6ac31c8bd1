// The deployment files (Dockerfile, docker-compose.yml, deploy/) agree with each other and
// with pgmux: probe paths and ports, the config path, and configs that pgmux's own loader
// accepts. There is no container engine in CI, so this is what keeps them honest.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfig, parseConfigObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';

const ROOT = join(import.meta.dirname, '..', '..');
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;

// ---------------------------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  cmd: string;
  args: string;
  stage: number;
}

/** Instructions with line continuations joined and comments dropped; stage = index of its FROM. */
function parseDockerfile(text: string): { instructions: Instruction[]; args: Map<string, string> } {
  const lines: string[] = [];
  let cur = '';
  for (const raw of text.split('\n')) {
    const t = raw.trim();
    if (cur === '' && (t === '' || t.startsWith('#'))) continue;
    if (t.endsWith('\\')) {
      cur += t.slice(0, -1) + ' ';
      continue;
    }
    lines.push(cur + t);
    cur = '';
  }
  const args = new Map<string, string>();
  let stage = -1;
  const instructions = lines.map((l) => {
    const m = /^(\S+)\s*(.*)$/.exec(l)!;
    const cmd = m[1]!.toUpperCase();
    if (cmd === 'FROM') stage++;
    if (cmd === 'ARG' && stage < 0) {
      const [k, v] = m[2]!.split('=');
      args.set(k!, v ?? '');
    }
    return { cmd, args: m[2]!, stage };
  });
  return { instructions, args };
}

const dockerfile = parseDockerfile(read('Dockerfile'));
const ins = (cmd: string, stage?: number) =>
  dockerfile.instructions.filter((i) => i.cmd === cmd && (stage === undefined || i.stage === stage));
const expand = (s: string) => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => dockerfile.args.get(a ?? b) ?? '');
const last = <T,>(xs: T[]): T => xs[xs.length - 1]!;

const froms = ins('FROM').map((i) => expand(i.args).split(/\s+/));
const runtime = froms.length - 1;
const entrypoint = JSON.parse(last(ins('ENTRYPOINT')).args) as string[];
const cmd = JSON.parse(last(ins('CMD')).args) as string[];
const CONFIG_PATH = cmd[cmd.indexOf('--config') + 1]!;

describe('Dockerfile', () => {
  it('is multi-stage: node:24-bookworm-slim (Node 24 LTS) build with npm ci + build, runtime with production deps', () => {
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms[0]![0]).toBe('node:24-bookworm-slim');
    expect(froms[0]!.map((s) => s.toLowerCase())).toContain('as');
    const buildName = froms[0]![froms[0]!.length - 1]!;
    const buildRuns = ins('RUN', 0).map((i) => i.args);
    expect(buildRuns.some((r) => /\bnpm ci\b/.test(r) && !/--omit=dev/.test(r))).toBe(true);
    expect(buildRuns.some((r) => /\bnpm run build\b/.test(r))).toBe(true);
    expect(froms[runtime]![0]).toMatch(/^node:24(-|$)/);
    const runtimeRuns = ins('RUN', runtime).map((i) => i.args);
    expect(runtimeRuns.some((r) => /\bnpm ci\b.*--omit=dev/.test(r))).toBe(true);
    expect(runtimeRuns.some((r) => /npm run build|\btsc\b/.test(r))).toBe(false);
    expect(ins('COPY', runtime).some((i) => i.args.includes(`--from=${buildName}`) && /\/dist\b/.test(i.args))).toBe(true);
    // Nothing else from the source tree: no src/, tests or dev dependencies in the image.
    expect(ins('COPY', runtime).some((i) => /\bsrc\b|\btest\b/.test(i.args) && !i.args.includes('--from='))).toBe(false);
  });

  it('runs as a numeric non-root user', () => {
    const user = last(ins('USER', runtime)).args.split(':')[0]!;
    expect(user).toMatch(/^\d+$/);
    expect(Number(user)).toBeGreaterThan(0);
  });

  it('exposes 6432 and 9187; entrypoint is dist/cli.js (package.json bin) and CMD starts with the config', () => {
    const ports = ins('EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ''));
    expect(ports).toEqual(expect.arrayContaining(['6432', '9187']));
    expect(entrypoint).toEqual(['node', '/app/dist/cli.js']);
    expect(last(ins('WORKDIR', runtime)).args).toBe('/app');
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> };
    expect(`/app/${pkg.bin.pgmux}`).toBe(entrypoint[1]);
    expect(cmd).toEqual(['start', '--config', '/etc/pgmux/pgmux.yaml']);
  });

  it('HEALTHCHECK GETs /healthz on 127.0.0.1:9187 with node', () => {
    const hc = last(ins('HEALTHCHECK')).args;
    const exec = JSON.parse(hc.slice(hc.indexOf('CMD') + 3).trim()) as string[];
    expect(exec[0]).toBe('node');
    expect(exec.join(' ')).toContain('http://127.0.0.1:9187/healthz');
    expect(exec.join(' ')).toMatch(/process\.exit\(1\)/);
  });

  it('.dockerignore keeps what the build needs and drops the rest', () => {
    const patterns = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
    for (const needed of ['package.json', 'package-lock.json', 'tsconfig.json', 'src']) expect(patterns).not.toContain(needed);
    for (const dropped of ['node_modules', 'dist', '.git']) expect(patterns).toContain(dropped);
  });
});

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

const compose = parse(read('docker-compose.yml'), { merge: true }) as Obj;
const services = compose.services as Obj;

/** "./host/path:/container/path[:ro]" -> { host, target }. */
function mounts(svc: Obj): Array<{ source: string; target: string }> {
  return (svc.volumes as string[]).map((v) => {
    const [source, target] = v.split(':');
    return { source: source!, target: target! };
  });
}

function composeFile(svc: Obj, target: string): string {
  const m = mounts(svc).find((x) => x.target === target);
  expect(m, `${target} is mounted`).toBeDefined();
  expect(m!.source.startsWith('./')).toBe(true);
  return m!.source.slice(2);
}

describe('docker-compose.yml', () => {
  const pgmux = services.pgmux as Obj;
  const configFile = composeFile(pgmux, CONFIG_PATH);
  const config = parseConfigObject(parse(read(configFile)), join(ROOT, configFile));

  it('has a postgres:15 primary, two replicas, pgmux and prometheus', () => {
    expect(Object.keys(services).sort()).toEqual(['pgmux', 'primary', 'prometheus', 'replica1', 'replica2']);
    for (const s of ['primary', 'replica1', 'replica2']) expect(services[s].image, s).toBe('postgres:15');
    expect(String(services.prometheus.image)).toMatch(/^prom\/prometheus(:|$)/);
  });

  it('bootstraps each replica with pg_basebackup -R from the primary', () => {
    for (const s of ['replica1', 'replica2']) {
      const r = services[s] as Obj;
      const script = [r.entrypoint, r.command].flat().filter(Boolean).join(' ');
      expect(script).toMatch(/pg_basebackup .*-R\b/);
      expect(script).toMatch(/-h "\$\$PRIMARY_HOST"|-h primary\b/);
      expect(r.environment.PRIMARY_HOST ?? 'primary').toBe('primary');
      expect(script).toMatch(/exec postgres\b/);
      expect(r.depends_on.primary.condition).toBe('service_healthy');
      expect(r.environment.PGPASSWORD).toBe(services.primary.environment.REPLICATION_PASSWORD);
      expect(r.environment.REPLICATION_USER).toBe(services.primary.environment.REPLICATION_USER);
      expect(mounts(r).some((m) => m.target === '/var/lib/postgresql/data')).toBe(true);
    }
  });

  it('initialises replication user and hba with deploy/compose/init-primary.sh', () => {
    const m = mounts(services.primary).find((x) => x.target.startsWith('/docker-entrypoint-initdb.d/'));
    expect(m).toBeDefined();
    expect(m!.source).toMatch(/^\.\/deploy\/compose\//);
    const script = read(m!.source.slice(2));
    expect(script.startsWith('#!/bin/bash')).toBe(true);
    expect(script).toMatch(/WITH REPLICATION LOGIN/);
    expect(script).toMatch(/host replication \$\{REPLICATION_USER\} all scram-sha-256.*pg_hba\.conf/);
    expect(script).toMatch(/GRANT pg_monitor/);
  });

  it('pgmux: built from the Dockerfile, ports 6432 and 9187', () => {
    expect(pgmux.build.context).toBe('.');
    expect(pgmux.build.dockerfile ?? 'Dockerfile').toBe('Dockerfile');
    expect(pgmux.ports).toEqual(expect.arrayContaining(['6432:6432', '9187:9187']));
    if (pgmux.command) expect(pgmux.command).toEqual(cmd);
  });

  it('deploy/compose/pgmux.yaml loads, listens on 6432/9187 and lists the three compose services', () => {
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 6432 });
    expect(config.http).toEqual({ host: '0.0.0.0', port: 9187 });
    expect(config.nodes!.map((n) => n.host)).toEqual(['primary', 'replica1', 'replica2']);
    for (const n of config.nodes!) {
      expect(Object.keys(services)).toContain(n.host);
      expect(n.port).toBe(5432); // the container port, not the host mapping
    }
    // Full validation too (the auth file must exist next to it).
    const full: Config = loadConfig({ config: join(ROOT, configFile) }, {});
    expect(full.authFile).toBe(join(ROOT, 'deploy/compose/userlist.txt'));
  });

  it('the credentials in pgmux.yaml and userlist.txt are the ones init-primary.sh creates', () => {
    const env = services.primary.environment as Obj;
    expect(config.healthCheckUser).toBe(env.MONITOR_USER);
    expect(config.healthCheckPassword).toBe(env.MONITOR_PASSWORD);
    // auth_file is mounted where pgmux.yaml's relative path points.
    const userlistTarget = join(CONFIG_PATH, '..', 'userlist.txt');
    expect(composeFile(pgmux, userlistTarget)).toBe('deploy/compose/userlist.txt');
    expect(read('deploy/compose/userlist.txt')).toContain(`"${env.APP_USER}" "${env.APP_PASSWORD}"`);
  });

  it('prometheus scrapes pgmux:9187/metrics', () => {
    const file = composeFile(services.prometheus, '/etc/prometheus/prometheus.yml');
    const prom = parse(read(file)) as Obj;
    const job = (prom.scrape_configs as Obj[]).find((j) => j.job_name === 'pgmux')!;
    expect(job).toBeDefined();
    expect(job.metrics_path ?? '/metrics').toBe('/metrics');
    expect(job.static_configs.flatMap((s: Obj) => s.targets)).toEqual(['pgmux:9187']);
  });
});

// ---------------------------------------------------------------------------------------------
// deploy/kubernetes

const K8S = 'deploy/kubernetes';
const k8sFiles = readdirSync(join(ROOT, K8S)).filter((f) => f.endsWith('.yaml')).sort();
const manifests: Obj[] = k8sFiles
  .filter((f) => f !== 'kustomization.yaml')
  .flatMap((f) =>
    parseAllDocuments(read(join(K8S, f))).map((d) => {
      expect(d.errors, f).toEqual([]);
      return d.toJS() as Obj;
    }),
  )
  .filter((d) => d !== null);
const byKind = (kind: string) => {
  const found = manifests.filter((m) => m.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0]!;
};

describe('deploy/kubernetes', () => {
  const deployment = byKind('Deployment');
  const service = byKind('Service');
  const configMap = byKind('ConfigMap');
  const pdb = byKind('PodDisruptionBudget');
  const hpa = byKind('HorizontalPodAutoscaler');
  const pod = deployment.spec.template.spec as Obj;
  const container = (pod.containers as Obj[]).find((c) => c.name === 'pgmux')!;
  const podLabels = deployment.spec.template.metadata.labels as Obj;
  const portByName = new Map<string, number>((container.ports as Obj[]).map((p) => [p.name, p.containerPort]));
  const resolvePort = (p: number | string) => (typeof p === 'number' ? p : portByName.get(p));
  const selects = (selector: Obj) => Object.entries(selector).every(([k, v]) => podLabels[k] === v);

  const mount = (container.volumeMounts as Obj[]).find((m) => CONFIG_PATH.startsWith(`${m.mountPath}/`))!;
  const configVolume = (pod.volumes as Obj[]).find((v) => v.name === mount?.name)!;
  const configText = configMap.data[CONFIG_PATH.slice(mount.mountPath.length + 1)] as string;
  const config = parseConfigObject(parse(configText), 'configmap pgmux.yaml');

  it('every file parses, and kustomization lists all of them', () => {
    expect(k8sFiles).toEqual(['configmap.yaml', 'deployment.yaml', 'hpa.yaml', 'kustomization.yaml', 'pdb.yaml', 'service.yaml']);
    const kust = parse(read(join(K8S, 'kustomization.yaml'))) as Obj;
    expect(kust.kind).toBe('Kustomization');
    expect([...kust.resources].sort()).toEqual(k8sFiles.filter((f) => f !== 'kustomization.yaml'));
  });

  it('Deployment: 3 replicas, selector matching its pods, the image CMD args', () => {
    expect(deployment.apiVersion).toBe('apps/v1');
    expect(deployment.spec.replicas).toBe(3);
    expect(selects(deployment.spec.selector.matchLabels)).toBe(true);
    expect(container.args ?? cmd).toEqual(cmd);
    expect(container.command).toBeUndefined(); // keep the image's ENTRYPOINT
  });

  it('probes: readiness GET /readyz and liveness GET /healthz on 9187', () => {
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(resolvePort(container.readinessProbe.httpGet.port)).toBe(9187);
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(resolvePort(container.livenessProbe.httpGet.port)).toBe(9187);
  });

  it('container ports 6432 and 9187, resources, non-root read-only securityContext', () => {
    expect([...portByName.values()].sort()).toEqual([6432, 9187]);
    expect(container.resources.requests.cpu).toBeDefined(); // the HPA needs a CPU request
    expect(container.resources.requests.memory).toBeDefined();
    expect(container.resources.limits.memory).toBeDefined();
    expect(container.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(container.securityContext.allowPrivilegeEscalation).toBe(false);
    expect(container.securityContext.runAsNonRoot ?? pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
  });

  it('config comes from the ConfigMap, mounted where the CMD reads it', () => {
    expect(configVolume.configMap.name).toBe(configMap.metadata.name);
    expect(typeof configText).toBe('string');
    expect(mount.readOnly).toBe(true);
  });

  it("the ConfigMap's pgmux.yaml loads, listens on the container ports, and its auth file is mounted", () => {
    expect(config.listen!.port).toBe(6432);
    expect(config.http!.port).toBe(9187);
    expect(config.http!.host).toBe('0.0.0.0'); // the kubelet probes the pod IP
    expect(config.nodes!.length).toBeGreaterThan(0);
    if (config.authFile) {
      const authMount = (container.volumeMounts as Obj[]).find((m) => config.authFile!.startsWith(`${m.mountPath}/`));
      expect(authMount, 'auth_file is under a volume mount').toBeDefined();
      expect((pod.volumes as Obj[]).find((v) => v.name === authMount!.name)!.secret).toBeDefined();
    }
  });

  it('terminationGracePeriodSeconds covers the preStop sleep plus shutdown_timeout', () => {
    const pre = container.lifecycle.preStop as Obj;
    const sleep = pre.sleep?.seconds ?? Number((pre.exec.command as string[]).join(' ').match(/^sleep (\d+)$/)![1]);
    expect(sleep).toBeGreaterThan(0);
    const shutdownS = (config.shutdownTimeoutMs ?? 30_000) / 1000;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(shutdownS + sleep);
  });

  it('Service: 6432 -> the postgres container port, 9187 for metrics, selecting the pods', () => {
    expect(selects(service.spec.selector)).toBe(true);
    const ports = service.spec.ports as Obj[];
    const pg = ports.find((p) => p.port === 6432)!;
    expect(resolvePort(pg.targetPort ?? pg.port)).toBe(6432);
    const metrics = ports.find((p) => p.port === 9187)!;
    expect(resolvePort(metrics.targetPort ?? metrics.port)).toBe(9187);
  });

  it('PodDisruptionBudget minAvailable 2 over the same pods', () => {
    expect(pdb.apiVersion).toBe('policy/v1');
    expect(pdb.spec.minAvailable).toBe(2);
    expect(selects(pdb.spec.selector.matchLabels)).toBe(true);
    expect(deployment.spec.replicas).toBeGreaterThan(pdb.spec.minAvailable);
  });

  it('HPA (autoscaling/v2) scales the Deployment on CPU', () => {
    expect(hpa.apiVersion).toBe('autoscaling/v2');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
    expect(hpa.spec.minReplicas).toBeGreaterThan(pdb.spec.minAvailable);
    expect(hpa.spec.maxReplicas).toBeGreaterThanOrEqual(hpa.spec.minReplicas);
    const cpu = (hpa.spec.metrics as Obj[]).find((m) => m.type === 'Resource' && m.resource.name === 'cpu');
    expect(cpu?.resource.target.type).toBe('Utilization');
  });

  it('the compose and Kubernetes files name files that exist', () => {
    expect(existsSync(join(ROOT, 'deploy/compose/pgmux.yaml'))).toBe(true);
    expect(existsSync(join(ROOT, 'deploy/compose/prometheus.yml'))).toBe(true);
  });
});
