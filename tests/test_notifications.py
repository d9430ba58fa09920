"""Notifications: which events queue which messages, and how the workers deliver them (issue 16).

The receivers are real HTTP servers on loopback. Signatures are checked with
the test's own HMAC code, not backhook's.
"""
import base64
import hashlib
import hmac
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import leases
import models
import notifications
import outbox
from models import Execution, Job, Notification, NotificationOutbox, Website, now_ms
from statuses import ExecutionStatus, NotifyOn, Stage
from support import TOKEN, run_in_process, trigger, wait_for_status, wait_until


class Receiver:
    """A threaded HTTP server on loopback that records each request and answers `status` (or hangs)."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.hanging = threading.Event()  # while set, every request waits for `release`
        self.release = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    receiver.arrived.notify_all()
                if receiver.hanging.is_set():
                    receiver.release.wait(30)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count, timeout=20):
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests
        return self.requests

    def events(self):
        return [json.loads(request["body"])["event"] for request in self.requests]

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = [Receiver()]
    yield made[0]
    made[0].stop()


@pytest.fixture
def second_receiver():
    other = Receiver()
    yield other
    other.stop()


def independent_signature(secret, headers, body):
    """Standard Webhooks, written here from the specification and not taken from backhook."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def courier(**options):
    return outbox.Courier("test-courier", options.pop("timeout_seconds", 5), **options)


def deliver(courier_):
    courier_.deliver_due()
    courier_.wait(30)


def command_job(make_job, command="echo payload", name="cmd", **fields):
    return make_job(name=name, source=f"command:{command}", **fields)


def messages(**where):
    query = NotificationOutbox.select().order_by(NotificationOutbox.id)
    for name, value in where.items():
        query = query.where(getattr(NotificationOutbox, name) == value)
    return list(query)


# --- what queues a message --------------------------------------------------------------

def test_success_failure_and_cancel_each_queue_one_message(app, make_job, receiver):
    ok, broken = command_job(make_job), command_job(make_job, "echo oops >&2; exit 3", name="broken")
    notifications.add(receiver.url + "/hook", on=NotifyOn.ALWAYS)
    succeeded = run_in_process(ok)
    failed = run_in_process(broken)
    pending = Execution.enqueue(ok)
    Execution.cancel(pending.id)
    assert [(m.event, m.execution_id) for m in messages()] == [
        ("success", succeeded.id), ("failure", failed.id), ("cancel", pending.id)]
    failure = json.loads(messages(event="failure")[0].payload)
    assert failure["execution"]["status"] == "Failed" and "oops" in failure["execution"]["error"]
    assert "oops" in failure["logTail"] and failure["job"] == {"id": broken.id, "name": "broken"}
    deliver(courier())
    assert sorted(receiver.events()) == ["cancel", "failure", "success"]
    assert {m.status for m in messages()} == {"sent"}


def test_the_default_on_failure_hears_failures_not_successes(app, make_job, receiver):
    notifications.add(receiver.url + "/hook")
    run_in_process(command_job(make_job))
    failed = run_in_process(command_job(make_job, "exit 1", name="broken"))
    assert [(m.event, m.execution_id) for m in messages()] == [("failure", failed.id)]


def test_a_notification_of_one_job_hears_nothing_of_another(app, make_job, receiver):
    mine, other = command_job(make_job, "exit 1", name="mine"), command_job(make_job, "exit 1", name="other")
    notifications.add(receiver.url + "/hook", job=mine)
    run_in_process(other)
    assert messages() == []
    run_in_process(mine)
    assert [m.job_id for m in messages()] == [mine.id]


def test_restores_notify_only_their_failures_and_pings_follow_only_backups():
    webhook, ping = Notification(kind="webhook", on_event="always"), Notification(kind="ping", on_event="always")
    assert notifications.wants(webhook, "failure", "Restore") and not notifications.wants(webhook, "success", "Restore")
    assert not notifications.wants(ping, "failure", "Restore") and not notifications.wants(ping, "start", "Restore")
    assert all(notifications.wants(ping, event) for event in ("start", "success", "failure", "cancel"))
    assert not notifications.wants(ping, "overdue") and not notifications.wants(ping, "size_drop")
    assert not notifications.wants(webhook, "start")


