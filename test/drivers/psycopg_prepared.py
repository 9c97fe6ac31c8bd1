"""psycopg 3 through pgmux: server-side prepared statements (prepare=True) in transaction mode.

Usage: /usr/bin/python3 psycopg_prepared.py HOST PORT DBNAME USER WORKER_ID

Expects the table driver_psycopg(worker int, k int, v text) to exist (the test creates it).
Runs named prepared statements many times, with parameters, in autocommit, inside
explicit transactions, with psycopg's implicit transactions, in pipeline mode (executemany),
after rollbacks (psycopg then sends DEALLOCATE ALL) and beyond psycopg's statement cache size
(it then sends DEALLOCATE name), checking every result. Prints one summary line starting with "ok" and
exits 0; on any failure prints the error to stderr and exits 1.
"""

import sys
import traceback

import psycopg

ITERATIONS = 200


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    host, port, dbname, user, worker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    conninfo = dict(host=host, port=port, dbname=dbname, user=user, connect_timeout=10)
    executed = 0

    # The statements. Every process prepares the same texts: pgmux shares them between clients.
    q_double = "SELECT %s::int * 2 AS v"
    q_branch = "SELECT count(*)::int FROM pgbench_branches WHERE bid = %s"
    q_concat = "SELECT %s::text || '-' || %s::int AS v"
    q_insert = "INSERT INTO driver_psycopg (worker, k, v) VALUES (%s, %s, %s)"
    q_count = "SELECT count(*)::int, coalesce(sum(k), 0)::int FROM driver_psycopg WHERE worker = %s"

    # 1. Autocommit: every statement is its own transaction, so consecutive executions
    #    normally land on different backends of the shared pool.
    with psycopg.connect(autocommit=True, **conninfo) as conn:
        with conn.cursor() as cur:
            for i in range(ITERATIONS):
                which = i % 3
                if which == 0:
                    cur.execute(q_double, (worker * 1000 + i,), prepare=True)
                    check(cur.fetchone() == ((worker * 1000 + i) * 2,), f"double {i}")
                elif which == 1:
                    cur.execute(q_branch, (1 + i % 2,), prepare=True)
                    # pgbench scale 1 has one branch: bid 1 exists, bid 2 does not.
                    check(cur.fetchone() == (1 if i % 2 == 0 else 0,), f"branch {i}")
                else:
                    cur.execute(q_concat, (f"w{worker}", i), prepare=True)
                    check(cur.fetchone() == (f"w{worker}-{i}",), f"concat {i}")
                executed += 1
        # psycopg really holds these as server-side prepared statements.
        names = list(conn._prepared._names.values())
        check(len(names) == 3, f"psycopg prepared {len(names)} statements, expected 3: {names}")

        # 2. Explicit transactions on the autocommit connection: prepared statements that were
        #    prepared outside the transaction are used inside it (maybe on another backend),
        #    and statements first prepared inside a transaction are used outside it afterwards.
        q_in_tx = "SELECT %s::int + 1 AS v, %s::text AS t"
        for t in range(10):
            with conn.transaction():
                with conn.cursor() as cur:
                    for i in range(5):
                        cur.execute(q_double, (t * 10 + i,), prepare=True)
                        check(cur.fetchone() == ((t * 10 + i) * 2,), f"tx double {t}/{i}")
                        cur.execute(q_in_tx, (i, f"t{t}"), prepare=True)
                        check(cur.fetchone() == (i + 1, f"t{t}"), f"tx in_tx {t}/{i}")
                        cur.execute(q_insert, (worker, t * 10 + i, f"tx{t}"), prepare=True)
                        check(cur.rowcount == 1, f"tx insert {t}/{i}")
                        executed += 3
            with conn.cursor() as cur:
                cur.execute(q_in_tx, (t, "after"), prepare=True)
                check(cur.fetchone() == (t + 1, "after"), f"after tx {t}")
                executed += 1

        # A rolled back transaction leaves nothing, and the statements go on working.
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.execute(q_insert, (worker, 100000, "rolled back"), prepare=True)
                    cur.execute("SELECT 1 / %s::int", (0,), prepare=True)
        except psycopg.errors.DivisionByZero:
            pass
        else:
            raise AssertionError("division by zero did not fail")
        executed += 2

        with conn.cursor() as cur:
            cur.execute(q_count, (worker,), prepare=True)
            expected_sum = sum(t * 10 + i for t in range(10) for i in range(5))
            check(cur.fetchone() == (50, expected_sum), f"count after transactions")
            executed += 1

        # 3. Pipeline mode: executemany prepares and runs in one pipeline (Parse/Bind/Execute
        #    without a Sync each), and an explicit pipeline block mixes several statements.
        with conn.cursor() as cur:
            cur.executemany(q_insert, [(worker, 1000 + i, f"many{i}") for i in range(20)])
            executed += 20
            with conn.pipeline():
                curs = []
                for i in range(10):
                    c = conn.cursor()
                    c.execute(q_double, (i,), prepare=True)
                    curs.append(c)
                    executed += 1
                c = conn.cursor()
                c.execute(q_count, (worker,), prepare=True)
                curs.append(c)
                executed += 1
            for i in range(10):
                check(curs[i].fetchone() == (i * 2,), f"pipeline double {i}")
            row = curs[10].fetchone()
            check(row == (70, expected_sum + sum(1000 + i for i in range(20))), f"count after executemany: {row}")

    # 4. psycopg's default: implicit transactions (BEGIN before the first statement), commit.
    with psycopg.connect(**conninfo) as conn:
        with conn.cursor() as cur:
            for i in range(30):
                cur.execute(q_concat, (f"implicit{worker}", i), prepare=True)
                check(cur.fetchone() == (f"implicit{worker}-{i}",), f"implicit concat {i}")
                executed += 1
                if i % 10 == 9:
                    conn.commit()
            cur.execute(q_insert, (worker, 5000, "implicit"), prepare=True)
            conn.rollback()
            cur.execute(q_count, (worker,), prepare=True)
            check(cur.fetchone()[0] == 70, "rollback of implicit transaction")
            executed += 2
            conn.commit()

    # 5. psycopg's statement cache eviction: beyond prepared_max it sends SQL
    #    `DEALLOCATE _pg3_N` (extended protocol) for the least recently used statement, in
    #    autocommit and inside its implicit transaction.
    for autocommit in (True, False):
        with psycopg.connect(autocommit=autocommit, **conninfo) as conn:
            conn.prepared_max = 3
            with conn.cursor() as cur:
                for i in range(40):
                    k = i % 6
                    cur.execute(f"SELECT %s::int + {k} AS v", (i,), prepare=True)
                    check(cur.fetchone() == (i + k,), f"evicting {autocommit} {i}")
                    executed += 1
                    if not autocommit and i % 7 == 6:
                        conn.commit()
            check(len(conn._prepared._names) <= 3, f"cache size {len(conn._prepared._names)}")
            if not autocommit:
                conn.commit()

    print(f"ok worker={worker} executed={executed} prepared={len(names)}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - report anything
        traceback.print_exc(file=sys.stderr)
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
