"""schema.sql is the source of truth: models.py must mirror it (migrations.py applies it)."""
import sqlite3

import models


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