def test_a_retention_error_queues_one_message_and_no_success(app, make_job, receiver):
    job = command_job(make_job, keep=1)
    notifications.add(receiver.url + "/hook", on=NotifyOn.ALWAYS)
    first = run_in_process(job)
    artifact = Path(first.path)
    artifact.unlink()
    artifact.mkdir()  # a directory where the artifact was: deleting it fails
    (artifact / "inside").write_text("x")
    second = run_in_process(job)
    assert second.status == "Success" and second.retention_error
    assert [(m.event, m.execution_id) for m in messages()] == [("success", first.id), ("retention_error", second.id)]
    shutil.rmtree(artifact)


def test_a_reclaimed_backup_that_was_pruning_reports_its_retention_error(app, make_job, receiver):
    job = command_job(make_job)
    notifications.add(receiver.url + "/hook", on=NotifyOn.ALWAYS)
    execution = Execution.enqueue(job)
    (claimed,) = leases.claim("dead-worker", 1)
    with models.database.atomic():
        Execution.update(status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION, size=10).where(
            Execution.id == execution.id).execute()
    assert leases.requeue_or_fail(Execution.get_by_id(execution.id), [])
    assert [m.event for m in messages()] == ["retention_error"]


def test_a_wpsec_backup_failed_webhook_queues_one_failure(client, make_job, receiver):
    with models.database.atomic():
        Website.create(domain="example.com")
    site_job = make_job(name="site", source="wpsec://example.com")
    notifications.add(receiver.url + "/mine", job=site_job)
    notifications.add(receiver.url + "/all")
    notifications.add(receiver.url + "/success", on=NotifyOn.SUCCESS)
    body = {"domain": "Example.com.", "backup_id": "b-1", "error_message": "disk full"}
    for _ in range(2):  # the repeat changes nothing, so it queues nothing
        response = client.post("/webhooks/backup-failed", json=body, headers={"x-wpfort-token": TOKEN})
        assert response.status_code == 200
    queued = messages()
    assert sorted(m.notification.url.rsplit("/", 1)[1] for m in queued) == ["all", "mine"]
    document = json.loads(queued[0].payload)
    assert document["event"] == "failure" and document["execution"] is None
    assert document["website"] == {"domain": "example.com", "backupId": "b-1", "error": "disk full"}


def test_a_failed_wpsec_backup_of_an_execution_is_reported_once_as_its_failure(client, make_job, receiver):
    from remote_backups import link_execution

    with models.database.atomic():
        site = Website.create(domain="example.com")
    job = make_job(name="site", source="wpsec://example.com")
    notifications.add(receiver.url + "/hook")
    execution = Execution.enqueue(job)
    leases.claim("a-worker", 60_000)
    link_execution(site.id, "b-7", execution.id)
    response = client.post("/webhooks/backup-failed", json={"domain": "example.com", "backup_id": "b-7"},
                           headers={"x-wpfort-token": TOKEN})
    assert response.status_code == 200
    assert [(m.event, m.execution_id) for m in messages()] == [("failure", execution.id)]


def test_a_notification_that_cannot_be_queued_never_undoes_the_end_of_the_run(
        app, make_job, receiver, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    notifications.add(receiver.url + "/hook", on=NotifyOn.ALWAYS)
    monkeypatch.setattr(notifications, "document", broken)
    execution = run_in_process(command_job(make_job))
    assert (execution.status, execution.stage) == ("Success", "Completed") and messages() == []


def test_overdue_fires_once_per_period_by_an_injected_clock(app, make_job, receiver):
    job = command_job(make_job)
    notifications.add(receiver.url + "/hook", job=job, on=NotifyOn.OVERDUE, overdue_hours=1)
    hour = 3_600_000
    start = job.created_at
    notifications.check_overdue(now=start + hour - 1)
    assert messages() == []
    for minutes in (61, 62, 90, 119):  # several ticks, and several workers, in the first overdue hour
        notifications.check_overdue(now=start + minutes * 60_000)
        notifications.check_overdue(now=start + minutes * 60_000)
    assert [m.event for m in messages()] == ["overdue"]
    notifications.check_overdue(now=start + 2 * hour + 1)
    assert len(messages(event="overdue")) == 2
    succeeded = run_in_process(job)
    notifications.check_overdue(now=succeeded.ended_at + hour - 1)
    assert len(messages(event="overdue")) == 2
    notifications.check_overdue(now=succeeded.ended_at + hour)
    assert len(messages(event="overdue")) == 3
    assert "no successful backup for 1 h" in json.loads(messages(event="overdue")[-1].payload)["message"]


def test_a_disabled_job_is_never_overdue(app, make_job, receiver):
    job = command_job(make_job, enabled=False)
    notifications.add(receiver.url + "/hook", on=NotifyOn.ALWAYS, overdue_hours=1)
    notifications.check_overdue(now=job.created_at + 10 * 3_600_000)
    assert messages() == []


def test_an_artifact_under_half_the_median_size_is_reported(app, make_job, receiver):
    job = command_job(make_job)
    notifications.add(receiver.url + "/hook", on=NotifyOn.OVERDUE, overdue_hours=24)
    with models.database.atomic():
        for size in (1000, 900, 1100, 5000):
            Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, stage=Stage.COMPLETED, size=size)
        usual = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION,
                                 size=600)
        Execution.transition(usual.id, ExecutionStatus.SUCCESS, dict(stage=Stage.COMPLETED))
    assert messages() == []  # 600 is not under half of the median, 1000
    with models.database.atomic():
        small = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION,
                                 size=400)
        Execution.transition(small.id, ExecutionStatus.SUCCESS, dict(stage=Stage.COMPLETED))
    assert [(m.event, m.execution_id) for m in messages()] == [("size_drop", small.id)]


