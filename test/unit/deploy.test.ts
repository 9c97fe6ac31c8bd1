// The deployment files (Dockerfile, docker-compose.yml, deploy/) agree with each other and
// with pgmux: probe paths and ports, the config path, and configs that pgmux's own loader
// accepts. There is no container engine in CI, so this is what keeps them honest.

import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfig, parseConfigObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { envName, SETTINGS } from '../../src/config/schema.js';

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

  it('has a postgres:15 primary, two replicas, pgmux and prometheus (outside profiles)', () => {
    expect(Object.keys(services).filter((s) => services[s].profiles === undefined).sort()).toEqual(['pgmux', 'primary', 'prometheus', 'replica1', 'replica2']);
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

// ---------------------------------------------------------------------------------------------
// Several instances: docker-compose profile multi (HAProxy + two pgmux), deploy/kubernetes/peering

const HAPROXY = '/usr/sbin/haproxy';

/** PGMUX_* variables a service sets: each is a setting, and they load with the service's config file. */
function checkPgmuxEnv(env: Obj, configFile: string | null): void {
  const known = new Set(SETTINGS.map((st) => envName(st.key)));
  const pgmuxEnv = Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith('PGMUX_')).map(([k, v]) => [k, String(v)]));
  for (const k of Object.keys(pgmuxEnv)) expect(known.has(k), `${k} is a pgmux setting`).toBe(true);
  const loadable = pgmuxEnv;
  // Without a file (the ConfigMap's names paths of the pod), a node from the env is enough.
  if (configFile === null) expect(() => loadConfig({}, { PGMUX_NODES: 'primary:5432', ...loadable })).not.toThrow();
  else expect(() => loadConfig({ config: join(ROOT, configFile) }, loadable)).not.toThrow();
}

/** haproxy.cfg as sections: "backend pgmux" -> its lines. */
function haproxySections(text: string): Map<string, string[]> {
  const sections = new Map<string, string[]>();
  let cur: string[] | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trimEnd();
    if (line.trim() === '') continue;
    if (!/^\s/.test(line)) sections.set(line.trim(), (cur = []));
    else cur?.push(line.trim());
  }
  return sections;
}

