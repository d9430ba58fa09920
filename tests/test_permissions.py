"""Every file backhook creates is its owner's alone: the database holds source passwords."""
import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from models import Execution
from sinks import manifest_location
from support import PROJECT, TOKEN, free_port, hold_write_lock, wait_until


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def backhook(*args, env):
    done = subprocess.run([sys.executable, str(PROJECT / "cli.py"), *map(str, args)], env=env, cwd="/",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_private(directory):
    """The directory and everything in it is readable by its owner only."""
    for path in [directory, *directory.rglob("*")]:
        assert mode(path) & 0o077 == 0, f"{path} has mode {mode(path):04o}"


@pytest.mark.sqlite_only("the modes of the SQLite database file")
def test_init_creates_the_data_directory_0700_and_the_database_0600(backhook_env, tmp_path):
    data_dir = tmp_path / "new" / "var"
    env = {key: value for key, value in backhook_env.items() if key != "BACKHOOK_DATABASE_URL"}
    backhook("init", env={**env, "BACKHOOK_DATA_DIR": str(data_dir)})
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "backhook.db") == 0o600
    assert_private(data_dir)


def test_a_real_backup_and_a_spooled_webhook_leave_only_private_files(backhook_env, backend, tmp_path):
    """`backhook run` on a new data directory, a key, a job, a trigger over HTTP, a webhook spooled."""
    data_dir = tmp_path / "new" / "var"
    env = {**backhook_env, "BACKHOOK_DATA_DIR": str(data_dir), "BACKHOOK_RATELIMIT_ENABLED": "true",
           "BACKHOOK_DATABASE_BUSY_SECONDS": "0.5"}
    if backend == "sqlite":
        env["BACKHOOK_DATABASE_URL"] = f"sqlite:///{data_dir}/backhook.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "run.log", "w") as log:
        both = subprocess.Popen([sys.executable, str(PROJECT / "cli.py"), "run", "--bind", f"127.0.0.1:{port}",
                                 "--processes", "2"], env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def live():
            assert both.poll() is None, (tmp_path / "run.log").read_text()
            try:
                return requests.get(url + "/livez", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):  # booting, or a loaded machine
                return False

        wait_until(live, timeout=30, message="backhook run to serve")
        key = backhook("keys", "create", "ci", "-p", "jobs:execute", "-p", "history:read", env=env).splitlines()[-1]
        source = tmp_path / "source"
        source.mkdir()
        (source / "secret.txt").write_text("a password\n")
        job_id = backhook("jobs", "add", "private", "--source", f"files://{source}",
                          "--destination", tmp_path / "backups", env=env).splitlines()[-1]
        backhook("websites", "add", "example.com", env=env)
        auth = {"Authorization": f"Bearer {key}"}
        execution_id = requests.post(f"{url}/api/jobs/{job_id}/run", headers=auth, timeout=10).json()["executionId"]

        def finished():
            data = requests.get(f"{url}/api/executions/{execution_id}", headers=auth, timeout=10).json()["data"]
            return data["status"] in ("Success", "Failed", "Cancelled") and data

        done = wait_until(finished, timeout=60, message="the backup to end")
        assert done["status"] == "Success", done

        holder = hold_write_lock(env["BACKHOOK_DATABASE_URL"], 30)
        try:
            answer = requests.post(f"{url}/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                                   json={"domain": "example.com", "backup_id": "b1", "progress": 5}, timeout=10)
            assert answer.status_code == 200, answer.text
            spooled = list(data_dir.glob("webhook-spool*"))
            assert spooled, sorted(path.name for path in data_dir.iterdir())
            expected = {"ratelimit.db"} | ({"backhook.db", "backhook.db-wal", "backhook.db-shm"}
                                           if backend == "sqlite" else set())
            assert expected <= {path.name for path in data_dir.iterdir()}
            assert_private(data_dir)
        finally:
            holder.kill()
            holder.wait()
    finally:
        both.terminate()
        both.wait(30)
    assert mode(done["path"]) == 0o600
    assert_private(tmp_path / "backups")


def test_artifacts_are_0640_and_the_configured_groups(runner, make_job, start_worker, tmp_path):
    group = next(entry for entry in grp.getgrall() if entry.gr_gid != os.getgid())
    start_worker(BACKHOOK_ARTIFACT_GROUP=group.gr_name)
    make_job()
    assert runner("jobs", "run", "nightly", "--wait").exit_code == 0
    artifact = Path(Execution.get().path)
    assert (mode(artifact), os.stat(artifact).st_gid) == (0o640, group.gr_gid)
    manifest = Path(manifest_location(str(artifact)))
    assert (mode(manifest), os.stat(manifest).st_gid) == (0o640, group.gr_gid)
    assert (mode(artifact.parent), os.stat(artifact.parent).st_gid) == (0o750, group.gr_gid)
