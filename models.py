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
import os
import re
import secrets
import time
import threading

from peewee import (
    BigIntegerField,
    BooleanField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    JOIN,
    Model,
    OperationalError,
    TextField,
    Value,
    fn,
)

from database import database, opened, run_sql
from statuses import FINISHED, ExecutionStatus, ExecutionType, Stage

log = logging.getLogger("backhook.models")


# --- time and identifiers -------------------------------------------------

def now_ms():
    return int(time.time() * 1000)


_last_id = [0, 0]  # the millisecond and the random part of this process's newest id
_id_lock = threading.Lock()


def new_id():
    """An opaque id: creation time in hex (so ids sort by age) and 80 random bits.

    Within one millisecond the random part of each later id of this process is
    the one before plus one (ULID's monotonic rule), so ids made in one
    transaction sort in the order they were made: a notification's /start
    before its success (outbox.py orders by id).
    """
    with _id_lock:
        ms = now_ms()
        random_part = _last_id[1] + 1 if ms == _last_id[0] else secrets.randbits(80)
        _last_id[:] = [ms, random_part]
    return f"{ms:012x}{random_part % (1 << 80):020x}"


def iso(ms):
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds and Z."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# --- models ------------------------------------------------------------------

class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


PERMISSIONS = ("jobs:read", "jobs:execute", "jobs:write", "history:read", "websites:read", "storage:restore",
               "storage:download", "metrics:read", "keys:manage", "settings:write")
KEY_PATTERN = re.compile(r"dbm_[A-Za-z0-9_-]{32,}")
KEY_TOUCH_INTERVAL_MS = 60_000
_last_touched = {}  # key id -> ms; spares the database a write per request


def hash_key(key):
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret():
    return "dbm_" + secrets.token_urlsafe(32)


def display_prefix(secret):
    return secret[:12]


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
        secret = new_secret()
        expires_at = None
        if expires_in_days is not None:
            expires_at = now_ms() + int(expires_in_days * 86_400_000)
        with database.atomic():
            row = cls.create(
                name=name,
                prefix=display_prefix(secret),
                key_hash=hash_key(secret),
                permissions=" ".join(sorted(set(permissions))),
                expires_at=expires_at,
            )
        return row, secret

    @classmethod
    def rotate(cls, key_id):
        """Give a key a new secret, keeping everything else; return (row, secret), or (None, None) for no such key.

        Lookup is by hash, so the old secret stops matching the moment this commits.
        """
        secret = new_secret()
        with database.atomic():
            changed = cls.update(prefix=display_prefix(secret), key_hash=hash_key(secret)).where(
                cls.id == key_id).execute()
        if not changed:
            return None, None
        return cls.get_by_id(key_id), secret

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

    def is_usable(self, now=None):
        return self.enabled and (self.expires_at is None or self.expires_at > (now_ms() if now is None else now))

    @classmethod
    def set_enabled(cls, key_id, enabled):
        """Enable or disable a key; True if there was one. A disabled key's dashboard sessions end with it."""
        with database.atomic():
            return cls.update(enabled=enabled).where(cls.id == key_id).execute() == 1

    @classmethod
    def remove(cls, key_id):
        """Delete a key and its dashboard sessions; True if there was one."""
        with database.atomic():
            DashboardSession.delete().where(DashboardSession.api_key == key_id).execute()
            return cls.delete().where(cls.id == key_id).execute() == 1

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


SESSION_MS = 12 * 3600 * 1000  # a sign-in lasts half a day, however busy
SESSION_TOUCH_INTERVAL_MS = 60_000


