"""The Peewee models, mirroring schema.sql, and their small queries.

They are bound to `database`, a proxy that `database.open_database(url)`
binds once the app factory, the worker or the CLI knows the URL; importing
this module never touches the disk.
"""
import datetime
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from decimal import ROUND_HALF_UP, Decimal

from peewee import (
    BigIntegerField,
    BooleanField,
    Case,
    ForeignKeyField,
    IntegerField,
    JOIN,
    Model,
    OperationalError,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)

from database import database, opened, run_sql

log = logging.getLogger("backhook.models")


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


# --- transitional: until worker.py and the WPSec code call the backend ---------
# Issue 13 moves every engine difference into the backend (database.opened());
# these remain only for the callers still written against them (worker.py, the
# WPSec code below, tests/test_webhooks.py), and go when those call
# database.open_database and opened().for_update / .checkpoint instead.
from database import open_database  # noqa: E402,F401


def is_sqlite():
    return isinstance(opened(), SqliteDatabase)


def is_postgresql():
    return isinstance(opened(), PostgresqlDatabase)


def checkpoint_wal():
    opened().checkpoint()


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
            execution = opened().for_update(cls.select().where(cls.id == execution_id)).first()
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


class ExecutionLog(BaseModel):
    id = BigIntegerField(primary_key=True)
    execution = ForeignKeyField(Execution, backref="logs", on_delete="CASCADE")
    timestamp = BigIntegerField(default=now_ms)
    level = TextField(default="info")
    stage = TextField(null=True)
    message = TextField()


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


# --- WPSec backups and their webhook events --------------------------------------

PROGRESS, COMPLETE, FAILED_EVENT = "progress", "complete", "failed"
OPEN_STATUSES = ("pending", "in_progress")
TERMINAL_STATUSES = ("completed", "failed")
DEFAULT_FAILURE = "Backup failed"
# The stages of a wpsec:// execution and the band of global progress each owns.
REQUESTING, REMOTE_BACKUP, SYNCING = "Requesting", "Remote Backup", "Syncing"
REMOTE_BAND = (5, 95)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def event_problem(kind, body):
    """Why a webhook body of `kind` is unacceptable, or None when it is fine."""
    for field in ("domain", "backup_id"):
        value = body.get(field)
        if not isinstance(value, str) or not value.strip() or (field == "domain" and not normalize_domain(value)):
            return f"'{field}' is required and must be a non-empty string"
    if kind == PROGRESS:
        progress = body.get("progress")
        # The range test also refuses NaN and infinities, and never converts a huge int to float.
        if progress is not None and not (is_number(progress) and 0 <= progress <= 100):
            return "'progress' must be a number from 0 to 100"
        status = body.get("status")
        if status is not None and status not in OPEN_STATUSES:
            return "'status' must be 'pending' or 'in_progress'"
    return None


def round_half_up(value):
    # Decimal(value) is the float's exact value, so 45.5 -> 46 and 0.49999999999999994 -> 0.
    return int(Decimal(value).to_integral_value(ROUND_HALF_UP))


def failure_message(value):
    """The stored error of a failed backup: the plugin's text, or JSON of anything else it sent."""
    if value is None or isinstance(value, str):
        return (value or "").strip()[:10_000] or DEFAULT_FAILURE
    return json.dumps(value)[:10_000]


def remote_progress(progress):
    """A remote backup's 0-100 mapped into the execution's Remote Backup band."""
    low, high = REMOTE_BAND
    return low + round_half_up(progress * (high - low) / 100)


