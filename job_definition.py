"""What a job is made of, checked the same way wherever one is defined or changed.

`backhook jobs add` and `jobs set`, `POST` and `PATCH /api/jobs` (and the
dashboard's job form) all go through here. FIELDS is the table: each field's
Job column, its name in the API and on the command line, and its check, which
takes the value as a client gave it (a JSON value, or what click parsed) and
returns what the column stores, or raises ValueError saying what is wrong. A
new field is one more row. The rules that tie fields together (excludes only
for files://, a schedule read in the job's timezone) are in `cross_check`.

`define` checks a whole new job and `revise` the changes to one; `create`,
`change` and `delete` write them, each in one transaction.
"""
import json
import logging
from dataclasses import dataclass
from typing import Callable

from peewee import IntegrityError

import destinations
import schedules
from compression import COMPRESSORS
from database import database, opened
from encryption import recipient_problem, shown as shown_recipient
from models import CONTROL_CHARACTERS, Execution, Job, JobCreationKey, Website, job_name_problem, now_ms
from sources import SourceError, parse_source
from statuses import ExecutionStatus, ExecutionType

log = logging.getLogger("backhook.jobs")

KEEP_MAX = 100_000
TIMEOUT_MAX_SECONDS = 30 * 86_400  # and within the 32-bit integer column of both databases
COMMAND_LINE_ONLY = ("command: jobs run a shell command, so they are defined and changed only on the server's "
                     "command line (backhook jobs add / jobs set), never over HTTP")


