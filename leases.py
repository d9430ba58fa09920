"""Leases on Running executions: claim, renew, reclaim, and the attempt limit.

A worker holds an execution while its lease (`lease_expires_at`) is in the
future. It claims Pending executions under the claim lock, renews the leases
of its runs, and takes back executions whose worker stopped renewing: each
goes back to Pending, or fails once MAX_ATTEMPTS attempts have lost their
worker.

Every function takes `now` in milliseconds since the epoch and reads the clock
when it is not given, so a test decides the time. A lapse is watched by the
worker's monotonic clock (`Sightings`), because another worker's lease is
stamped by its own wall clock and a jump of ours must not take its runs.
"""
import logging
import time

from peewee import OperationalError, fn

from database import database, opened
from models import Execution, Job, Setting, now_ms
from statuses import FINISHED, ExecutionStatus, ExecutionType, Stage

log = logging.getLogger("backhook.leases")

MAX_ATTEMPTS = 2  # attempts that lost their worker before an execution fails

HELD = (ExecutionStatus.RUNNING, ExecutionStatus.SUCCESS)  # Success is held while its retention runs


def claim(worker_id, lease_ms, now=None):
    """Atomically move up to `max_concurrent_jobs - Running` executions to Running; returns them.

    Pending restores are taken before Pending backups, each kind oldest first.

    On SQLite `database.atomic()` is BEGIN IMMEDIATE: it takes the write
    lock before counting, so no other worker can claim between the count
    and the update, and the limit holds across all processes.
    On PostgreSQL the transaction first takes the claim advisory lock, so
    claims by every worker on every machine happen one at a time, and each
    statement after it sees the claims committed before. SKIP LOCKED
    passes over a Pending row that a cancel holds at that moment.
    """
    if not Execution.select().where(Execution.status == ExecutionStatus.PENDING).exists():
        return []  # a read, so an idle poll never takes the write lock
    with database.atomic():
        opened().lock_claims()
        running = Execution.select().where(Execution.status == ExecutionStatus.RUNNING).count()
        demand = int(Setting.read("max_concurrent_jobs")) - running
        if demand <= 0:
            return []
        # Read after the lock: a start stamped while waiting could fall before
        # the end of the run whose slot it takes, so runs would seem to overlap.
        now = now_ms() if now is None else now
        ids = []
        for kind in (ExecutionType.RESTORE, ExecutionType.BACKUP):  # restores first: someone waits on them
            if len(ids) < demand:
                ids += oldest_pending(kind, demand - len(ids))
        if not ids:
            return []
        claimed = (Execution.update(status=ExecutionStatus.RUNNING, stage=Stage.INITIALIZING,
                                    started_at=fn.COALESCE(Execution.started_at, now),
                                    worker_id=worker_id, lease_expires_at=now + lease_ms,
                                    attempts=Execution.attempts + 1, cancel_requested=False)
                   .where(Execution.id.in_(ids) & (Execution.status == ExecutionStatus.PENDING))
                   .returning(Execution.id).execute())
        ids = [row.id for row in claimed]
    return list(Execution.select(Execution, Job).join(Job).where(Execution.id.in_(ids))
                .order_by(Execution.created_at))


def oldest_pending(kind, limit):
    """The ids of the `limit` oldest Pending executions of type `kind`, locked for the claim.

    Straight from the (status, type, created_at, id) index, in its order: no scan, no sort.
    """
    query = (Execution.select(Execution.id)
             .where((Execution.type == kind) & (Execution.status == ExecutionStatus.PENDING))
             .order_by(Execution.created_at).limit(limit))
    return [row.id for row in opened().for_update(query, skip_locked=True)]


def renew(worker_id, ids, lease_ms, now=None):
    """Extend the leases `worker_id` holds on `ids`; returns the ids whose runs must stop.

    A renewal that fails on a busy database raises and stops nothing: the
    caller tries again at its next tick, and only a write that finds the
    execution in another worker's hands gives a run up (issue 18).
    """
    if not ids:
        return []
    with database.atomic():
        until = (now_ms() if now is None else now) + lease_ms
        renewed = (Execution.update(lease_expires_at=until)
                   .where(Execution.id.in_(ids) & (Execution.worker_id == worker_id)
                          & Execution.status.in_(HELD) & Execution.lease_expires_at.is_null(False))
                   .returning(Execution.id).execute())
        still_ours = {row.id for row in renewed}
    gone = [execution_id for execution_id in ids if execution_id not in still_ours]
    if not gone:
        return []
    rows = Execution.select(Execution.id, Execution.status, Execution.worker_id).where(Execution.id.in_(gone))
    # One that its remote backup ended is not lost to another worker: its run sees the end itself.
    return [row.id for row in rows if not (row.worker_id == worker_id and row.status in FINISHED)]


