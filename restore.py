"""Restores: queueing one (`queue_restore`, for the API and the CLI alike) and running it (`Restore`).

A Restore is an execution of the backup's job with `type` Restore; it names
the Backup execution it restores (`restores`), the SRC it restores into
(`restore_target`: None for the job's own source, "scratch" for a drill) and
whether it may overwrite (`restore_replace`). The worker claims it before
Pending backups (leases.claim) and runs it through these stages:

- Initializing 0-5: the backup, the job and the target are loaded;
- Verifying 30-40: the stored artifact is read against its recorded SHA-256
  before anything is touched; a mismatch fails and changes nothing;
- `target.prepare()` refuses a target it must not write (targets.py);
- Restoring 40-90: the artifact is decompressed while it streams into
  `target.restore`, which leaves the target as it was when it fails;
- Checking 90-100: `target.check()` proves the result; its summary is logged;
- then Completed, with status Success.

A Restore records neither `path` nor `size`: those name stored artifacts,
and retention must never take a Restore for a backup that holds one.
"""
import hashlib
import json
import os
import queue
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import destinations
import encryption
from attempt import Attempt, Stopped
from compression import COMPRESSORS
from database import database
from leases import MAX_ATTEMPTS
from models import Execution, Job, now_ms
from pipeline import Readable
from reporter import RESTORE_BANDS, band_progress
from sinks import READ_BACK_PIECE
from sources import CHUNK, BackupError, Source, SourceError, parse_source, shown_source, source_secrets
from statuses import ExecutionStatus, ExecutionType, Stage
from targets import TARGETS
from wakeup import wake_workers

SCRATCH = "scratch"


class RestoreRefused(Exception):
    """A restore that cannot be queued: `status` is the HTTP status the API answers with."""

    def __init__(self, message, status):
        super().__init__(message)
        self.message, self.status = message, status


# --- queueing ------------------------------------------------------------------------

def restorable_backup(execution_id):
    """The Backup execution `execution_id` with its job, if a restore can start from it; else RestoreRefused."""
    backup = Execution.select(Execution, Job).join(Job).where(Execution.id == execution_id).first()
    if backup is None:
        raise RestoreRefused("Execution not found", 404)
    if backup.type != ExecutionType.BACKUP or backup.status != ExecutionStatus.SUCCESS:
        raise RestoreRefused(f"Execution {execution_id} is not a successful backup "
                             f"({backup.type}, {backup.status})", 409)
    kind = job_kind(backup.job)
    if kind == "wpsec":
        raise RestoreRefused("wpsec:// backups are restored by the WordPress plugin, not by backhook", 409)
    if backup.path is None or destinations.readable_copy(backup)[0] is None:
        raise RestoreRefused(f"the artifact of execution {execution_id} is gone from every destination "
                             "(pruned by retention or removed by hand)", 409)
    if kind == "command" and not backup.job.restore_command:
        raise RestoreRefused(f"job {backup.job.name} has no restore command: add one on the command line "
                             "(`backhook jobs add … --restore-command CMD`)", 409)
    return backup


def job_kind(job):
    try:
        return parse_source(job.source).kind
    except SourceError:
        raise RestoreRefused(f"job {job.name}'s source no longer parses; restore it with stock tools "
                             "(docs/restore.md)", 409) from None


def target_problem(backup, target):
    """Why `target` (a SRC, "scratch" or None) cannot receive `backup`, or None."""
    kind = job_kind(backup.job)
    if target is None:
        return None
    if target == SCRATCH:
        return None
    if kind == "command":
        return "a command: job restores through its restore command; it takes no target"
    if target.startswith("command:"):
        return "a command: target is never accepted; restore commands are defined on the command line"
    try:
        parsed = parse_source(target)
    except SourceError as exc:
        return f"target: {exc}"
    if parsed.kind != kind:
        return f"target must be a {kind} source like the job's, not {parsed.kind}"
    for copy in destinations.recorded_copies(backup):
        if parsed.path and Path(copy.location).is_absolute() and holds(parsed.path, copy.location):
            return f"target {parsed.path} holds the backup being restored; restoring there would overwrite it"
    return None


