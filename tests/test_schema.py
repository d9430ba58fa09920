"""schema.sql is the source of truth: models.py must mirror it, and upgrades keep data."""
import sqlite3

import models


def schema_columns(db_path):
    with sqlite3.connect(db_path) as db:
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # (column, declared type, required, primary key); a primary key is never null.
        return {table: {row[1]: (row[2], row[3] == 1 or row[5] > 0, row[5] > 0)
                        for row in db.execute(f"PRAGMA table_info({table})")}
                for table in tables}


SQL_TYPES = {"TextField": "TEXT", "BigIntegerField": "BIGINT", "IntegerField": "INTEGER",
             "BooleanField": "INTEGER"}


def sql_type(field):
    target = field.rel_field if hasattr(field, "rel_field") else field
    if target.primary_key and type(target).__name__ == "BigIntegerField":
        return "INTEGER"  # SQLite's rowid alias, spelled INTEGER PRIMARY KEY
    return SQL_TYPES[type(target).__name__]


def model_columns():
    return {
        model._meta.table_name: {field.column_name: (sql_type(field), not field.null, field.primary_key)
                                 for field in model._meta.sorted_fields}
        for model in models.ALL_MODELS
    }


def test_models_match_schema_sql(app, data_dir):
    assert schema_columns(data_dir / "backhook.db") == model_columns()


def test_schema_version_is_recorded(app, data_dir):
    latest = models.schema_sections()[-1][0]
    with sqlite3.connect(data_dir / "backhook.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == latest


def test_upgrade_applies_only_newer_sections_and_keeps_data(app, make_job, monkeypatch):
    job = make_job()
    sections = models.schema_sections()
    extra = (sections[-1][0] + 1, ["CREATE TABLE upgrade_probe (id TEXT PRIMARY KEY)"])
    monkeypatch.setattr(models, "schema_sections", lambda: sections + [extra])
    old, new = models.migrate()
    assert (old, new) == (sections[-1][0], extra[0])
    assert models.Job.get_by_id(job.id).name == job.name
    assert models.migrate() == (new, new)
