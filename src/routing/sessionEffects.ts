// What a statement does to session state: the half of statement analysis the session acts
// on (the classifier in this folder owns the other half, where a statement may run).
//
// The session never reads SQL itself; it reads this description, which the classifier
// caches with the routing decision, so comments, quoting, multi-statement strings and the
// extended protocol (a Parse's text is analysed the same way) are all seen alike.
//
// Settings are reported by name only: what a SET did (or did not do, after a ROLLBACK or an
// error) is read back from the backend when the transaction ends, so the value the client
// carries is always PostgreSQL's own.

import type { Token } from './lexer.js';

export interface ListenOp {
  readonly kind: 'listen' | 'unlisten';
  /** The channel as PostgreSQL names it (unquoted names lower-cased); null for UNLISTEN *. */
  readonly channel: string | null;
}

export interface SessionEffects {
  /** Settings the message may change for the rest of the session, lower-cased (custom GUCs too). */
  readonly settings: readonly string[];
  /** RESET ALL, DISCARD ALL, RESET SESSION AUTHORIZATION: any setting may be back at its default. */
  readonly resetsAll: boolean;
  /** Session state pgmux cannot carry to another backend (the client keeps its backend), or null. */
  readonly pin: string | null;
  /** DISCARD ALL: the backend is back to a fresh session (unpins, drops prepared statements). */
  readonly discardAll: boolean;
  /** DEALLOCATE ALL or DISCARD ALL somewhere in the message: every prepared statement is gone. */
  readonly dropsAllStatements: boolean;
  /** The message is exactly `DEALLOCATE [PREPARE] name`: that name. */
  readonly deallocate: string | null;
  /** SQL-level PREPARE or EXECUTE. */
  readonly sqlPrepared: boolean;
  /**
   * Leaves state on the backend that need not follow the client but must not reach another
   * one (a SQL-level prepared statement outlives its transaction): the backend is reset
   * before it is reused.
   */
  readonly dirtiesBackend: boolean;
  /** The LISTEN / UNLISTEN statements of the message: what they do, in order. */
  readonly listen: readonly ListenOp[] | null;
  /** The message holds LISTEN / UNLISTEN only: the shared listener can answer it all. */
  readonly onlyListen: boolean;
}

/** Mutable accumulator over the statements of one message. */
export class EffectsBuilder {
  settings: string[] = [];
  resetsAll = false;
  pin: string | null = null;
  discardAll = false;
  dropsAll = false;
  deallocate: string | null = null;
  sqlPrepared = false;
  dirtiesBackend = false;
  listen: ListenOp[] = [];
  /** Statements that are not LISTEN / UNLISTEN. */
  others = 0;
  any = false;

  constructor(private readonly tokens: Token[]) {}

  /** The unquoted word at `i` (lower-cased), or ''. */
  private w(i: number): string {
    const t = this.tokens[i];
    return t !== undefined && (t.kind === 'keyword' || t.kind === 'ident') ? t.value : '';
  }

  /** A name (unquoted word or quoted identifier) at `i`, or null. */
  private name(i: number, e: number): string | null {
    if (i >= e) return null;
    const t = this.tokens[i]!;
    if (t.kind === 'keyword' || t.kind === 'ident' || t.kind === 'quotedIdent') return t.value;
    return null;
  }

  private setting(name: string): void {
    this.any = true;
    const n = name.toLowerCase(); // GUC names compare case-insensitively, quoted or not
    if (!this.settings.includes(n)) this.settings.push(n);
  }

  private pinFor(reason: string): void {
    this.any = true;
    this.pin ??= reason;
  }