# --- delivery ----------------------------------------------------------------------------

def test_a_webhook_is_signed_the_standard_webhooks_way(app, make_job, receiver):
    job = command_job(make_job)
    notification = notifications.add(receiver.url + "/hook", on=NotifyOn.SUCCESS)
    execution = run_in_process(job)
    deliver(courier())
    (request,) = receiver.wait_for(1)
    headers = request["headers"]
    assert headers["webhook-signature"] == independent_signature(notification.secret, headers, request["body"])
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 600
    assert headers["webhook-id"] == messages()[0].id
    document = json.loads(request["body"])
    assert document["event"] == "success"
    assert set(document["execution"]) == {"id", "jobId", "jobName", "type", "status", "progress", "stage",
                                          "startedAt", "endedAt", "duration", "size", "path", "error"}
    assert document["execution"]["id"] == execution.id and document["execution"]["status"] == "Success"
    assert messages()[0].status == "sent"


def test_a_failing_endpoint_is_retried_with_backoff_and_another_is_served_meanwhile(
        app, make_job, receiver, second_receiver):
    receiver.status = 503
    notifications.add(receiver.url + "/down")
    notifications.add(second_receiver.url + "/up")
    run_in_process(command_job(make_job, "exit 1"))
    clock = [now_ms()]
    sender = courier(clock=lambda: clock[0])
    deliver(sender)
    assert len(receiver.wait_for(1)) == 1 and len(second_receiver.wait_for(1)) == 1
    (down,) = [m for m in messages() if m.notification.url.endswith("/down")]
    assert (down.status, down.attempts, down.next_attempt_at) == ("pending", 1, clock[0] + 30_000)
    assert down.last_error == "HTTP 503"
    clock[0] += 29_000
    deliver(sender)
    assert len(receiver.requests) == 1  # not due yet
    clock[0] += 1_000
    deliver(sender)
    receiver.wait_for(2)
    down = NotificationOutbox.get_by_id(down.id)
    assert (down.attempts, down.next_attempt_at) == (2, clock[0] + 60_000)
    receiver.status = 200
    clock[0] += 60_000
    deliver(sender)
    assert NotificationOutbox.get_by_id(down.id).status == "sent"
    assert len(second_receiver.requests) == 1
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {down.id}  # one message, retried


def test_a_notifications_messages_go_out_in_order_even_across_a_retry(app, make_job, receiver):
    receiver.status = 503
    ping = notifications.add(receiver.url + "/ping", ping=True)
    job = command_job(make_job)
    with models.database.atomic():
        for event in ("start", "success"):
            notifications.queue([ping], event, notifications.document(event, event, job))
    clock = [now_ms()]
    sender = courier(clock=lambda: clock[0])
    deliver(sender)
    assert [r["path"] for r in receiver.wait_for(1)] == ["/ping/start"]
    deliver(sender)
    assert len(receiver.requests) == 1  # the success waits behind the /start's retry
    receiver.status = 200
    clock[0] += 30_000
    deliver(sender)
    assert [r["path"] for r in receiver.wait_for(3)] == ["/ping/start", "/ping/start", "/ping"]


def test_messages_queued_in_one_millisecond_keep_their_order(app, make_job):
    ping = notifications.add("https://hc.example/ping", ping=True)
    job = command_job(make_job)
    with models.database.atomic():
        for event in ("start", "success") * 50:  # far more than fit in distinct milliseconds
            notifications.queue([ping], event, notifications.document(event, event, job))
    queued = list(models.NotificationOutbox.select().order_by(models.NotificationOutbox.id))
    assert [message.event for message in queued] == ["start", "success"] * 50


