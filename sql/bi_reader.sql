-- A read-only role for BI tools (Metabase, Superset, Grafana) on the qianfan-etl tables.
--
--   CREATE ROLE bi_reader LOGIN PASSWORD '...';        -- once, as an admin
--   psql "$DATABASE_URL" -v role=bi_reader -f sql/bi_reader.sql
--   (add -v schema=NAME for an installation made with --db-schema NAME; default public)
--
-- Run it as the role that owns the tables (the one that runs `qianfan-etl db upgrade`), after
-- the upgrade: it grants SELECT on every table and view, and on those later migrations create.
-- It grants nothing else, so the role cannot write, lock rows (FOR UPDATE/SHARE) or run DDL.
\set ON_ERROR_STOP on
\if :{?schema}
\else
  \set schema public
\endif
GRANT CONNECT ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"role";
ALTER DEFAULT PRIVILEGES IN SCHEMA :"schema" GRANT SELECT ON TABLES TO :"role";
-- A second guard for dashboards' own SQL editors; privileges are the real one.
ALTER ROLE :"role" SET default_transaction_read_only = on;