def holds(path, artifact):
    """Whether the artifact is `path` itself or lies under it."""
    path, artifact = Path(path).resolve(), Path(artifact).resolve()
    return artifact == path or path in artifact.parents


def queue_restore(execution_id, target=None, replace=False, data_dir=None, claimed_by=None, lease_ms=None):
    """Queue a Restore of the Backup `execution_id` and wake the workers; RestoreRefused says why not.

    The route and `backhook restore` both come through here, so both refuse alike.
    With `claimed_by`, the Restore is created already Running under that
    holder's lease, for `run_in_this_process`: no worker can claim it.
    """
    backup = restorable_backup(execution_id)
    if target == SCRATCH and job_kind(backup.job) == "command":  # see drills.py: no drill runs a restore command
        raise RestoreRefused("a command: job has no restore drill: only the job's author knows where its restore "
                             "command writes; restore through that command with `backhook restore ID`", 409)
    problem = target_problem(backup, target)
    if problem:
        raise RestoreRefused(problem, 400)
    held = {}
    if claimed_by:
        now = now_ms()
        held = dict(status=ExecutionStatus.RUNNING, stage=Stage.INITIALIZING, started_at=now, attempts=1,
                    worker_id=claimed_by, lease_expires_at=now + lease_ms)
    with database.atomic():
        restore = Execution.create(job=backup.job_id, type=ExecutionType.RESTORE, restores=backup.id,
                                   restore_target=target, restore_replace=bool(replace), **held)
    if data_dir is not None and not claimed_by:
        wake_workers(data_dir)
    return restore


# --- running -------------------------------------------------------------------------

def run_in_this_process(restore, holder, lease_ms, identity_file, on_tick):
    """Run the Restore `restore` (created held by `holder`) here, renewing its lease, until it ends.

    `backhook restore --identity-file` comes through here, so that the
    identity is read only by this process and never has to travel to a
    worker through the database or its environment. A cancel request stops
    it as it stops a worker's run; `on_tick()` is called between renewals
    (the CLI shows progress there). Returns the finished execution.
    """
    from leases import renew  # the worker's own renewal: the same guarded write
    restore = Execution.select(Execution, Job).join(Job).where(Execution.id == restore.id).get()
    run = Restore(restore, restore.job, holder, time.monotonic() + restore.job.timeout_seconds, identity_file)
    thread = threading.Thread(target=run.execute, name=f"restore-{restore.id}", daemon=True)
    thread.start()
    renewed = time.monotonic()
    try:
        while thread.is_alive():
            thread.join(0.5)
            on_tick()
            if time.monotonic() - renewed > lease_ms / 3000:
                if renew(holder, [restore.id], lease_ms):
                    run.stop("lost")
                renewed = time.monotonic()
            if Execution.select().where((Execution.id == restore.id) & Execution.cancel_requested).exists():
                run.stop("cancel")
    except BaseException:  # Ctrl-C: this process is the restore's only worker, so it stops it
        run.stop("cancel")
        thread.join()
        raise
    return Execution.get_by_id(restore.id)


