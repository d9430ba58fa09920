"""Rate limits for /api/: the flask-limiter instance and its default shared storage.

flask-limiter's memory storage counts per process, so with several gunicorn
processes a client would get N times its limit. The default here is a small
SQLite file that every local process shares; each hit is one transaction, so
the count is exact. `redis://` URIs use the limits package's Redis storage.

The strategy is the sliding window counter: a fixed window lets a client spend
its whole allowance at the end of one window and again at the start of the
next, twice the limit in a moment; the sliding window weighs the previous
window's hits by how much of it the last minute still covers.
"""
import fcntl
import math
import os
import random
import sqlite3
import threading
import time
from urllib.parse import parse_qs, urlparse

from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.storage import SlidingWindowCounterSupport, Storage

# wrap_exceptions: a failing store (SQLite locked, Redis unreachable) raises StorageError, answered 503.
limiter = Limiter(key_func=get_remote_address, strategy="sliding-window-counter",
                  storage_options={"wrap_exceptions": True})


def read_limit():
    return current_app.config["RATELIMIT_READ"]


def write_limit():
    return current_app.config["RATELIMIT_WRITE"]


def limit_api(blueprint):
    """Put the per-IP read and write limits on every route of `blueprint`.

    The limits are shared across all /api/ routes, so a client cannot multiply
    its allowance by spreading requests over endpoints. They are functions, read
    per request, so that each app keeps the limits of its own configuration.
    """
    limiter.shared_limit(read_limit, "api-read", methods=["GET", "HEAD"])(blueprint)
    limiter.shared_limit(write_limit, "api-write", methods=["POST", "PUT", "DELETE", "PATCH"])(blueprint)


def init_limiter(app):
    """Start rate limiting `app`; the SQLite store waits on a lock as long as the database does."""
    uri = app.config["RATELIMIT_STORAGE_URI"]
    # In the URI, not in flask-limiter's storage options: those pile up on the
    # one global limiter, and Redis would refuse this one.
    if urlparse(uri).scheme in SqliteStorage.STORAGE_SCHEME and "?" not in uri:
        app.config["RATELIMIT_STORAGE_URI"] = f"{uri}?busy_seconds={app.config['DATABASE_BUSY_SECONDS']}"
    limiter.init_app(app)