  /** Examines the top-level statement in tokens [s, e); `statements` is the message's count. */
  statement(s: number, e: number, statements: number): void {
    const v = this.w(s);
    if (v !== 'listen' && v !== 'unlisten') this.others++;
    switch (v) {
      case 'set':
        this.set(s + 1, e);
        break;
      case 'reset':
        this.reset(s + 1, e);
        break;
      case 'discard':
        if (this.w(s + 1) === 'all') {
          this.any = true;
          this.resetsAll = this.dropsAll = true;
          // Beside other statements it is in an implicit transaction block, where it fails.
          this.discardAll = statements === 1;
        }
        break;
      case 'deallocate': {
        const i = this.w(s + 1) === 'prepare' ? s + 2 : s + 1;
        this.any = true;
        if (this.w(i) === 'all' && i + 1 === e) this.dropsAll = true;
        else if (statements === 1 && i + 1 === e) this.deallocate = this.name(i, e);
        break;
      }
      case 'prepare':
        // PREPARE TRANSACTION is two-phase commit, not a prepared statement.
        // In transaction mode a SQL-level prepared statement lives for its transaction: at
        // a transaction's start the session refuses it (0A000); inside one it works there.
        if (this.w(s + 1) !== 'transaction') {
          this.any = true;
          this.sqlPrepared = true;
          this.dirtiesBackend = true;
        }
        break;
      case 'execute':
        this.any = true;
        this.sqlPrepared = true;
        break;
      case 'listen':
      case 'unlisten':
        this.listenStatement(v, s + 1, e);
        break;
      case 'create':
        if (this.createsTemp(s + 1, e)) this.pinFor('temporary object');
        break;
      case 'declare':
        if (this.cursorWithHold(s + 1, e)) this.pinFor('WITH HOLD cursor');
        break;
      case 'do':
        this.pinFor('DO block (may change session state)');
        break;
      case 'load':
        this.pinFor('LOAD');
        break;
      default:
        break;
    }
    this.scanCalls(s, e, v);
  }

  /** SET [SESSION | LOCAL] ... */
  private set(i: number, e: number): void {
    let w = this.w(i);
    if (w === 'local') return; // dies with its transaction
    if (w === 'session') {
      // SET SESSION AUTHORIZATION / SET SESSION CHARACTERISTICS / SET SESSION name
      const next = this.w(i + 1);
      if (next === 'authorization') {
        if (this.w(i + 2) === 'default' && i + 3 === e) return this.resetSessionAuthorization();
        // Needs a superuser and changes who the session is: carrying it to other backends
        // (and undoing it on this one) is not worth it; the client keeps its backend.
        this.pinFor('SET SESSION AUTHORIZATION');
        return;
      }
      if (next === 'characteristics') {
        for (const n of ['default_transaction_isolation', 'default_transaction_read_only', 'default_transaction_deferrable']) this.setting(n);
        return;
      }
      i++;
      w = this.w(i);
    }
    switch (w) {
      case 'transaction':
      case 'constraints':
        return; // this transaction only
      case 'time':
        if (this.w(i + 1) === 'zone') return this.setting('timezone');
        break;
      case 'schema':
        return this.setting('search_path');
      case 'names':
        return this.setting('client_encoding');
      case 'xml':
        if (this.w(i + 1) === 'option') return this.setting('xmloption');
        break;
      case 'role':
        if (!this.isAssignment(i + 1)) return this.setting('role');
        break;
      default:
        break;
    }
    const name = this.gucName(i, e);
    if (name !== null) this.setting(name);
    else this.pinFor('SET of an unrecognized form');
  }

  /** RESET name | RESET ALL | RESET TIME ZONE | RESET SESSION AUTHORIZATION | RESET ROLE */
  private reset(i: number, e: number): void {
    const w = this.w(i);
    if (w === 'all' && i + 1 === e) {
      this.any = true;
      this.resetsAll = true;
      return;
    }
    if (w === 'time' && this.w(i + 1) === 'zone') return this.setting('timezone');
    if (w === 'session' && this.w(i + 1) === 'authorization') return this.resetSessionAuthorization();
    const name = this.gucName(i, e);
    if (name !== null) this.setting(name);
    else this.pinFor('RESET of an unrecognized form');
  }

  /**
   * RESET SESSION AUTHORIZATION / SET SESSION AUTHORIZATION DEFAULT: back to the login user
   * (already there unless a SET SESSION AUTHORIZATION pinned the client), and no role.
   */
  private resetSessionAuthorization(): void {
    this.setting('role');
    this.resetsAll = true;
  }

  /** `TO` or `=` at `i`: the word before it was the setting's name. */
  private isAssignment(i: number): boolean {
    const t = this.tokens[i];
    return t !== undefined && ((t.kind === 'op' && t.value === '=') || this.w(i) === 'to');
  }

  /** A dotted setting name at `i` (`work_mem`, `myapp.tenant_id`, `"MyApp"."x"`), or null. */
  private gucName(i: number, e: number): string | null {
    let name = this.name(i, e);
    if (name === null) return null;
    let j = i + 1;
    while (j + 1 < e && this.tokens[j]!.kind === 'punct' && this.tokens[j]!.value === '.') {
      const part = this.name(j + 1, e);
      if (part === null) return null;
      name += '.' + part;
      j += 2;
    }
    return name;
  }

