"""What every attempt at an execution shares, Backup or Restore: stopping, tools, logs and endings.

The worker (worker.py) claims an execution and runs `attempt.execute()` in a
thread of its own; `run_for` picks the attempt's class by the execution's
type (backup.Run, restore.Restore). From the worker's thread it may call
`stop(reason)` (cancel, timeout, shutdown, lost lease): that kills the
attempt's child processes at once, and the attempt's thread then cleans up
and writes the matching final state.

A subclass says what it is (`what`, for messages) and does its stages in
`perform()`.
"""
import logging
import os
import subprocess
import threading
import time
import traceback
from contextlib import contextmanager

from peewee import OperationalError

import destinations
from models import Execution, now_ms
from reporter import BANDS, Reporter
from sinks import job_directory, remove_partial_files
from sources import BackupError
from statuses import ExecutionStatus, Stage
from tools import end_tool, kill_group, start_tool, wait_for_tool

log = logging.getLogger("backhook.backup")

STOP_CAUSES = {"cancel": "a cancel", "timeout": "the job's timeout", "shutdown": "the worker stopping"}


class Stopped(Exception):
    """The attempt must stop: `reason` is cancel, timeout, shutdown, lost or ended (`detail`: as what)."""

    def __init__(self, reason, detail=None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def utc_stamp(ms):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms / 1000))


class Attempt:
    what = "execution"  # "backup", "restore": how messages name what was stopped
    bands = BANDS       # each stage's share of the progress (reporter.py)

    def __init__(self, execution, job, worker_id, deadline, secrets):
        self.execution, self.job = execution, job
        self.deadline = deadline  # time.monotonic() past which the job's timeout has passed
        self.stop_reason = None
        self.stopped = threading.Event()
        self.children = []
        self.interrupts = []  # what else stop() calls: it ends a blocking read no child process holds
        self.lock = threading.RLock()  # check() may stop() while spawn() holds it
        self.report = Reporter(execution, worker_id, secrets, on_lost=lambda: self.stop("lost"), bands=self.bands)
        self.started_ms = now_ms()
        self.stamp = utc_stamp(self.started_ms)
        self.directory = job_directory(job)

    # --- called from the worker's thread

    def stop(self, reason):
        """Make the attempt stop: remember why and kill its child processes now."""
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.stopped.set()
            for child in self.children:
                kill_group(child)
            for interrupt in self.interrupts:
                interrupt()

    # --- the interface sources and targets use (sources.py, targets.py)

    def check(self):
        if self.stop_reason is None and time.monotonic() > self.deadline:
            self.stop("timeout")
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)

    def log(self, message, level="info"):
        self.report.log(message, level)

    def scratch_path(self, kind):
        """A file for this attempt's own use, in the job's directory: what reclaims and endings remove."""
        return str(self.directory / f"{self.stamp}-{self.execution.id}.{kind}.partial")

    @contextmanager
    def interrupting(self, interrupt):
        """While inside, a stop() also calls `interrupt()`, as it kills the attempt's tools (a download's socket)."""
        with self.lock:
            self.check()
            self.interrupts.append(interrupt)
        try:
            yield
        finally:
            with self.lock:
                self.interrupts.remove(interrupt)

    def spawn(self, argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
        """Start a tool (tools.py) that this attempt's stop() kills with its whole process group."""
        with self.lock:
            self.check()
            child = start_tool(argv, env, stdin=stdin, stdout=stdout)
            self.children.append(child)
        return child

    def wait_tool(self, child, warning_statuses=()):
        """Wait for a tool; its stderr becomes the error if it failed, or warnings if not.

        An exit status in `warning_statuses` (tar's 1) is not a failure: it is logged as a warning.
        """
        status, stderr = wait_for_tool(child)
        self.check()
        name = os.path.basename(child.args[0])
        if status != 0 and status not in warning_statuses:
            raise BackupError(f"{name} exited with status {status}: {stderr or '(no error output)'}")
        for line in stderr.splitlines()[-20:]:
            self.log(f"{name}: {line}", "warning")
        if status != 0:
            self.log(f"{name} exited with status {status}, a warning: the {self.what} holds what it could read",
                     "warning")

    # --- the stages

    def execute(self):
        """Run the attempt to its end and write its final state; never raises."""
        self.report.start()
        try:
            self.perform()
        except Stopped as stop:
            self.stop_children()
            self.end_stopped(stop)
        except (BackupError, OSError) as exc:
            self.stop_children()
            self.end_failed(str(exc))
        except Exception as exc:  # a bug must still end the execution, not leave it Running
            log.error("execution %s crashed:\n%s", self.execution.id, self.report.scrub(traceback.format_exc()))
            self.stop_children()
            self.end_failed(f"internal error in the worker: {exc!r}")
        finally:
            self.report.close()

    def perform(self):
        raise NotImplementedError

    def enter(self, stage, message=None):
        self.check()
        self.report.enter(stage)
        if message:
            self.log(message)

    # --- endings

    def end_failed(self, message):
        message = self.report.scrub(message)
        self.remove_partials()
        self.report.log(message, "error")
        self.finish(status=ExecutionStatus.FAILED, stage=Stage.FAILED, error=message, ended_at=now_ms(),
                    worker_id=None, lease_expires_at=None)

    def end_stopped(self, stop):
        if stop.reason == "lost":
            log.warning("execution %s: lease lost to another worker; abandoning this attempt",
                        self.execution.id)
            return
        if stop.reason == "ended":
            log.info("execution %s ended %s by its remote backup's webhook; this attempt is done",
                     self.execution.id, stop.detail)
            return
        removed = self.remove_partials()
        cleanup = f"; removed {', '.join(removed)}" if removed else ""
        if stop.reason == "cancel":
            self.report.log(f"cancelled on request: stopped the {self.what}{cleanup}", "warning")
            self.finish(status=ExecutionStatus.CANCELLED, stage=Stage.CANCELLED, ended_at=now_ms(),
                        worker_id=None, lease_expires_at=None)
        elif stop.reason == "timeout":
            self.end_failed(f"timed out after {self.job.timeout_seconds} s (the job's timeout){cleanup}")
        else:  # shutdown: the attempt did not fail, so it goes back to the queue without using one up
            self.report.log(f"worker stopping: attempt interrupted and re-queued{cleanup}", "warning")
            self.finish(status=ExecutionStatus.PENDING, stage=Stage.QUEUED, attempts=Execution.attempts - 1,
                        worker_id=None, lease_expires_at=None)

    def finish(self, **fields):
        try:
            self.report.finish(**fields)
        except OperationalError as exc:  # the lease lapses, and the reclaim ends the execution
            log.error("execution %s: final state %s not written: %s", self.execution.id, fields["status"], exc)

    def remove_partials(self):
        """Remove what this unfinished attempt left on every destination and in its scratch directory; their names."""
        removed = destinations.remove_leftovers(self.job, self.execution.id, self.log)
        return removed + [name for name in remove_partial_files(self.job, self.execution.id) if name not in removed]

    def stop_children(self):
        with self.lock:
            children, self.children = self.children, []
        for child in children:
            end_tool(child)
