// CPU caps for process trees through the cgroup cpu controller, for the capped-nodes
// scenario: each PostgreSQL node is held to a fixed share of a CPU, as a separate small
// machine would be. cgroup v2 (cpu.max) where the unified hierarchy has the cpu controller,
// else cgroup v1 (cpu.cfs_quota_us / cpu.cfs_period_us). Needs root (or a delegated,
// writable hierarchy).
//
// Every group made here is registered with procs.mjs's undo list, so it is emptied (its
// processes moved back where they came from) and removed on normal exit, on error, on
// Ctrl-C and, through the watchdog shell, when the bench is killed.

import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { processTree, registerUndo, shq, unregisterUndo } from './procs.mjs';

export const PERIOD_US = 100_000;
/**
 * Scheduler weight of a capped group (v1 cpu.shares, default 1024; v2 cpu.weight, default
 * 100): ten times the default, so that on a busy machine a capped node still gets its whole
 * quota, as a machine of its own would. The quota keeps it from getting more.
 */
const WEIGHT_V1 = 10240;
const WEIGHT_V2 = 1000;

function read(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

function errText(e) {
  const hints = { EACCES: 'permission denied: needs root', EPERM: 'not permitted: needs root', EROFS: 'read-only file system (cgroups not writable here, e.g. a container)' };
  return e?.code ? `${e.code}${hints[e.code] ? ` (${hints[e.code]})` : ''}` : String(e?.message ?? e);
}

function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Where the cpu controller can be used: { ok: true, version: 2|1, root } or
 * { ok: false, reason }. From /proc/self/mountinfo: a cgroup2 mount whose
 * cgroup.controllers lists cpu (a controller is on one hierarchy only), else a v1 mount
 * with the cpu option; and its root must be writable by us.
 */
export function findCpuController(mountinfo = '/proc/self/mountinfo') {
  const ctl = findCpuMount(mountinfo);
  if (!ctl.ok) return ctl;
  try {
    accessSync(ctl.root, constants.W_OK);
  } catch (e) {
    return { ok: false, reason: `${ctl.root} (cgroup v${ctl.version} cpu controller) is not writable: ${errText(e)}` };
  }
  return ctl;
}

function findCpuMount(mountinfo) {
  const text = read(mountinfo);
  if (text === null) return { ok: false, reason: `cannot read ${mountinfo}` };
  const v1 = [];
  const v2 = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right) continue;
    const mountPoint = left.split(' ')[4]?.replace(/\\040/g, ' ');
    const [fstype, , superOpts = ''] = right.split(' ');
    if (fstype === 'cgroup2') v2.push(mountPoint);
    else if (fstype === 'cgroup' && superOpts.split(',').includes('cpu')) v1.push(mountPoint);
  }
  for (const root of v2) {
    if ((read(join(root, 'cgroup.controllers')) ?? '').split(/\s+/).includes('cpu')) return { ok: true, version: 2, root };
  }
  if (v1.length) return { ok: true, version: 1, root: v1[0] };
  if (v2.length) {
    const have = (read(join(v2[0], 'cgroup.controllers')) ?? '').trim() || 'none';
    return { ok: false, reason: `no cgroup cpu controller: cgroup v2 at ${v2[0]} offers only ${have}, and no cgroup v1 cpu hierarchy is mounted` };
  }
  return { ok: false, reason: 'no cgroup cpu controller: neither cgroup v2 nor a cgroup v1 cpu hierarchy is mounted' };
}

/** The group `pid` is in on the controller's hierarchy (absolute dir), or the root. */
function groupOf(ctl, pid) {
  const text = read(`/proc/${pid}/cgroup`) ?? '';
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const mine = ctl.version === 2 ? m[1] === '0' && m[2] === '' : m[2].split(',').includes('cpu');
    if (!mine) continue;
    const dir = join(ctl.root, m[3]);
    return existsSync(join(dir, 'cgroup.procs')) ? dir : ctl.root;
  }
  return ctl.root;
}

/** cpu.stat of a group: { periods, throttled, throttledMs } (v2 also usageMs). */
function cpuStat(dir) {
  const kv = Object.fromEntries(
    (read(join(dir, 'cpu.stat')) ?? '')
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((p) => p.length === 2)
      .map(([k, v]) => [k, Number(v)]),
  );
  return {
    periods: kv.nr_periods ?? null,
    throttled: kv.nr_throttled ?? null,
    throttledMs: kv.throttled_usec != null ? kv.throttled_usec / 1000 : kv.throttled_time != null ? kv.throttled_time / 1e6 : null,
    usageMs: kv.usage_usec != null ? kv.usage_usec / 1000 : null,
  };
}

/** One cgroup with a CPU quota, holding whole process trees. */
class CpuCap {
  constructor(ctl, name, cpus, periodUs) {
    this.ctl = ctl;
    this.name = name;
    this.dir = join(ctl.root, name);
    this.periodUs = periodUs;
    this.quotaUs = Math.max(1000, Math.round(cpus * periodUs));
    this.origin = ctl.root;
    this.released = false;
  }