class DashboardSession(BaseModel):
    """A dashboard sign-in: the cookie holds the secret, this row its SHA-256 and the key it was opened with."""
    id = TextField(primary_key=True)
    api_key = ForeignKeyField(ApiKey, on_delete="CASCADE")
    key_hash = TextField()
    created_at = BigIntegerField(default=now_ms)
    last_seen_at = BigIntegerField(default=now_ms)
    expires_at = BigIntegerField()

    @classmethod
    def open(cls, key):
        """Start a session for the usable `key`; return the cookie's secret, which is never stored."""
        secret = secrets.token_urlsafe(32)
        now = now_ms()
        with database.atomic():
            cls.create(id=hash_key(secret), api_key=key.id, key_hash=key.key_hash, created_at=now,
                       last_seen_at=now, expires_at=now + SESSION_MS)
        return secret

    @classmethod
    def find(cls, secret, now=None):
        """The live session of the cookie `secret` with its key as `.api_key`, or None.

        One query joins the key row: the session holds only while its key is
        enabled, unexpired and still has the secret it signed in with (a
        rotation changes key_hash), so each of those ends it at once.
        """
        now = now_ms() if now is None else now
        session = (cls.select(cls, ApiKey).join(ApiKey)
                   .where((cls.id == hash_key(secret)) & (cls.expires_at > now) & (ApiKey.key_hash == cls.key_hash)
                          & ApiKey.enabled & (ApiKey.expires_at.is_null() | (ApiKey.expires_at > now)))
                   .first())
        if session is not None and now - session.last_seen_at >= SESSION_TOUCH_INTERVAL_MS:
            try:
                with database.atomic():
                    cls.update(last_seen_at=now).where(cls.id == session.id).execute()
            except OperationalError as exc:  # a busy database must not fail the page
                log.warning("could not record session use: %s", exc)
        return session

    @classmethod
    def close(cls, secret):
        with database.atomic():
            cls.delete().where(cls.id == hash_key(secret)).execute()

    @classmethod
    def purge_expired(cls, now=None):
        """Forget the expired sessions (a deleted key takes its own along); the worker's chores call it."""
        expired = cls.expires_at <= (now_ms() if now is None else now)
        if not cls.select().where(expired).exists():
            return 0
        with database.atomic():
            return cls.delete().where(expired).execute()


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
    restore_command = TextField(null=True)  # command: only: reads a backup on stdin; set on the command line only
    allow_partial_destinations = BooleanField(default=False)  # a backup succeeds with the copies that verified
    recipients = TextField(null=True)  # age public keys, a JSON list (encryption.py); None: not encrypted
    schedule = TextField(null=True)  # a cron expression (schedules.py); None: runs only when triggered
    timezone = TextField(default="UTC")  # IANA name: where the schedule and retention's days are read
    next_run_at = BigIntegerField(null=True)  # when the schedule is next due; None without a schedule
    keep_daily = IntegerField(null=True)  # GFS retention (retention.py): None keeps nothing by that rule
    keep_weekly = IntegerField(null=True)
    keep_monthly = IntegerField(null=True)

    def exclude_patterns(self):
        return json.loads(self.excludes)

    def delete_instance(self, *args, **kwargs):
        # Peewee's recursive delete sets a nullable foreign key to NULL, which
        # would make this job's notifications every job's: they go with it.
        Notification.delete().where(Notification.job == self.id).execute()
        return super().delete_instance(*args, **kwargs)

    def recipient_keys(self):
        """The age recipients the job's backups are encrypted to; [] when they are not."""
        return json.loads(self.recipients) if self.recipients else []

    @classmethod
    def listing(cls):
        """Every job by name, each with its newest backup's last_id, last_status, last_ended_at and last_size.

        One query: each job's newest execution is found through the
        (job_id, created_at) index, not with one more query per job. A
        Restore is not the job's last run: the job is as fresh as its backups.
        """
        newer = Execution.alias()
        newest_id = (newer.select(newer.id).where((newer.job == cls.id) & (newer.type == ExecutionType.BACKUP))
                     .order_by(newer.created_at.desc()).limit(1))
        return (cls.select(cls, Execution.id.alias("last_id"), Execution.status.alias("last_status"),
                           Execution.ended_at.alias("last_ended_at"), Execution.size.alias("last_size"))
                .join(Execution, JOIN.LEFT_OUTER, on=(Execution.id == newest_id))
                .order_by(cls.name)
                .objects())




