"""Several destinations per job (issue 15): their forms, a copy on each, and every path that reads or removes copies."""
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import database
import destinations
import leases
import migrations
import models
from backup import Run
from models import ArtifactCopy, Execution, Job
from restore import Restore, queue_restore
from sinks import manifest_location
from sources import SourceError
from statuses import ExecutionStatus
from support import PROJECT, poll, run_in_process, trigger, wait_for_status, wait_until


# --- the forms -------------------------------------------------------------------------

GOOD = [
    ("/srv/backups", "local", {"path": "/srv/backups"}),
    ("s3://my-bucket", "s3", {"bucket": "my-bucket", "path": ""}),
    ("s3://my.bucket/nightly/db/", "s3", {"bucket": "my.bucket", "path": "nightly/db"}),
    ("s3://b-1/p?endpoint=http://127.0.0.1:9000&region=eu-central-1&profile=backup&storage_class=STANDARD_IA",
     "s3", {"bucket": "b-1", "path": "p", "options": {"endpoint": "http://127.0.0.1:9000", "region": "eu-central-1",
                                                     "profile": "backup", "storage_class": "STANDARD_IA"}}),
    ("rclone:offsite:backups/db", "rclone", {"remote": "offsite", "path": "backups/db"}),
    ("rclone:my remote:", "rclone", {"remote": "my remote", "path": ""}),
    ("s3://b-1?endpoint=http://[::1]:9000", "s3", {"options": {"endpoint": "http://[::1]:9000"}}),
    ("s3://b-1?endpoint=https://s3.eu-central-003.backblazeb2.com/", "s3",
     {"options": {"endpoint": "https://s3.eu-central-003.backblazeb2.com/"}}),
    ("s3://b-1?endpoint=http://garage_1:3900&region=garage", "s3",
     {"options": {"endpoint": "http://garage_1:3900", "region": "garage"}}),
]

BAD = [
    ("", "empty"),
    ("relative/dir", "absolute path"),
    ("ftp://host/dir", "ftp: is not a destination"),
    ("file:///srv", "file: is not a destination"),
    ("s3://", "bucket"),
    ("s3://UPPER/x", "bucket"),
    ("s3://ab", "bucket"),
    ("s3://key:secret@bucket/x", "credentials never go into a destination"),
    ("s3://bucket/x?endpoint=http://key:secret@127.0.0.1:9000", "credentials never go into a destination"),
    ("s3://bucket/x?access_key=AKIA", "unknown option 'access_key'"),
    ("s3://bucket/x?region=a&region=b", "given twice"),
    ("s3://bucket/x?endpoint=ftp://host", "http:// or https://"),
    ("s3://bucket/a//b", "empty, '.' or '..'"),
    ("s3://bucket/../b", "empty, '.' or '..'"),
    ("rclone:offsite", "rclone:REMOTE:PATH"),
    ("rclone::sftp,host=h,pass=secret:path", "not a connection string"),
    ("rclone:-flag:path", "not a connection string"),
    ("rclone:offsite:../up", "'..'"),
    ("/srv/back\nups", "control characters"),
    ("S3://bucket/x", "written s3://BUCKET/PREFIX, in lowercase"),
    ("s3:/bucket/x", "written s3://BUCKET/PREFIX, in lowercase"),
    ("s3://192.168.1.10/x", "named like an IP address"),
    ("s3://bucket/x?endpoint", "NAME=VALUE pairs"),
    ("s3://bucket/x?region=a&&profile=b", "NAME=VALUE pairs"),
    ("s3://bucket/x?endpoint=http://[::1", "http:// or https://"),
    ("s3://bucket/x?endpoint=127.0.0.1:9000", "http:// or https://"),
    ("s3://bucket/x?endpoint=http://127.0.0.1:99999", "port must be a number from 1 to 65535"),
    ("s3://bucket/x?endpoint=http://127.0.0.1:nine", "port must be a number from 1 to 65535"),
    ("s3://bucket/x?endpoint=http://127.0.0.1:", "port must be a number from 1 to 65535"),
    ("s3://bucket/x?endpoint=http://s3 host:9000", "is not a host name or an IP address"),
    ("s3://bucket/x?endpoint=http://-s3.example.com", "is not a host name or an IP address"),
    ("s3://bucket/x?endpoint=https://s3.example.com/?x-id=1", "cannot have a query string"),
]


@pytest.mark.parametrize("text, kind, parts", GOOD)
def test_the_destination_forms_parse(text, kind, parts):
    parsed = destinations.parse_destination(text)
    assert parsed.kind == kind and parsed.text == text
    assert {name: getattr(parsed, name) for name in parts} == parts


