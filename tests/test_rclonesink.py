"""The rclone sink against a real SFTP server on loopback: upload, commit, verify, read, delete, abort, leftovers."""
import hashlib
import os
import re
import secrets
import threading
import time
from types import SimpleNamespace

import pytest

import destinations
import leases
import models
import rclonesink
from attempt import Stopped
from backup import Run
from destinations import parse_destination
from models import ArtifactCopy, Execution, ExecutionLog
from rclonesink import RcloneSink, scrub
from sources import BackupError, SourceError
from statuses import ExecutionStatus
from support import run_in_process, wait_until
from test_destinations import run_restore_in_process
from tools import kill_group, start_tool

PAYLOAD = secrets.token_bytes(3 * 1024 * 1024 + 17)  # several pipe-fulls, not a round number
OVER_SFTP = pytest.mark.sqlite_only("the metadata backend plays no part in an SFTP round trip")


@pytest.fixture
def store(sftp_server):
    """A folder of this test's own on the SFTP server, and a sink for the job `nightly` in it."""
    folder = sftp_server.store / secrets.token_hex(4)
    folder.mkdir()
    return SimpleNamespace(folder=folder, job=folder / "nightly", sink=sink_on(sftp_server, "loop", folder))


def sink_on(server, remote, folder, attempt=None):
    return RcloneSink(remote, str(folder), "nightly", rclone_config=str(server.rclone_config), attempt=attempt)


def uploaded(sink, name, data=PAYLOAD):
    artifact = sink.open(name)
    for start in range(0, len(data), 1024 * 1024):
        artifact.write(data[start:start + 1024 * 1024])
    artifact.close()
    return artifact


def digest(data=PAYLOAD):
    return len(data), hashlib.sha256(data).hexdigest()


def names(folder):
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("text, expected", [
    ("rclone:offsite:backups/db", ("offsite", "backups/db")),
    ("rclone:my remote-2:/srv/backups", ("my remote-2", "/srv/backups")),
    ("rclone:b2.eu:", ("b2.eu", "")),
])
def test_a_destination_names_a_remote_and_a_path(text, expected):
    destination = parse_destination(text)
    assert (destination.kind, destination.remote, destination.path) == ("rclone", *expected)


@pytest.mark.parametrize("text, problem", [
    ("rclone:offsite", "rclone:REMOTE:PATH"),
    ("rclone::path", "name of a remote"),
    ("rclone:--config=/etc/x:path", "name of a remote"),
    ("rclone:-v:path", "name of a remote"),
    ("rclone:s3,access_key_id=AKIA:bucket", "name of a remote"),  # no connection string with credentials
    ("rclone::sftp:path", "name of a remote"),  # nor a backend named on the command line
    ("rclone:offsite:a\nb", "control characters"),
    ("rclone:offsite:a/../b", "'..'"),
])
def test_a_malformed_destination_is_refused_with_the_form_expected(text, problem):
    with pytest.raises(SourceError, match=problem) as raised:
        parse_destination(text)
    assert "AKIA" not in str(raised.value)


@pytest.mark.parametrize("stderr, secret", [
    ("2026/12/03 13:51:56 ERROR : Failed: GET https://alice:hunter2@dav.example/x: 401", "hunter2"),
    ("Failed to copy: https://bucket.example/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA9", "abc123"),
    ("couldn't connect: pass=s3cr3tpass rejected", "s3cr3tpass"),
    ('error: {"token": "ya29.tokenvalue"}', "ya29.tokenvalue"),
    ("403: Authorization: Bearer abc.def", "abc.def"),
])
def test_what_could_be_a_credential_in_rclones_errors_is_masked(stderr, secret):
    message = scrub(stderr)
    assert secret not in message
    assert "***" in message and "2026/12/03" not in message


@OVER_SFTP
def test_an_artifact_is_only_under_its_name_after_the_commit_and_verifies(store):
    artifact = uploaded(store.sink, "new.tar.zst")
    assert names(store.job) == ["new.tar.zst.partial"]
    artifact.commit()
    assert names(store.job) == ["new.tar.zst"]
    assert (store.job / "new.tar.zst").read_bytes() == PAYLOAD
    fractions = []
    artifact.verify(*digest(), fractions.append)
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert artifact.location == store.sink.location("new.tar.zst") == f"rclone:loop:{store.job}/new.tar.zst"
    artifact.write_manifest(b'{"manifest": 1}\n')
    assert names(store.job) == ["new.tar.zst", "new.tar.zst.json"]


