// The requests of one client on the backend it holds (transaction mode): per message, the
// bookkeeping that decides when the backend may go back to its pool (ReadyForQuery owed,
// an extended-protocol batch open), what each statement does to session state (from the
// statement analysis in src/routing/: settings to read back, state that pins the client,
// DEALLOCATE / DISCARD ALL), the rewriting of named prepared statements
// (statementForwarder.ts), and the coalescing of forwarded bytes into one write per run.
//
// The one release rule lives here, with the few questions derived from the same bookkeeping
// (mayRelease, atTransactionBoundary, queryRunning, idleInTransaction); the client session
// asks them and acts. Nothing else reads pendingRfq, txStatus or the open batch to decide.

import type { BackendConnection } from '../pool/backend.js';
import { Expect } from '../pool/backend.js';
import type { HeldMessage } from '../protocol/framer.js';
import { errorResponse, FrontendMsg, queryMessage, readCstr, readyForQuery } from '../protocol/messages.js';
import { pgmuxError } from '../protocol/errors.js';
import type { Classification } from '../routing/classifier.js';
import type { FunctionRef } from '../routing/functionLists.js';
import type { ListenOp, SessionEffects } from '../routing/sessionEffects.js';
import { bindStatement, buildParse, parseParse, targetOf, type ParsedParse } from './preparedStatements.js';
import { SettingsTracker } from './settingsTracker.js';
import type { StatementForwarder } from './statementForwarder.js';
import type { RouteClass } from '../routing/policy.js';
import { selfContainedStatement } from '../routing/pipelining.js';
import type { TrafficMeter } from '../observability/trafficStats.js';


/** What the tracker needs from the client session. */
export interface RequestHost {
  classify(sql: string): Classification;
  /** Writing to the backend must wait ('drain'): stop reading the client. */
  pauseReading(): void;
  /** The client sent Terminate. */
  terminated(): void;
  /** DISCARD ALL ran: it ended the client's LISTENs too. */
  discardedAll(): void;
  /** LISTEN / UNLISTEN run on the pinned backend: the shared listener drops those channels. */
  listensOnBackend(ops: readonly ListenOp[]): void;
  /** A statement that may change the database's functions (CREATE FUNCTION, ...) is sent. */
  functionsChanging(): void;
  /** query_cache (while collectWrites): a request is sent; its analysis, or null when what it may write is unknown. */
  requestSent(c: Classification | null): void;
  log(fields: Record<string, unknown>, msg: string): void;
}

const PARSE_COMPLETE = Buffer.from([0x31, 0, 0, 0, 4]);
const READY_IDLE = readyForQuery('I');
const MALFORMED_PARSE = { target: 'primary', reason: 'malformed Parse' } as const;
const UNKNOWN_STATEMENT = { target: 'primary', reason: 'unknown statement' } as const;

export class RequestTracker {
  /** Parse/Bind/... sent without their Sync: the backend still owes this batch's answers. */
  private extendedOpen = false;
  /** Why this client keeps its backend between transactions (session state), or null. */
  pinned: string | null = null;
  /** query_cache: tell the host of every request sent, to learn what the transaction writes. */
  collectWrites = false;
  /** Named statements -> their Parse's analysis (routes a later Bind, and its session effects). */
  readonly statementClasses = new Map<string, Classification>();
  /** Named statements that are LISTEN / UNLISTEN, answered by pgmux (see listenRequests.ts). */
  readonly listenStatements = new Map<string, readonly ListenOp[]>();
  /**
   * The last classifyFirst() read one read-only statement outside a transaction (a Query,
   * or a Parse or Bind of one): it may be re-run elsewhere if its replica dies before
   * answering, when the request is alone (replayGuard.ts checks its shape).
   */
  loneRead = false;
  /** The client ran SET ROLE / SESSION AUTHORIZATION (or something that may have): query_cache keys cannot tell its role. */
  roleChanged = false;
  /** The last classifyFirst() read a statement that leaves nothing behind (src/routing/pipelining.ts). */
  selfContained = false;
  /** Settings this client's statements may have changed: read back when the backend goes back. */
  readonly settings = new SettingsTracker();
  /** The analysis of the message routing read first, so forwarding it does not decode it again. */
  private firstClass: Classification | null = null;
  /** That message (the object itself: its bytes may be moved out of a read buffer meanwhile). */
  private firstMessage: HeldMessage | null = null;
  /** The backend of the message being forwarded (set by forward()). */
  private backend: BackendConnection | null = null;
  // Contiguous run of client bytes to forward with one write.
  private runBuf: Buffer | null = null;
  private runStart = 0;
  private runEnd = 0;

