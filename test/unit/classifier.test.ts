// The read/write classifier (src/routing/classifier.ts) and its lexer (src/routing/lexer.ts).
// Stands on its own: the shared corpus is exercised separately by routing-corpus.test.ts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  Classifier,
  MAX_CACHED_SQL_LENGTH,
  classifySql,
  formatClassification,
  type Target,
} from '../../src/routing/classifier.js';
import { lex } from '../../src/routing/lexer.js';

interface Case {
  target: Target;
  sql: string;
  /** Substring the reason must contain. */
  reason?: string;
}

const R = (sql: string, reason?: string): Case => ({ target: 'replica', sql, reason });
const P = (sql: string, reason?: string): Case => ({ target: 'primary', sql, reason });

function check(cases: Case[]): void {
  it.each(cases.map((c) => [c.target, c.sql, c] as const))('%s <- %j', (_t, _s, c) => {
    const got = classifySql(c.sql);
    expect(got.target, got.reason).toBe(c.target);
    if (c.reason !== undefined) expect(got.reason).toContain(c.reason);
  });
}

// Statements that only read ----------------------------------------------------------------

describe("Pgpool-II's SHOW pool_* pseudo-commands", () => {
  it('are recognised alone, in any case, behind comments, with a trailing semicolon', () => {
    expect(classifySql('SHOW pool_nodes').pgpoolShow).toBe('nodes');
    expect(classifySql('/* app=x */ show POOL_VERSION ;').pgpoolShow).toBe('version');
    expect(classifySql('SHOW pool_processes').pgpoolShow).toBe('processes');
  });

  it('are not: quoted, multi-statement, a GUC, or unterminated', () => {
    for (const sql of ['SHOW "pool_nodes"', 'SHOW pool_nodes; SELECT 1', 'SHOW search_path', 'SHOW pool_nodes /* open', 'SHOW ALL']) {
      expect(classifySql(sql).pgpoolShow, sql).toBeUndefined();
    }
  });
});

describe('reads go to a replica', () => {
  check([
    R('SELECT 1', 'read-only SELECT'),
    R('select * from users where id = $1 and created_at > $2'),
    R('(SELECT 1) UNION ALL (SELECT 2) ORDER BY 1'),
    R('((SELECT 1))'),
    R('VALUES (1, 2), (3, 4)', 'read-only VALUES'),
    R('TABLE posts', 'read-only TABLE'),
    R('SHOW search_path', 'SHOW'),
    R('show all'),
    R('WITH a AS (SELECT 1), b AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b', 'read-only WITH'),
    R('WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 5) SEARCH DEPTH FIRST BY n SET ord SELECT * FROM t'),
    R('WITH RECURSIVE t(n) AS (SELECT 1) CYCLE n SET is_cycle USING path SELECT * FROM t'),
    R('WITH "Q" AS MATERIALIZED (TABLE posts) SELECT * FROM "Q"'),
    R('SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM t'),
    R('SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)'),
    R('SELECT pg_sleep(0.01), now(), random()'),
    R('SELECT txid_current_snapshot(), pg_current_snapshot()'),
    R('SELECT lower(name), lpad(name, 3) FROM t'),
    R('SELECT nextval FROM t WHERE currval = 1'),
    R("SELECT 'nextval(1)', 'INSERT INTO t VALUES (1)'"),
    R('SELECT update, delete, insert FROM events'),
    R('SELECT (update) FROM events'),
    R('SELECT a FROM t FOR READ ONLY'),
    R("SELECT * FROM xmltable('/r' PASSING x COLUMNS id FOR ORDINALITY, v text)"),
    R('SELECT a$b, _x1 FROM t'),
    R('SELECT a::text, ARRAY[1,2][1:2], 0x1F, 1_000, 1.5e-3, .5 FROM t'),
    R("SELECT * FROM t WHERE a <> 1 AND b !~~* 'x' AND c @> d"),
  ]);
});

// Everything else goes to the primary --------------------------------------------------------

