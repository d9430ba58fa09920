"""The WPSec webhooks (openapi.yaml, README.md "WordPress sites (WPSec)") and their strict semantics, rule by rule."""
import json

import pytest

import models
from models import Backup, BackupEvent, Execution, ExecutionLog, Website
from remote_backups import link_execution
from support import TOKEN

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
    link_execution(site.id, "backup_1", execution.id)
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
    link_execution(site.id, "early", execution.id)
    assert Execution.get_by_id(execution.id).progress == 41
    assert Backup.select().count() == 1


# --- no rate limit -------------------------------------------------------------------

def test_webhooks_are_not_rate_limited(backhook_env, monkeypatch, site):
    from app import create_app
    monkeypatch.setenv("BACKHOOK_RATELIMIT_ENABLED", "true")
    limited = create_app({"TESTING": True}).test_client()
    codes = {limited.post(ROUTES[0], headers=HEADERS, json={"domain": "example.com", "backup_id": f"b{n}"}).status_code
             for n in range(30)}
    assert codes == {200}
