"""Helpers the tests share that are not fixtures."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TOKEN = "test-webhook-token"
# CI sets this so that a missing service fails the run instead of skipping tests.
REQUIRE_SERVICES = os.environ.get("BACKHOOK_REQUIRE_SERVICES") == "1"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def require_service(name, host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        message = f"{name} is not reachable on {host}:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_write_lock(database_path, seconds):
    """Another process holding the SQLite write lock for `seconds`; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(database_path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


class LiveProcess:
    """A backhook process (gunicorn or worker) started for one test."""

    def __init__(self, command, env, url=None, preexec_fn=None):
        self.url = url
        self.log = open(Path(env["BACKHOOK_DATA_DIR"]) / f"process-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=preexec_fn)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=15, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


FINISHED = ("Success", "Failed", "Cancelled")


def trigger(client, auth, job_id):
    response = client.post(f"/api/jobs/{job_id}/run", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["executionId"]


def poll(client, auth, execution_id, logs=False):
    response = client.get(f"/api/executions/{execution_id}" + ("?includeLogs=true" if logs else ""),
                          headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def wait_for_status(client, auth, execution_id, statuses=FINISHED, timeout=30):
    """Poll the API, as a client would, until the execution reaches one of `statuses`."""
    return wait_until(lambda: (data := poll(client, auth, execution_id, logs=True))["status"] in statuses
                      and data, timeout=timeout, message=f"execution {execution_id} to reach {statuses}")


def run_to_end(client, auth, job_id, timeout=30):
    return wait_for_status(client, auth, trigger(client, auth, job_id), timeout=timeout)