@pytest.mark.parametrize("text, why", BAD)
def test_a_malformed_destination_is_refused_naming_the_forms(text, why):
    with pytest.raises(SourceError) as refused:
        destinations.parse_destination(text)
    message = str(refused.value)
    assert why in message and destinations.FORMS in message
    assert "secret" not in message and "AKIA" not in message.replace("'access_key'", "")


# --- the command line ------------------------------------------------------------------

def test_jobs_add_takes_several_destinations_and_refuses_an_unknown_scheme(runner, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    result = runner("jobs", "add", "multi", "--source", "command:echo hi", "--destination", first,
                    "--destination", second, "--allow-partial-destinations")
    assert result.exit_code == 0, result.output
    job = Job.get(Job.name == "multi")
    assert destinations.destination_texts(job) == [str(first), str(second)]
    assert job.destination == str(first) and job.allow_partial_destinations
    assert f"→ {first}, {second}" in result.output

    refused = runner("jobs", "add", "odd", "--source", "command:echo hi", "--destination", "ftp://host/x")
    assert refused.exit_code != 0 and "s3://BUCKET" in refused.output and "rclone:REMOTE:PATH" in refused.output
    assert Job.get_or_none(Job.name == "odd") is None
    twice = runner("jobs", "add", "twice", "--source", "command:echo hi", "--destination", first,
                   "--destination", first)
    assert twice.exit_code != 0 and "given twice" in twice.output


@pytest.mark.parametrize("destination, why", [
    ("gopher://host/x", "gopher: is not a destination"),
    ("s3:///backups", "the bucket must be"),
    ("s3://bucket/x?acl=public-read", "unknown option 'acl'"),
    ("s3://bucket/x?endpoint=http://127.0.0.1:99999", "port must be a number"),
    ("s3://bucket/x?endpoint=s3.example.com", "http:// or https://"),
    ("s3://bucket/x?region=eu west", "region= has an unexpected character"),
    ("s3://bucket/x?storage_class=DEEP_ARCHIVE", "cannot be read back"),
    ("s3://bucket/x?endpoint", "NAME=VALUE pairs"),
])
def test_jobs_add_and_jobs_set_refuse_what_a_run_would_only_find_later(runner, make_job, tmp_path, destination,
                                                                       why):
    added = runner("jobs", "add", "later", "--source", "command:echo hi", "--destination", destination)
    assert added.exit_code != 0 and why in added.output and "Traceback" not in added.output
    assert Job.get_or_none(Job.name == "later") is None
    job = make_job(name="kept", source="command:echo hi")
    before = destinations.destination_texts(job)
    changed = runner("jobs", "set", "kept", "--add-destination", destination)
    assert changed.exit_code != 0 and why in changed.output and "Traceback" not in changed.output
    assert destinations.destination_texts(job) == before


def test_jobs_set_adds_and_removes_destinations_but_never_the_last_and_deletes_nothing(runner, make_job, tmp_path):
    job = make_job(name="moving", source="command:printf kept")
    first = job.destination
    backup = run_in_process(job)
    assert backup.status == ExecutionStatus.SUCCESS
    stored = list(Path(first).rglob(f"*-{backup.id}.*"))
    second = tmp_path / "second"
    added = runner("jobs", "set", "moving", "--add-destination", second)
    assert added.exit_code == 0, added.output
    assert destinations.destination_texts(job) == [first, str(second)]
    removed = runner("jobs", "set", job.id, "--remove-destination", first)
    assert removed.exit_code == 0, removed.output
    assert "stay there" in removed.output and "deletes nothing" in removed.output
    assert destinations.destination_texts(job) == [str(second)]
    assert Job.get_by_id(job.id).destination == str(second)  # the first is still `destination`
    assert stored and all(path.exists() for path in stored)
    last = runner("jobs", "set", "moving", "--remove-destination", second)
    assert last.exit_code != 0 and "at least one destination" in last.output
    assert destinations.destination_texts(job) == [str(second)]
    unknown = runner("jobs", "set", "moving", "--add-destination", "gopher://x")
    assert unknown.exit_code != 0 and "rclone:REMOTE:PATH" in unknown.output


def test_the_api_lists_every_destination(client, auth, make_job, tmp_path):
    job = make_job(name="listed")
    with models.database.atomic():
        destinations.set_destinations(job, [job.destination, str(tmp_path / "copy")])
    listed = {entry["id"]: entry for entry in client.get("/api/jobs", headers=auth).get_json()["data"]}
    assert listed[job.id]["destinations"] == [job.destination, str(tmp_path / "copy")]
    assert listed[job.id]["destination"] == job.destination and listed[job.id]["allowPartialDestinations"] is False


# --- two local destinations --------------------------------------------------------------

@pytest.fixture
def two_places(make_job, tmp_path):
    """A command: job storing on two local directories; (job, [first, second])."""
    def make(name="twice", **fields):
        job = make_job(name=name, source="command:printf 'the same bytes on both'", **fields)
        places = [tmp_path / "first", tmp_path / "second"]
        with models.database.atomic():
            destinations.set_destinations(job, [str(place) for place in places])
        return Job.get_by_id(job.id), places
    return make


def job_files(place, name):
    folder = place / name
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_two_local_destinations_get_identical_verified_copies_and_manifests(two_places):
    job, places = two_places()
    execution = run_in_process(job)
    assert execution.status == ExecutionStatus.SUCCESS, execution.error
    copies = list(ArtifactCopy.select().where(ArtifactCopy.execution == execution.id).order_by(ArtifactCopy.position))
    assert [(copy.position, copy.destination) for copy in copies] == [(0, str(places[0])), (1, str(places[1]))]
    assert execution.path == copies[0].location
    contents = [Path(copy.location).read_bytes() for copy in copies]
    assert contents[0] == contents[1] and hashlib.sha256(contents[0]).hexdigest() == execution.sha256
    manifests = [json.loads(Path(manifest_location(copy.location)).read_text()) for copy in copies]
    assert manifests[0] == manifests[1]
    assert manifests[0]["destinations"] == [str(place) for place in places]
    logs = " ".join(entry.message for entry in execution.logs)
    assert f"to {places[0]}, {places[1]}" in logs
    assert job_files(places[0], "twice") == job_files(places[1], "twice")  # no partial file left on either


def test_retention_prunes_every_copy_and_keeps_the_newest(two_places):
    job, places = two_places(keep=1)
    older = run_in_process(job)
    newer = run_in_process(job)
    assert (older.status, newer.status) == (ExecutionStatus.SUCCESS, ExecutionStatus.SUCCESS)
    assert Execution.get_by_id(older.id).path is None
    assert not ArtifactCopy.select().where(ArtifactCopy.execution == older.id).exists()
    for place in places:
        names = job_files(place, "twice")
        assert not any(older.id in name for name in names)
        assert len([name for name in names if newer.id in name]) == 2  # the artifact and its manifest


def test_a_copy_that_cannot_be_deleted_keeps_its_row_and_the_other_copy_goes(two_places):
    job, places = two_places(keep=1)
    older = run_in_process(job)
    stuck = Path(ArtifactCopy.get(ArtifactCopy.execution == older.id, ArtifactCopy.position == 1).location)
    stuck.unlink()
    stuck.mkdir()  # unlink() refuses a directory, as it would a file on a read-only mount
    newer = run_in_process(job)
    assert newer.status == ExecutionStatus.SUCCESS and f"could not delete {stuck}" in newer.retention_error
    left = list(ArtifactCopy.select().where(ArtifactCopy.execution == older.id))
    assert [copy.location for copy in left] == [str(stuck)]
    assert Execution.get_by_id(older.id).path is not None  # it still names a copy, so retention tries again
    assert not Path(older.path).exists() and Path(manifest_location(str(stuck))).exists()


def run_restore_in_process(backup_id):
    restore = queue_restore(backup_id)
    (execution,) = [claimed for claimed in leases.claim("test-worker", 60_000) if claimed.id == restore.id]
    Restore(execution, execution.job, "test-worker", time.monotonic() + 60).execute()
    return Execution.get_by_id(restore.id)


def test_restore_and_the_download_read_the_second_copy_when_the_first_was_deleted_by_hand(
        two_places, client, auth, tmp_path):
    out = tmp_path / "restored.txt"
    job, places = two_places(restore_command=f"cat > {out}")
    backup = run_in_process(job)
    Path(backup.path).unlink()
    restore = run_restore_in_process(backup.id)
    assert restore.status == ExecutionStatus.SUCCESS, restore.error
    assert out.read_bytes() == b"the same bytes on both"
    response = client.get(f"/api/executions/{backup.id}/artifact", headers=auth)
    second = ArtifactCopy.get(ArtifactCopy.execution == backup.id, ArtifactCopy.position == 1).location
    assert response.status_code == 200 and response.get_data() == Path(second).read_bytes()
    Path(second).unlink()  # now no copy is left: refused, not a 500
    assert client.get(f"/api/executions/{backup.id}/artifact", headers=auth).status_code == 404
    with pytest.raises(Exception, match="gone from every destination"):
        queue_restore(backup.id)


# --- a destination failing -------------------------------------------------------------------

def run_with_a_directory_where_the_second_artifact_goes(job, places):
    """Run one backup whose second copy cannot be committed: a directory holds its name, so rename() fails."""
    queued = Execution.enqueue(job)
    (execution,) = [claimed for claimed in leases.claim("test-worker", 60_000) if claimed.id == queued.id]
    run = Run(execution, job, "test-worker", time.monotonic() + 60)
    (places[1] / job.name / f"{run.stamp}-{execution.id}.out").mkdir(parents=True)
    run.execute()
    return Execution.get_by_id(execution.id)


def test_one_destination_failing_fails_the_backup_and_leaves_nothing_on_the_other(two_places):
    job, places = two_places(compression="none")
    execution = run_with_a_directory_where_the_second_artifact_goes(job, places)
    assert execution.status == ExecutionStatus.FAILED and execution.path is None
    assert "Is a directory" in execution.error or "directory" in execution.error.lower()
    assert job_files(places[0], job.name) == []
    assert [name for name in job_files(places[1], job.name) if not Path(places[1] / job.name / name).is_dir()] == []
    assert not ArtifactCopy.select().where(ArtifactCopy.execution == execution.id).exists()


def test_with_allow_partial_destinations_the_backup_succeeds_with_the_copy_that_verified(two_places):
    job, places = two_places(name="partial", compression="none", allow_partial_destinations=True)
    execution = run_with_a_directory_where_the_second_artifact_goes(job, places)
    assert execution.status == ExecutionStatus.SUCCESS and execution.error is None
    copies = list(ArtifactCopy.select().where(ArtifactCopy.execution == execution.id))
    assert [copy.destination for copy in copies] == [str(places[0])]
    assert Path(execution.path).read_bytes() == b"the same bytes on both"
    errors = [entry.message for entry in execution.logs if entry.level == "error"]
    assert any(f"destination {places[1]} failed" in message for message in errors)
    document = json.loads(Path(manifest_location(execution.path)).read_text())
    assert document["destinations"] == [str(places[0])]
    assert [name for name in job_files(places[1], job.name)
            if not (places[1] / job.name / name).is_dir()] == []  # its partial file was removed


def test_a_worker_killed_mid_backup_leaves_nothing_on_either_destination_after_the_reclaim(
        two_places, client, auth, start_worker):
    job, places = two_places(name="killed")
    Job.update(source="command:printf started; sleep 60").where(Job.id == job.id).execute()
    worker = start_worker(BACKHOOK_LEASE_SECONDS="2")
    execution_id = trigger(client, auth, job.id)

    def partials():
        return [path for place in places for path in (place / "killed").glob(f"*-{execution_id}.*")]

    wait_until(lambda: len(partials()) == 2, timeout=30, message="a partial file on both destinations")
    left = partials()
    worker.stop(sig=signal.SIGKILL)
    start_worker(BACKHOOK_LEASE_SECONDS="2")
    wait_until(lambda: "re-queued" in " ".join(line["message"] for line in poll(client, auth, execution_id,
                                                                               logs=True)["logs"]),
               timeout=60, message="the reclaim")
    assert not any(path.exists() for path in left)
    client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert wait_for_status(client, auth, execution_id, timeout=60)["status"] == ExecutionStatus.CANCELLED
    assert partials() == []


# --- the upgrade -------------------------------------------------------------------------------

def test_an_old_database_upgraded_by_init_keeps_its_destinations_and_its_backups_restorable(
        database_url, backhook_env, tmp_path, monkeypatch):
    sections = migrations.schema_sections()
    db = database.connect_database(database_url)
    artifact = tmp_path / "backups" / "old" / "20260101T000000Z-e1.txt"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"old bytes")
    try:
        monkeypatch.setattr(migrations, "schema_sections", lambda: [s for s in sections if s[0] < 6])
        assert migrations.migrate(db)[1] == 5
        db.execute_sql("INSERT INTO job (id, name, source, destination, created_at) VALUES ('j1', 'old', "
                       "'command:printf x', %s, 0)" % db.param, (str(tmp_path / "backups"),))
        db.execute_sql("INSERT INTO execution (id, job_id, type, status, created_at, path, size, sha256) "
                       f"VALUES ('e1', 'j1', 'Backup', 'Success', 0, {db.param}, 9, {db.param})",
                       (str(artifact), hashlib.sha256(b"old bytes").hexdigest()))
    finally:
        db.close()
        monkeypatch.undo()
    init = subprocess.run([sys.executable, "-m", "cli", "init"], env=backhook_env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    db = database.connect_database(database_url)
    try:
        assert db.execute_sql("SELECT job_id, position, destination FROM job_destination").fetchall() == [
            ("j1", 0, str(tmp_path / "backups"))]
        assert db.execute_sql("SELECT execution_id, position, destination, location FROM artifact_copy").fetchall() \
            == [("e1", 0, str(tmp_path / "backups"), str(artifact))]
    finally:
        db.close()
