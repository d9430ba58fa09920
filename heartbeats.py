"""Worker health: which workers are alive, and what a Pending execution is told when none is.

Each worker stamps its WorkerHeartbeat row from its claim loop every
BEAT_EVERY_SECONDS and deletes it when it stops; a worker counts as seen
while its stamp is less than a minute old. The claim loop, not the chores
thread, beats: a slow WPSec site can hold the chores for minutes, while the
claim loop is what runs Pending executions. A stamp is the worker's wall
clock, compared with the reader's: machines kept in time by NTP agree on "a
minute" to well under a second.

A Pending execution that no live worker can take is told so once, in its
log, when it is triggered or polled (`note_if_unattended`): the worker that
would write it periodically is the one missing.
"""
import logging

from peewee import DatabaseError

from database import database, opened
from models import Execution, ExecutionLog, WorkerHeartbeat, now_ms
from statuses import ExecutionStatus, Stage

BEAT_EVERY_SECONDS = 10.0
SEEN_WITHIN_MS = 60_000  # "workers seen in the last minute"
KEEP_MS = 24 * 3600 * 1000  # a dead worker's row goes after this; only "when was anyone last seen" needs it
UNATTENDED = "no worker has been seen"  # how the note begins, so that it is found again

log = logging.getLogger("backhook.heartbeats")


def workers_seen(now=None):
    """How many workers beat within the last minute."""
    return WorkerHeartbeat.seen_since((now_ms() if now is None else now) - SEEN_WITHIN_MS)


def purge_stale(now=None):
    return WorkerHeartbeat.purge_older_than((now_ms() if now is None else now) - KEEP_MS)


def unattended_message(newest, now):
    if newest is None:
        return f"{UNATTENDED} in the last 24 h; the execution waits for a worker (`backhook worker` runs one)"
    return f"{UNATTENDED} for {(now - newest) // 1000} s; the execution waits for a worker"


def note_if_unattended(execution_id, now=None):
    """Log on a Pending execution that no worker is there to run it; True if this call logged it.

    Once per absence: a note already written since the last heartbeat of any
    worker is not repeated, however often the execution is polled; one is
    written again if a worker came and went since. The common case, a live
    worker, costs one indexed count. It never fails its caller (a trigger
    must not answer 503 for a run it queued): a busy database postpones the
    note to the next poll.
    """
    try:
        return _note_if_unattended(execution_id, now_ms() if now is None else now)
    except DatabaseError as exc:
        log.warning("execution %s: could not check for live workers: %s", execution_id, exc)
        return False


def _note_if_unattended(execution_id, now):
    if workers_seen(now):
        return False
    newest = WorkerHeartbeat.newest()
    if _noted_since(execution_id, newest):  # a read first, so repeated polls take no write lock
        return False
    with database.atomic():
        # The row lock (on SQLite the write lock) makes two polls at once write one note.
        execution = opened().for_update(Execution.select(Execution.status).where(Execution.id == execution_id)).first()
        if execution is None or execution.status != ExecutionStatus.PENDING or _noted_since(execution_id, newest):
            return False
        ExecutionLog.create(execution=execution_id, timestamp=now, level="warning", stage=Stage.QUEUED,
                            message=unattended_message(newest, now))
    return True


def _noted_since(execution_id, newest):
    return ExecutionLog.select().where((ExecutionLog.execution == execution_id)
                                       & ExecutionLog.message.startswith(UNATTENDED)
                                       & (ExecutionLog.timestamp > (newest or 0))).exists()
