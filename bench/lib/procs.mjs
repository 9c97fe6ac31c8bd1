// Process bookkeeping for the benchmark: every process the bench starts is registered
// here by PID and stopped by PID (never by name) on normal exit, error, Ctrl-C or when
// the bench itself is killed (a detached watchdog shell); so are other changes to undo
// (registerUndo: the cgroups of the capped-nodes scenario). Also reads CPU time and RSS of
// a process tree from /proc.

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';

export const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

export const clockTicksPerSecond = CLK_TCK;

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Single-quote a string for sh. */
export function shq(s) {
  const str = String(s);
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(str) ? str : `'${str.replace(/'/g, `'\\''`)}'`;
}

/** `sh -c` line that raises the open-file limit (as far as the hard limit allows), then execs argv. */
export function withUlimit(argv, nofile) {
  return `ulimit -n ${nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec ${argv.map(shq).join(' ')}`;
}

/** argv that runs `line` through sh, as `postgres` when we are root. */
export function shAs(line, asPostgres) {
  return asPostgres && IS_ROOT ? ['runuser', '-u', 'postgres', '--', 'sh', '-c', line] : ['sh', '-c', line];
}

// ---- /proc -------------------------------------------------------------------------

/** Parsed /proc/<pid>/stat: ppid, utime, stime, cutime, cstime (ticks), comm. Null if gone. */
export function readStat(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm may contain spaces and parentheses: split after the last ')'.
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const f = text.slice(close + 2).split(' ');
  // f[0] = state (field 3), so field N is f[N - 3].
  return {
    pid,
    comm,
    state: f[0],
    ppid: Number(f[1]),
    utime: Number(f[11]),
    stime: Number(f[12]),
    cutime: Number(f[13]),
    cstime: Number(f[14]),
  };
}

function allStats() {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const s = readStat(Number(d));
    if (s) out.push(s);
  }
  return out;
}

/** The live process tree rooted at `root` (root first), from /proc/*\/stat by ppid. */
export function processTree(root) {
  const rootStat = readStat(root);
  if (!rootStat) return [];
  const stats = allStats();
  const byParent = new Map();
  for (const s of stats) {
    if (!byParent.has(s.ppid)) byParent.set(s.ppid, []);
    byParent.get(s.ppid).push(s);
  }
  const tree = [rootStat];
  for (let i = 0; i < tree.length; i++) {
    for (const c of byParent.get(tree[i].pid) ?? []) tree.push(c);
  }
  return tree;
}

/**
 * CPU seconds used so far by the tree under `root`: utime + stime of every live process,
 * plus cutime + cstime of every live process (children that already exited and were
 * reaped, e.g. Pgpool-II children that were replaced). Differences of two readings give
 * the CPU used in between.
 */
export function treeCpuSeconds(root) {
  let ticks = 0;
  for (const s of processTree(root)) ticks += s.utime + s.stime + s.cutime + s.cstime;
  return ticks / CLK_TCK;
}

/** VmRSS in bytes of one process (0 if gone or a zombie). */
export function rssBytes(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Proportional set size in bytes (shared pages split between their users), 0 if unreadable. */
export function pssBytes(pid) {
  try {
    const m = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Summed PSS of the tree under `root`. */
export function treePss(root) {
  let bytes = 0;
  for (const s of processTree(root)) bytes += pssBytes(s.pid);
  return bytes;
}

/** Summed VmRSS of the tree under `root`, and how many processes it has. */
export function treeRss(root) {
  const tree = processTree(root);
  let bytes = 0;
  for (const s of tree) bytes += rssBytes(s.pid);
  return { bytes, processes: tree.length };
}

export function alive(pid) {
  const s = readStat(pid);
  return s !== null && s.state !== 'Z';
}

// ---- the registry ------------------------------------------------------------------

let aborting = false;
/** After this, nothing new is started (a signal arrived; teardown is under way). */
export function setAborting() {
  aborting = true;
}
export function isAborting() {
  return aborting;
}

/** PIDs of long-running processes we started: pid -> { name, child }. */
const started = new Map();
/** Temp dirs to remove at the end. */
const tempDirs = new Set();
/** Other changes to undo at the end (cgroups): key -> { sync(), shell }, undone newest first. */
const undos = new Map();
let watchdogPid;

/**
 * Start a long-running process in its own process group (so a Ctrl-C in the terminal
 * reaches only the bench, which then stops it in order) and register it by PID.
 */
export function startProcess(name, argv, opts = {}) {
  if (aborting) throw new Error(`not starting ${name}: the bench is stopping`);
  const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: opts.stdio ?? 'ignore', cwd: opts.cwd, env: opts.env ?? process.env });
  if (!child.pid) throw new Error(`could not start ${name}: ${argv[0]} not runnable`);
  started.set(child.pid, { name, child });
  child.on('exit', () => {
    const e = started.get(child.pid);
    if (e) e.exited = true;
  });
  child.on('error', () => {});
  refreshWatchdog();
  return child;
}

export function registerTempDir(dir) {
  tempDirs.add(dir);
  refreshWatchdog();
}

/**
 * Something besides a process or a temp dir that must be undone at the end (e.g. a cgroup
 * the bench made): `sync()` undoes it from the bench (stopAll, stopAllSync; must not
 * throw), `shell` is the same as an sh snippet for the watchdog when the bench was killed.
 * Undone newest first, after the processes are stopped.
 */
export function registerUndo(key, { sync, shell }) {
  undos.set(key, { sync, shell });
  refreshWatchdog();
}

/** The change was undone by its owner. */
export function unregisterUndo(key) {
  if (undos.delete(key)) refreshWatchdog();
}

function runUndos() {
  for (const [key, u] of [...undos].reverse()) {
    try {
      u.sync();
    } catch {
      // best effort
    }
    undos.delete(key);
  }
}

/**
 * Stop the tree under `pid` by PID: `signal` to the root, wait up to `graceMs`, then
 * SIGKILL whatever of the tree (as seen before the signal and now) is still alive.
 */
export async function stopTree(pid, signal = 'SIGTERM', graceMs = 5000) {
  const seen = new Set(processTree(pid).map((s) => s.pid));
  // The real server under runuser/sh gets the signal too (runuser forwards only some).
  for (const p of seen) {
    try {
      process.kill(p, signal);
    } catch {
      // gone
    }
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && [...seen].some(alive)) await sleep(50);
  for (const s of processTree(pid)) seen.add(s.pid);
  for (const sig of ['SIGSTOP', 'SIGKILL']) {
    for (const p of seen) {
      if (!alive(p)) continue;
      try {
        process.kill(p, sig);
      } catch {
        // gone
      }
    }
  }
  started.delete(pid);
  refreshWatchdog();
}

/** Stop every registered process (async, graceful first) and remove temp dirs. */
export async function stopAll() {
  await Promise.all([...started.keys()].map((pid) => stopTree(pid, 'SIGTERM', 5000)));
  runUndos();
  removeTempDirs();
  killWatchdog();
}

/** Synchronous last resort for process.on('exit'): SIGKILL every registered tree. */
export function stopAllSync() {
  for (const pid of [...started.keys()]) {
    // Freeze the whole tree first, so no parent can fork a replacement for a killed child.
    const tree = processTree(pid);
    for (const sig of ['SIGSTOP', 'SIGKILL']) {
      for (const s of tree) {
        try {
          process.kill(s.pid, sig);
        } catch {
          // gone
        }
      }
    }
    started.delete(pid);
  }
  runUndos();
  removeTempDirs();
  killWatchdog();
}

function removeTempDirs() {
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  tempDirs.clear();
}

function killWatchdog() {
  if (!watchdogPid) return;
  try {
    process.kill(watchdogPid);
  } catch {
    // gone
  }
  watchdogPid = undefined;
}

/**
 * A detached shell that outlives a SIGKILLed bench and then kills the processes it
 * started (checking each PID still has the same start time, so a reused PID is left
 * alone) and removes the temp dirs. Rewritten whenever the registry changes.
 */
function refreshWatchdog() {
  const previous = watchdogPid;
  watchdogPid = undefined;
  // The new watchdog is up before the old one goes: no moment without one.
  const stopPrevious = () => {
    if (!previous) return;
    try {
      process.kill(previous);
    } catch {
      // gone
    }
  };
  if (started.size === 0 && tempDirs.size === 0 && undos.size === 0) return stopPrevious();
  const checks = [];
  for (const pid of started.keys()) {
    const st = startTime(pid);
    if (st === null) continue;
    checks.push(`[ "$(awk '{print $22}' /proc/${pid}/stat 2>/dev/null)" = "${st}" ] && killtree ${pid}`);
  }
  const dirs = [...tempDirs].map(shq).join(' ');
  const undoLines = [...undos.values()].reverse().map((u) => u.shell);
  // Top-down: stop the parent, list its children, kill it, then them (killing children
  // first would let a Pgpool-II parent fork replacements that then outlive it). The child
  // list is read with the shell's own `read`: awk over /proc/*/stat gives up at the first
  // process that exits while it runs.
  const killtree =
    'killtree() { kill -STOP "$1" 2>/dev/null; cs=""; ' +
    'for f in /proc/[0-9]*/stat; do read -r a b c d rest < "$f" 2>/dev/null && [ "$d" = "$1" ] && cs="$cs $a"; done; ' +
    'kill -9 "$1" 2>/dev/null; for c in $cs; do killtree "$c"; done; }';
  const script =
    `${killtree}; while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; cd /; ` +
    `${[...checks, ...undoLines].map((l) => `${l}; `).join('')}${dirs ? `rm -rf ${dirs}` : 'true'}`;
  try {
    const w = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
    w.on('error', () => {});
    w.unref();
    watchdogPid = w.pid;
  } catch {
    // best effort
  }
  stopPrevious();
}

function startTime(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Run a command to completion; resolves { code, stdout, stderr }. Registered while it runs. */
export function runCommand(name, argv, { timeoutMs = 0, env, cwd } = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = startProcess(name, argv, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd });
    } catch (e) {
      resolve({ code: -1, stdout: '', stderr: String(e.message ?? e), timedOut: false });
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          void stopTree(child.pid, 'SIGINT', 3000);
        }, timeoutMs)
      : null;
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      started.delete(child.pid);
      refreshWatchdog();
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr, timedOut });
    });
  });
}

export function fileExists(p) {
  return existsSync(p);
}
