-- read-hot, 9 of 10 transactions: one account from a hot set of 100 rows.
\set aid random(1, 100)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
