"""One attempt at one backup execution: stages, streaming store, verify, retention.

The worker (worker.py) claims an execution and runs `Run.execute()` in a
thread of its own. From the worker's thread it may call `Run.stop(reason)`
(cancel, timeout, shutdown, lost lease): that kills the attempt's child
processes at once, and the attempt's thread then removes its partial files
and writes the matching final state.

Every write to the execution row is a guarded transition
(`Execution.transition`) on this attempt still holding it (same worker, same
attempt, the status it left), so an attempt whose lease was taken over can
never overwrite its successor's state.

A backup is recorded Success as soon as its artifact is verified; retention
runs after that, and nothing in it can turn the backup back into a failure
(issue 12).
"""
import fcntl
import gzip
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard
from peewee import Node, OperationalError

import config
import models
from leases import MAX_ATTEMPTS
from models import CANCELLED, FAILED, PENDING, RUNNING, SUCCESS, Execution, now_ms
from sources import CHUNK, DUMPERS, BackupError, shown_source, source_kind, source_secrets
from wpsec import follow_remote_backup

log = logging.getLogger("backhook.backup")

# Each stage owns a band of the global 0-100 progress (README.md, "Stages and progress").
BANDS = {
    "Initializing": (0, 5),
    "Dumping": (5, 60),
    "Uploading": (60, 85),
    "Verifying": (85, 95),
    "Applying Retention": (95, 100),
}
FLUSH_INTERVAL = 1.0        # seconds between progress/log writes of one execution
UNKNOWN_SIZE_SCALE = 256 * 1024 * 1024  # bytes at which an unsized dump shows half its band
FINISH_PATIENCE_SECONDS = 300  # how long a locked database may delay an attempt's final state
STDERR_TAIL = 4000          # characters of a tool's stderr kept for the error message
EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}
WRITEBACK_BYTES = 32 * CHUNK  # how much of an artifact may wait in the page cache for its final fsync
READ_BACK_PIECE = 4 * CHUNK   # bytes per read when verifying; two such buffers are in use
# zstd level 3, as the zstd tool, compressing in threads of its own (C, no GIL)
# while this thread reads the dump, hashes and writes. Two threads, where the
# zstd tool uses one by default: backhook also hashes the artifact twice and
# fsyncs it, and needs the second core to stay within 0.8x of `tar | zstd`
# (bench/RESULTS.md). Each job in flight holds its input and output: zstd's
# default job for level 3, 8 MiB, takes the worker to ~120 MB peak RSS;
# 4 MiB jobs keep it near 90 MB for 0.7% (directory) to 1.8% (SQLite) more output.
ZSTD_THREADS = 2
ZSTD_JOB_BYTES = 4 * CHUNK
STOP_CAUSES = {"cancel": "a cancel", "timeout": "the job's timeout", "shutdown": "the worker stopping"}


class Stopped(Exception):
    """The attempt must stop: `reason` is cancel, timeout, shutdown, lost or ended (`detail`: as what)."""

    def __init__(self, reason, detail=None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# --- where artifacts go ------------------------------------------------------------

def job_directory(job):
    """`<dest>/<job name>`, or the job id for a name stored before names were checked."""
    return Path(job.destination) / (job.id if models.job_name_problem(job.name) else job.name)


def partial_files(job, execution_id):
    """Every file an unfinished attempt of this execution may have left behind.

    That is its `.partial` files, and also an artifact already renamed into
    place by a worker that died before recording its success: no execution
    reports it, so retention would never delete it.
    """
    return list(job_directory(job).glob(f"*-{execution_id}.*"))


def remove_partial_files(job, execution_id):
    removed = []
    for path in partial_files(job, execution_id):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def utc_stamp(ms):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms / 1000))


# --- the artifact being written -------------------------------------------------------

