"""Where artifacts are stored: today a local directory, behind the interface a remote store will share.

A sink is one destination of a job. `sink.open(name)` starts the artifact
`name` and returns its writer, which the pipeline (pipeline.py) drives in
this order:

- `write(data)` any number of times, then `close()`: the bytes are complete
  and durable, but not yet under the artifact's name;
- `commit()`: the artifact appears under its name, whole (a local rename, an
  S3 multipart upload completed, an rclone move);
- `verify(size, sha256, progress)`: the stored copy is read back and checked
  against what was written; BackupError if it differs;
- `write_manifest(data)`: the manifest (manifest.py) appears beside the
  artifact, under the artifact's name and `.json`, as durably as the artifact;
- `abort()`, at any point until the execution records the artifact: nothing
  of it is left, neither a partial file nor the committed artifact or manifest.

Committing before verifying is what every store allows (an S3 object can only
be read once it is complete); an artifact that fails verification is removed
by `abort()` before anything could report it, and older artifacts are only
pruned once the new one is recorded (retention.py), so the last good backup
is never lost.
"""
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import config
import models
from sources import CHUNK, BackupError

# How much of an artifact may wait in the page cache for its final fsync
# (bench/RESULTS.md, "Figures behind the code: pipeline").
WRITEBACK_BYTES = 32 * CHUNK
READ_BACK_PIECE = 4 * CHUNK  # bytes per read when verifying; two such buffers are in use
PARTIAL = ".partial"
MANIFEST = ".json"  # manifest.py: `<artifact>.json` lies beside each artifact


def manifest_location(location):
    """Where the manifest of the artifact stored at `location` lies."""
    return location + MANIFEST


def is_artifact_name(name):
    """Whether a file name in a job's directory can be an artifact: neither a partial file nor a manifest."""
    return not name.endswith((PARTIAL, MANIFEST))


def job_directory(job):
    """`<dest>/<job name>` (the job id for a name stored before names were checked) on its first destination.

    It holds an attempt's scratch files too; when the first destination is
    no local directory, they go to `<data dir>/scratch/<job name>` instead.
    """
    folder = job.id if models.job_name_problem(job.name) else job.name
    if Path(job.destination).is_absolute():
        return Path(job.destination) / folder
    return Path(config.load()["DATA_DIR"]) / "scratch" / folder


def partial_files(job, execution_id):
    """Every file an unfinished attempt of this execution may have left behind.

    That is its `.partial` files, and also an artifact (and its manifest)
    already renamed into place by a worker that died before recording its
    success: no execution reports it, so retention would never delete it.
    """
    return list(job_directory(job).glob(f"*-{execution_id}.*"))


def remove_partial_files(job, execution_id):
    removed = []
    for path in partial_files(job, execution_id):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


class LocalDirectorySink:
    """A directory on this machine; each artifact is written as `<name>.partial` and renamed into place.

    `directory` is the job's own folder; `root`, the destination it lies in
    when the sink was built from one (destinations.sink_for).
    """

    is_local = True  # a plain file: the download honours Range requests, a restore reads it in place

    def __init__(self, directory, root=None):
        self.directory = Path(directory)
        self.root = Path(root) if root is not None else self.directory.parent

    @classmethod
    def from_destination(cls, text, job):
        import destinations  # destinations builds sinks, so it imports this module first

        return cls(Path(text) / destinations.job_folder(job), root=text)

    def describe(self):
        return str(self.root)

    def location(self, name):
        return str(self.directory / name)

    def open(self, name):
        self.directory.mkdir(parents=True, exist_ok=True)
        return LocalArtifact(self.directory / name)

    def read(self, location):
        """The stored artifact, open for reading; BackupError when it is missing or unreadable."""
        try:
            return open(location, "rb", buffering=0)
        except OSError as exc:
            raise BackupError(f"cannot read {location}: {exc.strerror or exc}") from None

    def exists(self, location):
        return os.path.isfile(location)

    def size(self, location):
        try:
            return os.stat(location).st_size
        except OSError:
            return None

    def leftover_paths(self, folder, execution_id):
        """The files an unfinished attempt of this execution may have left in the job's folder `folder`."""
        return list((self.root / folder).glob(f"*-{execution_id}.*"))

    def remove_leftovers(self, folder, execution_id):
        """Remove those files (see partial_files); returns their names."""
        removed = []
        for path in self.leftover_paths(folder, execution_id):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def delete(self, location):
        """Remove a stored artifact, as retention does; an artifact already gone is no error."""
        Path(location).unlink(missing_ok=True)

    def delete_manifest(self, location):
        """Remove the manifest of the artifact at `location`, once the artifact is gone."""
        Path(manifest_location(location)).unlink(missing_ok=True)


class LocalArtifact:
    """One artifact being written to a local directory: its partial file, then its final name."""

    def __init__(self, path):
        self.path, self.partial = path, Path(str(path) + PARTIAL)
        self.location = str(path)
        self.manifest = Path(manifest_location(self.location))
        self.file = create_artifact(str(self.partial))
        self.writeback = Writeback(self.file.fileno())

    def write(self, data):
        written = self.file.write(data)
        self.writeback.wrote(len(data))
        return written

    def flush(self):
        self.file.flush()

    def close(self):
        """Make every byte durable; raises the error of a failed background sync."""
        self.file.flush()
        self.writeback.stop()
        os.fsync(self.file.fileno())
        self.file.close()

    def commit(self):
        os.rename(self.partial, self.path)
        fsync_directory(self.path.parent)

    def verify(self, size, sha256, progress):
        """Re-read the artifact from disk; `progress(fraction)` after each piece may raise to stop."""
        seen, digest = read_back(self.path, lambda count: progress(count / max(size, 1)))
        if seen != size or digest != sha256:
            raise BackupError(f"verification failed: {self.path} does not match what was written "
                              f"({seen:,} of {size:,} bytes read back)")

    def write_manifest(self, data):
        """Write the manifest as the artifact is written: `.partial`, fsync, rename, with the artifact's mode."""
        partial = Path(str(self.manifest) + PARTIAL)
        with create_artifact(str(partial)) as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(partial, self.manifest)
        fsync_directory(self.manifest.parent)

    def abort(self):
        try:
            self.writeback.stop()
        except OSError:
            pass  # the bytes it failed to write are being thrown away
        try:
            self.file.close()
        except OSError:
            pass  # buffered bytes that cannot be written (a full disk) are being thrown away anyway
        self.partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        Path(str(self.manifest) + PARTIAL).unlink(missing_ok=True)
        self.manifest.unlink(missing_ok=True)  # after the artifact: no artifact is ever left without one


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


class Writeback:
    """Sends a file being written to disk in the background, each WRITEBACK_BYTES.

    The artifact must be fsynced before it is renamed into place. Left to the
    end, that fsync writes the whole artifact while nothing else happens;
    synced as it grows, the disk writes overlap the dump and the final fsync
    only has the tail left (bench/RESULTS.md, "Figures behind the code:
    pipeline"). The thread syncs its own copy of the descriptor, so closing
    the file never leaves it syncing a stranger.
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