@OVER_SFTP
def test_read_exists_and_size_see_the_stored_artifact(store):
    uploaded(store.sink, "a.tar", b"").commit()
    artifact = uploaded(store.sink, "b.tar")
    artifact.commit()
    sink = store.sink
    assert sink.exists(artifact.location) and sink.size(artifact.location) == len(PAYLOAD)
    assert sink.size(sink.location("a.tar")) == 0
    with sink.read(artifact.location) as stream:
        pieces = iter(lambda: stream.read(1 << 20), b"")
        assert b"".join(pieces) == PAYLOAD
    assert not sink.exists(sink.location("gone.tar")) and sink.size(sink.location("gone.tar")) is None
    with pytest.raises(BackupError, match="gone.tar is missing"):
        with sink.read(sink.location("gone.tar")):
            pass
    assert sink.describe() == f"rclone:loop:{store.folder}" and "client_key" not in sink.describe()
    assert not sink.is_local


@OVER_SFTP
def test_delete_removes_an_artifact_and_then_its_manifest_and_a_gone_one_is_no_error(store):
    artifact = uploaded(store.sink, "old.tar")
    artifact.commit()
    artifact.write_manifest(b"{}")
    store.sink.delete(artifact.location)
    assert names(store.job) == ["old.tar.json"]
    store.sink.delete_manifest(artifact.location)
    assert names(store.job) == []
    store.sink.delete(artifact.location)
    store.sink.delete_manifest(artifact.location)


@OVER_SFTP
@pytest.mark.parametrize("stage", ["uploading", "closed", "committed", "with its manifest"])
def test_abort_leaves_nothing_of_the_artifact_and_keeps_the_previous_one(store, stage):
    uploaded(store.sink, "old.tar").commit()
    artifact = store.sink.open("new.tar")
    artifact.write(PAYLOAD)
    if stage != "uploading":
        artifact.close()
    if stage in ("committed", "with its manifest"):
        artifact.commit()
    if stage == "with its manifest":
        artifact.write_manifest(b"{}")
    artifact.abort()
    assert names(store.job) == ["old.tar"]
    assert (store.job / "old.tar").read_bytes() == PAYLOAD


class Stoppable:
    """What the sink asks of an attempt (attempt.Attempt): spawn its tools, check that it may go on, and stop."""

    def __init__(self):
        self.children, self.stop_reason = [], None

    def spawn(self, argv, **options):
        self.check()
        self.children.append(start_tool(argv, **options))
        return self.children[-1]

    def check(self):
        if self.stop_reason:
            raise Stopped(self.stop_reason)

    def stop(self, reason):
        self.stop_reason = reason
        for child in self.children:
            kill_group(child)


@OVER_SFTP
@pytest.mark.parametrize("stopped", [False, True], ids=["rclone killed", "the attempt cancelled"])
def test_a_killed_upload_fails_as_its_attempt_says_and_abort_removes_what_it_left(store, sftp_server, stopped):
    attempt = Stoppable()
    artifact = sink_on(sftp_server, "loop", store.folder, attempt).open("new.tar")
    artifact.write(PAYLOAD)
    if stopped:
        attempt.stop("cancel")
    else:
        kill_group(attempt.children[0])
    with pytest.raises(Stopped if stopped else BackupError, match="cancel" if stopped else "rcat .*partial failed"):
        for _ in range(64):
            artifact.write(PAYLOAD)
        artifact.close()
    artifact.abort()
    assert names(store.job) == []


@OVER_SFTP
def test_a_corrupted_copy_fails_verification(store):
    artifact = uploaded(store.sink, "new.tar")
    artifact.commit()
    stored = store.job / "new.tar"
    stored.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    with pytest.raises(BackupError, match="verification failed"):
        artifact.verify(*digest(), lambda fraction: None)
    stored.write_bytes(PAYLOAD[:1000])
    with pytest.raises(BackupError, match=f"1,000 of {len(PAYLOAD):,} bytes"):
        artifact.verify(*digest(), lambda fraction: None)


