// The onRoleChange hook (config.onRoleChange): a shell command run with /bin/sh -c, one at
// a time in event order, never holding up polling. Environment:
//   PGMUX_EVENT     role_change | primary_change | fenced | diverged | misconfigured
//   PGMUX_NODE      host:port of the node (primary_change: the new primary, '' if none)
//   PGMUX_OLD_ROLE  its previous role (primary_change: the new primary's previous role)
//   PGMUX_NEW_ROLE  its new role
//   PGMUX_OLD_PRIMARY / PGMUX_NEW_PRIMARY  host:port of the primary before/after ('' if none)
// role_change fires only for a node whose role was known before (not on first discovery).

import { spawn } from 'node:child_process';
import type { Logger } from 'pino';

/** A hook still running after this is killed. */
const HOOK_TIMEOUT_MS = 60_000;
/** Hooks waiting to run beyond this are dropped (a flapping cluster must not pile them up). */
const MAX_PENDING_HOOKS = 100;

/** One event for the hook: what its environment tells the command. */
export interface HookRun {
  event: 'role_change' | 'primary_change' | 'fenced' | 'diverged' | 'misconfigured';
  node: string;
  oldRole: string;
  newRole: string;
  oldPrimary: string;
  newPrimary: string;
}

/** The queue of hook runs: one at a time, in the order the monitor published the events. */
export class RoleChangeHooks {
  private queue: HookRun[] = [];
  private running = false;

  /** `command` is read at each event, so RELOAD applies to the next one. */
  constructor(
    private readonly log: Logger,
    private readonly command: () => string | null,
  ) {}

  enqueue(h: HookRun): void {
    const cmd = this.command();
    if (!cmd) return;
    if (this.queue.length >= MAX_PENDING_HOOKS) {
      this.log.warn({ event: h.event, node: h.node }, 'onRoleChange: too many hooks pending, dropping this one');
      return;
    }
    this.queue.push(h);
    this.drain(cmd);
  }

  private drain(cmd: string): void {
    if (this.running) return;
    const h = this.queue.shift();
    if (!h) return;
    this.running = true;
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      this.running = false;
      this.drain(cmd);
    };
    const env = {
      ...process.env,
      PGMUX_EVENT: h.event,
      PGMUX_NODE: h.node,
      PGMUX_OLD_ROLE: h.oldRole,
      PGMUX_NEW_ROLE: h.newRole,
      PGMUX_OLD_PRIMARY: h.oldPrimary,
      PGMUX_NEW_PRIMARY: h.newPrimary,
    };
    let output = '';
    try {
      const child = spawn('/bin/sh', ['-c', cmd], { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: HOOK_TIMEOUT_MS });
      const collect = (d: Buffer) => {
        if (output.length < 4096) output += d.toString();
      };
      child.stdout.on('data', collect);
      child.stderr.on('data', collect);
      child.on('error', (err) => {
        this.log.error({ err, event: h.event, node: h.node }, 'onRoleChange hook could not be run');
        done();
      });
      child.on('close', (code, signal) => {
        const fields = { event: h.event, node: h.node, code, signal, output: output.trim() || undefined };
        if (code === 0) this.log.info(fields, 'onRoleChange hook done');
        else this.log.warn(fields, 'onRoleChange hook failed');
        done();
      });
    } catch (err) {
      this.log.error({ err, event: h.event, node: h.node }, 'onRoleChange hook could not be run');
      done();
    }
  }
}