  /** Transaction mode: statements and session state are tracked (session mode only forwards). */
  tracking = false;

  constructor(
    private readonly host: RequestHost,
    /** This client's named prepared statements (transaction mode). */
    readonly stmts: StatementForwarder,
    /** Request timing and message counts for the client's (database, user) totals. */
    private readonly meter: TrafficMeter,
  ) {}

  /**
   * The backend owes the client nothing and holds no transaction or open batch: the one
   * point where a backend may go back to its pool and notifications may be delivered.
   * (A pipelining client still expects answers on the same backend.)
   */
  atTransactionBoundary(b: BackendConnection): boolean {
    return b.txStatus === 0x49 /* I */ && b.pendingRfq === 0 && !this.extendedOpen;
  }

  /**
   * The backend goes back to its pool now: at a transaction boundary, in transaction mode
   * (session mode keeps it for the client's whole connection), unless the client is pinned.
   */
  mayRelease(b: BackendConnection): boolean {
    return this.tracking && this.pinned === null && this.atTransactionBoundary(b);
  }

  /**
   * The backend owes the client answers (a Query, a FunctionCall or a batch up to its Sync
   * runs or waits there): a cancel request has something to reach, and a client that leaves
   * now gets its query cancelled before the backend is closed.
   */
  queryRunning(b: BackendConnection): boolean {
    return b.pendingRfq > 0;
  }

  /** Inside a transaction block with nothing running: the client is thinking (idle_transaction_timeout). */
  idleInTransaction(b: BackendConnection): boolean {
    return b.pendingRfq === 0 && b.txStatus !== 0x49 /* I */;
  }

  /** The backend went back or is gone: nothing of it is kept. */
  detach(): void {
    this.backend = null;
    this.runBuf = null;
  }

