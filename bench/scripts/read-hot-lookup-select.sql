-- read-hot-lookup, 19 of 20 transactions: one row of a small lookup table (100 tellers at
-- the bench's scale 10) that nothing in the workload writes.
\set tid random(1, 10 * :scale)
SELECT tid, bid, tbalance FROM pgbench_tellers WHERE tid = :tid;
