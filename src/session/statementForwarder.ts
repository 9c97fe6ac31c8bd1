// One client's protocol-level named prepared statements under transaction pooling: which
// of its names map to which shared proxy statement, and the messages that make the backend
// it uses right now carry them. The session calls in from its forwarding switch; this
// module never touches a socket (it hands finished messages to `emit`, in order).
//
// The pieces it builds on: StatementNames (one proxy name per (text, types), shared by all
// clients) and the per-backend `prepared` set plus the expected-response queue in
// src/pool/backend.ts (which hides the ParseComplete/CloseComplete of messages put here).

import type { BackendConnection } from '../pool/backend.js';
import { Expect } from '../pool/backend.js';
import { FrontendMsg } from '../protocol/messages.js';
import type { SessionEffects } from '../routing/sessionEffects.js';
import type { TrafficMeter } from '../observability/trafficStats.js';
import {
  buildParse,
  closeStatement,
  isStalePlanError,
  NO_SUCH_STATEMENT,
  parseParse,
  renameIn,
  statementKey,
  type ClientStatement,
  type ParsedParse,
  type StatementNames,
} from './preparedStatements.js';

export class StatementForwarder {
  private readonly statements = new Map<string, ClientStatement>();
  /** Statements bound since the last ReadyForQuery (invalidated on a stale-plan error). */
  private boundInBatch: ClientStatement[] = [];

  constructor(
    private readonly names: StatementNames,
    /** max_prepared_statements (0 = no cap), read at use so RELOAD applies. */
    private readonly cap: () => number,
    /** Writes a finished message to the linked backend, after what is pending. */
    private readonly emit: (msg: Buffer) => void,
    /** Counts the Parse messages that reach a backend (PgBouncer's server parses). */
    private readonly meter: TrafficMeter,
  ) {}

  get size(): number {
    return this.statements.size;
  }

  has(name: string): boolean {
    return this.statements.has(name);
  }

  /** A client's named statement (its text and parameter types key a cached Bind of it). */
  statement(name: string): ClientStatement | undefined {
    return this.statements.get(name);
  }

  /** A Parse that never reached a live backend (its read re-runs): as if never sent. */
  forget(name: string): void {
    this.statements.delete(name);
  }

  /** Registers statements whose Parse pgmux answered itself (prepared on first use). */
  remember(parsed: readonly ParsedParse[]): void {
    for (const p of parsed) this.statements.set(p.name, this.statementFor(p));
  }

  private statementFor(p: ParsedParse): ClientStatement {
    const key = statementKey(p.query, p.rest);
    const proxyName = this.names.nameFor(key);
    // `rest` is a view of the client's read chunk, which a lean read buffer reuses: copied.
    return { key, proxyName, parse: buildParse(proxyName, p.query, p.rest), query: p.query, rest: Buffer.from(p.rest) };
  }

  /**
   * Parse of a named statement: remembered under its proxy name and sent under that name
   * (re-parsed if the backend already had it, so the client's own ParseComplete and any
   * error are exactly PostgreSQL's).
   */
  parse(b: BackendConnection, buf: Buffer, start: number, end: number, p: ParsedParse | null): void {
    if (p === null) {
      this.emit(Buffer.from(buf.subarray(start, end))); // malformed: let PostgreSQL say so
      b.expect(Expect.Parse);
      this.meter.record.serverParses++;
      return;
    }
    const existing = this.statements.get(p.name);
    if (existing !== undefined) {
      // PostgreSQL refuses to redefine a named statement without Close: keep that error.
      this.emit(buildParse(existing.proxyName, p.query, p.rest));
      b.expect(Expect.Parse);
      this.meter.record.serverParses++;
      return;
    }
    const st = this.statementFor(p);
    this.statements.set(p.name, st);
    if (b.prepared.has(st.proxyName)) {
      this.emit(closeStatement(st.proxyName));
      b.expect(Expect.CloseHidden);
    }
    this.emit(st.parse);
    b.expect(Expect.Parse, st.proxyName);
    this.meter.record.serverParses++;
    this.notePrepared(b, st.proxyName);
  }