class Invalid(ValueError):
    """A field that cannot be stored, with the HTTP status that says why (400, 403, 409)."""

    def __init__(self, field, message, status=400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def for_api(self):
        return f"'{self.field.api}': {self.message}" if self.field else self.message

    def for_command_line(self):
        return f"{self.field.option}: {self.message}" if self.field else self.message


# --- the checks: value as given -> value as stored, or ValueError ------------------------

def text(value):
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def flag(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def whole_number(value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be a whole number from {low:,} to {high:,}")
    return value


def texts(value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of strings")
    return list(value)


def check_name(value):
    problem = job_name_problem(text(value))
    if problem:
        raise ValueError(problem)
    return value


def check_source(value):
    parse_source(text(value))  # SourceError (a ValueError) says what is wrong, never quoting a password
    return value


def check_destinations(value):
    """Each destination checked and given once, as stored (a local directory without a trailing slash).

    A relative directory is refused here: the command line makes it absolute
    first (destinations.normalized), against the directory it runs in.
    """
    stored = []
    for given in texts(value):
        destinations.check_destination(given)
        given = destinations.normalized(given)
        if given in stored:
            raise ValueError(f"destination {given} is given twice")
        stored.append(given)
    if not stored:
        raise ValueError("a job needs at least one destination")
    return stored


def check_compression(value):
    if value not in COMPRESSORS:
        raise ValueError(f"must be one of {', '.join(COMPRESSORS)}")
    return value


def check_keep(value):
    return None if value is None else whole_number(value, 1, KEEP_MAX)  # None keeps every backup


def check_rule(value):
    """A GFS rule's count (--keep-daily/weekly/monthly); None or 0: no such rule."""
    return None if value in (None, 0) else whole_number(value, 0, KEEP_MAX) or None


def check_schedule(value):
    """A schedule's form; whether it is ever due is checked in its timezone by `cross_check`."""
    return None if value is None else text(value)


def check_timezone(value):
    schedules.zone(text(value))  # ScheduleError (a ValueError) gives zoneinfo's reason
    return value


def check_timeout(value):
    return whole_number(value, 1, TIMEOUT_MAX_SECONDS)


def check_recipients(value):
    """age public keys as a JSON list, None for none; a private key is refused without being echoed."""
    keys = []
    for number, recipient in enumerate(texts(value), start=1):
        problem = recipient_problem(recipient)
        if problem:
            raise ValueError(f"recipient {number} ({shown_recipient(recipient)}): {problem}")
        keys.append(" ".join(recipient.split()))
    return json.dumps(list(dict.fromkeys(keys))) if keys else None


def check_excludes(value):
    patterns = texts(value)
    if any(not pattern or CONTROL_CHARACTERS.search(pattern) for pattern in patterns):
        raise ValueError("a pattern cannot be empty or hold control characters")
    return json.dumps(patterns)


def check_restore_command(value):
    if value is not None and not text(value).strip():
        raise ValueError("cannot be empty")
    return value


@dataclass(frozen=True)
class Field:
    column: str             # the Job column it sets; "destinations" sets the JobDestination rows
    api: str                # its name in the API's job object
    option: str             # its name on the command line
    check: Callable         # the value as given -> the value as stored; ValueError says what is wrong
    default: object = None  # what a new job stores without it (already checked)
    required: bool = False  # a new job needs it
    over_http: bool = True  # False: set on the command line only
    changeable: bool = True


FIELDS = (
    Field("name", "name", "NAME", check_name, required=True, changeable=False),
    Field("source", "source", "--source", check_source, required=True),
    Field("destinations", "destinations", "--destination", check_destinations, required=True),
    Field("compression", "compression", "--compression", check_compression, default="zstd"),
    Field("keep", "keep", "--keep", check_keep),
    Field("keep_daily", "keepDaily", "--keep-daily", check_rule),
    Field("keep_weekly", "keepWeekly", "--keep-weekly", check_rule),
    Field("keep_monthly", "keepMonthly", "--keep-monthly", check_rule),
    Field("schedule", "schedule", "--schedule", check_schedule),
    Field("timezone", "timezone", "--timezone", check_timezone, default="UTC"),
    Field("timeout_seconds", "timeoutSeconds", "--timeout-hours", check_timeout, default=6 * 3600),
    Field("allow_partial_destinations", "allowPartialDestinations", "--allow-partial-destinations", flag,
          default=False),
    Field("recipients", "encryptTo", "--encrypt-to", check_recipients),
    Field("excludes", "excludes", "--exclude", check_excludes, default="[]"),
    Field("one_file_system", "oneFileSystem", "--one-file-system", flag, default=False),
    Field("enabled", "enabled", "enable/disable", flag, default=True),
    Field("restore_command", "restoreCommand", "--restore-command", check_restore_command, over_http=False),
)
BY_COLUMN = {field.column: field for field in FIELDS}
BY_API_NAME = {field.api: field for field in FIELDS}


def api_values(body):
    """A request body's fields by column; Invalid for a name the API does not take."""
    for name in body:
        field = BY_API_NAME.get(name)
        if field is None:
            hint = " (send 'destinations', a list)" if name == "destination" else ""
            raise Invalid(None, f"unknown field {name!r}{hint}; a job takes "
                                f"{', '.join(f.api for f in FIELDS if f.over_http)}")
        if not field.over_http:
            raise Invalid(field, "can be set only on the server's command line "
                                 f"(backhook jobs add {field.option})", 403)
    return {BY_API_NAME[name].column: value for name, value in body.items()}


def checked(column, value):
    field = BY_COLUMN[column]
    try:
        return field.check(value)
    except ValueError as exc:  # SourceError included
        raise Invalid(field, str(exc)) from None


def define(values, on_command_line=False):
    """Every column of a new job (with "destinations"), checked; Invalid names the first bad field."""
    for field in FIELDS:
        if field.required and values.get(field.column) is None:
            raise Invalid(field, "is required")
    stored = {field.column: field.default for field in FIELDS}
    stored.update({column: checked(column, value) for column, value in values.items()})
    source = parse_source(stored["source"])
    if source.kind == "command" and not on_command_line:
        raise Invalid(BY_COLUMN["source"], COMMAND_LINE_ONLY, 403)
    check_website(source)
    cross_check(stored, source.kind)
    stored["next_run_at"] = next_run_at(stored)
    return stored


def next_run_at(stored):
    """The first due run of the job's schedule from now, None without one."""
    if stored["schedule"] is None:
        return None
    return schedules.next_run(stored["schedule"], stored["timezone"], now_ms())


def current(job):
    """The job's columns as `define` returns them."""
    return {**{field.column: getattr(job, field.column) for field in FIELDS if field.column != "destinations"},
            "destinations": destinations.destination_texts(job)}


def revise(job, values, on_command_line=False):
    """The columns `values` change on `job`, checked against the job they make: {column: new value}.

    A job's name is the folder of its artifacts on every destination, and its
    old backups restore into a source of its kind: neither can change.
    """
    old_kind = kind_of(job.source)
    if old_kind == "command" and not on_command_line:
        raise Invalid(BY_COLUMN["source"], COMMAND_LINE_ONLY, 403)
    before = current(job)
    merged = dict(before)
    for column, value in values.items():
        field = BY_COLUMN[column]
        if not field.changeable and value != merged[column]:
            raise Invalid(field, "cannot be changed: it is the folder of the job's backups on every destination; "
                                 "create a new job instead")
        merged[column] = checked(column, value)
    if "source" in values:
        source = parse_source(merged["source"])
        if source.kind == "command" and not on_command_line:
            raise Invalid(BY_COLUMN["source"], COMMAND_LINE_ONLY, 403)
        if source.kind != old_kind:
            raise Invalid(BY_COLUMN["source"], f"must stay a {old_kind} source: the job's backups restore into "
                                               "one; create a new job for another kind")
        check_website(source)
    cross_check(merged, old_kind)
    changes = {column: merged[column] for column in values if merged[column] != before[column]}
    if "schedule" in changes or "timezone" in changes:
        changes["next_run_at"] = next_run_at(merged)
    return changes


def kind_of(source):
    try:
        return parse_source(source).kind
    except SourceError:  # a row stored before sources were checked: what it starts with
        return "command" if source.startswith("command:") else source.split(":", 1)[0]


def cross_check(stored, kind):
    """The rules between fields, on the job as it would be stored."""
    if kind != "files":
        for column in ("excludes", "one_file_system"):
            if stored[column] != BY_COLUMN[column].default:
                raise Invalid(BY_COLUMN[column], "applies only to files:// sources")
    if stored["restore_command"] is not None and kind != "command":
        raise Invalid(BY_COLUMN["restore_command"], "applies only to command: sources")
    if stored["schedule"] is not None:
        try:
            stored["schedule"] = schedules.check(stored["schedule"], stored["timezone"])
        except schedules.ScheduleError as exc:
            raise Invalid(BY_COLUMN["schedule"], str(exc)) from None


def check_website(source):
    """A wpsec:// source names a registered website (checked when the source is given, not on every change)."""
    if source.kind == "wpsec" and Website.by_domain(source.domain) is None:
        raise Invalid(BY_COLUMN["source"], f"no website {source.domain!r}: register it with `backhook websites "
                                           "add` first")


# --- writing ---------------------------------------------------------------------------

def create(stored, idempotency=None):
    """The new Job of `define`'s columns, with its destinations, in one transaction.

    `idempotency` = (api key id, Idempotency-Key, request digest) records the
    key in the same transaction. A duplicate name is Invalid with 409.
    """
    columns = {column: value for column, value in stored.items() if column != "destinations"}
    places = stored["destinations"]
    try:
        with database.atomic():
            job = Job.create(destination=places[0], **columns)
            destinations.set_destinations(job, places)
            if idempotency is not None:
                JobCreationKey.remember(*idempotency, job.id)
    except IntegrityError:
        if Job.get_or_none(Job.name == stored["name"]) is None:
            raise  # not the name: the caller's idempotency key, which it looks up again
        raise Invalid(BY_COLUMN["name"], f"a job named {stored['name']!r} already exists", 409) from None
    return job


def change(job, changes):
    """Write `revise`'s changes in one transaction; False when the job is gone (deleted meanwhile)."""
    columns = {column: value for column, value in changes.items() if column != "destinations"}
    with database.atomic():
        if opened().for_update(Job.select(Job.id).where(Job.id == job.id)).first() is None:
            return False
        if columns:
            Job.update(**columns).where(Job.id == job.id).execute()
        if "destinations" in changes:
            destinations.set_destinations(job, changes["destinations"])
    for column, value in columns.items():
        setattr(job, column, value)
    return True


def delete(job_id, keep_artifacts=False):
    """Delete a job and its history; never a stored backup. Returns the deleted Job, None if there was none.

    Invalid (409) while one of its executions is Pending or Running, and while
    it has stored backups unless `keep_artifacts`: they then stay where they
    are, each with its manifest (which names the stock commands that restore
    it), and only backhook's record of them goes. The job's row is locked
    first, so no run can be queued between the check and the delete.
    """
    with database.atomic():
        job = opened().for_update(Job.select().where(Job.id == job_id)).first()
        if job is None:
            return None
        ours = Execution.select().where(Execution.job == job.id)
        active = ours.where(Execution.status.in_([ExecutionStatus.PENDING, ExecutionStatus.RUNNING])).count()
        if active:
            raise Invalid(None, f"job {job.name} has {active} Pending or Running execution(s): cancel them or "
                                "let them finish first", 409)
        stored = list(ours.where((Execution.type == ExecutionType.BACKUP)
                                 & (Execution.status == ExecutionStatus.SUCCESS) & Execution.path.is_null(False))
                      .select(Execution.id, Execution.path))
        if stored and not keep_artifacts:
            raise Invalid(None, f"job {job.name} has {len(stored)} stored backup(s), which would outlive it with no "
                                "record in backhook: disable the job instead, or delete it keeping its artifacts "
                                "(keepArtifacts=true over HTTP, --keep-artifacts on the command line), which leaves "
                                "each with its manifest where it is", 409)
        job.delete_instance(recursive=True)
    for backup in stored:
        log.info("job %s (%s) deleted; its backup %s stays at %s", job.name, job.id, backup.id, backup.path)
    return job

