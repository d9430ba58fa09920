"""GET /metrics: who may scrape it, the text Prometheus parses, and values exact across processes.

The values come from the database at scrape time, so the end-to-end test
runs real backups, a restore drill and real webhooks against two gunicorn
processes and a worker, then checks every series against the rows.
"""
import dataclasses
import re
from importlib.metadata import version

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import config
import database
import metrics
import migrations
import models
from events import webhook_event
from models import Backup, BackupTally, Execution, RunTally, Website, WorkerHeartbeat
from remote_backups import apply, link_execution
from spool import REJECTED_NAME, spool_event
from statuses import ExecutionStatus, ExecutionType, Stage
from support import PROJECT, TOKEN, poll, wait_for_status, wait_until

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def scrape(client, headers=None, accept=None):
    response = client.get("/metrics", headers={**(headers or {}), **({"Accept": accept} if accept else {})})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def samples(text):
    """{(name, sorted label items): value} of every sample in a text exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def reader(make_key):
    return {"Authorization": f"Bearer {make_key('metrics:read')}"}


# --- who may scrape -------------------------------------------------------------------------

def test_metrics_needs_a_key_holding_metrics_read(client, make_key):
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.is_json and set(missing.get_json()) == {"error"}
    others = [permission for permission in models.PERMISSIONS if permission != "metrics:read"]
    refused = client.get("/metrics", headers={"Authorization": f"Bearer {make_key(*others)}"})
    assert refused.status_code == 403 and "metrics:read" in refused.get_json()["error"]
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {make_key('metrics:read')}"})
    assert allowed.status_code == 200 and allowed.content_type == PROMETHEUS_TEXT


def test_public_metrics_need_no_key_and_other_routes_still_do(app, client):
    app.config["METRICS_PUBLIC"] = True
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/jobs").status_code == 401


@pytest.mark.parametrize("setting, public", [(None, False), ("false", False), ("0", False), ("true", True),
                                             ("yes", True), ("1", True)])
def test_backhook_metrics_public_is_read_from_the_environment(setting, public):
    env = {} if setting is None else {"BACKHOOK_METRICS_PUBLIC": setting}
    assert config.load(env)["METRICS_PUBLIC"] is public


# --- the format ---------------------------------------------------------------------------

def test_every_family_parses_with_help_and_a_backhook_prefix(client, reader, make_job):
    make_job()
    families = list(text_string_to_metric_families(scrape(client, reader).get_data(as_text=True)))
    assert {family.name for family in families} >= {"backhook_job_runs", "backhook_queue_depth", "backhook_build_info"}
    for family in families:
        assert family.name.startswith("backhook_") and family.documentation, family.name


def test_openmetrics_is_served_when_prometheus_asks_for_it(client, reader):
    response = scrape(client, reader, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert response.content_type.startswith("application/openmetrics-text")
    text = response.get_data(as_text=True)
    assert text.endswith("# EOF\n")
    assert {family.name for family in parse_openmetrics(text)} >= {"backhook_workers_seen", "backhook_build"}


def test_build_info_names_the_installed_version(client, reader):
    found = samples(scrape(client, reader).get_data(as_text=True))
    assert value(found, "backhook_build_info", version=version("backhook")) == 1


# --- the counters kept for it -------------------------------------------------------------

def test_every_ending_of_an_execution_counts_once_by_job_type_and_status(client, reader, make_job):
    job, other = make_job(), make_job("other")
    ended = []
    for status in (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.SUCCESS):
        execution = Execution.enqueue(job)
        assert Execution.transition(execution.id, ExecutionStatus.PENDING, dict(status=ExecutionStatus.RUNNING))
        assert Execution.transition(execution.id, ExecutionStatus.RUNNING, dict(status=status))
        ended.append(execution.id)
    # Retention's writes on a Success and a write that does not happen count nothing.
    assert Execution.transition(ended[0], ExecutionStatus.SUCCESS, dict(path=None))
    assert not Execution.transition(ended[1], ExecutionStatus.RUNNING, dict(status=ExecutionStatus.FAILED))
    Execution.cancel(Execution.enqueue(other).id)
    with models.database.atomic():
        restore = Execution.create(job=job.id, type=ExecutionType.RESTORE, restores=ended[0])
    Execution.transition(restore.id, ExecutionStatus.PENDING, dict(status=ExecutionStatus.FAILED))

    found = samples(scrape(client, reader).get_data(as_text=True))

    def runs(of, kind, status):
        return value(found, "backhook_job_runs_total", job_id=of.id, job_name=of.name, type=kind, status=status)

    assert runs(job, "Backup", "Success") == 2 and runs(job, "Backup", "Failed") == 1
    assert runs(job, "Restore", "Failed") == 1 and runs(job, "Backup", "Cancelled") == 0
    assert runs(other, "Backup", "Cancelled") == 1 and runs(other, "Restore", "Success") == 0


def test_job_series_come_from_the_newest_success_and_the_newest_proof(client, reader, make_job):
    job, never_run = make_job(), make_job("never-run", enabled=False)
    with models.database.atomic():
        older = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, created_at=1_000, started_at=1_000,
                                 ended_at=9_000, size=10, proven_restorable_at=70_000_000)
        newer = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, created_at=2_000, started_at=2_500,
                                 ended_at=5_750, size=20)
        Execution.create(job=job.id, status=ExecutionStatus.FAILED, created_at=3_000, ended_at=3_100)
        Execution.create(job=job.id, type=ExecutionType.RESTORE, status=ExecutionStatus.SUCCESS, restores=older.id,
                         created_at=4_000, ended_at=60_000_000)
    found = samples(scrape(client, reader).get_data(as_text=True))
    labels = dict(job_id=job.id, job_name=job.name)
    assert value(found, "backhook_job_last_success_timestamp_seconds", **labels) == newer.ended_at / 1000
    assert value(found, "backhook_job_last_success_duration_seconds", **labels) == 3.25
    assert value(found, "backhook_job_last_success_size_bytes", **labels) == 20
    # The drill's proof is later than the restore's end: the later of the two.
    assert value(found, "backhook_job_last_restorable_timestamp_seconds", **labels) == 70_000
    assert value(found, "backhook_job_enabled", **labels) == 1
    assert value(found, "backhook_job_created_timestamp_seconds", **labels) == job.created_at / 1000
    quiet = dict(job_id=never_run.id, job_name=never_run.name)
    assert value(found, "backhook_job_enabled", **quiet) == 0
    for name in ("last_success_timestamp_seconds", "last_success_size_bytes", "last_restorable_timestamp_seconds"):
        assert value(found, f"backhook_job_{name}", **quiet) is None  # absent, never a made-up 0


def test_queue_depth_running_and_the_oldest_pending(client, reader, make_job):
    job = make_job()
    first, _second, running = (Execution.enqueue(job) for _ in range(3))
    Execution.update(status=ExecutionStatus.RUNNING).where(Execution.id == running.id).execute()
    found = samples(scrape(client, reader).get_data(as_text=True))
    assert value(found, "backhook_queue_depth") == 2 and value(found, "backhook_executions_running") == 1
    assert value(found, "backhook_queue_oldest_timestamp_seconds") == first.created_at / 1000
    Execution.update(status=ExecutionStatus.CANCELLED).where(Execution.status == ExecutionStatus.PENDING).execute()
    found = samples(scrape(client, reader).get_data(as_text=True))
    assert value(found, "backhook_queue_depth") == 0 and value(found, "backhook_queue_oldest_timestamp_seconds") is None


@pytest.fixture
def site(app):
    with models.database.atomic():
        return Website.create(domain="example.com")


def event(kind, backup_id="b-1", **fields):
    return webhook_event(kind, {"domain": "example.com", "backup_id": backup_id, **fields})


def backups_by_status():
    return dict(Backup.select(Backup.status, models.fn.COUNT(Backup.id)).group_by(Backup.status).tuples())


def tallied():
    return {status: count for status, count in BackupTally.select(BackupTally.status, BackupTally.count).tuples()
            if count}


def test_backups_by_status_follow_every_change_and_the_removal_of_a_website(site, make_job):
    apply(event("progress", progress=10))
    apply(event("progress", backup_id="b-2", status="pending"))
    apply(event("complete"))
    apply(event("progress", progress=50))  # late: changes nothing
    apply(event("failed", backup_id="b-3"))
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://example.com"))
    link_execution(site.id, "b-4", execution.id)
    assert tallied() == backups_by_status() == {"completed": 1, "pending": 2, "failed": 1}
    with models.database.atomic():
        other = Website.create(domain="other.example")
    apply(dataclasses.replace(event("progress", backup_id="x-1"), domain="other.example"))
    assert tallied() == backups_by_status() == {"completed": 1, "pending": 2, "failed": 1, "in_progress": 1}
    site.remove()
    assert tallied() == backups_by_status() == {"in_progress": 1}
    assert Website.get_or_none(Website.id == site.id) is None and Website.get_by_id(other.id)


def test_webhook_events_are_counted_by_kind_and_outcome(client, reader, site):
    headers = {"x-wpfort-token": TOKEN}

    def hook(kind, **body):
        return client.post(f"/webhooks/backup-{kind}", headers=headers, json=body).status_code

    assert hook("progress", domain="example.com", backup_id="b-1", progress=20) == 200
    assert hook("complete", domain="example.com", backup_id="b-1") == 200
    assert hook("progress", domain="example.com", backup_id="b-1", progress=30) == 200  # after the end
    assert hook("failed", domain="nowhere.example", backup_id="b-1") == 404
    assert hook("progress", domain="example.com", backup_id="b-1", progress=101) == 400
    assert client.post("/webhooks/backup-complete", headers=headers, data="[]").status_code == 400
    assert client.post("/webhooks/backup-complete", json={"domain": "example.com"}).status_code == 401
    replayed = dataclasses.replace(event("progress", backup_id="b-2"), spool_id="a" * 32)
    assert apply(replayed) is True and apply(replayed) is False  # a replay that ran twice
    found = samples(scrape(client, reader).get_data(as_text=True))
    counted = {(labels["kind"], labels["outcome"]): count for (name, items), count in found.items()
               if name == "backhook_webhook_events_total" for labels in [dict(items)] if count}
    assert counted == {("progress", "applied"): 2, ("complete", "applied"): 1, ("progress", "ignored"): 1,
                       ("failed", "unknown_website"): 1, ("progress", "invalid"): 1, ("complete", "invalid"): 1,
                       ("progress", "duplicate"): 1}
    assert value(found, "backhook_website_backups", status="completed") == 1
    assert value(found, "backhook_website_backups", status="in_progress") == 1


def test_spooled_events_waiting_and_rejected_are_counted(client, reader, data_dir):
    for number in range(3):
        spool_event(data_dir, event("progress", backup_id=f"b-{number}"))
    (data_dir / REJECTED_NAME).write_text('{"a broken line"\n')
    found = samples(scrape(client, reader).get_data(as_text=True))
    assert value(found, "backhook_webhook_spool_events", state="waiting") == 3
    assert value(found, "backhook_webhook_spool_events", state="rejected") == 1


def test_upgrading_counts_the_history_so_far(database_url, monkeypatch):
    """Version 10 counts the executions and backups that were there before it."""
    sections = migrations.schema_sections()
    database.open_database(database_url)
    try:
        monkeypatch.setattr(migrations, "schema_sections", lambda: [s for s in sections if s[0] < 10])
        migrations.migrate()
        rows = [("e1", "Success", "Backup"), ("e2", "Success", "Backup"), ("e3", "Failed", "Backup"),
                ("e4", "Success", "Restore"), ("e5", "Pending", "Backup")]
        with models.database.atomic():
            models.database.execute_sql("INSERT INTO job (id, name, source, destination, created_at) "
                                        "VALUES ('j1', 'nightly', 'files:///srv', '/backups', 1)")
            for execution_id, status, kind in rows:
                models.database.execute_sql("INSERT INTO execution (id, job_id, type, status, created_at) "
                                            f"VALUES ('{execution_id}', 'j1', '{kind}', '{status}', 1)")
            models.database.execute_sql("INSERT INTO website (id, domain, created_at) VALUES ('w1', 'a.example', 1)")
            for number, status in enumerate(["completed", "completed", "in_progress"]):
                models.database.execute_sql("INSERT INTO backup (id, website_id, backup_id, status, created_at, "
                                            f"updated_at) VALUES ('b{number}', 'w1', 'b{number}', '{status}', 1, 1)")
        monkeypatch.setattr(migrations, "schema_sections", lambda: sections)
        migrations.migrate()
        assert set(RunTally.select(RunTally.job, RunTally.type, RunTally.status, RunTally.count).tuples()) == {
            ("j1", "Backup", "Success", 2), ("j1", "Backup", "Failed", 1), ("j1", "Restore", "Success", 1)}
        assert tallied() == {"completed": 2, "in_progress": 1}
    finally:
        models.database.close()


# --- across processes, after real runs ------------------------------------------------------

def test_values_are_exact_across_two_processes_after_real_runs(app, client, make_key, make_job, start_server,
                                                               start_worker):
    key = make_key()
    auth = {"Authorization": f"Bearer {key}"}
    good, broken = make_job("good"), make_job("broken", source="command:echo no disk >&2; exit 3")
    with models.database.atomic():
        site = Website.create(domain="example.com")
    server = start_server(processes=2)
    start_worker()
    http = requests.Session()
    http.headers.update(auth)

    def run(job_id):
        execution_id = http.post(f"{server.url}/api/jobs/{job_id}/run", timeout=10).json()["executionId"]
        return wait_for_status(client, auth, execution_id, timeout=60)

    first, second, failed = run(good.id), run(good.id), run(broken.id)
    assert (first["status"], second["status"], failed["status"]) == ("Success", "Success", "Failed")
    drill = http.post(f"{server.url}/api/executions/{first['id']}/restore", json={"target": "scratch"}, timeout=10)
    drilled = wait_for_status(client, auth, drill.json()["executionId"], timeout=60)
    assert drilled["status"] == "Success"
    for kind, body in [("progress", {"progress": 40}), ("complete", {}), ("progress", {"progress": 50})]:
        answer = http.post(f"{server.url}/webhooks/backup-{kind}", headers={"x-wpfort-token": TOKEN},
                           json={"domain": site.domain, "backup_id": "wp-1", **body}, timeout=10)
        assert answer.status_code == 200, answer.text
    wait_until(lambda: samples(http.get(f"{server.url}/metrics", timeout=10).text)[
        ("backhook_workers_seen", ())] == 1, message="the worker's heartbeat")

    # Every process answers the same, and it is what the database holds.
    texts = {http.get(f"{server.url}/metrics", timeout=10).text for _ in range(12)}
    assert len(texts) == 1
    found = samples(texts.pop())
    newest = Execution.get_by_id(second["id"])
    labels = dict(job_id=good.id, job_name="good")
    assert value(found, "backhook_job_last_success_timestamp_seconds", **labels) == newest.ended_at / 1000
    assert value(found, "backhook_job_last_success_duration_seconds", **labels) == newest.duration() / 1000
    assert value(found, "backhook_job_last_success_size_bytes", **labels) == newest.size == second["size"]
    # The drill proved the backup, then ended as a successful restore: the later of the two.
    proven = Execution.get_by_id(first["id"]).proven_restorable_at
    latest = max(proven, Execution.get_by_id(drilled["id"]).ended_at)
    assert proven and value(found, "backhook_job_last_restorable_timestamp_seconds", **labels) == latest / 1000
    runs = {(labels["job_name"], labels["type"], labels["status"]): count for (name, items), count in found.items()
            if name == "backhook_job_runs_total" for labels in [dict(items)] if count}
    assert runs == {("good", "Backup", "Success"): 2, ("good", "Restore", "Success"): 1,
                    ("broken", "Backup", "Failed"): 1}
    assert value(found, "backhook_job_last_success_timestamp_seconds", job_id=broken.id, job_name="broken") is None
    assert (value(found, "backhook_queue_depth"), value(found, "backhook_executions_running")) == (0, 0)
    assert value(found, "backhook_workers_seen") == 1
    assert value(found, "backhook_webhook_events_total", kind="progress", outcome="applied") == 1
    assert value(found, "backhook_webhook_events_total", kind="complete", outcome="applied") == 1
    assert value(found, "backhook_webhook_events_total", kind="progress", outcome="ignored") == 1
    assert value(found, "backhook_website_backups", status="completed") == 1
    assert value(found, "backhook_webhook_spool_events", state="waiting") == 0
    assert poll(client, auth, first["id"])["status"] == "Success"


# --- the documentation ----------------------------------------------------------------------

NOT_YET_EXPORTED = {"backhook_notifications"}  # arrives with the notification outbox (docs/monitoring.md)


def documented_series():
    text = (PROJECT / "docs" / "monitoring.md").read_text()
    return set(re.findall(r"\bbackhook_[a-z_]+[a-z]", text)) - NOT_YET_EXPORTED


def exported_names(text):
    """Every name a series of the exposition can be queried by: samples and families."""
    return {name for family in text_string_to_metric_families(text)
            for name in [family.name, *(sample.name for sample in family.samples)]}


def test_every_series_the_monitoring_guide_names_is_exported(client, reader, make_job):
    job = make_job()
    with models.database.atomic():
        Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, stage=Stage.COMPLETED, created_at=1,
                         started_at=1, ended_at=2, size=3, proven_restorable_at=4)
        Execution.create(job=job.id, created_at=5)  # Pending: the oldest one is exported
    WorkerHeartbeat.beat("worker-1", "host", 1, models.now_ms())
    exported = exported_names(scrape(client, reader).get_data(as_text=True))
    documented = documented_series()
    assert len(documented) >= 10 and documented - exported == set()


def test_a_function_added_to_the_families_is_exported(client, reader, monkeypatch):
    """How the notification outbox adds its gauge: one function appended to metrics.FAMILIES."""
    def outbox(scrape):
        gauge = metrics.GaugeMetricFamily("backhook_notifications", "Notifications by status", labels=["status"])
        gauge.add_metric(["failed"], scrape.now % 7)
        return [gauge]

    monkeypatch.setattr(metrics, "FAMILIES", [*metrics.FAMILIES, outbox])
    found = samples(scrape(client, reader).get_data(as_text=True))
    assert value(found, "backhook_notifications", status="failed") is not None
    assert value(found, "backhook_queue_depth") == 0