  /** Bind / Describe of a client's named statement: prepare it here if needed, rename. */
  rewrite(b: BackendConnection, type: number, buf: Buffer, start: number, end: number, nameStart: number, nameEnd: number, clientName: string): void {
    const st = this.statements.get(clientName)!;
    if (this.names.current(st.key) !== st.proxyName) {
      // Invalidated (DDL changed its result type) or never registered: take today's name.
      st.proxyName = this.names.nameFor(st.key);
      st.parse = buildParse(st.proxyName, st.query, st.rest);
    }
    if (type === FrontendMsg.Bind) this.boundInBatch.push(st);
    if (b.prepared.has(st.proxyName)) {
      b.prepared.delete(st.proxyName); // re-insert: most recently used
      b.prepared.set(st.proxyName, true);
    } else {
      this.emit(st.parse);
      b.expect(Expect.ParseHidden, st.proxyName);
      this.meter.record.serverParses++;
      this.notePrepared(b, st.proxyName);
    }
    this.emit(renameIn(type, buf, start, end, nameStart, nameEnd, st.proxyName));
  }

  /** Close of a client's statement: it may be shared, so forget the name, close nothing real. */
  close(b: BackendConnection, buf: Buffer, start: number, end: number, nameStart: number, nameEnd: number, clientName: string): void {
    this.statements.delete(clientName);
    this.emit(renameIn(FrontendMsg.Close, buf, start, end, nameStart, nameEnd, NO_SUCH_STATEMENT));
    b.expect(Expect.Close);
  }

  /**
   * DEALLOCATE name / DEALLOCATE ALL / DISCARD ALL (as a Query, or as an unnamed Parse).
   * DEALLOCATE of one of the client's names becomes DEALLOCATE of the proxy name (prepared
   * first if this backend lacks it, so PostgreSQL answers exactly as it would have); other
   * clients re-prepare it when they next need it. `build` wraps the rewritten SQL in the
   * same kind of message; `expect` is what that message is answered with.
   * Returns 'sent' when it wrote the message, 'drops-all' when the message must be
   * forwarded as is and everything on the backend is gone, or null.
   */
  deallocate(b: BackendConnection, fx: SessionEffects, build: (sql: string) => Buffer, expect: Expect): 'sent' | 'drops-all' | null {
    if (fx.dropsAllStatements) {
      // Every statement on this backend is gone (other clients' too: they re-prepare).
      this.statements.clear();
      b.prepared.clear();
      return 'drops-all';
    }
    const name = fx.deallocate;
    const st = name === null ? undefined : this.statements.get(name);
    if (st === undefined) return null;
    this.statements.delete(name!);
    if (!b.prepared.has(st.proxyName)) {
      this.emit(st.parse);
      b.expect(Expect.ParseHidden, st.proxyName);
      this.meter.record.serverParses++;
    }
    b.prepared.delete(st.proxyName);
    b.expect(expect);
    this.emit(build(`DEALLOCATE "${st.proxyName}"`));
    return 'sent';
  }

  /** ReadyForQuery: the batch is over. */
  batchDone(): void {
    if (this.boundInBatch.length > 0) this.boundInBatch = [];
  }

  /**
   * A visible error. "cached plan must not change result type": the statements bound in
   * this batch are stale on every backend; they get new proxy names, so the next use
   * prepares them afresh. Returns whether it was that error.
   */
  onError(fields: Map<string, string>): boolean {
    if (this.boundInBatch.length === 0 || !isStalePlanError(fields)) return false;
    for (const st of this.boundInBatch) this.names.invalidate(st.key, st.proxyName);
    this.boundInBatch = [];
    return true;
  }

  /** Marks a statement prepared on `b`, closing the least recently used beyond the cap. */
  private notePrepared(b: BackendConnection, proxyName: string): void {
    b.prepared.set(proxyName, true);
    const cap = this.cap();
    while (cap > 0 && b.prepared.size > cap) {
      const oldest = b.prepared.keys().next().value as string;
      if (oldest === proxyName) break;
      b.prepared.delete(oldest);
      this.emit(closeStatement(oldest));
      b.expect(Expect.CloseHidden);
    }
  }
}
