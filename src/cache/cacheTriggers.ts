// The SQL of `pgmux cache install-triggers`: statement-level triggers that publish an
// invalidation for every write, so writers that bypass pgmux (cron jobs, migrations, psql)
// keep the query caches of every instance fresh. Everything installed is named pgmux_cache_*
// and removed by the uninstall script.

import { INVALIDATION_CHANNEL, TRIGGER_SENDER } from './invalidationBus.js';

export const NOTIFY_FUNCTION = 'pgmux_cache_notify';
export const DDL_FUNCTION = 'pgmux_cache_ddl';
export const TABLE_TRIGGER = 'pgmux_cache_invalidate';
export const EVENT_TRIGGER = 'pgmux_cache_ddl';

/**
 * Adds the table trigger to the user tables `among` selects that lack it. Partitions get
 * their own (a statement trigger on the parent does not fire for writes aimed at a
 * partition). Temporary tables are skipped: no other session sees them.
 */
const addTableTriggers = (among: string) => `
  FOR r IN
    SELECT c.oid::regclass AS rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE ${among} AND c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
      AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = '${TABLE_TRIGGER}')
  LOOP
    EXECUTE format('CREATE TRIGGER ${TABLE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION public.${NOTIFY_FUNCTION}()', r.rel);
  END LOOP;`;

/** Idempotent: run again, it adds the trigger to tables created since and replaces the functions. */
export const INSTALL_SQL = `
CREATE OR REPLACE FUNCTION public.${NOTIFY_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  -- The table and its partition ancestors (none for a plain table): a cached read names the table it queried.
  PERFORM pg_notify('${INVALIDATION_CHANNEL}', json_build_object(
    'i', '${TRIGGER_SENDER}', 'd', current_database(),
    't', (SELECT json_agg(lower(n.nspname || '.' || c.relname))
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = TG_RELID OR c.oid IN (SELECT relid FROM pg_partition_ancestors(TG_RELID))))::text);
  RETURN NULL;
END $fn$;

CREATE OR REPLACE FUNCTION public.${DDL_FUNCTION}() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
BEGIN
  -- Any DDL may change what a cached statement returns: the whole database. Only DDL on
  -- temporary objects alone is left out (an application's CREATE TEMP TABLE per transaction
  -- would empty the cache); a DROP lists no commands here and notifies.
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands())
     OR EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE schema_name IS NULL OR schema_name !~ '^pg_temp') THEN
    PERFORM pg_notify('${INVALIDATION_CHANNEL}', json_build_object('i', '${TRIGGER_SENDER}', 'd', current_database(), 't', '*')::text);
  END IF;
  -- Only the tables this command created: the creator owns them (another owner's table
  -- would make the CREATE TRIGGER, and so the user's DDL, fail).
  ${addTableTriggers(`c.oid IN (SELECT objid FROM pg_event_trigger_ddl_commands() WHERE command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO'))`)}
END $fn$;

DO $do$
DECLARE
  r record;
BEGIN
  ${addTableTriggers('true')}
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = '${EVENT_TRIGGER}') THEN
    EXECUTE 'CREATE EVENT TRIGGER ${EVENT_TRIGGER} ON ddl_command_end EXECUTE FUNCTION public.${DDL_FUNCTION}()';
  END IF;
END $do$;
`;

/** Drops the event trigger first (so the drops below do not notify), then the functions with their triggers. */
export const UNINSTALL_SQL = `
DROP EVENT TRIGGER IF EXISTS ${EVENT_TRIGGER};
DROP FUNCTION IF EXISTS public.${DDL_FUNCTION}() CASCADE;
DROP FUNCTION IF EXISTS public.${NOTIFY_FUNCTION}() CASCADE;
`;

/** How many tables carry the trigger now (after install: all user tables). */
export const COUNT_SQL = `SELECT count(*)::int AS n FROM pg_trigger WHERE tgname = '${TABLE_TRIGGER}'`;
