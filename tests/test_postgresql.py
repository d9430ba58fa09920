"""PostgreSQL as the metadata store: dropped connections, real booleans, row locks where SQLite has one write lock."""
import statistics
import threading

import psycopg2
import pytest
import requests
from peewee import OperationalError

import models
from models import Backup, Execution, Job, Setting, Website
from support import postgres_listeners, run_to_end, wait_until

pytestmark = pytest.mark.postgresql_only("about PostgreSQL connections and types")


def terminate_backhook_connections(database_url):
    """What a server restart or an idle-connection reaper does to backhook."""
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    admin.close()


def test_a_dropped_connection_is_reopened_for_the_next_request(client, auth, database_url):
    assert client.get("/api/jobs", headers=auth).status_code == 200
    terminate_backhook_connections(database_url)
    assert client.get("/api/jobs", headers=auth).status_code == 200


def test_a_dropped_connection_is_reopened_for_the_next_transaction(app, database_url):
    Setting.write("max_concurrent_jobs", 2)
    terminate_backhook_connections(database_url)
    Setting.write("max_concurrent_jobs", 3)  # its BEGIN meets the dead connection first
    assert Setting.read("max_concurrent_jobs") == "3"


def test_readyz_reports_an_unreachable_database(app, client, monkeypatch):
    assert client.get("/readyz").status_code == 200
    models.database.close()
    monkeypatch.setitem(models.database.obj.connect_params, "port", 1)
    response = client.get("/readyz")
    assert response.status_code == 503 and "error" in response.get_json()


def test_flags_are_real_booleans(make_job):
    job = make_job()
    with models.database.atomic():
        Job.update(enabled=False).where(Job.id == job.id).execute()
    assert Job.select().where(Job.enabled).count() == 0
    assert Job.select().where(~Job.enabled).count() == 1
    column = models.database.execute_sql(
        "SELECT data_type, column_default FROM information_schema.columns "
        "WHERE table_name = 'job' AND column_name = 'enabled'").fetchone()
    assert column == ("boolean", "true")


def test_sql_on_a_raw_cursor_gets_a_live_connection_after_a_drop(app, database_url):
    models.database.execute_sql("SELECT 1")
    terminate_backhook_connections(database_url)
    with pytest.raises(psycopg2.OperationalError):
        models.database.cursor().execute("SELECT 1")  # the statement that finds the connection dead
    cursor = models.database.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == (1,)


def test_each_web_process_keeps_one_connection_across_requests(start_server, make_key, database_url):
    server = start_server(processes=2)
    auth = {"Authorization": f"Bearer {make_key()}", "Connection": "close"}
    for _ in range(30):
        assert requests.get(server.url + "/api/jobs", headers=auth, timeout=10).status_code == 200
    admin = psycopg2.connect(database_url)
    cursor = admin.cursor()
    cursor.execute("SELECT count(*) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND application_name = 'backhook' AND pid <> pg_backend_pid()")
    connections = cursor.fetchone()[0]
    admin.close()
    # One per gunicorn process, plus the test's own app (the key); none opened per request.
    assert 1 <= connections <= 3


def test_a_cancel_racing_a_claim_is_never_lost(app, make_job, database_url):
    """The claim commits while the cancel waits for the row: the cancel must see Running and ask its worker."""
    execution = Execution.enqueue(make_job())
    claim = psycopg2.connect(database_url)
    claim.cursor().execute("UPDATE execution SET status = 'Running' WHERE id = %s", (execution.id,))
    outcome = {}
    canceller = threading.Thread(target=lambda: outcome.update(result=Execution.cancel(execution.id)))
    canceller.start()
    wait_until(lambda: lock_waiters(database_url), message="the cancel to wait for the claim's row lock")
    claim.commit()
    canceller.join(10)
    claim.close()
    execution_after, accepted = outcome["result"]
    assert accepted and execution_after.status == "Running"
    assert Execution.get_by_id(execution.id).cancel_requested is True


def lock_waiters(database_url):
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        waiting = cursor.fetchone()[0]
    conn.close()
    return waiting


def test_a_worker_listens_again_after_its_listen_connection_is_dropped(client, auth, make_job, start_worker,
                                                                      database_url):
    job = make_job(source="command:echo payload")
    start_worker()
    before = postgres_listeners(database_url)
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (list(before),))
    admin.close()
    wait_until(lambda: postgres_listeners(database_url) - before, message="the worker to LISTEN again")
    executions = [Execution.get_by_id(run_to_end(client, auth, job.id)["id"]) for _ in range(3)]
    assert {execution.status for execution in executions} == {"Success"}
    # Woken at once, not found by the worker's 1 s fallback poll.
    assert statistics.median(e.started_at - e.created_at for e in executions) < 250


def test_a_late_progress_event_racing_complete_cannot_reopen_the_backup(app, database_url):
    site = Website.create(domain="example.com")
    event = {"domain": "example.com", "backup_id": "b1"}
    Backup.apply_event(site.id, "b1", "progress", {**event, "progress": 40})
    completing = psycopg2.connect(database_url)  # a complete webhook, committing while the progress one reads
    completing.cursor().execute("UPDATE backup SET status = 'completed', progress = 100 WHERE backup_id = 'b1'")
    late = threading.Thread(target=Backup.apply_event, args=(site.id, "b1", "progress", {**event, "progress": 50}))
    late.start()
    wait_until(lambda: lock_waiters(database_url), message="the progress event to wait for the backup's row")
    completing.commit()
    late.join(10)
    completing.close()
    backup = Backup.get()
    assert (backup.status, backup.progress) == ("completed", 100)


def test_a_connection_lost_mid_transaction_is_a_503_kind_of_error_and_the_next_statement_works(app, database_url):
    with pytest.raises(OperationalError):  # what the app answers with 503 and the worker retries
        with models.database.atomic():
            Setting.write("max_concurrent_jobs", 2)
            terminate_backhook_connections(database_url)
            Setting.read("max_concurrent_jobs")
    assert Setting.read("max_concurrent_jobs") == "1"  # the transaction's write went with it