def advanced(state, kind, payload, at):
    """A backup's state (a dict of Backup.STATE) moved by one event; None when it was already final."""
    if state["status"] in TERMINAL_STATUSES:
        return None
    state = dict(state, updated_at=at)
    if kind == COMPLETE:
        state.update(status="completed", progress=100, completed_at=at)
    elif kind == FAILED_EVENT:
        state.update(status="failed", error_message=failure_message(payload.get("error_message")))
    else:
        if payload.get("progress") is not None:
            state["progress"] = max(state["progress"] or 0, round_half_up(payload["progress"]))
        if "in_progress" in (state["status"], payload.get("status") or "in_progress"):
            state["status"] = "in_progress"
    return state


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

    STATE = ("id", "status", "progress", "error_message", "execution_id", "created_at", "updated_at",
             "completed_at")
    SELECT_STATE = f"SELECT {', '.join(STATE)} FROM backup WHERE website_id = ? AND backup_id = ?"
    INSERT_STATE = (f"INSERT INTO backup (website_id, backup_id, {', '.join(STATE)}) "
                    f"VALUES (?, ?, {', '.join('?' for _ in STATE)})")
    CHANGING = ("status", "progress", "error_message", "updated_at", "completed_at")  # no indexed column
    UPDATE_STATE = f"UPDATE backup SET {', '.join(f'{name} = ?' for name in CHANGING)} WHERE id = ?"
    NEW_STATE = dict.fromkeys(STATE) | {"status": "pending", "progress": 0}

    @classmethod
    def apply_webhook(cls, domain, backup_id, kind, payload):
        """apply_event for the website with `domain`, found in the same transaction; None when there is none.

        One transaction, not a read and then a write: with several processes
        writing, each transaction first finds its page cache stale, so a
        separate read paid for that twice.
        """
        # Not database.atomic(): through the proxy every step of the transaction
        # goes through its __getattr__, 47k instructions (6% of a webhook).
        with database.obj.atomic():
            row = run_sql("SELECT id FROM website WHERE domain = ?", (normalize_domain(domain),)).fetchone()
            return row and cls._apply_in_transaction(row[0], backup_id, kind, payload)

    @classmethod
    def apply_event(cls, website_id, backup_id, kind, payload, received_at=None, spool_id=None):
        """Apply one webhook (or polled) event in one transaction; False if it was a replayed duplicate.

        `payload` has passed `event_problem`. An unknown backup_id creates the
        record; terminal states stick; progress only rises; every event joins
        the history. A replayed event carries its `spool_id` and applies once.
        """
        with database.atomic():
            return cls._apply_in_transaction(website_id, backup_id, kind, payload, received_at, spool_id)

    @classmethod
    def _apply_in_transaction(cls, website_id, backup_id, kind, payload, received_at=None, spool_id=None):
        received_at = received_at or now_ms()
        backup_id = backup_id.strip()
        record = json.dumps(dict(payload, spool_id=spool_id) if spool_id else payload)
        # Plain SQL on tuples and dicts: this is the webhook's hot path, and
        # the write lock is held while it runs. Building peewee queries and
        # model objects here cost more than SQLite's own work.
        # On SQLite BEGIN IMMEDIATE took the write lock up front. PostgreSQL
        # locks the row as it is read, so two events of one backup apply one
        # after the other, each from the state the other left.
        lock_row = " FOR UPDATE" if is_postgresql() else ""
        row = run_sql(cls.SELECT_STATE + lock_row, (website_id, backup_id)).fetchone()
        if row is None:
            state = advanced(dict(cls.NEW_STATE, id=new_id(), created_at=received_at), kind, payload, received_at)
            run_sql(cls.INSERT_STATE, (website_id, backup_id, *(state[name] for name in cls.STATE)))
        else:
            if spool_id is not None and cls.has_event(row[0], spool_id):
                return False
            state = advanced(dict(zip(cls.STATE, row)), kind, payload, received_at)
            if state:
                run_sql(cls.UPDATE_STATE, (*(state[name] for name in cls.CHANGING), state["id"]))
        run_sql("INSERT INTO backup_event (backup_pk, kind, payload, received_at) VALUES (?, ?, ?, ?)",
                (row[0] if row else state["id"], kind, record, received_at))
        if state and kind == COMPLETE:
            run_sql("UPDATE website SET sync_requested_at = ? WHERE id = ?", (now_ms(), website_id))
        if state and state["execution_id"]:
            cls(__no_default__=True, website=website_id, backup_id=backup_id, **state).mirror_to_execution()
        return True

    @staticmethod
    def has_event(backup_pk, spool_id):
        return (BackupEvent.select().where((BackupEvent.backup_pk == backup_pk)
                                           & BackupEvent.payload.contains(spool_id)).exists())

    def mirror_to_execution(self):
        """Make the wpsec:// execution this backup belongs to follow it (inside the caller's transaction).

        Each change is a guarded write on the execution still Running, so one
        that a cancel, its worker or an earlier event ended meanwhile stays as
        it ended. An end keeps `worker_id`: the attempt following the execution
        tells from it that the remote backup ended it, not another worker.
        """
        execution_id, mirror = self.execution_id, Execution.transition
        if self.status == "completed":
            mirror(execution_id, RUNNING, dict(stage=SYNCING, progress=REMOTE_BAND[1]),
                   where=Execution.stage != SYNCING,
                   logs=[dict(stage=SYNCING, message=f"Remote backup {self.backup_id} completed; "
                                                     "syncing the site's backup list")])
        elif self.status == "failed":
            mirror(execution_id, RUNNING, dict(status=FAILED, stage=FAILED, error=self.error_message,
                                               ended_at=now_ms(), lease_expires_at=None),
                   logs=[dict(stage=FAILED, level="error",
                              message=f"Remote backup {self.backup_id} failed: {self.error_message}")])
        else:
            progress = remote_progress(self.progress)
            # The common case first: one more progress event in Remote Backup.
            if not mirror(execution_id, RUNNING, dict(progress=progress),
                          where=(Execution.stage == REMOTE_BACKUP) & (Execution.progress < progress)):
                mirror(execution_id, RUNNING,
                       dict(stage=REMOTE_BACKUP, progress=Case(None, [(Execution.progress < progress, progress)],
                                                               Execution.progress)),
                       where=Execution.stage.not_in([REMOTE_BACKUP, SYNCING]),
                       logs=[dict(stage=REMOTE_BACKUP, message=f"Remote backup {self.backup_id} is running")])

    @classmethod
    def link_execution(cls, website_id, backup_id, execution_id):
        """Tie a remote backup to the wpsec:// execution that started it.

        The backup's webhooks may have arrived first: the execution then
        catches up with the state they left.
        """
        with database.atomic():
            backup = cls.get_or_none((cls.website == website_id) & (cls.backup_id == backup_id))
            if backup is None:
                backup = cls.create(website=website_id, backup_id=backup_id, status="pending",
                                    execution=execution_id)
            else:
                backup.execution = execution_id
                backup.save(only=[cls.execution])
            backup.mirror_to_execution()
        return backup

    @classmethod
    def finish_synced_executions(cls, website_id, note):
        """End as Success the executions whose remote backup completed and whose sync has run."""
        now = now_ms()
        with database.atomic():
            waiting = [row.id for row in Execution.select(Execution.id).join(
                cls, on=(cls.execution == Execution.id)).where(
                (cls.website == website_id) & (cls.status == "completed")
                & (Execution.status == RUNNING) & (Execution.stage == SYNCING))]
            return [execution_id for execution_id in waiting if Execution.transition(
                execution_id, RUNNING, dict(status=SUCCESS, stage="Completed", progress=100, ended_at=now,
                                            lease_expires_at=None),
                where=Execution.stage == SYNCING, logs=[dict(stage=SYNCING, message=note)])]

    def to_api(self):
        return {"backupId": self.backup_id, "status": self.status, "progress": self.progress,
                "errorMessage": self.error_message, "createdAt": iso(self.created_at),
                "updatedAt": iso(self.updated_at), "completedAt": iso(self.completed_at)}


class BackupEvent(BaseModel):
    id = BigIntegerField(primary_key=True)
    backup_pk = ForeignKeyField(Backup, column_name="backup_pk", backref="events", on_delete="CASCADE")
    kind = TextField()
    payload = TextField()
    received_at = BigIntegerField(default=now_ms)


ALL_MODELS = (ApiKey, Job, Execution, ExecutionLog, Setting, Website, Backup, BackupEvent)