describe('writes and session commands go to the primary', () => {
  check([
    P('INSERT INTO t VALUES (1)', 'INSERT'),
    P('UPDATE t SET a = 1', 'UPDATE'),
    P('DELETE FROM t', 'DELETE'),
    P('MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE', 'MERGE'),
    P('WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x', 'INSERT'),
    P('CREATE TABLE t (a int)', 'CREATE TABLE'),
    P('CREATE TEMP TABLE t AS SELECT 1'),
    P('CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)', 'CREATE UNIQUE INDEX CONCURRENTLY'),
    P('DROP TABLE t', 'DROP TABLE'),
    P('SET search_path = app', 'SET'),
    P('SET LOCAL statement_timeout = 5'),
    P('RESET ALL', 'RESET'),
    P('DISCARD ALL', 'DISCARD'),
    P('PREPARE q AS SELECT 1', 'PREPARE'),
    P('EXECUTE q', 'EXECUTE'),
    P('DEALLOCATE q', 'DEALLOCATE'),
    P('LISTEN ch', 'LISTEN'),
    P('UNLISTEN *', 'UNLISTEN'),
    P("NOTIFY ch, 'x'", 'NOTIFY'),
    P('COPY (SELECT 1) TO STDOUT', 'COPY'),
    P('DECLARE c CURSOR FOR SELECT 1', 'DECLARE'),
    P('FETCH 10 FROM c'),
    P('LOCK TABLE t IN SHARE MODE', 'LOCK'),
    P('CALL p()', 'CALL'),
    P('DO $$BEGIN PERFORM 1; END$$', 'DO'),
    P('VACUUM'),
    P('CHECKPOINT'),
    P("LOAD 'auto_explain'"),
    P("ALTER SYSTEM SET work_mem = '1MB'", 'ALTER SYSTEM'),
    P("PREPARE TRANSACTION 'x'"),
    P("COMMIT PREPARED 'x'", 'COMMIT PREPARED'),
    P("ROLLBACK PREPARED 'x'", 'ROLLBACK PREPARED'),
    P('COMMIT', 'transaction control (COMMIT)'),
    P('ROLLBACK'),
    P('', 'empty query'),
    P('  -- only a comment', 'empty query'),
    P(';', 'empty query'),
    P('42', 'unrecognized statement'),
    P('frobnicate the database', 'FROBNICATE'),
    // Only queries nest: anything else where a query belongs is not known read-only.
    P('WITH x AS (BEGIN READ ONLY) SELECT 1', 'BEGIN'),
    P('WITH x AS (SELECT 1) SHOW search_path', 'SHOW'),
    P('EXPLAIN SHOW search_path', 'SHOW'),
    P('EXPLAIN EXPLAIN SELECT 1', 'EXPLAIN'),
    P('SELECT * FROM (WITH a AS (SELECT 1) COMMIT) s', 'COMMIT'),
    // Malformed WITH clauses.
    P('WITH'),
    P('WITH a AS'),
    P('WITH a AS (SELECT 1', 'unterminated WITH clause'),
    P('WITH a AS (SELECT 1)', 'WITH without a main statement'),
    P('WITH a(x; AS (SELECT 1) SELECT 1'),
    P('WITH a AS SELECT 1'),
  ]);
});

describe('locking clauses, also in subqueries', () => {
  check([
    P('SELECT * FROM t FOR UPDATE', 'locking clause FOR UPDATE'),
    P('SELECT * FROM t WHERE id = 1 FOR UPDATE OF t NOWAIT'),
    P('SELECT * FROM t FOR NO KEY UPDATE', 'locking clause FOR NO KEY UPDATE'),
    P('SELECT * FROM t FOR KEY SHARE', 'locking clause FOR KEY SHARE'),
    P('select * from t for share skip locked', 'locking clause FOR SHARE'),
    P('SELECT * FROM (SELECT * FROM t FOR UPDATE) s'),
    P('SELECT * FROM t WHERE id IN (SELECT id FROM u FOR SHARE)'),
    P('(SELECT a FROM t FOR UPDATE) UNION ALL (SELECT 2)'),
    P('SELECT coalesce((SELECT a FROM t FOR UPDATE), 0)'),
    P('SELECT substring((SELECT s FROM t FOR UPDATE) FOR 2)'),
    P('SELECT * FROM t, LATERAL (SELECT * FROM u FOR KEY SHARE) x'),
    P('WITH c AS (SELECT * FROM t FOR UPDATE) SELECT * FROM c', 'locking clause FOR UPDATE'),
    P('SELECT * FROM t FOR/* c */UPDATE'),
    P('SELECT * FROM t FOR\n-- c\nUPDATE'),
    P('TABLE t FOR UPDATE'),
  ]);
  // FOR as part of other syntax, or not a token at all.
  check([
    R('SELECT substring(name for 3) FROM t'),
    R("SELECT substring('abc' from 1 for 2)"),
    R("SELECT overlay('Txxxxas' placing 'hom' from 2 for 4)"),
    R('SELECT substring(s FOR update) FROM events'),
    R('SELECT * FROM "for update"'),
    R('SELECT "for", "update" FROM t'),
    R("SELECT 1 FROM t WHERE a = 'FOR UPDATE'"),
    R('SELECT 1 FROM t -- FOR UPDATE'),
    R('SELECT 1 +/* FOR UPDATE */ 2'),
    R('SELECT for_update FROM lock_events'),
  ]);
});

