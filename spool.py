"""The webhook spool: events the database could not take, kept on disk until the worker replays them.

Web processes append one JSON line per event with a single O_APPEND write and
fsync, holding a shared flock so a replay never reads a file mid-write. Every
record starts with a newline of its own, so the fragment a failed or crashed
write leaves behind can never swallow the next record; a writer whose write
fails also cuts its fragment off again. The replay renames the spool away,
waits for in-flight writers with an exclusive flock, and applies the lines in
order. Each line carries a spool_id recorded in the event history, so a
replay that crashed half-way can simply run again. A line that cannot be
applied goes to the rejected file and the replay moves on.
"""
import fcntl
import json
import logging
import os
import secrets
from pathlib import Path

from peewee import InterfaceError, OperationalError

from events import InvalidEvent, spool_record, spooled_event
from models import now_ms
from remote_backups import apply

log = logging.getLogger("backhook.spool")

SPOOL_NAME = "webhook-spool.jsonl"
REPLAYING_GLOB = "webhook-spool.*.replaying"
REJECTED_NAME = "webhook-spool.rejected.jsonl"
LOCK_NAME = "webhook-spool.lock"


def spool_event(data_dir, event):
    """Append one event durably; return its spool_id. Raises OSError if it cannot be kept."""
    record = spool_record(event, secrets.token_hex(16))
    _append(Path(data_dir) / SPOOL_NAME, json.dumps(record, separators=(",", ":")).encode())
    return record["spool_id"]


def _append(path, record):
    """Append `record` (bytes without a newline) on a line of its own, durably, or raise OSError."""
    # The leading newline ends whatever a torn write left; checking for a torn
    # tail first would race with a concurrent writer tearing one.
    line = b"\n" + record + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not _still_named(fd, path):
                continue  # a replay renamed it between our open and our lock: use the new spool
            try:
                if os.write(fd, line) != len(line):
                    raise OSError("short write to the webhook spool (is the disk full?)")
            except OSError:
                _cut_torn_tail(fd, path)
                raise
            os.fsync(fd)
            _fsync_directory(path.parent)
            return
        finally:
            os.close(fd)


def _cut_torn_tail(fd, path):
    """Truncate the file back to the end of its last complete record, so a failed write leaves nothing.

    Other writers append under the shared lock, so the truncation waits for
    the exclusive one: then no write is in flight, and whatever follows the
    last complete record is a fragment that was never acknowledged.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        keep = _end_of_last_record(fd, size)
        if keep < size:
            os.ftruncate(fd, keep)
            os.fsync(fd)
    except OSError as exc:  # the leading newline of the next record still protects it
        log.warning("could not cut a torn write off %s: %s", path.name, exc)


def _end_of_last_record(fd, size):
    """The offset just past the newline that ends the last record of the file's first `size` bytes."""
    window = 4096
    while True:
        start = max(0, size - window)
        tail = os.pread(fd, size - start, start)
        record_end = len(tail[:tail.rfind(b"\n") + 1].rstrip(b"\n"))  # 0 when the tail holds no record
        if record_end:
            return start + record_end + 1
        if start == 0:
            return 0
        window *= 4


def _still_named(fd, path):
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replay_spool(data_dir):
    """Apply every spooled event in arrival order, at most once; return how many were applied.

    Safe to call from several workers at once (one replays, the others return
    0) and to call again after a crash or a still-busy database.
    """
    data_dir = Path(data_dir)
    if not (data_dir / SPOOL_NAME).exists() and not any(data_dir.glob(REPLAYING_GLOB)):
        return 0
    lock = os.open(data_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        try:
            os.rename(data_dir / SPOOL_NAME, data_dir / f"webhook-spool.{now_ms():013d}.replaying")
        except FileNotFoundError:
            pass
        applied = 0
        for path in sorted(data_dir.glob(REPLAYING_GLOB)):
            count, finished = _replay_file(path, data_dir)
            applied += count
            if not finished:
                break  # keep the order: later files wait for this one
        return applied
    finally:
        os.close(lock)


def _replay_file(path, data_dir):
    """Apply one renamed spool file; return (applied, finished). A finished file is deleted."""
    applied = 0
    with open(path, "rb") as spooled:
        fcntl.flock(spooled, fcntl.LOCK_EX)  # writers that opened it before the rename are done
        for number, line in enumerate(spooled, 1):
            line = line.strip()
            if not line:
                continue  # the newline that starts each record
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("skipping damaged line %d of %s (a write that was never acknowledged)",
                            number, path.name)
                continue
            problem = None
            try:
                applied += _apply(spooled_event(record))
            except InvalidEvent as exc:
                problem = str(exc)
            except (OperationalError, InterfaceError) as exc:
                log.warning("database still unavailable; spool replay stops at line %d: %s", number, exc)
                return applied, False
            except Exception as exc:  # whatever else one record raises, it must not wedge the replay
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                log.error("line %d of %s cannot be applied (%s); kept in %s", number, path.name, problem,
                          REJECTED_NAME)
                _append(data_dir / REJECTED_NAME, line)
    os.unlink(path)
    return applied, True


def _apply(event):
    applied = apply(event)
    if applied is None:
        log.warning("dropping spooled %s event for %r: no such website", event.kind, event.payload["domain"])
    return int(bool(applied))


def counts(data_dir):
    """(waiting, rejected): spooled events not replayed yet, those of a replay under way included, and
    the lines the replay set aside in the rejected file. For /metrics; a missing spool counts 0."""
    data_dir = Path(data_dir)
    waiting = sum(_records(path) for path in [data_dir / SPOOL_NAME, *data_dir.glob(REPLAYING_GLOB)])
    return waiting, _records(data_dir / REJECTED_NAME)


def _records(path):
    try:
        with open(path, "rb") as spooled:
            return sum(1 for line in spooled if line.strip())
    except FileNotFoundError:  # none yet, or a replay just renamed or finished it
        return 0
