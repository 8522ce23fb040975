"""Rejects stored once per identity, resolved when gone; the scopes a run held back.

- `etl_rejects` gains `reject_key` (who the record is: a hash of entity and full id, or, without a
  readable id, of entity, scope and raw), `scope_id` (the job whose task list listed it),
  `raw_hash`, `resolved_at` and `resolved_run_id`; one open reject per key.
- `etl_held_back_scopes`: the scopes whose soft deletes a run held back, as records without a
  readable id were listed in them.

Backfill: a stored reject with a whole readable id (tasks: and a `jobId` in its raw, its scope)
gets the key the code computes; of several with one key, the latest stays open and the older
are resolved. The others (no readable id, an id stored cut to 200 characters, a task without a
`jobId`) cannot be matched to what a run sees, so they are resolved here (`resolved_run_id`
NULL); a run that still sees them records each once, with its scope.

Self-contained: it imports nothing from etl, so what it creates never follows later code.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:00:00
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
CUT_ID_CHARS = 200  # what releases before this one cut a long source_id to, plus "..."
OPEN_KEY_INDEX = "ux_etl_rejects_open_key"

COMMENTS_0006 = {
    ("etl_runs", "status"): (
        "running, succeeded, partial (the run went through, but some jobs could not be listed, "
        "see etl_failed_jobs, or its soft deletes were refused by --max-delete-fraction, see "
        "error), failed (error says why), or abandoned (the process died; marked by the next "
        "run)."
    ),
    ("etl_runs", "rejects"): "Records the run set aside in etl_rejects.",
    ("etl_rejects", "run_id"): "The run that set the record aside (etl_runs.run_id).",
    ("etl_rejects", "source_id"): "The record's jobId or taskId. NULL when it has no readable id.",
    ("etl_rejects", "rejected_at"): "When it was set aside, UTC.",
}
COMMENTS = {
    ("etl_runs", "status"): (
        "running, succeeded, partial (the run went through, but some jobs could not be listed, "
        "see etl_failed_jobs, or its soft deletes were refused by --max-delete-fraction, or held "
        "back, see etl_held_back_scopes, or it saw more rejects than --max-rejects; see error), "
        "failed (error says why), or abandoned (the process died; marked by the next run)."
    ),
    ("etl_runs", "rejects"): (
        "Records the run set aside, already in etl_rejects or new (more than --max-rejects ends "
        "it partial)."
    ),
    ("etl_rejects", "run_id"): "The run that first set the record aside (etl_runs.run_id).",
    ("etl_rejects", "source_id"): (
        "The record's jobId or taskId, whole. NULL when it has no readable id."
    ),
    ("etl_rejects", "rejected_at"): "When it was first set aside, UTC.",
}
NOT_NULL = {("etl_runs", "status"), ("etl_runs", "rejects"), ("etl_rejects", "run_id")}
NOT_NULL |= {("etl_rejects", "rejected_at")}
TYPES: dict[str, Any] = {"status": sa.Text(), "rejects": sa.Integer(), "run_id": sa.Integer()}
TYPES |= {"source_id": sa.Text(), "rejected_at": Timestamp}
REJECTS_COMMENT_0006 = (
    "Records a run could not type or store, kept with their raw JSON and the reason; the good "
    "records of the run loaded."
)
REJECTS_COMMENT = (
    "Records runs could not type or store, each stored once while it stays upstream, with its "
    "raw JSON and the reason; the good records of the run loaded."
)


def upgrade() -> None:
    _create_held_back_scopes()
    with op.batch_alter_table("etl_rejects", schema=None) as batch_op:
        for column in _reject_columns():
            batch_op.add_column(column)
    _backfill(op.get_bind())
    with op.batch_alter_table("etl_rejects", schema=None) as batch_op:
        batch_op.alter_column("reject_key", existing_type=sa.Text(), nullable=False)
        batch_op.create_index(
            OPEN_KEY_INDEX,
            ["reject_key"],
            unique=True,
            postgresql_where=sa.text("resolved_at IS NULL"),
            sqlite_where=sa.text("resolved_at IS NULL"),
        )
    _describe(COMMENTS, COMMENTS_0006, REJECTS_COMMENT, REJECTS_COMMENT_0006)


def downgrade() -> None:
    _describe(COMMENTS_0006, COMMENTS, REJECTS_COMMENT_0006, REJECTS_COMMENT)
    with op.batch_alter_table("etl_rejects", schema=None) as batch_op:
        batch_op.drop_index(OPEN_KEY_INDEX)
        for name in ("resolved_run_id", "resolved_at", "raw_hash", "scope_id", "reject_key"):
            batch_op.drop_column(name)
    op.drop_table("etl_held_back_scopes")


def _create_held_back_scopes() -> None:
    op.create_table(
        "etl_held_back_scopes",
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run (etl_runs.run_id). Part of the primary key.",
        ),
        sa.Column(
            "scope_kind",
            sa.Text(),
            nullable=False,
            comment=(
                "account (the job list) or job (one job's task list). Part of the primary key."
            ),
        ),
        sa.Column(
            "scope_id",
            sa.Text(),
            nullable=False,
            comment="The job id for a job; '' for the account. Part of the primary key.",
        ),
        sa.Column(
            "held_back",
            sa.Integer(),
            nullable=False,
            comment=(
                "Stored live rows absent from the scope's listing that the run did not "
                "soft-delete (any may be a record it could not read)."
            ),
        ),
        sa.Column(
            "unreadable",
            sa.Integer(),
            nullable=False,
            comment="Records the listing gave without a readable id (see etl_rejects).",
        ),
        sa.Column(
            "reason",
            sa.Text(),
            nullable=False,
            comment="Why, in words, e.g. 1 job(s) listed without a readable jobId.",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["etl_runs.run_id"], name=op.f("fk_etl_held_back_scopes_run_id_etl_runs")
        ),
        sa.PrimaryKeyConstraint(
            "run_id", "scope_kind", "scope_id", name=op.f("pk_etl_held_back_scopes")
        ),
        comment=(
            "Scopes whose soft deletes a run held back, since their listing had records without "
            "a readable id; such a run ends partial (65). One row per run and scope."
        ),
    )


def _reject_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "reject_key",
            sa.Text(),
            nullable=True,  # NOT NULL once backfilled
            comment=(
                "Who the record is: a hash of entity and the full id, or, without a readable id, "
                "of entity, scope_id and raw. One open reject per key."
            ),
        ),
        sa.Column(
            "scope_id",
            sa.Text(),
            nullable=True,
            comment="The job whose task list listed it. NULL for a job (the account's job list).",
        ),
        sa.Column(
            "raw_hash",
            sa.Text(),
            nullable=True,
            comment="Hash of raw: the reject is rewritten only when raw or reason changes.",
        ),
        sa.Column(
            "resolved_at",
            Timestamp,
            nullable=True,
            comment=(
                "When a complete listing of its scope no longer had it, UTC. NULL while it is "
                "still upstream (open)."
            ),
        ),
        sa.Column(
            "resolved_run_id",
            sa.Integer(),
            nullable=True,
            # no foreign key: a second one would make SQLite's table copies order them at random
            comment=(
                "The run that found it gone (etl_runs.run_id, no foreign key). NULL while open, "
                "and for those revision 0007 resolved."
            ),
        ),
    ]


def _backfill(bind: sa.Connection) -> None:
    """Give every stored reject its key; keep open only the latest of each matchable one."""
    rows = bind.execute(
        sa.text("SELECT reject_id, entity, source_id, raw FROM etl_rejects ORDER BY reject_id")
    ).all()
    latest: dict[str, int] = {}
    updates = []
    for reject_id, entity, source_id, stored in rows:
        raw = stored if bind.dialect.name == "postgresql" or stored is None else json.loads(stored)
        scope = raw.get("jobId") if entity == "task" and isinstance(raw, dict) else None
        matchable = _matchable(entity, source_id, scope)
        key = _key(entity, source_id) if matchable else _key("legacy", str(reject_id))
        if matchable:
            latest[key] = reject_id
        updates.append({"id": reject_id, "key": key, "scope": scope, "hash": _hash(raw)})
    stamp = datetime.now(UTC)
    for update in updates:
        update["resolved"] = None if latest.get(update["key"]) == update["id"] else stamp
    if updates:
        bind.execute(
            sa.text(
                "UPDATE etl_rejects SET reject_key = :key, scope_id = :scope, raw_hash = :hash, "
                "resolved_at = :resolved WHERE reject_id = :id"
            ).bindparams(sa.bindparam("resolved", type_=Timestamp)),
            updates,
        )


def _matchable(entity: str, source_id: str | None, scope: Any) -> bool:
    """Whether a run would give this stored reject the same identity and scope."""
    if not source_id:
        return False
    if len(source_id) == CUT_ID_CHARS + 3 and source_id.endswith("..."):
        return False  # cut: the whole id is lost
    return entity == "job" or (isinstance(scope, str) and bool(scope))


def _key(*parts: str) -> str:
    """As etl.load.reject_key computed it for a readable id when this revision was written."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _hash(raw: Any) -> str:
    """The content hash of raw as etl.transform computed it when this revision was written:
    SHA-256 of canonical JSON (sorted keys, no spaces), prefixed j1:."""
    text = json.dumps(raw, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "j1:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _describe(
    comments: dict[tuple[str, str], str],
    old: dict[tuple[str, str], str],
    table_comment: str,
    old_table_comment: str,
) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite keeps no comments
    for (table, column), comment in comments.items():
        op.alter_column(
            table,
            column,
            comment=comment,
            existing_comment=old[(table, column)],
            existing_type=TYPES[column],
            existing_nullable=(table, column) not in NOT_NULL,
        )
    op.create_table_comment("etl_rejects", table_comment, existing_comment=old_table_comment)
