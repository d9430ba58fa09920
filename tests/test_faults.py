"""Fault injection: each fault ends in a clear error state, and nothing is lost.

Faults the worker and webhook suites already inject are not repeated here:
one kill -9 and its reclaim, SIGTERM to a worker inside and past its grace
period, pg_dump missing from PATH (test_worker.py); a full tmpfs, a missing
SQLite or PostgreSQL source database, bad MySQL credentials (test_backups.py);
webhooks while the database is locked (test_webhooks.py); each WPSec client
fault on its own (test_wpsec.py); SIGTERM to an idle `backhook run`
(test_processes.py).
"""
import contextlib
import hashlib
import io
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psycopg2
import pytest
import requests
import zstandard

import models
import wpsec
from models import Execution, Job, Website
from sinks import job_directory
from support import (MARIADB, PG, TOKEN, LiveProcess, free_port, hold_write_lock, lock_waiters, mariadb, poll, psql,
                     trigger, unique_name, wait_for_status, wait_until)
from test_wpsec import SITE_KEY, StandInSite

SEED = 20261122


def random_directory(path, size, seed=SEED):
    """A directory holding one incompressible file, so its backup takes measurable time."""
    path.mkdir()
    (path / "blob").write_bytes(random.Random(seed).randbytes(size))
    return path


def assert_artifact_holds(data, source_dir):
    """The reported artifact exists, matches its size and checksum, and restores the source."""
    artifact = Path(data["path"])
    raw = artifact.read_bytes()
    assert len(raw) == data["size"]
    assert hashlib.sha256(raw).hexdigest() == Execution.get_by_id(data["id"]).sha256
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(raw))) as tar:
        assert tar.extractfile("./blob").read() == (source_dir / "blob").read_bytes()


def leftovers(job, reported):
    """Files in the job's directory that no successful execution reports: partials, orphans."""
    directory = job_directory(job)
    present = {str(path) for path in directory.iterdir()} if directory.exists() else set()
    return present - set(reported)


# --- kill -9 at random points ---------------------------------------------------------

KILLS = 20


def running_claims(excluding=()):
    """Running executions whose worker is not one of `excluding`."""
    return [execution for execution in Execution.select().where(Execution.status == "Running")
            if execution.worker_id not in excluding]


def test_kill_9_at_random_points_of_backups_loses_nothing(client, auth, make_job, start_worker, tmp_path):
    source = random_directory(tmp_path / "source", 8 * 1024 * 1024)
    job = make_job(name="victim", source=f"files://{source}")
    # One undisturbed backup says how long one takes on this machine: the kills land within that.
    undisturbed = start_worker()
    baseline = wait_for_status(client, auth, trigger(client, auth, job.id))
    undisturbed.stop()
    assert baseline["status"] == "Success", baseline["error"]
    window = Execution.get_by_id(baseline["id"]).duration() / 1000

    ids = [trigger(client, auth, job.id) for _ in range(KILLS)]
    rng = random.Random(SEED)
    dead, kills_inside_a_backup = set(), 0
    for _ in range(KILLS):
        worker = start_worker(BACKHOOK_LEASE_SECONDS="1")
        wait_until(lambda: running_claims(excluding=dead)
                   or not Execution.select().where(Execution.status.in_(["Pending", "Running"])).exists(),
                   timeout=20, message="the new worker to claim an execution")
        time.sleep(rng.uniform(0, window))  # the random point of the kill is the fault itself
        kills_inside_a_backup += bool(running_claims(excluding=dead))
        worker.stop(sig=signal.SIGKILL)
        dead |= {execution.worker_id for execution in running_claims()}

    start_worker(BACKHOOK_LEASE_SECONDS="1")
    results = [wait_for_status(client, auth, execution_id, timeout=60) for execution_id in ids]

    assert kills_inside_a_backup >= KILLS // 2, "most kills should land inside a backup"
    reported = []
    for data in results:
        assert 1 <= Execution.get_by_id(data["id"]).attempts <= 2
        if data["status"] == "Success":
            assert_artifact_holds(data, source)
            reported.append(data["path"])
        else:
            assert data["status"] == "Failed", data
            assert "stopped renewing its lease" in data["error"] and "no attempts left" in data["error"]
    assert leftovers(job, reported + [baseline["path"]]) == set()