describe('SELECT INTO and data-modifying CTEs', () => {
  check([
    P('SELECT * INTO new_t FROM t', 'SELECT INTO'),
    P('SELECT a INTO TEMP tmp FROM t', 'SELECT INTO'),
    P('select 1 into unlogged x'),
    R('SELECT * FROM t AS "into"'),
    P('WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'data-modifying CTE'),
    P('WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i', 'data-modifying CTE'),
    P('WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT 1', 'data-modifying CTE'),
    P('WITH u AS (UPDATE ONLY t SET a = 1 RETURNING *) SELECT 1', 'data-modifying CTE'),
    P('WITH u AS (UPDATE "T" SET a = 1) SELECT 1', 'data-modifying CTE'),
    P('WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) SELECT 1', 'data-modifying CTE'),
    P('WITH a AS (SELECT 1), d AS MATERIALIZED (DELETE FROM t) SELECT * FROM a', 'data-modifying CTE'),
    P('WITH a AS (WITH b AS (SELECT 1) DELETE FROM t RETURNING *) SELECT * FROM a', 'data-modifying CTE'),
    P('SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s', 'data-modifying CTE'),
    P('WITH a AS (SELECT nextval(1)) SELECT * FROM a', 'calls nextval()'),
  ]);
});

describe('EXPLAIN follows the statement it explains', () => {
  check([
    R('EXPLAIN SELECT 1', 'EXPLAIN of read-only SELECT'),
    R('EXPLAIN ANALYZE SELECT * FROM t', 'EXPLAIN ANALYZE of read-only SELECT'),
    R('EXPLAIN ANALYZE VERBOSE SELECT 1'),
    R('EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1', 'EXPLAIN ANALYZE of read-only SELECT'),
    R('EXPLAIN (ANALYZE off) SELECT 1', 'EXPLAIN of read-only SELECT'),
    R('EXPLAIN (SELECT 1)'),
    R('EXPLAIN (ANALYZE, VERBOSE) WITH a AS (SELECT 1) SELECT * FROM a'),
    P('EXPLAIN ANALYZE DELETE FROM t', 'EXPLAIN ANALYZE of a write (DELETE)'),
    P('EXPLAIN ANALYSE INSERT INTO t VALUES (1)', 'EXPLAIN ANALYZE of a write (INSERT)'),
    P('EXPLAIN (ANALYZE) UPDATE t SET a = 1', 'EXPLAIN ANALYZE of a write (UPDATE)'),
    P('EXPLAIN (ANALYZE true) UPDATE t SET a = 1', 'EXPLAIN ANALYZE of a write'),
    P('EXPLAIN (ANALYZE on, BUFFERS) UPDATE t SET a = 1', 'EXPLAIN ANALYZE of a write'),
    P('EXPLAIN (ANALYZE 1) UPDATE t SET a = 1', 'EXPLAIN ANALYZE of a write'),
    P("EXPLAIN (ANALYZE 'on') UPDATE t SET a = 1", 'EXPLAIN ANALYZE of a write'),
    P('explain (format json, analyze TRUE) delete from t', 'EXPLAIN ANALYZE of a write'),
    P('EXPLAIN (ANALYZE false) DELETE FROM t', 'EXPLAIN of a write (DELETE)'),
    P('EXPLAIN (ANALYZE off) DELETE FROM t', 'EXPLAIN of a write (DELETE)'),
    P('EXPLAIN (ANALYZE 0, COSTS off) DELETE FROM t', 'EXPLAIN of a write (DELETE)'),
    P('EXPLAIN DELETE FROM t', 'EXPLAIN of a write (DELETE)'),
    P('EXPLAIN VERBOSE UPDATE t SET a = 1', 'EXPLAIN of a write (UPDATE)'),
    P('EXPLAIN SELECT * FROM t FOR UPDATE', 'EXPLAIN of a write (locking clause FOR UPDATE)'),
    P('EXPLAIN ANALYZE SELECT * INTO t2 FROM t', 'SELECT INTO'),
    P('EXPLAIN EXECUTE q', 'EXECUTE'),
    P('EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'EXPLAIN ANALYZE of a write (data-modifying CTE)'),
  ]);
});

describe('multi-statement messages', () => {
  check([
    R('SELECT 1; SELECT 2', 'multi-statement: all 2 statements read-only'),
    P('SELECT 1; UPDATE t SET a = 1', 'multi-statement: statement 2 writes (UPDATE)'),
    P("SELECT 1; SELECT 2; SELECT nextval('s')", 'multi-statement: statement 3 writes (calls nextval())'),
    P('SET x = 1; SELECT 1', 'multi-statement: statement 1 writes (SET)'),
    R("SELECT ';'; SELECT 2"),
    R('SELECT 1 -- ; DELETE FROM t'),
    P('COMMIT; ROLLBACK', 'transaction control only'),
    R('SELECT 1; COMMIT'),
  ]);

  it('counts non-empty statements', () => {
    expect(classifySql('SELECT 1').statements).toBe(1);
    expect(classifySql('SELECT 1;').statements).toBe(1);
    expect(classifySql('SELECT 1;;  ; SELECT 2;').statements).toBe(2);
    expect(classifySql("SELECT ';' ; SELECT $$;$$; /* ; */ SELECT \";\"").statements).toBe(3);
    expect(classifySql('').statements).toBe(0);
    expect(classifySql('-- nothing').statements).toBe(0);
  });

  it('keeps CREATE FUNCTION ... BEGIN ATOMIC ... END one statement (psql heuristic)', () => {
    const one = classifySql('CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END');
    expect(one).toMatchObject({ target: 'primary', statements: 1 });
    const two = classifySql(
      'CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END; SELECT 2',
    );
    expect(two).toMatchObject({ target: 'primary', statements: 2 });
  });
});

describe('functions that write or hold session state', () => {
  const fns = [
    "nextval('s')",
    "setval('s', 1)",
    "currval('s')",
    'lastval()',
    'pg_advisory_lock(1)',
    'pg_advisory_lock_shared(1)',
    'pg_advisory_xact_lock(1, 2)',
    'pg_advisory_unlock_all()',
    'pg_try_advisory_lock(1)',
    'pg_try_advisory_xact_lock_shared(1)',
    'txid_current()',
    'txid_current_if_assigned()',
    'pg_current_xact_id()',
    'pg_current_xact_id_if_assigned()',
    'pg_current_wal_lsn()',
    'pg_current_wal_insert_lsn()',
    'pg_current_wal_flush_lsn()',
    "pg_notify('ch', 'x')",
    "set_config('a.b', '1', false)",
    'lo_create(0)',
    "lo_import('/tmp/x')",
    'lo_unlink(1)',
    'lo_get(1)',
    'pg_switch_wal()',
    "pg_create_restore_point('r')",
    "pg_create_logical_replication_slot('s', 'pgoutput')",
    'setseed(0.5)',
    'pg_terminate_backend(1)',
  ];
  check(fns.map((f) => P(`SELECT ${f}`, `calls ${f.slice(0, f.indexOf('('))}()`)));
  check([
    P("SELECT pg_catalog.nextval('s')", 'calls nextval()'),
    P("SELECT PG_CATALOG.SETVAL('s', 1)", 'calls setval()'),
    P('SELECT "pg_catalog"."nextval"(1)', 'calls nextval()'),
    P('SELECT "nextval"(1)', 'calls nextval()'),
    R('SELECT "NextVal"(1)'), // a quoted identifier keeps its case: another function
    P("SELECT * FROM t WHERE id = nextval ('s')"),
    P("SELECT nextval/* c */('s')"),
    P("VALUES (nextval('s'))"),
    P('SELECT * FROM pg_advisory_lock(1)'),
    P("SELECT coalesce(a, setval('s', 1)) FROM t"),
    P('SELECT U&"nextval"(1)', 'calls nextval()'),
    P(String.raw`SELECT U&"n\0065xtval"(1)`, 'calls nextval()'),
    P("SELECT * FROM t WHERE a IN (SELECT pg_advisory_xact_lock(id) FROM u)"),
    R('SELECT * FROM t WHERE name = nextval'),
  ]);
});

describe('explicit transactions', () => {
  check([
    P('BEGIN', 'BEGIN without READ ONLY'),
    P('BEGIN WORK'),
    P('BEGIN TRANSACTION'),
    P('START TRANSACTION', 'START TRANSACTION without READ ONLY'),
    P('BEGIN READ WRITE'),
    P('BEGIN ISOLATION LEVEL REPEATABLE READ'),
    P('BEGIN READ ONLY, READ WRITE'),
    P('BEGIN READ ONLY FROBNICATE', 'unrecognized transaction mode'),
    R('BEGIN READ ONLY', 'BEGIN READ ONLY'),
    R('BEGIN TRANSACTION READ ONLY'),
    R('begin work read only'),
    R('START TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED', 'START TRANSACTION READ ONLY'),
    R('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE'),
    R('BEGIN ISOLATION LEVEL READ UNCOMMITTED, READ ONLY, NOT DEFERRABLE'),
    P('BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY', 'refuse serializable'),
    P('BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE DEFERRABLE', 'refuse serializable'),
    P('START TRANSACTION ISOLATION LEVEL SERIALIZABLE'),
    P('START'),
    R('BEGIN READ ONLY; SELECT 1; COMMIT'),
    P('BEGIN READ ONLY; UPDATE t SET a = 1; COMMIT', 'statement 2 writes (UPDATE)'),
    P('BEGIN; SELECT 1', 'statement 1 writes (BEGIN without READ ONLY)'),
  ]);

  it('flags messages that open a transaction', () => {
    expect(classifySql('BEGIN').beginsTransaction).toBe(true);
    expect(classifySql('START TRANSACTION READ ONLY').beginsTransaction).toBe(true);
    expect(classifySql('SELECT 1; BEGIN READ ONLY; SELECT 2')).toMatchObject({ target: 'replica', beginsTransaction: true });
    expect(classifySql('SELECT 1').beginsTransaction).toBeUndefined();
    expect(classifySql('COMMIT').beginsTransaction).toBeUndefined();
  });
});

describe('routing hints in leading comments', () => {
  check([
    P('/* pgmux:primary */ SELECT 1', 'hint /* pgmux:primary */'),
    R('/* pgmux:replica */ SELECT 1', 'hint /* pgmux:replica */'),
    R('/* pgmux:replica */ UPDATE t SET a = 1', 'hint'), // obeyed: the replica will refuse it
    R('/*pgmux:replica*/BEGIN'),
    P('-- pgmux:primary\nSELECT 1', 'hint -- pgmux:primary'),
    R('--pgmux:replica\nBEGIN'),
    P('/* PGMUX:PRIMARY */ SELECT 1'),
    P('/* pgmux:replica */ /* pgmux:primary */ SELECT 1'), // primary wins
    R('SELECT 1 /* pgmux:primary */', 'read-only SELECT'), // not leading
    R('SELECT /* pgmux:primary */ 1'),
    R("SELECT '/* pgmux:primary */'"),
    R('/* note: pgmux:primary */ SELECT 1', 'read-only SELECT'),
  ]);

  it('parses max_lag_ms without changing the target', () => {
    expect(classifySql('/* pgmux:max_lag_ms=500 */ SELECT 1')).toEqual({
      target: 'replica',
      reason: 'read-only SELECT',
      statements: 1,
      maxLagMs: 500,
    });
    expect(classifySql('/* pgmux:max_lag_ms=500 */ UPDATE t SET a = 1')).toMatchObject({ target: 'primary', maxLagMs: 500 });
    expect(classifySql('/* pgmux:replica max_lag_ms=250 */ SELECT 1')).toMatchObject({
      target: 'replica',
      reason: 'hint /* pgmux:replica */',
      maxLagMs: 250,
    });
    expect(classifySql('/* pgmux:max_lag_ms = 100 */ -- pgmux:replica\nBEGIN')).toMatchObject({ target: 'replica', maxLagMs: 100 });
    expect(classifySql('/* pgmux:max_lag_ms=abc */ SELECT 1').maxLagMs).toBeUndefined();
    expect(classifySql('/* pgmux:max_lag_ms=-5 */ SELECT 1').maxLagMs).toBeUndefined();
    expect(classifySql('SELECT 1 /* pgmux:max_lag_ms=5 */').maxLagMs).toBeUndefined();
  });
});

describe('PostgreSQL lexical rules', () => {
  check([
    R('/* a /* b */ FOR UPDATE */ SELECT 1'),
    P('/* a /* b */ SELECT 1', 'unterminated'), // the nested comment never closes
    R('/**/SELECT/**/1'),
    R("SELECT $tag$ it's $$ FOR UPDATE $$ ; DELETE $tag$"),
    R('SELECT $a$ $b$ DELETE FROM t $b$ $a$'),
    R('SELECT $$$$, $_$x$_$'),
    P('SELECT $a$ never closed; DELETE FROM t', 'unterminated'),
    R(String.raw`SELECT E'\''`),
    R(String.raw`SELECT E'\'; DELETE FROM t; --'`),
    P(String.raw`SELECT E'\\'; DELETE FROM t`, 'statement 2 writes (DELETE)'),
    R(String.raw`SELECT e'\\\''`),
    R(String.raw`SELECT '\'`), // standard_conforming_strings: a complete string holding a backslash
    P(String.raw`SELECT '\'; DELETE FROM t`, 'statement 2 writes (DELETE)'),
    R("SELECT 'a''b; DELETE FROM t'"),
    R("SELECT N'x; DELETE FROM t'"),
    R(String.raw`SELECT U&'\0041; DELETE FROM t'`),
    R(String.raw`SELECT U&"d\0061t\+000061" FROM t`),
    R(`SELECT U&"d!0061t!+000061" UESCAPE '!' FROM t`),
    R("SELECT B'1010', X'FF', b'1'"),
    P("SELECT B'10''; DELETE FROM t", 'unterminated'), // B'' has no '' doubling
    R('SELECT "a""b" FROM "for update"'),
    R('SELECT "; DELETE FROM t" FROM x'),
    R('SELECT $1, $2 FROM t WHERE a = $10'),
    R("SELECT 'a'\n'; DELETE FROM t'"), // continuation across a newline: one literal
    R("SELECT 'a' -- c\n'; DELETE FROM t'"),
    R("SELECT E'a'\n" + String.raw`'\'; DELETE FROM t; SELECT '`), // the continuation keeps E'' rules
    P(String.raw`SELECT E'a' '\'; DELETE FROM t`, 'statement 2 writes (DELETE)'), // no newline: a new standard string
    R('SELECT 1--comment'),
    R('SELECT 2--1\n'),
    P("SELECT 'unterminated", 'unterminated'),
    P('SELECT "unterminated', 'unterminated'),
    P(String.raw`SELECT E'\'`, 'unterminated'),
  ]);
});

describe('lexer', () => {
  it('produces typed tokens with positions and decoded values', () => {
    const sql = String.raw`SELECT "A""b", U&"d\0061t\+000061", E'\n\x41\101', $1, 1.5e3, 'it''s', $q$y$q$ FROM s.t WHERE a >= 1;`;
    const { tokens, complete } = lex(sql);
    expect(complete).toBe(true);
    const summary = tokens.map((t) => [t.kind, t.value]);
    expect(summary).toEqual([
      ['keyword', 'select'],
      ['quotedIdent', 'A"b'],
      ['punct', ','],
      ['quotedIdent', 'data'],
      ['punct', ','],
      ['string', '\nAA'],
      ['punct', ','],
      ['param', '$1'],
      ['punct', ','],
      ['number', '1.5e3'],
      ['punct', ','],
      ['string', "it's"],
      ['punct', ','],
      ['string', 'y'],
      ['keyword', 'from'],
      ['ident', 's'],
      ['punct', '.'],
      ['ident', 't'],
      ['keyword', 'where'],
      ['ident', 'a'],
      ['op', '>='],
      ['number', '1'],
      ['punct', ';'],
    ]);
    for (const t of tokens) expect(t.end).toBeGreaterThan(t.start);
    expect(sql.slice(tokens[1]!.start, tokens[1]!.end)).toBe('"A""b"');
    expect(sql.slice(tokens[13]!.start, tokens[13]!.end)).toBe('$q$y$q$');
  });

  it('reports only leading comments', () => {
    const { leadingComments, tokens } = lex('-- a\n/* b /* c */ */ SELECT /* d */ 1');
    expect(leadingComments.map((c) => [c.text, c.block])).toEqual([
      [' a', false],
      [' b /* c */ ', true],
    ]);
    expect(tokens.map((t) => t.value)).toEqual(['select', '1']);
  });

  it('lowercases unquoted words in ASCII only and keeps $ inside identifiers', () => {
    expect(lex('SeLeCt ÉTÉ a$b$c').tokens.map((t) => t.value)).toEqual(['select', 'ÉtÉ', 'a$b$c']);
  });

  it('splits operators as the server does', () => {
    const ops = (s: string) => lex(s).tokens.filter((t) => t.kind === 'op').map((t) => t.value);
    expect(ops('a=-1')).toEqual(['=', '-']);
    expect(ops('a @- b')).toEqual(['@-']);
    expect(ops('a */* c */ b')).toEqual(['*']);
    expect(ops('a +-- c\n b')).toEqual(['+']);
    expect(ops('a::int')).toEqual(['::']);
  });

  it('applies UESCAPE to U& literals', () => {
    const { tokens } = lex(`U&'!0041!!' UESCAPE '!', U&"x" /* c */ uescape '#'`);
    expect(tokens.map((t) => [t.kind, t.value])).toEqual([
      ['string', 'A!'],
      ['punct', ','],
      ['quotedIdent', 'x'],
    ]);
  });

  it.each([`'x`, String.raw`E'x\'`, '"x', '/* x', '/* /* */', '$a$ x', '$$ x', 'U&"x', "B'1", `'a'\n'b`])(
    'marks %j incomplete',
    (sql) => {
      expect(lex(sql).complete).toBe(false);
    },
  );

  it('is linear on pathological input', () => {
    const inputs = [
      '/*'.repeat(200_000),
      '('.repeat(200_000),
      "'".repeat(200_001),
      '$a'.repeat(200_000),
      `U&"x"${' '.repeat(100)}`.repeat(20_000),
      '-'.repeat(200_000),
      '(WITH a AS ('.repeat(20_000),
      'SELECT ' + '(SELECT '.repeat(50_000) + '1' + ')'.repeat(50_000),
    ];
    const t0 = performance.now();
    for (const sql of inputs) {
      lex(sql);
      expect(classifySql(sql).reason).not.toMatch(/classifier error/);
    }
    expect(performance.now() - t0).toBeLessThan(5_000);
  });
});

describe('never throws', () => {
  const sqlish = fc.string({
    unit: fc.constantFrom(
      "'", '"', '$', '$$', '$a$', '\\', 'E', 'U&', 'B', 'X', '/*', '*/', '--', '\n', ' ', ';', '(', ')', ',', '.',
      'SELECT', 'FOR', 'UPDATE', 'WITH', 'AS', 'INTO', 'DELETE', 'FROM', 'EXPLAIN', 'ANALYZE', 'BEGIN', 'READ',
      'ONLY', 'nextval', 'substring', 'UESCAPE', '1', 'x', '=', '+', 'é', '😀', '\u0000',
    ),
    maxLength: 40,
  });

  it('lexes and classifies arbitrary strings', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), sqlish), (sql) => {
        const { tokens } = lex(sql);
        let prev = 0;
        for (const t of tokens) {
          expect(t.start).toBeGreaterThanOrEqual(prev);
          expect(t.end).toBeGreaterThan(t.start);
          expect(t.end).toBeLessThanOrEqual(sql.length);
          prev = t.end;
        }
        const c = classifySql(sql);
        expect(['primary', 'replica']).toContain(c.target);
        expect(c.reason).not.toMatch(/classifier error/);
        expect(c.statements).toBeGreaterThanOrEqual(0);
        // Whatever came before, a write in a later statement reaches the primary (or the
        // input was unterminated and swallowed it, which also means primary) unless hinted.
        const w = classifySql(`${sql}\n;UPDATE t SET a = 1`);
        if (!w.reason.startsWith('hint')) expect(w.target).toBe('primary');
      }),
      { numRuns: 2000 },
    );
  });

  it('never routes text inside a literal or comment', () => {
    const body = fc.string({ unit: sqlish.map((s) => s), maxLength: 10 });
    fc.assert(
      fc.property(body, (s) => {
        if (!s.includes('$z$')) expect(classifySql(`SELECT $z$${s}$z$`)).toMatchObject({ target: 'replica', statements: 1 });
        expect(classifySql(`SELECT '${s.replaceAll("'", "''")}'`)).toMatchObject({ target: 'replica', statements: 1 });
        if (!s.includes('*/') && !s.includes('/*') && !s.endsWith('/') && !s.endsWith('*')) {
          expect(classifySql(`/* ${s} */ SELECT 1`)).toMatchObject({ statements: 1 });
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('Classifier cache', () => {
  it('serves repeats from the cache and counts hits and misses', () => {
    const c = new Classifier();
    const a = c.classify('SELECT 1');
    const b = c.classify('SELECT 1');
    expect(b).toBe(a);
    expect(Object.isFrozen(a)).toBe(true);
    c.classify('SELECT 2');
    c.classify('SELECT 1');
    expect([c.cacheHits, c.cacheMisses, c.cacheEntries]).toEqual([2, 2, 2]);
  });

  it('keeps what is used again and drops what went unused for a generation', () => {
    const c = new Classifier({ cacheSize: 4 }); // two generations of 2
    c.classify('A'); // miss
    c.classify('B'); // miss
    c.classify('C'); // miss: A and B become the old generation
    c.classify('A'); // hit in the old generation: moves back to the young one
    c.classify('D'); // miss: C and A become old, B (unused) is dropped
    expect([c.cacheHits, c.cacheMisses]).toEqual([1, 4]);
    expect(c.cacheEntries).toBeLessThanOrEqual(4);
    c.classify('A'); // hit
    c.classify('C'); // hit
    expect([c.cacheHits, c.cacheMisses]).toEqual([3, 4]);
    c.classify('B'); // miss: was dropped
    expect([c.cacheHits, c.cacheMisses]).toEqual([3, 5]);
  });

  it('stays within its size under a flood of distinct queries and keeps a hot one', () => {
    const c = new Classifier({ cacheSize: 100 });
    for (let i = 0; i < 10_000; i++) {
      c.classify(`SELECT abalance FROM pgbench_accounts WHERE aid = ${i}`);
      if (i % 10 === 0) c.classify('SELECT 1');
      expect(c.cacheEntries).toBeLessThanOrEqual(100);
    }
    expect(c.cacheHits).toBe(999); // every SELECT 1 after the first
    expect(c.classify('UPDATE t SET a = 1').target).toBe('primary');
  });

  it('does not cache with cacheSize 0 or for long queries', () => {
    const off = new Classifier({ cacheSize: 0 });
    off.classify('SELECT 1');
    off.classify('SELECT 1');
    expect([off.cacheHits, off.cacheMisses, off.cacheEntries]).toEqual([0, 2, 0]);

    const c = new Classifier();
    const long = 'SELECT ' + '1 + '.repeat(MAX_CACHED_SQL_LENGTH / 4) + '1';
    expect(long.length).toBeGreaterThan(MAX_CACHED_SQL_LENGTH);
    expect(c.classify(long).target).toBe('replica');
    c.classify(long);
    expect([c.cacheHits, c.cacheMisses, c.cacheEntries]).toEqual([0, 2, 0]);
  });

  it('gives the same answers as classifySql', () => {
    const c = new Classifier({ cacheSize: 3 });
    const sqls = ['SELECT 1', 'UPDATE t SET a = 1', 'BEGIN READ ONLY', "SELECT nextval('s')", 'SHOW x'];
    for (let round = 0; round < 3; round++) for (const s of sqls) expect(c.classify(s)).toEqual(classifySql(s));
  });

  it('rejects a bad cacheSize', () => {
    expect(() => new Classifier({ cacheSize: -1 })).toThrow(RangeError);
    expect(() => new Classifier({ cacheSize: 1.5 })).toThrow(RangeError);
  });
});

describe('writeFunctions option', () => {
  it('adds functions, case-insensitively unless quoted', () => {
    const c = new Classifier({ writeFunctions: ['audit_log', 'MyFunc', '"MixedCase"'] });
    expect(c.classify('SELECT audit_log(1)')).toMatchObject({ target: 'primary', reason: 'calls audit_log()' });
    expect(classifySql('SELECT audit_log(1)').target).toBe('replica');
    expect(c.classify('SELECT MYFUNC()').target).toBe('primary');
    expect(c.classify('SELECT "myfunc"()').target).toBe('primary');
    expect(c.classify('SELECT "MyFunc"()').target).toBe('replica');
    expect(c.classify('SELECT "MixedCase"()').target).toBe('primary');
    expect(c.classify('SELECT mixedcase()').target).toBe('replica');
    expect(c.classify("SELECT nextval('s')").target).toBe('primary'); // built-ins stay
  });

  it('matches schema-qualified entries and prefixes', () => {
    const c = new Classifier({ writeFunctions: ['app.bump', 'audit_*', 'f()'] });
    expect(c.classify('SELECT app.bump()').target).toBe('primary');
    expect(c.classify('SELECT bump()').target).toBe('primary'); // search_path may resolve to app.bump
    expect(c.classify('SELECT other.bump()').target).toBe('replica');
    expect(c.classify('SELECT audit_write(1), 2').target).toBe('primary');
    expect(c.classify('SELECT audi(1)').target).toBe('replica');
    expect(c.classify('SELECT f(1)').target).toBe('primary');
  });

  it('works with classifySql too', () => {
    expect(classifySql('SELECT app_touch()', { writeFunctions: ['app_touch'] }).target).toBe('primary');
  });

  it.each([['a.b.c'], ['1abc'], [''], ['f(x)'], ['"unterminated']])('rejects the entry %j', (entry) => {
    expect(() => new Classifier({ writeFunctions: [entry] })).toThrow(/invalid write_functions entry/);
  });
});

describe('formatClassification', () => {
  it('prints target and reason', () => {
    expect(formatClassification(classifySql('SELECT 1'))).toBe('replica\tread-only SELECT');
    expect(formatClassification(classifySql("SELECT nextval('s')"))).toBe('primary\tcalls nextval()');
    expect(formatClassification(classifySql('/* pgmux:max_lag_ms=50 */ SELECT 1'))).toBe(
      'replica\tread-only SELECT\tmax_lag_ms=50',
    );
  });
});
