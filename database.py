"""The metadata database: opening it, and what differs between SQLite and PostgreSQL.

`database` is a proxy, so importing the models never touches the disk. The
app factory, the worker and the CLI call `open_database(url)` once; it picks
the backend for the URL and binds the proxy to it. Every difference between
the two engines is a method of that backend (`SqliteBackend`,
`PostgresqlBackend`), decided once here instead of tested at each use.
"""
import contextlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from peewee import DatabaseProxy, InterfaceError, OperationalError, PostgresqlDatabase
from peewee import __exception_wrapper__ as translate_driver_errors
from playhouse.db_url import parse as parse_url
from playhouse.shortcuts import ReconnectMixin

from config import ConfigError
from sqlite_writers import TurnTakingSqliteDatabase

database = DatabaseProxy()
_opened = None  # what `database` is bound to, kept here so the hot path skips the proxy


@database.attach_callback
def _remember_opened(db):
    global _opened
    _opened = db


def opened():
    """The backend the models are bound to (None before `open_database`)."""
    return _opened


# PostgreSQL advisory locks: claims and reclaims take CLAIM_LOCK one worker at a
# time; `init` holds MIGRATION_LOCK so two upgrades never apply one section twice.
CLAIM_LOCK = 0x626B636C61696D  # "bkclaim"
MIGRATION_LOCK = 0x6261636B686F6F6B  # "backhook"

# SQLite copies its write-ahead log back into the database ("checkpoints")
# inside the commit that crosses this many pages, fsyncs included. The worker
# checkpoints often (SqliteBackend.checkpoint) so that requests never pay for
# it; the mark remains for a web server running without a worker.
# See bench/RESULTS.md, "Figures behind the code: database".
WAL_AUTOCHECKPOINT_PAGES = 10_000

# No memory map (mmap_size stays 0): SQLite unmaps the whole file whenever
# another connection has written, which with several gunicorn processes is
# before almost every webhook. A larger page cache serves reads instead: after
# another connection's write it loses only the pages cached since, and while
# nobody writes it keeps the upper levels of a large database's B-trees.
# Pages are allocated as they are used. See bench/RESULTS.md, "Figures behind
# the code: database".
PAGE_CACHE_KIB = 32 * 1024


def open_database(url, busy_seconds=10.0):
    """Bind the models to the database named by `url` and return its backend."""
    db = connect_database(url, busy_seconds)
    database.initialize(db)
    return db


def connect_database(url, busy_seconds=10.0):
    """The unopened backend for `url`, not bound to the models; ConfigError for any other kind of URL.

    Lock waits give up after `busy_seconds` on both engines, so a request
    blocked on a lock fails with OperationalError (a 503) in time.
    """
    if is_postgresql_url(url):
        params = parse_url(url, unquote_password=True, unquote_user=True)
        params.setdefault("options", f"-c lock_timeout={int(busy_seconds * 1000)}")
        params.setdefault("application_name", "backhook")
        return PostgresqlBackend(**params)
    if url.startswith("sqlite:///"):
        return SqliteBackend.at(Path(urlparse(url).path), busy_seconds)
    raise ConfigError(f"BACKHOOK_DATABASE_URL={url!r} is not supported: use sqlite:////absolute/path.db "
                      "or postgresql://user@host/database")


def is_postgresql_url(url):
    return url.startswith(("postgresql://", "postgres://"))


def run_sql(sql, params=()):
    """Plain SQL written with `?` placeholders, straight on the connection (SQLite or PostgreSQL).

    Only for the hottest paths; everything else goes through peewee. It reads
    the bound backend, not the proxy, whose every attribute read is a call
    (see bench/RESULTS.md, "Figures behind the code: database").
    """
    db = _opened
    if db.param != "?":
        sql = sql.replace("?", db.param)
    cursor = db.connection().cursor()
    with translate_driver_errors:  # raise peewee's errors, as execute_sql does
        cursor.execute(sql, params)
    return cursor


