"""The restore targets in-process (targets.py): what each writes, what it refuses, and what a fault leaves."""
import io
import os
import sqlite3
import subprocess
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import targets
from attempt import Stopped
from sources import BackupError, Source
from support import tree_listing
from targets import DirectoryTarget, SqliteTarget
from tools import start_tool, wait_for_tool


class FakeRun:
    """What a target asks of its Restore attempt, without a database."""

    def __init__(self):
        self.execution = SimpleNamespace(id="0123restore")
        self.lines = []
        self.stop_reason = None

    def log(self, message, level="info"):
        self.lines.append((level, message))

    def check(self):
        if self.stop_reason:
            raise Stopped(self.stop_reason)


class Faulty:
    """A dump stream that raises `fault` once `after` bytes were read: a cancel or a failure mid-restore."""

    def __init__(self, data, after, fault):
        self.stream, self.left, self.fault = io.BytesIO(data), after, fault

    def read(self, size=-1):
        if self.left <= 0:
            raise self.fault
        data = self.stream.read(min(size if size >= 0 else self.left, self.left))
        self.left -= len(data)
        return data


def sqlite_image(path, rows, wal=False):
    """A SQLite database as its dumper streams it: the file's bytes."""
    with sqlite3.connect(path) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO item (name) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    db.close()
    return Path(path).read_bytes()


def rows(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM item").fetchone()[0]
    finally:
        db.close()


def sqlite_target(path, replace=False):
    return SqliteTarget(Source("sqlite", path=str(path)), replace, FakeRun())


def restore(target, stream):
    target.prepare()
    target.restore(stream)
    return target.check()


# --- SQLite ------------------------------------------------------------------------

def test_sqlite_restore_replaces_the_database_and_keeps_the_old_one(tmp_path):
    backup = sqlite_image(tmp_path / "backup.db", 30)
    live = tmp_path / "app.db"
    sqlite_image(live, 5)
    summary = restore(sqlite_target(live), io.BytesIO(backup))
    assert summary == {"integrity": "ok", "tables": {"item": 30}}
    assert rows(live) == 30
    kept = list(tmp_path.glob("app.db.before-restore-*"))
    assert len(kept) == 1 and rows(kept[0]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["backup.db", "app.db", kept[0].name])


def test_two_restores_in_one_second_keep_both_old_files(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "utc_stamp", lambda: "20260101T000000Z")
    live = tmp_path / "app.db"
    sqlite_image(live, 5)
    for count in (7, 9):
        restore(sqlite_target(live), io.BytesIO(sqlite_image(tmp_path / f"backup-{count}.db", count)))
    kept = sorted(tmp_path.glob("app.db.before-restore-*"))
    assert [path.name for path in kept] == ["app.db.before-restore-20260101T000000Z",
                                            "app.db.before-restore-20260101T000000Z~1"]
    assert [rows(path) for path in kept] == [5, 7] and rows(live) == 9


def test_sqlite_restore_with_replace_keeps_no_old_file(tmp_path):
    backup = sqlite_image(tmp_path / "backup.db", 30)
    live = tmp_path / "app.db"
    sqlite_image(live, 5)
    restore(sqlite_target(live, replace=True), io.BytesIO(backup))
    assert rows(live) == 30
    assert not list(tmp_path.glob("*before-restore*"))


def test_an_absent_sqlite_target_is_created(tmp_path):
    backup = sqlite_image(tmp_path / "backup.db", 3)
    assert restore(sqlite_target(tmp_path / "new.db"), io.BytesIO(backup))["tables"] == {"item": 3}


def test_a_sqlite_target_in_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(BackupError, match="directory does not exist"):
        sqlite_target(tmp_path / "nowhere" / "app.db").prepare()


def test_a_wal_target_with_a_reader_open_ends_consistent_and_stays_in_wal_mode(tmp_path):
    backup = sqlite_image(tmp_path / "backup.db", 40)
    live = tmp_path / "app.db"
    sqlite_image(live, 5, wal=True)
    reader = sqlite3.connect(live)
    writer = sqlite3.connect(live)
    writer.execute("INSERT INTO item (name) VALUES ('in the wal only')")
    writer.commit()
    assert reader.execute("SELECT count(*) FROM item").fetchone()[0] == 6
    assert (tmp_path / "app.db-wal").stat().st_size > 0
    restore(sqlite_target(live), io.BytesIO(backup))
    fresh = sqlite3.connect(live)
    assert fresh.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert fresh.execute("SELECT count(*) FROM item").fetchone()[0] == 40
    assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # The connection opened before still reads a whole database, the old one; the kept copy holds the WAL's row.
    assert reader.execute("SELECT count(*) FROM item").fetchone()[0] in (6, 40)
    kept = next(tmp_path.glob("app.db.before-restore-*"))
    assert rows(kept) == 6
    for db in (reader, writer, fresh):
        db.close()


def test_a_reader_holding_a_transaction_makes_the_restore_wait_then_fail_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "BUSY_RETRY_SECONDS", 0.3)
    backup = sqlite_image(tmp_path / "backup.db", 40)
    live = tmp_path / "app.db"
    sqlite_image(live, 5, wal=True)
    writer = sqlite3.connect(live)
    writer.execute("INSERT INTO item (name) VALUES ('in the wal only')")
    writer.commit()
    reader = sqlite3.connect(live, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM item").fetchone()  # holds a snapshot: the WAL cannot be emptied
    writer.execute("INSERT INTO item (name) VALUES ('after the snapshot')")
    writer.commit()
    before = live.read_bytes()
    with pytest.raises(BackupError, match="stays busy"):
        restore(sqlite_target(live), io.BytesIO(backup))
    reader.execute("COMMIT")
    assert live.read_bytes() == before and rows(live) == 7
    assert sorted(p.name for p in tmp_path.iterdir() if "restore" in p.name) == []
    reader.close()
    writer.close()


@pytest.mark.parametrize("fault", [Stopped("cancel"), OSError(28, "No space left on device")])
def test_a_fault_while_writing_the_sqlite_copy_leaves_the_target_as_it_was(tmp_path, fault):
    backup = sqlite_image(tmp_path / "backup.db", 2000)
    live = tmp_path / "app.db"
    sqlite_image(live, 5)
    before = live.read_bytes()
    with pytest.raises(type(fault)):
        restore(sqlite_target(live), Faulty(backup, len(backup) // 2, fault))
    assert live.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "backup.db"]


def test_a_failed_rename_leaves_the_sqlite_target_and_no_kept_copy(tmp_path, monkeypatch):
    backup = sqlite_image(tmp_path / "backup.db", 3)
    live = tmp_path / "app.db"
    sqlite_image(live, 5)

    def failing_rename(source, destination):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(targets.os, "rename", failing_rename)
    with pytest.raises(OSError):
        restore(sqlite_target(live), io.BytesIO(backup))
    assert rows(live) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "backup.db"]


def test_a_corrupt_sqlite_dump_never_replaces_the_target(tmp_path):
    backup = bytearray(sqlite_image(tmp_path / "backup.db", 500))
    backup[4096:8192] = os.urandom(4096)  # page 2 scrambled, the file's header intact
    live = tmp_path / "app.db"
    sqlite_image(live, 5)
    with pytest.raises(BackupError, match="integrity_check|not a SQLite"):
        restore(sqlite_target(live), io.BytesIO(bytes(backup)))
    assert rows(live) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "backup.db"]