class Execution(BaseModel):
    id = TextField(primary_key=True, default=new_id)
    job = ForeignKeyField(Job, backref="executions", on_delete="CASCADE")
    type = TextField(default=ExecutionType.BACKUP)
    status = TextField(default=ExecutionStatus.PENDING)
    progress = IntegerField(default=0)
    stage = TextField(null=True, default=Stage.QUEUED)
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
    # a Restore: the Backup it restores, into what (a SRC, "scratch", or None for the job's source: never shown)
    restores = TextField(null=True)
    restore_target = TextField(null=True)
    restore_replace = BooleanField(default=False)
    # a Backup: what its restore drills found
    proven_restorable_at = BigIntegerField(null=True)
    last_drill_status = TextField(null=True)
    last_drill_id = TextField(null=True)

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

        A write that ends a run (Failed, Cancelled, or Completed) also queues
        its notifications (notifications.py) in that same transaction, so no
        end is ever reported twice or lost, whichever of its many writers ends it.
        """
        condition = (cls.id == execution_id) & (cls.status == expected)
        if owner is not None:
            condition &= (cls.worker_id == owner[0]) & (cls.attempts == owner[1])
        if where is not None:
            condition &= where
        changed = cls.update(**fields).where(condition).execute() == 1
        if changed and fields.get("status") in FINISHED and expected not in FINISHED:
            RunTally.count_end(execution_id, fields["status"])
        if changed and logs:
            ExecutionLog.insert_many([{"execution": execution_id, **line} for line in logs]).execute()
        if changed and ends_run(fields):
            import notifications  # here: it builds the API's execution shape, whose module imports this one

            notifications.execution_ended(execution_id, fields)
        return changed

    @classmethod
    def enqueue(cls, job):
        with database.atomic():
            return cls.create(job=job.id)

    @classmethod
    def enqueue_once(cls, job, key, now=None):
        """Queue an execution of `job` unless `key` queued one in the last 24 hours; return (execution, queued).

        The key's row is written in the execution's transaction, and its
        unique (job, key) index lets only one of two concurrent calls commit:
        the other rolls back its execution and answers the winner's.
        """
        now = now_ms() if now is None else now
        existing = IdempotencyKey.fresh(job.id, key, now)
        if existing is not None:
            return existing, False
        try:
            with database.atomic():
                IdempotencyKey.delete().where((IdempotencyKey.job == job.id) & (IdempotencyKey.key == key)
                                              & IdempotencyKey.expired(now)).execute()
                execution = cls.create(job=job.id)
                IdempotencyKey.create(job=job.id, key=key, execution=execution.id, created_at=now)
            return execution, True
        except IntegrityError:
            existing = IdempotencyKey.fresh(job.id, key, now)
            if existing is None:  # the winner's execution went with its job in the meantime
                raise
            return existing, False

    @classmethod
    def with_job_name(cls, execution_id):
        return (cls.select(cls, Job.name).join(Job)
                .where(cls.id == execution_id).objects().first())

    @classmethod
    def history(cls, job_id=None, status=None, execution_type=None):
        """Executions with their job's name (as with_job_name), of one job, status or type when given.

        Unordered: `newest_first` orders and pages it along the index of
        whichever filters are given (schema.sql, version 4).
        """
        query = cls.select(cls, Job.name).join(Job)
        for column, value in ((cls.job, job_id), (cls.status, status), (cls.type, execution_type)):
            if value is not None:
                query = query.where(column == value)
        return query.objects()

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
            if execution.status == ExecutionStatus.PENDING:
                cls.transition(execution_id, ExecutionStatus.PENDING,
                               dict(status=ExecutionStatus.CANCELLED, stage=Stage.CANCELLED, ended_at=now_ms()))
            else:
                cls.update(cancel_requested=True).where(cls.id == execution_id).execute()
        return cls.with_job_name(execution_id), True

    def duration(self):
        if self.ended_at is None:
            return None
        return self.ended_at - (self.started_at or self.ended_at)


def ends_run(fields):
    """Whether a transition's `fields` end a run: a plain dict test, cheap on the webhook's hot path."""
    return fields.get("status") in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED) or \
        fields.get("stage") == Stage.COMPLETED


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

    def remove(self):
        """Delete the website with its backups and their events, and take its backups off the tally."""
        with database.atomic():
            for status, count in (Backup.select(Backup.status, fn.COUNT(Backup.id)).where(Backup.website == self.id)
                                  .group_by(Backup.status).tuples()):
                BackupTally.move(status, None, count)
            self.delete_instance(recursive=True)

    @classmethod
    def listing(cls, after=None, limit=50):
        """Up to `limit` websites by domain, after the domain `after`, each with its newest backup's
        last_backup_id, last_status, last_progress and last_updated_at (or None).

        One query, like Job.listing: each site's newest backup is found along
        the (website_id, created_at, id) index, and the page along the domain's.
        """
        newer = Backup.alias()
        newest_id = (newer.select(newer.id).where(newer.website == cls.id)
                     .order_by(newer.created_at.desc(), newer.id.desc()).limit(1))
        query = (cls.select(cls, Backup.backup_id.alias("last_backup_id"), Backup.status.alias("last_status"),
                            Backup.progress.alias("last_progress"), Backup.updated_at.alias("last_updated_at"))
                 .join(Backup, JOIN.LEFT_OUTER, on=(Backup.id == newest_id)))
        if after is not None:
            query = query.where(cls.domain > after)
        return query.order_by(cls.domain).limit(limit).objects()


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


class JobDestination(BaseModel):
    """One of a job's destinations (destinations.py), in order: position 0 is also `job.destination`."""
    id = BigIntegerField(primary_key=True)
    job = ForeignKeyField(Job, backref="destination_rows", on_delete="CASCADE")
    position = IntegerField()
    destination = TextField()

    class Meta:
        indexes = ((("job", "position"), True),)


