"""The S3 sink against a real S3-compatible server on loopback (moto_server, tests/support.py)."""
import hashlib
import os
import re
import threading
import time

import pytest

import s3sink
from s3sink import S3Artifact, S3Error, S3Sink, parse_s3_destination
from sources import BackupError, SourceError
from support import free_port

ONE_TRIP = "the metadata backend plays no part in an S3 round trip"
pytestmark = pytest.mark.sqlite_only(ONE_TRIP)
EXECUTION = "0190aaaabbbb" + "c" * 20


@pytest.fixture
def small_parts(monkeypatch):
    """S3's smallest part (5 MiB), so that a few megabytes make an artifact of several parts."""
    monkeypatch.setattr(s3sink, "PART_SIZE", 5 * 1024 * 1024)
    return s3sink.PART_SIZE


@pytest.fixture
def bucket(s3):
    return s3.make_bucket()


@pytest.fixture
def sink(s3, bucket):
    return S3Sink(parse_s3_destination(s3.destination(bucket)), "nightly")


def artifact_name(execution_id=EXECUTION, stamp="20260101T030000Z"):
    return f"{stamp}-{execution_id}.tar.zst"


def keys(s3, bucket):
    return sorted(found["Key"] for found in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def uploads(s3, bucket):
    return [upload["Key"] for upload in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def store(sink, data, name=None, manifest=b'{"format": 1}'):
    """Write, seal, commit, verify and add the manifest, as the pipeline does; returns the writer."""
    artifact = sink.open(name or artifact_name())
    for start in range(0, len(data), 1024 * 1024):
        artifact.write(data[start:start + 1024 * 1024])
    artifact.close()
    artifact.commit()
    artifact.verify(len(data), hashlib.sha256(data).hexdigest(), lambda fraction: None)
    artifact.write_manifest(manifest)
    return artifact


# --- the destination's text ------------------------------------------------------------

def test_a_destination_parses_into_bucket_prefix_and_options():
    parsed = parse_s3_destination("s3://my-bucket/a/b/?endpoint=https://s3.example.net:9000&region=eu-central-1"
                                  "&profile=offsite&storage_class=STANDARD_IA")
    assert (parsed.bucket, parsed.prefix, parsed.endpoint, parsed.region, parsed.profile, parsed.storage_class) == (
        "my-bucket", "a/b", "https://s3.example.net:9000", "eu-central-1", "offsite", "STANDARD_IA")
    assert parsed.text() == ("s3://my-bucket/a/b?endpoint=https://s3.example.net:9000&region=eu-central-1"
                             "&profile=offsite&storage_class=STANDARD_IA")
    assert parse_s3_destination("s3://my-bucket").text() == "s3://my-bucket"


@pytest.mark.parametrize("text, problem", [
    ("s3://AKIAEXAMPLE:hunter2secret@my-bucket/x", "credentials never go into a destination"),
    ("s3://my-bucket/x?endpoint=https://AKIAEXAMPLE:hunter2secret@s3.example.net", "credentials never go"),
])
def test_a_destination_with_credentials_is_refused_without_quoting_them(text, problem):
    with pytest.raises(SourceError) as raised:
        parse_s3_destination(text)
    assert problem in str(raised.value)
    assert "hunter2secret" not in str(raised.value)


@pytest.mark.parametrize("text, problem", [
    ("s3://my-bucket/x?secret_key=abc", "unknown option 'secret_key'"),
    ("s3://my-bucket/x?region=eu-west-1&region=us-east-1", "given twice"),
    ("s3://my-bucket/x?region=", "option 'region' is empty"),
    ("s3://my-bucket/x?endpoint=ftp://host", "http:// or https://"),
    ("s3://my-bucket/x?region=eu west", "region= has an unexpected character"),
    ("s3://my-bucket/x?storage_class=DEEP_ARCHIVE", "cannot be read back"),
    ("s3://My_Bucket/x", "bucket"),
    ("s3:///x", "bucket"),
    ("s3://my-bucket/a//b", "empty, '.' or '..' segments"),
    ("s3://my-bucket/a/../b", "empty, '.' or '..' segments"),
    ("s3://my-bucket/x#frag", "fragment"),
    ("/srv/backups", "not an S3 destination"),
])
def test_a_bad_destination_is_refused_naming_the_problem(text, problem):
    with pytest.raises(SourceError, match=re.escape(problem)):
        parse_s3_destination(text)


def test_the_sink_names_its_keys_under_prefix_and_job(sink, bucket):
    assert sink.location("a.tar.zst") == f"s3://{bucket}/backups/nightly/a.tar.zst"
    assert sink.describe().startswith(f"s3://{bucket}/backups?endpoint=http://127.0.0.1:")
    assert sink.is_local is False


# --- writing ---------------------------------------------------------------------------

def test_an_artifact_of_several_parts_is_stored_verified_and_read_back(s3, bucket, sink, small_parts):
    data = os.urandom(2 * small_parts + 12345)
    artifact = store(sink, data)
    assert artifact.location == sink.location(artifact_name())
    assert len(artifact.parts) == 3
    assert keys(s3, bucket) == [f"backups/nightly/{artifact_name()}", f"backups/nightly/{artifact_name()}.json"]
    assert uploads(s3, bucket) == []
    with sink.read(artifact.location) as stored:
        assert stored.read(10) == data[:10]
        assert stored.read() == data[10:]
    assert sink.exists(artifact.location) and sink.size(artifact.location) == len(data)
    with sink.read(artifact.location + ".json") as stored:
        assert stored.read() == b'{"format": 1}'


def test_parts_upload_side_by_side_in_a_fixed_set_of_buffers(s3, bucket, sink, small_parts, monkeypatch):
    # Two parts in flight while a third fills: the store takes one in while it stores the other,
    # and the memory an artifact takes never grows with its size.
    lock, uploading, most, buffers = threading.Lock(), set(), [0], set()
    both_in_flight = threading.Barrier(s3sink.PARTS_IN_FLIGHT, timeout=30)
    send = S3Artifact.upload_part

    def upload_part(artifact, number, body):
        with lock:
            uploading.add(number)
            most[0] = max(most[0], len(uploading))
            buffers.add(id(body))
        if number <= s3sink.PARTS_IN_FLIGHT:
            both_in_flight.wait()  # the first parts are uploading at the same time, or this times out
        try:
            return send(artifact, number, body)
        finally:
            with lock:
                uploading.discard(number)

    monkeypatch.setattr(S3Artifact, "upload_part", upload_part)
    data = os.urandom(8 * small_parts + 12345)
    artifact = store(sink, data)
    assert [part["PartNumber"] for part in artifact.parts] == list(range(1, 10))
    assert most[0] == s3sink.PARTS_IN_FLIGHT
    assert len(buffers) == s3sink.PARTS_IN_FLIGHT + 1  # the last part too is sent from one of them, cut to size
    with sink.read(artifact.location) as stored:
        assert stored.read() == data


def test_no_object_is_visible_under_the_name_until_commit(s3, bucket, sink, small_parts):
    artifact = sink.open(artifact_name())
    artifact.write(os.urandom(small_parts + 1))  # one part handed to the uploader
    artifact.wait_for_part()
    artifact.write(b"tail")
    artifact.close()  # every part stored
    assert keys(s3, bucket) == []
    assert uploads(s3, bucket) == [f"backups/nightly/{artifact_name()}"]
    assert not sink.exists(artifact.location)
    artifact.commit()
    assert keys(s3, bucket) == [f"backups/nightly/{artifact_name()}"]
    assert uploads(s3, bucket) == []


@pytest.mark.parametrize("data", [b"", b"tiny"])
def test_an_empty_or_tiny_artifact_is_one_part(sink, data):
    artifact = store(sink, data)
    assert len(artifact.parts) == 1
    assert sink.size(artifact.location) == len(data)


def test_a_corrupted_object_fails_verification(s3, bucket, sink):
    artifact = sink.open(artifact_name())
    artifact.write(b"what was written")
    artifact.close()
    artifact.commit()
    s3.client().put_object(Bucket=bucket, Key=artifact.key, Body=b"what was written, then changed")
    with pytest.raises(BackupError, match="verification failed: .* does not match what was written"):
        artifact.verify(16, hashlib.sha256(b"what was written").hexdigest(), lambda fraction: None)
    artifact.abort()
    assert keys(s3, bucket) == []


def test_verify_reports_progress_and_may_be_stopped(sink):
    data = os.urandom(3 * s3sink.READ_BACK_PIECE)
    artifact = sink.open(artifact_name())
    artifact.write(data)
    artifact.close()
    artifact.commit()
    seen = []

    def progress(fraction):
        seen.append(fraction)
        if len(seen) == 2:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        artifact.verify(len(data), hashlib.sha256(data).hexdigest(), progress)
    assert seen == [1 / 3, 2 / 3]


# --- aborting and leftovers --------------------------------------------------------------

def test_abort_mid_upload_leaves_no_object_and_no_upload(s3, bucket, sink, small_parts):
    artifact = sink.open(artifact_name())
    artifact.write(os.urandom(2 * small_parts))
    artifact.write(b"more")  # a part uploading, another filling
    assert uploads(s3, bucket) == [artifact.key]
    artifact.abort()
    assert keys(s3, bucket) == [] and uploads(s3, bucket) == []


def test_abort_after_commit_deletes_the_object_and_its_manifest(s3, bucket, sink):
    artifact = store(sink, b"complete")
    assert len(keys(s3, bucket)) == 2
    artifact.abort()
    assert keys(s3, bucket) == [] and uploads(s3, bucket) == []


def test_an_upload_lost_mid_stream_fails_and_keeps_the_older_backup(s3, bucket, sink, small_parts):
    """Fault injection: the store forgets the upload while parts still stream into it."""
    older = store(sink, b"the last good backup", name=artifact_name("0190aaaaaaaa" + "d" * 20))
    artifact = sink.open(artifact_name())
    s3.client().abort_multipart_upload(Bucket=bucket, Key=artifact.key, UploadId=artifact.upload_id)
    # moto answers 500 here where S3 answers NoSuchUpload: retried, then given up.
    with pytest.raises(S3Error, match=r"cannot upload part 1 of s3://.*/nightly/"):
        artifact.write(os.urandom(small_parts))
        artifact.close()
    artifact.abort()
    assert keys(s3, bucket) == [older.key, older.key + ".json"]
    with sink.read(older.location) as stored:
        assert stored.read() == b"the last good backup"


def test_an_upload_lost_before_commit_fails_and_nothing_appears(s3, bucket, sink):
    """Fault injection: every part is stored, then the store forgets the upload before it is completed."""
    artifact = sink.open(artifact_name())
    artifact.write(b"sealed")
    artifact.close()
    s3.client().abort_multipart_upload(Bucket=bucket, Key=artifact.key, UploadId=artifact.upload_id)
    with pytest.raises(S3Error, match=r"cannot complete the upload of s3://.*/nightly/"):  # moto: a 500
        artifact.commit()
    artifact.abort()
    assert keys(s3, bucket) == [] and uploads(s3, bucket) == []


def test_remove_leftovers_takes_only_that_executions_uploads_and_objects(s3, bucket, sink, small_parts):
    other = store(sink, b"another execution's", name=artifact_name("0190aaaaaaaa" + "e" * 20))
    store(sink, b"completed by a worker that died", name=artifact_name(stamp="20260101T030000Z"))
    unfinished = sink.open(artifact_name(stamp="20260101T040000Z"))
    unfinished.write(os.urandom(small_parts))
    unfinished.wait_for_part()
    removed = sink.remove_leftovers("nightly", EXECUTION)
    assert sorted(removed) == sorted([artifact_name(), artifact_name() + ".json",
                                      artifact_name(stamp="20260101T040000Z") + " (unfinished upload)"])
    assert keys(s3, bucket) == [other.key, other.key + ".json"]
    assert uploads(s3, bucket) == []


# --- reading and deleting ------------------------------------------------------------------

def test_delete_removes_the_artifact_then_its_manifest_and_a_missing_one_is_no_error(s3, bucket, sink):
    artifact = store(sink, b"old")
    sink.delete(artifact.location)
    assert keys(s3, bucket) == [artifact.key + ".json"]
    sink.delete_manifest(artifact.location)
    assert keys(s3, bucket) == []
    sink.delete(artifact.location)
    assert not sink.exists(artifact.location) and sink.size(artifact.location) is None


def test_reading_a_missing_object_raises_the_stores_message(sink):
    with pytest.raises(BackupError, match=r"cannot read s3://.*/nightly/gone.tar.zst: .*NoSuchKey"):
        with sink.read(sink.location("gone.tar.zst")):
            pass


def test_a_location_in_another_bucket_is_refused(sink):
    with pytest.raises(S3Error, match="is not in the bucket of"):
        sink.delete("s3://someone-elses/backups/nightly/a.tar.zst")


# --- a store that refuses ------------------------------------------------------------------

def test_a_missing_bucket_fails_with_the_stores_message(s3):
    sink = S3Sink(parse_s3_destination(s3.destination("no-such-bucket-here")), "nightly")
    with pytest.raises(S3Error, match="cannot start uploading s3://no-such-bucket-here/.*NoSuchBucket"):
        sink.open(artifact_name())


def test_wrong_credentials_fail_without_showing_the_secret(s3, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    sink = S3Sink(parse_s3_destination(s3.destination(bucket)), "nightly")
    with pytest.raises(S3Error, match="SignatureDoesNotMatch") as raised:
        sink.open(artifact_name())
    assert "not-the-secret" not in str(raised.value) and s3.secret_key not in str(raised.value)


def test_missing_credentials_say_where_they_come_from(s3, bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    sink = S3Sink(parse_s3_destination(s3.destination(bucket)), "nightly")
    with pytest.raises(S3Error, match="Unable to locate credentials.*AWS_ACCESS_KEY_ID"):
        sink.open(artifact_name())


def test_an_unreachable_endpoint_fails_after_bounded_retries(s3):
    sink = S3Sink(parse_s3_destination(f"s3://some-bucket/x?endpoint=http://127.0.0.1:{free_port()}"), "nightly")
    started = time.monotonic()
    with pytest.raises(S3Error, match="cannot start uploading s3://some-bucket/x/nightly/.*Could not connect"):
        sink.open(artifact_name())
    assert time.monotonic() - started < 60


def test_parts_grow_so_that_s3s_ten_thousand_hold_a_large_artifact():
    assert s3sink.part_size(1) == s3sink.part_size(2500) == 8 * 2**20
    assert s3sink.part_size(2501) == 16 * 2**20 and s3sink.part_size(10_000) == 32 * 2**20
    assert sum(map(s3sink.part_size, range(1, s3sink.MAX_PARTS + 1))) > 190 * 2**30


def test_an_artifact_past_s3s_part_limit_fails_clearly(sink, monkeypatch, small_parts):
    monkeypatch.setattr(s3sink, "MAX_PARTS", 2)
    artifact = sink.open(artifact_name())
    with pytest.raises(S3Error, match="it needs more than S3's 2 parts"):
        artifact.write(os.urandom(3 * small_parts))
    artifact.abort()
