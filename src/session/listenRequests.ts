// LISTEN / UNLISTEN that pgmux answers itself, so the subscription lives on the shared
// listener (src/session/notifications.ts) and not on a pooled backend.
//
// A request qualifies when it arrives at a transaction's start and does nothing else: a
// simple Query whose statements are all LISTEN / UNLISTEN (any comments, quoting or
// number of statements), or an extended-protocol batch (Parse / Bind / Describe / Execute
// / Close / Flush, ending in Sync) whose statements are all such (postgres.js, pgJDBC,
// psycopg send LISTEN that way). Anything else runs on a backend, and the session pins the
// client there, so it still hears its notifications.
//
// This module only plans: it turns the held messages into the replies PostgreSQL would
// send, with the subscription steps in between; the session carries the plan out.

import { FrontendMsg, readCstr } from '../protocol/messages.js';
import type { HeldMessage } from '../protocol/framer.js';
import type { Classification } from '../routing/classifier.js';
import type { ListenOp } from '../routing/sessionEffects.js';
import { commandComplete } from '../protocol/resultSet.js';
import { bindStatement, parseParse, targetOf, type ParsedParse } from './preparedStatements.js';

/** Replies to write, and subscription changes to make before the replies that follow them. */
export type ListenStep = Buffer | ListenOp;

export interface ListenPlan {
  steps: ListenStep[];
  /** Named statements the batch prepared: the session remembers them like any Parse. */
  parsed: ParsedParse[];
}

const PARSE_COMPLETE = Buffer.from([0x31, 0, 0, 0, 4]);
const BIND_COMPLETE = Buffer.from([0x32, 0, 0, 0, 4]);
const CLOSE_COMPLETE = Buffer.from([0x33, 0, 0, 0, 4]);
const NO_DATA = Buffer.from([0x6e, 0, 0, 0, 4]);
/** ParameterDescription with no parameters (LISTEN takes none). */
const NO_PARAMETERS = Buffer.from([0x74, 0, 0, 0, 6, 0, 0]);

export const tagOf = (op: ListenOp): Buffer => commandComplete(op.kind === 'listen' ? 'LISTEN' : 'UNLISTEN');

/**
 * The plan for `held`, or null when the request is not (only) LISTEN / UNLISTEN.
 * `known` maps the client's named statements that are LISTEN / UNLISTEN to their operations
 * (filled here as the batch prepares them).
 */
export function planListen(
  held: readonly HeldMessage[],
  classify: (sql: string) => Classification,
  known: Map<string, readonly ListenOp[]>,
): ListenPlan | null {
  const n = held.length;
  if (n === 0) return null;
  const first = held[0]!;
  if (first.type === FrontendMsg.Query) {
    if (n !== 1) return null;
    const fx = classify(first.buf.toString('utf8', first.start + 5, first.end - 1)).session;
    if (!fx?.onlyListen) return null;
    const ops = fx.listen!;
    const steps: ListenStep[] = [];
    for (const op of ops) steps.push(op, tagOf(op));
    return { steps, parsed: [] };
  }
  if (held[n - 1]!.type !== FrontendMsg.Sync) return null;
  // Statements and portals of this batch; portals end with it (an implicit transaction).
  const statements = new Map<string, readonly ListenOp[]>();
  const portals = new Map<string, readonly ListenOp[]>();
  const lookup = (name: string): readonly ListenOp[] | undefined => statements.get(name) ?? (name === '' ? undefined : known.get(name));
  const steps: ListenStep[] = [];
  const parsed: ParsedParse[] = [];
  let newKnown: Array<[string, readonly ListenOp[] | null]> | null = null;
  for (let i = 0; i < n - 1; i++) {
    const m = held[i]!;
    switch (m.type) {
      case FrontendMsg.Parse: {
        const p = parseParse(m.buf, m.start, m.end);
        const fx = p === null ? undefined : classify(p.query).session;
        // Several statements in one Parse is PostgreSQL's error to report, on a backend.
        if (!fx?.onlyListen || fx.listen!.length !== 1 || p === null) return null;
        const ops = fx.listen!;
        statements.set(p.name, ops);
        if (p.name !== '') {
          parsed.push(p);
          (newKnown ??= []).push([p.name, ops]);
        }
        steps.push(PARSE_COMPLETE);
        break;
      }
      case FrontendMsg.Bind: {
        const st = bindStatement(m.buf, m.start, m.end);
        const portal = readCstr(m.buf, m.start + 5, m.end);
        const ops = st === null ? undefined : lookup(st.name);
        if (ops === undefined || portal === null) return null;
        portals.set(portal[0], ops);
        steps.push(BIND_COMPLETE);
        break;
      }
      case FrontendMsg.Describe: {
        const t = targetOf(m.buf, m.start, m.end);
        if (t === null) return null;
        if (t.kind === 0x53 /* S */) {
          if (lookup(t.name) === undefined) return null;
          steps.push(NO_PARAMETERS, NO_DATA);
        } else {
          if (!portals.has(t.name)) return null;
          steps.push(NO_DATA);
        }
        break;
      }
      case FrontendMsg.Execute: {
        const portal = readCstr(m.buf, m.start + 5, m.end);
        const ops = portal === null ? undefined : portals.get(portal[0]);
        if (ops === undefined) return null;
        for (const op of ops) steps.push(op);
        // One statement per extended-protocol Execute: the tag is the last one's.
        steps.push(tagOf(ops[ops.length - 1]!));
        break;
      }
      case FrontendMsg.Close: {
        const t = targetOf(m.buf, m.start, m.end);
        if (t === null) return null;
        if (t.kind === 0x53 /* S */) {
          if (lookup(t.name) === undefined) return null;
          statements.delete(t.name);
          if (t.name !== '') (newKnown ??= []).push([t.name, null]);
        } else portals.delete(t.name);
        steps.push(CLOSE_COMPLETE);
        break;
      }
      case FrontendMsg.Flush:
        break;
      default:
        return null;
    }
  }
  if (newKnown !== null) {
    for (const [name, ops] of newKnown) {
      if (ops === null) known.delete(name);
      else known.set(name, ops);
    }
  }
  return { steps, parsed };
}

/**
 * Carries out a plan: replies in order, each subscription change finished before the
 * replies that follow it; an error (the listener could not connect) ends the request as
 * PostgreSQL would, with the ErrorResponse last. `done` gets the replies, without the
 * ReadyForQuery.
 */
export function runListenPlan(
  plan: ListenPlan,
  change: (op: ListenOp) => Promise<Buffer | null> | null,
  done: (replies: Buffer[]) => void,
  from = 0,
  out: Buffer[] = [],
): void {
  const steps = plan.steps;
  for (let i = from; i < steps.length; i++) {
    const step = steps[i]!;
    if (Buffer.isBuffer(step)) {
      out.push(step);
      continue;
    }
    const pending = change(step);
    if (pending === null) continue;
    pending.then((err) => {
      if (err === null) runListenPlan(plan, change, done, i + 1, out);
      else {
        out.push(err);
        done(out);
      }
    });
    return;
  }
  done(out);
}
