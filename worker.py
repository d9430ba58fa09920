"""The worker process: claims Pending executions and runs them (`python -m worker`).

One loop in the main thread owns the protocol with the database:

- claim_pending: takes Pending executions, never more than the global limit;
- renew_leases: keeps this worker's executions alive;
- watch_runs: stops runs that were cancelled or ran past their timeout;
- reclaim_lapsed: takes back executions whose worker died.

Each duty meets a locked database on its own: one that fails never keeps the
others, above all the lease renewal, from their turn.

Each claimed execution runs in a thread of its own (backup.Run). The loop
sleeps on a wake-up socket (wakeup.py) so that a trigger starts a backup
within milliseconds, with a slow fallback poll in case a datagram is lost.

SIGTERM (or SIGINT) stops claiming and lets running executions finish for
BACKHOOK_WORKER_GRACE_SECONDS. Executions still running then are interrupted:
their tools are killed, their partial files removed, and they go back to
Pending without using up an attempt, because nothing failed; the next worker
to start runs them. Cancelled is reserved for what a person cancelled.
"""
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

from peewee import OperationalError, fn

import config
import models
import wpsec
from backup import MAX_ATTEMPTS, Run
from models import (CANCELLED, FAILED, FINISHED, PENDING, RUNNING, SUCCESS, Execution, Job, Setting, database,
                    new_id, now_ms)
from sinks import partial_files
from spool import replay_spool
from wakeup import drain, listen, stop_listening, wake_workers

log = logging.getLogger("backhook.worker")

IDLE_POLL_SECONDS = 1.0      # fallback when no wake-up arrives
BUSY_POLL_SECONDS = 0.25     # while running: how often cancel and timeout are checked
RECLAIM_EVERY_SECONDS = 1.0
CHORES_EVERY_SECONDS = 1.0   # the webhook follow-ups (see chores)
# Small, frequent checkpoints: webhooks that write while one copies the log
# stall less. Every 0.25 s instead of every second took the webhook's p99
# under load from 15-25 ms to 12-14 ms (RESULTS.md).
CHECKPOINT_EVERY_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 10.0  # after the grace period, for interrupted runs to clean up


CLAIM_LOCK = 0x626B636C61696D  # "bkclaim": PostgreSQL's advisory lock for claims and reclaims


def lock_claims():
    """On PostgreSQL, wait for the claim lock; the transaction's end releases it.

    SQLite needs nothing here: its IMMEDIATE transaction already holds the
    database's one write lock.
    """
    if models.is_postgresql():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))


