"""The Peewee models, mirroring schema.sql, and the database's lifecycle.

`database` is a proxy: importing this module never touches the disk. The app
factory, the worker and the CLI call `open_database(url)` once.
"""
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import urlparse

from peewee import (
    BigIntegerField,
    BooleanField,
    Case,
    DatabaseProxy,
    ForeignKeyField,
    IntegerField,
    InterfaceError,
    JOIN,
    Model,
    OperationalError,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)
from peewee import __exception_wrapper__ as translate_driver_errors
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url
from playhouse.shortcuts import ReconnectMixin

from sqlite_writers import TurnTakingSqliteDatabase

log = logging.getLogger("backhook.models")

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
database = DatabaseProxy()


# --- time and identifiers -------------------------------------------------

def now_ms():
    return int(time.time() * 1000)


def new_id():
    """An opaque id: creation time in hex (so ids sort by age) and 80 random bits."""
    return f"{now_ms():012x}{secrets.token_hex(10)}"


def iso(ms):
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds and Z."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# --- opening and migrating ---------------------------------------------------

class ServerDatabase(ReconnectMixin, PostgresqlDatabase):
    """PostgreSQL with one connection per process, reopened when the server drops it.

    A statement outside a transaction (and every BEGIN) is retried once on a
    fresh connection; inside a transaction the error surfaces, because the
    transaction's earlier work is gone with the old connection.
    """

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


def is_postgresql_url(url):
    return url.startswith(("postgresql://", "postgres://"))


def connect_postgresql(url, busy_seconds=10.0):
    """An unopened PostgreSQL database for `url`.

    Lock waits give up after `busy_seconds`, as SQLite's busy timeout does, so
    a request blocked on a lock fails with OperationalError (a 503) in time.
    """
    params = parse_url(url, unquote_password=True, unquote_user=True)
    params.setdefault("options", f"-c lock_timeout={int(busy_seconds * 1000)}")
    params.setdefault("application_name", "backhook")
    return ServerDatabase(**params)


# SQLite copies its write-ahead log back into the database ("checkpoints")
# when the log reaches this many pages, inside the commit that crossed the
# mark, fsyncs included: about one webhook in 150 paid milliseconds for it.
# The worker checkpoints four times a second instead (checkpoint_wal), so
# requests never do; the mark (about 40 MB) remains for a web server without
# a worker.
WAL_AUTOCHECKPOINT_PAGES = 10_000


# No memory map (mmap_size stays 0): SQLite unmaps the whole file whenever
# another connection has written, which with several gunicorn processes is
# before almost every webhook, and every page touched after that faults back
# in. Two processes writing in turn spent 100-118 µs of CPU per webhook
# transaction with read() calls against 123-172 µs through a 256 MiB map.
# A larger page cache serves reads instead: it too is emptied after another
# connection's write, but that costs only the pages cached since, and while
# nobody writes it keeps the upper levels of a large database's B-trees (the
# scale bench's poll on 1,000,000 executions took 1.42x as long as on an empty
# database with SQLite's default 2 MiB, 0.63-1.08x with 32 or 64 MiB). Pages
# are allocated as they are used.
PAGE_CACHE_KIB = 32 * 1024


def open_database(url, busy_seconds=10.0):
    """Bind the proxy to the database named by `url` and return it."""
    db = connect_database(url, busy_seconds)
    database.initialize(db)
    return db


def connect_database(url, busy_seconds=10.0):
    """The unopened database named by `url`, not bound to the models."""
    if is_postgresql_url(url):
        db = connect_postgresql(url, busy_seconds)
    elif url.startswith("sqlite:///"):
        path = Path(urlparse(url).path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created private before SQLite opens it: its -wal and -shm files take the same mode.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
        db = TurnTakingSqliteDatabase(
            str(path),
            timeout=busy_seconds,
            # Every write transaction takes the write lock up front, so a busy
            # database makes it wait instead of failing half-way through.
            lock_type="IMMEDIATE",
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "synchronous": "normal",
                     "wal_autocheckpoint": WAL_AUTOCHECKPOINT_PAGES, "cache_size": -PAGE_CACHE_KIB},
        )
    else:
        db = connect_url(url)
    return db


def checkpoint_wal():
    """Copy SQLite's write-ahead log into the database, waiting for no reader or writer."""
    if is_sqlite():
        database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")


def run_sql(sql, params=()):
    """Plain SQL written with `?` placeholders, straight on the connection (SQLite or PostgreSQL).

    Only for the hottest paths; everything else goes through peewee.
    """
    db = database.obj  # reads through the proxy cost 9k instructions a statement, 2/5 of SQLite's own work
    if db.param != "?":
        sql = sql.replace("?", db.param)
    cursor = db.connection().cursor()
    with translate_driver_errors:  # raise peewee's errors, as execute_sql does
        cursor.execute(sql, params)
    return cursor


