"""schema.sql is the source of truth: models.py must mirror it, and upgrades keep data."""
import sqlite3
import subprocess
import sys

import pytest

import database
import migrations
import models
from support import PROJECT


def sqlite_columns(db_path):
    with sqlite3.connect(db_path) as db:
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # (column, declared type, required, primary key); a primary key is never null.
        return {table: {row[1]: (row[2], row[3] == 1 or row[5] > 0, row[5] > 0)
                        for row in db.execute(f"PRAGMA table_info({table})")}
                for table in tables}


def postgresql_columns():
    primary_keys = set(models.database.execute_sql("""
        SELECT kcu.table_name, kcu.column_name
        FROM information_schema.table_constraints tc
        JOIN information_schema.key_column_usage kcu
          ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
        WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema()""").fetchall())
    tables = {}
    for table, column, data_type, nullable in models.database.execute_sql("""
            SELECT table_name, column_name, data_type, is_nullable
            FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name <> 'schema_version'"""):
        tables.setdefault(table, {})[column] = (data_type, nullable == "NO", (table, column) in primary_keys)
    return tables


SQL_TYPES = {
    "sqlite": {"TextField": "TEXT", "BigIntegerField": "BIGINT", "IntegerField": "INTEGER",
               "BooleanField": "INTEGER"},
    "postgresql": {"TextField": "text", "BigIntegerField": "bigint", "IntegerField": "integer",
                   "BooleanField": "boolean"},
}


def sql_type(field, backend):
    target = field.rel_field if hasattr(field, "rel_field") else field
    if backend == "sqlite" and target.primary_key and type(target).__name__ == "BigIntegerField":
        return "INTEGER"  # SQLite's rowid alias, spelled INTEGER PRIMARY KEY
    return SQL_TYPES[backend][type(target).__name__]


def model_columns(backend):
    return {
        model._meta.table_name: {field.column_name: (sql_type(field, backend), not field.null, field.primary_key)
                                 for field in model._meta.sorted_fields}
        for model in models.ALL_MODELS
    }


def test_models_match_schema_sql(app, backend, data_dir):
    if backend == "sqlite":
        assert sqlite_columns(data_dir / "backhook.db") == model_columns(backend)
    else:
        assert postgresql_columns() == model_columns(backend)


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
