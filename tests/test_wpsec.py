"""The WPSec client against a stand-in plugin on loopback, and the worker-side WPSec chores."""
import json
import logging
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

import models
import wpsec
from models import Backup, Execution, ExecutionLog, Website
from spool import replay_spool
from support import TOKEN, wait_until

SITE_KEY = "site-key-0123456789abcdef"
SIGNATURE = "X-Signature=sig-0123456789abcdef-secret"  # a download_url's signed query, never to be shown


class FileServer:
    """Serves the site's backup files on loopback, as a store behind a signed download_url does.

    `files` maps a path (`/files/wp-1.zip`) to its bytes; a request without
    the SIGNATURE query gets 403. `faults`, per request in order:
    ("status", code) | ("cut", bytes, send_length): the body stops after
    `bytes`, with the whole file's Content-Length when `send_length` |
    ("stall", bytes, send_length): the same, then nothing until `released`
    is set (`stalled` is set once the bytes are sent).
    """

    def __init__(self):
        self.files, self.faults, self.requests = {}, [], []  # requests: (path, query, x-api-key)
        self.stalled, self.released = threading.Event(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def handler(self):
        files = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                files.requests.append((url.path, url.query, self.headers.get("x-api-key")))
                fault = files.faults.pop(0) if files.faults else None
                data = files.files.get(url.path)
                if fault and fault[0] == "status":
                    code = fault[1]
                elif data is None:
                    code = 404
                else:
                    code = 200 if url.query == SIGNATURE else 403
                if code != 200:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if not fault or fault[2]:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[:fault[1]] if fault else data)
                if fault and fault[0] == "stall":
                    self.wfile.flush()
                    files.stalled.set()
                    files.released.wait(60)

        return Handler

    def download_url(self, path):
        return f"{self.url}{path}?{SIGNATURE}"

    def stop(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


class StandInSite:
    """A WPSec plugin as documented: backup/start, backup/status/<id>, backup/list; scriptable faults.

    A backup given a file (`give_file`) is listed with its size and a
    download_url on `file_server` (a FileServer), or on the site itself
    (`download_on_site`), which redirects to the file server.
    """

    def __init__(self, file_server=None):
        self.backups = {}
        self.file_server = file_server
        self.download_on_site = False
        self.download_urls = {}  # backup id -> a download_url listed as it is, whatever the files
        self.requests = []      # (method, route, x-api-key, body)
        self.faults = []        # per request, in order: ("status", code) | ("slow", seconds) | ("malformed",)
        self.wrapped_list = False
        self.on_request = None  # called in the server thread before each answer
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def routes(self, method=None):
        return [route for m, route, _, _ in self.requests if method in (None, m)]

    def answer(self, method, route, body):
        if route == "backup/start" and method == "POST":
            backup_id = f"wp-{len(self.backups) + 1}"
            self.backups[backup_id] = {"id": backup_id, "status": "pending", "progress": 0,
                                       "started_at": "2026-11-22 10:00:00"}
            return 200, {"backup_id": backup_id}
        if route.startswith("backup/status/") and method == "GET":
            found = self.backups.get(route.split("/", 2)[2])
            return (200, found) if found else (404, {"error": "not found"})
        if route == "backup/list" and method == "GET":
            listing = [self.listed(b) for b in self.backups.values()]
            return 200, ({"success": True, "data": {"backups": listing}} if self.wrapped_list else listing)
        return 404, {"error": "unknown endpoint"}

    def give_file(self, backup_id, data):
        """The backup's archive, listed with its size and a download_url from now on."""
        self.file_server.files[f"/files/{backup_id}.zip"] = data

    def listed(self, backup):
        entry = {"id": backup["id"], "type": "full", "size": 1024, "created_at": backup["started_at"],
                 "status": backup["status"]}
        path = f"/files/{backup['id']}.zip"
        if self.file_server and path in self.file_server.files:
            entry["size"] = len(self.file_server.files[path])
            entry["download_url"] = (f"{self.url}/download{path}?{SIGNATURE}" if self.download_on_site
                                     else self.file_server.download_url(path))
        if backup["id"] in self.download_urls:
            entry["download_url"] = self.download_urls[backup["id"]]
        return entry

    def handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def respond(self, method):
                route = parse_qs(urlparse(self.path).query).get("wpsec_endpoint", [""])[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                site.requests.append((method, route, self.headers.get("x-api-key"), body))
                fault = site.faults.pop(0) if site.faults else None
                if site.on_request:
                    site.on_request()
                if fault and fault[0] == "slow":
                    site.released.wait(fault[1])
                if self.headers.get("x-api-key") != SITE_KEY:
                    code, payload = 401, {"error": "bad key"}
                else:
                    code, payload = site.answer(method, route, body)
                data = json.dumps(payload).encode()
                if fault and fault[0] == "status":
                    code, data = fault[1], b"<html>upstream error</html>"
                elif fault and fault[0] == "malformed":
                    data = b'{"backup_id": '
                self.send_response(code)
                if fault and fault[0] == "status" and len(fault) > 2:
                    self.send_header("Retry-After", str(fault[2]))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/download/"):  # the site's own download link, to its store
                    site.requests.append(("GET", "download", self.headers.get("x-api-key"), None))
                    self.send_response(302)
                    self.send_header("Location", site.file_server.url + self.path.removeprefix("/download"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.respond("GET")

            def do_POST(self):
                self.respond("POST")

        return Handler

    def stop(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    site = StandInSite()
    yield site
    site.stop()


def quicken_retries(monkeypatch, timeout_seconds):
    """wpsec's retry policy, with backoff and timeouts scaled down to test speed."""
    monkeypatch.setattr(wpsec, "BACKOFF_FACTOR", 0.01)
    monkeypatch.setattr(wpsec, "BACKOFF_JITTER", 0.01)
    monkeypatch.setattr(wpsec, "READ_TIMEOUT", timeout_seconds)
    monkeypatch.setattr(wpsec, "CONNECT_TIMEOUT", timeout_seconds)
    wpsec._sync_failures.clear()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    quicken_retries(monkeypatch, 0.5)
    monkeypatch.setattr(wpsec, "RETRY_AFTER_MAX", 0.05)
    wpsec._last_poll.clear()


@pytest.fixture
def site(app, stand_in):
    with models.database.atomic():
        return Website.create(domain="example.com", wpsec_url=stand_in.url + "/", wpsec_api_key=SITE_KEY)


# --- the client ---------------------------------------------------------------------------

def test_start_posts_a_full_backup_with_the_api_key(site, stand_in):
    assert wpsec.start_backup(site) == "wp-1"
    assert stand_in.requests == [("POST", "backup/start", SITE_KEY, {"type": "full", "incremental": False})]


def test_status_reads_one_backup(site, stand_in):
    wpsec.start_backup(site)
    answer = wpsec.backup_status(site, "wp-1")
    assert answer["id"] == "wp-1" and answer["status"] == "pending"
    assert stand_in.routes("GET") == ["backup/status/wp-1"]


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare-list", "success-data-backups"])
def test_list_accepts_both_documented_shapes(site, stand_in, wrapped):
    stand_in.wrapped_list = wrapped
    wpsec.start_backup(site)
    assert [entry["id"] for entry in wpsec.list_backups(site)] == ["wp-1"]


@pytest.mark.parametrize("code", [500, 502, 503, 504, 429])
def test_get_is_retried_after_a_server_error(site, stand_in, code):
    stand_in.faults = [("status", code), ("status", code)]
    assert wpsec.list_backups(site) == []
    assert stand_in.routes() == ["backup/list"] * 3


def test_a_huge_retry_after_is_capped(site, stand_in):
    stand_in.faults = [("status", 503, 3600)]
    started = time.monotonic()
    assert wpsec.list_backups(site) == []
    assert time.monotonic() - started < 5
    assert len(stand_in.requests) == 2


def test_get_gives_up_after_its_retries(site, stand_in, caplog):
    stand_in.faults = [("status", 503)] * 10
    with pytest.raises(wpsec.WpsecError, match="HTTP 503"):
        wpsec.list_backups(site)
    assert len(stand_in.requests) == 1 + wpsec.RETRIES


def test_slow_answer_times_out_and_is_retried(site, stand_in):
    stand_in.faults = [("slow", 2.0)]
    assert wpsec.list_backups(site) == []
    assert len(stand_in.requests) == 2


def test_start_is_not_retried_once_the_request_was_sent(site, stand_in):
    # A retried start could start a second backup on the site.
    stand_in.faults = [("status", 503)]
    with pytest.raises(wpsec.WpsecError):
        wpsec.start_backup(site)
    stand_in.faults = [("slow", 2.0)]
    with pytest.raises(wpsec.WpsecError, match="Timeout"):
        wpsec.start_backup(site)
    assert stand_in.routes() == ["backup/start", "backup/start"]


def test_connection_refused_is_retried_then_raised(app):
    site = Website(domain="down.example", wpsec_url="http://127.0.0.1:9", wpsec_api_key=SITE_KEY)
    with pytest.raises(wpsec.WpsecError, match="ConnectionError"):
        wpsec.list_backups(site)


@pytest.mark.parametrize("call", [wpsec.start_backup, wpsec.list_backups,
                                  lambda site: wpsec.backup_status(site, "wp-1")],
                         ids=["start", "list", "status"])
def test_malformed_json_answer_is_an_error(site, stand_in, call):
    wpsec.start_backup(site)
    stand_in.faults = [("malformed",)]
    with pytest.raises(wpsec.WpsecError, match="not valid JSON"):
        call(site)


def test_wrong_api_key_is_an_error(site, stand_in):
    site.wpsec_api_key = "wrong"
    with pytest.raises(wpsec.WpsecError, match="HTTP 401"):
        wpsec.list_backups(site)


def test_errors_are_logged_with_site_and_route_but_never_the_key(site, stand_in, caplog):
    stand_in.faults = [("status", 500)] * 10
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(wpsec.WpsecError) as raised:
            wpsec.list_backups(site)
    assert "example.com" in caplog.text and "backup/list" in caplog.text
    assert SITE_KEY not in caplog.text and SITE_KEY not in str(raised.value)


def test_sync_website_stores_the_list_and_the_time(site, stand_in):
    wpsec.start_backup(site)
    assert wpsec.sync_website(site) is True
    stored = Website.get_by_id(site.id)
    assert [entry["id"] for entry in json.loads(stored.remote_backups)] == ["wp-1"]
    assert stored.synced_at is not None


def test_sync_website_failure_keeps_the_previous_list(site, stand_in):
    Website.update(remote_backups='[{"id": "old"}]', synced_at=1).execute()
    stand_in.faults = [("malformed",)]
    assert wpsec.sync_website(site) is False
    assert Website.get_by_id(site.id).remote_backups == '[{"id": "old"}]'


# --- syncing after complete -----------------------------------------------------------------

def complete(client, backup_id="wp-1"):
    return client.post("/webhooks/backup-complete", headers={"x-wpfort-token": TOKEN},
                       json={"domain": "example.com", "backup_id": backup_id})


def test_requested_sync_fetches_the_list_and_clears_the_request(client, site, stand_in):
    complete(client)
    assert stand_in.requests == []  # the webhook did not call the site
    assert wpsec.sync_requested_websites() == 1
    stored = Website.get_by_id(site.id)
    assert stored.sync_requested_at is None and stored.synced_at is not None
    assert stand_in.routes() == ["backup/list"]
    assert wpsec.sync_requested_websites() == 0


def test_a_request_renewed_during_the_sync_is_kept(client, site, stand_in):
    complete(client)
    requested = Website.get_by_id(site.id).sync_requested_at

    def renew_while_the_site_answers():
        with models.database.connection_context():  # the server thread's own connection
            Website.update(sync_requested_at=requested + 1).execute()

    stand_in.on_request = renew_while_the_site_answers
    assert wpsec.sync_requested_websites() == 1
    assert Website.get_by_id(site.id).sync_requested_at == requested + 1


def test_a_failing_site_is_retried_later_not_every_call(client, site, stand_in):
    complete(client)
    stand_in.faults = [("status", 500)] * 4
    assert wpsec.sync_requested_websites() == 0
    assert wpsec.sync_requested_websites() == 0
    assert len(stand_in.requests) == 1 + wpsec.RETRIES  # the second call waited for its backoff
    assert Website.get_by_id(site.id).sync_requested_at is not None


def test_an_execution_waits_in_syncing_while_its_sites_list_is_retried_and_ends_when_given_up(
        client, claimed, stand_in, monkeypatch):
    monkeypatch.setattr(wpsec, "SYNC_RETRY_DELAYS_MS", (0,))
    wpsec.start_remote_backup(claimed)
    complete(client)
    stand_in.faults = [("status", 500)] * (1 + wpsec.RETRIES)
    assert wpsec.sync_requested_websites() == 0
    assert state(claimed.id) == ("Running", "Syncing", 95)  # the list may still offer a download
    stand_in.faults = [("status", 500)] * (1 + wpsec.RETRIES)
    assert wpsec.sync_requested_websites() == 0
    assert state(claimed.id) == ("Success", "Completed", 100)
    assert "could not be fetched after 2 attempts" in " ".join(
        row.message for row in ExecutionLog.select().where(ExecutionLog.execution == claimed.id))


def test_a_reclaimed_execution_whose_backup_completed_asks_for_its_sites_list_again(client, claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    complete(client)
    Website.update(sync_requested_at=None).execute()  # the dead attempt's sync ran, and its download died
    assert wpsec.start_remote_backup(Execution.get_by_id(claimed.id)) == "wp-1"
    assert Website.get().sync_requested_at is not None
    assert state(claimed.id)[1] == "Syncing"


def test_sync_work_per_call_is_bounded(app, stand_in):
    with models.database.atomic():
        for number in range(5):
            Website.create(domain=f"s{number}.example", wpsec_url=stand_in.url, wpsec_api_key=SITE_KEY,
                           sync_requested_at=number + 1)
    assert wpsec.sync_requested_websites(limit=2) == 2
    assert Website.select().where(Website.sync_requested_at.is_null(False)).count() == 3


# --- wpsec:// executions ---------------------------------------------------------------------

@pytest.fixture
def claimed(site, make_job):
    """A wpsec:// execution as the worker leaves it after the claim."""
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://Example.com"))
    Execution.update(status="Running", started_at=models.now_ms()).where(Execution.id == execution.id).execute()
    return Execution.get_by_id(execution.id)


def state(execution_id):
    execution = Execution.get_by_id(execution_id)
    return execution.status, execution.stage, execution.progress


def hook(client, kind, **fields):
    return client.post(f"/webhooks/backup-{kind}", headers={"x-wpfort-token": TOKEN},
                       json={"domain": "example.com", "backup_id": "wp-1", **fields})


def test_wpsec_execution_driven_by_webhooks(client, claimed, stand_in):
    assert wpsec.start_remote_backup(claimed) == "wp-1"
    assert Backup.get().execution_id == claimed.id
    assert state(claimed.id) == ("Running", "Remote Backup", 5)
    hook(client, "progress", status="in_progress", progress=50)
    assert state(claimed.id) == ("Running", "Remote Backup", 50)
    hook(client, "complete")
    assert state(claimed.id) == ("Running", "Syncing", 95)
    wpsec.sync_requested_websites()
    assert state(claimed.id) == ("Success", "Completed", 100)
    execution = Execution.get_by_id(claimed.id)
    assert execution.ended_at is not None and execution.error is None
    stages = [entry.stage for entry in ExecutionLog.select().where(ExecutionLog.execution == claimed.id)]
    assert stages[:2] == ["Requesting", "Remote Backup"] and "Syncing" in stages


def test_wpsec_execution_with_lost_webhooks_is_finished_by_polling(client, claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    assert wpsec.poll_silent_remote_backups(poll_after_seconds=300) == 0  # not silent long enough
    stand_in.backups["wp-1"].update(status="in_progress", progress=30)
    assert wpsec.poll_silent_remote_backups(poll_after_seconds=0) == 1
    assert state(claimed.id) == ("Running", "Remote Backup", 32)
    stand_in.backups["wp-1"].update(status="completed", progress=100)
    wpsec.poll_silent_remote_backups(poll_after_seconds=0)
    assert state(claimed.id) == ("Running", "Syncing", 95)
    wpsec.sync_requested_websites()
    assert state(claimed.id) == ("Success", "Completed", 100)
    assert [route for route in stand_in.routes() if "status" in route] == ["backup/status/wp-1"] * 2


def test_polled_failure_fails_the_execution(claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    stand_in.backups["wp-1"].update(status="failed", error="Out of disk")
    wpsec.poll_silent_remote_backups(poll_after_seconds=0)
    assert state(claimed.id)[0] == "Failed"
    assert Execution.get_by_id(claimed.id).error == "Out of disk"


def test_a_failing_status_call_is_not_repeated_before_the_interval(claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    stand_in.faults = [("status", 500)] * 4
    wpsec.poll_silent_remote_backups(poll_after_seconds=60)  # not silent yet: nothing asked
    Backup.update(updated_at=models.now_ms() - 120_000).execute()
    assert wpsec.poll_silent_remote_backups(poll_after_seconds=60) == 0
    assert wpsec.poll_silent_remote_backups(poll_after_seconds=60) == 0
    assert stand_in.routes().count("backup/status/wp-1") == 1 + wpsec.RETRIES


def test_webhooks_are_not_polled_for_while_they_keep_coming(client, claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    Backup.update(updated_at=models.now_ms() - 120_000).execute()
    hook(client, "progress", progress=10)
    assert wpsec.poll_silent_remote_backups(poll_after_seconds=60) == 0
    assert not [route for route in stand_in.routes() if "status" in route]


def test_failed_start_fails_the_execution(claimed, stand_in):
    stand_in.faults = [("status", 500)]
    assert wpsec.start_remote_backup(claimed) is None
    status, stage, _ = state(claimed.id)
    assert (status, stage) == ("Failed", "Failed")
    error = Execution.get_by_id(claimed.id).error
    assert "backup/start" in error and SITE_KEY not in error


def test_unregistered_website_fails_the_execution(app, make_job):
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://gone.example"))
    Execution.update(status="Running").where(Execution.id == execution.id).execute()
    assert wpsec.start_remote_backup(Execution.get_by_id(execution.id)) is None
    assert "gone.example" in Execution.get_by_id(execution.id).error


def test_a_reclaimed_execution_does_not_start_a_second_backup(claimed, stand_in):
    wpsec.start_remote_backup(claimed)
    assert wpsec.start_remote_backup(Execution.get_by_id(claimed.id)) == "wp-1"
    assert stand_in.routes() == ["backup/start"]


def test_spooled_webhooks_drive_the_execution_once_replayed(client, app, claimed, stand_in, data_dir):
    wpsec.start_remote_backup(claimed)
    from events import webhook_event
    from spool import spool_event
    spool_event(data_dir, webhook_event("complete", {"domain": "example.com", "backup_id": "wp-1"}))
    assert replay_spool(data_dir) == 1
    assert state(claimed.id) == ("Running", "Syncing", 95)


class Attempt:
    """What follow_remote_backup needs of backup.Run: the execution, the owner it claimed it as, a stop signal."""

    def __init__(self, execution, owner, on_check=lambda: None):
        self.execution, self.report = execution, types.SimpleNamespace(owner=owner)
        self.stopped = threading.Event()
        self.stopped.set()  # nothing to wait for between looks: each check() is where news arrives
        self.on_check = on_check

    def check(self):
        self.on_check()


@pytest.fixture
def owned(claimed):
    Execution.update(worker_id="w-1", attempts=1).where(Execution.id == claimed.id).execute()
    return Execution.get_by_id(claimed.id)


def test_following_a_remote_backup_ends_when_its_webhook_ends_the_execution(client, owned, stand_in):
    attempt = Attempt(owned, ("w-1", 1), on_check=lambda: hook(client, "failed", error_message="Out of disk"))
    assert wpsec.follow_remote_backup(attempt) == ("ended", "Failed")
    assert stand_in.routes() == ["backup/start"]


def test_following_a_remote_backup_stops_when_another_attempt_owns_the_execution(owned, stand_in):
    assert wpsec.follow_remote_backup(Attempt(owned, ("w-2", 1))) == ("lost", None)
    assert state(owned.id) == ("Running", "Remote Backup", 5)


def test_following_a_remote_backup_whose_start_failed_returns_nothing_to_stop(owned, stand_in):
    stand_in.faults = [("status", 500)]
    assert wpsec.follow_remote_backup(Attempt(owned, ("w-1", 1))) is None
    assert state(owned.id)[:2] == ("Failed", "Failed")


# --- wpsec:// jobs through a real worker process ------------------------------------------

def trigger_site_backup(client, auth, make_job):
    job = make_job(name="wp", source="wpsec://example.com")
    execution_id = client.post(f"/api/jobs/{job.id}/run", headers=auth).get_json()["executionId"]
    wait_until(lambda: Backup.get_or_none(Backup.execution == execution_id), timeout=20,
               message="the worker to start the remote backup")
    return execution_id


def test_worker_runs_a_site_backup_driven_by_webhooks(client, auth, site, make_job, stand_in, start_worker):
    start_worker()
    execution_id = trigger_site_backup(client, auth, make_job)
    assert stand_in.routes("POST") == ["backup/start"]
    hook(client, "progress", status="in_progress", progress=40)
    assert state(execution_id) == ("Running", "Remote Backup", 41)
    hook(client, "complete")
    wait_until(lambda: state(execution_id) == ("Success", "Completed", 100), timeout=20,
               message="the worker's list sync to finish the execution")
    assert "backup/list" in stand_in.routes("GET")
    assert json.loads(Website.get().remote_backups)[0]["id"] == "wp-1"


def test_worker_finishes_a_site_backup_whose_webhooks_are_lost(client, auth, site, make_job, stand_in,
                                                               start_worker):
    start_worker(BACKHOOK_WPSEC_POLL_AFTER="0.5")
    execution_id = trigger_site_backup(client, auth, make_job)
    stand_in.backups["wp-1"].update(status="completed", progress=100)
    wait_until(lambda: state(execution_id)[0] == "Success", timeout=20,
               message="polling to notice the finished remote backup")
    assert "backup/status/wp-1" in stand_in.routes("GET")


def test_cancelling_a_running_site_backup_ends_it_cancelled(client, auth, site, make_job, stand_in,
                                                            start_worker):
    start_worker()
    execution_id = trigger_site_backup(client, auth, make_job)
    assert client.post(f"/api/executions/{execution_id}/cancel", headers=auth).status_code == 200
    wait_until(lambda: state(execution_id)[0] == "Cancelled", timeout=5, message="the cancel to land")


def test_a_site_backup_its_webhook_ended_is_reported_as_ended_not_as_a_lost_lease(
        client, auth, site, make_job, stand_in, start_worker):
    worker = start_worker(BACKHOOK_LEASE_SECONDS="1")  # renewals come often, and notice the end too
    execution_id = trigger_site_backup(client, auth, make_job)
    hook(client, "failed", error_message="Out of disk")
    assert state(execution_id)[0] == "Failed"
    wait_until(lambda: "ended Failed by its remote backup's webhook" in worker.output(), timeout=10,
               message="the worker to say how the execution ended")
    assert "lease lost" not in worker.output()
    assert Execution.get_by_id(execution_id).attempts == 1
