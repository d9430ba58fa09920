"""Tool processes: started in a group of their own, waited for, killed with all they started, guarded."""
import os

import pytest

import tools
from sources import BackupError
from support import wait_until
from tools import STDERR_TAIL, ToolGuard, end_tool, start_tool, wait_for_tool


def gone(pid):
    """Whether a process has ended (a zombie awaiting its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def start_with_grandchild():
    """A shell that leads its group, with a `sleep` it started in the background; returns (tool, sleep's pid)."""
    child = start_tool(["sh", "-c", "sleep 300 & echo $!; wait"])
    return child, int(child.stdout.readline())


def test_a_tool_leads_its_own_process_group():
    child, grandchild = start_with_grandchild()
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgrp()
        assert os.getpgid(grandchild) == child.pid
    finally:
        end_tool(child)


def test_ending_a_tool_kills_everything_it_started_and_closes_its_pipes():
    child, grandchild = start_with_grandchild()
    end_tool(child)
    assert child.returncode is not None
    wait_until(lambda: gone(grandchild), timeout=5, message="the tool's background sleep to be killed")
    assert child.stdout.closed and child.stderr_file.closed


def test_waiting_for_a_tool_gives_its_exit_status_and_the_tail_of_its_stderr():
    child = start_tool(["sh", "-c", f"head -c {3 * STDERR_TAIL} /dev/zero | tr '\\0' a >&2; echo end >&2; exit 3"])
    child.stdout.close()
    status, stderr = wait_for_tool(child)
    assert status == 3
    assert stderr.endswith("end") and len(stderr) <= STDERR_TAIL


def test_a_tool_that_is_not_installed_is_a_backup_error():
    with pytest.raises(BackupError, match="no-such-tool-here is not installed"):
        start_tool(["no-such-tool-here"])


def test_the_guardian_kills_the_groups_still_registered_when_its_process_goes():
    """The guardian sees EOF when the pipe's write end closes, as it does when the worker dies."""
    guard = ToolGuard()
    child, grandchild = start_with_grandchild()
    tools.TOOLS.release(child.pid)  # guarded by this guard only
    try:
        guard.watch(child.pid)
        os.close(guard.pipe)
        guard.pipe = None
        guard.guardian.wait(timeout=10)
        wait_until(lambda: gone(grandchild), timeout=5, message="the guardian to kill the group")
        child.wait(timeout=5)
    finally:
        end_tool(child)


def test_the_guardian_leaves_a_released_group_alone():
    guard = ToolGuard()
    child, grandchild = start_with_grandchild()
    try:
        guard.watch(child.pid)
        guard.release(child.pid)
        os.close(guard.pipe)
        guard.pipe = None
        guard.guardian.wait(timeout=10)  # it kills before it exits, so what it left alive stays alive
        assert not gone(grandchild) and child.poll() is None
    finally:
        end_tool(child)
