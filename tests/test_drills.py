"""Restore drills end to end: through HTTP and a real worker, for every kind, and after a worker's kill -9."""
import hashlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import zstandard

from models import Execution
from routes.executions import drill_to_api
from sinks import MANIFEST, job_directory
from statuses import ExecutionStatus
from support import mariadb, psql, run_to_end, wait_for_status, wait_until


def drill(client, auth, backup_id):
    response = client.post(f"/api/executions/{backup_id}/restore", headers=auth, json={"target": "scratch"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["executionId"]


def drill_databases(drill_id):
    """Every database on both servers named after this drill execution: its throwaway and staging ones."""
    postgres = psql("test", "-At", "-c", f"SELECT datname FROM pg_database WHERE datname LIKE '%{drill_id}%'")
    maria = mariadb("-N", "-e", f"SHOW DATABASES LIKE '%{drill_id}%'")
    return (postgres + maria).decode().split()


def sqlite_source(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT);"
                     "INSERT INTO note (body) VALUES ('first'), ('second ☃'), (NULL);")
    db.commit()
    db.close()
    return f"sqlite://{path}"


def files_source(tmp_path):
    tree = tmp_path / "site"
    (tree / "uploads").mkdir(parents=True)
    (tree / "index.html").write_text("<h1>hi</h1>\n")
    (tree / "uploads" / "photo.bin").write_bytes(os.urandom(50_000))
    return f"files://{tree}"


def postgresql_source(pg_databases):
    database = pg_databases()
    psql(database, "-c", "CREATE TABLE item (id serial PRIMARY KEY, name text);"
                         "INSERT INTO item (name) SELECT 'item ' || g FROM generate_series(1, 300) g;"
                         "CREATE VIEW first_items AS SELECT * FROM item WHERE id < 10;")
    return f"postgresql://postgres@127.0.0.1:5432/{database}"


def mysql_source(mysql_databases):
    database = mysql_databases()
    mariadb("-e", "CREATE TABLE item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50));"
                  "INSERT INTO item (name) SELECT CONCAT('item ', seq) FROM seq_1_to_300;"
                  "CREATE VIEW first_items AS SELECT * FROM item WHERE id < 10;", database=database)
    return f"mysql://root@127.0.0.1:3306/{database}"


SOURCES = {"sqlite": sqlite_source, "files": files_source, "postgresql": postgresql_source, "mysql": mysql_source}
CHECKED = {  # what each kind's check logs, in part
    "sqlite": '"integrity": "ok"',
    "files": '"files": 2',
    "postgresql": '"public.item": 300',
    "mysql": '"item": 300',
}


@pytest.fixture
def backed_up(request, client, auth, make_job, start_worker, tmp_path):
    """A successful backup of a source of the given kind: (kind, backup execution data, the worker)."""
    kind = request.param
    make = SOURCES[kind]
    argument = request.getfixturevalue({"postgresql": "pg_databases", "mysql": "mysql_databases"}.get(kind, "tmp_path"))
    job = make_job(name=f"drill-{kind}", source=make(argument))
    worker = start_worker()
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Success", data["error"]
    return kind, data, worker


def left_in_job_directory(backup):
    """What the job's directory holds besides the backup's artifact and its manifest."""
    directory = job_directory(Execution.get_by_id(backup["id"]).job)
    artifact = Path(backup["path"]).name
    return sorted(path.name for path in directory.iterdir() if path.name not in (artifact, artifact + MANIFEST))


@pytest.mark.parametrize("backed_up", list(SOURCES), indirect=True)
def test_a_drill_restores_checks_records_and_leaves_nothing_behind(client, auth, backed_up):
    kind, backup, _worker = backed_up
    drill_id = drill(client, auth, backup["id"])
    data = wait_for_status(client, auth, drill_id, timeout=60)

    assert data["status"] == "Success", data["error"]
    assert data["type"] == "Restore"
    messages = "\n".join(entry["message"] for entry in data["logs"])
    assert f"restore drill of backup {backup['id']}" in messages and CHECKED[kind] in messages
    row = Execution.get_by_id(backup["id"])
    assert row.last_drill_status == ExecutionStatus.SUCCESS and row.last_drill_id == drill_id
    assert row.proven_restorable_at >= Execution.get_by_id(drill_id).started_at
    assert drill_to_api(row)["executionId"] == drill_id and drill_to_api(row)["at"].endswith("Z")
    assert listed(client, auth, backup["id"])["lastRestoreDrill"] == drill_to_api(row)
    assert listed(client, auth, drill_id)["lastRestoreDrill"] is None  # a drill is no backup
    assert left_in_job_directory(backup) == [] and drill_databases(drill_id) == []


@pytest.mark.parametrize("backed_up", list(SOURCES), indirect=True)
def test_a_drill_of_a_corrupt_artifact_fails_and_records_the_failure(client, auth, backed_up):
    kind, backup, _worker = backed_up
    proven = wait_for_status(client, auth, drill(client, auth, backup["id"]), timeout=60)
    assert proven["status"] == "Success", proven["error"]
    proven_at = Execution.get_by_id(backup["id"]).proven_restorable_at
    artifact = Path(backup["path"])
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    drill_id = drill(client, auth, backup["id"])
    failed = wait_for_status(client, auth, drill_id, timeout=60)

    assert failed["status"] == "Failed" and "SHA-256" in failed["error"]
    row = Execution.get_by_id(backup["id"])
    assert (row.last_drill_status, row.last_drill_id) == (ExecutionStatus.FAILED, drill_id)
    assert row.proven_restorable_at == proven_at  # when it was last proven restorable, still
    assert drill_to_api(row) == {"executionId": drill_id, "status": "Failed", "at": None}
    assert left_in_job_directory(backup) == [] and drill_databases(drill_id) == []


@pytest.mark.parametrize("backed_up", ["postgresql", "mysql"], indirect=True)
def test_a_drill_whose_dump_fails_to_load_drops_its_database(client, auth, backed_up):
    kind, backup, _worker = backed_up
    # A dump that matches its recorded checksum but fails to load: the tool's failure, not Verifying's.
    artifact = Path(backup["path"])
    broken = zstandard.ZstdCompressor().compress(b"CREATE TABLE broken (;\n")
    artifact.write_bytes(broken)
    Execution.update(sha256=hashlib.sha256(broken).hexdigest(), size=len(broken)).where(
        Execution.id == backup["id"]).execute()

    drill_id = drill(client, auth, backup["id"])
    failed = wait_for_status(client, auth, drill_id, timeout=60)

    assert failed["status"] == "Failed" and ("psql" in failed["error"] or "mariadb" in failed["error"])
    assert Execution.get_by_id(backup["id"]).last_drill_status == ExecutionStatus.FAILED
    assert drill_databases(drill_id) == []


def test_a_command_job_has_no_drill(client, auth, make_job, start_worker):
    job = make_job(name="cmd", source="command:printf hello", restore_command="cat > /dev/null")
    start_worker()
    backup = run_to_end(client, auth, job.id)
    response = client.post(f"/api/executions/{backup['id']}/restore", headers=auth, json={"target": "scratch"})
    assert response.status_code == 409 and "no restore drill" in response.get_json()["error"]
    assert Execution.select().where(Execution.type == "Restore").count() == 0


def test_no_drill_yet_is_null_in_the_history(client, auth, make_job, start_worker):
    job = make_job(name="plain")
    start_worker()
    backup = run_to_end(client, auth, job.id)
    assert drill_to_api(Execution.get_by_id(backup["id"])) is None
    entry = listed(client, auth, backup["id"])
    assert entry["lastRestoreDrill"] is None


def listed(client, auth, execution_id):
    """The execution as the history lists it."""
    response = client.get("/api/executions?limit=1000", headers=auth)
    assert response.status_code == 200, response.get_json()
    (entry,) = [item for item in response.get_json()["data"] if item["id"] == execution_id]
    return entry


def bigger_backup(client, auth, backup):
    """Another backup of the PostgreSQL job, large enough that its restore can be caught while it runs."""
    job = Execution.get_by_id(backup["id"]).job
    psql(job.source.rsplit("/", 1)[1], "-c",
         "INSERT INTO item (name) SELECT 'more ' || g FROM generate_series(1, 200000) g")
    return run_to_end(client, auth, job.id, timeout=60)


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
def test_a_drill_database_left_by_a_killed_worker_is_dropped_by_the_reclaim(client, auth, backed_up, start_worker):
    kind, backup, first_worker = backed_up
    bigger = bigger_backup(client, auth, backup)
    first_worker.stop()
    worker = start_worker(BACKHOOK_LEASE_SECONDS="1")
    drill_id = drill(client, auth, bigger["id"])
    first_attempt = f"backhook_drill_{drill_id}_1"
    wait_until(lambda: first_attempt in drill_databases(drill_id), timeout=30, message="the drill's database")
    os.kill(worker.proc.pid, signal.SIGSTOP)  # frozen mid-drill: it can neither finish nor clean up
    assert first_attempt in drill_databases(drill_id)
    worker.stop(sig=signal.SIGKILL)

    start_worker(BACKHOOK_LEASE_SECONDS="1")
    data = wait_for_status(client, auth, drill_id, timeout=90)

    assert data["status"] == "Success", data["error"]
    assert Execution.get_by_id(drill_id).attempts == 2
    assert "stopped renewing its lease" in "\n".join(entry["message"] for entry in data["logs"])
    # The second attempt drops its own database; the first's goes in the new worker's chores thread, queued
    # by the reclaim (worker.remove_abandoned_targets), so it may outlast the drill's end by a chore or two.
    wait_until(lambda: drill_databases(drill_id) == [], timeout=30, message="the first attempt's database dropped")
    assert Execution.get_by_id(bigger["id"]).last_drill_id == drill_id


def processes_naming(text):
    """The pids of the processes whose command line holds `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return pids


@pytest.mark.parametrize("backed_up", ["postgresql"], indirect=True)
def test_a_cancelled_drill_drops_its_database_and_records_the_cancel(client, auth, backed_up):
    kind, backup, _worker = backed_up
    backup = bigger_backup(client, auth, backup)
    drill_id = drill(client, auth, backup["id"])
    loading = wait_until(lambda: processes_naming(f"backhook_drill_{drill_id}_1"), timeout=30,
                         message="psql to load the drill's database")
    for pid in loading:
        os.kill(pid, signal.SIGSTOP)  # held mid-load: the cancel lands inside the restore, not after it
    response = client.post(f"/api/executions/{drill_id}/cancel", headers=auth)
    assert response.status_code == 200, response.get_json()
    data = wait_for_status(client, auth, drill_id, timeout=30)

    assert data["status"] == "Cancelled"
    assert Execution.get_by_id(backup["id"]).last_drill_status == ExecutionStatus.CANCELLED
    assert Execution.get_by_id(backup["id"]).proven_restorable_at is None
    assert drill_databases(drill_id) == []


@pytest.mark.parametrize("backed_up", ["sqlite"], indirect=True)
def test_backhook_restore_scratch_drills_and_exits_0(runner, backed_up):
    kind, backup, _worker = backed_up
    result = runner("restore", backup["id"], "--scratch")
    assert result.exit_code == 0, result.output
    assert Execution.get_by_id(backup["id"]).last_drill_status == ExecutionStatus.SUCCESS
    assert left_in_job_directory(backup) == []
