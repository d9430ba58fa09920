"""Retention: which artifacts go (without a database), then pruning on a real one."""
from pathlib import Path
from types import SimpleNamespace

import pytest

import models
import retention
from models import Execution, now_ms
from sinks import LocalDirectorySink, manifest_location
from statuses import ExecutionStatus


def ignore(message, level="info"):
    pass


def holders(*ids):
    return [SimpleNamespace(id=id_, path=f"/backups/{id_}") for id_ in ids]


def test_the_keep_newest_stay_and_the_rest_expire():
    assert [old.id for old in retention.expired(holders("e5", "e4", "e3", "e2"), 2, "e5")] == ["e3", "e2"]


def test_the_newest_artifact_never_expires_whatever_the_order_of_finishing():
    # The pruning attempt (e1) is older than a backup that succeeded before it: e1 is kept, e2 too.
    assert [old.id for old in retention.expired(holders("e2", "e1"), 1, "e1")] == []
    assert retention.expired(holders("e2"), 1, "e2") == []


def test_nothing_expires_while_there_are_no_more_artifacts_than_kept():
    assert retention.expired(holders("e3", "e2"), 5, "e3") == []


def manifest_of(path):
    return Path(manifest_location(str(path)))


@pytest.fixture
def successes(make_job, tmp_path):
    """A job keeping 2, with four successful executions and their artifacts and manifests, oldest first."""
    job = make_job(name="kept", keep=2)
    directory = tmp_path / "backups" / "kept"
    directory.mkdir(parents=True)
    made = []
    with models.database.atomic():
        for number in range(4):
            path = directory / f"artifact-{number}.tar.zst"
            path.write_bytes(b"backup")
            manifest_of(path).write_text("{}")
            made.append(Execution.create(job=job, status=ExecutionStatus.SUCCESS, path=str(path),
                                         created_at=now_ms() - 1000 * (10 - number)))
    return job, made, LocalDirectorySink(directory)


def test_prune_forgets_then_deletes_the_older_artifacts_and_keeps_the_newest(successes):
    job, made, sink = successes
    lines = []

    def log(message, level="info"):
        lines.append(message)

    assert retention.prune(job, made[-1].id, lambda: None, log) is None
    paths = {execution.id: Execution.get_by_id(execution.id).path for execution in made}
    assert [paths[execution.id] is None for execution in made] == [True, True, False, False]
    assert sorted(path.name for path in sink.directory.iterdir()) == [
        "artifact-2.tar.zst", "artifact-2.tar.zst.json", "artifact-3.tar.zst", "artifact-3.tar.zst.json"]
    assert lines[-1] == "retention: keeping the 2 newest of at most 2 backups; deleted 2"


def test_a_file_that_cannot_be_deleted_stays_named_and_is_reported(successes):
    job, made, sink = successes
    stuck = made[0].path
    # A directory where the artifact was: unlink() refuses it, as it would a file on a read-only mount.
    sink.directory.joinpath("artifact-0.tar.zst").unlink()
    sink.directory.joinpath("artifact-0.tar.zst").mkdir()
    problem = retention.prune(job, made[-1].id, lambda: None, ignore)
    assert problem.startswith(f"could not delete {stuck} (execution {made[0].id})")
    assert Execution.get_by_id(made[0].id).path == stuck
    assert manifest_of(stuck).exists()  # deleted only after its artifact
    assert Execution.get_by_id(made[1].id).path is None
    assert not manifest_of(made[1].path).exists()


def test_a_manifest_that_cannot_be_deleted_is_reported_and_its_artifact_stays_forgotten(successes):
    job, made, sink = successes
    stuck = manifest_of(made[0].path)
    stuck.unlink()
    stuck.mkdir()  # unlink() refuses a directory, as it would a file on a read-only mount
    problem = retention.prune(job, made[-1].id, lambda: None, ignore)
    assert problem.startswith(f"could not delete the manifest of {made[0].path} (execution {made[0].id})")
    assert not Path(made[0].path).exists() and Execution.get_by_id(made[0].id).path is None
    assert not Path(made[1].path).exists() and not manifest_of(made[1].path).exists()


def test_a_stop_during_pruning_leaves_the_rest_named(successes):
    job, made, sink = successes

    def stop():
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        retention.prune(job, made[-1].id, stop, ignore)
    assert all(Execution.get_by_id(execution.id).path for execution in made)


def test_a_job_without_keep_prunes_nothing(successes):
    job, made, sink = successes
    job.keep = None
    assert retention.prune(job, made[-1].id, lambda: None, ignore) is None
    assert len(list(sink.directory.iterdir())) == 8