def test_an_artifact_renamed_into_place_by_a_worker_that_died_is_removed_on_reclaim(
        client, auth, make_job, start_worker, tmp_path):
    job = make_job(name="died-late", source="command:echo payload")
    execution_id = trigger(client, auth, job.id)
    # As a worker killed after the rename but before recording success leaves it.
    Execution.update(status="Running", attempts=1, worker_id="dead", lease_expires_at=models.now_ms() - 1).where(
        Execution.id == execution_id).execute()
    job_directory(job).mkdir(parents=True)
    unrecorded = job_directory(job) / f"20261122T000000Z-{execution_id}.out.zst"
    unrecorded.write_bytes(b"complete but never reported")

    start_worker()
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success"
    assert not unrecorded.exists()
    assert leftovers(job, [data["path"]]) == set()


# --- SIGTERM to `backhook run` during a backup ------------------------------------------

def start_backhook_run(env):
    """`backhook run`: gunicorn and a worker under one parent, as a person starts them."""
    port = free_port()
    both = LiveProcess([sys.executable, "-m", "cli", "run", "--bind", f"127.0.0.1:{port}", "--processes", "2"],
                       env, url=f"http://127.0.0.1:{port}")
    both.wait_until_answering()
    return both


def test_sigterm_to_backhook_run_requeues_the_backup_and_a_restart_finishes_it(
        backhook_env, client, auth, make_job, start_worker, tmp_path):
    first_try = tmp_path / "first-try"
    job = make_job(name="long", source=f"command:if [ -e {first_try} ]; then echo done; "
                                       f"else touch {first_try}; sleep 30; fi")
    both = start_backhook_run({**backhook_env, "BACKHOOK_WORKER_GRACE_SECONDS": "0.5"})
    response = requests.post(f"{both.url}/api/jobs/{job.id}/run", headers=auth, timeout=10)
    execution_id = response.json()["executionId"]
    wait_until(lambda: any(name.endswith(".partial") for name in leftovers(job, [])),
               message="the backup to be writing")

    both.proc.send_signal(signal.SIGTERM)
    assert both.proc.wait(timeout=30) == 0, both.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(both.url + "/livez", timeout=1)
    execution = Execution.get_by_id(execution_id)
    assert (execution.status, execution.attempts) == ("Pending", 0)
    assert leftovers(job, []) == set()

    start_worker()
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success"
    assert leftovers(job, [data["path"]]) == set()


# --- destination out of space -------------------------------------------------------------