def lapsed(now, own_ids):
    """The condition for executions whose lease lapsed before `now`, the worker's own live runs excepted.

    Only a held execution has a lease (Running, or Success while pruning),
    so the lease alone picks them, through its own index.
    """
    return (Execution.lease_expires_at < now) & Execution.id.not_in(list(own_ids))


class Sightings:
    """The lapsed leases a worker has seen, each with when it first saw it (monotonic seconds).

    A lease counts as the same one only while its holder, attempt and expiry
    are unchanged, so a renewal or a new claim starts the watch again.
    """

    def __init__(self, patience_seconds):
        self.patience_seconds = patience_seconds
        self.first_seen = {}

    def watch(self, executions, at):
        """Note these lapsed executions, forget all others, and return those watched for the patience."""
        first_seen, due = {}, []
        for execution in executions:
            seen = (execution.id, execution.worker_id, execution.attempts, execution.lease_expires_at)
            first_seen[seen] = self.first_seen.get(seen, at)
            if at - first_seen[seen] >= self.patience_seconds:
                due.append(execution)
        self.first_seen = first_seen
        return due

    def forget(self):
        self.first_seen = {}


def reclaim(sightings, own_ids, leftovers, now=None, at=None):
    """Take back executions whose worker stopped renewing its lease; returns those taken back.

    A lapsed lease alone is not enough: the database may have been too busy
    for a live owner to renew. An execution is taken only once the same
    lapsed lease was seen for the sightings' patience (`at` is the monotonic
    clock in seconds), each sighting made holding the rows' write locks; a
    reclaim that cannot get them forgets its sightings. So once a busy
    database answers again, the owner renews before anyone takes its
    execution (issue 18). `leftovers(job, execution_id)` names the partial
    files an abandoned attempt may have left.
    """
    if not Execution.select().where(lapsed(now_ms() if now is None else now, own_ids)).exists():
        sightings.forget()
        return []  # a read, so the common case never takes the write lock
    try:
        with database.atomic():
            opened().lock_claims()  # no other worker reclaims, or claims, these meanwhile
            at = time.monotonic() if at is None else at
            held = lapsed(now_ms() if now is None else now, own_ids)
            due = sightings.watch(opened().for_update(Execution.select().where(held)), at)
            for execution in due:
                job = Job.get_by_id(execution.job_id)
                abandoned = leftovers(job, execution.id) if execution.status == ExecutionStatus.RUNNING else []
                requeue_or_fail(execution, abandoned, now)
    except OperationalError:
        sightings.forget()
        raise
    return due


def requeue_or_fail(execution, leftovers, now=None):
    """End a lapsed lease in one guarded write on the execution being as it was seen; True if it did.

    A Running execution goes back to the queue, or fails when no attempt
    is left, and its partial files (`leftovers`) are removed inside the
    transaction, before any worker can claim it again and start writing new
    ones. A Success whose worker died while pruning keeps its artifact and
    is completed; any other state only has its lease released.
    """
    lost = f"worker {execution.worker_id} stopped renewing its lease"
    cleanup = f"; removed {', '.join(path.name for path in leftovers)}" if leftovers else ""
    attempt = f"(attempt {execution.attempts} of {MAX_ATTEMPTS})"
    ended_at = now_ms() if now is None else now
    if execution.status == ExecutionStatus.SUCCESS:
        message = f"{lost} while applying retention; the backup stands, and older backups left unpruned are kept"
        fields = dict(stage=Stage.COMPLETED, progress=100, retention_error=message)
    elif execution.status != ExecutionStatus.RUNNING:
        fields, message = {}, f"{lost}; its lease is released"
    elif execution.cancel_requested:  # the cancel its dead worker never acted on
        message = f"{lost} {attempt}; cancelled as requested{cleanup}"
        fields = dict(status=ExecutionStatus.CANCELLED, stage=Stage.CANCELLED, ended_at=ended_at)
    elif execution.attempts < MAX_ATTEMPTS:
        fields = dict(status=ExecutionStatus.PENDING, stage=Stage.QUEUED)
        message = f"{lost} {attempt}; re-queued{cleanup}"
    else:
        message = f"{lost} {attempt}; no attempts left{cleanup}"
        fields = dict(status=ExecutionStatus.FAILED, stage=Stage.FAILED, ended_at=ended_at, error=message)
    unchanged = ((Execution.worker_id == execution.worker_id) & (Execution.attempts == execution.attempts)
                 & (Execution.lease_expires_at == execution.lease_expires_at))
    if not Execution.transition(execution.id, execution.status,
                                dict(worker_id=None, lease_expires_at=None, **fields), where=unchanged,
                                logs=[dict(level="warning", stage=execution.stage, message=message)]):
        return False
    for path in leftovers:
        path.unlink(missing_ok=True)
    log.warning("execution %s: %s", execution.id, message)
    return True