class Writeback:
    """Sends a file being written to disk in the background, each WRITEBACK_BYTES.

    The artifact must be fsynced before it is renamed into place. Left to the
    end, that fsync writes the whole artifact while nothing else happens (about
    0.3 s for 600 MB here); synced as it grows, the disk writes overlap the dump
    and the final fsync only has the tail left. The thread syncs its own copy
    of the descriptor, so closing the file never leaves it syncing a stranger.
    """

    def __init__(self, fd):
        self.fd, self.unsynced, self.error = os.dup(fd), 0, None
        self.due, self.stopping = threading.Event(), False
        self.thread = threading.Thread(target=self.sync_when_due, name="writeback", daemon=True)
        self.thread.start()

    def wrote(self, count):
        self.unsynced += count
        if self.unsynced >= WRITEBACK_BYTES:
            self.unsynced = 0
            self.due.set()

    def sync_when_due(self):
        try:
            while self.due.wait() and not self.stopping:
                self.due.clear()
                os.fdatasync(self.fd)
        except OSError as exc:
            # Linux reports a failed writeback to one fsync only: keep it for stop().
            self.error = exc
        finally:
            os.close(self.fd)

    def stop(self):
        """End the thread; raises the error of a failed background sync."""
        self.stopping = True
        self.due.set()
        self.thread.join()
        if self.error is not None:
            raise self.error


class HashingFile:
    """The artifact's file: counts and hashes every byte written, and writes it back as it grows."""

    def __init__(self, file):
        self.file, self.size, self.sha256 = file, 0, hashlib.sha256()
        self.writeback = Writeback(file.fileno())

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        written = self.file.write(data)
        self.writeback.wrote(len(data))
        return written

    def flush(self):
        self.file.flush()


def open_compressor(compression, out):
    if compression == "zstd":
        parameters = zstandard.ZstdCompressionParameters.from_level(
            3, threads=ZSTD_THREADS, job_size=ZSTD_JOB_BYTES)
        return zstandard.ZstdCompressor(compression_params=parameters).stream_writer(
            out, closefd=False, write_size=CHUNK)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)
    return out


