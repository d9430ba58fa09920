"""Wake-up datagrams: how the web process tells idle workers "look now".

Each worker binds a unix datagram socket under `<data dir>/wake/` and blocks
on it with a slow fallback timeout, so it reacts to a trigger within
milliseconds without polling the database while idle. A datagram carries no
information: it only means "something changed, look at the database".
Sending never blocks and never fails the sender; a lost datagram costs at
most one fallback poll interval.
"""
import errno
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger("backhook.wakeup")


def wake_directory(data_dir):
    return Path(data_dir) / "wake"


def listen(data_dir, name):
    """Bind and return a non-blocking datagram socket that receives wake-ups."""
    directory = wake_directory(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.sock"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def stop_listening(sock):
    path = sock.getsockname()
    sock.close()
    _remove_quietly(path)


def drain(sock):
    """Discard every pending datagram: one look at the database answers them all."""
    while True:
        try:
            sock.recv(64)
        except BlockingIOError:
            return


def wake_workers(data_dir):
    """Nudge every listening worker. Sockets nobody listens on are stale and removed."""
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
