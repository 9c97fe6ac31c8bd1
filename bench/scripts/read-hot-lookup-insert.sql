-- read-hot-lookup, 1 of 20 transactions: an INSERT into another table (pgbench_history), which
-- invalidates nothing a cache holds for pgbench_tellers (caches invalidate by table).
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
