"""Restore targets: where a backup's bytes go back to, one small class per source kind.

Every target has the same duck-typed interface (no base class needed):

- `Target(source, replace, run)`: `source` is the parsed sources.Source to
  restore into, `replace` the request's flag, `run` the Restore attempt
  (restore.Restore: log, spawn, wait_tool, check, scratch_path, execution);
- `prepare()` refuses, before anything is written, a target it must not
  write (not empty without `replace`, unusable), with a BackupError;
- `restore(stream)` writes the dump's bytes (`stream.read(n)`, exactly what
  the source's dumper produced) into the target, leaving the target as it
  was if it fails or is stopped, wherever the tool allows;
- `check()` proves the result and returns a JSON-able summary, or raises.

TARGETS maps a source kind to its class; database_targets.py adds
PostgreSQL's and MariaDB's.
"""
import ctypes
import ctypes.util
import errno
import os
import shutil
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

from database_targets import MysqlTarget, PostgresqlTarget, chunks_of, feed
from sinks import Writeback, fsync_directory
from sources import CHUNK, BackupError, shell_argv


def utc_stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def remove_tree(path):
    """Remove a file or a tree if it is there."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def feed_tool(run, argv, stream, env=None):
    """Run a tool that reads the dump on its stdin (a restore command); returns the bytes fed.

    database_targets.feed kills the tool before its stdin closes when the
    stream fails, so a command that takes an end of input for a whole dump
    never sees a truncated one end cleanly.
    """
    fed = 0

    def counted():
        nonlocal fed
        for chunk in chunks_of(stream):
            fed += len(chunk)
            yield chunk

    feed(run, argv, env, counted())
    return fed


# --- SQLite ----------------------------------------------------------------------------

SQLITE_HEADER = b"SQLite format 3\x00"
WAL_VERSION = 2  # the file format bytes 18 and 19 of a database in WAL mode
BUSY_RETRY_SECONDS = 30  # how long a reader's open transaction may hold up the swap


class SqliteTarget:
    """Rebuilt in a temporary file beside the target, checked, then renamed over it.

    A reader sees the old database or the new one, never a mix. The old file
    is kept as `<name>.before-restore-<UTC stamp>` unless `replace`.
    """
    kind = "sqlite"

    def __init__(self, source, replace, run):
        self.path, self.replace, self.run = Path(source.path), replace, run
        self.temporary = self.path.with_name(f".{self.path.name}.restore-{run.execution.id}")
        self.integrity = None

    def prepare(self):
        if not self.path.parent.is_dir():
            raise BackupError(f"cannot restore into {self.path}: its directory does not exist")
        if self.path.exists() and not self.path.is_file():
            raise BackupError(f"cannot restore into {self.path}: it is not a file")
        if not os.access(self.path.parent, os.W_OK):
            raise BackupError(f"cannot restore into {self.path}: its directory is not writable")

    def restore(self, stream):
        self.remove_temporary()  # an earlier attempt's, killed before it could
        try:
            self.write_temporary(stream)
            self.run.check()
            self.swap()
        except BaseException:
            self.remove_temporary()
            raise

    def write_temporary(self, stream):
        fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if self.path.exists():  # the new file takes the old one's mode and, as root, its owner
            old = os.stat(self.path)
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
            if os.geteuid() == 0:
                os.fchown(fd, old.st_uid, old.st_gid)
        with os.fdopen(fd, "wb") as out:
            writeback = Writeback(out.fileno())  # syncs as it grows, so the last fsync has only the tail left
            try:
                head = stream.read(len(SQLITE_HEADER))
                if head != SQLITE_HEADER:
                    raise BackupError("the backup is not a SQLite database")
                out.write(head)
                while chunk := stream.read(CHUNK):
                    self.run.check()
                    out.write(chunk)
                    writeback.wrote(len(chunk))
                out.flush()
            finally:
                writeback.stop()
            os.fsync(out.fileno())
        db = sqlite3.connect(self.temporary, isolation_level=None)
        try:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if found != ["ok"]:
                raise BackupError(f"the restored database fails PRAGMA integrity_check: {'; '.join(found[:5])}")
            if self.in_wal_mode(self.path):  # keep the target's journal mode, which the backup's copy lost
                db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"the restored database fails PRAGMA integrity_check: {exc}") from None
        finally:
            db.close()
        self.integrity = "ok"

    @staticmethod
    def in_wal_mode(path):
        try:
            with open(path, "rb") as stream:
                header = stream.read(20)
        except OSError:
            return False
        return header.startswith(SQLITE_HEADER) and header[18] == WAL_VERSION

    def swap(self):
        """Put the new database in place, keeping the old one unless `replace`."""
        kept = None
        if self.path.exists():
            self.checkpoint_old()
            if not self.replace:
                kept = self.kept_name()
                os.link(self.path, kept)
        try:
            os.rename(self.temporary, self.path)
        except BaseException:
            if kept:
                kept.unlink(missing_ok=True)  # the old file stays where it was, under its own name
            raise
        fsync_directory(self.path.parent)
        if kept:
            self.run.log(f"the database it replaced is kept as {kept}")

    def kept_name(self):
        """`<name>.before-restore-<UTC stamp>`, with a counter when a restore in the same second kept one."""
        kept = self.path.with_name(f"{self.path.name}.before-restore-{utc_stamp()}")
        number = 1
        while os.path.lexists(kept):
            kept, number = kept.with_name(f"{kept.name.split('~')[0]}~{number}"), number + 1
        return kept

    def checkpoint_old(self):
        """Fold the old database's WAL into it and empty the WAL, so that nothing of it meets the new file.

        A reader holding a transaction open holds the WAL too; it is waited for a while.
        """
        if not self.in_wal_mode(self.path):
            return
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1)
        try:
            while True:
                busy, _log, _done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                self.run.check()
                if time.monotonic() > deadline:
                    raise BackupError(f"{self.path} stays busy: a connection holds a transaction open, so its "
                                      "write-ahead log cannot be emptied; nothing was changed")
                time.sleep(0.1)
        finally:
            db.close()

    def remove_temporary(self):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.temporary}{suffix}").unlink(missing_ok=True)

    def check(self):
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            names = [row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            tables = {name: db.execute(f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                      for name in names}
        finally:
            db.close()
        return {"integrity": self.integrity, "tables": tables}


# --- directories -----------------------------------------------------------------------

RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def sync_file_system(path):
    """Write every file of the file system holding `path` to disk (syncfs): one call for a whole tree."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


