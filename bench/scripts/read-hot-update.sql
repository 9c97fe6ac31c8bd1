-- read-hot, 1 of 10 transactions: an update of any account, which invalidates what a cache
-- holds for pgbench_accounts (hot rows or not: caches invalidate by table).
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