  /** Hot path: bookkeeping by type, then extend the current forward run. */
  forward(b: BackendConnection, type: number, buf: Buffer, start: number, end: number): void {
    this.backend = b;
    const tracking = this.tracking;
    switch (type) {
      case FrontendMsg.Query:
        b.pendingRfq++;
        this.meter.requestSent();
        if (tracking) {
          const c = this.queryClass(buf, start, end);
          if (this.collectWrites) this.host.requestSent(c);
          if (c.changesFunctions === true) this.host.functionsChanging();
          const fx = c.session;
          if (fx !== undefined && this.onSessionEffects(b, fx, null)) return;
          b.expect(Expect.Rfq);
        }
        break;
      case FrontendMsg.FunctionCall:
        b.pendingRfq++;
        this.meter.requestSent();
        if (this.collectWrites) this.host.requestSent(null);
        if (tracking) b.expect(Expect.Rfq);
        break;
      case FrontendMsg.Sync:
        b.pendingRfq++;
        this.meter.requestSent();
        this.extendedOpen = false;
        if (tracking) b.expect(Expect.Rfq);
        break;
      case FrontendMsg.Parse: {
        this.extendedOpen = true;
        const r = this.meter.record;
        r.clientParses++;
        // A named statement's Parse is counted where the statement forwarder sends one.
        if (!tracking || buf[start + 5] === 0) r.serverParses++;
        if (tracking) {
          if (buf[start + 5] !== 0) {
            this.flushRun();
            const p = parseParse(buf, start, end);
            const c = p === null ? null : this.host.classify(p.query);
            if (p !== null && c !== null && !this.stmts.has(p.name)) this.statementClasses.set(p.name, c);
            if (this.collectWrites) this.host.requestSent(c);
            if (c?.changesFunctions === true) this.host.functionsChanging();
            if (c?.session !== undefined) this.onSessionEffects(b, c.session, undefined);
            this.stmts.parse(b, buf, start, end, p);
            return;
          }
          // Drivers (psycopg) also send DEALLOCATE through the extended protocol.
          const uc = this.unnamedParseClass(buf, start, end);
          if (this.collectWrites) this.host.requestSent(uc);
          if (uc?.changesFunctions === true) this.host.functionsChanging();
          const fx = uc?.session;
          if (fx !== undefined && this.onSessionEffects(b, fx, parseParse(buf, start, end))) return;
          b.expect(Expect.Parse);
        }
        break;
      }
      case FrontendMsg.Bind:
        this.extendedOpen = true;
        this.meter.record.binds++;
        // Unnamed portal + unnamed statement (the common case) is forwarded as is.
        if (tracking && !(buf[start + 5] === 0 && buf[start + 6] === 0)) {
          const st = bindStatement(buf, start, end);
          if (st !== null && st.name !== '' && this.stmts.has(st.name)) {
            // A statement prepared earlier does what its text does, each time it runs.
            const sc = this.statementClasses.get(st.name);
            if (this.collectWrites) this.host.requestSent(sc ?? null);
            if (sc?.changesFunctions === true) this.host.functionsChanging();
            const fx = sc?.session;
            if (fx !== undefined) this.onSessionEffects(b, fx, undefined);
            this.flushRun();
            this.stmts.rewrite(b, type, buf, start, end, st.nameStart, st.nameEnd, st.name);
            return;
          }
        }
        break;
      case FrontendMsg.Describe:
      case FrontendMsg.Close:
        this.extendedOpen = true;
        if (tracking) {
          if (buf[start + 5] === 0x53 /* S */ && buf[start + 6] !== 0) {
            const t = targetOf(buf, start, end);
            if (t !== null && this.stmts.has(t.name)) {
              this.flushRun();
              if (type === FrontendMsg.Close) this.stmts.close(b, buf, start, end, t.nameStart, t.nameEnd, t.name);
              else this.stmts.rewrite(b, type, buf, start, end, t.nameStart, t.nameEnd, t.name);
              return;
            }
          }
          if (type === FrontendMsg.Close) b.expect(Expect.Close);
        }
        break;
      case FrontendMsg.Execute:
      case FrontendMsg.Flush:
        this.extendedOpen = true;
        break;
      case FrontendMsg.Terminate:
        this.flushRun();
        this.host.terminated();
        return;
      default:
        break; // CopyData / CopyDone / CopyFail: part of a running statement
    }
    if (this.runBuf === buf && this.runEnd === start) {
      this.runEnd = end;
      return;
    }
    this.flushRun();
    this.runBuf = buf;
    this.runStart = start;
    this.runEnd = end;
  }

  /**
   * Acts on what a statement does to session state (src/routing/sessionEffects.ts), before
   * it is forwarded. `deallocateVia` says how a DEALLOCATE arrived: null for a Query, the
   * Parse for an unnamed Parse, undefined where it cannot be rewritten (a named statement).
   * Returns true when the message was written here (a rewritten DEALLOCATE).
   */
  private onSessionEffects(b: BackendConnection, fx: SessionEffects, deallocateVia: ParsedParse | null | undefined): boolean {
    this.settings.note(fx);
    // The current role is not in the settings fingerprint (pg_settings does not list it).
    if (!this.roleChanged && (fx.resetsAll || fx.settings.includes('role') || fx.settings.includes('session_authorization'))) this.roleChanged = true;
    if (fx.dirtiesBackend) b.needsReset = true;
    if (fx.pin !== null) this.pin(b, fx.pin);
    if (fx.listen !== null) {
      // Forwarded LISTEN runs on this backend: the client must stay where it listens, and
      // hear each channel from one place only (not also from the shared listener).
      if (fx.pin === null) this.pin(b, 'LISTEN inside a transaction');
      this.host.listensOnBackend(fx.listen);
    }
    // DISCARD ALL resets settings, drops temporary state and ends every LISTEN; inside a
    // transaction block it fails and changes nothing.
    if (fx.discardAll && b.txStatus === 0x49 /* I */) {
      this.unpin();
      b.applied.clear();
      b.syncedFingerprint = null;
      this.host.discardedAll();
    }
    if (deallocateVia === undefined || (!fx.dropsAllStatements && fx.deallocate === null)) return false;
    const r =
      deallocateVia === null
        ? this.stmts.deallocate(b, fx, queryMessage, Expect.Rfq)
        : this.stmts.deallocate(b, fx, (sql) => buildParse('', sql, deallocateVia.rest), Expect.Parse);
    return r === 'sent';
  }

