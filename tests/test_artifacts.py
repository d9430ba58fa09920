"""GET /api/executions/<id>/artifact: streaming a successful backup's artifact, ranges, ETag, and refusals."""
import base64
import hashlib
import os
import random
from pathlib import Path

import pytest
import requests

import models
from models import Execution
from sinks import manifest_location
from sources import CHUNK
from statuses import ExecutionStatus, ExecutionType
from support import run_in_process

PAYLOAD = random.Random(14).randbytes(5 * CHUNK + 12345)  # several pieces, and a last one that is not whole


@pytest.fixture
def backed_up(make_job, tmp_path):
    """A successful backup of an incompressible file through the real pipeline; its final row."""
    source = tmp_path / "payload.bin"
    source.write_bytes(PAYLOAD)
    job = make_job(name="payload", source=f"command:cat {source}", compression="none")
    execution = run_in_process(job)
    assert execution.status == ExecutionStatus.SUCCESS, execution.error
    return execution


def url(execution_id):
    return f"/api/executions/{execution_id}/artifact"


def download(client, auth, execution_id, **headers):
    return client.get(url(execution_id), headers={**auth, **headers})


def assert_json_error(response, status, *words):
    assert response.status_code == status, response.get_data(as_text=True)[:200]
    assert response.is_json and set(response.get_json()) == {"error"}
    for word in words:
        assert word in response.get_json()["error"]


def test_the_whole_artifact_streams_with_its_checksum_and_name(client, auth, backed_up):
    response = download(client, auth, backed_up.id)
    assert response.status_code == 200
    body = response.get_data()
    assert hashlib.sha256(body).hexdigest() == backed_up.sha256 and body == PAYLOAD
    digest = base64.b64encode(hashlib.sha256(PAYLOAD).digest()).decode()
    name = Path(backed_up.path).name
    assert response.headers["Content-Length"] == str(len(PAYLOAD)) == str(backed_up.size)
    assert response.headers["ETag"] == f'"{backed_up.sha256}"'
    assert response.headers["Digest"] == f"sha-256={digest}"
    assert response.headers["Repr-Digest"] == f"sha-256=:{digest}:"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers.getlist("Cache-Control") == ["no-store"]


def test_head_answers_the_headers_without_the_body(client, auth, backed_up):
    response = client.head(url(backed_up.id), headers=auth)
    assert response.status_code == 200 and response.get_data() == b""
    assert response.headers["Content-Length"] == str(len(PAYLOAD))
    assert response.headers["ETag"] == f'"{backed_up.sha256}"'


def test_the_file_is_sent_in_pieces_never_read_whole(client, auth, backed_up):
    response = client.get(url(backed_up.id), headers=auth, buffered=False)
    pieces = [len(piece) for piece in response.response]
    response.close()
    assert sum(pieces) == len(PAYLOAD) and len(pieces) > 5 and max(pieces) <= CHUNK


@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-99", 0, 99),
    ("bytes=1048570-1048600", 1048570, 1048600),  # across the first piece's end
    ("bytes=-512", len(PAYLOAD) - 512, len(PAYLOAD) - 1),
    (f"bytes={len(PAYLOAD) - 10}-", len(PAYLOAD) - 10, len(PAYLOAD) - 1),
    (f"bytes=100-{len(PAYLOAD) + 1000}", 100, len(PAYLOAD) - 1),  # an end past the file is cut to it
])
def test_a_single_range_answers_206_with_those_bytes(client, auth, backed_up, spec, start, end):
    response = download(client, auth, backed_up.id, Range=spec)
    assert response.status_code == 206
    assert response.get_data() == PAYLOAD[start:end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(PAYLOAD)}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["ETag"] == f'"{backed_up.sha256}"'  # the whole file's, as is the digest
    assert response.headers["Digest"] == f"sha-256={base64.b64encode(bytes.fromhex(backed_up.sha256)).decode()}"


@pytest.mark.parametrize("spec", [f"bytes={len(PAYLOAD)}-", f"bytes={len(PAYLOAD) + 5}-{len(PAYLOAD) + 9}",
                                  "bytes=0-1,5-9", "bytes=9-1", "lines=0-4"])
