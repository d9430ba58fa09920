"""The manifest `<artifact>.json`: what it holds, how it is written, and a failure to write it."""
import hashlib
import json
import os
import re
import stat
from importlib.metadata import version
from pathlib import Path

import pytest

import manifest
import sinks
from models import Execution
from sinks import job_directory, manifest_location
from statuses import ExecutionStatus
from support import run_in_process, run_to_end

def manifest_of(location):
    return json.loads(Path(manifest_location(location)).read_text())


def test_a_backup_writes_its_manifest_beside_the_artifact(make_job):
    job = make_job(name="report", source="command:printf 'twelve bytes'", compression="gzip")
    execution = run_in_process(job)
    assert execution.status == ExecutionStatus.SUCCESS, execution.error
    artifact = Path(execution.path)
    document = manifest_of(execution.path)

    assert document == {
        "format": 1,
        "artifact": artifact.name,
        "jobId": job.id,
        "jobName": "report",
        "sourceKind": "command",
        "source": "command",  # a command line may hold anything, so it is never written down
        "destinations": [str(artifact.parent.parent)],  # every destination of the copies, as users see them
        "executionId": execution.id,
        "createdAt": document["createdAt"],
        "rawSize": 12,
        "size": artifact.stat().st_size,
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "compression": "gzip",
        "encryption": None,
        "backhookVersion": version("backhook"),
        "restore": manifest.restore_commands("command", "gzip", artifact=artifact.name, sha256=execution.sha256),
    }
    assert document["sha256"] == execution.sha256 and document["size"] == execution.size
    # The time the file name carries, in the API's format.
    assert document["createdAt"][:19].replace("-", "").replace(":", "") + "Z" == artifact.name.split("-")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["createdAt"])
    assert stat.S_IMODE(Path(manifest_location(execution.path)).stat().st_mode) == 0o600
    assert not list(artifact.parent.glob("*.partial"))
    assert any("manifest written" in entry.message for entry in execution.logs)


def test_the_manifest_never_holds_a_credential_of_the_source(make_job):
    job = make_job(name="secretive", source="postgresql://backup:s3cr%40t@db.internal:5432/app"
                                            "?sslpassword=hush&application_name=nightly")
    document = manifest.manifest(job, "ex1", "20261203T000000Z-ex1.sql.zst", 0, 10, 5, "0" * 64)
    text = manifest.encode(document).decode()
    assert "s3cr" not in text and "hush" not in text
    assert document["source"] == "postgresql://backup:***@db.internal:5432/app?sslpassword=***&application_name=nightly"
    assert document["sourceKind"] == "postgresql"


def test_every_backed_up_kind_has_restore_commands_that_check_the_checksum_first():
    for kind in ("sqlite", "postgresql", "mysql", "files", "command"):
        for compression in manifest.DECOMPRESS:
            lines = manifest.restore_commands(kind, compression, artifact="a.out", sha256="ab" * 32)
            checks = [line for line in lines if not line.startswith("#")]
            assert checks[0] == f'echo "{"ab" * 32}  a.out" | sha256sum -c -', (kind, compression)
            assert "$ARTIFACT" not in "\n".join(lines) and "$SHA256" not in "\n".join(lines)
    assert manifest.restore_commands("wpsec", "zstd") == []


@pytest.mark.parametrize("fault", ["write", "fsync", "rename"])
def test_a_manifest_that_cannot_be_written_fails_the_backup_and_removes_the_artifact(
        make_job, monkeypatch, fault):
    job = make_job(name="fragile", source="command:echo payload")
    first = run_in_process(job)
    assert first.status == ExecutionStatus.SUCCESS, first.error
    before = sorted(path.name for path in job_directory(job).iterdir())

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    if fault == "write":
        real = sinks.create_artifact

        class FullDisk:
            """The manifest's partial file, created; every write to it fails."""

            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.stream.close()

            write = staticmethod(full_disk)

        monkeypatch.setattr(sinks, "create_artifact",
                            lambda path: FullDisk(real(path)) if path.endswith(".json.partial") else real(path))
    elif fault == "fsync":
        # The artifact's own fsyncs pass; the manifest's (its file is named *.json.partial) fails.
        real = os.fsync

        def failing_fsync(fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".json.partial"):
                full_disk()
            return real(fd)
        monkeypatch.setattr(os, "fsync", failing_fsync)
    else:
        real = os.rename

        def failing_rename(source, target, *args, **kwargs):
            if str(target).endswith(".json"):
                full_disk()
            return real(source, target, *args, **kwargs)
        monkeypatch.setattr(os, "rename", failing_rename)

    failed = run_in_process(job)
    monkeypatch.undo()
    assert failed.status == ExecutionStatus.FAILED
    assert "No space left on device" in failed.error
    assert failed.path is None
    assert any(entry.message.startswith("verified ") for entry in failed.logs)  # its artifact was in place
    assert sorted(path.name for path in job_directory(job).iterdir()) == before  # nothing of it is left
    assert Path(first.path).read_bytes() and manifest_of(first.path)["executionId"] == first.id


def test_a_backup_through_the_worker_has_its_manifest(client, auth, make_job, start_worker):
    job = make_job(name="via-worker", source="command:echo hello")
    start_worker()
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Success", data["error"]
    document = manifest_of(data["path"])
    assert document["executionId"] == data["id"] and document["size"] == data["size"]
    assert document["sha256"] == Execution.get_by_id(data["id"]).sha256