def retry_after_seconds():
    """Seconds until the breached limit lets the next request through, for the 429's Retry-After."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()))  # reset_at is already a whole second, rounded up


class SqliteStorage(Storage, SlidingWindowCounterSupport):
    """Rate-limit counters in one SQLite file, exact across processes.

    `backhook+sqlite:///abs/path.db?busy_seconds=10`: how long a hit waits on
    a lock before it fails. A sliding window is anchored at its key's first
    hit, as in the limits package's Redis storage: `current` counts the window
    ending at `ends_at`, `previous` the one before it.
    """

    STORAGE_SCHEME = ["backhook+sqlite"]

    def __init__(self, uri, wrap_exceptions=False, clock=time.time, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        parsed = urlparse(uri)
        self.path = parsed.path
        self.busy_seconds = float(parse_qs(parsed.query).get("busy_seconds", ["10"])[0])
        self.clock = clock
        self._local = threading.local()
        self._set_up_in = None

    @property
    def base_exceptions(self):
        return sqlite3.Error

    def _db(self):
        # One connection per process and thread: forked gunicorn workers must
        # not share the parent's handle.
        key = (os.getpid(), threading.get_ident())
        if getattr(self._local, "key", None) != key:
            if self._set_up_in != os.getpid():
                self._set_up()
                self._set_up_in = os.getpid()
            db = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None)
            db.execute("PRAGMA synchronous=normal")
            self._local.db, self._local.key = db, key
        return self._local.db

    def _set_up(self):
        """Create the file, switch it to WAL and create the tables: once per process, one process at a time.

        Switching the journal mode needs the file to itself, and SQLite answers
        "database is locked" at once, without waiting, while another process
        opens it, so every process sets up under an exclusive lock of its own.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            db = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None)
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=wal")
                db.execute("CREATE TABLE IF NOT EXISTS counter ("
                           "key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL)")
                db.execute("CREATE TABLE IF NOT EXISTS sliding_window ("
                           "key TEXT PRIMARY KEY, previous INTEGER NOT NULL, current INTEGER NOT NULL,"
                           " ends_at REAL NOT NULL, expires_at REAL NOT NULL)")
            finally:
                db.close()
        finally:
            os.close(lock)

    # --- the sliding window counter (the strategy backhook uses) -----------------------

    def acquire_sliding_window_entry(self, key, limit, expiry, amount=1):
        if amount > limit:
            return False
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # read, decide and count under the write lock: exact across processes
        try:
            now = self.clock()
            previous, current, ends_at = self._window(db, key, expiry, now)
            allowed = math.floor(previous * (ends_at - now) / expiry) + current + amount <= limit
            if allowed:
                db.execute("INSERT INTO sliding_window (key, previous, current, ends_at, expires_at) "
                           "VALUES (?1, ?2, ?3, ?4, ?4 + ?5) ON CONFLICT (key) DO UPDATE SET "
                           "previous = ?2, current = ?3, ends_at = ?4, expires_at = ?4 + ?5",
                           (key, previous, current + amount, ends_at, expiry))
            if random.random() < 0.001:  # forget clients that went quiet, now and then
                db.execute("DELETE FROM sliding_window WHERE expires_at <= ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return allowed

    def get_sliding_window(self, key, expiry):
        now = self.clock()
        previous, current, ends_at = self._window(self._db(), key, expiry, now)
        return previous, (ends_at - now) if previous else 0.0, current, ends_at + expiry - now

    def clear_sliding_window(self, key, expiry):
        self._db().execute("DELETE FROM sliding_window WHERE key = ?", (key,))

    @staticmethod
    def _window(db, key, expiry, now):
        """(previous, current, ends_at) of `key` at `now`, moved on by the windows that have ended since."""
        row = db.execute("SELECT previous, current, ends_at FROM sliding_window WHERE key = ?", (key,)).fetchone()
        if row is None:
            return 0, 0, now + expiry
        previous, current, ends_at = row
        if now < ends_at:
            return previous, current, ends_at
        if now < ends_at + expiry:
            return current, 0, ends_at + expiry
        return 0, 0, now + expiry

    # --- the fixed window, which every limits storage provides -------------------------

    def incr(self, key, expiry, amount=1):
        now = self.clock()
        # One statement, so it is atomic: a lapsed window restarts at `amount`.
        row = self._db().execute(
            "INSERT INTO counter (key, value, expires_at) VALUES (?1, ?2, ?3) "
            "ON CONFLICT (key) DO UPDATE SET "
            " value = CASE WHEN expires_at <= ?4 THEN ?2 ELSE value + ?2 END,"
            " expires_at = CASE WHEN expires_at <= ?4 THEN ?3 ELSE expires_at END "
            "RETURNING value",
            (key, amount, now + expiry, now),
        ).fetchone()
        if random.random() < 0.001:  # forget clients that went quiet, now and then
            self._db().execute("DELETE FROM counter WHERE expires_at <= ?", (now,))
        return row[0]

    def get(self, key):
        row = self._db().execute(
            "SELECT value FROM counter WHERE key = ? AND expires_at > ?", (key, self.clock())).fetchone()
        return row[0] if row else 0

    def get_expiry(self, key):
        row = self._db().execute("SELECT expires_at FROM counter WHERE key = ?", (key,)).fetchone()
        return row[0] if row else self.clock()

    def check(self):
        try:
            self._db().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def reset(self):
        db = self._db()
        return db.execute("DELETE FROM counter").rowcount + db.execute("DELETE FROM sliding_window").rowcount

    def clear(self, key):
        self._db().execute("DELETE FROM counter WHERE key = ?", (key,))
