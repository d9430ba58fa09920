"""Schedules: a job's cron expression in its timezone, and queueing each due run exactly once.

A scheduled job has `next_run_at`, the UTC instant of its next due run.
Every worker reads the earliest one at each tick and sleeps no longer than
until it (worker.py). A due run is claimed by one conditional UPDATE that
moves `next_run_at` on from the value the worker read, inside the
transaction that queues the run: of several workers, on one machine or many,
only one UPDATE finds the old value, and only its transaction queues. On
SQLite the transaction holds the one write lock; on PostgreSQL the due rows
are read FOR UPDATE SKIP LOCKED, so a worker passes over the jobs another is
queueing at that moment.

The next due time is always the first one after now, not after the due
time just served: a worker that comes back after downtime queues one run
for all it missed and goes on from the present, never a burst.

A run due while the job has a Pending or Running execution (a backup or a
restore) is skipped: the worker logs it, and so does that execution's own
log, where whoever looks at why the run did not happen finds it.

Daylight saving time follows croniter's rule (croniter 7, README
"Schedules"): a time that does not exist on the day the clocks go forward
runs at the first minute after the gap (02:30 at 03:00) when the expression
names its hour, and is passed over when its hour is `*`; a time that occurs
twice on the day the clocks go back runs at both.
"""
import datetime
import logging
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from peewee import fn

from database import database, opened
from models import Execution, ExecutionLog, Job, iso, now_ms
from statuses import ExecutionStatus, Stage

log = logging.getLogger("backhook.schedules")

# The aliases croniter reads; anything else must be the classic five fields.
ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
FIELDS = "minute hour day-of-month month day-of-week"
ACTIVE = (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)
DUE_BATCH = 200  # due jobs queued per transaction; more wait for the next tick, which follows at once
LATE_MS = 60_000  # a run queued this late was missed while no worker ran: its log says it was caught up


class ScheduleError(ValueError):
    """A schedule or timezone that cannot be used; the message gives the library's reason."""


def zone(name):
    """The IANA timezone `name`, or ScheduleError with zoneinfo's reason."""
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError as exc:
        raise ScheduleError(f"unknown timezone {name!r}: {exc.args[0]}") from None
    except (ValueError, OSError) as exc:  # a path, an empty name, a file that is no zone
        raise ScheduleError(f"unknown timezone {name!r}: {exc}") from None


def check(expression, zone_name):
    """The schedule as stored (its fields single-spaced); ScheduleError saying why it cannot be used.

    The one check of a schedule, for the command line and the API alike:
    five fields or an alias, which croniter accepts, in a timezone zoneinfo
    knows, and due at least once (`0 0 30 2 *` never is).
    """
    fields = expression.split()
    normalized = " ".join(fields)
    if not fields:
        raise ScheduleError("a schedule cannot be empty: give five cron fields "
                            f"({FIELDS}) or an alias such as @daily")
    if fields[0].startswith("@"):
        if len(fields) > 1 or fields[0].lower() not in ALIASES:
            raise ScheduleError(f"unknown schedule alias {normalized!r}: use one of {', '.join(ALIASES)}")
        normalized = normalized.lower()
    elif len(fields) != 5:
        raise ScheduleError(f"a schedule has five fields ({FIELDS}) or is an alias such as @daily; "
                            f"{normalized!r} has {len(fields)}")
    next_run(normalized, zone_name, now_ms())
    return normalized


def next_run(expression, zone_name, after_ms):
    """The first instant (ms, UTC) after `after_ms` at which `expression` is due in `zone_name`."""
    if not expression:  # a next_run_at written without a schedule, by hand
        raise ScheduleError("the job has no schedule")
    local = datetime.datetime.fromtimestamp(after_ms / 1000, zone(zone_name))
    try:
        due = croniter(expression, local).get_next(datetime.datetime)
    except CroniterError as exc:
        raise ScheduleError(f"invalid schedule {expression!r}: {exc}") from None
    return int(due.timestamp() * 1000)


def set_schedule(job, expression, zone_name=None, now=None):
    """Give `job` the schedule `expression` (None: no schedule), keeping its timezone unless `zone_name`.

    Checks both first (ScheduleError); the next due run is the first after
    `now`. Returns the job's new next_run_at.
    """
    zone_name = job.timezone if zone_name is None else zone_name
    zone(zone_name)
    next_at = None
    if expression is not None:
        expression = check(expression, zone_name)
        next_at = next_run(expression, zone_name, now_ms() if now is None else now)
    with database.atomic():
        Job.update(schedule=expression, timezone=zone_name, next_run_at=next_at).where(Job.id == job.id).execute()
    job.schedule, job.timezone, job.next_run_at = expression, zone_name, next_at
    return next_at


def next_due():
    """The earliest next_run_at of any job (ms), or None when no job has a schedule."""
    # The NOT NULL lets SQLite read the minimum off the partial index job_next_run.
    return Job.select(fn.MIN(Job.next_run_at)).where(Job.next_run_at.is_null(False)).scalar()


def enqueue_due(now=None):
    """Queue the due run of every scheduled job, each once whatever other workers do; [(job, execution)].

    `execution` is None for a run that was skipped (a disabled job, or one
    with an execution still Pending or Running). Due runs another worker
    took are not listed.
    """
    if not Job.select().where(Job.next_run_at <= (now_ms() if now is None else now)).exists():
        return []  # a read, so an idle tick never takes the write lock
    outcomes = []
    with database.atomic():
        at = now_ms() if now is None else now  # read under the lock: the queued run's created_at
        due = (Job.select().where(Job.next_run_at <= at)
               .order_by(Job.next_run_at, Job.id).limit(DUE_BATCH))
        for job in opened().for_update(due, skip_locked=True):
            if claim_due_run(job, at):
                outcomes.append((job, queue_due_run(job, at)))
    return outcomes


def claim_due_run(job, at):
    """Move the job's next_run_at on from the due time this worker read; True if this worker moved it."""
    try:
        following = next_run(job.schedule, job.timezone, at)
    except ScheduleError as exc:  # a zone this machine does not know: this run is the last, not one per tick
        log.error("job %s: schedule %r stopped: %s", job.name, job.schedule, exc)
        following = None
    moved = Job.update(next_run_at=following).where((Job.id == job.id) & (Job.next_run_at == job.next_run_at))
    return moved.execute() == 1


def queue_due_run(job, at):
    """Queue the run the job's schedule is due for, unless it must be skipped; the execution, or None."""
    due = f"the scheduled run due {iso(job.next_run_at)}"
    if not job.enabled:
        log.info("job %s: %s skipped: the job is disabled", job.name, due)
        return None
    busy = (Execution.select(Execution.id, Execution.status, Execution.stage)
            .where((Execution.job == job.id) & Execution.status.in_(ACTIVE))
            .order_by(Execution.created_at).first())
    if busy is not None:
        message = f"{due} skipped: execution {busy.id} is still {busy.status}"
        ExecutionLog.create(execution=busy.id, timestamp=at, level="warning", stage=busy.stage, message=message)
        log.warning("job %s: %s", job.name, message)
        return None
    execution = Execution.create(job=job.id, created_at=at)
    late = (f"; queued at {iso(at)}, after the workers' downtime: the runs missed meanwhile are not repeated"
            if at - job.next_run_at > LATE_MS else "")
    ExecutionLog.create(execution=execution.id, timestamp=at, stage=Stage.QUEUED,
                        message=f"queued by the schedule {job.schedule!r} ({job.timezone}): {due}{late}")
    log.info("job %s: queued execution %s, %s", job.name, execution.id, due)
    return execution
