"""Restores end to end: real backups through the API and a worker, restored, and the data compared.

Also every refusal of POST /api/executions/<id>/restore, and what a checksum
mismatch, a cancel, a timeout and a killed worker leave of the target.
"""
import hashlib
import io
import os
import signal
import sqlite3
import tarfile
from pathlib import Path

import pytest
import zstandard

import leases
import models
from models import Execution, Job, Setting
from sinks import job_directory
from statuses import ExecutionStatus, ExecutionType
from support import poll, run_to_end, tree_listing, wait_for_status, wait_until


def make_sqlite(path, rows, wal=True):
    with sqlite3.connect(path) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {i}",) for i in range(rows)])
    db.close()
    return path


def names(path):
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT name FROM item ORDER BY id")]
    finally:
        db.close()


def make_tree(root, files=3):
    (root / "sub").mkdir(parents=True)
    for number in range(files):
        (root / "sub" / f"file-{number}.txt").write_text(f"file {number}\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)
    os.symlink("sub/file-0.txt", root / "link")
    os.utime(root / "run.sh", (1_600_000_000, 1_600_000_000))
    return root


@pytest.fixture
def backed_up(client, auth, make_job, start_worker):
    """Back up a new job's source through the API and a real worker; returns the Success execution's data."""
    started = []

    def back_up(name, source, **fields):
        job = make_job(name=name, source=source, **fields)
        if not started:
            started.append(start_worker())
        data = run_to_end(client, auth, job.id)
        assert data["status"] == "Success", data["error"]
        return data

    return back_up


def restore(client, auth, execution_id, expect=200, **body):
    response = client.post(f"/api/executions/{execution_id}/restore", headers=auth,
                           **({"json": body} if body else {}))
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def restore_to_end(client, auth, execution_id, timeout=60, **body):
    restore_id = restore(client, auth, execution_id, **body)["executionId"]
    return wait_for_status(client, auth, restore_id, timeout=timeout)


# --- SQLite ------------------------------------------------------------------------

def test_a_sqlite_restore_brings_back_the_backed_up_rows_and_keeps_the_old_file(backed_up, client, auth, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 50)
    backup = backed_up("app", f"sqlite://{live}")
    with sqlite3.connect(live) as db:
        db.execute("INSERT INTO item (name) VALUES ('after the backup')")
    db.close()
    data = restore_to_end(client, auth, backup["id"])
    assert data["status"] == "Success", data["error"]
    assert names(live) == [f"item {i}" for i in range(50)]
    kept = list(tmp_path.glob("app.db.before-restore-*"))
    assert len(kept) == 1 and names(kept[0])[-1] == "after the backup"
    assert (data["type"], data["jobId"], data["path"], data["size"]) == ("Restore", backup["jobId"], None, None)
    stages = [line["stage"] for line in data["logs"]]
    assert {"Initializing", "Verifying", "Restoring", "Checking"} <= set(stages)
    messages = " ".join(line["message"] for line in data["logs"])
    assert backup["id"] in messages and '"item": 50' in messages and "integrity" in messages
    assert data["progress"] == 100 and data["stage"] == "Completed"


def test_a_sqlite_restore_with_a_reader_open_leaves_a_consistent_database(backed_up, client, auth, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 500)
    backup = backed_up("app", f"sqlite://{live}")
    reader = sqlite3.connect(live)
    with sqlite3.connect(live) as writer:
        writer.execute("DELETE FROM item WHERE id > 10")
    writer.close()
    assert reader.execute("SELECT count(*) FROM item").fetchone()[0] == 10
    data = restore_to_end(client, auth, backup["id"], replace=True)
    assert data["status"] == "Success", data["error"]
    fresh = sqlite3.connect(live)
    assert fresh.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert fresh.execute("SELECT count(*) FROM item").fetchone()[0] == 500
    assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reader.execute("SELECT count(*) FROM item").fetchone()[0] in (10, 500)  # a whole database either way
    assert not list(tmp_path.glob("*before-restore*"))  # replace keeps no old file
    reader.close()
    fresh.close()


def test_a_sqlite_backup_restores_into_another_absent_file(backed_up, client, auth, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 20)
    backup = backed_up("app", f"sqlite://{live}")
    copy = tmp_path / "copy.db"
    data = restore_to_end(client, auth, backup["id"], target=f"sqlite://{copy}")
    assert data["status"] == "Success", data["error"]
    assert names(copy) == names(live)


def test_a_checksum_mismatch_fails_the_restore_and_changes_nothing(backed_up, client, auth, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 50)
    backup = backed_up("app", f"sqlite://{live}")
    artifact = Path(backup["path"])
    corrupted = bytearray(artifact.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    artifact.write_bytes(bytes(corrupted))
    with sqlite3.connect(live) as db:
        db.execute("INSERT INTO item (name) VALUES ('after the backup')")
    db.close()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    data = restore_to_end(client, auth, backup["id"])
    assert data["status"] == "Failed"
    assert "does not match its recorded SHA-256" in data["error"] and "nothing was restored" in data["error"]
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert "Restoring" not in [line["stage"] for line in data["logs"]]


# --- directories -------------------------------------------------------------------

def test_a_directory_restore_brings_back_the_tree(backed_up, client, auth, tmp_path):
    tree = make_tree(tmp_path / "tree")
    backup = backed_up("tree", f"files://{tree}")
    target = tmp_path / "restored"
    data = restore_to_end(client, auth, backup["id"], target=f"files://{target}")
    assert data["status"] == "Success", data["error"]
    assert tree_listing(target) == tree_listing(tree)
    assert '"files": 5' in " ".join(line["message"] for line in data["logs"])


def test_a_directory_restore_refuses_a_non_empty_target_without_replace(backed_up, client, auth, tmp_path):
    tree = make_tree(tmp_path / "tree")
    backup = backed_up("tree", f"files://{tree}")
    (tree / "newer.txt").write_text("written after the backup")
    before = tree_listing(tree)
    data = restore_to_end(client, auth, backup["id"])
    assert data["status"] == "Failed" and "not empty" in data["error"]
    assert tree_listing(tree) == before


def test_a_directory_restore_with_replace_removes_what_the_backup_lacks(backed_up, client, auth, tmp_path):
    tree = make_tree(tmp_path / "tree")
    backup_tree = tree_listing(tree)
    backup = backed_up("tree", f"files://{tree}")
    (tree / "newer.txt").write_text("written after the backup")
    (tree / "sub" / "file-1.txt").write_text("changed")
    data = restore_to_end(client, auth, backup["id"], replace=True)
    assert data["status"] == "Success", data["error"]
    assert tree_listing(tree) == backup_tree
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def stored_artifact(job, name, data):
    """A hand-made artifact recorded as a successful backup of `job`, with its correct SHA-256."""
    directory = job_directory(job)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    with models.database.atomic():
        return Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, path=str(path), size=len(data),
                                sha256=hashlib.sha256(data).hexdigest(), ended_at=models.now_ms())


def hand_made_tar(*members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, kind, linkname, content in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, linkname, len(content)
            archive.addfile(info, io.BytesIO(content) if content else None)
    return zstandard.ZstdCompressor().compress(out.getvalue())


MALICIOUS = {
    "absolute path": [("./fine.txt", tarfile.REGTYPE, "", b"ok"), ("/tmp/bh-escaped", tarfile.REGTYPE, "", b"x")],
    "dot dot": [("./fine.txt", tarfile.REGTYPE, "", b"ok"), ("../bh-escaped", tarfile.REGTYPE, "", b"x")],
    "escaping symlink": [("./out", tarfile.SYMTYPE, "../..", b""), ("./out/bh-escaped", tarfile.REGTYPE, "", b"x")],
    "escaping hard link": [("./hard", tarfile.LNKTYPE, "../outside.txt", b"")],
    "device": [("./null", tarfile.CHRTYPE, "", b"")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_malicious_archive_fails_before_anything_is_written(client, auth, make_job, start_worker, tmp_path, case):
    (tmp_path / "outside.txt").write_text("secret")
    tree = tmp_path / "tree"
    tree.mkdir()
    job = make_job(name="tree", source=f"files://{tree}")
    backup = stored_artifact(job, f"20260101T000000Z-{models.new_id()}.tar.zst", hand_made_tar(*MALICIOUS[case]))
    before = sorted(path.name for path in tmp_path.iterdir())
    start_worker()
    data = restore_to_end(client, auth, backup.id, target=f"files://{tmp_path}/restored")
    assert data["status"] == "Failed"
    assert "nothing was restored" in data["error"], data["error"]
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no target, no staging
    assert not Path("/tmp/bh-escaped").exists() and not (tmp_path / "bh-escaped").exists()
    assert (tmp_path / "outside.txt").read_text() == "secret"


# --- command: jobs -----------------------------------------------------------------

def test_a_command_job_restores_through_its_restore_command(backed_up, client, auth, tmp_path):
    out = tmp_path / "restored.txt"
    backup = backed_up("report", "command:seq 1 20000", restore_command=f"cat > {out}")
    data = restore_to_end(client, auth, backup["id"])
    assert data["status"] == "Success", data["error"]
    expected = "".join(f"{number}\n" for number in range(1, 20001))
    assert out.read_text() == expected
    assert f'"bytes": {len(expected)}' in " ".join(line["message"] for line in data["logs"])


def test_a_failing_restore_command_fails_the_restore_with_its_stderr(backed_up, client, auth):
    backup = backed_up("report", "command:seq 1 10", restore_command="cat > /dev/null; echo no room >&2; false | cat")
    data = restore_to_end(client, auth, backup["id"])
    assert data["status"] == "Failed"
    assert "exited with status 1" in data["error"] and "no room" in data["error"]


# --- refusals ----------------------------------------------------------------------

@pytest.fixture
def successful_backup(make_job, tmp_path):
    def make(source=None, **fields):
        job = make_job(name=f"job-{models.new_id()[-6:]}", source=source, **fields)
        return stored_artifact(job, f"20260101T000000Z-{models.new_id()}.tar", b"")

    return make


def test_an_unknown_execution_is_404(client, auth):
    assert restore(client, auth, "nope", expect=404) == {"error": "Execution not found"}


def test_restoring_needs_the_storage_restore_permission(client, make_key, successful_backup):
    backup = successful_backup()
    others = [permission for permission in models.PERMISSIONS if permission != "storage:restore"]
    headers = {"Authorization": f"Bearer {make_key(*others)}"}
    response = client.post(f"/api/executions/{backup.id}/restore", headers=headers)
    assert response.status_code == 403 and "storage:restore" in response.get_json()["error"]
    headers = {"Authorization": f"Bearer {make_key('storage:restore')}"}
    assert client.post(f"/api/executions/{backup.id}/restore", headers=headers).status_code == 200


@pytest.mark.parametrize("change", [
    dict(status=ExecutionStatus.PENDING), dict(status=ExecutionStatus.FAILED),
    dict(status=ExecutionStatus.RUNNING), dict(type=ExecutionType.RESTORE), dict(path=None),
])
def test_what_is_no_successful_backup_with_its_artifact_is_409(client, auth, successful_backup, change):
    backup = successful_backup()
    Execution.update(**change).where(Execution.id == backup.id).execute()
    assert "error" in restore(client, auth, backup.id, expect=409)
    assert not Execution.select().where(Execution.restores == backup.id).exists()


def test_an_artifact_missing_from_disk_is_409(client, auth, successful_backup):
    backup = successful_backup()
    Path(backup.path).unlink()
    assert "gone" in restore(client, auth, backup.id, expect=409)["error"]


def test_a_wpsec_job_is_409(client, auth, successful_backup):
    with models.database.atomic():
        models.Website.create(domain="example.com")
    backup = successful_backup(source="wpsec://example.com")
    assert "wpsec" in restore(client, auth, backup.id, expect=409)["error"]


def test_a_command_job_without_a_restore_command_is_409(client, auth, successful_backup):
    backup = successful_backup(source="command:echo hi")
    assert "restore command" in restore(client, auth, backup.id, expect=409)["error"]


@pytest.mark.parametrize("body, message", [
    ({"target": "postgresql://postgres@127.0.0.1/db"}, "must be a files source"),
    ({"target": "files://relative"}, "absolute path"),
    ({"target": "nonsense"}, "unknown source"),
    ({"target": "command:rm -rf /"}, "never accepted"),
    ({"target": 7}, "'target' must be a string"),
    ({"replace": "yes"}, "'replace' must be a boolean"),
    ({"replace": True, "force": True}, "Unknown field 'force'"),
])
def test_a_bad_body_is_400(client, auth, successful_backup, body, message):
    backup = successful_backup()
    assert message in restore(client, auth, backup.id, expect=400, **body)["error"]
    assert not Execution.select().where(Execution.restores == backup.id).exists()


def test_a_target_holding_the_backups_is_400(client, auth, successful_backup, tmp_path):
    backup = successful_backup()
    error = restore(client, auth, backup.id, expect=400, target=f"files://{tmp_path}")["error"]
    assert "holds the backup" in error


def test_a_command_job_takes_no_target(client, auth, successful_backup, tmp_path):
    backup = successful_backup(source="command:echo hi", restore_command="cat")
    assert "takes no target" in restore(client, auth, backup.id, expect=400, target=f"files://{tmp_path}/x")["error"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"target"'])
def test_a_malformed_body_is_400(client, auth, successful_backup, body):
    backup = successful_backup()
    response = client.post(f"/api/executions/{backup.id}/restore", headers={**auth, "Content-Type": "application/json"},
                           data=body)
    assert response.status_code == 400 and "JSON object" in response.get_json()["error"]


def test_a_queued_restore_is_polled_like_a_backup_and_shows_no_target(client, auth, successful_backup, tmp_path):
    backup = successful_backup()
    secret_target = f"files://{tmp_path}/restored"
    restore_id = restore(client, auth, backup.id, target=secret_target)["executionId"]
    data = poll(client, auth, restore_id)
    assert (data["type"], data["status"], data["stage"], data["progress"]) == ("Restore", "Pending", "Queued", 0)
    assert (data["path"], data["size"], data["jobId"]) == (None, None, backup.job_id)
    assert secret_target not in str(data)


# --- the worker: claims, faults, retention -------------------------------------------

def test_pending_restores_are_claimed_before_older_pending_backups(app, make_job, successful_backup):
    backup = successful_backup()
    job = Job.get_by_id(backup.job_id)
    older_backups = [Execution.enqueue(job) for _ in range(3)]
    for number, queued in enumerate(older_backups):  # one millisecond apart: creation order is the claim's order
        Execution.update(created_at=Execution.created_at - len(older_backups) + number).where(
            Execution.id == queued.id).execute()
    from restore import queue_restore
    first, second = queue_restore(backup.id), queue_restore(backup.id)
    claimed = leases.claim("w1", 30_000)
    assert [row.id for row in claimed] == [first.id]  # the limit is 1: the oldest restore
    Setting.write("max_concurrent_jobs", 3)
    assert {row.id for row in leases.claim("w1", 30_000)} == {second.id, older_backups[0].id}


BIG_TREE_FILES = 8000


def big_tree(root, files=BIG_TREE_FILES):
    """Many small files: an extraction that takes seconds, not a big artifact."""
    for number in range(files):
        directory = root / f"d{number // 1000:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{number:05d}").write_bytes(b"x")
    return root


def staging_of(target, restore_id):
    return target.with_name(f".{target.name}.restore-{restore_id}")


@pytest.mark.parametrize("fault", ["cancel", "kill -9"])
def test_a_cancel_or_a_killed_worker_mid_restore_leaves_the_old_tree_whole(
        client, auth, make_job, start_worker, tmp_path, fault):
    tree = big_tree(tmp_path / "tree")
    job = make_job(name="many", source=f"files://{tree}")
    worker = start_worker(BACKHOOK_LEASE_SECONDS="2")
    backup = run_to_end(client, auth, job.id)
    assert backup["status"] == "Success", backup["error"]
    for directory in list(tree.iterdir())[:5]:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    (tree / "newer.txt").write_text("written after the backup")
    before = tree_listing(tree)
    restore_id = restore(client, auth, backup["id"], replace=True)["executionId"]
    staging = staging_of(tree, restore_id)
    wait_until(lambda: staging.is_dir() and len(list(staging.iterdir())) > 2, timeout=30, interval=0.01,
               message="the extraction to be under way")
    if fault == "cancel":
        assert client.post(f"/api/executions/{restore_id}/cancel", headers=auth).status_code == 200
        data = wait_for_status(client, auth, restore_id)
        assert data["status"] == "Cancelled"
        assert tree_listing(tree) == before
        assert not staging.exists()
        return
    worker.stop(sig=signal.SIGKILL)
    assert tree_listing(tree) == before  # the worker died mid-extraction: the target is whole
    start_worker(BACKHOOK_LEASE_SECONDS="2")  # reclaims the lapsed lease; the restore runs again from the start
    # The lease lapses, the reclaim re-queues, and the whole tree is extracted again: slow on a loaded machine.
    data = wait_for_status(client, auth, restore_id, timeout=240)
    assert data["status"] == "Success", data["error"]
    assert "re-queued" in " ".join(line["message"] for line in data["logs"])
    assert Execution.get_by_id(restore_id).attempts == 2
    restored = tree_listing(tree)
    assert "newer.txt" not in restored and len([name for name in restored if "/f" in name]) == BIG_TREE_FILES
    assert not staging.exists()


def test_a_timeout_mid_restore_leaves_the_old_tree_whole(client, auth, make_job, start_worker, tmp_path):
    tree = big_tree(tmp_path / "tree")
    job = make_job(name="many", source=f"files://{tree}")
    start_worker()
    backup = run_to_end(client, auth, job.id)
    assert backup["status"] == "Success", backup["error"]
    (tree / "newer.txt").write_text("written after the backup")
    before = tree_listing(tree)
    Job.update(timeout_seconds=1).where(Job.id == job.id).execute()
    data = restore_to_end(client, auth, backup["id"], replace=True)
    assert data["status"] == "Failed" and "timed out after 1 s" in data["error"]
    assert tree_listing(tree) == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_retention_and_last_execution_ignore_restores(backed_up, client, auth, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 5)
    first = backed_up("app", f"sqlite://{live}", keep=1)
    restored = restore_to_end(client, auth, first["id"], replace=True)
    assert restored["status"] == "Success", restored["error"]
    jobs = client.get("/api/jobs", headers=auth).get_json()["data"]
    assert jobs[0]["lastExecution"]["id"] == first["id"]  # a restore is not the job's last backup
    second = run_to_end(client, auth, first["jobId"])
    assert second["status"] == "Success", second["error"]
    assert Execution.get_by_id(first["id"]).path is None and not Path(first["path"]).exists()  # pruned
    assert Path(second["path"]).exists()
    row = Execution.get_by_id(restored["id"])
    assert (row.status, row.path, row.restores) == (ExecutionStatus.SUCCESS, None, first["id"])
    # The pruned backup can no longer be restored; the newest can.
    assert "gone" in restore(client, auth, first["id"], expect=409)["error"]
    assert restore_to_end(client, auth, second["id"], replace=True)["status"] == "Success"


def test_a_drill_fails_clearly_until_drills_are_built(backed_up, client, auth, tmp_path):
    if (Path(__file__).resolve().parent.parent / "drills.py").exists():
        pytest.skip("drills.py is merged: tests/test_drills.py covers drills")
    live = make_sqlite(tmp_path / "app.db", 5)
    backup = backed_up("app", f"sqlite://{live}")
    data = restore_to_end(client, auth, backup["id"], target="scratch")
    assert data["status"] == "Failed" and "not built yet" in data["error"]


# --- the command line ----------------------------------------------------------------

def test_backhook_restore_shows_progress_and_exits_0_on_success(backed_up, runner, tmp_path):
    live = make_sqlite(tmp_path / "app.db", 30)
    backup = backed_up("app", f"sqlite://{live}")
    result = runner("restore", backup["id"], "--to", f"sqlite://{tmp_path}/copy.db")
    assert result.exit_code == 0, result.output
    assert "Completed" in result.output and f"backup {backup['id']} restored" in result.output
    assert names(tmp_path / "copy.db") == names(live)


def test_backhook_restore_exits_1_when_the_restore_fails(backed_up, runner, tmp_path):
    tree = make_tree(tmp_path / "tree")
    backup = backed_up("tree", f"files://{tree}")
    result = runner("restore", backup["id"])
    assert result.exit_code == 1 and "not empty" in result.output


@pytest.mark.parametrize("arguments, message", [
    (["nope"], "no execution with id nope"),
    (["{backup}", "--to", "sqlite:///x.db"], "must be a files source"),
    (["{backup}", "--to", "files:///x", "--scratch"], "contradict"),
])
def test_backhook_restore_refuses_clearly(runner, successful_backup, arguments, message):
    backup = successful_backup()
    result = runner("restore", *[argument.format(backup=backup.id) for argument in arguments])
    assert result.exit_code == 1 and message in result.output
    assert not Execution.select().where(Execution.type == ExecutionType.RESTORE).exists()


def test_restore_command_is_set_on_the_command_line_and_never_shown(runner, tmp_path):
    result = runner("jobs", "add", "dump", "--source", "command:echo hi", "--destination", tmp_path,
                    "--restore-command", "psql --password=hunter2")
    assert result.exit_code == 0, result.output
    assert Job.get(Job.name == "dump").restore_command == "psql --password=hunter2"
    shown = runner("jobs", "show", "dump").output
    assert "hunter2" not in shown and "restore_command  set (not shown)" in shown
    result = runner("jobs", "add", "files", "--source", f"files://{tmp_path}", "--destination", tmp_path,
                    "--restore-command", "cat")
    assert result.exit_code == 1 and "only to command: sources" in result.output


# --- reading ahead ------------------------------------------------------------------

def test_read_ahead_gives_the_whole_stream_whatever_the_read_sizes():
    from restore import ReadAhead
    data = os.urandom(5 * 1024 * 1024 + 123)
    for size in (1, 511, 65536, 3 * 1024 * 1024, -1):
        with ReadAhead(io.BytesIO(data)) as stream:
            pieces = []
            while piece := stream.read(size if size > 0 else -1):
                pieces.append(piece)
                if size == 1 and len(pieces) > 2000:
                    pieces.append(stream.read(-1))
            assert b"".join(pieces) == data and stream.read(10) == b""


def test_read_ahead_raises_what_its_thread_met_and_closes_while_the_thread_waits():
    from attempt import Stopped
    from restore import ReadAhead

    class Stopping(io.BytesIO):
        def read(self, size=-1):
            if self.tell() >= 2 * 1024 * 1024:
                raise Stopped("cancel")
            return super().read(size)

    with pytest.raises(Stopped):
        with ReadAhead(Stopping(os.urandom(4 * 1024 * 1024))) as stream:
            while stream.read(65536):
                pass
    with ReadAhead(io.BytesIO(os.urandom(20 * 1024 * 1024))) as stream:
        stream.read(10)  # the thread is blocked on a full queue: leaving the block must still end it
    assert not stream.thread.is_alive()
