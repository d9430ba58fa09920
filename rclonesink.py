"""The rclone sink: a destination `rclone:<remote>:<path>` on any remote of rclone's own config file.

backhook stores and shows only the remote's name and path; what the remote
is and its credentials stay in rclone's config file (the user's, or
RCLONE_CONFIG, passed as `--config`). Every operation is one run of the
`rclone` command with an argument list (tools.py):

- an artifact is streamed into `rclone rcat <remote>:<path>/<job>/<name>.partial`
  and moved into place with `rclone moveto` once rcat has exited cleanly;
- `rclone cat` reads it back to verify, restore and download it;
- `rclone lsjson --stat` tells whether it exists and its size; `rclone
  deletefile` and `rclone delete` with a filter remove it.

rclone's error output is shown to users, so it is scrubbed first: a remote's
URL may carry credentials in its user part or its query string.
"""
import hashlib
import json
import re
import subprocess
from contextlib import contextmanager

import config
from sinks import MANIFEST, PARTIAL, READ_BACK_PIECE, manifest_location
from sources import BackupError
from tools import end_tool, start_tool, wait_for_tool

PREFIX = "rclone:"
# A stuck remote fails the attempt soon, and the execution's next attempt tries again (leases.py);
# never asking for a config password keeps rclone from waiting on a terminal it does not have.
OPTIONS = ["--contimeout", "15s", "--timeout", "60s", "--retries", "1", "--low-level-retries", "2",
           "--ask-password=false"]
MISSING = (3, 4)  # rclone's exit statuses for a directory or a file not found
STDERR_LINES = 4  # the last lines of rclone's error output kept for a message

SECRETS = [
    (re.compile(r"(\w+://)[^/\s@]*@"), r"\1***@"),  # user:password@ in a URL
    (re.compile(r"(\w+://[^\s?\"']*)\?[^\s\"']*"), r"\1?***"),  # query strings: signatures, tokens
    (re.compile(r"(?i)\b(pass(?:word)?|secret|token|key|signature|credentials?|authorization)"
                r"(\"?\s*[=:]\s*\"?(?:bearer\s+)?)(?!\s)[^\s,&\"']+"), r"\1\2***"),
]
TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


def scrub(stderr):
    """The last lines of rclone's error output, without timestamps, with whatever could be a credential masked."""
    lines = TIMESTAMP.sub("", stderr).strip().splitlines()[-STDERR_LINES:]
    text = " / ".join(line.strip() for line in lines) or "(no error output)"
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RcloneError(BackupError, OSError):
    """rclone failed; an OSError too, so retention keeps an artifact it could not delete and goes on."""


def failed(verb, target, status, stderr):
    return RcloneError(f"rclone {verb} {target} failed (exit status {status}): {scrub(stderr)}")


def join(path, name):
    return f"{path}/{name}" if path and not path.endswith("/") else f"{path}{name}"