@OVER_SFTP
def test_leftovers_of_an_execution_are_removed_and_no_one_elses(store):
    uploaded(store.sink, "20260101T000000Z-other.tar", b"keep").commit()
    uploaded(store.sink, "20260102T000000Z-dead.tar", b"partial")
    done = uploaded(store.sink, "20260102T000000Z-dead.sql", b"committed")
    done.commit()
    done.write_manifest(b"{}")
    removed = store.sink.remove_leftovers("nightly", "dead")
    assert removed == ["20260102T000000Z-dead.sql", "20260102T000000Z-dead.sql.json",
                       "20260102T000000Z-dead.tar.partial"]
    assert names(store.job) == ["20260101T000000Z-other.tar"]
    assert store.sink.remove_leftovers("nightly", "dead") == []
    assert RcloneSink("loop", str(store.folder), "never-ran", str(store.sink.rclone_config)) \
        .remove_leftovers("never-ran", "dead") == []


@OVER_SFTP
@pytest.mark.parametrize("remote, message", [
    ("nosuch", "didn't find section in config file"),
    ("down", "connection refused"),
    ("readonly", "permission denied"),
])
def test_an_unusable_remote_fails_the_upload_with_rclones_message(store, sftp_server, remote, message):
    sink = sink_on(sftp_server, remote, store.folder)
    artifact = sink.open("new.tar")
    with pytest.raises(BackupError, match=f"(?i)rclone rcat {remote}:.*new.tar.partial failed.*{message}") as raised:
        artifact.write(PAYLOAD)
        artifact.close()
    assert "client_key" not in str(raised.value) and str(sftp_server.rclone_config) not in str(raised.value)
    artifact.abort()  # a store it cannot reach to clean up is no new error
    assert names(store.job) == []


@OVER_SFTP
def test_an_unreachable_remote_is_an_error_not_a_missing_file(store, sftp_server):
    sink = sink_on(sftp_server, "down", store.folder)
    with pytest.raises(rclonesink.RcloneError, match="connection refused"):
        sink.exists(sink.location("x.tar"))
    with pytest.raises(OSError):  # retention keeps the artifact and names it again
        sink.delete(sink.location("x.tar"))


# --- end to end: a job with a local and an rclone destination ----------------------------------------

@pytest.fixture
def local_and_rclone(make_job, store, sftp_server, monkeypatch, tmp_path):
    """A job `nightly` backing up to a local directory and to `rclone:<remote>:<store folder>`."""
    monkeypatch.setenv("RCLONE_CONFIG", str(sftp_server.rclone_config))

    def make(remote="loop", **fields):
        job = make_job(**fields)
        with models.database.atomic():
            destinations.set_destinations(job, [str(tmp_path / "backups"), f"rclone:{remote}:{store.folder}"])
        return job

    return make


def logs(execution):
    return "\n".join(line.message for line in ExecutionLog.select().where(ExecutionLog.execution == execution.id)
                     .order_by(ExecutionLog.id))


def copies(execution):
    return [(copy.destination, copy.location) for copy in
            ArtifactCopy.select().where(ArtifactCopy.execution == execution.id).order_by(ArtifactCopy.position)]


@OVER_SFTP
def test_a_backup_stores_verifies_and_prunes_on_the_local_and_the_rclone_destination(local_and_rclone, store,
                                                                                        tmp_path):
    job = local_and_rclone(keep=1)
    first = run_in_process(job)
    assert first.status == ExecutionStatus.SUCCESS, logs(first)
    name = os.path.basename(first.path)
    assert copies(first) == [(str(tmp_path / "backups"), first.path),
                             (f"rclone:loop:{store.folder}", f"rclone:loop:{store.job}/{name}")]
    assert names(store.job) == [name, name + ".json"]
    assert (store.job / name).read_bytes() == open(first.path, "rb").read()
    assert hashlib.sha256((store.job / name).read_bytes()).hexdigest() == first.sha256
    assert f"rclone:loop:{store.folder}" in logs(first) and "verified" in logs(first)

    second = run_in_process(job)
    assert second.status == ExecutionStatus.SUCCESS, logs(second)
    newer = os.path.basename(second.path)
    assert names(store.job) == [newer, newer + ".json"]
    assert names(tmp_path / "backups" / "nightly") == [newer, newer + ".json"]


