"""One attempt at one backup execution: the stages, from the dump to retention.

The worker (worker.py) claims an execution and runs `Run.execute()` in a
thread of its own. From the worker's thread it may call `Run.stop(reason)`
(cancel, timeout, shutdown, lost lease): that kills the attempt's child
processes at once, and the attempt's thread then removes its partial files
and writes the matching final state.

The pieces it drives each live in a module of their own: the source's dumper
(sources.py) writes into a Pipeline (pipeline.py: compression.py, then the
sinks of sinks.py), tools.py runs the dumper's processes, reporter.py writes
the stage, progress and logs, and retention.py prunes.

Every write to the execution row is a guarded transition
(`Execution.transition`) on this attempt still holding it (same worker, same
attempt, the status it left), so an attempt whose lease was taken over can
never overwrite its successor's state.

A backup is recorded Success as soon as its artifact is verified; retention
runs after that, and nothing in it can turn the backup back into a failure
(issue 12).
"""
import logging
import os
import threading
import time
import traceback

from peewee import OperationalError

import manifest
import retention
from compression import compressor
from leases import MAX_ATTEMPTS
from models import Execution, now_ms
from pipeline import Pipeline
from reporter import Reporter, band_end, band_progress, band_start, dump_fraction
from sinks import MANIFEST, LocalDirectorySink, job_directory, remove_partial_files
from sources import DUMPERS, BackupError, shown_source, source_kind, source_secrets
from statuses import ExecutionStatus, Stage
from tools import end_tool, kill_group, start_tool, wait_for_tool
from wpsec import follow_remote_backup

log = logging.getLogger("backhook.backup")

STOP_CAUSES = {"cancel": "a cancel", "timeout": "the job's timeout", "shutdown": "the worker stopping"}


class Stopped(Exception):
    """The attempt must stop: `reason` is cancel, timeout, shutdown, lost or ended (`detail`: as what)."""

    def __init__(self, reason, detail=None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def utc_stamp(ms):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms / 1000))


# --- one attempt -----------------------------------------------------------------------