class RcloneSink:
    """The job's folder on an rclone remote; each artifact is uploaded as `<name>.partial` and moved into place.

    With an `attempt` (attempt.py), the transfers (rcat, cat, moveto) are
    its children, which its stop() kills, and a transfer that fails asks
    `attempt.check()` first, so that a cancel ends as a cancel rather than
    as rclone's death. Cleanups always run a plain tool, so that they still
    run once the attempt is stopped.
    """

    is_local = False

    def __init__(self, remote, path, job_folder, rclone_config=None, attempt=None):
        self.remote, self.path = remote, path
        self.folder = join(path, job_folder)  # as rclone names it, without the remote
        self.rclone_config = rclone_config
        self.spawn = attempt.spawn if attempt else start_tool
        self.check = attempt.check if attempt else lambda: None

    @classmethod
    def from_destination(cls, text, job, attempt=None):
        import destinations  # destinations builds sinks, so it imports this module first

        destination = destinations.parse_destination(text)
        return cls(destination.remote, destination.path, destinations.job_folder(job),
                   config.load()["RCLONE_CONFIG"], attempt)

    def describe(self):
        return f"{PREFIX}{self.remote}:{self.path}"

    # --- running rclone

    def command(self, *args):
        return ["rclone", *(["--config", self.rclone_config] if self.rclone_config else []), *OPTIONS, *args]

    def start(self, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, spawn=None):
        return (spawn or self.spawn)(self.command(*args), stdin=stdin, stdout=stdout)

    def run(self, *args, spawn=start_tool):
        """Run rclone to its end; returns (exit status, its output, its error output)."""
        child = self.start(*args, spawn=spawn)
        try:
            output = child.stdout.read()
        except BaseException:
            end_tool(child)
            raise
        child.stdout.close()
        status, stderr = wait_for_tool(child)
        return status, output, stderr

    def check_run(self, verb, *args, spawn=start_tool):
        status, output, stderr = self.run(verb, *args, spawn=spawn)
        if status != 0:
            self.check()
            raise failed(verb, args[0], status, stderr)
        return output

    # --- names

    def target(self, name):
        """`<remote>:<path>/<job>/<name>`, as rclone's commands take it."""
        return f"{self.remote}:{join(self.folder, name)}"

    def location(self, name):
        return PREFIX + self.target(name)

    def target_of(self, location):
        """The rclone argument for a location this sink recorded; refuses any other."""
        if not location.startswith(f"{PREFIX}{self.remote}:"):
            raise BackupError(f"{location} is not on the rclone remote {self.remote!r}")
        return location[len(PREFIX):]

    # --- the sink's interface (sinks.py)

    def open(self, name):
        return RcloneArtifact(self, name)

    def stat(self, location):
        """rclone's listing of one stored file, or None when it is missing."""
        target = self.target_of(location)
        status, output, stderr = self.run("lsjson", "--stat", target)
        if status in MISSING:
            return None
        if status != 0:
            raise failed("lsjson", target, status, stderr)
        return json.loads(output)

    def exists(self, location):
        return self.stat(location) is not None

    def size(self, location):
        listing = self.stat(location)
        return None if listing is None else listing.get("Size")

    @contextmanager
    def read(self, location):
        """The stored file, streamed by `rclone cat`; BackupError with rclone's message if it cannot be read."""
        if not self.exists(location):
            raise BackupError(f"{location} is missing from the rclone remote {self.remote!r}")
        target = self.target_of(location)
        stream = RcloneStream(self.start("cat", target), target, self.check)
        try:
            yield stream
        finally:
            stream.close()

    def delete(self, location):
        """Remove a stored artifact, as retention does; an artifact already gone is no error."""
        target = self.target_of(location)
        status, _output, stderr = self.run("deletefile", target)
        if status != 0 and self.exists(location):
            raise failed("deletefile", target, status, stderr)

    def delete_manifest(self, location):
        self.delete(manifest_location(location))

    def delete_matching(self, pattern):
        """Delete the files of the job's folder matching an rclone filter `pattern`; a missing folder is no error."""
        folder = f"{self.remote}:{self.folder}"
        status, _output, stderr = self.run("delete", folder, "--max-depth", "1", "--include", pattern)
        if status != 0 and status not in MISSING:
            raise failed("delete", folder, status, stderr)

    def remove_leftovers(self, _job, execution_id):
        """Delete what an unfinished attempt of this execution left (partial or final names); returns their names."""
        folder, pattern = f"{self.remote}:{self.folder}", f"/*-{execution_id}.*"
        status, output, stderr = self.run("lsjson", folder, "--files-only", "--max-depth", "1", "--include", pattern)
        if status in MISSING:
            return []
        if status != 0:
            raise failed("lsjson", folder, status, stderr)
        names = sorted(entry["Name"] for entry in json.loads(output))
        if names:
            self.delete_matching(pattern)
        return names


