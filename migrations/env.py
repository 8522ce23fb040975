"""Alembic environment: the URL comes from etl.config, the target from etl.schema."""

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from etl import config as etl_config
from etl import db
from etl.faults import fault_point
from etl.schema import metadata

alembic_config = context.config
if alembic_config.config_file_name and not alembic_config.attributes.get("quiet"):
    fileConfig(alembic_config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    """The URL given by `qianfan-etl db …`, else DATABASE_URL / .env / the default."""
    given = alembic_config.attributes.get("url")
    if given is not None:
        return str(given)
    etl_config.load_env_file()
    url = etl_config.database_url(os.environ.get(etl_config.DATABASE_URL_VAR))
    return url.render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it."""
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on a live connection."""
    connection = alembic_config.attributes.get("connection")
    if connection is not None:
        _run(connection, alembic_config.attributes.get("schema"))
        return
    # Plain `alembic upgrade head`: no timeouts, the schema from QIANFAN_ETL_DB_SCHEMA.
    schema = etl_config.db_schema(os.environ.get(etl_config.DB_SCHEMA_VAR))
    engine = db.create(make_url(_url()), lock_timeout=0, statement_timeout=0, schema=schema)
    with engine.begin() as connection:  # one transaction, CREATE SCHEMA included
        _run(connection, schema)
    engine.dispose()


def _run(connection: Connection, schema: str | None) -> None:
    if schema is not None:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        version_table_schema=schema,
        # SQLite's DDL is transactional once BEGIN is real (etl.db._transactional): say so,
        # so that Alembic keeps the whole run in one transaction there too.
        transactional_ddl=True,
        on_version_apply=_after_revision,
    )
    with context.begin_transaction():
        context.run_migrations()


def _after_revision(**_step: object) -> None:
    fault_point("after_revision")  # the test suite interrupts migrations here


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