class Run:
    def __init__(self, execution, job, worker_id, deadline):
        self.execution, self.job = execution, job
        self.deadline = deadline  # time.monotonic() past which the job's timeout has passed
        self.stop_reason = None
        self.stopped = threading.Event()
        self.children = []
        self.lock = threading.RLock()  # check() may stop() while spawn() holds it
        self.report = Reporter(execution, worker_id, source_secrets(job.source), on_lost=lambda: self.stop("lost"))
        self.started_ms = now_ms()
        self.stamp = utc_stamp(self.started_ms)
        self.directory = job_directory(job)
        self.size_hint = None
        self.recorded = None  # the artifact's location, once the execution is recorded Success with it

    # --- called from the worker's thread

    def stop(self, reason):
        """Make the attempt stop: remember why and kill its child processes now."""
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.stopped.set()
            for child in self.children:
                kill_group(child)

    # --- the interface dumpers use (see sources.py)

    def check(self):
        if self.stop_reason is None and time.monotonic() > self.deadline:
            self.stop("timeout")
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)

    def log(self, message, level="info"):
        self.report.log(message, level)

    def scratch_path(self, kind):
        return str(self.directory / f"{self.stamp}-{self.execution.id}.{kind}.partial")

    def spawn(self, argv, env=None):
        """Start a tool (tools.py) that this attempt's stop() kills with its whole process group."""
        with self.lock:
            self.check()
            child = start_tool(argv, env)
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
            self.log(f"{name} exited with status {status}, a warning: the backup holds what it could read",
                     "warning")

    def dumped(self, raw_bytes):
        """Map dumped bytes onto the Dumping band; never reaches its end before the dump does."""
        self.report.advance(progress=band_progress(Stage.DUMPING, dump_fraction(raw_bytes, self.size_hint)))

    # --- the stages

    def execute(self):
        """Run the attempt to its end and write its final state; never raises."""
        self.report.start()
        try:
            self.back_up()
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

    def enter(self, stage, message=None):
        self.check()
        self.report.enter(stage)
        if message:
            self.log(message)

    def back_up(self):
        job, execution = self.job, self.execution
        kind = source_kind(job.source)
        if kind == "wpsec":
            ending = follow_remote_backup(self)
            if ending:
                raise Stopped(*ending)
            return
        self.enter(Stage.INITIALIZING, f"attempt {execution.attempts} of {MAX_ATTEMPTS}")
        dumper = DUMPERS.get(kind)
        if dumper is None:
            raise BackupError(f"{kind}:// backups are not supported by this worker yet")
        self.directory.mkdir(parents=True, exist_ok=True)
        pipeline = Pipeline(compressor(job.compression), [LocalDirectorySink(self.directory)])
        name = f"{self.stamp}-{execution.id}.{dumper.suffix}{pipeline.extension}"
        self.size_hint = dumper.estimate(job.source)
        source_text = "a command" if kind == "command" else shown_source(job.source)
        self.log(f"backing up {source_text} to {', '.join(pipeline.locations(name))} ({job.compression})")

        self.dump_and_store(dumper, pipeline, name)
        try:
            self.enter(Stage.VERIFYING)
            size, sha256 = self.verify(pipeline)
            self.write_manifest(pipeline, name, size, sha256)
            self.record_success(pipeline.location, name, size, sha256)
        except BaseException:
            pipeline.abort()
            raise
        self.apply_retention(pipeline.sinks[0])  # the sink whose locations the executions record

    def dump_and_store(self, dumper, pipeline, name):
        """Dumping and Uploading: stream the dump through the pipeline, make it durable, put it in place."""
        compression = self.job.compression
        self.enter(Stage.DUMPING)
        started = time.monotonic()
        pipeline.open(name, self)
        try:
            dumper.dump(self.job.source, self, pipeline)
            self.check()
            self.log(f"dumped {pipeline.raw_bytes:,} bytes in {time.monotonic() - started:.1f} s")
            self.enter(Stage.UPLOADING)
            started = time.monotonic()
            size, _sha256 = pipeline.seal()
            pipeline.commit()
        except BaseException:
            pipeline.abort()
            raise
        self.log(f"stored {size:,} bytes ({compression}, {size / max(pipeline.raw_bytes, 1):.0%} of the dump); "
                 f"flushed to disk in {time.monotonic() - started:.1f} s")
        self.report.advance(progress=band_end(Stage.UPLOADING))

    def verify(self, pipeline):
        def read_so_far(fraction):
            self.check()
            self.report.advance(progress=band_progress(Stage.VERIFYING, fraction))

        size, sha256 = pipeline.verify(read_so_far)
        self.log(f"verified {size:,} bytes, sha256 {sha256}")
        return size, sha256

    def write_manifest(self, pipeline, name, size, sha256):
        """`<artifact>.json` beside the verified artifact; failing to write it fails the backup like any store."""
        self.check()
        document = manifest.manifest(self.job, self.execution.id, name, self.started_ms, pipeline.raw_bytes,
                                     size, sha256)
        pipeline.write_manifest(manifest.encode(document))
        self.log(f"manifest written: {name}{MANIFEST}")

    def record_success(self, location, name, size, sha256):
        """One guarded write makes the verified artifact the execution's: Success, before any pruning.

        The lease stays held until retention ends, so a worker that dies
        while pruning leaves an execution the reclaim can complete.
        """
        self.check()
        self.log(f"backup complete: {name}, {size:,} bytes")
        if not self.report.record(status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION,
                                  progress=band_start(Stage.APPLYING_RETENTION), ended_at=now_ms(),
                                  size=size, path=location, sha256=sha256):
            raise Stopped("lost")  # our lease lapsed and another worker owns the execution now
        self.recorded = location

    def apply_retention(self, sink):
        """Prune, then complete the execution; nothing here turns the recorded Success into a failure."""
        problem = None
        try:
            problem = retention.prune(self.job, self.execution.id, sink, self.check, self.log)
        except Stopped as stop:
            if stop.reason == "lost":
                log.warning("execution %s: retention stopped, another worker completed the execution",
                            self.execution.id)
                return
            problem = f"retention stopped by {STOP_CAUSES[stop.reason]} before it finished"
        except Exception as exc:  # a locked database, a bug: the backup stands all the same
            log.exception("execution %s: retention failed", self.execution.id)
            problem = f"retention failed: {exc}"
        if problem:
            self.log(f"{problem}; the backup succeeded and the older backups not yet pruned are kept", "error")
        try:
            self.report.finish(stage=Stage.COMPLETED, progress=100, retention_error=problem,
                               worker_id=None, lease_expires_at=None)
        except OperationalError as exc:
            log.error("execution %s: Success recorded, its completion not written (the reclaim completes it): %s",
                      self.execution.id, exc)

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
            self.report.log(f"cancelled on request: stopped the backup{cleanup}", "warning")
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
        if self.recorded:
            return []  # the execution reports the artifact now: it is no partial file
        return remove_partial_files(self.job, self.execution.id)

    def stop_children(self):
        with self.lock:
            children, self.children = self.children, []
        for child in children:
            end_tool(child)
