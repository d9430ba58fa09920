"""WPSec backups come home (issue 15): the plugin's file, downloaded by the worker into every destination."""
import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zstandard

import destinations
import leases
import models
import wpsec
from backup import Run
from models import ArtifactCopy, Backup, Execution, ExecutionLog, Job, Website
from support import TOKEN, age_keys, poll, wait_for_status, wait_until
from test_wpsec import SIGNATURE, SITE_KEY, FileServer, StandInSite, quicken_retries

ARCHIVE = b"PK\x03\x04 a WordPress site's files and database " + bytes(range(256)) * 1200


@pytest.fixture
def files():
    server = FileServer()
    yield server
    server.stop()


@pytest.fixture
def stand_in(files):
    site = StandInSite(files)
    yield site
    site.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The download's retry policy (wpsec.session), scaled down; a 2 s timeout, as a download streams longer."""
    quicken_retries(monkeypatch, 2)


@pytest.fixture
def site(app, stand_in):
    with models.database.atomic():
        return Website.create(domain="example.com", wpsec_url=stand_in.url + "/", wpsec_api_key=SITE_KEY)


@pytest.fixture
def bucket(s3):
    return s3.make_bucket()


def site_job(make_job, *more_destinations, **fields):
    job = make_job(name="wp", source="wpsec://example.com", **fields)
    with models.database.atomic():
        destinations.set_destinations(job, [job.destination, *more_destinations])
    return Job.get_by_id(job.id)


def complete(client, backup_id):
    response = client.post("/webhooks/backup-complete", headers={"x-wpfort-token": TOKEN},
                           json={"domain": "example.com", "backup_id": backup_id})
    assert response.status_code == 200, response.get_json()


def copy_home(client, job, stand_in, data=ARCHIVE):
    """One backup of the wpsec:// `job` as a worker runs it, in this process: the attempt in a thread of its
    own, the site's complete webhook, then the chores' sync of the backup list. `data`: the site's file, or None
    for a backup listed without a download_url. Returns the execution's final row."""
    run, thread = start_site_backup(client, job, stand_in, data)
    thread.join(60)
    assert not thread.is_alive()
    return Execution.get_by_id(run.execution.id)


def start_site_backup(client, job, stand_in, data):
    """copy_home's first steps: returns the attempt and its thread once the list is synced."""
    queued = Execution.enqueue(job)
    (execution,) = [claimed for claimed in leases.claim("test-worker", 60_000) if claimed.id == queued.id]
    run = Run(execution, job, "test-worker", time.monotonic() + 60)

    def attempt():
        try:
            run.execute()
        finally:
            models.database.close()  # the thread's own connection

    thread = threading.Thread(target=attempt)
    thread.start()
    backup = wait_until(lambda: Backup.get_or_none(Backup.execution == queued.id), message="the remote backup")
    if data is not None:
        stand_in.give_file(backup.backup_id, data)
    stand_in.backups[backup.backup_id]["status"] = "completed"
    downloads_before = len(stand_in.file_server.requests)
    complete(client, backup.backup_id)
    assert len(stand_in.file_server.requests) == downloads_before  # the webhook downloads nothing
    wpsec.sync_requested_websites()
    return run, thread


def messages(execution):
    return [row.message for row in ExecutionLog.select().where(ExecutionLog.execution == execution.id)
            .order_by(ExecutionLog.id)]


def copies(execution):
    return list(ArtifactCopy.select().where(ArtifactCopy.execution == execution.id).order_by(ArtifactCopy.position))


