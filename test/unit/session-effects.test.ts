// What the statement analysis says a message does to session state
// (src/routing/sessionEffects.ts): the one place the session learns about SET, RESET,
// set_config, DISCARD, DEALLOCATE, LISTEN and state that pins a client. Written the way
// applications send SQL: behind sqlcommenter / ORM comments, quoted, several statements at once.
import { describe, expect, it } from 'vitest';
import { classifySql } from '../../src/routing/classifier.js';

const fx = (sql: string) => classifySql(sql).session;
const COMMENTS = ['', '/* app=shop,route=/cart */ ', '-- traceparent=00-abc\n', '/* a /* nested */ b */\n  '];

describe('settings a message may change', () => {
  it.each([
    ['SET search_path TO shop, public', ['search_path']],
    ['set Search_Path = shop', ['search_path']],
    ['SET SESSION statement_timeout = 5000', ['statement_timeout']],
    ["SET myapp.tenant_id = '42'", ['myapp.tenant_id']],
    ['SET "MyApp"."Tenant" TO 7', ['myapp.tenant']],
    ['SET work_mem TO DEFAULT', ['work_mem']],
    ['RESET lock_timeout', ['lock_timeout']],
    ['RESET myapp.tenant_id', ['myapp.tenant_id']],
    ["SET TIME ZONE 'UTC'", ['timezone']],
    ["SET SCHEMA 'shop'", ['search_path']],
    ["SET NAMES 'UTF8'", ['client_encoding']],
    ['SET ROLE app', ['role']],
    ['RESET ROLE', ['role']],
    ["SELECT set_config('myapp.tenant_id', '42', false)", ['myapp.tenant_id']],
    ["SELECT set_config('myapp.tenant_id', $1, false), 1", ['myapp.tenant_id']],
    ["SELECT 1; SET a.b = 1; SELECT set_config('c.d', 'x', true)", ['a.b', 'c.d']],
  ])('%j -> %j', (sql, names) => {
    for (const c of COMMENTS) {
      const e = fx(c + sql);
      expect(e?.settings, c + sql).toEqual(names);
      expect(e?.pin ?? null).toBeNull();
    }
  });

  it('SET LOCAL, SET TRANSACTION and SET CONSTRAINTS die with the transaction', () => {
    for (const sql of ['SET LOCAL search_path TO x', 'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE', 'SET CONSTRAINTS ALL DEFERRED']) {
      expect(fx(sql)?.settings ?? []).toEqual([]);
    }
  });

  it('RESET ALL, DISCARD ALL and RESET SESSION AUTHORIZATION may reset everything', () => {
    expect(fx('RESET ALL')?.resetsAll).toBe(true);
    expect(fx('/* c */ DISCARD ALL')).toMatchObject({ resetsAll: true, discardAll: true, dropsAllStatements: true });
    // Inside an implicit transaction block DISCARD ALL fails: it must not unpin.
    expect(fx('SELECT 1; DISCARD ALL')).toMatchObject({ discardAll: false, dropsAllStatements: true });
    expect(fx('RESET SESSION AUTHORIZATION')).toMatchObject({ resetsAll: true, settings: ['role'], pin: null });
    expect(fx('SET SESSION AUTHORIZATION DEFAULT')).toMatchObject({ resetsAll: true, settings: ['role'], pin: null });
  });

  it('SET SESSION AUTHORIZATION pins the client (the session becomes another user)', () => {
    expect(fx('SET SESSION AUTHORIZATION app')?.pin).toBe('SET SESSION AUTHORIZATION');
    expect(fx("SELECT set_config('session_authorization', 'app', false)")?.pin).toBe('SET SESSION AUTHORIZATION');
    expect(fx('SET LOCAL SESSION AUTHORIZATION app')).toBeUndefined();
  });

  it('words inside strings, comments and other statements are not commands', () => {
    expect(fx("SELECT 'SET search_path TO x'")).toBeUndefined();
    expect(fx('SELECT 1 /* ; SET a.b = 1 */')).toBeUndefined();
    expect(fx('UPDATE t SET x = 1')).toBeUndefined();
    expect(fx('ALTER ROLE app SET search_path = x')).toBeUndefined();
    expect(fx("CREATE FUNCTION f() RETURNS void LANGUAGE sql SET search_path = x AS $$ SELECT set_config('a.b', '1', false) $$")).toBeUndefined();
    expect(fx('SELECT 1')).toBeUndefined();
  });

  it('unterminated input changes nothing (PostgreSQL rejects it)', () => {
    expect(fx("SET search_path TO 'x")).toBeUndefined();
  });
});

