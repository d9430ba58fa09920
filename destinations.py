"""A job's destinations: the forms a destination takes, and the sink (sinks.py) that stores to each.

A job has one or more destinations, in order (JobDestination; position 0 is
also `job.destination`). Each is one of:

- an absolute local directory: `/srv/backups`;
- `s3://bucket/prefix?endpoint=…&region=…&profile=…&storage_class=…` (s3sink.py);
- `rclone:<remote>:<path>`, a remote of rclone's own configuration (rclonesink.py).

`check_destination` checks a destination when a job is added or changed,
without contacting the store; `sink_for` builds its sink, whose
class lives in the module named in SINK_CLASSES, imported only when a job
uses that form. Credentials never belong in a destination (an S3 profile or
rclone's configuration holds them), so the text can be shown and logged.
"""
import importlib
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import models
from models import ArtifactCopy, JobDestination
from sources import BackupError, SourceError

FORMS = ("an absolute local directory (/srv/backups), s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P"
         "&storage_class=C] or rclone:REMOTE:PATH")
S3_OPTIONS = ("endpoint", "region", "profile", "storage_class")
SINK_CLASSES = {"local": ("sinks", "LocalDirectorySink"), "s3": ("s3sink", "S3Sink"),
                "rclone": ("rclonesink", "RcloneSink")}

log = logging.getLogger("backhook.destinations")

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
HOST = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")  # urlsplit lowercases it
RCLONE_REMOTE = re.compile(r"[\w.][\w. -]*", re.ASCII)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Destination:
    """A parsed destination: its `kind` (a key of SINK_CLASSES) and the parts its sink needs."""
    kind: str
    text: str
    path: str = ""            # local: the directory; s3: the key prefix (no slashes at its ends); rclone: the path
    bucket: str = ""          # s3
    remote: str = ""          # rclone
    options: dict = field(default_factory=dict)  # s3: endpoint, region, profile, storage_class


def refuse(text, why):
    raise SourceError(f"destination {text!r}: {why}; a destination is {FORMS}")


def parse_destination(text):
    """Check a destination's form (never contacting the store); a Destination, or SourceError naming the forms."""
    if not isinstance(text, str) or not text.strip():
        refuse(text, "it is empty")
    if CONTROL.search(text):
        refuse(text, "it holds control characters")
    if text.startswith("s3://"):
        return parse_s3(text)
    if text.startswith("rclone:"):
        return parse_rclone(text)
    if SCHEME.match(text):
        scheme = text.split(":", 1)[0]
        hint = " (an S3 destination is written s3://BUCKET/PREFIX, in lowercase)" if scheme.lower() == "s3" else ""
        refuse(text, f"{scheme}: is not a destination this version knows{hint}")
    if not Path(text).is_absolute():
        refuse(text, "a local directory must be given as an absolute path")
    return Destination("local", text, path=text)


def parse_s3(text):
    shown = text.split("?", 1)[0].split("@", 1)[-1] + ("?…" if "?" in text else "")  # an option may hold a secret
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        refuse(shown, f"it is not a valid URL ({exc})")
    if "@" in parts.netloc:
        refuse("s3://…", "credentials never go into a destination: name an AWS profile with ?profile=")
    if parts.fragment:
        refuse(shown, "it cannot have a #fragment")
    if not BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        refuse(shown, "the bucket must be 3 to 63 lowercase letters, digits, dots or hyphens")
    if IPV4.fullmatch(parts.netloc):
        refuse(shown, "a bucket cannot be named like an IP address; an S3-compatible server's address goes "
                      "in ?endpoint=http://HOST:PORT")
    prefix = parts.path.strip("/")
    if "//" in prefix or any(piece in (".", "..") for piece in prefix.split("/")):
        refuse(shown, "the prefix cannot hold empty, '.' or '..' segments")
    options = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        refuse(shown, "its options must be NAME=VALUE pairs joined by '&'")
    for name, value in pairs:
        if name not in S3_OPTIONS:
            refuse(shown, f"unknown option {name!r} (known: {', '.join(S3_OPTIONS)})")
        if name in options:
            refuse(shown, f"option {name!r} is given twice")
        if not value:
            refuse(shown, f"option {name!r} is empty")
        options[name] = value
    if "endpoint" in options:
        check_endpoint(shown, options["endpoint"])
    return Destination("s3", text, path=prefix, bucket=parts.netloc, options=options)