  /**
   * Session state pgmux cannot move between backends (temporary tables, session advisory
   * locks, WITH HOLD cursors, LISTEN inside a transaction, SQL PREPARE, DO blocks): rather
   * than break silently, the client keeps its backend from now on, as in session mode, until
   * DISCARD ALL or it disconnects; then the backend is reset before anyone else gets it.
   * Counted in pgmux_pinned_clients and shown by SHOW CLIENTS.
   */
  private pin(b: BackendConnection, reason: string): void {
    b.needsReset = true;
    if (this.pinned !== null) return;
    this.pinned = reason;
    this.host.log({ reason }, 'client pinned to its backend (session state)');
  }

  unpin(): void {
    if (this.pinned === null) return;
    this.host.log({ reason: this.pinned }, 'client unpinned');
    this.pinned = null;
    if (this.backend !== null) this.backend.needsReset = false;
  }

  /**
   * Classifies a transaction's first message for routing: Query text, Parse text, or a
   * named statement's class. Whether it is a lone read is left in `loneRead` (no object per
   * transaction for it).
   */
  classifyFirst(m: HeldMessage): RouteClass {
    this.loneRead = false;
    this.selfContained = false;
    const body = m.start + 5;
    switch (m.type) {
      case FrontendMsg.Query: {
        const c = this.queryClass(m.buf, m.start, m.end);
        this.rememberFirst(c, m);
        this.loneRead = oneRead(c);
        this.selfContained = selfContainedStatement(c);
        return c;
      }
      case FrontendMsg.Parse: {
        const name = readCstr(m.buf, body, m.end);
        const query = name && readCstr(m.buf, name[1], m.end);
        if (!name || !query) return MALFORMED_PARSE;
        const c = this.host.classify(query[0]);
        if (name[0] !== '') this.statementClasses.set(name[0], c);
        else this.rememberFirst(c, m);
        this.loneRead = oneRead(c);
        this.selfContained = selfContainedStatement(c);
        return c;
      }
      case FrontendMsg.Bind: {
        const portal = readCstr(m.buf, body, m.end);
        const stmt = portal && readCstr(m.buf, portal[1], m.end);
        const c = stmt ? this.statementClasses.get(stmt[0]) : undefined;
        if (c === undefined) return UNKNOWN_STATEMENT;
        this.loneRead = oneRead(c);
        const reason = `prepared statement "${stmt![0]}"`;
        return c.calls === undefined ? { target: c.target, reason } : { target: c.target, reason, calls: c.calls };
      }
      case FrontendMsg.Describe: {
        // Describe of a named statement before its Bind (pgJDBC, when it needs the types):
        // routed as that statement, as a Bind of it would be.
        const name = m.buf[body] === 0x53 /* S */ ? readCstr(m.buf, body + 1, m.end) : null;
        const c = name ? this.statementClasses.get(name[0]) : undefined;
        if (c === undefined) return { target: 'primary', reason: 'starts with message "D"' };
        this.loneRead = oneRead(c);
        const reason = `prepared statement "${name![0]}"`;
        return c.calls === undefined ? { target: c.target, reason } : { target: c.target, reason, calls: c.calls };
      }
      default:
        return { target: 'primary', reason: `starts with message "${String.fromCharCode(m.type)}"` };
    }
  }