def _actual(db):
    return database.obj if db is None or db is database else db


def is_sqlite(db=None):
    return isinstance(_actual(db), SqliteDatabase)


def is_postgresql(db=None):
    return isinstance(_actual(db), PostgresqlDatabase)


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


def _statements(text):
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


_TABLE = re.compile(r"\s*(?:CREATE\s+TABLE(?:\s+IF\s+NOT\s+EXISTS)?|ALTER\s+TABLE)\s+(\w+)", re.I)


def _dialect(statement, db=None):
    """SQLite's spelling of the schema, adapted where PostgreSQL differs.

    Two differences: a rowid alias (INTEGER PRIMARY KEY) becomes BIGSERIAL, and
    a column that models.py maps to a BooleanField, spelled INTEGER with a
    0/1 default on SQLite, becomes a real BOOLEAN, which Peewee expects there.
    """
    if not is_postgresql(db):
        return statement
    statement = statement.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
    table = _TABLE.match(statement)
    for column in _boolean_columns().get(table.group(1).lower() if table else None, ()):
        statement = re.sub(
            rf"\b({column})\s+INTEGER\b((?:\s+NOT\s+NULL)?)(?:(\s+DEFAULT\s+)([01])\b)?",
            lambda m: f"{m.group(1)} BOOLEAN{m.group(2)}"
                      + (f"{m.group(3)}{'TRUE' if m.group(4) == '1' else 'FALSE'}" if m.group(3) else ""),
            statement, flags=re.I)
    return statement


def _boolean_columns():
    return {model._meta.table_name: [field.column_name for field in model._meta.sorted_fields
                                     if isinstance(field, BooleanField)]
            for model in ALL_MODELS}


