"""Retention: pruning a job's older artifacts once its new backup is recorded Success.

A job's policy keeps the union of what each of its rules keeps:

- `keep` N: the N newest artifacts;
- `keep_daily` D, `keep_weekly` W, `keep_monthly` M (grandfather-father-son):
  the newest artifact of each of the D most recent days, W most recent ISO
  weeks (Monday to Sunday, numbered by ISO year, so 2026-01-01 is in
  2026-W01 and 2021-01-03 in 2020-W53) and M most recent calendar months
  that have an artifact at all. A day without a backup is no day of the D:
  the rules count artifacts kept, never calendar time. Each rule looks at
  every artifact, so the weekly one keeps a week's newest whether or not a
  daily one keeps it too.

An artifact's time is when its backup started (`started_at`, the UTC stamp
in its file name), read in the job's timezone: its day, week and month are
those of the wall clock there, DST days included (one of 23 or 25 hours).

The run calls `prune` only after its own Success is written (issue 12), so
nothing here can cost the job its newest good backup: the newest successful
artifact and the pruning attempt's own are never deleted, whatever the
policy says. A job without any rule keeps everything.
"""
import datetime
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import destinations
import models
from models import ArtifactCopy, Execution
from sources import BackupError, SourceError
from statuses import ExecutionStatus, ExecutionType

# The GFS rules: each names the bucket (day, ISO week, month) of a local time.
BUCKETS = {
    "daily": lambda local: local.date().isoformat(),
    "weekly": lambda local: "{:04d}-W{:02d}".format(*local.isocalendar()[:2]),
    "monthly": lambda local: f"{local:%Y-%m}",
}


@dataclass(frozen=True)
class Policy:
    """What a job keeps: its `keep` newest and the newest of each of its last daily, weekly, monthly buckets."""
    keep: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, job):
        return cls(job.keep, job.keep_daily, job.keep_weekly, job.keep_monthly, job.timezone)

    def rules(self):
        return {"daily": self.daily, "weekly": self.weekly, "monthly": self.monthly}

    def prunes(self):
        return bool(self.keep or any(self.rules().values()))

    def describe(self):
        parts = [f"the {self.keep} newest"] if self.keep else []
        parts += [f"{count} {name}" for name, count in self.rules().items() if count]
        gfs = f" in {self.timezone}" if any(self.rules().values()) else ""
        return ", ".join(parts) + gfs if parts else "everything"


