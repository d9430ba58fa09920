"""Creating and upgrading the schema: schema.sql's numbered sections, applied once each.

schema.sql is written in SQLite's spelling; each backend adapts a statement
(`dialect`) and records the version it reached in its own way.
"""
import re
from pathlib import Path

from peewee import BooleanField

import models
from database import opened

SCHEMA_PATH = Path(__file__).with_name("schema.sql")


def schema_sections():
    """The numbered sections of schema.sql as [(version, [statement, ...])]."""
    sections, current = [], None
    for line in SCHEMA_PATH.read_text().splitlines():
        marker = re.fullmatch(r"--\s*version\s+(\d+)\s*", line)
        if marker:
            current = (int(marker.group(1)), [])
            sections.append(current)
        elif current is not None and not line.lstrip().startswith("--"):
            current[1].append(line)
    return [(version, _statements("\n".join(lines))) for version, lines in sections]


def latest_version():
    return schema_sections()[-1][0]


def _statements(text):
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


def boolean_columns():
    """{table: [column, ...]} of the columns the models map to a BooleanField."""
    return {model._meta.table_name: [field.column_name for field in model._meta.sorted_fields
                                     if isinstance(field, BooleanField)]
            for model in models.ALL_MODELS}


def schema_version(db=None):
    return (db or opened()).schema_version()


def migrate(db=None):
    """Apply every schema section newer than the database (default: the bound one); return (old, new)."""
    db = db or opened()
    flags = boolean_columns()
    with db.connection_context(), db.migration_lock():
        old = new = db.schema_version()
        for version, statements in schema_sections():
            if version <= old:
                continue
            with db.atomic():
                if db.schema_version() >= version:  # a concurrent `init` applied it first
                    new = version
                    continue
                for statement in statements:
                    db.execute_sql(db.dialect(statement, flags))
                db.record_schema_version(version)
            new = version
    return old, new