def file_size_limit(limit):
    """For preexec_fn: files the process writes cannot grow past `limit` bytes (EFBIG, as a full disk)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_destination_out_of_space_fails_clearly_and_the_worker_carries_on(
        client, auth, make_job, start_worker, tmp_path):
    big = make_job(name="big", source=f"files://{random_directory(tmp_path / 'big', 16 * 1024 * 1024)}")
    small_source = random_directory(tmp_path / "small", 64 * 1024)
    small = make_job(name="small", source=f"files://{small_source}")
    worker = start_worker(preexec_fn=file_size_limit(8 * 1024 * 1024))

    failed = wait_for_status(client, auth, trigger(client, auth, big.id))
    assert failed["status"] == "Failed"
    assert "File too large" in failed["error"], failed["error"]
    assert failed["path"] is None and failed["size"] is None
    assert leftovers(big, []) == set()

    succeeded = wait_for_status(client, auth, trigger(client, auth, small.id))
    assert succeeded["status"] == "Success", succeeded["error"]
    assert_artifact_holds(succeeded, small_source)
    assert worker.proc.poll() is None


# --- the database locked by another process -------------------------------------------------

def test_database_locked_past_the_busy_timeout_during_a_backup_loses_nothing(
        client, auth, make_job, start_worker, database_url, tmp_path):
    job = make_job(name="locked", source="command:echo started; sleep 1; echo finished")
    worker = start_worker(BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    execution_id = trigger(client, auth, job.id)
    wait_for_status(client, auth, execution_id, statuses=("Running",))
    holder = hold_write_lock(database_url, 3)  # across the backup's end and final write
    assert holder.wait(timeout=30) == 0

    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success", data["error"]
    assert Execution.get_by_id(execution_id).attempts == 1  # the lock cost no attempt
    assert data["progress"] == 100 and Path(data["path"]).read_bytes()
    assert worker.proc.poll() is None, worker.output()
    assert leftovers(job, [data["path"]]) == set()


def gated_job(make_job, tmp_path, name, **fields):
    """A `command:` job whose run prints nothing until the test creates its `go` file."""
    go = tmp_path / f"go-{name}"
    job = make_job(name=name, source=f"command:while [ ! -e {go} ]; do sleep 0.05; done; echo payload", **fields)
    return job, go


def assert_every_row_names_an_existing_file(job):
    for execution in Execution.select().where((Execution.job == job.id) & Execution.path.is_null(False)):
        assert Path(execution.path).exists(), f"execution {execution.id} names the missing {execution.path}"


def test_a_database_locked_past_the_busy_timeout_during_a_keep_1_run_keeps_the_new_backup(
        client, auth, make_job, start_worker, database_url, tmp_path):
    job, go = gated_job(make_job, tmp_path, "keep-one", keep=1)
    worker = start_worker(BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    go.touch()
    previous = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert previous["status"] == "Success", previous["error"]
    go.unlink()
    execution_id = trigger(client, auth, job.id)
    wait_for_status(client, auth, execution_id, statuses=("Running",))
    holder = hold_write_lock(database_url, 3)  # across the run's end, its success and its retention
    go.touch()
    assert holder.wait(timeout=30) == 0

    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success", data["error"]
    assert Execution.get_by_id(execution_id).attempts == 1
    assert_artifact_is_the_one_recorded(data)
    assert Execution.get_by_id(previous["id"]).path is None and not Path(previous["path"]).exists()
    assert_every_row_names_an_existing_file(job)
    assert leftovers(job, [data["path"]]) == set()
    assert worker.proc.poll() is None, worker.output()


def assert_artifact_is_the_one_recorded(data):
    raw = Path(data["path"]).read_bytes()
    assert len(raw) == data["size"]
    assert hashlib.sha256(raw).hexdigest() == Execution.get_by_id(data["id"]).sha256


# --- retention meeting faults -----------------------------------------------------------------

@contextlib.contextmanager
def undeletable(directory):
    """No file in `directory` can be deleted while the block runs, whoever asks (root included)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this file system")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


def test_an_old_artifact_that_cannot_be_deleted_leaves_the_backup_successful_and_stays_recorded(
        client, auth, make_job, start_worker, tmp_path):
    job = make_job(name="moved", source="command:echo payload", keep=1, destination=str(tmp_path / "old-disk"))
    start_worker()
    old = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert old["status"] == "Success", old["error"]
    Job.update(destination=str(tmp_path / "new-disk")).where(Job.id == job.id).execute()  # the job moved

    with undeletable(Path(old["path"]).parent):
        data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert (data["status"], data["stage"], data["progress"]) == ("Success", "Completed", 100), data["error"]
    assert_artifact_is_the_one_recorded(data)
    assert Execution.get_by_id(old["id"]).path == old["path"] and Path(old["path"]).exists()
    problem = Execution.get_by_id(data["id"]).retention_error
    assert old["path"] in problem and "Operation not permitted" in problem
    assert any(line["level"] == "error" and old["path"] in line["message"] for line in data["logs"])

    newest = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert newest["status"] == "Success" and Execution.get_by_id(newest["id"]).retention_error is None
    assert not Path(old["path"]).exists() and not Path(data["path"]).exists()  # pruned by the next run
    assert_every_row_names_an_existing_file(job)