describe('session state that pins the client', () => {
  it.each([
    ['CREATE TEMP TABLE person (id int)', 'temporary'],
    ['create temporary table t (id int)', 'temporary'],
    ['CREATE GLOBAL TEMPORARY TABLE t (id int)', 'temporary'],
    ['CREATE TABLE pg_temp.t (id int)', 'temporary'],
    ['CREATE OR REPLACE TEMP VIEW v AS SELECT 1', 'temporary'],
    ['SELECT * INTO TEMP t FROM generate_series(1, 3)', 'temporary'],
    ['SELECT pg_advisory_lock(42)', 'advisory'],
    ['SELECT pg_try_advisory_lock_shared(1, 2)', 'advisory'],
    ['DECLARE c CURSOR WITH HOLD FOR SELECT 1', 'WITH HOLD'],
    ['DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1', 'WITH HOLD'],
    ["DO $$ BEGIN PERFORM set_config('a.b', '1', false); END $$", 'DO'],
    ["LOAD 'auto_explain'", 'LOAD'],
    ['SELECT set_config(current_user || \'.x\', \'1\', false)', 'set_config'],
    ['SELECT set_config($1, $2, false)', 'set_config'],
    ['SELECT 1; LISTEN jobs', 'LISTEN'],
  ])('%j pins (%s)', (sql, why) => {
    for (const c of COMMENTS) expect(fx(c + sql)?.pin, c + sql).toContain(why);
  });

  it('a SQL-level PREPARE does not pin: the backend is reset before it is reused', () => {
    expect(fx('/* c */ PREPARE q AS SELECT 1')).toMatchObject({ pin: null, sqlPrepared: true, dirtiesBackend: true });
    expect(fx('EXECUTE q')).toMatchObject({ pin: null, sqlPrepared: true, dirtiesBackend: false });
  });

  it('transaction-scoped state does not pin', () => {
    for (const sql of ['SELECT pg_advisory_xact_lock(1)', 'DECLARE c CURSOR FOR SELECT 1', 'CREATE TABLE t (id int)', 'PREPARE TRANSACTION \'x\'']) {
      expect(fx(sql)?.pin ?? null, sql).toBeNull();
    }
  });
});

describe('LISTEN / UNLISTEN', () => {
  it('a message of only LISTEN / UNLISTEN lists them, with PostgreSQL\'s channel names', () => {
    for (const c of COMMENTS) {
      expect(fx(c + 'LISTEN Jobs')?.listen).toEqual([{ kind: 'listen', channel: 'jobs' }]);
      expect(fx(c + 'listen "Mixed Case";')?.listen).toEqual([{ kind: 'listen', channel: 'Mixed Case' }]);
      expect(fx(c + 'LISTEN a; UNLISTEN b; UNLISTEN *')?.listen).toEqual([
        { kind: 'listen', channel: 'a' },
        { kind: 'unlisten', channel: 'b' },
        { kind: 'unlisten', channel: null },
      ]);
    }
  });

  it('LISTEN beside other statements is not for the shared listener', () => {
    expect(fx('BEGIN; LISTEN a; COMMIT')).toMatchObject({ onlyListen: false, listen: [{ kind: 'listen', channel: 'a' }] });
    expect(fx('LISTEN a')?.onlyListen).toBe(true);
    expect(fx('NOTIFY a')).toBeUndefined();
  });
});

describe('DEALLOCATE', () => {
  it('names the statement, or drops all', () => {
    expect(fx('/* c */ DEALLOCATE "S_1"')?.deallocate).toBe('S_1');
    expect(fx('deallocate prepare Foo')?.deallocate).toBe('foo');
    expect(fx('DEALLOCATE ALL')).toMatchObject({ dropsAllStatements: true, deallocate: null });
    expect(fx('DEALLOCATE PREPARE ALL;')?.dropsAllStatements).toBe(true);
  });
});
