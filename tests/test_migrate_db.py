"""`backhook migrate-db --to postgresql://…`: an existing SQLite database's data, moved whole."""
import subprocess
import sys

import pytest
import requests

import database
import models
from models import ApiKey, Backup, BackupEvent, Execution, ExecutionLog, IdempotencyKey, Job, Setting, Website
from statuses import ExecutionStatus
from support import PROJECT

pytestmark = pytest.mark.sqlite_only("copies a SQLite database into a PostgreSQL one")


@pytest.fixture
def populated(app, make_key, make_job):
    """A SQLite database with a row in every table, flags both ways, and more log lines than a batch."""
    key = make_key("jobs:read", "history:read")
    with models.database.atomic():
        ApiKey.update(enabled=False).where(ApiKey.id == ApiKey.issue("old", ["jobs:read"])[0].id).execute()
    job = make_job("nightly", keep=3)
    make_job("paused", enabled=False)
    execution = Execution.enqueue(job)
    with models.database.atomic():
        Execution.update(status=ExecutionStatus.SUCCESS, started_at=1_700_000_000_000, ended_at=1_700_000_004_321,
                         size=1234, path="/backups/x.tar.zst", cancel_requested=True, progress=100,
                         stage="Completed").where(Execution.id == execution.id).execute()
        for n in range(23):
            ExecutionLog.create(execution=execution.id, stage="Dumping", message=f"line {n} ✓")
        site = Website.create(domain="example.com", wpsec_api_key="site-key")
        backup = Backup.create(website=site, backup_id="b-1", status="completed", progress=100, execution=execution)
        BackupEvent.create(backup_pk=backup.id, kind="complete", payload='{"backup_id": "b-1"}')
        IdempotencyKey.create(job=job.id, key="nightly-2026-12-03", execution=execution.id)
        models.JobCreationKey.create(api_key=ApiKey.get().id, key="add-nightly", request_sha256="0" * 64, job=job.id)
        models.JobDestination.create(job=job.id, position=0, destination=job.destination)
        models.ArtifactCopy.create(execution=execution.id, position=0, destination=job.destination,
                                   location="/backups/x.tar.zst")
        models.WorkerHeartbeat.create(id="worker-1", host="backup-host", pid=4242, started_at=1, last_seen=2)
        models.RunTally.create(job=job.id, type="Backup", status="Success", count=1)
        models.BackupTally.create(status="completed", count=1)
        models.WebhookTally.create(kind="complete", outcome="applied", shard=3, count=1)
        notification = models.Notification.create(kind="webhook", url="https://example.com/hook", job=job.id,
                                                  secret="whsec_c2VjcmV0", overdue_seconds=3600)
        models.NotificationOutbox.create(notification=notification.id, event="failure", payload="{}",
                                         execution_id=execution.id, job_id=job.id)
    Setting.write("max_concurrent_jobs", 3)
    models.DashboardSession.open(ApiKey.authenticate(key)[0])  # a signed-in browser moves with its key
    return key, execution


def migrate_db(env, target, *options):
    return subprocess.run([sys.executable, "-m", "cli", "migrate-db", "--to", target, *options], env=env,
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)


def every_row(db):
    return {model._meta.table_name: list(model.select().order_by(model._meta.primary_key).tuples().execute(db))
            for model in models.ALL_MODELS}


def test_migrate_db_copies_every_row_and_the_copy_serves_the_same_answers(
        populated, backhook_env, scratch_postgres, client, start_server):
    key, execution = populated
    result = migrate_db(backhook_env, scratch_postgres, "--batch-rows", "5")
    assert result.returncode == 0, result.stderr
    assert "23 rows of execution_log" in result.stdout and "the counts match" in result.stdout

    target = database.connect_database(scratch_postgres)
    source_rows = every_row(database.opened())
    assert every_row(target) == source_rows
    assert len(source_rows["execution_log"]) == 23 and all(source_rows[table] for table in source_rows)

    # New rows get fresh ids: the sequences moved past the copied ones.
    with target.connection_context():
        log_id = ExecutionLog.insert(execution=execution.id, timestamp=1, level="info", message="after").execute(target)
    assert log_id > max(row[0] for row in source_rows["execution_log"])

    auth = {"Authorization": f"Bearer {key}"}
    path = f"/api/executions/{execution.id}?includeLogs=true"
    on_sqlite = client.get(path, headers=auth).get_json()
    server = start_server(processes=1, BACKHOOK_DATABASE_URL=scratch_postgres)
    on_postgresql = requests.get(server.url + path, headers=auth, timeout=10).json()
    on_postgresql["data"]["logs"].pop()  # the line added above
    assert on_postgresql == on_sqlite


def test_migrate_db_refuses_a_target_that_holds_data(populated, backhook_env, scratch_postgres):
    assert migrate_db(backhook_env, scratch_postgres).returncode == 0
    again = migrate_db(backhook_env, scratch_postgres)
    assert again.returncode != 0 and "empty database" in again.stderr
    target = database.connect_database(scratch_postgres)
    assert Job.select().count(target) == 2  # the refused run added nothing


def test_migrate_db_refuses_to_copy_a_database_onto_itself(populated, backhook_env, database_url):
    result = migrate_db(backhook_env, database_url)
    assert result.returncode != 0 and "already uses" in result.stderr