  /** LISTEN channel | UNLISTEN channel | UNLISTEN * */
  private listenStatement(kind: 'listen' | 'unlisten', i: number, e: number): void {
    this.any = true;
    const t = this.tokens[i];
    if (kind === 'unlisten' && t !== undefined && t.kind === 'op' && t.value === '*' && i + 1 === e) {
      this.listen.push({ kind, channel: null });
      return;
    }
    const channel = i + 1 === e ? this.name(i, e) : null;
    if (channel === null) this.others++; // malformed: PostgreSQL answers it, on a backend
    else this.listen.push({ kind, channel });
  }

  /** CREATE [GLOBAL | LOCAL] {TEMP | TEMPORARY} ..., or any object created in pg_temp. */
  private createsTemp(i: number, e: number): boolean {
    let w = this.w(i);
    if (w === 'or' && this.w(i + 1) === 'replace') {
      i += 2;
      w = this.w(i);
    }
    if (w === 'global' || w === 'local') w = this.w(i + 1);
    if (w === 'temp' || w === 'temporary') return true;
    // An object named pg_temp.x lives in the session's temporary schema.
    for (let k = i; k < e && k < i + 12; k++) {
      const t = this.tokens[k]!;
      if ((t.kind === 'ident' || t.kind === 'keyword' || t.kind === 'quotedIdent') && t.value.startsWith('pg_temp')) {
        const dot = this.tokens[k + 1];
        if (dot !== undefined && dot.kind === 'punct' && dot.value === '.') return true;
      }
    }
    return false;
  }

  /** DECLARE name [options] CURSOR WITH HOLD FOR ... */
  private cursorWithHold(i: number, e: number): boolean {
    for (let k = i; k < e; k++) {
      const w = this.w(k);
      if (w === 'for') return false;
      if (w === 'with' && this.w(k + 1) === 'hold') return true;
    }
    return false;
  }

  /**
   * Calls anywhere in the statement: set_config(name, ...) changes a setting (when its name
   * is a literal pgmux records it; a computed name pins), pg_advisory_lock and friends take
   * session locks, SELECT ... INTO TEMP creates a temporary table.
   */
  private scanCalls(s: number, e: number, first: string): void {
    const { tokens } = this;
    for (let k = s; k < e; k++) {
      const t = tokens[k]!;
      if (t.kind !== 'ident' && t.kind !== 'keyword') continue;
      const v = t.value;
      if (v === 'into' && (first === 'select' || first === 'with') && (this.w(k + 1) === 'temp' || this.w(k + 1) === 'temporary')) {
        this.pinFor('temporary object');
        continue;
      }
      const open = tokens[k + 1];
      if (open === undefined || open.kind !== 'punct' || open.value !== '(') continue;
      if (v === 'set_config') {
        const arg = tokens[k + 2];
        const comma = tokens[k + 3];
        if (arg !== undefined && arg.kind === 'string' && comma !== undefined && comma.kind === 'punct' && comma.value === ',') {
          if (arg.value.toLowerCase() === 'session_authorization') this.pinFor('SET SESSION AUTHORIZATION');
          else this.setting(arg.value);
        } else this.pinFor('set_config() with a computed name');
      } else if (v.startsWith('pg_advisory_lock') || v.startsWith('pg_try_advisory_lock')) {
        this.pinFor('session advisory lock');
      }
    }
  }

  /** The finished description, or null when the message leaves session state alone. */
  build(): SessionEffects | null {
    if (!this.any) return null;
    // LISTEN beside other statements runs on the backend, which must then stay the client's.
    if (this.listen.length > 0 && this.others > 0) this.pin ??= 'LISTEN in a multi-statement query';
    return Object.freeze({
      settings: Object.freeze(this.settings),
      resetsAll: this.resetsAll,
      pin: this.pin,
      discardAll: this.discardAll,
      dropsAllStatements: this.dropsAll,
      deallocate: this.deallocate,
      sqlPrepared: this.sqlPrepared,
      dirtiesBackend: this.dirtiesBackend,
      listen: this.listen.length > 0 ? Object.freeze(this.listen) : null,
      onlyListen: this.others === 0 && this.listen.length > 0,
    });
  }
}