@contextlib.contextmanager
def row_locked(database_url, execution_id):
    """Another session holding the execution's row lock, so that a write to that row waits."""
    holder = psycopg2.connect(database_url)
    holder.cursor().execute("SELECT 1 FROM execution WHERE id = %s FOR UPDATE", (execution_id,))
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.postgresql_only("a row lock holds retention at a known point; SQLite has one lock for everything")
@pytest.mark.parametrize("fault", ["kill -9", "cancel"])
def test_a_fault_during_pruning_keeps_the_last_good_backup_and_every_row_names_a_file(
        client, auth, make_job, start_worker, database_url, fault):
    job = make_job(name="pruned", source="command:echo payload", keep=1)
    worker = start_worker(BACKHOOK_LEASE_SECONDS="1")
    old = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert old["status"] == "Success", old["error"]

    with row_locked(database_url, old["id"]):
        execution_id = trigger(client, auth, job.id)
        wait_until(lambda: lock_waiters(database_url), message="retention to wait for the old execution's row")
        pruning = poll(client, auth, execution_id)
        assert (pruning["status"], pruning["stage"]) == ("Success", "Applying Retention")
        if fault == "kill -9":
            worker.stop(sig=signal.SIGKILL)
            assert_every_row_names_an_existing_file(job)
        else:
            response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
            assert response.status_code == 409  # the backup is already recorded
    if fault == "kill -9":
        start_worker(BACKHOOK_LEASE_SECONDS="1")  # reclaims the lapsed lease and completes the execution
    data = wait_until(lambda: (data := poll(client, auth, execution_id, logs=True))["stage"] == "Completed" and data,
                      timeout=30, message="the execution to be completed")

    assert (data["status"], data["progress"]) == ("Success", 100)
    assert_artifact_is_the_one_recorded(data)
    assert_every_row_names_an_existing_file(job)
    named = [e.path for e in Execution.select().where((Execution.job == job.id) & Execution.path.is_null(False))]
    assert leftovers(job, named) == set()
    if fault == "kill -9":
        assert "stopped renewing its lease while applying retention" in Execution.get_by_id(execution_id).retention_error
    else:
        assert named == [data["path"]]


# --- a source database that does not exist --------------------------------------------------

@pytest.fixture
def missing_mysql_database(mysql_url):
    return f"mysql://root@127.0.0.1:3306/{unique_name()}"


def test_a_mysql_source_database_that_does_not_exist_fails_with_the_tools_error(
        client, auth, make_job, start_worker, missing_mysql_database):
    job = make_job(name="gone", source=missing_mysql_database)
    start_worker()
    data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert data["status"] == "Failed"
    assert "Unknown database" in data["error"] and missing_mysql_database.rsplit("/", 1)[1] in data["error"]
    assert leftovers(job, []) == set()


def test_a_files_source_that_does_not_exist_fails_clearly(client, auth, make_job, start_worker, tmp_path):
    job = make_job(name="nowhere", source=f"files://{tmp_path / 'nowhere'}")
    start_worker()
    data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert data["status"] == "Failed"
    assert str(tmp_path / "nowhere") in data["error"] and "does not exist" in data["error"]


# --- credentials never in ps, logs, errors or API output while a dump runs -------------------

PASSWORD = "Pr0cSecret-x7Q9"


