"""Rate limits for /api/: the flask-limiter instance and its default shared storage.

flask-limiter's memory storage counts per process, so with several gunicorn
processes a client would get N times its limit. The default here is a small
SQLite file that every local process shares; each hit is one atomic UPSERT, so
the count is exact. `redis://` URIs use the limits package's Redis storage.
"""
import os
import random
import sqlite3
import threading
import time
from urllib.parse import urlparse

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.storage import Storage

READ_LIMIT = "100 per minute"
WRITE_LIMIT = "20 per minute"

limiter = Limiter(key_func=get_remote_address, strategy="fixed-window")


def limit_api(blueprint):
    """Put the per-IP read and write limits on every route of `blueprint`.

    The limits are shared across all /api/ routes, so a client cannot multiply
    its allowance by spreading requests over endpoints.
    """
    limiter.shared_limit(READ_LIMIT, "api-read", methods=["GET", "HEAD"])(blueprint)
    limiter.shared_limit(WRITE_LIMIT, "api-write", methods=["POST", "PUT", "DELETE", "PATCH"])(blueprint)


def retry_after_seconds():
    """Seconds until the breached window resets, for the 429's Retry-After."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()))


class SqliteStorage(Storage):
    """A fixed-window counter store in one SQLite file, exact across processes."""

    STORAGE_SCHEME = ["backhook+sqlite"]

    def __init__(self, uri, wrap_exceptions=False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = urlparse(uri).path
        self._local = threading.local()

    @property
    def base_exceptions(self):
        return sqlite3.Error

    def _db(self):
        # One connection per process and thread: forked gunicorn workers must
        # not share the parent's handle.
        key = (os.getpid(), threading.get_ident())
        if getattr(self._local, "key", None) != key:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=wal")
            db.execute("PRAGMA synchronous=normal")
            db.execute("CREATE TABLE IF NOT EXISTS counter ("
                       "key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL)")
            self._local.db, self._local.key = db, key
        return self._local.db

    def incr(self, key, expiry, amount=1):
        now = time.time()
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
            "SELECT value FROM counter WHERE key = ? AND expires_at > ?", (key, time.time())).fetchone()
        return row[0] if row else 0

    def get_expiry(self, key):
        row = self._db().execute("SELECT expires_at FROM counter WHERE key = ?", (key,)).fetchone()
        return row[0] if row else time.time()

    def check(self):
        try:
            self._db().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def reset(self):
        return self._db().execute("DELETE FROM counter").rowcount

    def clear(self, key):
        self._db().execute("DELETE FROM counter WHERE key = ?", (key,))
