"""The local directory sink: partial files, the commit, read-back verification, abort, leftovers."""
import hashlib
import os
import random
import stat
from types import SimpleNamespace

import pytest

import backup
import sinks
from sinks import (LocalDirectorySink, create_artifact, job_directory, partial_files, read_back,
                   remove_partial_files)
from sources import BackupError
from test_pipeline import assert_no_thread_left, threads

PAYLOAD = b"backup bytes\n" * 4096


def written(sink, name, data=PAYLOAD):
    artifact = sink.open(name)
    artifact.write(data)
    artifact.close()
    return artifact


def digest(data=PAYLOAD):
    return len(data), hashlib.sha256(data).hexdigest()


def test_an_artifact_is_only_under_its_name_after_the_commit(tmp_path):
    sink = LocalDirectorySink(tmp_path)
    artifact = written(sink, "new.tar")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.tar.partial"]
    artifact.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.tar"]
    assert (tmp_path / "new.tar").read_bytes() == PAYLOAD
    assert artifact.location == sink.location("new.tar") == str(tmp_path / "new.tar")


@pytest.mark.parametrize("commit", [False, True], ids=["before the commit", "after the commit"])
def test_abort_leaves_no_partial_file_and_keeps_the_previous_artifact(tmp_path, commit):
    previous = tmp_path / "old.tar"
    previous.write_bytes(b"the last good backup")
    artifact = written(LocalDirectorySink(tmp_path), "new.tar")
    if commit:
        artifact.commit()
    artifact.abort()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.tar"]
    assert previous.read_bytes() == b"the last good backup"


def test_abort_of_an_artifact_still_being_written_removes_its_partial_file(tmp_path):
    artifact = LocalDirectorySink(tmp_path).open("new.tar")
    artifact.write(PAYLOAD)
    artifact.abort()
    assert not list(tmp_path.iterdir())


def test_verification_passes_for_the_stored_bytes_and_reports_its_progress(tmp_path):
    artifact = written(LocalDirectorySink(tmp_path), "new.tar")
    artifact.commit()
    fractions = []
    artifact.verify(*digest(), fractions.append)
    assert fractions[-1] == 1 and fractions == sorted(fractions)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "grown"])
def test_verification_catches_a_corrupted_file(tmp_path, damage):
    artifact = written(LocalDirectorySink(tmp_path), "new.tar")
    artifact.commit()
    path = tmp_path / "new.tar"
    if damage == "flipped byte":
        with open(path, "r+b") as stream:
            stream.seek(1000)
            stream.write(b"#")
    elif damage == "truncated":
        os.truncate(path, len(PAYLOAD) - 1)
    else:
        with open(path, "ab") as stream:
            stream.write(b"!")
    with pytest.raises(BackupError, match=f"verification failed: {path} does not match what was written"):
        artifact.verify(*digest(), lambda fraction: None)


def test_a_new_artifact_is_private_and_never_overwrites_a_file(tmp_path):
    path = tmp_path / "a.partial"
    with create_artifact(str(path)) as stream:
        stream.write(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_artifact(str(path))
    assert path.read_bytes() == b"x"


def test_delete_removes_an_artifact_and_ignores_one_already_gone(tmp_path):
    sink, path = LocalDirectorySink(tmp_path), tmp_path / "old.tar"
    path.write_bytes(b"old")
    sink.delete(str(path))
    sink.delete(str(path))
    assert not path.exists()


def test_the_leftovers_of_an_execution_are_its_files_only(tmp_path):
    job = SimpleNamespace(id="job-1", name="nightly", destination=str(tmp_path))
    directory = job_directory(job)
    assert directory == tmp_path / "nightly"
    directory.mkdir()
    mine = ["20261203T000000Z-ex1.tar.zst.partial", "20261203T000000Z-ex1.snapshot.partial",
            "20261203T000000Z-ex1.tar.zst", "20261203T000000Z-ex1.tar.zst.json.partial",
            "20261203T000000Z-ex1.tar.zst.json"]
    others = ["20261202T000000Z-ex2.tar.zst", "20261202T000000Z-ex2.tar.zst.json"]
    for name in mine + others:
        (directory / name).write_bytes(b"")
    assert sorted(path.name for path in partial_files(job, "ex1")) == sorted(mine)
    assert sorted(remove_partial_files(job, "ex1")) == sorted(mine)
    assert sorted(path.name for path in directory.iterdir()) == others


def test_the_manifest_lies_beside_the_committed_artifact_with_the_artifacts_mode(tmp_path):
    artifact = written(LocalDirectorySink(tmp_path), "new.tar")
    artifact.commit()
    artifact.write_manifest(b'{"artifact": "new.tar"}\n')
    assert sorted(path.name for path in tmp_path.iterdir()) == ["new.tar", "new.tar.json"]
    assert (tmp_path / "new.tar.json").read_bytes() == b'{"artifact": "new.tar"}\n'
    assert stat.S_IMODE((tmp_path / "new.tar.json").stat().st_mode) == 0o600


def test_a_manifest_that_cannot_be_written_leaves_nothing_after_the_abort(tmp_path, monkeypatch):
    previous = tmp_path / "old.tar"
    previous.write_bytes(b"the last good backup")
    artifact = written(LocalDirectorySink(tmp_path), "new.tar")
    artifact.commit()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        artifact.write_manifest(b"{}")
    assert (tmp_path / "new.tar.json.partial").exists()  # the fault struck after the write began
    monkeypatch.undo()
    artifact.abort()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.tar"]
    assert previous.read_bytes() == b"the last good backup"


def test_delete_manifest_removes_only_the_manifest(tmp_path):
    sink, path = LocalDirectorySink(tmp_path), tmp_path / "old.tar"
    path.write_bytes(b"old")
    (tmp_path / "old.tar.json").write_text("{}")
    sink.delete_manifest(str(path))
    sink.delete_manifest(str(path))
    assert [entry.name for entry in tmp_path.iterdir()] == ["old.tar"]


@pytest.mark.parametrize("name, artifact", [("a.tar.zst", True), ("a.db", True), ("a.tar.zst.json", False),
                                            ("a.tar.zst.partial", False), ("a.tar.zst.json.partial", False)])
def test_neither_a_manifest_nor_a_partial_file_counts_as_an_artifact(name, artifact):
    assert sinks.is_artifact_name(name) is artifact


def test_a_job_whose_name_cannot_be_a_directory_stores_under_its_id(tmp_path):
    job = SimpleNamespace(id="job-1", name="a/b", destination=str(tmp_path))
    assert job_directory(job) == tmp_path / "job-1"


def test_read_back_hashes_the_whole_file_and_stops_when_told(tmp_path):
    path = tmp_path / "stored"
    path.write_bytes(random.Random(5).randbytes(3 * sinks.READ_BACK_PIECE + 12345))
    content = path.read_bytes()
    progress = []
    assert read_back(path, progress.append) == (len(content), hashlib.sha256(content).hexdigest())
    assert progress[-1] == len(content) and progress == sorted(progress)

    before = threads()

    def stop(_count):
        raise backup.Stopped("cancel")

    with pytest.raises(backup.Stopped):
        read_back(path, stop)
    assert_no_thread_left(before)

    empty = tmp_path / "empty"
    empty.touch()
    assert read_back(empty, progress.append) == (0, hashlib.sha256().hexdigest())
