"""SQLite whose write transactions take turns on a file lock before BEGIN IMMEDIATE.

SQLite's own busy handler retries after sleeping 1 ms, then 2, 5, 10 ms and
more: far longer than a webhook's whole write transaction, so several
gunicorn processes taking webhooks spent much of their time asleep while the
lock they waited for had long been free. Writers that queue on flock()
instead look again soon after it frees. See bench/RESULTS.md, "Figures behind
the code: database".

The file lock only orders backhook's own processes. Any other writer (the
sqlite3 shell, a script) still meets SQLite's busy handler, which stays the
real arbiter; so does a writer that has waited its whole busy timeout here.
"""
import fcntl
import os
import threading
import time
import weakref

from peewee import SqliteDatabase

FIRST_PAUSE, LONGEST_PAUSE = 0.00002, 0.001
_databases = weakref.WeakSet()


def _reopen_turn_files_after_fork():
    # A descriptor inherited across fork() shares its lock with the parent's.
    for db in _databases:
        if db._turn_file is not None:
            os.close(db._turn_file)
            db._turn_file = None


os.register_at_fork(after_in_child=_reopen_turn_files_after_fork)


class TurnTakingSqliteDatabase(SqliteDatabase):
    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._turn_path = f"{database}-writers"
        self._turn_file = None
        _databases.add(self)
        self._turn_thread_lock = threading.Lock()  # flock() does not exclude threads of one process
        self._turn_owner, self._turn_held = None, False

    def begin(self, lock_type=None):
        self._take_turn()
        try:
            super().begin(lock_type)
        except BaseException:
            self._end_turn()
            raise

    def commit(self):
        super().commit()  # on failure peewee rolls back, which ends the turn
        self._end_turn()

    def rollback(self):
        try:
            super().rollback()
        finally:
            self._end_turn()

    def _close(self, conn):
        try:
            super()._close(conn)  # SQLite rolls back what was open
        finally:
            self._end_turn()

    def _take_turn(self):
        """Wait for the other writers, at most the busy timeout; past it, SQLite's own waiting takes over."""
        deadline = time.monotonic() + self._timeout
        if not self._turn_thread_lock.acquire(timeout=max(self._timeout, 0)):
            return
        self._turn_owner = threading.get_ident()
        pause = FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._turn_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._turn_held = True
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return  # keep the thread lock: this thread's transaction still runs
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)

    def _end_turn(self):
        if self._turn_owner != threading.get_ident():
            return
        if self._turn_held:
            self._turn_held = False
            fcntl.flock(self._turn_file, fcntl.LOCK_UN)
        self._turn_owner = None
        self._turn_thread_lock.release()

    def _turn_fd(self):
        if self._turn_file is None:
            self._turn_file = os.open(self._turn_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._turn_file