class Worker:
    def __init__(self, settings):
        self.id = f"{socket.gethostname()}-{os.getpid()}-{new_id()[-8:]}"
        self.data_dir = settings["DATA_DIR"]
        self.lease_ms = int(settings["LEASE_SECONDS"] * 1000)
        self.renew_every = settings["LEASE_SECONDS"] / 3  # also how long a lapse is watched before a reclaim
        self.grace_seconds = settings["WORKER_GRACE_SECONDS"]
        self.poll_after_seconds = settings["WPSEC_POLL_AFTER"]
        self.runs = {}          # execution id -> (Run, thread)
        self.stopping_since = None
        self.next_renewal = self.next_reclaim = 0.0
        self.sightings = {}     # (id, worker_id, attempts, lease_expires_at) of a lapsed lease -> monotonic first seen

    # --- the claim protocol -------------------------------------------------------

    def claim_pending(self):
        """Atomically move up to `max_concurrent_jobs - Running` executions to Running.

        On SQLite `database.atomic()` is BEGIN IMMEDIATE: it takes the write
        lock before counting, so no other worker can claim between the count
        and the update, and the limit holds across all processes.
        On PostgreSQL the transaction first takes the claim advisory lock, so
        claims by every worker on every machine happen one at a time, and each
        statement after it sees the claims committed before. SKIP LOCKED
        passes over a Pending row that a cancel holds at that moment.
        """
        if not Execution.select().where(Execution.status == PENDING).exists():
            return []  # a read, so an idle poll never takes the write lock
        with database.atomic():
            lock_claims()
            running = Execution.select().where(Execution.status == RUNNING).count()
            demand = int(Setting.read("max_concurrent_jobs")) - running
            if demand <= 0:
                return []
            now = now_ms()
            oldest_pending = (Execution.select(Execution.id).where(Execution.status == PENDING)
                              .order_by(Execution.created_at).limit(demand))
            if models.is_postgresql():
                oldest_pending = oldest_pending.for_update(skip_locked=True)
            claimed = (Execution.update(status=RUNNING, stage="Initializing",
                                        started_at=fn.COALESCE(Execution.started_at, now),
                                        worker_id=self.id, lease_expires_at=now + self.lease_ms,
                                        attempts=Execution.attempts + 1, cancel_requested=False)
                       .where(Execution.id.in_(oldest_pending))
                       .returning(Execution.id).execute())
            ids = [row.id for row in claimed]
        return list(Execution.select(Execution, Job).join(Job).where(Execution.id.in_(ids))
                    .order_by(Execution.created_at))

    def renew_leases(self):
        """Extend the leases this worker holds; a run whose execution was taken over must stop.

        A renewal that fails on a busy database stops nothing: it is tried
        again at the next tick, and only a write that finds the execution in
        another worker's hands gives a run up (issue 18).
        """
        if not self.runs or time.monotonic() < self.next_renewal:
            return
        with database.atomic():
            renewed = (Execution.update(lease_expires_at=now_ms() + self.lease_ms)
                       .where(Execution.id.in_(list(self.runs)) & (Execution.worker_id == self.id)
                              & Execution.status.in_([RUNNING, SUCCESS]) & Execution.lease_expires_at.is_null(False))
                       .returning(Execution.id).execute())
            still_ours = {row.id for row in renewed}
        self.next_renewal = time.monotonic() + self.renew_every
        gone = [execution_id for execution_id in self.runs if execution_id not in still_ours]
        if not gone:
            return
        for row in Execution.select(Execution.id, Execution.status, Execution.worker_id).where(Execution.id.in_(gone)):
            if row.worker_id == self.id and row.status in FINISHED:
                continue  # its remote backup ended it, not another worker: the run sees that itself
            self.runs[row.id][0].stop("lost")

    def lapsed(self):
        """Executions whose lease lapsed, this worker's own live runs excepted.

        Only a held execution has a lease (Running, or Success while pruning),
        so the lease alone picks them, through its own index.
        """
        return (Execution.lease_expires_at < now_ms()) & Execution.id.not_in(list(self.runs))

    def reclaim_lapsed(self):
        """Take back executions whose worker stopped renewing its lease.

        A lapsed lease alone is not enough: the database may have been too
        busy for a live owner to renew. This worker takes an execution only
        once it has seen the same lapsed lease for a renewal interval by its
        own monotonic clock, each sighting made holding the rows' write locks;
        a reclaim that cannot get them forgets its sightings. So once a busy
        database answers again, the owner renews before anyone takes its
        execution (issue 18).
        """
        if time.monotonic() < self.next_reclaim:
            return
        self.next_reclaim = time.monotonic() + RECLAIM_EVERY_SECONDS
        if not Execution.select().where(self.lapsed()).exists():
            self.sightings = {}
            return  # a read, so the common case never takes the write lock
        try:
            with database.atomic():
                lock_claims()  # no other worker reclaims, or claims, these meanwhile
                now, sightings, due = time.monotonic(), {}, []
                for execution in Execution.select().where(self.lapsed()).for_update(models.is_postgresql()):
                    seen = (execution.id, execution.worker_id, execution.attempts, execution.lease_expires_at)
                    sightings[seen] = self.sightings.get(seen, now)
                    if now - sightings[seen] >= self.renew_every:
                        due.append(execution)
                self.sightings = sightings
                for execution in due:
                    self.requeue_or_fail(execution, Job.get_by_id(execution.job_id))
        except OperationalError:
            self.sightings = {}
            raise
        if due:
            wake_workers(self.data_dir)

    def requeue_or_fail(self, execution, job):
        """End a lapsed lease in one guarded write on the execution being as it was seen.

        A Running execution goes back to the queue, or fails when no attempt
        is left, and its partial files are removed inside the transaction,
        before any worker can claim it again and start writing new ones. A
        Success whose worker died while pruning keeps its artifact and is
        completed; any other state only has its lease released.
        """
        lost = f"worker {execution.worker_id} stopped renewing its lease"
        leftovers = partial_files(job, execution.id) if execution.status == RUNNING else []
        cleanup = f"; removed {', '.join(path.name for path in leftovers)}" if leftovers else ""
        attempt = f"(attempt {execution.attempts} of {MAX_ATTEMPTS})"
        if execution.status == SUCCESS:
            message = f"{lost} while applying retention; the backup stands, and older backups left unpruned are kept"
            fields = dict(stage="Completed", progress=100, retention_error=message)
        elif execution.status != RUNNING:
            fields, message = {}, f"{lost}; its lease is released"
        elif execution.cancel_requested:  # the cancel its dead worker never acted on
            message = f"{lost} {attempt}; cancelled as requested{cleanup}"
            fields = dict(status=CANCELLED, stage="Cancelled", ended_at=now_ms())
        elif execution.attempts < MAX_ATTEMPTS:
            fields, message = dict(status=PENDING, stage="Queued"), f"{lost} {attempt}; re-queued{cleanup}"
        else:
            message = f"{lost} {attempt}; no attempts left{cleanup}"
            fields = dict(status=FAILED, stage="Failed", ended_at=now_ms(), error=message)
        unchanged = ((Execution.worker_id == execution.worker_id) & (Execution.attempts == execution.attempts)
                     & (Execution.lease_expires_at == execution.lease_expires_at))
        if not Execution.transition(execution.id, execution.status,
                                    dict(worker_id=None, lease_expires_at=None, **fields), where=unchanged,
                                    logs=[dict(level="warning", stage=execution.stage, message=message)]):
            return
        for path in leftovers:
            path.unlink(missing_ok=True)
        log.warning("execution %s: %s", execution.id, message)

    # --- running ----------------------------------------------------------------------

    def start(self, execution):
        deadline = time.monotonic() + execution.job.timeout_seconds
        run = Run(execution, execution.job, self.id, deadline)
        thread = threading.Thread(target=self.execute, args=(run,), name=f"run-{execution.id}", daemon=True)
        self.runs[execution.id] = (run, thread)
        thread.start()
        log.info("started execution %s of job %s", execution.id, execution.job.name)

    def execute(self, run):
        try:
            run.execute()
        finally:
            wake_workers(self.data_dir)  # a slot is free: any idle worker may claim now
            database.close()  # this thread's connection (a NOTIFY's, on PostgreSQL)

    def reap_finished(self):
        for execution_id, (_run, thread) in list(self.runs.items()):
            if not thread.is_alive():
                del self.runs[execution_id]

    def watch_runs(self):
        """Stop runs whose execution was cancelled or whose timeout passed."""
        if not self.runs:
            return
        cancelled = Execution.select(Execution.id).where(
            Execution.id.in_(list(self.runs)) & Execution.cancel_requested)
        for row in cancelled:
            self.runs[row.id][0].stop("cancel")
        for run, _thread in self.runs.values():
            if time.monotonic() > run.deadline:
                run.stop("timeout")

    # --- chores: the WAL checkpoint and webhook follow-ups ------------------------------

    def chores(self):
        """Replay spooled webhooks, sync backup lists, poll silent remote backups."""
        return (lambda: replay_spool(self.data_dir), wpsec.sync_requested_websites,
                lambda: wpsec.poll_silent_remote_backups(self.poll_after_seconds))

    @staticmethod
    def repeat(chores, every_seconds, stopping):
        """Run `chores` every `every_seconds` until `stopping` is set.

        Each caller is a thread of its own: a slow WPSec site may take minutes
        to answer, and neither the claim loop nor the checkpoint may wait on it.
        """
        try:
            while not stopping.wait(every_seconds):
                for chore in chores:
                    try:
                        chore()
                    except Exception:  # one failing chore must not stop the others
                        log.exception("background chore failed")
        finally:
            database.close()

    # --- the loop ---------------------------------------------------------------------

    def request_stop(self, signum, frame):
        if self.stopping_since is None:
            log.info("received signal %s: no new claims; waiting up to %s s for %d running execution(s)",
                     signum, self.grace_seconds, len(self.runs))
            self.stopping_since = time.monotonic()

    def done_stopping(self):
        if self.stopping_since is None:
            return False
        # Past the grace period runs are told to stop; one that cannot (a
        # stuck system call) is left to the lease reclaim of another worker.
        overdue = time.monotonic() - self.stopping_since > self.grace_seconds + STOP_TIMEOUT_SECONDS
        return not self.runs or overdue

    def serve(self):
        wake = listen(self.data_dir, self.id)
        # A signal writes a byte to this pair, so it ends the wait at once.
        signal_pipe, signal_wakeup = socket.socketpair()
        for end in (signal_pipe, signal_wakeup):
            end.setblocking(False)
        signal.set_wakeup_fd(signal_wakeup.fileno())
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("worker %s ready (lease %s s, grace %s s)", self.id, self.lease_ms / 1000, self.grace_seconds)
        stopping = threading.Event()
        background = [("chores", self.chores(), CHORES_EVERY_SECONDS)]
        if models.is_sqlite():
            background.append(("checkpoints", (models.checkpoint_wal,), CHECKPOINT_EVERY_SECONDS))
        for name, chores, every_seconds in background:
            threading.Thread(target=self.repeat, args=(chores, every_seconds, stopping), name=name,
                             daemon=True).start()
        try:
            while not self.done_stopping():
                self.tick()
                timeout = BUSY_POLL_SECONDS if self.runs or self.stopping_since else IDLE_POLL_SECONDS
                for ready in select.select([wake, signal_pipe], [], [], timeout)[0]:
                    drain(ready)
        finally:
            stopping.set()
            stop_listening(wake)
            signal.set_wakeup_fd(-1)
            signal_pipe.close()
            signal_wakeup.close()
        log.info("worker %s stopped", self.id)

    def tick(self):
        self.reap_finished()
        duties = [self.renew_leases, self.watch_runs]
        if self.stopping_since is None:
            duties = [self.reclaim_lapsed, self.claim_and_start, *duties]
        elif time.monotonic() - self.stopping_since > self.grace_seconds:
            for run, _thread in self.runs.values():
                run.stop("shutdown")
        for duty in duties:
            try:
                duty()
            except OperationalError as exc:  # a locked or unreachable database: try again shortly
                log.warning("database unavailable: %s", exc)

    def claim_and_start(self):
        for execution in self.claim_pending():
            self.start(execution)


def main():
    os.umask(config.UMASK)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.load()
    models.open_database(settings["DATABASE_URL"], settings["DATABASE_BUSY_SECONDS"])
    Worker(settings).serve()


if __name__ == "__main__":
    main()
