"""Backups with an S3 destination beside a local one, end to end through the real backup run."""
import hashlib
import json
import time
from pathlib import Path

import pytest

import destinations
import models
import leases
from models import ArtifactCopy, Execution, ExecutionLog, Job
from restore import Restore, queue_restore
from support import free_port, poll, run_in_process, trigger, wait_for_status

pytestmark = pytest.mark.sqlite_only("the metadata backend plays no part in an S3 round trip")


@pytest.fixture
def bucket(s3):
    return s3.make_bucket()


def s3_job(make_job, tmp_path, destination, keep=None):
    job = make_job(keep=keep)
    with Job._meta.database.atomic():
        destinations.set_destinations(job, [str(tmp_path / "backups"), destination])
    return Job.get_by_id(job.id)


def objects(s3, bucket):
    return sorted(found["Key"] for found in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def uploads(s3, bucket):
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def run_restore_in_process(restore):
    (execution,) = [claimed for claimed in leases.claim("test-worker", 60_000) if claimed.id == restore.id]
    Restore(execution, execution.job, "test-worker", time.monotonic() + 60).execute()
    return Execution.get_by_id(restore.id)


def everything_said(execution, client, auth):
    """The execution's error, logs and API answer, where no credential may appear."""
    logs = [row.message for row in ExecutionLog.select().where(ExecutionLog.execution == execution.id)]
    return json.dumps([execution.error, logs, poll(client, auth, execution.id, logs=True)])


def test_a_backup_is_stored_verified_and_recorded_on_both_destinations(s3, bucket, make_job, tmp_path, client,
                                                                       auth):
    job = s3_job(make_job, tmp_path, s3.destination(bucket))
    done = run_in_process(job)
    assert done.status == "Success", done.error
    copies = list(ArtifactCopy.select().where(ArtifactCopy.execution == done.id).order_by(ArtifactCopy.position))
    assert [copy.location.startswith("s3://") for copy in copies] == [False, True]
    assert done.path == copies[0].location
    name = copies[0].location.rsplit("/", 1)[1]
    assert objects(s3, bucket) == [f"backups/nightly/{name}", f"backups/nightly/{name}.json"]
    stored = s3.client().get_object(Bucket=bucket, Key=f"backups/nightly/{name}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == done.sha256
    assert len(stored) == done.size
    said = everything_said(done, client, auth)
    assert f"s3://{bucket}/backups/nightly/{name}" in said or f"s3://{bucket}/backups" in said
    assert s3.secret_key not in said


def test_retention_prunes_on_both_destinations(s3, bucket, make_job, tmp_path):
    job = s3_job(make_job, tmp_path, s3.destination(bucket), keep=1)
    first = run_in_process(job)
    second = run_in_process(job)
    assert (first.status, second.status) == ("Success", "Success")
    names = [copy.location.rsplit("/", 1)[1] for copy in
             ArtifactCopy.select().where(ArtifactCopy.execution == second.id).order_by(ArtifactCopy.position)]
    assert objects(s3, bucket) == [f"backups/nightly/{names[1]}", f"backups/nightly/{names[1]}.json"]
    assert sorted(path.name for path in (tmp_path / "backups" / "nightly").iterdir()) == [names[0],
                                                                                         names[0] + ".json"]
    assert Execution.get_by_id(first.id).path is None


@pytest.mark.parametrize("store, message", [
    ("missing bucket", "NoSuchBucket"),
    ("wrong secret", "SignatureDoesNotMatch"),
    ("unreachable endpoint", "Could not connect to the endpoint URL"),
])
def test_a_store_that_refuses_fails_the_run_leaving_nothing_and_no_secret(s3, bucket, make_job, tmp_path,
                                                                            monkeypatch, client, auth, store,
                                                                            message):
    destination = {
        "missing bucket": s3.destination("no-such-bucket-here"),
        "wrong secret": s3.destination(bucket),
        "unreachable endpoint": f"s3://{bucket}/backups?endpoint=http://127.0.0.1:{free_port()}",
    }[store]
    if store == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789abcdef")
    job = s3_job(make_job, tmp_path, destination)
    done = run_in_process(job)
    assert done.status == "Failed"
    assert message in done.error
    assert objects(s3, bucket) == [] and uploads(s3, bucket) == []
    assert list((tmp_path / "backups" / "nightly").glob("*")) == []  # the local copy is removed too
    said = everything_said(done, client, auth)
    assert s3.secret_key not in said and "wrong-secret-0123456789abcdef" not in said


def test_a_store_refusing_a_later_run_fails_it_with_its_message_and_keeps_the_last_good_backup(
        s3, bucket, make_job, tmp_path, monkeypatch):
    job = s3_job(make_job, tmp_path, s3.destination(bucket), keep=1)
    good = run_in_process(job)
    assert good.status == "Success", good.error
    stored = (objects(s3, bucket), sorted((tmp_path / "backups" / "nightly").iterdir()))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-wrong-0123456789abcdef")
    monkeypatch.setattr("s3sink.CLIENTS", {})  # as a worker restarted with the wrong key
    failed = run_in_process(job)
    assert failed.status == "Failed" and "SignatureDoesNotMatch" in failed.error
    assert "rotated-wrong-0123456789abcdef" not in failed.error
    assert (objects(s3, bucket), sorted((tmp_path / "backups" / "nightly").iterdir())) == stored
    assert uploads(s3, bucket) == []
    good = Execution.get_by_id(good.id)
    assert good.status == "Success" and len(list(ArtifactCopy.select().where(ArtifactCopy.execution == good.id))) == 2


def test_the_reclaim_aborts_the_upload_and_deletes_the_objects_a_dead_worker_left(s3, bucket, make_job, tmp_path,
                                                                                  client, auth, start_worker):
    job = make_job(name="died-late", source="command:echo payload")
    with Job._meta.database.atomic():
        destinations.set_destinations(job, [s3.destination(bucket)])
    execution_id = trigger(client, auth, job.id)
    # As a worker killed mid-upload, or after completing an upload but before recording success, leaves them.
    Execution.update(status="Running", attempts=1, worker_id="dead", lease_expires_at=models.now_ms() - 1).where(
        Execution.id == execution_id).execute()
    s3.client().create_multipart_upload(Bucket=bucket,
                                        Key=f"backups/died-late/20261122T010000Z-{execution_id}.out.zst")
    unrecorded = f"backups/died-late/20261122T000000Z-{execution_id}.out.zst"
    s3.client().put_object(Bucket=bucket, Key=unrecorded, Body=b"complete but never reported")
    s3.client().put_object(Bucket=bucket, Key=unrecorded + ".json", Body=b"{}")
    another = "backups/died-late/20261121T000000Z-0190aaaaaaaaeeeeeeeeeeeeeeeeeeee.out.zst"
    s3.client().put_object(Bucket=bucket, Key=another, Body=b"another execution's")

    start_worker(**s3.env)
    data = wait_for_status(client, auth, execution_id, timeout=60)
    assert data["status"] == "Success", data
    assert uploads(s3, bucket) == []
    new = data["path"].removeprefix(f"s3://{bucket}/")
    assert objects(s3, bucket) == sorted([another, new, new + ".json"])


def test_jobs_add_with_a_local_and_an_s3_destination_restores_and_downloads_from_s3_when_the_local_copy_is_gone(
        s3, bucket, runner, tmp_path, client, auth):
    source = tmp_path / "site"
    source.mkdir()
    (source / "index.html").write_text("<h1>kept off-site</h1>\n")
    added = runner("jobs", "add", "site", "--source", f"files://{source}", "--destination", tmp_path / "backups",
                   "--destination", s3.destination(bucket))
    assert added.exit_code == 0, added.output
    assert s3.secret_key not in added.output
    backup = run_in_process(Job.get(Job.name == "site"))
    assert backup.status == "Success", backup.error
    Path(backup.path).unlink()  # the local copy is gone: the S3 copy serves

    response = client.get(f"/api/executions/{backup.id}/artifact", headers=auth)
    assert response.status_code == 200
    assert hashlib.sha256(response.get_data()).hexdigest() == backup.sha256
    restored = tmp_path / "restored"
    restore = run_restore_in_process(queue_restore(backup.id, target=f"files://{restored}"))
    assert restore.status == "Success", restore.error
    assert (restored / "index.html").read_text() == "<h1>kept off-site</h1>\n"
    assert s3.secret_key not in everything_said(restore, client, auth)
