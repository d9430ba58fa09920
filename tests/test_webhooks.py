"""The WPSec webhooks (openapi.yaml, README.md "WordPress sites (WPSec)") and their strict semantics, rule by rule."""
import json
import sqlite3
import subprocess
import sys

import psycopg2
import pytest

import models
from models import Backup, BackupEvent, Execution, ExecutionLog, Website
from spool import REJECTED_NAME, SPOOL_NAME, replay_spool
from support import PROJECT, TOKEN, hold_write_lock

HEADERS = {"x-wpfort-token": TOKEN}
ROUTES = ["/webhooks/backup-progress", "/webhooks/backup-complete", "/webhooks/backup-failed"]


@pytest.fixture
def site(app):
    with models.database.atomic():
        return Website.create(domain="example.com", wpsec_url="http://127.0.0.1:9", wpsec_api_key="k" * 20)


@pytest.fixture
def hook(client, site):
    """POST a webhook with the right token: hook("progress", backup_id=..., progress=...)."""
    def send(kind, domain="example.com", backup_id="backup_1", headers=HEADERS, **fields):
        body = {"domain": domain, "backup_id": backup_id, **fields}
        return client.post(f"/webhooks/backup-{kind}", json=body, headers=headers)

    return send


def backup(backup_id="backup_1"):
    return Backup.get(Backup.backup_id == backup_id)


def events(backup_id="backup_1"):
    return [(event.kind, json.loads(event.payload)) for event in
            BackupEvent.select().where(BackupEvent.backup_pk == backup(backup_id).id).order_by(BackupEvent.id)]


# --- the seed's payloads and answers ------------------------------------------------

def test_progress_payload_from_the_seed_is_accepted(hook):
    response = hook("progress", backup_id="backup_123456789", status="in_progress", progress=45.7)
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    record = backup("backup_123456789")
    assert (record.status, record.progress) == ("in_progress", 46)


def test_complete_payload_from_the_seed_sets_progress_100(hook):
    hook("progress", progress=30)
    response = hook("complete")
    assert response.get_json() == {"success": True}
    record = backup()
    assert (record.status, record.progress) == ("completed", 100)
    assert record.completed_at is not None


def test_failed_payload_from_the_seed_stores_the_error_message(hook):
    response = hook("failed", error_message="Insufficient disk space")
    assert response.get_json() == {"success": True}
    record = backup()
    assert (record.status, record.error_message) == ("failed", "Insufficient disk space")


@pytest.mark.parametrize("message", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_failed_without_error_message_stores_the_default(hook, message):
    hook("failed", **({} if message is None else {"error_message": message}))
    assert backup().error_message == "Backup failed"


@pytest.mark.parametrize("status", ["pending", "in_progress"])
def test_progress_status_values_from_the_seed_are_accepted(hook, status):
    assert hook("progress", status=status).status_code == 200
    assert backup().status == status


def test_progress_status_and_progress_are_optional(hook):
    assert hook("progress").status_code == 200
    assert (backup().status, backup().progress) == ("in_progress", 0)


# --- the token ------------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("headers", [{}, {"x-wpfort-token": "wrong"}, {"x-wpfort-token": ""},
                                     {"x-wpfort-token": TOKEN + "x"}, {"x-wpfort-token": "tökén"},
                                     {"Authorization": f"Bearer {TOKEN}"}],
                         ids=["missing", "wrong", "empty", "longer", "non-ascii", "bearer-instead"])
def test_missing_or_wrong_token_is_401(client, site, route, headers):
    response = client.post(route, json={"domain": "example.com", "backup_id": "b"}, headers=headers)
    assert response.status_code == 401
    assert "error" in response.get_json()
    assert Backup.select().count() == 0


@pytest.mark.parametrize("route", ROUTES)
def test_without_a_configured_token_webhooks_answer_503_and_never_run_open(app, client, site, route):
    app.config["WPFORT_BACKEND_TOKEN"] = None
    for headers in ({}, {"x-wpfort-token": ""}, HEADERS):
        response = client.post(route, json={"domain": "example.com", "backup_id": "b"}, headers=headers)
        assert response.status_code == 503
        assert "error" in response.get_json()
    assert Backup.select().count() == 0


def test_token_is_checked_before_the_body(client, site):
    response = client.post(ROUTES[0], data="not json", headers={"x-wpfort-token": "wrong"})
    assert response.status_code == 401