class RcloneStream:
    """`read(n)` over `rclone cat`'s output; the end of the stream raises BackupError if rclone failed."""

    def __init__(self, child, target, check):
        self.child, self.target, self.check, self.done = child, target, check, False

    def read(self, n=-1):
        data = self.child.stdout.read(n)
        if not data and n != 0 and not self.done:
            self.done = True
            self.child.stdout.close()
            status, stderr = wait_for_tool(self.child)
            if status != 0:
                self.check()
                raise failed("cat", self.target, status, stderr)
        return data

    def close(self):
        if not self.done:
            self.done = True
            end_tool(self.child)


def end_upload(upload, target, check):
    """Close `rclone rcat`'s input and wait for it; raises its error unless it stored every byte."""
    try:
        upload.stdin.close()
    except BrokenPipeError:
        pass  # rclone exited early: its status and message say why
    status, stderr = wait_for_tool(upload)
    if status != 0:
        check()
        raise failed("rcat", target, status, stderr)


class RcloneArtifact:
    """One artifact being uploaded: `rclone rcat` into its partial name, then `rclone moveto` to its name."""

    def __init__(self, sink, name):
        self.sink, self.name = sink, name
        self.location = sink.location(name)
        self.target = sink.target(name)
        self.partial = self.target + PARTIAL
        self.upload = sink.start("rcat", self.partial, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def write(self, data):
        try:
            self.upload.stdin.write(data)
        except BrokenPipeError:
            raise self.upload_failed() from None
        return len(data)

    def flush(self):
        try:
            self.upload.stdin.flush()
        except BrokenPipeError:
            raise self.upload_failed() from None

    def close(self):
        """End the upload; raises rclone's error if it did not store every byte."""
        upload, self.upload = self.upload, None
        end_upload(upload, self.partial, self.sink.check)

    def upload_failed(self):
        """The error of an upload whose rclone exited while bytes were still coming."""
        upload, self.upload = self.upload, None
        try:
            end_upload(upload, self.partial, self.sink.check)
        except RcloneError as error:
            return error
        return RcloneError(f"rclone rcat {self.partial} stopped reading before the upload's end")

    def commit(self):
        self.sink.check_run("moveto", self.partial, self.target, spawn=self.sink.spawn)

    def verify(self, size, sha256, progress):
        """Stream the stored copy back with `rclone cat`; `progress(fraction)` after each piece may raise to stop."""
        digest, seen = hashlib.sha256(), 0
        stream = RcloneStream(self.sink.start("cat", self.target), self.target, self.sink.check)
        try:
            while piece := stream.read(READ_BACK_PIECE):
                digest.update(piece)
                seen += len(piece)
                progress(seen / max(size, 1))
        finally:
            stream.close()
        if seen != size or digest.hexdigest() != sha256:
            raise BackupError(f"verification failed: {self.location} does not match what was written "
                              f"({seen:,} of {size:,} bytes read back)")

    def write_manifest(self, data):
        """Upload the manifest as the artifact is uploaded: to `.partial`, then moved beside it."""
        manifest = manifest_location(self.target)
        upload = self.sink.start("rcat", manifest + PARTIAL, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            upload.stdin.write(data)
        except BrokenPipeError:
            pass  # rclone exited early: end_upload says why
        end_upload(upload, manifest + PARTIAL, self.sink.check)
        self.sink.check_run("moveto", manifest + PARTIAL, manifest, spawn=self.sink.spawn)

    def abort(self):
        """Kill a running upload, then delete the partial file, the artifact and its manifest, whichever exist."""
        if self.upload is not None:
            upload, self.upload = self.upload, None
            end_tool(upload)
        name = self.name
        try:
            self.sink.delete_matching(f"/{{{name}{PARTIAL},{name},{name}{MANIFEST}{PARTIAL}}}")
            self.sink.delete_matching(f"/{name}{MANIFEST}")  # after the artifact: no artifact is left without one
        except RcloneError:
            # Never hides the error being handled; the attempt's ending tries again and reports a store
            # it cannot clean (destinations.remove_leftovers), and the reclaim after it.
            pass
