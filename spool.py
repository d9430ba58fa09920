"""The webhook spool: events the database could not take, kept on disk until the worker replays them.

Web processes append one JSON line per event with a single O_APPEND write and
fsync, holding a shared flock so a replay never reads a file mid-write. The
replay renames the spool away, waits for in-flight writers with an exclusive
flock, and applies the lines in order. Each line carries a spool_id recorded
in the event history, so a replay that crashed half-way can simply run again.
"""
import fcntl
import json
import logging
import os
import secrets
from pathlib import Path

from peewee import DatabaseError, OperationalError

from models import Backup, Website, now_ms

log = logging.getLogger("backhook.spool")

SPOOL_NAME = "webhook-spool.jsonl"
REPLAYING_GLOB = "webhook-spool.*.replaying"
REJECTED_NAME = "webhook-spool.rejected.jsonl"
LOCK_NAME = "webhook-spool.lock"


def spool_event(data_dir, kind, payload):
    """Append one event durably; return its spool_id. Raises OSError if it cannot be kept."""
    record = {"spool_id": secrets.token_hex(16), "received_at": now_ms(), "kind": kind,
              "domain": payload["domain"], "backup_id": payload["backup_id"], "payload": payload}
    _append(Path(data_dir) / SPOOL_NAME, (json.dumps(record, separators=(",", ":")) + "\n").encode())
    return record["spool_id"]


def _append(path, line):
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not _still_named(fd, path):
                continue  # a replay renamed it between our open and our lock: use the new spool
            if os.write(fd, line) != len(line):
                raise OSError("short write to the webhook spool")
            os.fsync(fd)
            _fsync_directory(path.parent)
            return
        finally:
            os.close(fd)


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
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("skipping damaged line %d of %s (a write that was never acknowledged)",
                            number, path.name)
                continue
            try:
                applied += _apply(record)
            except OperationalError as exc:
                log.warning("database still unavailable; spool replay stops at line %d: %s", number, exc)
                return applied, False
            except DatabaseError as exc:
                log.error("spooled event %s cannot be applied (%s); kept in %s",
                          record.get("spool_id"), exc, REJECTED_NAME)
                _append(data_dir / REJECTED_NAME, line if line.endswith(b"\n") else line + b"\n")
    os.unlink(path)
    return applied, True


def _apply(record):
    website = Website.by_domain(record["domain"])
    if website is None:
        log.warning("dropping spooled %s event for %r: no such website", record["kind"], record["domain"])
        return 0
    return int(Backup.apply_event(website.id, record["backup_id"], record["kind"], record["payload"],
                                  received_at=record["received_at"], spool_id=record["spool_id"]))