class Restore(Attempt):
    what = "restore"
    bands = RESTORE_BANDS

    def __init__(self, execution, job, worker_id, deadline, identity_file=None):
        secrets = source_secrets(job.source) + source_secrets(execution.restore_target or "")
        super().__init__(execution, job, worker_id, deadline, sorted(set(secrets), key=len, reverse=True))
        self.artifact_size = None
        # The age identity's file, held only in this process: the CLI's --identity-file, else the
        # worker's BACKHOOK_AGE_IDENTITY_FILE (encryption.identity_file); never stored anywhere.
        self.identity_file = identity_file

    def perform(self):
        execution, job = self.execution, self.job
        self.enter(Stage.INITIALIZING, f"attempt {execution.attempts} of {MAX_ATTEMPTS}")
        backup = Execution.get_or_none(Execution.id == execution.restores)
        if backup is None or backup.status != ExecutionStatus.SUCCESS or backup.path is None:
            raise BackupError(f"backup {execution.restores} has no artifact any more (pruned by retention?)")
        target = execution.restore_target
        if target == SCRATCH:
            return self.drill(backup)
        source = self.target_source(target)
        shown = "the job's restore command" if source.kind == "command" else shown_source(target or job.source)
        self.log(f"restoring backup {backup.id} ({backup.path}) into {shown}"
                 + (", replacing what is there" if execution.restore_replace else ""))
        self.restore_into(backup, source, execution.restore_replace)
        self.complete()

    def target_source(self, target):
        if target is None and job_kind(self.job) == "command":
            return Source("command", command=self.job.restore_command)
        return parse_source(target or self.job.source)

    def drill(self, backup):
        try:
            import drills  # delivered by the restoredb part of issue 14
        except ModuleNotFoundError:
            raise BackupError("restore drills are not built yet") from None
        self.log(f"restore drill of backup {backup.id} ({backup.path})")
        try:
            with drills.scratch(parse_source(self.job.source), self) as scratch:
                self.restore_into(backup, scratch, replace=True)
        except Stopped as stop:
            if stop.reason not in ("lost", "shutdown"):  # else a later attempt ends the drill and records it
                ending = ExecutionStatus.CANCELLED if stop.reason == "cancel" else ExecutionStatus.FAILED
                drills.record(backup.id, self.execution.id, ending, now_ms())
            raise
        except BaseException:
            drills.record(backup.id, self.execution.id, ExecutionStatus.FAILED, now_ms())
            raise
        drills.record(backup.id, self.execution.id, ExecutionStatus.SUCCESS, now_ms())
        self.complete()  # only now: whoever sees the drill Success sees its scratch gone and the backup proven

    def restore_into(self, backup, source, replace):
        target_class = TARGETS.get(source.kind)
        if target_class is None:
            raise BackupError(f"{source.kind} restores are not supported by this worker yet")
        target = target_class(source, replace, self)
        with self.stored_artifact(backup) as (artifact, location):
            self.verify(artifact, backup, location)
            identity = encryption.identity_file(self.identity_file) if encryption.is_encrypted(location) else None
            target.prepare()
            self.enter(Stage.RESTORING)
            artifact.seek(0)
            started = time.monotonic()
            stored = ProgressReader(artifact, self)
            plain = encryption.Decrypting(identity, self.spawn, stored) if identity else stored
            with ReadAhead(decompressed(location, plain)) as stream:
                target.restore(stream)
            self.log(f"restored {stream.count:,} bytes of the dump in {time.monotonic() - started:.1f} s")
        self.enter(Stage.CHECKING)
        started = time.monotonic()
        summary = target.check()
        self.log(f"restore checked in {time.monotonic() - started:.1f} s: {json.dumps(summary, sort_keys=True)}")
        self.log(f"restore of backup {backup.id} complete")

    @contextmanager
    def stored_artifact(self, backup):
        """(open file, location) of the first recorded copy that exists.

        A local copy is read in place. A remote one (`not sink.is_local`) is
        first downloaded, in the Downloading stage, to a scratch file of this
        attempt: verifying and restoring from that one file means a store
        whose object changes between two reads cannot slip in unverified
        bytes. The scratch file goes when the restore ends, whichever way.
        """
        copy, sink = destinations.readable_copy(backup)
        if copy is None:
            raise BackupError(f"the artifact of backup {backup.id} is gone from every destination "
                              "(pruned by retention or removed by hand)")
        if sink.is_local:
            with sink.read(copy.location) as artifact:
                yield artifact, copy.location
            return
        scratch = Path(self.scratch_path("download"))
        scratch.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.download(sink, copy, backup, scratch)
            with open(scratch, "rb", buffering=0) as artifact:
                yield artifact, copy.location
        finally:
            scratch.unlink(missing_ok=True)

    def download(self, sink, copy, backup, scratch):
        """Downloading 5-30: the remote copy into `scratch`, in pieces."""
        self.enter(Stage.DOWNLOADING, f"downloading {copy.location} from {sink.describe()}")
        started, seen = time.monotonic(), 0
        with sink.read(copy.location) as remote, open(scratch, "xb") as local:
            while piece := remote.read(READ_BACK_PIECE):
                self.check()
                local.write(piece)
                seen += len(piece)
                self.report.advance(progress=band_progress(Stage.DOWNLOADING, seen / max(backup.size or 0, 1),
                                                           self.bands))
        self.log(f"downloaded {seen:,} bytes in {time.monotonic() - started:.1f} s")

    def complete(self):
        if not self.report.finish(status=ExecutionStatus.SUCCESS, stage=Stage.COMPLETED, progress=100,
                                  ended_at=now_ms(), worker_id=None, lease_expires_at=None):
            raise Stopped("lost")

    def verify(self, artifact, backup, location):
        """Verifying: the artifact's bytes against the SHA-256 recorded when it was stored.

        The same open file is then restored from, so a file renamed over the
        artifact after this check cannot slip in unverified.
        """
        self.enter(Stage.VERIFYING)
        size = os.fstat(artifact.fileno()).st_size
        self.artifact_size = size
        digest, seen = hashlib.sha256(), 0
        while piece := artifact.read(READ_BACK_PIECE):
            self.check()
            digest.update(piece)
            seen += len(piece)
            self.report.advance(progress=band_progress(Stage.VERIFYING, seen / max(size, 1), self.bands))
        if seen != backup.size or digest.hexdigest() != backup.sha256:
            raise BackupError(f"the artifact {location} does not match its recorded SHA-256 "
                              f"({seen:,} bytes, recorded {backup.size or 0:,}): it changed since the backup; "
                              "nothing was restored")
        self.log(f"verified {seen:,} bytes, sha256 {backup.sha256}")

    def restored(self, stored_bytes):
        """Map the stored bytes read so far onto the Restoring band."""
        self.report.advance(progress=band_progress(Stage.RESTORING, stored_bytes / max(self.artifact_size, 1), self.bands))