describe('docker-compose.yml profile multi: two pgmux behind HAProxy', () => {
  const profiled = Object.keys(services).filter((s) => services[s].profiles !== undefined).sort();
  const haproxy = services.haproxy as Obj;
  const peers = ['pgmux-a', 'pgmux-b'].map((n) => services[n] as Obj);
  const cfgFile = composeFile(haproxy, '/usr/local/etc/haproxy/haproxy.cfg');
  const cfg = haproxySections(read(cfgFile));
  const backendName = cfg.get('frontend postgres')!.find((l) => l.startsWith('default_backend '))!.split(/\s+/)[1]!;
  const backend = cfg.get(`backend ${backendName}`)!;
  const servers = backend.filter((l) => l.startsWith('server ')).map((l) => l.split(/\s+/));
  const defaults = backend.filter((l) => l.startsWith('default-server ')).join(' ');
  const pgmuxPort = parseConfigObject(parse(read('deploy/compose/pgmux.yaml')), 'pgmux.yaml').listen!.port;

  it('haproxy, pgmux-a and pgmux-b, all in profile multi', () => {
    expect(profiled).toEqual(['haproxy', 'pgmux-a', 'pgmux-b']);
    for (const s of profiled) expect(services[s].profiles).toEqual(['multi']);
    expect(String(haproxy.image)).toMatch(/^haproxy(:|$)/);
  });

  it('the instances run the default pgmux image and config', () => {
    for (const p of peers) {
      expect(p.build).toEqual(services.pgmux.build);
      expect(p.image).toBe(services.pgmux.image);
      expect(p.command).toEqual(services.pgmux.command);
      expect(p.volumes).toEqual(services.pgmux.volumes);
      expect(p.ports).toBeUndefined(); // reached through HAProxy only
    }
  });

  it(`${cfgFile} is valid (haproxy -c)`, { skip: !existsSync(HAPROXY) }, () => {
    const r = spawnSync(HAPROXY, ['-c', '-f', join(ROOT, cfgFile)], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  it('HAProxy: mode tcp, round-robin over both instances on the pgmux port, PROXY v2 to each, published 6433', () => {
    expect(cfg.get('defaults')).toContain('mode tcp');
    expect(backend).toContain('balance roundrobin');
    expect(servers.map((s) => s[2])).toEqual(peers.map((_, i) => `${['pgmux-a', 'pgmux-b'][i]}:${pgmuxPort}`));
    for (const s of servers) expect(`${s.join(' ')} ${defaults}`).toMatch(/\bsend-proxy-v2\b/);
    expect(`${defaults}`).toMatch(/\bcheck-send-proxy\b/); // health checks carry the header too
    const bind = cfg.get('frontend postgres')!.find((l) => l.startsWith('bind '))!;
    expect(haproxy.ports).toEqual([`6433:${bind.split(':').pop()}`]);
  });

  it('peering: distinct peer_id, peers naming both instances on the pgmux port; PROXY trusted from HAProxy only', () => {
    const ids = peers.map((p) => p.environment.PGMUX_PEER_ID);
    expect(ids).toEqual(['0', '1']);
    for (const p of peers) {
      expect(p.environment.PGMUX_PEERS).toBe(`0=pgmux-a:${pgmuxPort},1=pgmux-b:${pgmuxPort}`);
      const haproxyIp = haproxy.networks.balancer.ipv4_address as string;
      expect(p.environment.PGMUX_PROXY_PROTOCOL_TRUSTED).toBe(`${haproxyIp}/32`);
      expect(p.networks).toEqual(expect.arrayContaining(['default', 'balancer']));
      checkPgmuxEnv(p.environment, 'deploy/compose/pgmux.yaml');
    }
    const subnet = compose.networks.balancer.ipam.config[0].subnet as string;
    expect(subnet.startsWith(haproxy.networks.balancer.ipv4_address.split('.').slice(0, 3).join('.') + '.')).toBe(true);
  });
});

describe('deploy/kubernetes/peering: StatefulSet (peer_id = ordinal) and headless Service', () => {
  const DIR = `${K8S}/peering`;
  const kust = parse(read(`${DIR}/kustomization.yaml`)) as Obj;
  const docs = (kust.resources as string[]).flatMap((f) => parseAllDocuments(read(`${DIR}/${f}`)).map((d) => d.toJS() as Obj));
  const sts = docs.find((d) => d.kind === 'StatefulSet')!;
  const headless = docs.find((d) => d.kind === 'Service')!;
  const deployment = manifests.find((m) => m.kind === 'Deployment')!;
  const container = (sts.spec.template.spec.containers as Obj[]).find((c) => c.name === 'pgmux')!;
  const env = new Map<string, Obj>((container.env as Obj[]).map((e) => [e.name, e]));

  it('is a kustomize Component listing its files; they replace the Deployment and retarget the HPA', () => {
    expect(kust.kind).toBe('Component');
    expect([...kust.resources].sort()).toEqual(readdirSync(join(ROOT, DIR)).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort());
    expect(docs.map((d) => d.kind).sort()).toEqual(['Service', 'StatefulSet']);
    const patches = (kust.patches as Obj[]).map((p) => `${p.target.kind}/${p.target.name}: ${p.patch}`);
    expect(patches.some((p) => p.startsWith(`Deployment/${deployment.metadata.name}:`) && p.includes('$patch: delete'))).toBe(true);
    expect(patches.some((p) => p.startsWith('HorizontalPodAutoscaler/') && p.includes('value: StatefulSet'))).toBe(true);
  });

  it("the StatefulSet's pod is the Deployment's, plus the peer env and the wrapper", () => {
    expect(sts.metadata.name).toBe(deployment.metadata.name);
    expect(sts.spec.selector).toEqual(deployment.spec.selector);
    expect(sts.spec.serviceName).toBe(headless.metadata.name);
    const strip = (t: Obj) => {
      const c = structuredClone(t);
      for (const ct of c.spec.containers as Obj[]) {
        delete ct.command;
        ct.env = (ct.env as Obj[]).filter((e) => !['POD_NAME', 'PGMUX_PEERS'].includes(e.name));
      }
      return c;
    };
    expect(strip(sts.spec.template)).toEqual(strip(deployment.spec.template));
  });

  it('headless Service: clusterIP None over the same pods, lists not-ready pods, port 6432; PGMUX_PEERS names it', () => {
    expect(headless.spec.clusterIP).toBe('None');
    expect(headless.spec.publishNotReadyAddresses).toBe(true);
    expect(headless.spec.selector).toEqual(deployment.spec.selector.matchLabels);
    expect(headless.spec.ports.map((p: Obj) => p.port)).toEqual([6432]);
    expect(env.get('PGMUX_PEERS')!.value).toBe(`dns:${headless.metadata.name}:6432`);
    expect(env.get('POD_NAME')!.valueFrom.fieldRef.fieldPath).toBe('metadata.name');
    checkPgmuxEnv({ PGMUX_PEERS: env.get('PGMUX_PEERS')!.value, PGMUX_PEER_ID: '0' }, null);
  });

  it("the wrapper sets PGMUX_PEER_ID from the pod name's ordinal and execs the image's entrypoint with the args", () => {
    const bin = mkdtempSync(join(tmpdir(), 'pgmux-deploy-'));
    try {
      // A stand-in for node that shows what it was started with.
      writeFileSync(join(bin, 'node'), '#!/bin/sh\necho "$PGMUX_PEER_ID|$*"\n');
      chmodSync(join(bin, 'node'), 0o755);
      const [shell, ...shellArgs] = container.command as string[];
      for (const [pod, id] of [['pgmux-0', '0'], ['pgmux-12', '12'], ['my-pgmux-3', '3']]) {
        const out = execFileSync(shell!, [...shellArgs, ...container.args], { encoding: 'utf8', env: { PATH: `${bin}:/usr/bin:/bin`, POD_NAME: pod } });
        expect(out.trim()).toBe(`${id}|${[entrypoint[1], ...cmd].join(' ')}`);
      }
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  const kubectl = ['/usr/bin/kubectl', '/usr/local/bin/kubectl'].find((p) => existsSync(p));
  it('kubectl kustomize with components: [peering] renders a StatefulSet and no Deployment', { skip: kubectl === undefined, timeout: 60_000 }, () => {
    const tmp = mkdtempSync(join(tmpdir(), 'pgmux-kust-'));
    try {
      cpSync(join(ROOT, K8S), join(tmp, 'k'), { recursive: true });
      writeFileSync(join(tmp, 'k', 'kustomization.yaml'), read(join(K8S, 'kustomization.yaml')) + 'components:\n  - peering\n');
      const out = execFileSync(kubectl!, ['kustomize', join(tmp, 'k')], { encoding: 'utf8' });
      const rendered = parseAllDocuments(out).map((d) => d.toJS() as Obj);
      const kinds = rendered.map((d) => d.kind);
      expect(kinds).not.toContain('Deployment');
      expect(kinds.filter((k) => k === 'StatefulSet')).toHaveLength(1);
      expect(rendered.filter((d) => d.kind === 'Service').map((d) => d.metadata.name).sort()).toEqual(['pgmux', 'pgmux-peers']);
      expect(rendered.find((d) => d.kind === 'HorizontalPodAutoscaler')!.spec.scaleTargetRef.kind).toBe('StatefulSet');
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