def policy_problem(keep=None, daily=None, weekly=None, monthly=None):
    """What is wrong with a retention policy's numbers, or None: each is absent or a whole number of at least 1.

    The one check, for the command line and the API alike.
    """
    for name, value in (("keep", keep), ("keepDaily", daily), ("keepWeekly", weekly), ("keepMonthly", monthly)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"{name} must be a whole number of at least 1, or absent"
    return None


def artifact_time(holder):
    """When the holder's backup started (ms, UTC): the time its retention buckets are read from."""
    return holder.started_at if holder.started_at is not None else holder.created_at


def reasons_to_keep(holders, policy, own_id):
    """{execution id: [why it stays]} of the holders (newest first) that `policy` keeps; the others go."""
    if not policy.prunes():
        return {holder.id: ["no retention policy: every backup stays"] for holder in holders}
    kept = {}

    def stays(holder, reason):
        kept.setdefault(holder.id, []).append(reason)

    if holders:
        stays(holders[0], "newest")
    for holder in holders[:policy.keep or 0]:
        stays(holder, f"one of the {policy.keep} newest")
    zone = ZoneInfo(policy.timezone)
    for name, count in policy.rules().items():
        seen = set()
        for holder in holders if count else ():
            local = datetime.datetime.fromtimestamp(artifact_time(holder) / 1000, zone)
            bucket = BUCKETS[name](local)
            if bucket in seen:
                continue  # newest first: the first artifact of a bucket is its newest
            seen.add(bucket)
            stays(holder, f"{name} {bucket}")
            if len(seen) == count:
                break
    for holder in holders:
        if holder.id == own_id:
            stays(holder, "this run's own")
    return kept


def expired(holders, policy, own_id):
    """Of the successful executions holding an artifact, newest first, those `policy` does not keep."""
    kept = reasons_to_keep(holders, policy, own_id)
    return [old for old in holders if old.id not in kept]


def artifact_holders(job_id):
    """The job's successful backups that still name an artifact, newest first (a Restore never names one)."""
    rows = (Execution.select(Execution.id, Execution.path, Execution.created_at, Execution.started_at)
            .where((Execution.job == job_id) & (Execution.type == ExecutionType.BACKUP)
                   & (Execution.status == ExecutionStatus.SUCCESS)
                   & Execution.path.is_null(False)))
    return sorted(rows, key=lambda holder: (artifact_time(holder), holder.id), reverse=True)


def plan(job, own_id=None):
    """The job's artifact holders, newest first, each with why its policy keeps it ([]: it goes)."""
    holders = artifact_holders(job.id)
    kept = reasons_to_keep(holders, Policy.of(job), own_id)
    return [(old, kept.get(old.id, [])) for old in holders]


def prune(job, execution_id, check, log):
    """Delete the job's successful artifacts its policy does not keep, every copy; the problems met, or None.

    Each copy (an ArtifactCopy, on one of the destinations) is first
    forgotten in the database (committed), then deleted from its store, so no
    row ever names a missing file; its manifest goes after it, so a copy that
    could not be deleted keeps its manifest, and its row comes back. The
    execution's `path` is cleared with its last copy. `check()` before each
    deletion may raise to stop; `log(message, level)` reports each one.
    """
    policy = Policy.of(job)
    if not policy.prunes():
        return None
    holders = artifact_holders(job.id)
    deleted, problems = 0, []
    going = expired(holders, policy, execution_id)
    for old in going:
        old.job = job
        for copy in destinations.recorded_copies(old):
            check()
            if not forget(old, copy):
                continue  # another run pruned it meanwhile
            problem = delete_copy(job, old, copy, log)
            if problem:
                problems.append(problem)
            else:
                deleted += 1
    log(f"retention: keeping {len(holders) - len(going)} of {len(holders)} backups ({policy.describe()}); "
        f"deleted {deleted}")
    return "; ".join(problems) or None


def forget(old, copy):
    """Drop the copy's row (and the execution's `path` with its last copy) in one transaction; False if gone."""
    with models.database.atomic():
        if copy.id is None:  # recorded before version 6: the execution's path is its only copy
            return Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=None),
                                        where=Execution.path == copy.location)
        if not ArtifactCopy.delete().where(ArtifactCopy.id == copy.id).execute():
            return False
        if not ArtifactCopy.select().where(ArtifactCopy.execution == old.id).exists():
            Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=None), where=Execution.path == old.path)
        return True


def remember(old, copy):
    """Name a copy again after its deletion failed, so no file is left unaccounted for and the next run retries."""
    with models.database.atomic():
        if copy.id is not None:
            ArtifactCopy.create(id=copy.id, execution=old.id, position=copy.position,
                                destination=copy.destination, location=copy.location)
        Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=old.path), where=Execution.path.is_null())


def delete_copy(job, old, copy, log):
    """Delete one forgotten copy and then its manifest; the problem met, or None."""
    where = f"from {destinations.describe(copy.destination, job)}"
    try:
        sink = destinations.sink_for(copy.destination, job)
        sink.delete(copy.location)
    except (OSError, BackupError, SourceError) as exc:
        remember(old, copy)
        problem = (f"could not delete {copy.location} (execution {old.id}) {where}: "
                   f"{getattr(exc, 'strerror', None) or exc}")
        log(f"retention: {problem}; it is kept", "error")
        return problem
    log(f"retention: deleted {copy.location} (execution {old.id}) {where}")
    try:
        sink.delete_manifest(copy.location)  # only now: an artifact that stays keeps its manifest
    except (OSError, BackupError) as exc:
        problem = (f"could not delete the manifest of {copy.location} (execution {old.id}) {where}: "
                   f"{getattr(exc, 'strerror', None) or exc}")
        log(f"retention: {problem}", "error")
        return problem
    return None
