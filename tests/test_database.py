"""database.py: the backend chosen when the database opens, and each of its engine-specific methods."""
import select
import sqlite3
import subprocess
import sys

import psycopg2
import pytest

import database
import models
import wakeup
from config import ConfigError
from database import CLAIM_LOCK, MIGRATION_LOCK, PostgresqlBackend, SqliteBackend, opened, run_sql
from models import Execution, Job
from support import PROJECT


def other_session(database_url):
    """A plain driver connection of the test's own, outside backhook, in autocommit."""
    if database_url.startswith("sqlite:///"):
        return sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    return conn


def run_elsewhere(session, sql):
    cursor = session.cursor()
    cursor.execute(sql)
    return cursor.fetchone() if cursor.description else None


def test_opening_binds_the_models_to_the_backend_for_the_url(app, backend, database_url):
    db = database.open_database(database_url)
    try:
        assert opened() is db
        assert isinstance(db, SqliteBackend if backend == "sqlite" else PostgresqlBackend)
        assert db.is_closed()
        assert Job.select().count() == 0
        assert not db.is_closed()  # the models' query went through this backend's connection
    finally:
        db.close()


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/backhook", "sqlite://relative.db", "redis://x", ""])
def test_an_unsupported_database_url_is_refused_as_a_configuration_error(url):
    with pytest.raises(ConfigError, match="BACKHOOK_DATABASE_URL"):
        database.connect_database(url)


def test_the_cli_refuses_an_unsupported_database_url_in_one_line(backhook_env):
    env = {**backhook_env, "BACKHOOK_DATABASE_URL": "mysql://root@127.0.0.1/backhook"}
    result = subprocess.run([sys.executable, "-m", "cli", "init"], env=env, cwd=PROJECT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "BACKHOOK_DATABASE_URL='mysql://root@127.0.0.1/backhook' is not supported" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_sql_takes_question_marks_on_both_engines(app):
    assert run_sql("SELECT ? + ?", (2, 3)).fetchone()[0] == 5


def test_for_update_locks_rows_only_where_rows_have_locks(app, backend):
    query = Execution.select().where(Execution.id == "x")
    plain = query.sql()[0]
    locked, skipping = opened().for_update(query).sql()[0], opened().for_update(query, skip_locked=True).sql()[0]
    text = opened().for_update("SELECT id FROM backup")
    if backend == "sqlite":
        assert locked == skipping == plain and text == "SELECT id FROM backup"
    else:
        assert locked == plain + " FOR UPDATE" and skipping == plain + " FOR UPDATE SKIP LOCKED"
        assert text == "SELECT id FROM backup FOR UPDATE"


def test_a_claim_transaction_keeps_every_other_claimer_out_until_it_ends(app, backend, database_url):
    session = other_session(database_url)
    try:
        with models.database.atomic():
            opened().lock_claims()
            if backend == "sqlite":  # nothing to take: the IMMEDIATE transaction holds the one write lock
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    run_elsewhere(session, "BEGIN IMMEDIATE")
            else:
                assert run_elsewhere(session, f"SELECT pg_try_advisory_xact_lock({CLAIM_LOCK})") == (False,)
        if backend == "sqlite":
            run_elsewhere(session, "BEGIN IMMEDIATE")
            run_elsewhere(session, "ROLLBACK")
        else:
            assert run_elsewhere(session, f"SELECT pg_try_advisory_xact_lock({CLAIM_LOCK})") == (True,)
    finally:
        session.close()


@pytest.mark.postgresql_only("the migration lock is a PostgreSQL advisory lock")
def test_the_migration_lock_is_held_until_the_block_ends(app, database_url):
    session = other_session(database_url)
    try:
        with opened().migration_lock():
            assert run_elsewhere(session, f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})") == (False,)
        assert run_elsewhere(session, f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})") == (True,)
    finally:
        session.close()


@pytest.mark.sqlite_only("only SQLite's write-ahead log needs copying back")
def test_a_checkpoint_copies_the_write_ahead_log_into_the_database_file(app, make_job, data_dir):
    assert opened().needs_checkpoints
    opened().checkpoint()
    before = (data_dir / "backhook.db").stat().st_size
    with models.database.atomic():
        for number in range(200):
            make_job(name=f"job-{number}", source="files:///srv/" + "x" * 500)
    assert (data_dir / "backhook.db").stat().st_size == before  # the rows are only in the log so far
    opened().checkpoint()
    assert (data_dir / "backhook.db").stat().st_size > before


@pytest.mark.postgresql_only("about the server's own checkpoints")
def test_postgresql_needs_no_checkpoints_from_backhook(app):
    assert not opened().needs_checkpoints
    opened().checkpoint()  # and asking for one is harmless


def test_a_snapshot_does_not_see_writes_committed_after_its_first_read(app, make_job, database_url):
    make_job(name="before")
    session = other_session(database_url)
    try:
        with opened().snapshot():
            assert Job.select().count() == 1
            run_elsewhere(session, "INSERT INTO job (id, name, source, destination, compression, timeout_seconds, "
                                   "enabled, created_at, excludes, one_file_system) "
                                   "VALUES ('j2', 'after', 'files:///srv', '/b', 'zstd', 60, TRUE, 0, '[]', FALSE)")
            assert Job.select().count() == 1
        assert Job.select().count() == 2
    finally:
        session.close()


def test_a_fresh_database_is_at_schema_version_zero_until_one_is_recorded(database_url):
    db = database.connect_database(database_url)
    try:
        assert db.schema_version() == 0
        db.record_schema_version(4)
        assert db.schema_version() == 4
    finally:
        db.close()


def test_a_wake_up_reaches_a_listening_worker(app, data_dir):
    listener = wakeup.listen(data_dir, "test-worker")
    try:
        assert select.select([listener], [], [], 0)[0] == []
        wakeup.wake_workers(data_dir)
        assert select.select([listener], [], [], 5)[0] == [listener]
        wakeup.drain(listener)
    finally:
        wakeup.stop_listening(listener)
