"""The trigger-and-poll contract of openapi.yaml, field by field."""
import re

import pytest
from peewee import SqliteDatabase

import models
import test_sources
from models import Execution, ExecutionLog, WorkerHeartbeat

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EXECUTION_FIELDS = ["id", "jobId", "jobName", "type", "status", "progress", "stage", "startedAt",
                    "endedAt", "duration", "size", "path", "error"]


def trigger(client, auth, job_id):
    return client.post(f"/api/jobs/{job_id}/run", headers=auth)


def test_run_answers_success_and_an_execution_id(client, auth, make_job):
    job = make_job()
    response = trigger(client, auth, job.id)
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True and isinstance(body["executionId"], str)
    assert Execution.get_by_id(body["executionId"]).status == "Pending"


def test_run_unknown_job_is_404_and_queues_nothing(client, auth):
    response = trigger(client, auth, "no-such-job")
    assert response.status_code == 404
    assert response.get_json() == {"error": "Job not found"}
    assert Execution.select().count() == 0


def test_run_disabled_job_is_409(client, auth, make_job):
    job = make_job(enabled=False)
    response = trigger(client, auth, job.id)
    assert response.status_code == 409
    assert "error" in response.get_json()
    assert Execution.select().count() == 0


def test_execution_ids_are_opaque_and_unguessable(client, auth, make_job):
    job = make_job()
    ids = [trigger(client, auth, job.id).get_json()["executionId"] for _ in range(5)]
    assert len(set(ids)) == 5
    for execution_id in ids:
        assert not execution_id.isdigit() and len(execution_id) >= 32
    # 80 random bits each: consecutive ids share no random suffix.
    assert len({execution_id[12:] for execution_id in ids}) == 5