def test_a_message_fails_after_its_last_attempt(app, make_job, receiver):
    receiver.status = 500
    notifications.add(receiver.url + "/down")
    run_in_process(command_job(make_job, "exit 1"))
    clock = [now_ms()]
    sender = courier(clock=lambda: clock[0])
    for _ in range(outbox.MAX_ATTEMPTS):
        deliver(sender)
        clock[0] += outbox.LONGEST_RETRY_SECONDS * 1000
    (message,) = messages()
    assert (message.status, message.attempts) == ("failed", outbox.MAX_ATTEMPTS)
    deliver(sender)
    assert len(receiver.requests) == outbox.MAX_ATTEMPTS


def test_delivery_failures_are_logged_without_the_url_or_the_secret(app, make_job, receiver, caplog):
    receiver.status = 500
    port = receiver.url.rsplit(":", 1)[1]
    webhook = notifications.add(receiver.url + "/hook/path-token-4711")
    notifications.add(f"json://someone:apprise-password-4711@127.0.0.1:{port}/apprise-path-4711")
    run_in_process(command_job(make_job, "exit 1"))
    deliver(courier())
    assert len(receiver.wait_for(2)) == 2
    logged = caplog.text
    assert f"127.0.0.1:{port}" in logged and "HTTP 500" in logged and "json://" in logged
    assert "4711" not in logged and webhook.secret not in logged and webhook.secret[6:] not in logged
    assert all("4711" not in m.last_error for m in messages())


def test_a_hanging_endpoint_does_not_hold_up_another(app, make_job, receiver, second_receiver):
    receiver.hanging.set()
    notifications.add(receiver.url + "/hangs")
    notifications.add(second_receiver.url + "/answers")
    run_in_process(command_job(make_job, "exit 1"))
    sender = courier(timeout_seconds=20)
    sender.deliver_due()
    receiver.wait_for(1)
    second_receiver.wait_for(1)
    assert not receiver.release.is_set()  # the other arrived while this one still hangs
    wait_until(lambda: any(m.status == "sent" for m in messages()), message="the answered message to be sent")
    receiver.release.set()
    sender.wait(30)
    assert {m.status for m in messages()} == {"sent"}


def test_an_apprise_url_is_sent_through_apprise(app, make_job, receiver):
    notifications.add(f"json://127.0.0.1:{receiver.url.rsplit(':', 1)[1]}/apprise")
    run_in_process(command_job(make_job, "echo broken >&2; exit 2", name="nightly-db"))
    deliver(courier())
    (request,) = receiver.wait_for(1)
    body = json.loads(request["body"])
    assert request["path"] == "/apprise" and body["title"] == "backhook: failure (nightly-db)"
    assert "failed" in body["message"] and "broken" in body["message"] and body["type"] == "failure"
    assert messages()[0].status == "sent"


def test_a_ping_url_hears_fail_with_the_log_tail(app, make_job, receiver):
    notifications.add(receiver.url + "/ping/abc?rid=1", ping=True, on=NotifyOn.ALWAYS)
    run_in_process(command_job(make_job, "echo the-disk-is-full >&2; exit 4"))
    run_in_process(command_job(make_job, name="fine"))
    deliver(courier())
    deliver(courier())
    requests_ = receiver.wait_for(2)
    assert sorted(r["path"] for r in requests_) == ["/ping/abc/fail?rid=1", "/ping/abc?rid=1"]
    (failed,) = [r for r in requests_ if "/fail" in r["path"]]
    assert b"the-disk-is-full" in failed["body"]


# --- end to end, with worker processes ------------------------------------------------

def test_a_backup_completes_while_its_ping_endpoint_hangs(client, auth, make_job, receiver, start_worker):
    receiver.hanging.set()
    notifications.add(receiver.url + "/ping", ping=True, on=NotifyOn.ALWAYS)
    job = command_job(make_job)
    start_worker(BACKHOOK_NOTIFY_TIMEOUT_SECONDS="30")
    execution_id = trigger(client, auth, job.id)
    receiver.wait_for(1)  # /start, held by the receiver
    assert wait_for_status(client, auth, execution_id)["status"] == "Success"
    assert not receiver.release.is_set() and len(receiver.requests) == 1
    receiver.release.set()
    assert [r["path"] for r in receiver.wait_for(2)] == ["/ping/start", "/ping"]