def s3_objects(s3, bucket):
    return sorted(found["Key"] for found in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def test_a_site_backup_comes_home_to_a_local_and_an_s3_destination_verified(
        s3, bucket, site, make_job, stand_in, client, auth, caplog):
    job = site_job(make_job, s3.destination(bucket))
    done = copy_home(client, job, stand_in)
    assert (done.status, done.stage, done.progress) == ("Success", "Completed", 100), done.error
    assert Backup.get(Backup.execution == done.id).status == "completed"  # the plugin's word, unchanged

    local, remote = copies(done)
    assert done.path == local.location and local.location.endswith(".zip.zst")
    stored = Path(local.location).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == done.sha256 and len(stored) == done.size
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == ARCHIVE
    name = Path(local.location).name
    assert s3_objects(s3, bucket) == [f"backups/wp/{name}", f"backups/wp/{name}.json"]
    assert s3.client().get_object(Bucket=bucket, Key=f"backups/wp/{name}")["Body"].read() == stored
    manifest = json.loads(Path(local.location + ".json").read_text())
    assert (manifest["sha256"], manifest["rawSize"], manifest["sourceKind"]) == (done.sha256, len(ARCHIVE), "wpsec")

    said = messages(done)
    shown = f"{stand_in.file_server.url}/files/wp-1.zip?…"
    assert any("copying it home" in line and shown in line for line in said)
    assert any(f"verified {done.size:,} bytes" in line for line in said)
    listing = client.get("/api/websites/example.com/backups", headers=auth).get_json()["data"]["remoteBackups"]
    assert listing[0]["download_url"] == shown
    everything = json.dumps([said, poll(client, auth, done.id, logs=True), manifest, listing]) + caplog.text
    assert SIGNATURE not in everything and SIGNATURE.split("=")[1] not in everything


def test_an_encrypted_site_backup_is_age_and_the_stock_age_decrypts_it_to_the_sites_bytes(
        site, make_job, stand_in, client, tmp_path):
    identity, public = age_keys(tmp_path / "keys")["age"]
    job = site_job(make_job, compression="none", recipients=json.dumps([public]))
    done = copy_home(client, job, stand_in)
    assert done.status == "Success", done.error
    assert done.path.endswith(".zip.age")
    decrypted = subprocess.run(["age", "-d", "-i", str(identity), done.path], capture_output=True, check=True)
    assert decrypted.stdout == ARCHIVE
    assert json.loads(Path(done.path + ".json").read_text())["encryption"]["recipients"] == [public]


def test_without_a_download_url_the_logs_say_so_and_the_path_stays_null(site, make_job, stand_in, client, tmp_path):
    done = copy_home(client, site_job(make_job), stand_in, data=None)
    assert (done.status, done.path, done.size, done.sha256) == ("Success", None, None, None)
    assert any("lists no download_url for backup wp-1" in line and "path is null" in line for line in messages(done))
    assert stand_in.file_server.requests == [] and copies(done) == []
    assert not (tmp_path / "backups" / "wp").exists() or list((tmp_path / "backups" / "wp").iterdir()) == []


DOWNLOAD_FAULTS = {
    "HTTP 500": ([("status", 500)] * 10, "HTTP 500"),
    "cut short, with the file's Content-Length": ([("cut", 5000, True)], "IncompleteRead(5000 bytes read"),
    "cut short, without a Content-Length": ([("cut", 5000, False)], "ended after 5,000 of the"),
    "connection refused": (None, "ConnectionError"),
}


@pytest.mark.parametrize("fault", sorted(DOWNLOAD_FAULTS))
def test_a_failed_download_fails_the_copy_leaving_nothing_and_keeping_the_last_good_backup(
        s3, bucket, site, make_job, stand_in, files, client, tmp_path, fault):
    job = site_job(make_job, s3.destination(bucket), keep=1)
    good = copy_home(client, job, stand_in)
    assert good.status == "Success", good.error
    kept = {copy.location for copy in copies(good)}
    before = (sorted((tmp_path / "backups" / "wp").iterdir()), s3_objects(s3, bucket))

    faults, message = DOWNLOAD_FAULTS[fault]
    if faults is None:
        files.stop()  # nothing listens at the download_url any more
    else:
        files.faults = list(faults)
    failed = copy_home(client, job, stand_in, data=ARCHIVE + b"the next night")
    assert (failed.status, failed.stage, failed.path) == ("Failed", "Failed", None)
    assert message in failed.error and f"{files.url}/files/wp-2.zip" in failed.error
    assert SIGNATURE not in failed.error and SIGNATURE not in json.dumps(messages(failed))
    assert Backup.get(Backup.execution == failed.id).status == "completed"  # the remote backup did complete

    assert (sorted((tmp_path / "backups" / "wp").iterdir()), s3_objects(s3, bucket)) == before
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    good = Execution.get_by_id(good.id)
    assert good.status == "Success" and {copy.location for copy in copies(good)} == kept
    assert hashlib.sha256(Path(good.path).read_bytes()).hexdigest() == good.sha256


@pytest.mark.parametrize("url", [f"ftp://files.example/wp-1.zip?{SIGNATURE}", f"http://[::1/wp-1.zip?{SIGNATURE}",
                                 f"https://files.example:99999/wp-1.zip?{SIGNATURE}"])
def test_a_download_url_that_is_no_http_url_fails_the_copy_clearly(site, make_job, stand_in, client, url):
    stand_in.download_urls["wp-1"] = url
    done = copy_home(client, site_job(make_job), stand_in)
    assert (done.status, done.path) == ("Failed", None)
    assert "is not an http:// or https:// URL" in done.error and SIGNATURE not in done.error
    assert stand_in.file_server.requests == []


@pytest.mark.parametrize("send_length", [True, False], ids=["with-length", "without-length"])
def test_a_cancel_cuts_a_stalled_download_and_leaves_nothing(site, make_job, stand_in, files, client, tmp_path,
                                                             monkeypatch, send_length):
    monkeypatch.setattr(wpsec, "READ_TIMEOUT", 120)  # only the cancel can end the stalled read in this test
    files.faults = [("stall", 5000, send_length)]
    run, thread = start_site_backup(client, site_job(make_job), stand_in, ARCHIVE)
    assert files.stalled.wait(20)
    run.stop("cancel")  # as the worker does when the execution's cancel is asked for
    thread.join(20)
    assert not thread.is_alive(), "the stalled read held the attempt"
    done = Execution.get_by_id(run.execution.id)
    assert (done.status, done.path) == ("Cancelled", None), done.error
    assert list((tmp_path / "backups" / "wp").glob(f"*{done.id}*")) == []


def test_retention_prunes_site_backups_like_any_other(site, make_job, stand_in, client, tmp_path):
    job = site_job(make_job, keep=1)
    first = copy_home(client, job, stand_in)
    second = copy_home(client, job, stand_in, data=ARCHIVE + b"the next night")
    assert (first.status, second.status) == ("Success", "Success")
    assert Execution.get_by_id(first.id).path is None and copies(Execution.get_by_id(first.id)) == []
    assert sorted(path.name for path in (tmp_path / "backups" / "wp").iterdir()) == [
        Path(second.path).name, Path(second.path).name + ".json"]
    assert any("retention: deleted" in line and first.id in line for line in messages(second))


def test_the_sites_key_goes_to_the_sites_own_download_link_only(site, make_job, stand_in, files, client):
    stand_in.download_on_site = True  # the site's link redirects to its store
    done = copy_home(client, site_job(make_job), stand_in)
    assert done.status == "Success", done.error
    assert [(route, key) for _method, route, key, _body in stand_in.requests if route == "download"] == [
        ("download", SITE_KEY)]
    assert [(path, key) for path, _query, key in files.requests] == [("/files/wp-1.zip", None)]


def test_jobs_add_encrypts_a_site_jobs_backups_now_that_they_come_home(runner, site, tmp_path):
    _identity, public = age_keys(tmp_path / "keys")["age"]
    added = runner("jobs", "add", "wp", "--source", "wpsec://example.com", "--destination", tmp_path / "backups",
                   "--encrypt-to", public)
    assert added.exit_code == 0, added.output
    assert Job.get(Job.name == "wp").recipient_keys() == [public]


def test_a_worker_copies_a_site_backup_home_once_the_list_is_synced(
        site, make_job, stand_in, files, client, auth, start_worker):
    worker = start_worker()
    job = site_job(make_job)
    execution_id = client.post(f"/api/jobs/{job.id}/run", headers=auth).get_json()["executionId"]
    backup = wait_until(lambda: Backup.get_or_none(Backup.execution == execution_id), timeout=20,
                        message="the worker to start the remote backup")
    stand_in.give_file(backup.backup_id, ARCHIVE)
    complete(client, backup.backup_id)
    data = wait_for_status(client, auth, execution_id, timeout=60)
    assert data["status"] == "Success", data
    assert hashlib.sha256(Path(data["path"]).read_bytes()).hexdigest() == Execution.get_by_id(execution_id).sha256
    stages = [line["stage"] for line in data["logs"]]
    assert stages.index("Syncing") < stages.index("Downloading") < stages.index("Verifying")
    assert SIGNATURE not in worker.output() and SIGNATURE not in json.dumps(data)
