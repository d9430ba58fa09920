"""Backup sources: parsing the SRC forms of `backhook jobs add`, showing them safely, and dumping them."""
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote, urlparse

SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "files": "files",
    "wpsec": "wpsec",
}


def source_kind(source):
    """The kind of a SRC string, or ValueError saying what is wrong with it."""
    if source.startswith("command:"):
        if not source[len("command:"):].strip():
            raise ValueError("command: needs a shell command after the colon")
        return "command"
    parsed = urlparse(source)
    kind = SCHEMES.get(parsed.scheme)
    if kind is None:
        raise ValueError(
            f"unknown source {source.split(':', 1)[0]!r}; use sqlite:///, postgresql://, "
            "mysql://, files:///, wpsec:// or command:")
    if kind in ("sqlite", "files"):
        if parsed.netloc or not parsed.path.startswith("/"):
            raise ValueError(f"{parsed.scheme}: needs an absolute path, as in {parsed.scheme}:///abs/path")
    elif kind == "wpsec":
        if not parsed.hostname:
            raise ValueError("wpsec: needs a domain, as in wpsec://example.com")
    elif not parsed.hostname or not parsed.path.strip("/"):
        raise ValueError(f"{parsed.scheme}: needs a host and a database, as in {parsed.scheme}://user@host:port/db")
    return kind


def describe_source(source):
    """The fields an API client may see: the kind, and the source without secrets."""
    kind = source_kind(source)
    if kind == "command":
        return {"sourceKind": kind, "source": "command"}
    without_query = source.split("?", 1)[0]
    parsed = urlparse(without_query)
    if parsed.password is None:
        return {"sourceKind": kind, "source": without_query}
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return {"sourceKind": kind, "source": parsed._replace(netloc=netloc).geturl()}


# --- dumping: each source kind writes its backup's bytes into a sink ----------
#
# A dumper is `dump(source, run, sink)`. `run` is the running attempt
# (backup.Run): it spawns tools in their own process group so that cancel and
# timeout can kill the whole tree, raises Stopped from `run.check()` once the
# attempt must stop, and logs. `sink.write(chunk)` compresses, hashes and
# stores. Everything streams in CHUNK-sized pieces, so memory stays bounded
# whatever the size of the source.

CHUNK = 1024 * 1024
SQLITE_PAGES_PER_STEP = 4096


class BackupError(Exception):
    """A backup failed for a reason a person can act on; the message is shown as is."""


@dataclass(frozen=True)
class Dumper:
    suffix: str                                   # the artifact's inner extension
    dump: Callable                                # dump(source, run, sink)
    estimate: Callable = lambda source: None      # expected bytes, for progress only


def pump(stream, sink):
    """Copy a binary stream into the sink, chunk by chunk, until EOF."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        sink.write(chunk)


def run_tool(run, argv, sink, env=None):
    """Stream a tool's stdout into the sink; fail with its stderr if it fails."""
    process = run.spawn(argv, env=env)
    with process.stdout:
        pump(process.stdout, sink)
    run.wait_tool(process)


def local_path(source):
    """The absolute path of a sqlite:/// or files:/// source."""
    return "/" + unquote(urlparse(source).path).lstrip("/")


def password_of(source):
    password = urlparse(source).password
    return unquote(password) if password else None


def _server_parts(source):
    parsed = urlparse(source.split("?", 1)[0])
    return (unquote(parsed.username or ""), parsed.hostname, parsed.port,
            unquote(parsed.path.strip("/")))


def dump_sqlite(source, run, sink):
    """Snapshot with SQLite's online backup API, then stream the snapshot.

    The source connection holds one read transaction across all backup
    steps, so the snapshot is a single consistent state even while other
    processes keep writing (a step-wise backup without it restarts on every
    foreign write and may never finish). Steps keep the copy interruptible.
    """
    path = local_path(source)
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} does not exist")
    snapshot = run.scratch_path("snapshot")
    try:
        source_db = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
        try:
            source_db.execute("BEGIN")
            source_db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            target_db = sqlite3.connect(snapshot)
            try:
                source_db.backup(target_db, pages=SQLITE_PAGES_PER_STEP,
                                 progress=lambda status, remaining, total: run.check())
            finally:
                target_db.close()
            source_db.execute("COMMIT")
        finally:
            source_db.close()
        run.log(f"snapshot of {path} taken: {os.path.getsize(snapshot):,} bytes")
        with open(snapshot, "rb") as stream:
            pump(stream, sink)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {path} failed: {exc}") from exc
    finally:
        Path(snapshot).unlink(missing_ok=True)


def sqlite_size(source):
    try:
        return os.path.getsize(local_path(source))
    except OSError:
        return None


def dump_postgresql(source, run, sink):
    """Plain SQL from pg_dump, restorable with psql; the password goes through the environment."""
    user, host, port, database = _server_parts(source)
    argv = ["pg_dump", "--no-password", "--host", host, "--dbname", database]
    if port:
        argv += ["--port", str(port)]
    if user:
        argv += ["--username", user]
    env = {"PGCONNECT_TIMEOUT": "15"}
    if password_of(source):
        env["PGPASSWORD"] = password_of(source)
    run_tool(run, argv, sink, env)


def dump_mysql(source, run, sink):
    """mariadb-dump (or mysqldump) in one consistent transaction; the password goes through the environment."""
    user, host, port, database = _server_parts(source)
    tool = "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"
    argv = [tool, "--single-transaction", "--quick", "--routines", "--triggers",
            "--host", host]
    if port:
        argv += ["--port", str(port)]
    if user:
        argv += ["--user", user]
    env = {}
    if password_of(source):
        env["MYSQL_PWD"] = password_of(source)
    run_tool(run, argv + ["--", database], sink, env)


def dump_files(source, run, sink):
    """A tar stream of the directory, by the tar binary: faster than tarfile on many small files."""
    directory = local_path(source)
    if not os.path.isdir(directory):
        raise BackupError(f"directory {directory} does not exist")
    run_tool(run, ["tar", "--create", "--file=-", "--directory", directory, "."], sink)


def files_size(source):
    total = 0
    for root, _dirs, names in os.walk(local_path(source)):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def dump_command(source, run, sink):
    """The stdout of an admin-defined shell command.

    This is the one place a shell runs. The command comes only from
    `backhook jobs add` on the server's own command line, never over HTTP, so
    whoever defines it can already run any command.
    """
    run_tool(run, ["/bin/sh", "-c", source[len("command:"):]], sink)


# wpsec:// is not a dump: the remote plugin makes the backup. It gets its own
# flow in the worker instead of an entry here.
DUMPERS = {
    "sqlite": Dumper("db", dump_sqlite, sqlite_size),
    "postgresql": Dumper("sql", dump_postgresql),
    "mysql": Dumper("sql", dump_mysql),
    "files": Dumper("tar", dump_files, files_size),
    "command": Dumper("out", dump_command),
}