def command_lines():
    """Every process's command line, as `ps` would show it."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass  # gone meanwhile
    return lines


def assert_password_nowhere(client, auth, execution_id, worker):
    assert PASSWORD not in " ".join(command_lines())
    assert PASSWORD not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert PASSWORD not in worker.output()
    assert PASSWORD not in str(poll(client, auth, execution_id, logs=True))
    assert PASSWORD not in client.get("/api/jobs", headers=auth).get_data(as_text=True)


@contextlib.contextmanager
def session_holding_a_lock(command, statements):
    """A database client session that takes a lock, says `locked`, and holds it until the block ends."""
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdin.write(statements)
        holder.stdin.flush()
        assert "locked" in holder.stdout.readline()
        yield
    finally:
        holder.kill()
        holder.communicate()


def dump_blocked_by(lock, dump_tool, client, auth, job, start_worker):
    """Run `job` while `lock` keeps its table locked; check every output mid-dump and after."""
    worker = start_worker()
    with lock:
        execution_id = trigger(client, auth, job.id)
        wait_until(lambda: any(Path(word).name == dump_tool
                               for line in command_lines() for word in line.split()[:2]),
                   message=f"{dump_tool} to run")
        assert poll(client, auth, execution_id)["status"] == "Running"
        assert_password_nowhere(client, auth, execution_id, worker)
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success", data["error"]
    assert_password_nowhere(client, auth, execution_id, worker)


@contextlib.contextmanager
def postgresql_table_to_lock():
    """A scratch PostgreSQL database with one table; yields (its name, a session that locks the table)."""
    database = unique_name()
    psql_admin = ["psql", *PG, "-v", "ON_ERROR_STOP=1", "-q"]
    subprocess.run([*psql_admin, "-d", "test", "-c", f"CREATE DATABASE {database}"], check=True)
    try:
        psql(database, "-c", "CREATE TABLE item (id int)")
        yield database, session_holding_a_lock([*psql_admin, "-d", database],
                                               "BEGIN; LOCK TABLE item IN ACCESS EXCLUSIVE MODE;\n\\echo locked\n")
    finally:
        subprocess.run([*psql_admin, "-d", "test", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"])


def test_postgresql_password_never_shows_while_pg_dump_runs(client, auth, make_job, start_worker, postgres_url):
    with postgresql_table_to_lock() as (database, lock):
        job = make_job(name="pg", source=f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{database}")
        dump_blocked_by(lock, "pg_dump", client, auth, job, start_worker)


def test_mysql_password_never_shows_while_the_dump_runs(client, auth, make_job, start_worker, mysql_url):
    database, user = unique_name(), unique_name()
    mariadb("-e", f"CREATE DATABASE {database}; CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}';"
                  f"GRANT ALL ON {database}.* TO '{user}'@'%';")
    try:
        mariadb("-e", "CREATE TABLE item (id INT) ENGINE=InnoDB; INSERT INTO item VALUES (1);", database=database)
        lock = session_holding_a_lock(["mariadb", *MARIADB, "--unbuffered", "--batch", "--skip-column-names",
                                       database], "LOCK TABLES item WRITE; SELECT 'locked';\n")
        job = make_job(name="maria", source=f"mysql://{user}:{PASSWORD}@127.0.0.1:3306/{database}")
        tool = "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"
        dump_blocked_by(lock, tool, client, auth, job, start_worker)
    finally:
        mariadb("-e", f"DROP DATABASE IF EXISTS {database}; DROP USER IF EXISTS '{user}'@'%';")


# --- no tool outlives its worker -------------------------------------------------------------

def alive(pid):
    """Whether `pid` runs; a zombie no longer does (nobody may be left to reap it in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def pids_of(tool, argument):
    """The processes running `tool` with `argument` in one of their arguments (pg_dump gets it inside a URI)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        named = Path(words[0].decode(errors="replace")).name == tool
        if named and any(argument.encode() in word for word in words[1:]):
            found.append(int(cmdline.parent.name))
    return found


def test_kill_9_of_the_worker_kills_a_pg_dump_blocked_on_a_lock(client, auth, make_job, start_worker, postgres_url):
    with postgresql_table_to_lock() as (database, lock):
        job = make_job(name="pg", source=f"postgresql://postgres@127.0.0.1:5432/{database}")
        worker = start_worker()
        with lock:
            trigger(client, auth, job.id)
            pg_dump = wait_until(lambda: pids_of("pg_dump", database), message="pg_dump to wait for the lock")
            worker.stop(sig=signal.SIGKILL)
            wait_until(lambda: not any(alive(pid) for pid in pg_dump), timeout=5,
                       message="pg_dump to die with its worker")


def test_kill_9_of_the_worker_kills_what_a_command_started(client, auth, make_job, start_worker, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    job = make_job(name="cmd", source=f"command:echo started; sh -c 'echo $$ > {pid_file}; exec sleep 1000'; echo done")
    worker = start_worker()
    trigger(client, auth, job.id)
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), message="the command's child to run")
    grandchild = int(pid_file.read_text())
    try:
        worker.stop(sig=signal.SIGKILL)
        wait_until(lambda: not alive(grandchild), timeout=5, message="the command's child to die with its worker")
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


# --- WPSec unreachable, slow, answering 5xx or malformed JSON -------------------------------

WPSEC_FAULTS = {
    "unreachable": [],
    "slow": [("slow", 5.0)] * 4,
    "5xx": [("status", 502)] * 4,
    "malformed": [("malformed",)] * 4,
}


@pytest.fixture
def stand_in():
    site = StandInSite()
    yield site
    site.stop()


@pytest.mark.parametrize("fault", sorted(WPSEC_FAULTS))
def test_wpsec_fault_after_a_complete_webhook_loses_nothing(app, start_server, stand_in, monkeypatch, fault):
    monkeypatch.setattr(wpsec, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(wpsec, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(wpsec, "BACKOFF_FACTOR", 0.01)
    wpsec._sync_failures.clear()
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with models.database.atomic():
        site = Website.create(domain="example.com", wpsec_api_key=SITE_KEY, remote_backups='[{"id": "old"}]',
                              wpsec_url=down if fault == "unreachable" else stand_in.url + "/")
    stand_in.faults = list(WPSEC_FAULTS[fault])
    server = start_server(processes=2)

    response = requests.post(server.url + "/webhooks/backup-complete", headers={"x-wpfort-token": TOKEN},
                             json={"domain": "example.com", "backup_id": "wp-1"}, timeout=10)
    assert response.status_code == 200 and response.json() == {"success": True}
    assert stand_in.requests == []  # the webhook did not wait on WPSec

    assert wpsec.sync_requested_websites() == 0
    kept = Website.get_by_id(site.id)
    assert kept.sync_requested_at is not None and kept.remote_backups == '[{"id": "old"}]'
    backup = models.Backup.get()
    assert (backup.status, backup.progress) == ("completed", 100)

    stand_in.faults = []
    Website.update(wpsec_url=stand_in.url + "/").execute()
    wpsec._sync_failures.clear()  # as if its backoff had passed
    assert wpsec.sync_requested_websites() == 1
    assert Website.get_by_id(site.id).sync_requested_at is None


@pytest.mark.parametrize("fault", ["unreachable", "5xx", "malformed"])
def test_wpsec_fault_when_starting_a_site_backup_fails_the_execution_clearly(
        client, auth, make_job, start_worker, stand_in, fault):
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with models.database.atomic():
        Website.create(domain="example.com", wpsec_api_key=SITE_KEY,
                       wpsec_url=down if fault == "unreachable" else stand_in.url + "/")
    stand_in.faults = list(WPSEC_FAULTS[fault])
    job = make_job(name="site", source="wpsec://example.com")
    worker = start_worker()

    data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert data["status"] == "Failed" and data["stage"] == "Failed"
    assert "backup/start" in data["error"]
    assert SITE_KEY not in str(data) and SITE_KEY not in worker.output()
    assert stand_in.routes() == ([] if fault == "unreachable" else ["backup/start"])  # a start is never retried