  /** mkdir + quota. Throws Error(reason). */
  create() {
    try {
      mkdirSync(this.dir);
    } catch (e) {
      throw new Error(`cannot create ${this.dir}: ${errText(e)}`);
    }
    const undo = () => this.release();
    // A shell version of release() for the watchdog (the bench was SIGKILLed).
    const d = shq(this.dir);
    const shell =
      `for i in 1 2 3 4 5 6 7 8 9 10; do [ -d ${d} ] || break; ` +
      `for p in $(cat ${d}/cgroup.procs 2>/dev/null); do echo $p > ${shq(join(this.origin, 'cgroup.procs'))} 2>/dev/null || echo $p > ${shq(join(this.ctl.root, 'cgroup.procs'))} 2>/dev/null; done; ` +
      `rmdir ${d} 2>/dev/null && break; sleep 1; done`;
    registerUndo(this.dir, { sync: undo, shell });
    try {
      if (this.ctl.version === 2) {
        writeFileSync(join(this.dir, 'cpu.max'), `${this.quotaUs} ${this.periodUs}`);
        writeFileSync(join(this.dir, 'cpu.weight'), String(WEIGHT_V2));
      } else {
        writeFileSync(join(this.dir, 'cpu.cfs_period_us'), String(this.periodUs));
        writeFileSync(join(this.dir, 'cpu.cfs_quota_us'), String(this.quotaUs));
        writeFileSync(join(this.dir, 'cpu.shares'), String(WEIGHT_V1));
      }
    } catch (e) {
      this.release();
      throw new Error(`cannot set the CPU quota of ${this.dir}: ${errText(e)}`);
    }
  }

  /** What was set, as the files say it. */
  describe() {
    const f = (name) => `${name}=${(read(join(this.dir, name)) ?? '?').trim()}`;
    return this.ctl.version === 2 ? `cpu.max="${(read(join(this.dir, 'cpu.max')) ?? '?').trim()}" ${f('cpu.weight')}` : `${f('cpu.cfs_quota_us')} ${f('cpu.cfs_period_us')} ${f('cpu.shares')}`;
  }

  /**
   * Move the tree under `rootPid` in: the root first (whatever it forks from then on is
   * born inside), then every process of its tree, twice (catching forks in between).
   * Returns how many processes of the tree are inside.
   */
  addTree(rootPid) {
    this.origin = groupOf(this.ctl, rootPid);
    const procs = join(this.dir, 'cgroup.procs');
    try {
      writeFileSync(procs, String(rootPid));
    } catch (e) {
      throw new Error(`cannot move pid ${rootPid} into ${this.dir}: ${errText(e)}`);
    }
    for (let pass = 0; pass < 2; pass++) {
      for (const s of processTree(rootPid).slice(1)) {
        try {
          writeFileSync(procs, String(s.pid));
        } catch {
          // exited meanwhile
        }
      }
    }
    const inside = new Set(this.pids());
    const tree = processTree(rootPid);
    const missing = tree.filter((s) => !inside.has(s.pid));
    if (missing.length) throw new Error(`${missing.length} of ${tree.length} processes of pid ${rootPid} did not move into ${this.dir}`);
    return tree.length;
  }

  pids() {
    return (read(join(this.dir, 'cgroup.procs')) ?? '')
      .split('\n')
      .filter(Boolean)
      .map(Number);
  }

  stat() {
    return cpuStat(this.dir);
  }

  /** Move every process back to where the tree came from, and remove the group. Idempotent, never throws. */
  release() {
    if (this.released) return;
    for (let i = 0; i < 20 && existsSync(this.dir); i++) {
      for (const pid of this.pids()) {
        try {
          writeFileSync(join(this.origin, 'cgroup.procs'), String(pid));
        } catch {
          try {
            writeFileSync(join(this.ctl.root, 'cgroup.procs'), String(pid));
          } catch {
            // exited
          }
        }
      }
      try {
        rmdirSync(this.dir);
        break;
      } catch {
        sleepSync(100); // a process was still on its way out (or forked in meanwhile)
      }
    }
    this.released = !existsSync(this.dir);
    if (this.released) unregisterUndo(this.dir);
  }
}

/**
 * Hold each tree to `cpus` CPUs: trees = [{ name, pid }]. Resolves { ctl, caps, describe(),
 * stats(), release() } or throws Error(reason) with nothing left behind.
 */
export function capTrees(trees, cpus, { periodUs = PERIOD_US, prefix = `pgmux-bench-${process.pid}`, ctl = findCpuController() } = {}) {
  if (!ctl.ok) throw new Error(ctl.reason);
  const caps = [];
  let enabledCpu = false;
  const subtree = join(ctl.root, 'cgroup.subtree_control');
  const releaseAll = () => {
    for (const c of caps) c.release();
    if (enabledCpu && caps.every((c) => c.released)) {
      try {
        writeFileSync(subtree, '-cpu');
      } catch {
        // something else uses it now: leave it on
      }
      enabledCpu = false;
      unregisterUndo(`${subtree} -cpu`);
    }
  };
  try {
    if (ctl.version === 2 && !(read(subtree) ?? '').split(/\s+/).includes('cpu')) {
      try {
        writeFileSync(subtree, '+cpu');
      } catch (e) {
        throw new Error(`cannot enable the cpu controller in ${subtree}: ${errText(e)}`);
      }
      enabledCpu = true;
      // Registered first, so it runs after the groups are gone.
      registerUndo(`${subtree} -cpu`, {
        sync: () => {
          try {
            writeFileSync(subtree, '-cpu');
          } catch {
            // still in use
          }
        },
        shell: `echo -cpu > ${shq(subtree)} 2>/dev/null`,
      });
    }
    for (const t of trees) {
      const cap = new CpuCap(ctl, `${prefix}-${t.name}`, cpus, periodUs);
      cap.create();
      caps.push(cap);
      cap.count = cap.addTree(t.pid);
      cap.tree = t;
    }
  } catch (e) {
    releaseAll();
    throw e;
  }
  return {
    ctl,
    caps,
    method: `cgroup v${ctl.version} at ${ctl.root}, one group per node: ${caps[0]?.describe() ?? ''}`,
    stats: () => caps.map((c) => ({ name: c.tree.name, ...c.stat() })),
    release: releaseAll,
    leftovers: () => caps.filter((c) => !c.released).map((c) => c.dir),
  };
}
