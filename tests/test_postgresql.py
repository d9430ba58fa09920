"""PostgreSQL as the metadata store: dropped connections, real booleans, row locks where SQLite has one write lock."""
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests
from peewee import OperationalError

import database
import models
from events import webhook_event
from models import Backup, Execution, Job, Setting, Website
from remote_backups import apply, link_execution
from support import TOKEN, lock_waiters, poll, postgres_listeners, run_to_end, trigger, wait_until
from test_wpsec import SITE_KEY, StandInSite

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
    monkeypatch.setitem(database.opened().connect_params, "port", 1)
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
    Website.create(domain="example.com")
    event = {"domain": "example.com", "backup_id": "b1"}
    apply(webhook_event("progress", {**event, "progress": 40}))
    completing = psycopg2.connect(database_url)  # a complete webhook, committing while the progress one reads
    completing.cursor().execute("UPDATE backup SET status = 'completed', progress = 100 WHERE backup_id = 'b1'")
    late = threading.Thread(target=apply, args=(webhook_event("progress", {**event, "progress": 50}),))
    late.start()
    wait_until(lambda: lock_waiters(database_url), message="the progress event to wait for the backup's row")
    completing.commit()
    late.join(10)
    completing.close()
    backup = Backup.get()
    assert (backup.status, backup.progress) == ("completed", 100)


@pytest.mark.parametrize("end", ["Failed", "Cancelled"])
def test_a_progress_webhook_racing_the_end_of_its_execution_never_revives_it(app, make_job, database_url, end):
    """The end commits while the webhook's mirror waits for the execution's row: the end must stand."""
    site = Website.create(domain="example.com")
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://example.com"))
    Execution.update(status="Running", stage="Requesting", worker_id="w-1", attempts=1,
                     lease_expires_at=models.now_ms() + 60_000).where(Execution.id == execution.id).execute()
    link_execution(site.id, "b1", execution.id)
    ending = psycopg2.connect(database_url)  # its worker, a cancel or a failed webhook, committing meanwhile
    ending.cursor().execute("UPDATE execution SET status = %s, stage = %s, worker_id = NULL, lease_expires_at = NULL "
                            "WHERE id = %s", (end, end, execution.id))
    late = threading.Thread(target=apply,
                            args=(webhook_event("progress", {"domain": "example.com", "backup_id": "b1", "progress": 60}),))
    late.start()
    wait_until(lambda: lock_waiters(database_url), message="the progress event to wait for the execution's row")
    ending.commit()
    late.join(10)
    ending.close()
    after = Execution.get_by_id(execution.id)
    assert (after.status, after.stage, after.lease_expires_at) == (end, end, None)
    assert Backup.get().progress == 60  # the backup itself took the event


@pytest.fixture
def stand_in():
    site = StandInSite()
    yield site
    site.stop()


def test_progress_webhooks_from_many_processes_never_overwrite_a_cancel(
        client, auth, make_job, start_server, start_worker, stand_in):
    with models.database.atomic():
        Website.create(domain="example.com", wpsec_url=stand_in.url + "/", wpsec_api_key=SITE_KEY)
    job = make_job(name="wp", source="wpsec://example.com")
    server = start_server(processes=3)
    start_worker()
    execution_id = trigger(client, auth, job.id)
    wait_until(lambda: Backup.get_or_none(Backup.execution == execution_id), timeout=20,
               message="the worker to start the remote backup")
    session = threading.local()

    def progress(number):
        if not hasattr(session, "http"):
            session.http = requests.Session()
        response = session.http.post(f"{server.url}/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                                     json={"domain": "example.com", "backup_id": "wp-1", "progress": number % 100},
                                     timeout=10)
        assert response.status_code == 200, response.text

    seen_after_the_cancel = []
    with ThreadPoolExecutor(8) as pool:
        sent = [pool.submit(progress, number) for number in range(400)]
        wait_until(lambda: sum(future.done() for future in sent) >= 100, message="webhooks to flow")
        assert client.post(f"/api/executions/{execution_id}/cancel", headers=auth).status_code == 200
        wait_until(lambda: poll(client, auth, execution_id)["status"] == "Cancelled", timeout=10,
                   message="its worker to end the execution Cancelled")
        while not all(future.done() for future in sent):
            seen_after_the_cancel.append(poll(client, auth, execution_id)["status"])
        for future in sent:
            future.result()
    assert set(seen_after_the_cancel) <= {"Cancelled"}
    assert Execution.get_by_id(execution_id).status == "Cancelled"


def test_a_connection_lost_mid_transaction_is_a_503_kind_of_error_and_the_next_statement_works(app, database_url):
    with pytest.raises(OperationalError):  # what the app answers with 503 and the worker retries
        with models.database.atomic():
            Setting.write("max_concurrent_jobs", 2)
            terminate_backhook_connections(database_url)
            Setting.read("max_concurrent_jobs")
    assert Setting.read("max_concurrent_jobs") == "1"  # the transaction's write went with it