class ArtifactCopy(BaseModel):
    """One verified copy of a backup's artifact: on which destination, and where on it."""
    id = BigIntegerField(primary_key=True)
    execution = ForeignKeyField(Execution, backref="copies", on_delete="CASCADE")
    position = IntegerField()
    destination = TextField()
    location = TextField()

    class Meta:
        indexes = ((("execution", "position"), True),)


IDEMPOTENCY_MS = 24 * 3600 * 1000


class MatchesForADay:
    """An Idempotency-Key row's lifetime: it matches for 24 hours after `created_at`, then the worker purges it."""

    @classmethod
    def expired(cls, now):
        return cls.created_at <= now - IDEMPOTENCY_MS

    @classmethod
    def purge_expired(cls, now=None):
        """Forget the keys that no longer match. Returns how many went."""
        expired = cls.expired(now_ms() if now is None else now)
        if not cls.select().where(expired).exists():  # a read: the usual case takes no write lock
            return 0
        with database.atomic():
            return cls.delete().where(expired).execute()


class IdempotencyKey(MatchesForADay, BaseModel):
    """An Idempotency-Key of POST /api/jobs/<id>/run and the execution its first call queued."""
    id = BigIntegerField(primary_key=True)
    job = ForeignKeyField(Job, on_delete="CASCADE")
    key = TextField()
    execution = ForeignKeyField(Execution, on_delete="CASCADE")
    created_at = BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("job", "key"), True),)

    @classmethod
    def fresh(cls, job_id, key, now):
        """The execution `key` queued for the job within 24 hours of `now`, or None."""
        return (Execution.select(Execution).join(cls, on=(cls.execution == Execution.id))
                .where((cls.job == job_id) & (cls.key == key) & ~cls.expired(now)).first())


