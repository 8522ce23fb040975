"""Alembic owns the schema: head matches etl.schema, downgrade works, the CLI wraps it."""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL

from etl import db
from tests.harness import invoke_cli

VIEWS = {"finetune_task_metrics_wide", "finetune_task_overview"}


def test_head_has_no_drift_from_the_schema_module(pg_url: URL) -> None:
    engine = db.create(pg_url)
    config = db.alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)  # raises if autogenerate would write a revision
    engine.dispose()


def test_downgrade_to_base_and_back(db_url: URL) -> None:
    engine = db.create(db_url)
    assert set(sa.inspect(engine).get_view_names()) >= VIEWS
    db.downgrade(engine, "base")
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) <= {"alembic_version"}
    assert not set(inspector.get_view_names())
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert set(sa.inspect(engine).get_view_names()) >= VIEWS
    engine.dispose()


def test_raw_json_is_compressed_with_lz4_on_postgres(pg_url: URL) -> None:
    """Revision 0003 switches the raw columns to lz4; downgrading returns them to pglz."""
    engine = db.create(pg_url)
    query = sa.text(
        "SELECT attrelid::regclass::text, attcompression FROM pg_attribute "
        "WHERE attname = 'raw' AND attrelid::regclass::text IN "
        "('finetune_jobs', 'finetune_tasks', 'etl_rejects')"
    )
    with engine.connect() as connection:
        assert dict(connection.execute(query).all()) == dict.fromkeys(
            ("finetune_jobs", "finetune_tasks", "etl_rejects"), "l"
        )
    db.downgrade(engine, "0002")
    with engine.connect() as connection:
        assert set(dict(connection.execute(query).all()).values()) == {"p"}
    db.upgrade(engine)
    engine.dispose()


def test_db_commands(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    before = invoke_cli(["db", "current"], env, cwd=tmp_path)
    assert before.returncode == 78 and "current: none" in before.stdout
    upgraded = invoke_cli(["db", "upgrade"], env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    after = invoke_cli(["db", "current"], env, cwd=tmp_path)
    assert f"current: {db.head_revision()}" in after.stdout and "up to date" in after.stdout


def test_views_compute_what_dashboards_chart(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO finetune_jobs (job_id, name, raw, content_hash, first_seen_at, "
                "last_changed_at) VALUES ('job-1', 'j', '{}', 'h', :t, :t)"
            ),
            {"t": "2024-01-01 00:00:00"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO finetune_tasks (task_id, job_id, run_status, create_time, "
                "finish_time, raw, content_hash, first_seen_at, last_changed_at) VALUES "
                "('task-1', 'job-1', 'Done', :c, :f, '{}', 'h', :c, :c)"
            ),
            {"c": "2024-01-01 00:00:00", "f": "2024-01-01 01:30:00"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO finetune_task_metrics VALUES "
                "('task-1', 'BLEU-4', 17.03, '17.03%'), ('task-1', 'ROUGE-L', 30.5, '30.5%')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO finetune_task_checkpoints VALUES "
                "('task-1', 10, 2.5, 9.0), ('task-1', 20, 1.5, 4.0), ('task-1', 25, 1.25, 4.5)"
            )
        )
        row = connection.execute(sa.text("SELECT * FROM finetune_task_overview")).mappings().one()
    assert row["job_name"] == "j" and row["run_status"] == "Done"
    assert float(row["duration_seconds"]) == 5400.0
    assert (row["checkpoint_count"], row["last_step"]) == (3, 25)
    assert (row["final_training_loss"], row["min_perplexity"]) == (1.25, 4.0)
    assert (row["bleu_4"], row["rouge_1"], row["rouge_l"]) == (17.03, None, 30.5)


def test_the_head_constant_names_the_newest_migration() -> None:
    assert db.head_revision() == db.SCHEMA_HEAD