def schema_version(db=None):
    db = db or database
    if is_sqlite(db):
        return db.execute_sql("PRAGMA user_version").fetchone()[0]
    db.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute_sql("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


MIGRATION_LOCK = 0x6261636B686F6F6B  # "backhook": the advisory lock `init` holds on PostgreSQL


def migrate(db=None):
    """Apply every schema section newer than the database; return (old, new)."""
    db = db or database
    with db.connection_context():
        if is_postgresql(db):
            # Two processes running `init` at once must not both apply a section.
            # On SQLite the IMMEDIATE transaction around each section does that.
            db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            old = new = schema_version(db)
            for version, statements in schema_sections():
                if version <= old:
                    continue
                with db.atomic():
                    if schema_version(db) >= version:  # a concurrent `init` applied it first
                        new = version
                        continue
                    for statement in statements:
                        db.execute_sql(_dialect(statement, db))
                    if is_sqlite(db):
                        db.execute_sql(f"PRAGMA user_version = {int(version)}")
                    else:
                        db.execute_sql("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                new = version
        finally:
            if is_postgresql(db):
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return old, new


# --- models ------------------------------------------------------------------

class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


PERMISSIONS = ("jobs:read", "jobs:execute", "history:read", "websites:read")
KEY_PATTERN = re.compile(r"dbm_[A-Za-z0-9_-]{32,}")
KEY_TOUCH_INTERVAL_MS = 60_000
_last_touched = {}  # key id -> ms; spares the database a write per request


def hash_key(key):
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    name = TextField()
    prefix = TextField()
    key_hash = TextField(unique=True)
    permissions = TextField()
    enabled = BooleanField(default=True)
    created_at = BigIntegerField(default=now_ms)
    expires_at = BigIntegerField(null=True)
    last_used_at = BigIntegerField(null=True)

    @classmethod
    def issue(cls, name, permissions, expires_in_days=None):
        """Create a key; return (row, secret). The secret is never stored."""
        unknown = sorted(set(permissions) - set(PERMISSIONS))
        if unknown:
            raise ValueError(f"unknown permission {', '.join(unknown)}; choose from {', '.join(PERMISSIONS)}")
        secret = "dbm_" + secrets.token_urlsafe(32)
        expires_at = None
        if expires_in_days is not None:
            expires_at = now_ms() + int(expires_in_days * 86_400_000)
        with database.atomic():
            row = cls.create(
                name=name,
                prefix=secret[:12],
                key_hash=hash_key(secret),
                permissions=" ".join(sorted(set(permissions))),
                expires_at=expires_at,
            )
        return row, secret

    @classmethod
    def authenticate(cls, presented):
        """Return (key, None) for a usable key, else (None, reason)."""
        if not KEY_PATTERN.fullmatch(presented):
            return None, "Malformed API key"
        digest = hash_key(presented)
        key = cls.get_or_none(cls.key_hash == digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            return None, "Invalid API key"
        if not key.enabled:
            return None, "API key is disabled"
        if key.expires_at is not None and key.expires_at <= now_ms():
            return None, "API key has expired"
        key.touch()
        return key, None

    def allows(self, permission):
        return permission in self.permissions.split()

    def touch(self):
        """Record last use, at most one write per key per minute across processes."""
        now = now_ms()
        if now - _last_touched.get(self.id, 0) < KEY_TOUCH_INTERVAL_MS:
            return
        _last_touched[self.id] = now
        stale = ApiKey.last_used_at.is_null() | (ApiKey.last_used_at <= now - KEY_TOUCH_INTERVAL_MS)
        try:
            with database.atomic():
                ApiKey.update(last_used_at=now).where((ApiKey.id == self.id) & stale).execute()
        except OperationalError as exc:  # a busy database must not fail the request
            log.warning("could not record key use: %s", exc)


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
JOB_NAME_MAX_CHARACTERS = 100
NAME_MAX_BYTES = 255  # a job's name is its artifacts' directory name, and file systems allow this much


def job_name_problem(name):
    """What is wrong with a job name, or None: every valid name can be its artifacts' directory."""
    if not name or not name.strip():
        return "a job name cannot be empty"
    if name in (".", ".."):
        return f"a job cannot be named {name!r}"
    if "/" in name:
        return "a job name cannot contain '/'"
    if CONTROL_CHARACTERS.search(name):
        return "a job name cannot contain control characters"
    if name != name.strip():
        return "a job name cannot begin or end with a space"
    if len(name) > JOB_NAME_MAX_CHARACTERS or len(name.encode()) > NAME_MAX_BYTES:
        return f"a job name has at most {JOB_NAME_MAX_CHARACTERS} characters ({NAME_MAX_BYTES} bytes in UTF-8)"
    return None


class Job(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    name = TextField(unique=True)
    source = TextField()
    destination = TextField()
    compression = TextField(default="zstd")
    keep = IntegerField(null=True)
    timeout_seconds = IntegerField(default=6 * 3600)
    enabled = BooleanField(default=True)
    created_at = BigIntegerField(default=now_ms)
    excludes = TextField(default="[]")  # files:// only: a JSON list of tar --exclude patterns
    one_file_system = BooleanField(default=False)  # files:// only: tar --one-file-system

    def exclude_patterns(self):
        return json.loads(self.excludes)

    @classmethod
    def listing(cls):
        """Every job by name, each with its newest execution's last_id, last_status and last_ended_at (or None).

        One query: each job's newest execution is found through the
        (job_id, created_at) index, not with one more query per job.
        """
        newer = Execution.alias()
        newest_id = (newer.select(newer.id).where(newer.job == cls.id)
                     .order_by(newer.created_at.desc()).limit(1))
        return (cls.select(cls, Execution.id.alias("last_id"), Execution.status.alias("last_status"),
                           Execution.ended_at.alias("last_ended_at"))
                .join(Execution, JOIN.LEFT_OUTER, on=(Execution.id == newest_id))
                .order_by(cls.name)
                .objects())


PENDING, RUNNING, SUCCESS, FAILED, CANCELLED = "Pending", "Running", "Success", "Failed", "Cancelled"
FINISHED = (SUCCESS, FAILED, CANCELLED)


class Execution(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    job = ForeignKeyField(Job, backref="executions", on_delete="CASCADE")
    type = TextField(default="Backup")
    status = TextField(default=PENDING)
    progress = IntegerField(default=0)
    stage = TextField(null=True, default="Queued")
    created_at = BigIntegerField(default=now_ms)
    started_at = BigIntegerField(null=True)
    ended_at = BigIntegerField(null=True)
    size = BigIntegerField(null=True)
    path = TextField(null=True)
    sha256 = TextField(null=True)
    error = TextField(null=True)
    attempts = IntegerField(default=0)
    worker_id = TextField(null=True)
    lease_expires_at = BigIntegerField(null=True)
    cancel_requested = BooleanField(default=False)
    retention_error = TextField(null=True)

    @classmethod
    def transition(cls, execution_id, expected, fields, owner=None, where=None, logs=()):
        """Change one execution from status `expected`, in one guarded write; True if it did.

        Every state change of an execution after its claim goes through here.
        The UPDATE holds only while the row still has the status the caller
        expects (and, given `owner` = (worker_id, attempt), while that attempt
        still holds it), so a writer working from a stale read, under
        PostgreSQL's read committed as on SQLite, changes nothing instead of
        overwriting a Cancelled, Failed or taken-over execution. `logs` (dicts
        of ExecutionLog fields) are appended only when the write happened. It
        runs inside the caller's transaction.
        """
        condition = (cls.id == execution_id) & (cls.status == expected)
        if owner is not None:
            condition &= (cls.worker_id == owner[0]) & (cls.attempts == owner[1])
        if where is not None:
            condition &= where
        changed = cls.update(**fields).where(condition).execute() == 1
        if changed and logs:
            ExecutionLog.insert_many([{"execution": execution_id, **line} for line in logs]).execute()
        return changed

    @classmethod
    def enqueue(cls, job):
        with database.atomic():
            return cls.create(job=job.id)

    @classmethod
    def with_job_name(cls, execution_id):
        return (cls.select(cls, Job.name).join(Job)
                .where(cls.id == execution_id).objects().first())

    @classmethod
    def cancel(cls, execution_id):
        """Cancel a Pending execution now, or ask a Running one's worker to stop.

        Returns (execution, accepted); accepted is False when it had finished.
        """
        with database.atomic():
            # On PostgreSQL the row lock makes a claim that is under way either
            # finish first (the cancel then asks its worker) or skip this row.
            execution = cls.select().where(cls.id == execution_id).for_update(is_postgresql()).first()
            if execution is None or execution.status in FINISHED:
                return execution, False
            if execution.status == PENDING:
                cls.transition(execution_id, PENDING, dict(status=CANCELLED, stage=CANCELLED, ended_at=now_ms()))
            else:
                cls.update(cancel_requested=True).where(cls.id == execution_id).execute()
        return cls.with_job_name(execution_id), True

    def duration(self):
        if self.ended_at is None:
            return None
        return self.ended_at - (self.started_at or self.ended_at)

    def to_api(self, include_logs=False):
        data = {
            "id": self.id,
            "jobId": self.job_id,
            "jobName": self.name,
            "type": self.type,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "startedAt": iso(self.started_at),
            "endedAt": iso(self.ended_at),
            "duration": self.duration(),
            "size": self.size,
            "path": self.path,
            "error": self.error,
        }
        if include_logs:
            data["logs"] = [entry.to_api() for entry in
                            ExecutionLog.select().where(ExecutionLog.execution == self.id)
                            .order_by(ExecutionLog.id)]
        return data


class ExecutionLog(BaseModel):
    id = BigIntegerField(primary_key=True)
    execution = ForeignKeyField(Execution, backref="logs", on_delete="CASCADE")
    timestamp = BigIntegerField(default=now_ms)
    level = TextField(default="info")
    stage = TextField(null=True)
    message = TextField()

    def to_api(self):
        return {"timestamp": iso(self.timestamp), "level": self.level,
                "stage": self.stage, "message": self.message}


class Setting(BaseModel):
    key = TextField(primary_key=True)
    value = TextField()

    DEFAULTS = {"max_concurrent_jobs": "1"}

    @classmethod
    def read(cls, key):
        row = cls.get_or_none(cls.key == key)
        return row.value if row else cls.DEFAULTS.get(key)

    @classmethod
    def write(cls, key, value):
        if key not in cls.DEFAULTS:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(cls.DEFAULTS)}")
        with database.atomic():
            cls.insert(key=key, value=str(value)).on_conflict(
                conflict_target=[cls.key], update={cls.value: str(value)}).execute()


# --- WPSec websites, their backups and each backup's events (remote_backups.py applies them) ---

def normalize_domain(domain):
    """Domains match ignoring case, surrounding space and a trailing dot."""
    return domain.strip().rstrip(".").lower()


class Website(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    domain = TextField(unique=True)
    wpsec_url = TextField(null=True)
    wpsec_api_key = TextField(null=True)
    created_at = BigIntegerField(default=now_ms)
    sync_requested_at = BigIntegerField(null=True)
    synced_at = BigIntegerField(null=True)
    remote_backups = TextField(null=True)

    @classmethod
    def by_domain(cls, domain):
        return cls.get_or_none(cls.domain == normalize_domain(domain))


class Backup(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    website = ForeignKeyField(Website, backref="backups", on_delete="CASCADE")
    backup_id = TextField()
    status = TextField()
    progress = IntegerField(default=0)
    error_message = TextField(null=True)
    execution = ForeignKeyField(Execution, null=True, on_delete="SET NULL")
    created_at = BigIntegerField(default=now_ms)
    updated_at = BigIntegerField(default=now_ms)
    completed_at = BigIntegerField(null=True)

    class Meta:
        indexes = ((("website", "backup_id"), True),)


class BackupEvent(BaseModel):
    id = BigIntegerField(primary_key=True)
    backup_pk = ForeignKeyField(Backup, column_name="backup_pk", backref="events", on_delete="CASCADE")
    kind = TextField()
    payload = TextField()
    received_at = BigIntegerField(default=now_ms)


ALL_MODELS = (ApiKey, Job, Execution, ExecutionLog, Setting, Website, Backup, BackupEvent)