class JobCreationKey(MatchesForADay, BaseModel):
    """An Idempotency-Key of POST /api/jobs, per API key: the job its first call created, and that call's body."""
    id = BigIntegerField(primary_key=True)
    api_key = ForeignKeyField(ApiKey, on_delete="CASCADE")
    key = TextField()
    request_sha256 = TextField()
    job = ForeignKeyField(Job, on_delete="CASCADE")
    created_at = BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("api_key", "key"), True),)

    @classmethod
    def remember(cls, api_key_id, key, request_sha256, job_id, now=None):
        """Record the key in the creating transaction; the unique (api_key, key) index lets one of two races commit."""
        now = now_ms() if now is None else now
        cls.delete().where((cls.api_key == api_key_id) & (cls.key == key) & cls.expired(now)).execute()
        cls.create(api_key=api_key_id, key=key, request_sha256=request_sha256, job=job_id, created_at=now)

    @classmethod
    def fresh(cls, api_key_id, key, now=None):
        """The row `key` left for this API key within 24 hours, or None."""
        now = now_ms() if now is None else now
        return cls.get_or_none((cls.api_key == api_key_id) & (cls.key == key) & ~cls.expired(now))


def purge_idempotency_keys(now=None):
    """Forget every Idempotency-Key that no longer matches; the worker's chores call it. Returns how many went."""
    return IdempotencyKey.purge_expired(now) + JobCreationKey.purge_expired(now)


# --- worker health (heartbeats.py) ------------------------------------------------------

class WorkerHeartbeat(BaseModel):
    """A worker's last sign of life, stamped by its claim loop."""
    id = TextField(primary_key=True)  # the worker's id, as in execution.worker_id
    host = TextField()
    pid = IntegerField()
    started_at = BigIntegerField(default=now_ms)
    last_seen = BigIntegerField(default=now_ms)

    @classmethod
    def beat(cls, worker_id, host, pid, started_at, now=None):
        """Record that the worker is alive now: one UPSERT."""
        now = now_ms() if now is None else now
        with database.atomic():
            cls.insert(id=worker_id, host=host, pid=pid, started_at=started_at, last_seen=now).on_conflict(
                conflict_target=[cls.id], update={cls.last_seen: now}).execute()

    @classmethod
    def seen_since(cls, since):
        """How many workers beat at or after `since` (ms)."""
        return cls.select().where(cls.last_seen >= since).count()

    @classmethod
    def newest(cls):
        """When any worker last beat (ms), or None when none has since the last purge."""
        return cls.select(fn.MAX(cls.last_seen)).scalar()

    @classmethod
    def forget(cls, worker_id):
        with database.atomic():
            cls.delete().where(cls.id == worker_id).execute()

    @classmethod
    def purge_older_than(cls, cutoff):
        """Drop the rows of workers unseen since `cutoff` (ms); the worker's chores call it. Returns how many went."""
        stale = cls.last_seen < cutoff
        if not cls.select().where(stale).exists():  # a read: the usual case takes no write lock
            return 0
        with database.atomic():
            return cls.delete().where(stale).execute()


# --- counters for /metrics (metrics.py), each kept in the transaction that changes what it counts ---

class RunTally(BaseModel):
    """How many of a job's executions of one type ended in one status."""
    id = BigIntegerField(primary_key=True)
    job = ForeignKeyField(Job, on_delete="CASCADE")
    type = TextField()
    status = TextField()
    count = BigIntegerField()

    class Meta:
        indexes = ((("job", "type", "status"), True),)

    @classmethod
    def count_end(cls, execution_id, status):
        """One more execution of the execution's job and type ended in `status`, in the caller's transaction."""
        ended = Execution.select(Execution.job, Execution.type, Value(status), Value(1)).where(
            Execution.id == execution_id)
        cls.insert_from(ended, [cls.job, cls.type, cls.status, cls.count]).on_conflict(
            conflict_target=[cls.job, cls.type, cls.status], update={cls.count: cls.count + 1}).execute()


