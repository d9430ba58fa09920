"""The worker process: claims Pending executions and runs them (`python -m worker`).

One loop in the main thread does the worker's part of the lease protocol
(leases.py) at each tick:

- enqueue_due_runs: queues the runs that the jobs' schedules are due for
  (schedules.py), each once however many workers run;
- claim_pending: takes Pending executions, never more than the global limit;
- renewals: a Task that keeps this worker's executions alive;
- watch_runs: stops runs that were cancelled or ran past their timeout;
- reclaims: a Task that takes back executions whose worker died;
- heartbeat: a Task that stamps this worker's row, so that /readyz, the job
  listing and /metrics can say how many workers are alive (heartbeats.py).

Each duty meets a locked database on its own: one that fails never keeps the
others, above all the lease renewal, from their turn. The webhook follow-ups
and SQLite's checkpoint are Tasks on background threads.

Each claimed execution runs in a thread of its own (backup.Run, or
restore.Restore for a Restore). The loop
sleeps on a wake-up socket (wakeup.py) so that a trigger starts a backup
within milliseconds, with a slow fallback poll in case a datagram is lost,
and never longer than until the next scheduled run is due.

SIGTERM (or SIGINT) stops claiming and lets running executions finish for
BACKHOOK_WORKER_GRACE_SECONDS. Executions still running then are interrupted:
their tools are killed, their partial files removed, and they go back to
Pending without using up an attempt, because nothing failed; the next worker
to start runs them. Cancelled is reserved for what a person cancelled.
"""
import ctypes
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time

from peewee import InterfaceError, OperationalError

import config
import destinations
import drills
import heartbeats
import leases
import schedules
import notifications
import outbox
import wpsec
from backup import Run
from database import database, open_database, opened
from models import DashboardSession, Execution, WorkerHeartbeat, new_id, now_ms, purge_idempotency_keys
from restore import Restore
from statuses import ExecutionType
from spool import replay_spool
from wakeup import drain, listen, stop_listening, wake_workers

log = logging.getLogger("backhook.worker")

IDLE_POLL_SECONDS = 1.0      # fallback when no wake-up arrives
BUSY_POLL_SECONDS = 0.25     # while running: how often cancel and timeout are checked
RECLAIM_EVERY_SECONDS = 1.0
CHORES_EVERY_SECONDS = 1.0   # the webhook follow-ups (see background_tasks)
NOTIFY_EVERY_SECONDS = 1.0   # how often the outbox is looked at for messages due
OVERDUE_EVERY_SECONDS = 60.0  # the dead man's switch counts in hours
PURGE_EVERY_SECONDS = 60.0   # expired Idempotency-Keys no longer match; dropping them is only housekeeping
# Small, frequent checkpoints: webhooks that write while one copies the log
# stall less (bench/RESULTS.md, "Figures behind the code: leases and worker").
CHECKPOINT_EVERY_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 10.0  # after the grace period, for interrupted runs to clean up
# The shortest wait for a due run: one that another worker is queueing at that
# moment is still due in the database for a few milliseconds.
DUE_RETRY_SECONDS = 0.05


class Task:
    """A periodic duty: `run(now)` runs it once it is due and sets when it is due next.

    `now` is the monotonic clock in seconds, so a test passes a time instead of
    sleeping. A duty that raises is retried at its next interval, or at the
    next run with `retry_at_once`: a lease renewal that met a locked database
    must not wait a whole interval more (issue 18).
    """

    def __init__(self, name, every_seconds, duty, retry_at_once=False):
        self.name = name
        self.every_seconds = every_seconds
        self.duty = duty
        self.retry_at_once = retry_at_once
        self.next_at = 0.0  # due at once

    def run(self, now=None):
        """Run the duty if it is due; True if it ran."""
        now = time.monotonic() if now is None else now
        if now < self.next_at:
            return False
        if not self.retry_at_once:
            self.next_at = now + self.every_seconds
        self.duty()
        self.next_at = now + self.every_seconds
        return True

    def postpone(self, now=None):
        """Make the next run due one interval after `now`."""
        self.next_at = (time.monotonic() if now is None else now) + self.every_seconds

    def due_in(self, now=None):
        """Seconds until the next run is due, 0 when it is due already."""
        return max(0.0, self.next_at - (time.monotonic() if now is None else now))


