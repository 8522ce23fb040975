"""Alembic owns the schema: revisions are frozen history, each one in turn leads to etl.schema,
downgrade works, the CLI wraps it."""

import ast
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

from etl import db, load, transform
from etl.schema import metadata
from migrations import views
from tests.harness import (
    admin_url,
    code_descriptions,
    create_database,
    descriptions,
    drop_database,
    invoke_cli,
)

VIEWS = {"finetune_task_metrics_wide", "finetune_task_overview"}
ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "migrations" / "versions"
FROZEN = ROOT / "migrations" / "frozen"


# -- revisions are frozen: what they create never changes with today's code ----------------


def revision_files() -> list[Path]:
    """Every revision file, today's and any added later."""
    return sorted(VERSIONS.glob("*.py"))


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name; None for a library's."""
    base = ROOT.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def imported_names(path: Path) -> set[str]:
    """Each dotted name the file imports, with its parent packages (`from a import b`: a, a.b)."""
    package = ".".join(path.parent.relative_to(ROOT).parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node, package)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {".".join(name.split(".")[:n]) for name in names for n in range(1, name.count(".") + 2)}


def absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from … import` names, relative ones resolved against `package`."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def project_modules(path: Path) -> set[str]:
    """The project's modules a file imports, directly or through one another."""
    found: set[str] = set()
    todo = [path]
    while todo:
        for name in imported_names(todo.pop()):
            file = module_file(name)
            if file is not None and name not in found:
                found.add(name)
                todo.append(file)
    return found


def test_the_revision_files_are_the_revisions_alembic_runs() -> None:
    scripts = ScriptDirectory.from_config(Config(str(db.ALEMBIC_INI)))
    assert {Path(s.path) for s in scripts.walk_revisions()} == set(revision_files())


@pytest.mark.parametrize("revision", revision_files(), ids=lambda path: path.stem)
def test_a_revision_imports_nothing_from_etl_nor_from_unfrozen_code(revision: Path) -> None:
    """Its DDL, view SQL and comments are literal, or in a frozen module named for a revision,
    so that an edit to etl/schema.py or migrations/views.py never changes what it creates."""
    reached = project_modules(revision)
    assert not {m for m in reached if m == "etl" or m.startswith("etl.")}, revision.name
    frozen = {m for m in reached if m.startswith("migrations.frozen.")}
    unfrozen = reached - frozen - {"migrations", "migrations.frozen"}
    assert not unfrozen, f"{revision.name} imports {sorted(unfrozen)}: copy what it needs"


# Named by their first argument or name=; a column's primary_key/unique/index/ForeignKey is not.
NAMED_FIRST = {"Index", "create_index", "create_foreign_key", "create_unique_constraint"}
NAMED_FIRST |= {"create_check_constraint", "create_primary_key"}
NAMED_BY_KEYWORD = {"PrimaryKeyConstraint", "ForeignKeyConstraint", "UniqueConstraint"}
NAMED_BY_KEYWORD |= {"CheckConstraint", "ForeignKey"}


def unnamed_constraints(path: Path) -> list[int]:
    """Lines that make a constraint or index without naming it."""
    tree = ast.parse(path.read_text(), str(path))
    return sorted(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and _unnamed(n))


def _unnamed(call: ast.Call) -> bool:
    name = getattr(call.func, "attr", getattr(call.func, "id", ""))
    keywords = {k.arg: k.value for k in call.keywords}
    if name in NAMED_FIRST:
        return _is_none(call.args[0] if call.args else keywords.get("name"))
    if name in NAMED_BY_KEYWORD:
        return _is_none(keywords.get("name"))
    flags = [keywords.get(k) for k in ("primary_key", "unique", "index")]
    return name == "Column" and any(isinstance(f, ast.Constant) and f.value for f in flags)


def _is_none(node: ast.expr | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value is None)


@pytest.mark.parametrize("revision", revision_files(), ids=lambda path: path.stem)
def test_a_revision_names_every_constraint_and_index_it_makes(revision: Path) -> None:
    """Alembic names the unnamed ones by etl.schema's naming convention (env.py hands it over),
    which would make what an old revision creates follow today's code."""
    assert unnamed_constraints(revision) == [], revision.name


def test_each_frozen_module_is_named_for_a_revision() -> None:
    stems = {path.stem.split("_")[0] for path in revision_files()}
    modules = [path for path in FROZEN.glob("*.py") if path.name != "__init__.py"]
    assert modules
    for module in modules:
        suffix = re.search(r"_(\d{4})$", module.stem)
        assert suffix and suffix.group(1) in stems, module.name


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """An empty database: no revision applied yet."""
    if request.param == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    request.getfixturevalue("pg_template")  # Postgres is up, or the test skips (fails in CI)
    name = f"qfetl_empty_{secrets.token_hex(6)}"
    create_database(name)
    yield admin_url().set(database=name)
    drop_database(name)


def test_revision_by_revision_the_database_becomes_the_code_schema(empty_url: URL) -> None:
    """Tables, columns, types, comments and views at head are what etl.schema and
    migrations/views.py say, after each revision ran on its own."""
    engine = db.create(empty_url)
    scripts = ScriptDirectory.from_config(db.alembic_config(engine))
    revisions = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    for revision in revisions:
        db.upgrade(engine, revision)
        assert db.current_revision(engine) == revision
    assert revisions[-1] == db.SCHEMA_HEAD
    config = db.alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)  # raises if autogenerate would write a revision: tables, types
    if engine.dialect.name == "postgresql":
        assert descriptions(engine) == code_descriptions()
    assert_columns_and_views_as_the_code_says(engine)
    engine.dispose()


def assert_columns_and_views_as_the_code_says(engine: sa.Engine) -> None:
    """Column order, view columns, and view SQL equal to re-creating the current views (which
    drops the views' descriptions: check those first)."""
    inspector = sa.inspect(engine)
    for table in metadata.tables.values():
        assert [c["name"] for c in inspector.get_columns(table.name)] == list(table.c.keys())
    assert set(inspector.get_view_names()) == set(views.VIEW_NAMES) == set(views.VIEW_DESCRIPTIONS)
    for view, (_, columns) in views.VIEW_DESCRIPTIONS.items():
        assert [c["name"] for c in inspector.get_columns(view)] == list(columns), view
    made = {view: inspector.get_view_definition(view) for view in views.VIEW_NAMES}
    with engine.begin() as connection:
        for view in reversed(views.VIEW_NAMES):
            connection.execute(sa.text(f"DROP VIEW {view}"))
        for statement in views.statements(engine.dialect.name):
            connection.exec_driver_sql(statement)
    assert made == {view: sa.inspect(engine).get_view_definition(view) for view in made}


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
    """Through the load, which keeps the task's summaries with its children."""
    job = transform.job_to_row({"jobId": "job-1", "name": "j"})
    task = transform.task_to_rows(
        {
            "taskId": "task-1",
            "runStatus": "Done",
            "createTime": "2024-01-01T00:00:00Z",
            "finishTime": "2024-01-01T01:30:00Z",
            "metrics": {"BLEU-4": "17.03%", "ROUGE-L": "30.5%"},
            "checkpointList": [
                {"step": 10, "trainingLoss": 2.5, "perplexity": 9.0},
                {"step": 25, "trainingLoss": 1.25, "perplexity": 4.5},
                {"step": 20, "trainingLoss": 1.5, "perplexity": 4.0},
            ],
        },
        "job-1",
    )
    assert isinstance(job, dict) and isinstance(task, transform.TaskRows)
    with engine.begin() as connection:
        run_id = load.start_run(connection)
        load.write_batch(connection, load.Batch(jobs=[job], tasks=[task]), run_id, {})
        row = connection.execute(sa.text("SELECT * FROM finetune_task_overview")).mappings().one()
    assert row["job_name"] == "j" and row["run_status"] == "Done"
    assert float(row["duration_seconds"]) == 5400.0
    assert (row["checkpoint_count"], row["last_step"]) == (3, 25)
    assert (row["final_training_loss"], row["min_perplexity"]) == (1.25, 4.0)
    assert (row["bleu_4"], row["rouge_1"], row["rouge_l"]) == (17.03, None, 30.5)


def test_the_head_constant_names_the_newest_migration() -> None:
    assert db.head_revision() == db.SCHEMA_HEAD