def test_poll_has_exactly_the_seed_fields_with_their_types(client, auth, make_job):
    job = make_job(name="Daily files")
    execution_id = trigger(client, auth, job.id).get_json()["executionId"]
    response = client.get(f"/api/executions/{execution_id}", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    data = body["data"]
    assert list(data) == EXECUTION_FIELDS
    assert data["id"] == execution_id and data["jobId"] == job.id and data["jobName"] == "Daily files"
    assert data["type"] == "Backup" and data["status"] == "Pending"
    assert data["progress"] == 0 and data["stage"] == "Queued"
    assert data["startedAt"] is None and data["endedAt"] is None and data["duration"] is None
    assert data["size"] is None and data["path"] is None and data["error"] is None


def test_poll_of_a_finished_execution_formats_times_and_duration(client, auth, make_job):
    job = make_job()
    execution_id = trigger(client, auth, job.id).get_json()["executionId"]
    Execution.update(status="Success", progress=100, stage="Completed", started_at=1_700_000_000_123,
                     ended_at=1_700_000_004_623, size=2048, path="/backups/x.tar.zst").where(
        Execution.id == execution_id).execute()
    data = client.get(f"/api/executions/{execution_id}", headers=auth).get_json()["data"]
    assert data["startedAt"] == "2023-11-14T22:13:20.123Z"
    assert ISO_MS.fullmatch(data["endedAt"])
    assert data["duration"] == 4500
    assert data["size"] == 2048 and data["path"] == "/backups/x.tar.zst"


def test_poll_with_include_logs_lists_entries_in_order(client, auth, make_job):
    job = make_job()
    WorkerHeartbeat.beat("worker-1", "host", 1, models.now_ms())  # a live worker: no note that none is there
    execution_id = trigger(client, auth, job.id).get_json()["executionId"]
    for number in range(3):
        ExecutionLog.create(execution=execution_id, stage="Dumping", message=f"line {number}")
    data = client.get(f"/api/executions/{execution_id}?includeLogs=true", headers=auth).get_json()["data"]
    assert [entry["message"] for entry in data["logs"]] == ["line 0", "line 1", "line 2"]
    for entry in data["logs"]:
        assert list(entry) == ["timestamp", "level", "stage", "message"]
        assert ISO_MS.fullmatch(entry["timestamp"])
    without = client.get(f"/api/executions/{execution_id}", headers=auth).get_json()["data"]
    assert "logs" not in without


def test_poll_unknown_execution_is_404(client, auth):
    response = client.get("/api/executions/nope", headers=auth)
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_jobs_list_shows_last_execution_and_hides_passwords(client, auth, make_job):
    job = make_job(name="pg", source="postgresql://backup:s3cret@db.internal:5432/app")
    make_job(name="idle")
    execution_id = trigger(client, auth, job.id).get_json()["executionId"]
    response = client.get("/api/jobs", headers=auth)
    assert response.status_code == 200
    assert "s3cret" not in response.get_data(as_text=True)
    jobs = {entry["name"]: entry for entry in response.get_json()["data"]}
    assert jobs["pg"]["sourceKind"] == "postgresql"
    assert jobs["pg"]["lastExecution"] == {"id": execution_id, "status": "Pending", "endedAt": None}
    assert jobs["idle"]["lastExecution"] is None
    assert jobs["idle"]["enabled"] is True


def test_cancel_pending_execution_is_immediate(client, auth, make_job):
    execution_id = trigger(client, auth, make_job().id).get_json()["executionId"]
    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert data["status"] == "Cancelled" and data["endedAt"] is not None


def test_cancel_finished_execution_is_409(client, auth, make_job):
    execution_id = trigger(client, auth, make_job().id).get_json()["executionId"]
    client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 409
    assert "error" in response.get_json()


def test_cancel_running_execution_asks_its_worker_to_stop(client, auth, make_job):
    execution_id = trigger(client, auth, make_job().id).get_json()["executionId"]
    Execution.update(status="Running").where(Execution.id == execution_id).execute()
    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 200
    assert Execution.get_by_id(execution_id).cancel_requested is True


def test_cancel_unknown_execution_is_404(client, auth):
    assert client.post("/api/executions/nope/cancel", headers=auth).status_code == 404


def test_livez_and_readyz_answer(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").get_json() == {"status": "ok", "workers": 0}


def test_readyz_is_503_when_the_database_cannot_be_reached(app, client, tmp_path):
    models.database.close()
    models.database.initialize(SqliteDatabase(str(tmp_path / "no" / "such" / "dir.db")))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"error": "Database unavailable"}


@pytest.mark.parametrize("path", ["/api/jobs", "/api/executions/x", "/api/websites/example.com/backups"])
def test_api_routes_require_a_key(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert "error" in response.get_json()


def test_jobs_list_hides_every_secret_part_of_a_source(client, auth, make_job):
    make_job(name="pg", source="postgresql://backup@db.internal/app?sslmode=require&password=Xq7zK9v"
                               "&sslpassword=Xq8zK9w&sslkey=/keys/Xq9.key")
    response = client.get("/api/jobs", headers=auth)
    assert response.status_code == 200
    for secret in ("Xq7zK9v", "Xq8zK9w", "Xq9"):
        assert secret not in response.get_data(as_text=True)
    assert response.get_json()["data"][0]["source"] == (
        "postgresql://backup@db.internal/app?sslmode=require&password=***&sslpassword=***&sslkey=***")


def test_jobs_list_answers_200_with_rows_stored_before_sources_were_checked(client, auth, make_job):
    for number, (source, _kind, _shown) in enumerate(test_sources.STORED_BEFORE_VALIDATION):
        make_job(name=f"legacy-{number}", source=source)
    make_job(name="good")
    response = client.get("/api/jobs", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    listed = {job["name"]: job for job in response.get_json()["data"]}
    assert listed["good"]["sourceKind"] == "files"
    for number, (_source, kind, shown) in enumerate(test_sources.STORED_BEFORE_VALIDATION):
        assert (listed[f"legacy-{number}"]["sourceKind"], listed[f"legacy-{number}"]["source"]) == (kind, shown)
    assert "Xq7" not in response.get_data(as_text=True) and "zK9v" not in response.get_data(as_text=True)