@OVER_SFTP
def test_restore_and_the_download_read_the_rclone_copy_when_the_local_one_is_gone(local_and_rclone, store, client,
                                                                                    auth, tmp_path):
    out = tmp_path / "restored.txt"
    job = local_and_rclone(source="command:printf 'kept off-site'", restore_command=f"cat > {out}")
    backup = run_in_process(job)
    assert backup.status == ExecutionStatus.SUCCESS, logs(backup)
    os.unlink(backup.path)
    copy, sink = destinations.readable_copy(Execution.get_by_id(backup.id))
    assert copy.position == 1 and not sink.is_local and sink.size(copy.location) == backup.size
    restore = run_restore_in_process(backup.id)
    assert restore.status == ExecutionStatus.SUCCESS, restore.error
    assert out.read_bytes() == b"kept off-site"
    response = client.get(f"/api/executions/{backup.id}/artifact", headers=auth)
    assert response.status_code == 200
    assert hashlib.sha256(response.get_data()).hexdigest() == backup.sha256


@OVER_SFTP
@pytest.mark.parametrize("remote, message", [
    ("nosuch", "didn't find section in config file"),
    ("down", "connection refused"),
    ("readonly", "permission denied"),
])
def test_an_unusable_rclone_destination_fails_the_backup_with_rclones_message_and_leaves_nothing(
        local_and_rclone, store, sftp_server, tmp_path, client, auth, remote, message):
    job = local_and_rclone(remote)
    failed = run_in_process(job)
    assert failed.status == ExecutionStatus.FAILED
    assert re.search(f"(?i)^rclone rcat {remote}:.*partial failed .*{message}", failed.error), failed.error
    assert names(store.job) == [] and names(tmp_path / "backups" / "nightly") == []
    shown = client.get(f"/api/executions/{failed.id}?includeLogs=true", headers=auth).get_data(as_text=True)
    private_key = (sftp_server.root / "client_key").read_text().splitlines()[1]
    for place in (failed.error, logs(failed), shown):
        assert "client_key" not in place and "rclone.conf" not in place and private_key not in place


@OVER_SFTP
def test_a_cancel_during_the_upload_kills_rclone_and_leaves_nothing_on_the_remote(local_and_rclone, store):
    job = local_and_rclone(source="command:head -c 2000000000 /dev/urandom", compression="none")
    queued = Execution.enqueue(job)
    (execution,) = [claimed for claimed in leases.claim("test-worker", 60_000) if claimed.id == queued.id]
    run = Run(execution, job, "test-worker", time.monotonic() + 60)
    thread = threading.Thread(target=run.execute)
    thread.start()
    try:
        wait_until(lambda: any(name.endswith(".partial") for name in names(store.job)), timeout=30,
                   message="the upload to start")
        run.stop("cancel")
    finally:
        thread.join(60)
    assert Execution.get_by_id(queued.id).status == ExecutionStatus.CANCELLED, logs(queued)
    assert names(store.job) == []
    assert not [child for child in run.children if child.poll() is None]


@OVER_SFTP
def test_a_copy_the_remote_refuses_to_delete_is_kept_and_named_again(local_and_rclone, store):
    job = local_and_rclone(keep=1)
    first = run_in_process(job)
    stored = store.job / os.path.basename(first.path)
    stored.unlink()
    stored.mkdir()  # rclone deletefile refuses a directory, as a store refuses a deletion
    (stored / "inside").write_bytes(b"x")
    second = run_in_process(job)
    assert second.status == ExecutionStatus.SUCCESS, logs(second)
    assert "could not delete rclone:loop:" in second.retention_error
    assert copies(Execution.get_by_id(first.id)) == [(f"rclone:loop:{store.folder}", f"rclone:loop:{stored}")]
    assert not os.path.exists(first.path) and Execution.get_by_id(first.id).path == first.path


@OVER_SFTP
def test_the_reclaim_removes_what_a_dead_attempt_left_on_the_remote(local_and_rclone, store):
    job = local_and_rclone()
    sink = RcloneSink.from_destination(f"rclone:loop:{store.folder}", job)
    uploaded(sink, "20260102T000000Z-dead.tar", b"half")  # never committed: only its .partial
    uploaded(sink, "20260101T000000Z-alive.tar", b"kept").commit()
    removed = [leftover.name for leftover in destinations.leftovers(job, "dead")]
    assert "20260102T000000Z-dead.tar.partial" in removed
    assert names(store.job) == ["20260101T000000Z-alive.tar"]