def check_endpoint(shown, endpoint):
    """An S3 endpoint is http(s)://HOST[:PORT][/PATH], where boto3 sends every request; refuse what it cannot use."""
    try:
        url = urlsplit(endpoint)
    except ValueError:  # an unclosed [ of an IPv6 address
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        refuse(shown, "endpoint must be an http:// or https:// URL")
    try:
        port = url.port
    except ValueError:  # not a number from 0 to 65535
        port = 0
    if url.username is not None or url.password is not None:
        refuse("s3://…", "credentials never go into a destination: name an AWS profile with ?profile=")
    if not HOST.fullmatch(url.hostname) and not is_ip_address(url.hostname):
        refuse(shown, f"the endpoint's host {url.hostname!r} is not a host name or an IP address")
    if port == 0 or (url.netloc.endswith(":") and port is None):
        refuse(shown, "the endpoint's port must be a number from 1 to 65535")
    if url.query or url.fragment or "?" in endpoint:
        refuse(shown, "the endpoint cannot have a query string or a #fragment: percent-encode a '?' or '&' "
                      "that belongs to it (%3F, %26)")


def is_ip_address(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def parse_rclone(text):
    remote, colon, path = text[len("rclone:"):].partition(":")
    if not colon:
        refuse(text, "an rclone destination is rclone:REMOTE:PATH")
    if not RCLONE_REMOTE.fullmatch(remote) or remote != remote.strip():
        # Not repeated: what stands there may be a connection string holding a credential.
        refuse("rclone:…", "REMOTE must be the name of a remote in rclone's configuration (which holds its "
                     "credentials), not a connection string")
    if any(piece == ".." for piece in path.split("/")):
        refuse(text, "the path cannot hold '..'")
    return Destination("rclone", text, path=path, remote=remote)


# What a form's own module refuses beyond its shape: s3sink, an option's value and storage
# classes whose objects cannot be read back to verify them.
FORM_CHECKS = {"s3": ("s3sink", "parse_s3_destination")}


def check_destination(text):
    """All that `jobs add` and `jobs set` can know of a destination without contacting its store: a Destination,
    or SourceError naming the problem.

    That is its form (parse_destination), then what its own module refuses.
    A missing bucket, wrong credentials or an unreachable store only show
    when a backup runs: they fail it with the store's own message, leaving
    no partial object.
    """
    destination = parse_destination(text)
    if destination.kind in FORM_CHECKS:
        module, name = FORM_CHECKS[destination.kind]
        getattr(importlib.import_module(module), name)(text)
    return destination


def normalized(text):
    """The destination as stored: a relative local directory is made absolute (the CLI's convenience)."""
    if isinstance(text, str) and text and not SCHEME.match(text) and not Path(text).is_absolute():
        return str(Path(text).resolve())
    if isinstance(text, str) and not SCHEME.match(text) and text:
        return str(Path(text))  # no trailing slash, so the same directory is always the same text
    return text


def sink_class(kind):
    module, name = SINK_CLASSES[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise BackupError(f"{kind} destinations are not supported by this version of backhook") from None


def sink_for(text, job, attempt=None):
    """The sink that stores `job`'s artifacts on the destination `text`.

    With `attempt`, an rclone sink runs its transfers as that attempt's
    tools, which the attempt's stop() kills (a cancel, a timeout).
    """
    destination = parse_destination(text)
    if attempt is not None and destination.kind == "rclone":
        return sink_class("rclone").from_destination(text, job, attempt)
    return sink_class(destination.kind).from_destination(text, job)


def job_folder(job):
    """The job's own folder under each destination: its name, or its id for a name stored before names were checked."""
    return job.id if models.job_name_problem(job.name) else job.name


def destination_texts(job):
    """The job's destinations in order; a job without JobDestination rows (made before version 6) has its one."""
    texts = [row.destination for row in
             JobDestination.select(JobDestination.destination).where(JobDestination.job == job.id)
             .order_by(JobDestination.position)]
    return texts or [job.destination]


def job_sinks(job):
    """The job's sinks, in the order of its destinations."""
    return [sink_for(text, job) for text in destination_texts(job)]


def describe(text, job):
    """The destination as users see it (never credentials), even when its sink cannot be built here."""
    try:
        return sink_for(text, job).describe()
    except (SourceError, BackupError):
        return text.split("?", 1)[0] if text.startswith("s3://") else text


def set_destinations(job, texts):
    """Make `texts` the job's destinations, in order, and the first one `job.destination`; in the caller's transaction."""
    JobDestination.delete().where(JobDestination.job == job.id).execute()
    for position, text in enumerate(texts):
        JobDestination.create(job=job.id, position=position, destination=text)
    models.Job.update(destination=texts[0]).where(models.Job.id == job.id).execute()
    job.destination = texts[0]


# --- the copies of a backup ------------------------------------------------------------

def recorded_copies(execution):
    """The execution's ArtifactCopy rows in order; a backup recorded without any has its `path` on the job's
    first destination (an unsaved ArtifactCopy)."""
    copies = list(ArtifactCopy.select().where(ArtifactCopy.execution == execution.id)
                  .order_by(ArtifactCopy.position))
    if not copies and execution.path:
        copies = [ArtifactCopy(execution=execution.id, position=0, destination=execution.job.destination,
                               location=execution.path)]
    return copies


def readable_copy(execution):
    """(copy, sink) of the first recorded copy that exists, or (None, None) when none does."""
    for copy in recorded_copies(execution):
        try:
            sink = sink_for(copy.destination, execution.job)
            if sink.exists(copy.location):
                return copy, sink
        except (SourceError, BackupError, OSError):
            continue  # a store that cannot be reached now: the next copy may serve
    return None, None


class Removed:
    """A leftover a remote sink removed already, as leases.requeue_or_fail reports and unlinks a local one."""

    def __init__(self, name):
        self.name = name

    def unlink(self, missing_ok=False):
        pass  # removed by the sink's remove_leftovers


def leftovers(job, execution_id):
    """What a dead attempt of this execution left on any of the job's destinations (the reclaim's `leftovers`).

    A local destination's files are returned for the reclaim to unlink once
    its write commits; a remote store's are removed here, in the reclaim's
    transaction, as the store offers no listing to hand back.
    """
    from sinks import partial_files  # the attempt's scratch files, wherever its job keeps them

    found = []
    for text in destination_texts(job):
        try:
            sink = sink_for(text, job)
            if sink.is_local:
                found.extend(sink.leftover_paths(job_folder(job), execution_id))
            else:
                found.extend(Removed(name) for name in sink.remove_leftovers(job_folder(job), execution_id))
        except (SourceError, BackupError, OSError) as exc:  # the reclaim must still end the execution
            log.error("execution %s: could not remove what the dead attempt left on %s: %s",
                      execution_id, describe(text, job), exc)
    return found + [path for path in partial_files(job, execution_id) if path not in found]


def remove_leftovers(job, execution_id, report):
    """Remove what an unfinished attempt of this execution left on every destination; the names removed.

    A store that cannot be cleaned now is reported with `report(message, level)`:
    the attempt's ending must still be written.
    """
    removed = []
    for text in destination_texts(job):
        try:
            removed.extend(sink_for(text, job).remove_leftovers(job_folder(job), execution_id))
        except (SourceError, BackupError, OSError) as exc:
            report(f"could not remove what the attempt left on {describe(text, job)}: {exc}", "error")
    return removed