def test_a_range_that_cannot_be_satisfied_is_a_json_416(client, auth, backed_up, spec):
    response = download(client, auth, backed_up.id, Range=spec)
    assert_json_error(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"


def test_if_none_match_with_the_etag_answers_304_without_a_body(client, auth, backed_up):
    response = download(client, auth, backed_up.id, **{"If-None-Match": f'"{backed_up.sha256}"'})
    assert response.status_code == 304 and response.get_data() == b""
    assert response.headers["ETag"] == f'"{backed_up.sha256}"'
    other = download(client, auth, backed_up.id, **{"If-None-Match": f'"{"0" * 64}"'})
    assert other.status_code == 200 and other.get_data() == PAYLOAD


def test_if_range_with_another_etag_sends_the_whole_file(client, auth, backed_up):
    response = download(client, auth, backed_up.id, Range="bytes=0-9", **{"If-Range": f'"{"0" * 64}"'})
    assert response.status_code == 200 and response.get_data() == PAYLOAD


def test_an_unknown_execution_is_a_json_404(client, auth):
    assert_json_error(download(client, auth, "no-such-execution"), 404, "Execution not found")


@pytest.mark.parametrize("status", [ExecutionStatus.PENDING, ExecutionStatus.RUNNING, ExecutionStatus.FAILED,
                                    ExecutionStatus.CANCELLED])
def test_an_execution_that_is_not_a_successful_backup_is_a_json_404(client, auth, backed_up, status):
    Execution.update(status=status).where(Execution.id == backed_up.id).execute()
    assert_json_error(download(client, auth, backed_up.id), 404, "not a successful backup")


def test_a_restore_execution_has_no_artifact_to_download(client, auth, backed_up):
    Execution.update(type=ExecutionType.RESTORE).where(Execution.id == backed_up.id).execute()
    assert_json_error(download(client, auth, backed_up.id), 404, "not a successful backup")


def test_an_artifact_pruned_by_retention_is_a_json_404(client, auth, backed_up):
    Execution.update(path=None).where(Execution.id == backed_up.id).execute()
    assert_json_error(download(client, auth, backed_up.id), 404, "retention")


def test_an_artifact_deleted_by_hand_is_a_json_404(client, auth, backed_up):
    os.unlink(backed_up.path)
    assert_json_error(download(client, auth, backed_up.id), 404, backed_up.id)


def other_backup(make_job, tmp_path):
    job = make_job(name="other", source="command:echo other secrets", destination=str(tmp_path / "elsewhere"))
    return run_in_process(job)


@pytest.mark.parametrize("where", ["outside every job", "another job's artifact", "the same job's other backup",
                                   "its own manifest", "a symlink in the job's directory leading out",
                                   "the job's directory itself", "dot-dot out of the job's directory"])
def test_a_path_that_is_not_this_executions_artifact_in_its_jobs_directory_is_a_json_404(
        client, auth, backed_up, make_job, tmp_path, where):
    artifact = Path(backed_up.path)
    secret = tmp_path / "not-an-artifact.txt"
    secret.write_bytes(b"the web process can read this, but nobody may download it")
    if where == "outside every job":
        tampered = str(secret)
    elif where == "another job's artifact":
        tampered = other_backup(make_job, tmp_path).path
    elif where == "the same job's other backup":
        tampered = run_in_process(models.Job.get_by_id(backed_up.job_id)).path
    elif where == "its own manifest":
        tampered = manifest_location(backed_up.path)
    elif where == "a symlink in the job's directory leading out":
        link = artifact.parent / f"20260101T000000Z-{backed_up.id}.out"
        link.symlink_to(secret)
        tampered = str(link)
    elif where == "the job's directory itself":
        tampered = str(artifact.parent)
    else:
        tampered = str(artifact.parent / ".." / ".." / secret.name)
    Execution.update(path=tampered).where(Execution.id == backed_up.id).execute()
    # The download reads the recorded copies (destinations.py): each names its location.
    assert models.ArtifactCopy.update(location=tampered).where(
        models.ArtifactCopy.execution == backed_up.id).execute() == 1
    response = download(client, auth, backed_up.id)
    assert_json_error(response, 404, "no artifact in its job's directory")
    assert b"nobody may download" not in response.get_data()


def test_an_artifact_whose_size_changed_on_disk_is_a_json_409(client, auth, backed_up):
    with open(backed_up.path, "ab") as stream:
        stream.write(b"appended after the backup")
    assert_json_error(download(client, auth, backed_up.id), 409, "recorded")


@pytest.mark.parametrize("missing", ["sha256", "size"])
def test_an_artifact_without_a_recorded_checksum_or_size_is_a_json_409(client, auth, backed_up, missing):
    Execution.update(**{missing: None}).where(Execution.id == backed_up.id).execute()
    assert_json_error(download(client, auth, backed_up.id), 409, "recorded no checksum")


def test_a_key_without_storage_download_is_refused(client, make_key, backed_up):
    others = [permission for permission in models.PERMISSIONS if permission != "storage:download"]
    response = client.get(url(backed_up.id), headers={"Authorization": f"Bearer {make_key(*others)}"})
    assert_json_error(response, 403, "storage:download")


def test_a_live_server_streams_the_artifact_and_a_range_of_it(start_server, auth, backed_up):
    server = start_server(processes=2)
    with requests.get(server.url + url(backed_up.id), headers=auth, stream=True, timeout=30) as response:
        assert response.status_code == 200
        digest = hashlib.sha256()
        for piece in response.iter_content(CHUNK):
            digest.update(piece)
    assert digest.hexdigest() == backed_up.sha256
    ranged = requests.get(server.url + url(backed_up.id), headers={**auth, "Range": "bytes=-1000"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == PAYLOAD[-1000:]
    refused = requests.get(server.url + url(backed_up.id), headers={**auth, "Range": "bytes=99999999-"}, timeout=30)
    assert refused.status_code == 416 and refused.json().keys() == {"error"}