class BackupTally(BaseModel):
    """How many of the websites' WPSec backups have one status."""
    id = BigIntegerField(primary_key=True)
    status = TextField(unique=True)
    count = BigIntegerField()

    MOVE = ("INSERT INTO backup_tally (status, count) VALUES (?, ?) "
            "ON CONFLICT (status) DO UPDATE SET count = backup_tally.count + excluded.count")

    @classmethod
    def move(cls, old, new, count=1):
        """`count` backups left status `old` (None: they are new) for `new` (None: they are gone).

        Plain SQL, in the caller's transaction: it runs inside a webhook's
        (remote_backups.apply), whenever the event changes a backup's status.
        """
        if old == new:
            return
        for status, change in ((old, -count), (new, count)):
            if status is not None:
                run_sql(cls.MOVE, (status, change))


WEBHOOK_TALLY_SHARDS = 16


class WebhookTally(BaseModel):
    """How many webhook events of one kind had one outcome (statuses.WebhookOutcome), in one shard."""
    id = BigIntegerField(primary_key=True)
    kind = TextField()
    outcome = TextField()
    shard = IntegerField()
    count = BigIntegerField()

    class Meta:
        indexes = ((("kind", "outcome", "shard"), True),)

    ADD = ("INSERT INTO webhook_tally (kind, outcome, shard, count) VALUES (?, ?, ?, 1) "
           "ON CONFLICT (kind, outcome, shard) DO UPDATE SET count = webhook_tally.count + 1")

    @classmethod
    def add(cls, kind, outcome):
        """Count one event, in the caller's transaction: plain SQL, since every webhook runs it.

        Each process adds to the shard of its pid, so on PostgreSQL two
        processes' webhooks never wait on one row; a scrape sums the shards.
        """
        run_sql(cls.ADD, (kind, outcome, os.getpid() % WEBHOOK_TALLY_SHARDS))


class Notification(BaseModel):
    """Where to tell about a job's runs (notifications.py): a webhook, a ping URL or an apprise URL."""
    id = TextField(primary_key=True, default=new_id)
    kind = TextField()
    url = TextField()
    secret = TextField(null=True)  # a webhook's whsec_… signing secret: shown once, never listed or logged
    job = ForeignKeyField(Job, null=True, backref="notifications", on_delete="CASCADE")  # None: every job
    on_event = TextField(default="failure")
    overdue_seconds = BigIntegerField(null=True)  # the dead man's switch, when set
    created_at = BigIntegerField(default=now_ms)


class NotificationOutbox(BaseModel):
    """One message for one notification, until it is sent or has no attempt left (outbox.py)."""
    id = TextField(primary_key=True, default=new_id)  # also its webhook-id
    notification = ForeignKeyField(Notification, backref="messages", on_delete="CASCADE")
    event = TextField()
    job_id = TextField(null=True)
    execution_id = TextField(null=True)
    dedupe_key = TextField(null=True, unique=True)
    payload = TextField()
    status = TextField(default="pending")
    attempts = IntegerField(default=0)
    next_attempt_at = BigIntegerField(default=now_ms)
    worker_id = TextField(null=True)
    lease_expires_at = BigIntegerField(null=True)
    last_error = TextField(null=True)
    created_at = BigIntegerField(default=now_ms)
    sent_at = BigIntegerField(null=True)

    class Meta:
        table_name = "notification_outbox"


ALL_MODELS = (ApiKey, Job, Execution, ExecutionLog, Setting, Website, Backup, BackupEvent, IdempotencyKey,
              JobDestination, ArtifactCopy, JobCreationKey, WorkerHeartbeat, RunTally, BackupTally,
              WebhookTally, Notification, NotificationOutbox, DashboardSession)