class ProgressReader(Readable):
    """The stored artifact as the decompressor reads it: each read may stop the restore and moves progress."""

    def __init__(self, stream, run):
        self.stream, self.run, self.count = stream, run, 0

    def read(self, size=-1):
        self.run.check()
        data = self.stream.read(size)
        self.count += len(data)
        self.run.restored(self.count)
        return data


class ReadAhead:
    """The decompressed dump, read by a thread of its own a few CHUNKs ahead of the target.

    Decompressing releases the GIL, so it runs on the second core while the
    target writes, as `zstd -dc | tar -x` runs in two processes (bench/RESULTS.md,
    "Restore speed and memory"). A stop or an error met by the thread is raised
    to the reader; closing stops the thread.
    """

    DEPTH = 4  # CHUNKs decompressed ahead: bounded memory

    def __init__(self, stream):
        self.stream, self.pieces = stream, queue.Queue(self.DEPTH)
        self.current, self.offset, self.ended = b"", 0, False
        self.count = 0  # bytes handed to the target
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self.fill, name="restore-read-ahead", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.closing.set()
        while self.thread.is_alive():
            try:
                self.pieces.get(timeout=0.1)  # frees a slot for a put() the thread is blocked in
            except queue.Empty:
                pass
        self.thread.join()

    def fill(self):
        try:
            while not self.closing.is_set():
                piece = self.stream.read(CHUNK)
                self.put(piece)
                if not piece:
                    return
        except (Stopped, BackupError, OSError) as exc:  # the reader raises it
            self.put(exc)
        except Exception as exc:  # the decompressor's own errors (zstd, gzip)
            self.put(BackupError(f"the artifact cannot be decompressed: {exc}; nothing was restored"))

    def put(self, item):
        while not self.closing.is_set():
            try:
                self.pieces.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def read(self, size=-1):
        parts, wanted = [], size
        while size < 0 or wanted > 0:
            if self.offset == len(self.current):
                if self.ended:
                    break
                piece = self.pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                self.current, self.offset, self.ended = piece, 0, not piece
                continue
            take = len(self.current) - self.offset if size < 0 else min(wanted, len(self.current) - self.offset)
            parts.append(self.current[self.offset:self.offset + take])  # copies only what is taken
            self.offset += take
            wanted -= take
        data = b"".join(parts)
        self.count += len(data)
        return data


def decompressed(path, stream):
    """The dump's own bytes from a stored artifact, by its file name's extension (the job may have changed since)."""
    path = path.removesuffix(encryption.EXTENSION)  # decrypted in front (encryption.Decrypting)
    for compressor in COMPRESSORS.values():
        if compressor.extension and path.endswith(compressor.extension):
            return compressor.reader(stream)
    return stream