def test_a_dump_that_is_no_sqlite_database_is_refused(tmp_path):
    with pytest.raises(BackupError, match="not a SQLite database"):
        restore(sqlite_target(tmp_path / "app.db"), io.BytesIO(b"-- a SQL dump\n"))
    assert list(tmp_path.iterdir()) == []


# --- directories -------------------------------------------------------------------

def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o750)
    os.chmod(root / "sub", 0o710)
    os.symlink("sub/data.bin", root / "link")
    os.link(root / "run.sh", root / "hard.sh")
    os.utime(root / "run.sh", (1_600_000_000, 1_600_000_000))
    os.utime(root / "link", (1_500_000_000, 1_500_000_000), follow_symlinks=False)
    os.utime(root / "sub", (1_400_000_000, 1_400_000_000))
    return root


def tar_of(directory):
    """What the files dumper streams: GNU tar of the directory's contents."""
    return subprocess.run(["tar", "--create", "--file=-", "--directory", str(directory), "."],
                          check=True, capture_output=True).stdout


def directory_target(path, replace=False):
    return DirectoryTarget(Source("files", path=str(path)), replace, FakeRun())


def test_a_directory_restore_keeps_modes_times_symlinks_and_hard_links(tmp_path):
    tree = make_tree(tmp_path / "tree")
    target = tmp_path / "restored"
    summary = restore(directory_target(target), io.BytesIO(tar_of(tree)))
    assert tree_listing(target) == tree_listing(tree)
    assert (target / "hard.sh").stat().st_ino == (target / "run.sh").stat().st_ino
    assert summary["files"] == 4 and summary["bytes"] == sum(
        (tree / name).lstat().st_size for name in ("sub/data.bin", "run.sh", "hard.sh", "link"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_empty_directory_target_is_filled(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tmp_path / "empty").mkdir()
    restore(directory_target(tmp_path / "empty"), io.BytesIO(tar_of(tree)))
    assert tree_listing(tmp_path / "empty") == tree_listing(tree)


def test_a_non_empty_directory_is_refused_without_replace(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty"):
        directory_target(tmp_path / "busy").prepare()
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_replace_removes_files_missing_from_the_backup(tmp_path):
    tree = make_tree(tmp_path / "tree")
    live = tmp_path / "live"
    live.mkdir()
    (live / "newer.txt").write_text("not in the backup")
    (live / "sub").mkdir()
    (live / "sub" / "data.bin").write_text("changed")
    restore(directory_target(live, replace=True), io.BytesIO(tar_of(tree)))
    assert tree_listing(live) == tree_listing(tree)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fault", [Stopped("cancel"), OSError(28, "No space left on device")])
def test_a_fault_mid_extraction_leaves_the_old_tree_whole(tmp_path, fault):
    tree = make_tree(tmp_path / "tree")
    live = make_tree(tmp_path / "live")
    (live / "newer.txt").write_text("only here")
    before = tree_listing(live)
    data = tar_of(tree)
    with pytest.raises(type(fault)):
        restore(directory_target(live, replace=True), Faulty(data, len(data) // 2, fault))
    assert tree_listing(live) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_swap_leaves_the_old_tree_whole(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    live = make_tree(tmp_path / "live")
    (live / "newer.txt").write_text("only here")
    before = tree_listing(live)

    def failing_exchange(first, second):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(targets, "exchange", failing_exchange)
    with pytest.raises(OSError):
        restore(directory_target(live, replace=True), io.BytesIO(tar_of(tree)))
    assert tree_listing(live) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_rename_exchange_the_swap_still_leaves_old_or_new(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    live = make_tree(tmp_path / "live")
    (live / "newer.txt").write_text("only here")
    monkeypatch.setattr(targets, "exchange", lambda first, second: False)
    restore(directory_target(live, replace=True), io.BytesIO(tar_of(tree)))
    assert tree_listing(live) == tree_listing(tree)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_earlier_attempts_staging_is_removed_before_extracting(tmp_path):
    tree = make_tree(tmp_path / "tree")
    target = directory_target(tmp_path / "restored")
    target.staging.mkdir()
    (target.staging / "left by a killed worker").write_text("x")
    restore(target, io.BytesIO(tar_of(tree)))
    assert tree_listing(tmp_path / "restored") == tree_listing(tree)
    assert not target.staging.exists()


def malicious_tar(*members):
    """A tar whose members are (TarInfo fields, content) pairs, written by hand."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for fields, content in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for name, value in fields.items():
                setattr(info, name, value)
            info.size = len(content or b"")
            archive.addfile(info, io.BytesIO(content) if content else None)
    return out.getvalue()


FILE = tarfile.REGTYPE
MALICIOUS = {
    "absolute path": [({"name": "/tmp/escaped-abs"}, b"x")],
    "dot dot": [({"name": "./ok.txt"}, b"fine"), ({"name": "../escaped-dotdot"}, b"x")],
    "absolute symlink": [({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc"}, None)],
    "escaping symlink": [({"name": "link", "type": tarfile.SYMTYPE, "linkname": "../.."}, None)],
    "escaping hard link": [({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../outside.txt"}, None)],
    "device": [({"name": "null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
    "fifo": [({"name": "pipe", "type": tarfile.FIFOTYPE}, None)],
    "symlink chain": [({"name": "s", "type": tarfile.SYMTYPE, "linkname": "."}, None),
                      ({"name": "t", "type": tarfile.SYMTYPE, "linkname": "s/s/s/.."}, None),
                      ({"name": "t/escaped-chain", "type": FILE}, b"x")],
    "symlink made harmless then led out": [({"name": "a", "type": tarfile.SYMTYPE, "linkname": "b/.."}, None),
                                           ({"name": "b", "type": tarfile.SYMTYPE, "linkname": "."}, None)],
    "file written through a symlink led out": [({"name": "a", "type": tarfile.SYMTYPE, "linkname": "b/.."}, None),
                                               ({"name": "b", "type": tarfile.SYMTYPE, "linkname": "."}, None),
                                               ({"name": "a/escaped-late"}, b"x")],
    "through a symlink": [({"name": "up", "type": tarfile.SYMTYPE, "linkname": "sub/.."}, None),
                          ({"name": "sub", "type": tarfile.DIRTYPE}, None),
                          ({"name": "up/../escaped-through"}, b"x")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_member_landing_outside_fails_the_restore_and_leaves_nothing(tmp_path, case):
    (tmp_path / "outside.txt").write_text("secret")
    target = tmp_path / "restored"
    before = sorted(p.name for p in tmp_path.iterdir())
    data = malicious_tar(*[(dict(fields), content) for fields, content in MALICIOUS[case]])
    with pytest.raises(BackupError, match="outside the target|device or special"):
        restore(directory_target(target), io.BytesIO(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no target, no staging, nothing escaped
    assert not Path("/tmp/escaped-abs").exists()


def test_a_file_replacing_a_symlink_of_the_same_name_replaces_the_link_not_what_it_points_to(tmp_path):
    data = malicious_tar(({"name": "sub", "type": tarfile.DIRTYPE}, None), ({"name": "sub/real"}, b"original"),
                         ({"name": "x", "type": tarfile.SYMTYPE, "linkname": "sub/real"}, None),
                         ({"name": "x"}, b"replaced"))
    restore(directory_target(tmp_path / "restored"), io.BytesIO(data))
    assert (tmp_path / "restored" / "sub" / "real").read_bytes() == b"original"
    assert not (tmp_path / "restored" / "x").is_symlink() and (tmp_path / "restored" / "x").read_bytes() == b"replaced"


def test_an_archive_with_no_member_restores_nothing(tmp_path):
    with pytest.raises(BackupError, match="holds nothing"):
        restore(directory_target(tmp_path / "restored"), io.BytesIO(malicious_tar()))
    assert list(tmp_path.iterdir()) == []


def test_restoring_a_large_tree_takes_bounded_memory(tmp_path):
    """tarfile streams: the member data goes through CHUNK-sized copies, not whole files in memory."""
    import resource
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "blob", "wb") as out:
        for _ in range(64):
            out.write(os.urandom(1024 * 1024))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    tar = subprocess.Popen(["tar", "--create", "--file=-", "--directory", str(big), "."], stdout=subprocess.PIPE)
    restore(directory_target(tmp_path / "restored"), tar.stdout)
    tar.wait()
    assert (tmp_path / "restored" / "blob").stat().st_size == 64 * 1024 * 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024, time.monotonic() - started


def test_a_dump_that_is_no_tar_archive_fails_clearly_and_leaves_nothing(tmp_path):
    with pytest.raises(BackupError, match="not a readable tar archive"):
        restore(directory_target(tmp_path / "restored"), io.BytesIO(b"not a tar" * 1000))
    assert list(tmp_path.iterdir()) == []


# --- command -------------------------------------------------------------------------

class ToolRun(FakeRun):
    """FakeRun that also starts tools, as the Restore attempt does (tools.py), keeping them for the test."""

    def __init__(self):
        super().__init__()
        self.children = []

    def spawn(self, argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
        child = start_tool(argv, env, stdin=stdin, stdout=stdout)
        self.children.append(child)
        return child

    def wait_tool(self, child, warning_statuses=()):
        status, stderr = wait_for_tool(child)
        if status:
            raise BackupError(f"exited with status {status}: {stderr}")


def command_target(command):
    return targets.CommandTarget(Source("command", command=command), False, ToolRun())


def test_a_restore_command_reads_the_whole_dump_on_its_stdin(tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    assert restore(command_target(f"cat > {tmp_path}/out"), io.BytesIO(data)) == {"bytes": len(data)}
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize("fault", [Stopped("cancel"), OSError(5, "Input/output error")])
def test_a_restore_command_is_killed_before_its_stdin_closes_when_the_dump_breaks(tmp_path, fault):
    # Like psql, this command takes the end of its input for the end of the dump: an end of input
    # after half the dump would load half of it as if it were whole.
    loaded = tmp_path / "loaded"
    target = command_target(f"cat > {tmp_path}/part && mv {tmp_path}/part {loaded}")
    with pytest.raises(type(fault)):
        restore(target, Faulty(os.urandom(3 * 1024 * 1024), 1024 * 1024, fault))
    (child,) = target.run.children
    if not child.stdin.closed:
        child.stdin.close()  # what the worker's exit would do to a pipe left open
    assert child.wait(timeout=30) == -9
    assert not loaded.exists()
