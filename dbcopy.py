"""`backhook migrate-db`: copy every row of one backhook database into another, empty one.

The usual direction is the embedded SQLite database into PostgreSQL when one
server is no longer enough. The source is read inside one snapshot, so a
writer that is still running cannot tear the copy; the target is written in
one transaction, so a failed copy leaves it empty. Row counts are compared
before that transaction commits.
"""
from peewee import BigIntegerField, IntegerField, chunked, sort_models

import models
from migrations import latest_version, migrate, schema_version

BATCH_ROWS = 1000


class CopyError(Exception):
    pass


def copy_database(source, target, batch_rows=BATCH_ROWS, report=lambda message: None):
    """Copy every table of `source` into `target` (created or upgraded first); return {table: rows}."""
    latest = latest_version()
    with source.connection_context():
        if schema_version(source) != latest:
            raise CopyError(f"the source database is not at schema version {latest}: run `backhook init` first")
    migrate(target)
    counts = {}
    with source.connection_context(), target.connection_context():
        with source.snapshot(), target.atomic():
            refuse_non_empty(target)
            for model in sort_models(models.ALL_MODELS):
                counts[model._meta.table_name] = copy_table(model, source, target, batch_rows)
                report(f"copied {counts[model._meta.table_name]:>9} rows of {model._meta.table_name}")
            verify_counts(source, target, counts)
            advance_sequences(target)
    return counts


def refuse_non_empty(target):
    for model in models.ALL_MODELS:
        if model.select().exists(target):
            raise CopyError(f"the target database already holds {model._meta.table_name} rows; "
                            "migrate-db only copies into an empty database")


def copy_table(model, source, target, batch_rows):
    fields = model._meta.sorted_fields
    # Reading through the model turns each backend's values into Python's
    # (SQLite's 0/1 flags into booleans) and writing turns them into the target's.
    rows = model.select(*fields).order_by(model._meta.primary_key).tuples().iterator(source)
    copied = 0
    for batch in chunked(rows, batch_rows):
        model.insert_many(batch, fields=fields).execute(target)
        copied += len(batch)
    return copied


def verify_counts(source, target, copied):
    for model in models.ALL_MODELS:
        table = model._meta.table_name
        counts = {model.select().count(source), model.select().count(target), copied[table]}
        if len(counts) != 1:
            raise CopyError(f"row counts of {table} differ after the copy: {sorted(counts)}; nothing was kept")


def advance_sequences(target):
    """Explicit ids were copied into BIGSERIAL columns: move their sequences past them."""
    if not target.has_sequences:
        return
    for model in models.ALL_MODELS:
        key = model._meta.primary_key
        if isinstance(key, (IntegerField, BigIntegerField)):
            table, column = model._meta.table_name, key.column_name
            target.execute_sql(
                f"SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(max({column}), 0) + 1, false) "
                f"FROM {table}", (table, column))
