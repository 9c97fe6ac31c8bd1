"""psycopg 3 through pgmux: LISTEN, then receive notifications with conn.notifies().

Usage: /usr/bin/python3 psycopg_listen.py HOST PORT DBNAME USER CHANNEL COUNT MODE TIMEOUT_S

MODE says how LISTEN is sent:
  simple    conn.execute("LISTEN ch")                  simple Query (no parameters)
  extended  conn.cursor(binary=True).execute(...)       unnamed Parse/Bind/Execute/Sync
  pipeline  LISTEN inside conn.pipeline()               extended protocol, as in pipeline mode
The connection is in autocommit. After LISTEN it prints "listening", then one line
"notify CHANNEL PAYLOAD" per notification as it arrives; after COUNT notifications it prints
"ok" and exits 0. If they have not all come within TIMEOUT_S seconds it prints "timeout"
to stderr and exits 2; any other failure exits 1.
"""

import signal
import sys
import traceback

import psycopg


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


def main():
    host, port, dbname, user = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    channel, count, mode, timeout_s = sys.argv[5], int(sys.argv[6]), sys.argv[7], int(sys.argv[8])
    ident = '"' + channel.replace('"', '""') + '"'
    with psycopg.connect(host=host, port=port, dbname=dbname, user=user, connect_timeout=10, autocommit=True) as conn:
        if mode == "simple":
            conn.execute(f"LISTEN {ident}")
        elif mode == "extended":
            with conn.cursor(binary=True) as cur:
                cur.execute(f"LISTEN {ident}")
        elif mode == "pipeline":
            with conn.pipeline():
                conn.execute(f"LISTEN {ident}")
        else:
            raise ValueError(f"unknown mode {mode}")
        # The connection is usable for ordinary statements too.
        check = conn.execute("SELECT 41 + 1").fetchone()
        if check != (42,):
            raise AssertionError(f"SELECT 41 + 1 gave {check}")
        print("listening", flush=True)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(timeout_s)
        got = 0
        try:
            for n in conn.notifies():
                print(f"notify {n.channel} {n.payload}", flush=True)
                got += 1
                if got >= count:
                    break
        except Timeout:
            print(f"timeout: {got} of {count} notifications in {timeout_s} s", file=sys.stderr, flush=True)
            sys.exit(2)
        finally:
            signal.alarm(0)
    print("ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - report anything
        traceback.print_exc(file=sys.stderr)
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
