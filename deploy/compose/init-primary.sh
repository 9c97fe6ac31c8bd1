#!/bin/bash
# Runs once, when the primary's data directory is first created (docker-entrypoint-initdb.d).
# Creates the replication user the replicas' pg_basebackup uses, the application role and
# database pgmux's auth_file (userlist.txt) names, and the health-check login pgmux polls
# the nodes with; then lets replication connections in through pg_hba.conf.
set -euo pipefail

: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}"
: "${APP_USER:=app}"
: "${APP_PASSWORD:?set APP_PASSWORD}"
: "${MONITOR_USER:=pgmux_monitor}"
: "${MONITOR_PASSWORD:?set MONITOR_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v repl_user="$REPLICATION_USER" -v repl_pw="$REPLICATION_PASSWORD" \
  -v app_user="$APP_USER" -v app_pw="$APP_PASSWORD" \
  -v mon_user="$MONITOR_USER" -v mon_pw="$MONITOR_PASSWORD" <<'EOSQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_pw';
CREATE ROLE :"app_user" WITH LOGIN PASSWORD :'app_pw';
CREATE DATABASE :"app_user" OWNER :"app_user";
-- pgmux's health checks read pg_is_in_recovery(), WAL positions and the WAL receiver.
CREATE ROLE :"mon_user" WITH LOGIN PASSWORD :'mon_pw';
GRANT pg_monitor TO :"mon_user";
EOSQL

# The image's default pg_hba.conf only lets "all" databases in over the network; streaming
# replication connects to the pseudo-database "replication".
echo "host replication ${REPLICATION_USER} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