# --- 400: bad bodies ------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("data,content_type", [
    ("{not json", "application/json"),
    ("[1, 2]", "application/json"),
    ('"a string"', "application/json"),
    ("null", "application/json"),
    ("", "application/json"),
    ("domain=example.com&backup_id=b", "application/x-www-form-urlencoded"),
    ("just text", "text/plain"),
], ids=["malformed", "array", "string", "null", "empty", "form", "text"])
def test_body_that_is_not_a_json_object_is_400(client, site, route, data, content_type):
    response = client.post(route, data=data, content_type=content_type, headers=HEADERS)
    assert response.status_code == 400
    assert "error" in response.get_json()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", ["domain", "backup_id"])
@pytest.mark.parametrize("value", [None, "", "   ", 42, True, ["example.com"], {"a": 1}],
                         ids=["null", "empty", "blank", "number", "bool", "list", "object"])
def test_domain_or_backup_id_missing_empty_or_not_a_string_is_400(client, site, route, field, value):
    body = {"domain": "example.com", "backup_id": "b", field: value}
    response = client.post(route, json=body, headers=HEADERS)
    assert response.status_code == 400
    assert field in response.get_json()["error"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", ["domain", "backup_id"])
def test_domain_or_backup_id_absent_is_400(client, site, route, field):
    body = {"domain": "example.com", "backup_id": "b"}
    del body[field]
    assert client.post(route, json=body, headers=HEADERS).status_code == 400


def test_domain_of_only_a_dot_is_400(hook):
    assert hook("progress", domain=" . ").status_code == 400


@pytest.mark.parametrize("progress", [-1, -0.01, 100.01, 101, 1e400, "50", True, False, [50], {"v": 50}],
                         ids=["negative", "just-below", "just-above", "101", "infinite", "string",
                              "true", "false", "list", "object"])
def test_progress_not_a_finite_number_in_range_is_400(hook, progress):
    response = hook("progress", progress=progress)
    assert response.status_code == 400
    assert "progress" in response.get_json()["error"]
    assert Backup.select().count() == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1" + "0" * 400])
def test_progress_nan_or_infinity_literals_are_400(client, site, literal):
    data = '{"domain": "example.com", "backup_id": "b", "progress": %s}' % literal
    response = client.post(ROUTES[0], data=data, content_type="application/json", headers=HEADERS)
    assert response.status_code == 400


@pytest.mark.parametrize("progress", [0, 0.0, 100, 100.0, 99.5])
def test_progress_bounds_are_accepted(hook, progress):
    assert hook("progress", progress=progress).status_code == 200


@pytest.mark.parametrize("status", ["completed", "failed", "running", "PENDING", "", 1, True])
def test_status_other_than_pending_or_in_progress_is_400(hook, status):
    response = hook("progress", status=status)
    assert response.status_code == 400
    assert "status" in response.get_json()["error"]


def test_body_over_1_mib_is_413(hook):
    response = hook("progress", padding="x" * (1024 * 1024))
    assert response.status_code == 413
    assert "error" in response.get_json()


# --- 404: the website -------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
def test_unknown_website_is_404(client, site, route):
    response = client.post(route, json={"domain": "other.example", "backup_id": "b"}, headers=HEADERS)
    assert response.status_code == 404
    assert response.get_json() == {"error": "Website not found"}
    assert Backup.select().count() == 0


@pytest.mark.parametrize("domain", ["EXAMPLE.com", "  example.com  ", "example.com.", " Example.COM. "])
def test_domain_matching_ignores_case_space_and_trailing_dot(hook, domain):
    assert hook("progress", domain=domain).status_code == 200
    assert backup().website_id == Website.get().id


# --- semantics ------------------------------------------------------------------------

@pytest.mark.parametrize("sent,stored", [(45.5, 46), (45.4999, 45), (0.5, 1), (99.5, 100), (12, 12),
                                         (0.49999999999999994, 0)])
def test_progress_is_rounded_half_up(hook, sent, stored):
    hook("progress", progress=sent)
    assert backup().progress == stored


def test_progress_never_decreases(hook):
    hook("progress", progress=60)
    hook("progress", progress=40)
    assert backup().progress == 60


def test_omitted_progress_keeps_the_stored_value(hook):
    hook("progress", progress=35)
    hook("progress", status="in_progress")
    assert backup().progress == 35


def test_status_does_not_go_back_from_in_progress_to_pending(hook):
    hook("progress", status="in_progress", progress=10)
    hook("progress", status="pending")
    assert backup().status == "in_progress"


@pytest.mark.parametrize("kind", ["progress", "complete", "failed"])
def test_unknown_backup_id_of_a_known_site_creates_the_record(hook, kind):
    assert hook(kind, backup_id="started-in-wp-admin").status_code == 200
    assert Backup.select().where(Backup.backup_id == "started-in-wp-admin").count() == 1


def test_progress_after_complete_is_ignored(hook):
    hook("complete")
    assert hook("progress", status="in_progress", progress=10).status_code == 200
    assert (backup().status, backup().progress) == ("completed", 100)


def test_progress_after_failed_is_ignored(hook):
    hook("failed", error_message="disk full")
    hook("progress", progress=80)
    assert (backup().status, backup().progress, backup().error_message) == ("failed", 0, "disk full")


def test_failed_after_complete_changes_nothing(hook):
    hook("complete")
    hook("failed", error_message="late")
    assert (backup().status, backup().error_message) == ("completed", None)


def test_complete_after_failed_changes_nothing(hook):
    hook("failed")
    hook("complete")
    assert (backup().status, backup().completed_at) == ("failed", None)


@pytest.mark.parametrize("kind", ["complete", "failed"])
def test_repeated_terminal_event_is_acknowledged_and_changes_nothing(hook, kind):
    hook(kind, error_message="first")
    before = backup().__data__.copy()
    requested = Website.get().sync_requested_at
    response = hook(kind, error_message="second")
    assert response.status_code == 200 and response.get_json() == {"success": True}
    assert backup().__data__ == before
    assert Website.get().sync_requested_at == requested


def test_every_event_is_appended_to_the_history(hook):
    hook("progress", status="pending")
    hook("progress", progress=50)
    hook("complete")
    hook("progress", progress=10)
    hook("complete")
    assert [kind for kind, _ in events()] == ["progress", "progress", "complete", "progress", "complete"]
    assert events()[1][1]["progress"] == 50


def test_complete_queues_a_sync_of_the_site_without_calling_it(hook):
    # The site's wpsec_url points at a closed port: a blocking sync would fail or stall.
    assert Website.get().sync_requested_at is None
    assert hook("complete").status_code == 200
    site = Website.get()
    assert site.sync_requested_at is not None and site.synced_at is None


def test_progress_and_failed_do_not_queue_a_sync(hook):
    hook("progress", progress=5)
    hook("failed", backup_id="other")
    assert Website.get().sync_requested_at is None


def test_backups_of_different_sites_with_the_same_id_are_separate(hook):
    with models.database.atomic():
        Website.create(domain="second.example")
    hook("progress", progress=10)
    hook("progress", domain="second.example", progress=70)
    assert sorted(b.progress for b in Backup.select()) == [10, 70]


def test_non_string_error_message_is_kept_as_json(hook):
    hook("failed", error_message={"code": 28})
    assert backup().error_message == '{"code": 28}'


# --- a wpsec:// execution mirrors its backup --------------------------------------------

@pytest.fixture
def linked_execution(site, make_job):
    job = make_job(name="wp", source="wpsec://example.com")
    execution = Execution.enqueue(job)
    Execution.update(status="Running", stage="Requesting").where(Execution.id == execution.id).execute()
    Backup.link_execution(site.id, "backup_1", execution.id)
    return execution.id


def test_linking_puts_the_execution_in_the_remote_backup_stage(linked_execution):
    execution = Execution.get_by_id(linked_execution)
    assert (execution.stage, execution.progress) == ("Remote Backup", 5)


@pytest.mark.parametrize("sent,mirrored", [(0, 5), (50, 50), (100, 95), (45.5, 46)])
def test_execution_progress_is_mapped_into_the_remote_backup_band(hook, linked_execution, sent, mirrored):
    hook("progress", progress=sent)
    execution = Execution.get_by_id(linked_execution)
    assert (execution.status, execution.stage, execution.progress) == ("Running", "Remote Backup", mirrored)


def test_complete_moves_the_execution_to_syncing(hook, linked_execution):
    hook("complete")
    execution = Execution.get_by_id(linked_execution)
    assert (execution.status, execution.stage, execution.progress) == ("Running", "Syncing", 95)


def test_failed_fails_the_execution_with_the_message(hook, linked_execution):
    hook("failed", error_message="Insufficient disk space")
    execution = Execution.get_by_id(linked_execution)
    assert (execution.status, execution.error) == ("Failed", "Insufficient disk space")
    assert execution.ended_at is not None
    messages = [log.message for log in ExecutionLog.select().where(ExecutionLog.execution == linked_execution)]
    assert any("Insufficient disk space" in message for message in messages)


def test_a_finished_execution_is_not_reopened_by_webhooks(hook, linked_execution):
    Execution.update(status="Cancelled", stage="Cancelled").where(Execution.id == linked_execution).execute()
    hook("progress", progress=70)
    hook("failed")
    assert Execution.get_by_id(linked_execution).status == "Cancelled"


def test_webhook_before_the_link_is_caught_up_when_linking(site, hook, make_job):
    hook("progress", backup_id="early", progress=40)
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://example.com"))
    Execution.update(status="Running", stage="Requesting").where(Execution.id == execution.id).execute()
    Backup.link_execution(site.id, "early", execution.id)
    assert Execution.get_by_id(execution.id).progress == 41
    assert Backup.select().count() == 1


# --- nothing lost -----------------------------------------------------------------------

@pytest.fixture
def lock_database(backend, database_url):
    """Another connection holding the lock a webhook's write needs, as another process would."""
    def lock():
        if backend == "postgresql":
            holder = psycopg2.connect(database_url)
            holder.cursor().execute("LOCK TABLE backup, backup_event IN EXCLUSIVE MODE")
            return holder
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        return holder

    return lock


@pytest.fixture
def short_busy_timeout(app, database_url):
    models.database.close()
    models.open_database(database_url, busy_seconds=0.05)


def spooled(path):
    """The records of a spool file; each is on a line of its own, after the newline that starts it."""
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_event_is_spooled_and_acknowledged_when_the_database_is_locked(site, hook, data_dir, lock_database,
                                                                      short_busy_timeout):
    holder = lock_database()
    response = hook("progress", progress=30)
    assert response.status_code == 200 and response.get_json() == {"success": True}
    records = spooled(data_dir / SPOOL_NAME)
    assert len(records) == 1 and records[0]["payload"]["progress"] == 30
    holder.rollback()
    holder.close()
    assert replay_spool(data_dir) == 1
    assert backup().progress == 30
    assert not (data_dir / SPOOL_NAME).exists()


def test_replay_applies_spooled_events_in_order(site, hook, data_dir, lock_database, short_busy_timeout):
    holder = lock_database()
    hook("progress", progress=20)
    hook("complete")
    hook("progress", progress=50)
    holder.rollback()
    holder.close()
    assert replay_spool(data_dir) == 3
    assert (backup().status, backup().progress) == ("completed", 100)
    assert [kind for kind, _ in events()] == ["progress", "complete", "progress"]


def test_replay_twice_applies_each_event_once(site, hook, data_dir, lock_database, short_busy_timeout):
    holder = lock_database()
    hook("progress", progress=20)
    holder.rollback()
    holder.close()
    spooled = (data_dir / SPOOL_NAME).read_bytes()
    assert replay_spool(data_dir) == 1
    # A replay that crashed after applying but before deleting leaves its file behind.
    (data_dir / "webhook-spool.0000000000001.replaying").write_bytes(spooled)
    assert replay_spool(data_dir) == 0
    assert len(events()) == 1


def test_replay_while_still_locked_keeps_the_spool_for_later(site, hook, data_dir, lock_database, short_busy_timeout):
    holder = lock_database()
    hook("progress", progress=20)
    assert replay_spool(data_dir) == 0
    holder.rollback()
    holder.close()
    assert replay_spool(data_dir) == 1
    assert backup().progress == 20


def test_replay_skips_a_damaged_line_and_applies_the_rest(site, data_dir):
    good = {"spool_id": "a" * 32, "received_at": 1_700_000_000_000, "kind": "progress",
            "domain": "example.com", "backup_id": "backup_1",
            "payload": {"domain": "example.com", "backup_id": "backup_1", "progress": 12}}
    (data_dir / SPOOL_NAME).write_text(json.dumps(good) + "\n" + '{"spool_id": "trunc')
    assert replay_spool(data_dir) == 1
    assert backup().progress == 12 and backup().created_at == 1_700_000_000_000


# A web process whose spool write the disk cuts short: RLIMIT_FSIZE lets the file grow
# by only `room` bytes, so the write stops half-way, as on a full disk.
WRITE_ON_A_FULL_DISK = """
import resource, sys
from pathlib import Path
import spool
data_dir, room = sys.argv[1], int(sys.argv[2])
size = (Path(data_dir) / spool.SPOOL_NAME).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    spool.spool_event(data_dir, "progress", {"domain": "example.com", "backup_id": "refused", "pad": "x" * 2 * room})
except OSError as exc:
    print("refused:", exc)
"""


def test_an_event_acknowledged_after_a_write_cut_short_by_a_full_disk_is_replayed(
        site, hook, data_dir, lock_database, short_busy_timeout):
    holder = lock_database()
    assert hook("progress", backup_id="before", progress=10).status_code == 200
    before = (data_dir / SPOOL_NAME).read_bytes()
    cut_short = subprocess.run([sys.executable, "-c", WRITE_ON_A_FULL_DISK, str(data_dir), "4096"], cwd=PROJECT,
                               capture_output=True, text=True, check=True)
    assert cut_short.stdout.startswith("refused:"), cut_short.stdout + cut_short.stderr  # that webhook got a 500
    assert (data_dir / SPOOL_NAME).read_bytes() == before, "the torn write should have been cut off again"
    assert hook("progress", backup_id="after", progress=20).status_code == 200
    holder.rollback()
    holder.close()
    assert replay_spool(data_dir) == 2
    assert (backup("before").progress, backup("after").progress) == (10, 20)
    assert not Backup.select().where(Backup.backup_id == "refused").exists()


def test_an_event_acknowledged_after_a_crash_mid_write_is_replayed(site, hook, data_dir, lock_database,
                                                                   short_busy_timeout):
    holder = lock_database()
    assert hook("progress", backup_id="before", progress=10).status_code == 200
    with (data_dir / SPOOL_NAME).open("ab") as spool_file:  # what a web process killed mid-write leaves
        spool_file.write(b'{"spool_id":"0123456789abcdef0123456789abcdef","received_at":17')
    assert hook("progress", backup_id="after", progress=20).status_code == 200
    holder.rollback()
    holder.close()
    assert replay_spool(data_dir) == 2
    assert (backup("before").progress, backup("after").progress) == (10, 20)


def good_record(number):
    backup_id = f"good-{number}"
    return {"spool_id": f"{number:032x}", "received_at": 1_700_000_000_000 + number, "kind": "progress",
            "domain": "example.com", "backup_id": backup_id,
            "payload": {"domain": "example.com", "backup_id": backup_id, "progress": number}}


def changed(number, drop=(), payload=None, **fields):
    record = {**good_record(number), **fields}
    record["payload"] = {**record["payload"], **(payload or {})}
    return json.dumps({name: value for name, value in record.items() if name not in drop})


BAD_LINES = [
    "123", '"progress"', "[1, 2]", "null", "{}", "true",
    changed(100, drop=["payload"]),
    changed(101, drop=["spool_id"]),
    changed(102, spool_id=""),
    changed(103, received_at="yesterday"),
    changed(104, kind="deleted"),
    changed(105, kind=["progress"]),
    json.dumps({**good_record(106), "payload": [1, 2]}),
    changed(107, payload={"domain": 5}),
    changed(108, payload={"backup_id": None}),
    changed(109, payload={"progress": 500}),
    changed(110, payload={"backup_id": "a\ud800b"}),  # valid JSON that neither database can store
]


def test_spooled_lines_that_cannot_be_applied_are_rejected_and_the_replay_moves_on(site, data_dir, caplog):
    half = len(BAD_LINES) // 2
    lines = [json.dumps(good_record(1)), *BAD_LINES[:half], json.dumps(good_record(2)), *BAD_LINES[half:]]
    (data_dir / "webhook-spool.0000000000001.replaying").write_text("\n".join(lines) + "\n")
    (data_dir / SPOOL_NAME).write_text(json.dumps(good_record(3)) + "\n")  # a later file waits on that one
    assert replay_spool(data_dir) == 3
    assert [backup(f"good-{n}").progress for n in (1, 2, 3)] == [1, 2, 3]
    assert Backup.select().count() == 3
    rejected = [line for line in (data_dir / REJECTED_NAME).read_text().splitlines() if line]
    assert rejected == BAD_LINES
    assert len([r for r in caplog.records if r.levelname == "ERROR" and REJECTED_NAME in r.getMessage()]) \
        == len(BAD_LINES)
    assert not list(data_dir.glob("webhook-spool.*.replaying")) and not (data_dir / SPOOL_NAME).exists()


def test_replay_finds_the_website_by_domain_and_drops_unknown_ones(site, data_dir):
    records = [{"spool_id": f"{n:032x}", "received_at": 1, "kind": "progress", "domain": domain, "backup_id": "b", "payload": {"domain": domain, "backup_id": "b"}}
               for n, domain in enumerate(["gone.example", "EXAMPLE.com."])]
    (data_dir / SPOOL_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert replay_spool(data_dir) == 1
    assert Backup.get().website_id == site.id


def test_event_is_spooled_when_the_database_cannot_be_opened(app, site, hook, data_dir, database_url, tmp_path):
    models.database.close()
    models.database.initialize(models.SqliteDatabase(str(tmp_path / "no" / "such" / "dir.db")))
    response = hook("complete")
    assert response.status_code == 200 and response.get_json() == {"success": True}
    record = json.loads((data_dir / SPOOL_NAME).read_text())
    assert record["domain"] == "example.com" and record["kind"] == "complete"
    models.database.close()
    models.open_database(database_url)
    assert replay_spool(data_dir) == 1
    assert backup().status == "completed"


def test_500_only_when_the_event_can_be_neither_stored_nor_spooled(app, site, hook, data_dir, lock_database,
                                                                   short_busy_timeout):
    holder = lock_database()
    app.config["DATA_DIR"] = str(data_dir / "spool-is-a-file")
    (data_dir / "spool-is-a-file").write_text("")
    response = hook("progress", progress=30)
    holder.rollback()
    holder.close()
    assert response.status_code == 500
    assert response.get_json() == {"error": "The event could not be stored"}


def test_webhooks_arriving_while_another_process_holds_the_write_lock_are_all_kept(
        site, data_dir, database_url, start_server):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    server = start_server(processes=3, BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    holder = hold_write_lock(database_url, 3)
    local = threading.local()

    def run_backup(number):
        """One backup's life, in order: four progress events, then complete."""
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        statuses = []
        for kind, fields in [("progress", {"progress": p}) for p in (20, 40, 60, 80)] + [("complete", {})]:
            response = session.post(f"{server.url}/webhooks/backup-{kind}", headers=HEADERS, timeout=30,
                                    json={"domain": "example.com", "backup_id": f"load-{number}", **fields})
            statuses.append(response.status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = [code for codes in pool.map(run_backup, range(300)) for code in codes]
    assert holder.wait(timeout=30) == 0
    assert len(statuses) == 1500 and set(statuses) == {200}
    spooled_count = len(spooled(data_dir / SPOOL_NAME))
    assert spooled_count > 0, "the lock should have forced some events into the spool"

    assert replay_spool(data_dir) == spooled_count
    assert Backup.select().where(Backup.status == "completed", Backup.progress == 100).count() == 300
    assert BackupEvent.select().count() == 1500
    assert not (data_dir / SPOOL_NAME).exists()


def test_webhooks_are_not_rate_limited(backhook_env, monkeypatch, site):
    from app import create_app
    monkeypatch.setenv("BACKHOOK_RATELIMIT_ENABLED", "true")
    limited = create_app({"TESTING": True}).test_client()
    codes = {limited.post(ROUTES[0], headers=HEADERS, json={"domain": "example.com", "backup_id": f"b{n}"}).status_code
             for n in range(30)}
    assert codes == {200}


def test_events_spooled_while_a_replay_runs_are_neither_lost_nor_doubled(site, data_dir):
    import threading

    from spool import spool_event

    def spool_many(writer):
        for number in range(250):
            spool_event(data_dir, "progress", {"domain": "example.com", "backup_id": f"w{writer}-{number}"})

    writers = [threading.Thread(target=spool_many, args=(n,)) for n in range(4)]
    for writer in writers:
        writer.start()
    applied = 0
    while any(writer.is_alive() for writer in writers):
        applied += replay_spool(data_dir)
    applied += replay_spool(data_dir)
    assert applied == 1000
    assert Backup.select().count() == 1000 and BackupEvent.select().count() == 1000
