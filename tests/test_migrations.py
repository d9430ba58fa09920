"""migrations.py: schema.sql's sections applied once each, in each engine's spelling, and upgrades keep data."""
import sqlite3
import subprocess
import sys

import pytest

import database
import migrations
import models
from support import PROJECT


def test_schema_sections_are_numbered_upwards_from_one_and_none_is_empty():
    versions = [version for version, _ in migrations.schema_sections()]
    assert versions == list(range(1, len(versions) + 1))
    assert all(statements for _, statements in migrations.schema_sections())
    assert migrations.latest_version() == versions[-1]


def test_migrating_twice_creates_everything_once_and_then_changes_nothing(database_url):
    db = database.connect_database(database_url)  # unbound, as migrate-db's target is
    try:
        assert migrations.migrate(db) == (0, migrations.latest_version())
        tables = sorted(db.get_tables())
        assert {model._meta.table_name for model in models.ALL_MODELS} <= set(tables)
        assert migrations.migrate(db) == (migrations.latest_version(), migrations.latest_version())
        assert sorted(db.get_tables()) == tables
        assert migrations.schema_version(db) == migrations.latest_version()
    finally:
        db.close()


def test_schema_version_is_recorded(app, backend, data_dir):
    latest = migrations.schema_sections()[-1][0]
    if backend == "sqlite":
        with sqlite3.connect(data_dir / "backhook.db") as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == latest
    else:
        rows = models.database.execute_sql("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [row[0] for row in rows] == [version for version, _ in migrations.schema_sections()]


def test_upgrade_applies_only_newer_sections_and_keeps_data(app, make_job, monkeypatch):
    job = make_job()
    sections = migrations.schema_sections()
    extra = (sections[-1][0] + 1, ["CREATE TABLE upgrade_probe (id TEXT PRIMARY KEY)"])
    monkeypatch.setattr(migrations, "schema_sections", lambda: sections + [extra])
    old, new = migrations.migrate()
    assert (old, new) == (sections[-1][0], extra[0])
    assert models.Job.get_by_id(job.id).name == job.name
    assert migrations.migrate() == (new, new)


def test_concurrent_inits_both_succeed(backhook_env):
    inits = [subprocess.Popen([sys.executable, "-m", "cli", "init"], env=backhook_env, cwd=PROJECT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for init in inits:
        out, err = init.communicate(timeout=60)
        assert init.returncode == 0, err


POSTGRESQL = database.connect_database("postgresql://nobody@127.0.0.1:1/never_opened")
SQLITE = database.SqliteBackend(None)


@pytest.mark.parametrize("sqlite, postgresql", [
    ("CREATE TABLE job (id TEXT PRIMARY KEY, enabled INTEGER NOT NULL DEFAULT 1, keep INTEGER)",
     "CREATE TABLE job (id TEXT PRIMARY KEY, enabled BOOLEAN NOT NULL DEFAULT TRUE, keep INTEGER)"),
    ("CREATE TABLE execution (attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0)",
     "CREATE TABLE execution (attempts INTEGER NOT NULL DEFAULT 0, cancel_requested BOOLEAN NOT NULL DEFAULT FALSE)"),
    ("ALTER TABLE api_key ADD COLUMN enabled INTEGER", "ALTER TABLE api_key ADD COLUMN enabled BOOLEAN"),
    ("CREATE TABLE execution_log (id INTEGER PRIMARY KEY, enabled INTEGER NOT NULL)",
     "CREATE TABLE execution_log (id BIGSERIAL PRIMARY KEY, enabled INTEGER NOT NULL)"),
    ("CREATE INDEX job_enabled ON job (enabled)", "CREATE INDEX job_enabled ON job (enabled)"),
])
def test_postgresql_dialect_differs_only_in_rowids_and_flags(sqlite, postgresql):
    assert POSTGRESQL.dialect(sqlite, migrations.boolean_columns()) == postgresql
    assert SQLITE.dialect(sqlite, migrations.boolean_columns()) == sqlite
