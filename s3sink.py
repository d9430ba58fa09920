"""s3:// destinations: AWS S3 and every S3-compatible store, through boto3.

`s3://bucket/prefix?endpoint=…&region=…&profile=…&storage_class=…` names the
store; the artifact `<job>/<file>` is the key `<prefix>/<job>/<file>` and its
location `s3://bucket/<key>`. Credentials come only from the standard AWS
chain (the AWS_* environment variables, ~/.aws/credentials, the `profile`):
a destination carrying any is refused, so none is ever stored or shown.

Each artifact is one multipart upload of `part_size` parts, sent by threads
of its own (PARTS_IN_FLIGHT at once) while the dump streams on, and completed by `commit()` only: until
then no object exists under the artifact's name, and `abort()` (or a reclaim's
`remove_leftovers`) throws the parts away.
"""
import collections
import hashlib
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

from sinks import MANIFEST, READ_BACK_PIECE, manifest_location
from sources import BackupError, SourceError

log = logging.getLogger("backhook.s3")

# Two parts upload at once while a third fills, so the store takes in one part while it stores the
# last (bench/RESULTS.md, "Off-site speed and memory"); S3 wants at least 5 MiB in each part but the last.
PART_SIZE = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 2
MAX_PARTS = 10_000  # S3's limit
PARTS_PER_SIZE = 2_500  # parts grow by PART_SIZE every PARTS_PER_SIZE parts: 10,000 hold 195 GiB