def test_a_message_survives_a_worker_killed_while_sending_it(client, auth, make_job, receiver, start_worker):
    receiver.hanging.set()
    notifications.add(receiver.url + "/hook")
    job = command_job(make_job, "exit 1")
    worker = start_worker(BACKHOOK_NOTIFY_TIMEOUT_SECONDS="2")  # a 6 s lease
    wait_for_status(client, auth, trigger(client, auth, job.id))
    receiver.wait_for(1)
    worker.stop(sig=9)
    receiver.hanging.clear()
    receiver.release.set()
    start_worker(BACKHOOK_NOTIFY_TIMEOUT_SECONDS="2")
    wait_until(lambda: messages()[0].status == "sent", timeout=30, message="the message to be sent again")
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert len(receiver.requests) == 2 and ids == {messages()[0].id}


# --- the commands -------------------------------------------------------------------------

def test_notify_add_prints_the_secret_once_and_list_never_shows_it(runner, make_job, receiver):
    job = make_job()
    added = runner("notify", "add", receiver.url + "/hook", "--job", job.name, "--on", "always")
    assert added.exit_code == 0, added.output
    *_, notification_id, _note, secret = added.output.splitlines()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert Notification.get_by_id(notification_id).job_id == job.id
    listed = runner("notify", "list")
    assert listed.exit_code == 0 and notification_id in listed.output and receiver.url in listed.output
    assert secret not in listed.output and secret[6:] not in listed.output


def test_notify_test_sends_one_signed_message(runner, receiver):
    added = runner("notify", "add", receiver.url + "/hook")
    secret = added.output.splitlines()[-1]
    notification_id = added.output.splitlines()[1]
    result = runner("notify", "test", notification_id)
    assert result.exit_code == 0, result.output
    (request,) = receiver.wait_for(1)
    assert json.loads(request["body"])["event"] == "test"
    assert request["headers"]["webhook-signature"] == independent_signature(secret, request["headers"],
                                                                            request["body"])
    assert [m.status for m in messages()] == ["sent"]


def test_notify_test_to_a_failing_endpoint_says_so_without_the_secret(runner, receiver):
    receiver.status = 500
    added = runner("notify", "add", receiver.url + "/hook")
    secret = added.output.splitlines()[-1]
    result = runner("notify", "test", added.output.splitlines()[1])
    assert result.exit_code == 1 and "HTTP 500" in result.output and secret not in result.output
    assert [m.status for m in messages()] == ["failed"]  # a test is not retried: its sender was told


@pytest.mark.parametrize("url", ["nonsense://host/path", "slack://", "tgram://", "ftp://example.com/x"])
def test_notify_add_refuses_a_url_apprise_cannot_use(runner, url):
    result = runner("notify", "add", url)
    assert result.exit_code != 0 and "apprise cannot send to this URL" in result.output
    assert Notification.select().count() == 0


@pytest.mark.parametrize("options, reason", [
    (["--on", "overdue"], "needs --overdue-hours"),
    (["--on", "failure", "--overdue-hours", "3"], "goes with --on overdue"),
    (["--ping", "--on", "failure"], "hears of every backup"),
    (["--job", "nope"], "no job with the name or id"),
])
def test_notify_add_refuses_options_that_do_not_go_together(runner, options, reason):
    result = runner("notify", "add", "https://example.com/hook", *options)
    assert result.exit_code != 0 and reason in result.output


def test_an_apprise_token_is_hidden_in_the_list(runner):
    token = "123456789:abcdefghijklmnopqrstu"
    assert runner("notify", "add", f"tgram://{token}/987654/").exit_code == 0
    listed = runner("notify", "list")
    assert listed.exit_code == 0 and "tgram://" in listed.output and token not in listed.output


def test_notify_remove_drops_the_notification_and_its_unsent_messages(runner, make_job, receiver):
    notification = notifications.add(receiver.url + "/hook")
    run_in_process(command_job(make_job, "exit 1"))
    assert len(messages()) == 1
    result = runner("notify", "remove", notification.id)
    assert result.exit_code == 0 and Notification.select().count() == 0 and messages() == []
    assert runner("notify", "remove", notification.id).exit_code != 0


def test_deleting_a_job_deletes_its_notifications(runner, make_job, receiver):
    job = make_job()
    notifications.add(receiver.url + "/hook", job=job)
    assert runner("jobs", "delete", job.name).exit_code == 0
    assert Notification.select().count() == 0 and Job.select().count() == 0