def create_artifact(path):
    """A new artifact file, open for writing: 0600, or 0640 for the group of BACKHOOK_ARTIFACT_GROUP.

    With a group, the job's directory becomes 0750 and that group's too, so the group can reach it.
    """
    group = config.load()["ARTIFACT_GROUP"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
            os.fchmod(fd, 0o640)
            directory = os.path.dirname(path)
            os.chown(directory, -1, group)
            os.chmod(directory, 0o750)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise OSError(f"cannot give {path} to group {group} (BACKHOOK_ARTIFACT_GROUP): {exc.strerror}") from None
    return os.fdopen(fd, "wb")


class ArtifactWriter:
    """The sink dumpers write into: compress, hash and write to `<artifact>.partial`."""

    def __init__(self, run, partial, compression):
        self.run, self.partial = run, partial
        self.file = create_artifact(partial)
        self.stored = HashingFile(self.file)
        self.compressor = open_compressor(compression, self.stored)
        self.raw_bytes = 0

    def write(self, chunk):
        self.run.check()
        self.compressor.write(chunk)
        self.raw_bytes += len(chunk)
        self.run.dumped(self.raw_bytes)

    def seal(self):
        """Finish compression and make the bytes durable; returns (size, sha256)."""
        if self.compressor is not self.stored:
            self.compressor.close()
        self.compressor = None  # ends zstd's threads now, not whenever this writer is collected
        self.file.flush()
        self.stored.writeback.stop()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.stored.size, self.stored.sha256.hexdigest()

    def discard(self):
        self.compressor = None  # ends zstd's threads now, not whenever this writer is collected
        try:
            self.stored.writeback.stop()
        except OSError:
            pass  # the bytes it failed to write are being thrown away
        try:
            self.file.close()
        except OSError:
            pass  # buffered bytes that cannot be written (a full disk) are being thrown away anyway
        Path(self.partial).unlink(missing_ok=True)


def read_back(path, read_so_far):
    """Re-read a stored file from disk; returns (bytes read, SHA-256 hex digest).

    A helper thread reads the next piece while this one hashes the last, so
    that the re-read costs little more than the hashing itself (both release
    the GIL). `read_so_far(count)` is called after each piece and may raise
    to stop; the pending read is waited for before the file is closed.
    """
    digest, seen = hashlib.sha256(), 0
    filling, full = bytearray(READ_BACK_PIECE), bytearray(READ_BACK_PIECE)
    with open(path, "rb", buffering=0) as stream, \
            ThreadPoolExecutor(1, thread_name_prefix="read-back") as reader:
        pending = reader.submit(stream.readinto, filling)
        while count := pending.result():
            filling, full = full, filling
            pending = reader.submit(stream.readinto, filling)
            digest.update(memoryview(full)[:count])
            seen += count
            read_so_far(seen)
    return seen, digest.hexdigest()


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- progress and logs, batched ----------------------------------------------------

class Reporter:
    """An attempt's stage, progress and log lines, written by a heartbeat thread once a second.

    The attempt's own thread only changes them in memory, so a locked database
    never stalls the dump, and a tool that prints nothing for an hour still
    has its stage and progress written while it runs (issue 12). Every write
    is a transition guarded on this attempt still holding the execution in the
    status it last wrote; `on_lost` is called when a write finds it taken over.
    """

    def __init__(self, execution, worker_id, secrets, on_lost):
        self.execution_id, self.owner = execution.id, (worker_id, execution.attempts)
        self.secrets, self.on_lost = secrets, on_lost
        self.status = RUNNING
        self.stage, self.progress = execution.stage, execution.progress
        self.lines, self.changed = [], False
        self.state_lock = threading.Lock()  # the attempt's thread changes, the heartbeat reads
        self.write_lock = threading.Lock()  # one write at a time, in order
        self.closed = threading.Event()
        self.heartbeat = threading.Thread(target=self.beat, name=f"report-{execution.id}", daemon=True)

    def scrub(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def log(self, message, level="info"):
        message = self.scrub(message)
        log.log(logging.WARNING if level != "info" else logging.INFO, "%s: %s", self.execution_id, message)
        with self.state_lock:
            self.lines.append({"timestamp": now_ms(), "level": level, "stage": self.stage, "message": message})
            self.changed = True

    def advance(self, stage=None, progress=None):
        with self.state_lock:
            if stage is not None and stage != self.stage:
                self.stage, self.changed = stage, True
            if progress is not None and int(progress) > self.progress:  # never backwards
                self.progress, self.changed = int(progress), True

    # --- writing

    def start(self):
        self.heartbeat.start()

    def beat(self):
        try:
            while not self.closed.wait(FLUSH_INTERVAL):
                self.flush()
        finally:
            models.database.close()  # this thread's connection

    def flush(self):
        """Write what changed since the last write; a locked database only delays it."""
        with self.write_lock:
            if self.closed.is_set():
                return
            with self.state_lock:
                if not self.changed:
                    return
                fields, lines = dict(stage=self.stage, progress=self.progress), self.lines
                self.lines, self.changed = [], False
            try:
                written = self.write(fields, lines)
            except OperationalError as exc:
                log.warning("%s: progress not written yet, database unavailable: %s", self.execution_id, exc)
                with self.state_lock:
                    self.lines[:0], self.changed = lines, True
                return
        if not written:
            self.on_lost()

    def record(self, **fields):
        """Write `fields` now, with everything so far; False if the attempt no longer holds the execution.

        A locked database delays it; it is retried, not lost. If the lock
        outlasts the lease and another worker takes the execution over, this
        write then finds the row no longer ours. A write that failed after it
        committed (a connection lost at COMMIT) is recognised on the retry.
        """
        delay, deadline, retried = 0.05, time.monotonic() + FINISH_PATIENCE_SECONDS, False
        with self.write_lock:
            with self.state_lock:
                self.stage = fields.get("stage", self.stage)
                self.progress = max(self.progress, fields.get("progress", self.progress))
                fields = dict(stage=self.stage, progress=self.progress) | fields
                lines, self.lines, self.changed = self.lines, [], False
            while True:
                try:
                    written = self.write(fields, lines) or (retried and self.shows(fields))
                    break
                except OperationalError as exc:
                    if time.monotonic() > deadline:
                        raise
                    log.warning("%s: state not written yet, database unavailable: %s", self.execution_id, exc)
                    time.sleep(delay)
                    delay, retried = min(delay * 2, 1.0), True
            if written:
                self.status = fields.get("status", self.status)
            return written

    def finish(self, **fields):
        """The attempt's last write: stops the heartbeat, then `record`s."""
        self.closed.set()
        return self.record(**fields)

    def close(self):
        self.closed.set()
        if self.heartbeat.is_alive():
            self.heartbeat.join()

    def write(self, fields, lines):
        with models.database.atomic():
            return Execution.transition(self.execution_id, self.status, fields, owner=self.owner, logs=lines)

    def shows(self, fields):
        """Whether the row already holds `fields` (plain values only), as this attempt's write left it."""
        row = Execution.get_or_none(Execution.id == self.execution_id)
        plain = {name: value for name, value in fields.items() if not isinstance(value, Node)}
        return row is not None and all(getattr(row, name) == value for name, value in plain.items())


def kill_group(child):
    """Kill a tool and everything it started (it leads its own process group)."""
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# The guardian: `python -I -c GUARDIAN <fd>` reads "+group" and "-group" lines
# from its pipe until EOF, then kills every process group still registered.
GUARDIAN = r"""
import os, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)  # it ends when its worker does, never before
fd, groups, pending = int(sys.argv[1]), set(), b""
while chunk := os.read(fd, 65536):
    *lines, pending = (pending + chunk).split(b"\n")
    for line in lines:
        (groups.add if line.startswith(b"+") else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class ToolGuard:
    """Ties every tool's lifetime to this process: when it dies, however it dies, its tools die too.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that forked the child
    exits, and each attempt spawns from a thread of its own; and it reaches
    only the direct child, never what a `command:` job's shell started. A
    guardian process holds the read end of a pipe whose write end only this
    process holds (close-on-exec, so no tool inherits it); the kernel closes
    it when this process dies, kill -9 included, and the guardian, reading
    EOF, kills the process groups still registered (issue 18).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.groups, self.guardian, self.pipe = set(), None, None

    def watch(self, group):
        self.send(f"+{group}\n", group, self.groups.add)

    def release(self, group):
        self.send(f"-{group}\n", group, self.groups.discard)

    def send(self, line, group, change):
        with self.lock:
            change(group)
            try:
                if self.guardian is None or self.guardian.poll() is not None:
                    self.start_guardian()  # writes every registered group, this one included
                else:
                    os.write(self.pipe, line.encode())  # under PIPE_BUF: one atomic write
            except OSError as exc:  # a dead guardian: the next call starts another
                log.error("tool guardian unavailable, %s is unguarded for now: %s", group, exc)

    def start_guardian(self):
        if self.pipe is not None:
            os.close(self.pipe)
        read_end, self.pipe = os.pipe()
        try:
            self.guardian = subprocess.Popen([sys.executable, "-I", "-c", GUARDIAN, str(read_end)],
                                             pass_fds=(read_end,), stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        finally:
            os.close(read_end)
        os.write(self.pipe, "".join(f"+{group}\n" for group in self.groups).encode())


TOOLS = ToolGuard()


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
        self.stamp = utc_stamp(now_ms())
        self.directory = job_directory(job)
        self.size_hint = None
        self.recorded = None  # the artifact, once the execution is recorded Success with it

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
        """Start a tool in its own process group, stdout piped, stderr kept for errors."""
        stderr = tempfile.TemporaryFile()
        with self.lock:
            self.check()
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr, env={**os.environ, **(env or {})},
                                         start_new_session=True)
            except FileNotFoundError:
                stderr.close()
                raise BackupError(f"{argv[0]} is not installed (not found on PATH)") from None
            child.stderr_file = stderr
            self.children.append(child)
            TOOLS.watch(child.pid)
        try:
            # A pipe larger than the default 64 KiB lets the tool run on while
            # this thread compresses the previous chunk.
            fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass  # above the system's pipe-max-size: the default still works
        return child

    def wait_tool(self, child, warning_statuses=()):
        """Wait for a tool; its stderr becomes the error if it failed, or warnings if not.

        An exit status in `warning_statuses` (tar's 1) is not a failure: it is logged as a warning.
        """
        status = child.wait()
        TOOLS.release(child.pid)
        with child.stderr_file as stream:
            # Only the tail: a chatty tool's stderr can be larger than memory.
            stream.seek(max(0, stream.seek(0, os.SEEK_END) - STDERR_TAIL))
            stderr = stream.read().decode(errors="replace").strip()
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
        low, high = BANDS["Dumping"]
        if self.size_hint:
            fraction = min(raw_bytes / self.size_hint, 0.99)
        else:
            fraction = 1 - 0.5 ** (raw_bytes / UNKNOWN_SIZE_SCALE)
        self.report.advance(progress=low + (high - low) * fraction)

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
        self.report.advance(stage=stage, progress=BANDS[stage][0])
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
        self.enter("Initializing", f"attempt {execution.attempts} of {MAX_ATTEMPTS}")
        dumper = DUMPERS.get(kind)
        if dumper is None:
            raise BackupError(f"{kind}:// backups are not supported by this worker yet")
        self.directory.mkdir(parents=True, exist_ok=True)
        artifact = self.directory / f"{self.stamp}-{execution.id}.{dumper.suffix}{EXTENSIONS[job.compression]}"
        self.size_hint = dumper.estimate(job.source)
        source_text = "a command" if kind == "command" else shown_source(job.source)
        self.log(f"backing up {source_text} to {artifact} ({job.compression})")

        size, sha256 = self.dump_and_store(dumper, artifact)
        try:
            self.enter("Verifying")
            self.verify(artifact, size, sha256)
            self.record_success(artifact, size, sha256)
        except BaseException:
            artifact.unlink(missing_ok=True)
            raise
        self.apply_retention()

    def dump_and_store(self, dumper, artifact):
        """Dumping and Uploading: stream the dump into `<artifact>.partial`, make it durable, rename it."""
        compression = self.job.compression
        self.enter("Dumping")
        started = time.monotonic()
        writer = ArtifactWriter(self, str(artifact) + ".partial", compression)
        try:
            dumper.dump(self.job.source, self, writer)
            self.check()
            self.log(f"dumped {writer.raw_bytes:,} bytes in {time.monotonic() - started:.1f} s")
            self.enter("Uploading")
            started = time.monotonic()
            size, sha256 = writer.seal()
        except BaseException:
            writer.discard()
            raise
        os.rename(writer.partial, artifact)
        fsync_directory(self.directory)
        self.log(f"stored {size:,} bytes ({compression}, {size / max(writer.raw_bytes, 1):.0%} of the dump); "
                 f"flushed to disk in {time.monotonic() - started:.1f} s")
        self.report.advance(progress=BANDS["Uploading"][1])
        return size, sha256

    def verify(self, artifact, size, sha256):
        low, high = BANDS["Verifying"]

        def read_so_far(seen):
            self.check()
            self.report.advance(progress=low + (high - low) * seen / max(size, 1))

        seen, digest = read_back(artifact, read_so_far)
        if seen != size or digest != sha256:
            raise BackupError(f"verification failed: {artifact} does not match what was written "
                              f"({seen:,} of {size:,} bytes read back)")
        self.log(f"verified {size:,} bytes, sha256 {sha256}")

    def record_success(self, artifact, size, sha256):
        """One guarded write makes the verified artifact the execution's: Success, before any pruning.

        The lease stays held until retention ends, so a worker that dies
        while pruning leaves an execution the reclaim can complete.
        """
        self.check()
        self.log(f"backup complete: {artifact.name}, {size:,} bytes")
        if not self.report.record(status=SUCCESS, stage="Applying Retention",
                                  progress=BANDS["Applying Retention"][0], ended_at=now_ms(),
                                  size=size, path=str(artifact), sha256=sha256):
            raise Stopped("lost")  # our lease lapsed and another worker owns the execution now
        self.recorded = artifact

    def apply_retention(self):
        """Prune, then complete the execution; nothing here turns the recorded Success into a failure."""
        problem = None
        try:
            problem = self.prune()
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
            self.report.finish(stage="Completed", progress=100, retention_error=problem,
                               worker_id=None, lease_expires_at=None)
        except OperationalError as exc:
            log.error("execution %s: Success recorded, its completion not written (the reclaim completes it): %s",
                      self.execution.id, exc)

    def prune(self):
        """Delete the job's successful artifacts older than its `keep` newest; the problems met, or None.

        Each file is first forgotten in the database (committed), then
        deleted, so no row ever names a missing file. The newest successful
        artifact and this attempt's own are never deleted, whatever `keep` says.
        """
        keep = self.job.keep
        if not keep or keep < 1:
            return None
        holders = list(Execution.select(Execution.id, Execution.path)
                       .where((Execution.job == self.job.id) & (Execution.status == SUCCESS)
                              & Execution.path.is_null(False))
                       .order_by(Execution.created_at.desc(), Execution.id.desc()))
        expired = [old for old in holders[keep:] if old.id != self.execution.id]
        deleted, problems = 0, []
        for old in expired:
            self.check()
            with models.database.atomic():
                forgotten = Execution.transition(old.id, SUCCESS, dict(path=None), where=Execution.path == old.path)
            if not forgotten:
                continue  # another run pruned it meanwhile
            try:
                Path(old.path).unlink(missing_ok=True)
            except OSError as exc:
                # Named again, so that no file is left unaccounted for and the next run tries again.
                with models.database.atomic():
                    Execution.transition(old.id, SUCCESS, dict(path=old.path), where=Execution.path.is_null())
                problems.append(f"could not delete {old.path} (execution {old.id}): {exc.strerror or exc}")
                self.log(f"retention: {problems[-1]}; it is kept", "error")
                continue
            deleted += 1
            self.log(f"retention: deleted {old.path} (execution {old.id})")
        self.log(f"retention: keeping the {min(len(holders), keep)} newest of at most {keep} backups; "
                 f"deleted {deleted}")
        return "; ".join(problems) or None

    # --- endings

    def end_failed(self, message):
        message = self.report.scrub(message)
        self.remove_partials()
        self.report.log(message, "error")
        self.finish(status=FAILED, stage="Failed", error=message, ended_at=now_ms(),
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
            self.finish(status=CANCELLED, stage="Cancelled", ended_at=now_ms(),
                        worker_id=None, lease_expires_at=None)
        elif stop.reason == "timeout":
            self.end_failed(f"timed out after {self.job.timeout_seconds} s (the job's timeout){cleanup}")
        else:  # shutdown: the attempt did not fail, so it goes back to the queue without using one up
            self.report.log(f"worker stopping: attempt interrupted and re-queued{cleanup}", "warning")
            self.finish(status=PENDING, stage="Queued", attempts=Execution.attempts - 1,
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
            kill_group(child)
            child.wait()
            TOOLS.release(child.pid)
            if child.stdout:
                child.stdout.close()
            if not child.stderr_file.closed:
                child.stderr_file.close()