def exchange(first, second):
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code), str(first))


# tarfile reads its stream in pieces of this size; a smaller piece is cheaper to slice
# many times than CHUNK (bench/RESULTS.md, "Restore speed and memory").
TAR_BUFFER = 256 * 1024


class UnsafeMember(BackupError):
    pass


def within(root, path):
    return path == root or path.startswith(root + os.sep)


class DirectoryTarget:
    """A tar stream extracted into a staging directory beside the target, which then takes its place.

    Every member is checked before it is written: one that would land outside
    the target (an absolute name, `..`, a link escaping it, a device) fails the
    restore, and the staging directory is removed, so the target is never
    touched by a bad archive. With `replace` the old tree is removed only
    after the new one is in place, so files missing from the backup do not
    survive and a failure before that leaves the old tree whole.
    """
    kind = "files"

    def __init__(self, source, replace, run):
        self.path, self.replace, self.run = Path(source.path), replace, run
        self.staging = self.path.with_name(f".{self.path.name}.restore-{run.execution.id}")
        self.members = 0

    def prepare(self):
        if self.path.exists() and not self.path.is_dir():
            raise BackupError(f"cannot restore into {self.path}: it is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.replace:
            raise BackupError(f"cannot restore into {self.path}: it is not empty (ask for replace to "
                              "overwrite it; files missing from the backup are then removed)")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def restore(self, stream):
        remove_tree(self.staging)  # an earlier attempt's, killed before it could
        try:
            os.mkdir(self.staging, 0o700)
            try:
                self.extract(stream)
            except tarfile.TarError as exc:
                raise BackupError(f"the backup is not a readable tar archive ({exc}); nothing was restored") from None
            self.run.check()
            self.swap()
        except BaseException:
            remove_tree(self.staging)
            raise

    def extract(self, stream):
        root = os.path.realpath(self.staging)
        owners = os.geteuid() == 0
        self.real_parents, self.symlinks = {}, []
        with tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFFER) as archive:
            archive.copybufsize = CHUNK
            directories = []
            for member in archive:
                self.run.check()  # a whole archive may sit in one compressed read: stop between members
                path = self.checked(member, root)
                if member.isdir():
                    directories.append(member)
                elif os.path.lexists(path):
                    os.unlink(path)  # never write through what an earlier member left there (a symlink)
                archive.extract(member, self.staging, set_attrs=not member.isdir(), numeric_owner=owners,
                                filter="fully_trusted")
                if member.issym():
                    self.symlinks.append((member.name, path))
                    self.real_parents.clear()  # a new symlink can change where any later path resolves
                    # tarfile leaves a symlink's own time as it found it; tar does not
                    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
                self.members += 1
            if self.members == 0:
                raise BackupError("the backup's archive holds nothing to restore")
            self.check_symlinks(root)
            # Directories get their modes and times last, as tar does: writing into them changed their times.
            for directory in sorted(directories, key=lambda member: member.name, reverse=True):
                path = os.path.join(self.staging, directory.name)
                if owners:
                    archive.chown(directory, path, numeric_owner=True)
                archive.chmod(directory, path)
                archive.utime(directory, path)
        fsync_directory(self.staging)

    def checked(self, member, root):
        """Where the member goes, once it is shown to stay under `root`; UnsafeMember when it would not.

        Its directory is resolved on disk as it is now (through the symlinks
        extracted so far), so no later member can write through a link that
        leads out; each directory's resolution is reused until the next symlink.
        """
        name = member.name
        if name.startswith("/") or ".." in Path(name).parts:
            raise UnsafeMember(f"the archive's member {name!r} would land outside the target; nothing was restored")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeMember(f"the archive's member {name!r} is a device or special file; nothing was restored")
        parent = os.path.dirname(os.path.normpath(name))
        if not within(root, self.resolved(root, parent)):
            raise UnsafeMember(f"the archive's member {name!r} would land outside the target through a link; "
                               "nothing was restored")
        if member.issym() or member.islnk():
            if os.path.isabs(member.linkname):
                raise UnsafeMember(f"the archive's link {name!r} points outside the target "
                                   f"({member.linkname}); nothing was restored")
            base = parent if member.issym() else ""  # a hard link's name is relative to the archive's root
            if not within(root, os.path.realpath(os.path.join(root, base, member.linkname))):
                raise UnsafeMember(f"the archive's link {name!r} points outside the target ({member.linkname}); "
                                   "nothing was restored")
        return os.path.join(root, name)

    def resolved(self, root, directory):
        if directory not in self.real_parents:
            self.real_parents[directory] = os.path.realpath(os.path.join(root, directory))
        return self.real_parents[directory]

    def check_symlinks(self, root):
        """Every symlink as the whole tree now resolves it: one that was harmless when made can lead out later."""
        for name, path in self.symlinks:
            if not within(root, os.path.realpath(path)):
                raise UnsafeMember(f"the archive's symlink {name!r} resolves outside the target "
                                   f"({os.readlink(path)}); nothing was restored")

    def swap(self):
        """Put the staging tree in the target's place, then remove the old tree."""
        if not self.path.exists() or not any(self.path.iterdir()):
            os.rename(self.staging, self.path)  # over an empty directory too, in one step
            fsync_directory(self.path.parent)
            return
        sync_file_system(self.staging)  # the new tree is on disk before the old one can go
        if exchange(self.staging, self.path):
            remove_tree(self.staging)  # the old tree, now in the staging place
        else:
            old = self.path.with_name(f".{self.path.name}.before-restore-{self.run.execution.id}")
            os.rename(self.path, old)
            try:
                os.rename(self.staging, self.path)
            except BaseException:
                os.rename(old, self.path)
                raise
            remove_tree(old)
        fsync_directory(self.path.parent)

    def check(self):
        files = size = 0
        for directory, _dirs, names in os.walk(self.path):
            for name in names:
                files += 1
                size += os.lstat(os.path.join(directory, name)).st_size
        return {"files": files, "bytes": size, "members": self.members}


# --- command: jobs ---------------------------------------------------------------------

class CommandTarget:
    """The job's restore command, run like its backup command, reading the dump on its stdin."""
    kind = "command"

    def __init__(self, source, replace, run):
        self.command, self.run, self.fed = source.command, run, 0

    def prepare(self):
        if not self.command or not self.command.strip():
            raise BackupError("this job has no restore command")

    def restore(self, stream):
        self.fed = feed_tool(self.run, shell_argv(self.command, self.run, "restore"), stream)

    def check(self):
        return {"bytes": self.fed}


TARGETS = {"sqlite": SqliteTarget, "files": DirectoryTarget, "command": CommandTarget,
           "postgresql": PostgresqlTarget, "mysql": MysqlTarget}