class Worker:
    def __init__(self, settings):
        self.host, self.pid, self.started_at = socket.gethostname(), os.getpid(), now_ms()
        self.id = f"{self.host}-{self.pid}-{new_id()[-8:]}"
        self.data_dir = settings["DATA_DIR"]
        self.lease_ms = int(settings["LEASE_SECONDS"] * 1000)
        renew_every = settings["LEASE_SECONDS"] / 3  # also how long a lapse is watched before a reclaim
        self.grace_seconds = settings["WORKER_GRACE_SECONDS"]
        self.poll_after_seconds = settings["WPSEC_POLL_AFTER"]
        self.runs = {}          # execution id -> (Run, thread)
        self.next_due_ms = None  # the earliest next_run_at of any job at the last look (schedules.py)
        self.stopping_since = None
        self.sightings = leases.Sightings(patience_seconds=renew_every)
        self.reclaims = Task("reclaim", RECLAIM_EVERY_SECONDS, self.reclaim_lapsed)
        self.renewals = Task("renewals", renew_every, self.renew_leases, retry_at_once=True)
        self.abandoned = queue.SimpleQueue()  # reclaimed executions whose targets the chores remove
        self.heartbeat = Task("heartbeat", heartbeats.BEAT_EVERY_SECONDS, self.beat, retry_at_once=True)
        self.courier = outbox.Courier(self.id, settings["NOTIFY_TIMEOUT_SECONDS"])

    # --- the leases: claim, renew, reclaim (leases.py) -----------------------------------

    def claim_pending(self):
        """Claim Pending executions for this worker, never beyond the global limit."""
        return leases.claim(self.id, self.lease_ms)

    def renew_leases(self):
        """Extend this worker's leases; a run whose execution was taken over must stop."""
        for execution_id in leases.renew(self.id, list(self.runs), self.lease_ms):
            self.runs[execution_id][0].stop("lost")

    def reclaim_lapsed(self):
        """Take back executions whose worker died, and wake the workers to run them again.

        What their attempts left on database servers is removed by the chores
        (remove_abandoned_targets): a server that does not answer must not hold
        up the lease renewal that runs on this thread.
        """
        taken = leases.reclaim(self.sightings, list(self.runs), destinations.leftovers)
        for execution in taken:
            self.abandoned.put(execution)
        if taken:
            wake_workers(self.data_dir)

    def remove_abandoned_targets(self):
        """Remove a reclaimed drill's throwaway target, or a restore's staging database (drills.remove_leftovers).

        Their names carry the dead attempt's number, so a later attempt that
        already started keeps its own.
        """
        while True:
            try:
                execution = self.abandoned.get_nowait()
            except queue.Empty:
                return
            try:
                drills.remove_leftovers(execution)
            except Exception:
                self.abandoned.put(execution)  # the database was unavailable: tried again at the next interval
                raise

    # --- schedules (schedules.py) -------------------------------------------------------

    def enqueue_due_runs(self):
        """Queue the scheduled runs that are due, and note when the next one is."""
        if any(execution for _job, execution in schedules.enqueue_due()):
            wake_workers(self.data_dir)  # this worker claims next, within its limit; the others may take the rest
        self.next_due_ms = schedules.next_due()

    def until_next_due(self):
        """Seconds until the next scheduled run is due (wall clock), None when no job has a schedule."""
        if self.next_due_ms is None:
            return None
        return max(DUE_RETRY_SECONDS, (self.next_due_ms - now_ms()) / 1000)
    def beat(self):
        WorkerHeartbeat.beat(self.id, self.host, self.pid, self.started_at)

    def forget_heartbeat(self):
        """A worker that stops is no longer counted; a busy database leaves that to the minute's lapse."""
        try:
            WorkerHeartbeat.forget(self.id)
        except (OperationalError, InterfaceError) as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)

    # --- running ----------------------------------------------------------------------

    def start(self, execution):
        deadline = time.monotonic() + execution.job.timeout_seconds
        attempt = Restore if execution.type == ExecutionType.RESTORE else Run
        run = attempt(execution, execution.job, self.id, deadline)
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

    # --- background tasks: webhook follow-ups, housekeeping and the WAL checkpoint -------

    def background_tasks(self):
        """The tasks of each background thread, by the thread's name.

        Each thread runs on its own: a slow WPSec site may take minutes to
        answer, and neither the claim loop nor the checkpoint may wait on it.
        The chores also purge the Idempotency-Keys older than 24 hours, the
        heartbeats of workers gone for as long and expired dashboard sessions,
        drop what reclaimed restores left on database servers, check the
        notifications' dead man's switch and forget old outbox messages.
        Notifications go out from a thread of their own (outbox.Courier), so
        that a minutes-long site sync never holds them back.
        """
        threads = {"chores": [
            Task("spool replay", CHORES_EVERY_SECONDS, lambda: replay_spool(self.data_dir)),
            Task("website sync", CHORES_EVERY_SECONDS, wpsec.sync_requested_websites),
            Task("silent backup poll", CHORES_EVERY_SECONDS,
                 lambda: wpsec.poll_silent_remote_backups(self.poll_after_seconds)),
            Task("idempotency key purge", PURGE_EVERY_SECONDS, purge_idempotency_keys),
            Task("abandoned restore targets", CHORES_EVERY_SECONDS, self.remove_abandoned_targets),
            Task("heartbeat purge", PURGE_EVERY_SECONDS, heartbeats.purge_stale),
            Task("dashboard session purge", PURGE_EVERY_SECONDS, DashboardSession.purge_expired),
            Task("overdue check", OVERDUE_EVERY_SECONDS, notifications.check_overdue),
            Task("outbox purge", PURGE_EVERY_SECONDS, outbox.purge_finished),
        ], "notifications": [Task("notification delivery", NOTIFY_EVERY_SECONDS, self.courier.deliver_due)]}
        if opened().needs_checkpoints:
            threads["checkpoints"] = [Task("checkpoint", CHECKPOINT_EVERY_SECONDS, opened().checkpoint)]
        return threads

    @staticmethod
    def repeat(tasks, stopping):
        """Run `tasks` as they fall due, the first time one interval after the start, until `stopping` is set."""
        for task in tasks:
            task.postpone()
        try:
            while not stopping.wait(min(task.due_in() for task in tasks)):
                for task in tasks:
                    try:
                        task.run()
                    except Exception:  # one failing task must not stop the others
                        log.exception("background task %s failed", task.name)
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
        try:  # before it can be woken: a run triggered from then on finds it counted
            self.heartbeat.run()
        except OperationalError as exc:  # the first tick tries again
            log.warning("database unavailable: %s", exc)
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
        for name, tasks in self.background_tasks().items():
            threading.Thread(target=self.repeat, args=(tasks, stopping), name=name, daemon=True).start()
        try:
            while not self.done_stopping():
                self.tick()
                timeout = BUSY_POLL_SECONDS if self.runs or self.stopping_since else IDLE_POLL_SECONDS
                due = None if self.stopping_since else self.until_next_due()
                timeout = timeout if due is None else min(timeout, due)
                for ready in select.select([wake, signal_pipe], [], [], timeout)[0]:
                    drain(ready)
        finally:
            stopping.set()
            self.forget_heartbeat()
            self.courier.close()  # a send under way ends within its timeout; a message not sent waits in the outbox
            stop_listening(wake)
            signal.set_wakeup_fd(-1)
            signal_pipe.close()
            signal_wakeup.close()
        log.info("worker %s stopped", self.id)

    def tick(self, now=None):
        now = time.monotonic() if now is None else now
        self.reap_finished()
        duties = [lambda: self.renewals.run(now), self.watch_runs, lambda: self.heartbeat.run(now)]
        if self.stopping_since is None:
            duties = [lambda: self.reclaims.run(now), self.enqueue_due_runs, self.claim_and_start, *duties]
        elif now - self.stopping_since > self.grace_seconds:
            for run, _thread in self.runs.values():
                run.stop("shutdown")
        for duty in duties:
            try:
                duty()
            except OperationalError as exc:  # a locked or unreachable database: try again shortly
                log.warning("database unavailable: %s", exc)

    def claim_and_start(self):
        claimed = self.claim_pending()
        if claimed:
            # Before the runs start, so a ping's /start is queued ahead of the end of a run that ends at once.
            notifications.backups_started(claimed)
        for execution in claimed:
            self.start(execution)


# glibc's M_MMAP_THRESHOLD: blocks at least this large are mapped on their own and unmapped when freed.
M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES = -3, 4 * 1024 * 1024


def map_large_blocks():
    """Give the memory of large buffers (S3 parts, read-back pieces) back as soon as they are freed.

    Left to itself, glibc raises the threshold once such a block is freed, so
    the next backup's buffers come from per-thread arenas, which keep them
    and raise the worker's peak RSS, with age on above all (bench/RESULTS.md,
    "Off-site speed and memory"). A fixed threshold also stops that raising.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator is left as it is
        pass


def main():
    os.umask(config.UMASK)
    map_large_blocks()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.load()
    open_database(settings["DATABASE_URL"], settings["DATABASE_BUSY_SECONDS"])
    Worker(settings).serve()


if __name__ == "__main__":
    main()
