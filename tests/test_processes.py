"""`backhook serve` and `backhook run` as an operator starts them: real processes on loopback."""
import signal
import sys

import requests

from support import LiveProcess, free_port, wait_until


def answers(url):
    try:
        return requests.get(url + "/livez", timeout=2).ok
    except requests.RequestException:  # still booting, or a loaded machine
        return False


def child_pids(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def start_answering(command, env):
    """`backhook serve` or `run` on a free port, once it answers."""
    port = free_port()
    process = LiveProcess([sys.executable, "-m", "cli", command, "--bind", f"127.0.0.1:{port}",
                           "--processes", "2"], env)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}"), timeout=20, message=f"{command} to answer")
    except AssertionError:
        process.stop()
        raise
    return process


def test_serve_binds_where_asked(backhook_env):
    server = start_answering("serve", backhook_env)
    server.stop()
    assert server.proc.returncode == 0


def test_run_starts_web_and_worker_and_sigterm_stops_both(backhook_env):
    run = start_answering("run", backhook_env)
    try:
        children = child_pids(run.proc.pid)
        assert len(children) == 2  # gunicorn's master and the worker
        assert "keys create" in run.output()  # next steps for a newcomer on an empty database
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
        for pid in children:
            wait_until(lambda: not_running(pid), timeout=10, message=f"child {pid} to exit")
    finally:
        run.stop()


def not_running(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
