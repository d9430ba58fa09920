"""The tools a backup runs (pg_dump, tar, a command's shell): started, waited for, killed, and guarded.

Each tool leads a process group of its own, so that killing the group ends
whatever it started too, and the guardian (ToolGuard) kills every group
still running when the worker dies, however it dies.
"""
import fcntl
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading

from sources import CHUNK, BackupError

log = logging.getLogger("backhook.backup")

STDERR_TAIL = 4000  # characters of a tool's stderr kept for the error message


def start_tool(argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
    """Start a tool in its own process group, guarded, stderr kept in a file (`stderr_file`).

    A backup's tool writes to a pipe (`stdout`) and reads nothing; a restore's
    reads a pipe (`stdin=subprocess.PIPE`) and its chatter goes nowhere.
    """
    stderr = tempfile.TemporaryFile()
    try:
        child = subprocess.Popen(argv, stdin=stdin, stdout=stdout,
                                 stderr=stderr, env={**os.environ, **(env or {})},
                                 start_new_session=True)
    except FileNotFoundError:
        stderr.close()
        raise BackupError(f"{argv[0]} is not installed (not found on PATH)") from None
    child.stderr_file = stderr
    TOOLS.watch(child.pid)
    for pipe in (child.stdout, child.stdin):
        if pipe is None:
            continue
        try:
            # A pipe larger than the default 64 KiB lets the tool run on while
            # the attempt's thread (de)compresses the next chunk.
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass  # above the system's pipe-max-size: the default still works
    return child


def wait_for_tool(child):
    """Wait for a tool to exit; returns (exit status, the tail of its stderr)."""
    status = child.wait()
    TOOLS.release(child.pid)
    with child.stderr_file as stream:
        # Only the tail: a chatty tool's stderr can be larger than memory.
        stream.seek(max(0, stream.seek(0, os.SEEK_END) - STDERR_TAIL))
        stderr = stream.read().decode(errors="replace").strip()
    return status, stderr


def end_tool(child):
    """Kill a tool and its group, reap it and close its pipes."""
    kill_group(child)
    child.wait()
    TOOLS.release(child.pid)
    for pipe in (child.stdout, child.stdin):
        if pipe:
            try:
                pipe.close()
            except OSError:
                pass  # a broken pipe to a killed tool
    if not child.stderr_file.closed:
        child.stderr_file.close()


def kill_group(child):
    """Kill a tool and everything it started (it leads its own process group)."""
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# The guardian: `python -I -c GUARDIAN <fd>` reads "+group" and "-group" lines
# from its pipe until EOF, then kills every process group still registered.
GUARDIAN = r"""
import os, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)  # it ends when its worker does, never before
fd, groups, pending = int(sys.argv[1]), set(), b""
while chunk := os.read(fd, 65536):
    *lines, pending = (pending + chunk).split(b"\n")
    for line in lines:
        (groups.add if line.startswith(b"+") else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class ToolGuard:
    """Ties every tool's lifetime to this process: when it dies, however it dies, its tools die too.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that forked the child
    exits, and each attempt spawns from a thread of its own; and it reaches
    only the direct child, never what a `command:` job's shell started. A
    guardian process holds the read end of a pipe whose write end only this
    process holds (close-on-exec, so no tool inherits it); the kernel closes
    it when this process dies, kill -9 included, and the guardian, reading
    EOF, kills the process groups still registered (issue 18).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.groups, self.guardian, self.pipe = set(), None, None

    def watch(self, group):
        self.send(f"+{group}\n", group, self.groups.add)

    def release(self, group):
        self.send(f"-{group}\n", group, self.groups.discard)

    def send(self, line, group, change):
        with self.lock:
            change(group)
            try:
                if self.guardian is None or self.guardian.poll() is not None:
                    self.start_guardian()  # writes every registered group, this one included
                else:
                    os.write(self.pipe, line.encode())  # under PIPE_BUF: one atomic write
            except OSError as exc:  # a dead guardian: the next call starts another
                log.error("tool guardian unavailable, %s is unguarded for now: %s", group, exc)

    def start_guardian(self):
        if self.pipe is not None:
            os.close(self.pipe)
        read_end, self.pipe = os.pipe()
        try:
            self.guardian = subprocess.Popen([sys.executable, "-I", "-c", GUARDIAN, str(read_end)],
                                             pass_fds=(read_end,), stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        finally:
            os.close(read_end)
        os.write(self.pipe, "".join(f"+{group}\n" for group in self.groups).encode())


TOOLS = ToolGuard()