  /**
   * A batch of only named Parse messages and a Sync, outside a transaction (libpq's
   * PQprepare, pgbench -M prepared, psycopg's prepare): pgmux records the statements and
   * answers ParseComplete itself; the Parse runs on a backend when a Bind or Describe
   * first needs it there. Taking a backend for it would make a synchronous prepare wait
   * for the pool while the same client program holds a backend in another connection's
   * open transaction: a deadlock with more clients than backends. The cost: an invalid
   * statement reports PostgreSQL's error at its first use instead of at Parse.
   */
  prepareLocally(held: readonly HeldMessage[]): Buffer | null {
    const n = held.length;
    if (n < 2 || held[n - 1]!.type !== FrontendMsg.Sync) return null;
    const parsed = [];
    for (let i = 0; i < n - 1; i++) {
      const m = held[i]!;
      if (m.type !== FrontendMsg.Parse || m.buf[m.start + 5] === 0) return null;
      const p = parseParse(m.buf, m.start, m.end);
      if (p === null || this.stmts.has(p.name)) return null; // PostgreSQL must answer
      parsed.push(p);
    }
    this.remember(parsed);
    this.meter.record.clientParses += parsed.length;
    const out = Buffer.allocUnsafe(parsed.length * 5 + 6);
    for (let i = 0; i < parsed.length; i++) PARSE_COMPLETE.copy(out, i * 5);
    READY_IDLE.copy(out, parsed.length * 5);
    return out;
  }

  /**
   * Named statements prepared without a backend: remembered for routing (a later Bind of a
   * read statement may go to a replica) and, for a LISTEN, for the shared listener.
   */
  remember(parsed: ParsedParse[]): void {
    for (const p of parsed) {
      const c = this.host.classify(p.query);
      this.statementClasses.set(p.name, c);
      const fx = c.session;
      if (fx?.onlyListen && fx.listen!.length === 1) this.listenStatements.set(p.name, fx.listen!);
    }
    this.stmts.remember(parsed);
  }

  /**
   * SQL-level PREPARE / EXECUTE / DEALLOCATE outside a transaction, in transaction mode:
   * the statement would live on one backend and the next EXECUTE land on another, so
   * pgmux says so up front (protocol-level prepared statements do work).
   */
  refuseSqlPrepared(lone: Classification | null): Buffer | null {
    if (lone === null || lone.statements !== 1 || lone.session?.sqlPrepared !== true) return null;
    return Buffer.concat([
      errorResponse(
        pgmuxError('sqlPrepareInTransactionMode'),
      ),
      READY_IDLE,
    ]);
  }

  /** The held message routing read was answered by pgmux itself: never forwarded. */
  forgetFirst(): void {
    this.firstMessage = null;
  }

  /** Keeps the analysis of the held message `m` for when it is forwarded. */
  rememberFirst(c: Classification, m: HeldMessage): void {
    this.firstClass = c;
    this.firstMessage = m;
  }

  /** The kept analysis when the message at buf[start] is the one routing read, once; else null. */
  private takeFirst(buf: Buffer, start: number): Classification | null {
    const m = this.firstMessage;
    if (m === null || m.buf !== buf || m.start !== start) return null;
    this.firstMessage = null;
    return this.firstClass;
  }

  /** The analysis of an unnamed Parse's query (the first message's is already at hand). */
  private unnamedParseClass(buf: Buffer, start: number, end: number): Classification | null {
    const first = this.takeFirst(buf, start);
    if (first !== null) return first;
    const q = readCstr(buf, start + 6, end);
    return q === null ? null : this.host.classify(q[0]);
  }

  /** The analysis of a Query message (the first message's is already at hand). */
  queryClass(buf: Buffer, start: number, end: number): Classification {
    return this.takeFirst(buf, start) ?? this.host.classify(buf.toString('utf8', start + 5, end - 1));
  }

  /** Writes a message pgmux built (after what is pending, keeping order). */
  emit(msg: Buffer): void {
    this.flushRun();
    if (!this.backend!.write(msg)) this.host.pauseReading();
  }

  flushRun(): void {
    const buf = this.runBuf;
    if (buf === null) return;
    this.runBuf = null;
    const b = this.backend;
    if (b === null) return;
    const out = this.runStart === 0 && this.runEnd === buf.length ? buf : buf.subarray(this.runStart, this.runEnd);
    if (!b.write(out)) this.host.pauseReading();
  }
}

/** One read-only statement that opens no transaction: nothing is done twice if it runs again. */
function oneRead(c: Classification): boolean {
  return c.target === 'replica' && c.statements === 1 && !c.beginsTransaction;
}