class SqliteBackend(TurnTakingSqliteDatabase):
    """The embedded database: one file, one write lock, wake-ups as datagrams on this machine."""

    needs_checkpoints = True  # the worker copies the write-ahead log back, so requests need not
    has_sequences = False  # a rowid alias follows the largest id by itself

    @classmethod
    def at(cls, path, busy_seconds):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created private before SQLite opens it: its -wal and -shm files take the same mode.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
        return cls(
            str(path),
            timeout=busy_seconds,
            # Every write transaction takes the write lock up front, so a busy
            # database makes it wait instead of failing half-way through.
            lock_type="IMMEDIATE",
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "synchronous": "normal",
                     "wal_autocheckpoint": WAL_AUTOCHECKPOINT_PAGES, "cache_size": -PAGE_CACHE_KIB},
        )

    def lock_claims(self):
        """Nothing: the IMMEDIATE transaction already holds the database's one write lock."""

    def for_update(self, query, skip_locked=False):
        """The query unchanged: a write transaction has locked the whole database already."""
        return query

    def checkpoint(self):
        """Copy the write-ahead log into the database, waiting for no reader or writer."""
        self.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def schema_version(self):
        return self.execute_sql("PRAGMA user_version").fetchone()[0]

    def record_schema_version(self, version):
        self.execute_sql(f"PRAGMA user_version = {int(version)}")

    def migration_lock(self):
        # The IMMEDIATE transaction around each section keeps two `init`s apart.
        return contextlib.nullcontext()

    def dialect(self, statement, boolean_columns):
        """schema.sql is written in SQLite's spelling."""
        return statement

    def snapshot(self):
        """A read transaction that sees one state throughout; in WAL mode it blocks no writer."""
        return self.atomic(lock_type="DEFERRED")

    def listen(self, data_dir, name):
        import wakeup  # here: wakeup imports the models, which import this module

        return wakeup.listen_on_socket(data_dir, name)

    def wake_workers(self, data_dir):
        import wakeup

        wakeup.wake_sockets(data_dir)


_TABLE = re.compile(r"\s*(?:CREATE\s+TABLE(?:\s+IF\s+NOT\s+EXISTS)?|ALTER\s+TABLE)\s+(\w+)", re.I)


class PostgresqlBackend(ReconnectMixin, PostgresqlDatabase):
    """A PostgreSQL server with one connection per process, reopened when the server drops it.

    A statement outside a transaction (and every BEGIN) is retried once on a
    fresh connection; inside a transaction the error surfaces, because the
    transaction's earlier work is gone with the old connection. Row locks and
    advisory locks stand in for SQLite's one write lock, and wake-ups are
    NOTIFY, which reaches the workers of every machine.
    """

    needs_checkpoints = False
    has_sequences = True  # BIGSERIAL columns: copied ids must move their sequences on

    reconnect_errors = (
        (OperationalError, "server closed the connection"),
        (OperationalError, "terminating connection"),
        (OperationalError, "connection not open"),
        (OperationalError, "could not receive data"),
        (OperationalError, "ssl syscall error"),
        (InterfaceError, "connection already closed"),
    )

    def cursor(self, *args, **kwargs):
        # A connection psycopg2 has seen die is replaced before use, so code
        # that runs SQL straight on a cursor recovers on its next statement too.
        conn = self._state.conn
        if conn is not None and conn.closed and not self.in_transaction():
            self.close()
            self.connect()
        return super().cursor(*args, **kwargs)

    def lock_claims(self):
        """Wait for the claim lock; the transaction's end releases it."""
        self.execute_sql("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))

    def for_update(self, query, skip_locked=False):
        """`query` (a peewee select or SQL text) locking the rows it reads, or skipping locked ones."""
        if isinstance(query, str):
            return query + (" FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE")
        return query.for_update(skip_locked=skip_locked or None)

    def checkpoint(self):
        """Nothing: the server checkpoints by itself."""

    def schema_version(self):
        self.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        return self.execute_sql("SELECT max(version) FROM schema_version").fetchone()[0] or 0

    def record_schema_version(self, version):
        self.execute_sql("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    @contextlib.contextmanager
    def migration_lock(self):
        """Two processes running `init` at once must not both apply a section."""
        self.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            yield
        finally:
            self.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def dialect(self, statement, boolean_columns):
        """schema.sql's SQLite spelling, adapted where PostgreSQL differs.

        Two differences: a rowid alias (INTEGER PRIMARY KEY) becomes BIGSERIAL,
        and a column the models map to a BooleanField (`boolean_columns`:
        {table: [column, ...]}), spelled INTEGER with a 0/1 default on SQLite,
        becomes a real BOOLEAN, which Peewee expects there.
        """
        statement = statement.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
        table = _TABLE.match(statement)
        for column in boolean_columns.get(table.group(1).lower() if table else None, ()):
            statement = re.sub(
                rf"\b({column})\s+INTEGER\b((?:\s+NOT\s+NULL)?)(?:(\s+DEFAULT\s+)([01])\b)?",
                lambda m: f"{m.group(1)} BOOLEAN{m.group(2)}"
                          + (f"{m.group(3)}{'TRUE' if m.group(4) == '1' else 'FALSE'}" if m.group(3) else ""),
                statement, flags=re.I)
        return statement

    def snapshot(self):
        return self.atomic(isolation_level="REPEATABLE READ")

    def listen(self, data_dir, name):
        import wakeup

        return wakeup.NotifyListener(self)

    def wake_workers(self, data_dir):
        import wakeup

        wakeup.notify_workers(self)
