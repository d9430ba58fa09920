"""Wake-up datagrams: how the web process tells idle workers "look now".

Each worker binds a unix datagram socket under `<data dir>/wake/` and blocks
on it with a slow fallback timeout, so it reacts to a trigger within
milliseconds without polling the database while idle. A datagram carries no
information: it only means "something changed, look at the database".
Sending never blocks and never fails the sender; a lost datagram costs at
most one fallback poll interval.

Datagrams reach only the workers of one machine. On PostgreSQL, which
several machines share, the backend (database.PostgresqlBackend) answers
`listen` and `wake_workers` with LISTEN/NOTIFY instead: the web process sends
NOTIFY, and each worker LISTENs on a connection of its own.
"""
import errno
import logging
import os
import socket
import time
from pathlib import Path

import psycopg2
from peewee import DatabaseError

import heartbeats
import models
from database import opened

log = logging.getLogger("backhook.wakeup")


def wake_directory(data_dir):
    return Path(data_dir) / "wake"


def listen(data_dir, name):
    """Start receiving wake-ups: a non-blocking datagram socket, or on PostgreSQL a NotifyListener."""
    return opened().listen(data_dir, name)


def listen_on_socket(data_dir, name):
    """Bind and return a non-blocking datagram socket under `data_dir` that receives wake-ups."""
    directory = wake_directory(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.sock"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def stop_listening(sock):
    if isinstance(sock, NotifyListener):
        return sock.close()
    path = sock.getsockname()
    sock.close()
    _remove_quietly(path)


def drain(sock):
    """Discard every pending datagram: one look at the database answers them all."""
    if isinstance(sock, NotifyListener):
        return sock.drain()
    while True:
        try:
            sock.recv(64)
        except BlockingIOError:
            return


def trigger(job, data_dir, idempotency_key=None):
    """Queue an execution of `job` and wake the workers: how both the API and `backhook jobs run` start a run.

    With an `idempotency_key` that already queued a run of `job` in the last
    24 hours, that run is returned and nothing is queued. A run queued while
    no worker is alive says so in its log (heartbeats.py).
    """
    if idempotency_key is None:
        execution, queued = models.Execution.enqueue(job), True
    else:
        execution, queued = models.Execution.enqueue_once(job, idempotency_key)
    if queued:
        heartbeats.note_if_unattended(execution.id)  # first: a worker woken now could claim it before the look
        wake_workers(data_dir)
    return execution


def wake_workers(data_dir):
    """Nudge every listening worker, on this machine or (PostgreSQL) on any."""
    opened().wake_workers(data_dir)


def wake_sockets(data_dir):
    """Send a datagram to every socket under `data_dir`. Sockets nobody listens on are stale and removed."""
    directory = wake_directory(data_dir)
    try:
        paths = [entry.path for entry in os.scandir(directory) if entry.name.endswith(".sock")]
    except OSError:  # no worker has listened yet, or the directory is unreadable
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in paths:
            try:
                sock.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                # The worker that bound it died without cleaning up.
                _remove_quietly(path)
            except OSError as exc:
                # A full queue already holds a wake-up for that worker.
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.warning("could not wake worker at %s: %s", path, exc)


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# --- PostgreSQL: LISTEN/NOTIFY reaches the workers of every machine ----------------

CHANNEL = "backhook_wake"
LISTENER_NAME = "backhook-worker-listen"  # its application_name, seen in pg_stat_activity
RECONNECT_EVERY_SECONDS = 1.0


def notify_workers(db):
    """NOTIFY every worker listening on `db`, once the caller's transaction has committed.

    Outside a transaction it is delivered at once. A failure costs only the
    fallback poll, never the request that queued the work.
    """
    try:
        db.execute_sql(f"NOTIFY {CHANNEL}")
    except DatabaseError as exc:
        log.warning("could not wake workers: %s", exc)


class NotifyListener:
    """A worker's LISTEN connection, kept apart from its queries, for select() to wait on.

    If the server drops it, select() finds it readable and drain() closes it.
    Until it is back, select() waits on a socket that never fires, so the
    worker falls back to its slow poll while reconnecting once a second.
    """

    def __init__(self, db):
        self.params = {"dbname": db.database, **db.connect_params, "application_name": LISTENER_NAME,
                       "connect_timeout": 2}
        self.conn = None
        self.next_attempt = 0.0
        self.silent, self._silent_peer = socket.socketpair()
        self.connect()

    def connect(self):
        self.next_attempt = time.monotonic() + RECONNECT_EVERY_SECONDS
        try:
            conn = psycopg2.connect(**self.params)
            conn.autocommit = True
            conn.cursor().execute(f"LISTEN {CHANNEL}")
        except psycopg2.Error as exc:
            log.warning("cannot LISTEN for wake-ups, polling meanwhile: %s", exc)
            return
        self.conn = conn

    def fileno(self):
        if self.conn is None and time.monotonic() >= self.next_attempt:
            self.connect()
        return self.silent.fileno() if self.conn is None else self.conn.fileno()

    def drain(self):
        if self.conn is None:
            return
        try:
            self.conn.poll()
            self.conn.notifies.clear()
        except psycopg2.Error as exc:
            log.warning("lost the LISTEN connection: %s", exc)
            self.conn.close()
            self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.silent.close()
        self._silent_peer.close()