def part_size(number):
    """The size of part `number` (from 1): PART_SIZE up to 19 GiB, so that most artifacts need 16 MiB of buffers."""
    return PART_SIZE * (1 + (number - 1) // PARTS_PER_SIZE)

OPTIONS = ("endpoint", "region", "profile", "storage_class")
FORM = "s3://bucket/prefix?endpoint=https://…&region=…&profile=…&storage_class=…"
OPTION_VALUES = {
    "region": re.compile(r"[a-z0-9-]+"),
    "profile": re.compile(r"[A-Za-z0-9_.+=,@-]+"),
    "storage_class": re.compile(r"[A-Z0-9_]+"),
}
# Verify reads every artifact back at once; objects in these classes cannot be read without a restore first.
UNREADABLE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
# Connect and read timeouts and bounded retries, so an unreachable store fails the run instead of hanging it.
CLIENT_SETTINGS = dict(connect_timeout=10, read_timeout=60, retries={"max_attempts": 4, "mode": "standard"},
                       # Many S3-compatible stores reject the CRC headers boto3 adds by default (boto/boto3#4392).
                       request_checksum_calculation="when_required", response_checksum_validation="when_required")
CREDENTIALS_HINT = ("credentials come from the AWS chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "~/.aws/credentials, or the destination's profile=")


class S3Error(BackupError, OSError):
    """The store refused or could not be reached; the message is the store's own, never a credential.

    An OSError too, so that retention treats a failed deletion on S3 as one on a local disk.
    """


@dataclass(frozen=True)
class S3Destination:
    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str | None = None

    def text(self):
        """The destination as users see it: it never holds a credential, since parsing refuses them."""
        options = {name: getattr(self, name) for name in OPTIONS if getattr(self, name)}
        return (f"s3://{self.bucket}/{self.prefix}".rstrip("/")
                + (f"?{urlencode(options, safe=':/')}" if options else ""))


def parse_s3_destination(text):
    """An s3:// destination checked by destinations.parse_destination, then for what only S3 refuses."""
    import destinations  # destinations builds sinks, so it imports this module first

    parsed = destinations.parse_destination(text)
    if parsed.kind != "s3":
        raise SourceError(f"not an S3 destination: {parsed.kind}; expected {FORM}")
    for name, pattern in OPTION_VALUES.items():
        if name in parsed.options and not pattern.fullmatch(parsed.options[name]):
            raise SourceError(f"destination {text!r}: {name}= has an unexpected character")
    if parsed.options.get("storage_class") in UNREADABLE_CLASSES:
        raise SourceError(f"destination {text!r}: storage_class={parsed.options['storage_class']} objects cannot "
                          "be read back to verify them (GLACIER_IR can)")
    return S3Destination(parsed.bucket, parsed.path, **parsed.options)


@contextmanager
def store_errors(action, location):
    """Turn boto3's errors into S3Error: what failed, where, and the store's own words."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError as exc:
        raise S3Error(f"cannot {action} {location}: {exc} ({CREDENTIALS_HINT})") from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise S3Error(f"cannot {action} {location}: {exc}") from None


def missing(exc):
    """Whether a ClientError says the object is not there (HEAD answers a bare 404)."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


CLIENTS, CLIENTS_LOCK = {}, threading.Lock()


def client_for(destination):
    """The boto3 client of a store, made once per process: each costs megabytes of models and handlers.

    Making one reads the AWS configuration and the credentials (so keys
    changed later are read when the worker restarts) but contacts no one.
    """
    import boto3
    import botocore.config

    store = (destination.endpoint, destination.region, destination.profile)
    with CLIENTS_LOCK:
        if store not in CLIENTS:
            # A loopback or LAN store has no DNS name per bucket: address buckets in the path.
            addressing = {"addressing_style": "path"} if destination.endpoint else {}
            with store_errors("use", destination.text()):
                CLIENTS[store] = boto3.session.Session(profile_name=destination.profile).client(
                    "s3", endpoint_url=destination.endpoint, region_name=destination.region,
                    config=botocore.config.Config(s3=addressing, **CLIENT_SETTINGS))
        return CLIENTS[store]


class S3Sink:
    """One s3:// destination of one job: keys under `<prefix>/<job folder>/`."""

    is_local = False

    def __init__(self, destination, folder):
        self.destination, self.folder = destination, folder

    @classmethod
    def from_destination(cls, text, job):
        import destinations

        return cls(parse_s3_destination(text), destinations.job_folder(job))

    def describe(self):
        return self.destination.text()

    @property
    def client(self):
        return client_for(self.destination)

    @property
    def bucket(self):
        return self.destination.bucket

    def key(self, name):
        return "/".join(part for part in (self.destination.prefix, self.folder, name) if part)

    def location(self, name):
        return f"s3://{self.bucket}/{self.key(name)}"

    def key_of(self, location):
        """The key of a location this sink wrote; refuses one in another bucket."""
        head = f"s3://{self.bucket}/"
        if not location.startswith(head):
            raise S3Error(f"{location} is not in the bucket of {self.describe()}")
        return location[len(head):]

    def open(self, name):
        return S3Artifact(self, name)

    @contextmanager
    def read(self, location):
        with store_errors("read", location):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key_of(location))["Body"]
        try:
            yield StoredObject(body, location)
        finally:
            body.close()

    def head(self, location):
        """The object's metadata, or None when there is no object at `location`."""
        import botocore.exceptions

        with store_errors("look up", location):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.key_of(location))
            except botocore.exceptions.ClientError as exc:
                if missing(exc):
                    return None
                raise

    def exists(self, location):
        return self.head(location) is not None

    def size(self, location):
        found = self.head(location)
        return None if found is None else found["ContentLength"]

    def delete_object(self, location):
        """S3 answers a deletion of a missing key with success, so an object already gone is no error."""
        with store_errors("delete", location):
            self.client.delete_object(Bucket=self.bucket, Key=self.key_of(location))

    def delete(self, location):
        self.delete_object(location)

    def delete_manifest(self, location):
        self.delete_object(manifest_location(location))

    def remove_leftovers(self, folder, execution_id):
        """Abort the multipart uploads and delete the objects an attempt of `execution_id` left under `folder`.

        That is also an artifact (and its manifest) completed by a worker that
        died before recording its success: no execution reports it, so
        retention would never delete it.
        """
        prefix = "/".join(part for part in (self.destination.prefix, folder) if part) + "/"
        marker = f"-{execution_id}."
        removed = []
        with store_errors("list the leftovers under", f"s3://{self.bucket}/{prefix}"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if marker in upload["Key"].removeprefix(prefix):
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed.append(upload["Key"].removeprefix(prefix) + " (unfinished upload)")
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for found in page.get("Contents", []):
                    if marker in found["Key"].removeprefix(prefix):
                        self.client.delete_object(Bucket=self.bucket, Key=found["Key"])
                        removed.append(found["Key"].removeprefix(prefix))
        return removed


class StoredObject:
    """A stored object being read: `read(n)`, with the store's errors as S3Error."""

    def __init__(self, body, location):
        self.body, self.location = body, location

    def read(self, count=-1):
        with store_errors("read", self.location):
            return self.body.read(None if count is None or count < 0 else count)


class S3Artifact:
    """One artifact being written to S3: a multipart upload, completed only by `commit()`."""

    def __init__(self, sink, name):
        self.sink, self.client, self.bucket = sink, sink.client, sink.bucket
        self.key, self.location = sink.key(name), sink.location(name)
        # Fixed buffers take turns, one filling while the others upload: no growth, no copy of a full part.
        self.buffer, self.filled, self.free = bytearray(part_size(1)), 0, []
        self.parts, self.pending = [], collections.deque()  # pending: (future, buffer) by part number
        self.committing = self.manifest_written = False
        storage = {"StorageClass": sink.destination.storage_class} if sink.destination.storage_class else {}
        with store_errors("start uploading", self.location):
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                                 **storage)["UploadId"]
        self.uploader = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part")

    def write(self, data):
        view = memoryview(data)
        while view:
            taken = view[:len(self.buffer) - self.filled]
            self.buffer[self.filled:self.filled + len(taken)] = taken
            self.filled += len(taken)
            view = view[len(taken):]
            if self.filled == len(self.buffer):
                self.send_part()
        return len(data)

    def flush(self):
        pass  # parts leave as they fill; close() sends the last one

    def send_part(self):
        """Hand the buffer to the uploader once a slot is free: PARTS_IN_FLIGHT + 1 parts in memory at most."""
        while len(self.pending) >= PARTS_IN_FLIGHT:
            self.wait_for_part()
        number = len(self.parts) + len(self.pending) + 1
        if number > MAX_PARTS:
            raise S3Error(f"cannot upload {self.location}: it needs more than S3's {MAX_PARTS:,} parts "
                          f"({sum(map(part_size, range(1, MAX_PARTS + 1))) / 2**30:.0f} GiB)")
        if self.filled == len(self.buffer):
            body, size = self.buffer, part_size(number + 1)
            self.free = [buffer for buffer in self.free if len(buffer) == size]
            self.buffer = self.free.pop() if self.free else bytearray(size)
        else:  # the last part: cut to its size in place, never copied (nor joined to the request's headers)
            del self.buffer[self.filled:]
            self.free, body, self.buffer = [], self.buffer, None
        self.filled = 0
        self.pending.append((self.uploader.submit(self.upload_part, number, body), body))

    def upload_part(self, number, body):
        with store_errors(f"upload part {number} of", self.location):
            answer = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                             PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def wait_for_part(self):
        """Wait for the oldest part being uploaded, and keep its buffer for a later part; raises its error."""
        if self.pending:
            pending, body = self.pending.popleft()
            self.parts.append(pending.result())
            if self.buffer is not None:  # not after the last part
                self.free.append(body)

    def close(self):
        """Send the last part (the only one, even empty, for a tiny artifact) and wait until every part is stored."""
        if self.filled or not (self.parts or self.pending):
            self.send_part()
        self.buffer = None
        while self.pending:
            self.wait_for_part()
        self.free = []
        self.uploader.shutdown()

    def commit(self):
        self.committing = True
        with store_errors("complete the upload of", self.location):
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": self.parts})

    def verify(self, size, sha256, progress):
        """Stream the stored object back and hash it; `progress(fraction)` after each piece may raise to stop."""
        digest, seen = hashlib.sha256(), 0
        with self.sink.read(self.location) as stored:
            while piece := stored.read(READ_BACK_PIECE):
                digest.update(piece)
                seen += len(piece)
                progress(seen / max(size, 1))
        if seen != size or digest.hexdigest() != sha256:
            raise BackupError(f"verification failed: {self.location} does not match what was written "
                              f"({seen:,} of {size:,} bytes read back)")

    def write_manifest(self, data):
        """One small PutObject: the manifest appears whole or not at all, like the artifact."""
        self.manifest_written = True
        with store_errors("write the manifest of", self.location):
            self.client.put_object(Bucket=self.bucket, Key=self.key + MANIFEST, Body=data,
                                   ContentType="application/json")

    def abort(self):
        """Throw the upload away, or delete the completed object and its manifest; never raises.

        A pipeline aborts every sink in turn and must reach them all; what
        cannot be removed here is logged, and a reclaim's remove_leftovers, or
        the bucket's lifecycle rule for unfinished uploads, removes it later.
        """
        self.buffer, self.free = None, []
        self.uploader.shutdown(cancel_futures=True)  # waits for the parts in flight, which could outlive the abort
        self.pending.clear()
        steps = [("abort the upload of", lambda: self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id))]
        if self.committing:  # a completion can succeed even when its answer is lost
            steps.append(("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key)))
        if self.manifest_written:
            steps.append(("delete the manifest of", lambda: self.client.delete_object(
                Bucket=self.bucket, Key=self.key + MANIFEST)))
        for action, step in steps:
            try:
                with store_errors(action, self.location):
                    step()
            except S3Error as exc:
                if "NoSuchUpload" not in str(exc):  # completed, or aborted already: nothing left to abort
                    log.warning("%s", exc)
