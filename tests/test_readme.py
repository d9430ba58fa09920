"""The README's wait loop, run exactly as printed, against a live server."""
import re
import shutil
import subprocess

import pytest

from models import Execution
from support import PROJECT, wait_until

WAIT_LOOP = re.search(r"```bash\n(#!/usr/bin/env bash\n.*?)```", (PROJECT / "README.md").read_text(), re.S).group(1)


@pytest.fixture
def wait_loop(tmp_path, start_server, make_key):
    for tool in ("curl", "jq"):
        if not shutil.which(tool):
            pytest.fail(f"the README's wait loop needs {tool} (.ci/run installs it)")
    script = tmp_path / "wait.sh"
    script.write_text(WAIT_LOOP)
    server = start_server(processes=1)
    key = make_key("jobs:execute", "history:read")

    def start(job_id):
        return subprocess.Popen(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "BACKHOOK_URL": server.url,
                                                           "BACKHOOK_KEY": key, "JOB": job_id},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return start


def test_the_wait_loop_exits_0_on_success_with_the_path(wait_loop, make_job, start_worker):
    job = make_job()
    start_worker()
    loop = wait_loop(job.id)
    stdout, stderr = loop.communicate(timeout=60)
    assert loop.returncode == 0 and f"Success: {Execution.get().path}" in stdout, stdout + stderr


def test_the_wait_loop_exits_1_on_failure_with_the_error(wait_loop, make_job, start_worker):
    job = make_job("broken", source="command:echo the disk is on fire >&2; exit 3")
    start_worker()
    loop = wait_loop(job.id)
    stdout, stderr = loop.communicate(timeout=60)
    assert loop.returncode == 1 and "Failed:" in stderr and "the disk is on fire" in stderr, stdout + stderr


def test_the_wait_loop_exits_2_when_the_run_is_cancelled(wait_loop, make_job):
    job = make_job()  # no worker: the run stays Pending until it is cancelled
    loop = wait_loop(job.id)
    pending = wait_until(lambda: Execution.get_or_none(Execution.job == job.id), message="the run to be queued")
    Execution.cancel(pending.id)
    stdout, stderr = loop.communicate(timeout=60)
    assert loop.returncode == 2 and "Cancelled" in stderr, stdout + stderr
