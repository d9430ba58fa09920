"""The dashboard over HTTP (Flask's client): sessions, CSRF, headers and pages that follow the key's permissions."""
import hashlib
import re

import pytest

import models
from app import create_app
from models import ApiKey, DashboardSession, Execution, ExecutionLog, Setting, Website
from routes.dashboard import SESSION_COOKIE, SIGN_IN_COOKIE
from statuses import ExecutionStatus, ExecutionType

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page):
    return CSRF.search(page.get_data(as_text=True)).group(1)


def sign_in(client, key):
    token = csrf_of(client.get("/sign-in"))
    return client.post("/sign-in", data={"key": key, "csrf_token": token})


@pytest.fixture
def signed_in(client, make_key):
    """A client signed in with a key holding every permission; returns (client, key secret, csrf token)."""
    def open_with(*permissions):
        key = make_key(*permissions)
        assert sign_in(client, key).status_code == 303
        return key, csrf_of(client.get("/settings"))

    return open_with


def cookie_header(response, name):
    return next(header for header in response.headers.getlist("Set-Cookie") if header.startswith(name + "="))


# --- sessions ------------------------------------------------------------------

def test_a_page_without_a_session_goes_to_the_sign_in_form(client):
    response = client.get("/jobs")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"


def test_signing_in_sets_an_httponly_strict_cookie_whose_secret_is_stored_only_hashed(client, make_key):
    response = sign_in(client, make_key())
    assert response.status_code == 303 and response.headers["Location"] == "/"
    header = cookie_header(response, SESSION_COOKIE)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" not in header
    secret = header.split(";")[0].split("=", 1)[1]
    [row] = DashboardSession.select()
    assert row.id == hashlib.sha256(secret.encode()).hexdigest() and secret not in row.id
    assert client.get("/jobs").status_code == 200


def test_the_cookie_is_secure_over_https(app, make_key):
    client = app.test_client()
    token = csrf_of(client.get("/sign-in", base_url="https://localhost"))
    response = client.post("/sign-in", data={"key": make_key(), "csrf_token": token}, base_url="https://localhost")
    assert "Secure" in cookie_header(response, SESSION_COOKIE)


def test_the_cookie_is_secure_behind_a_trusted_https_proxy(backhook_env, monkeypatch, make_key):
    for name, value in backhook_env.items():
        monkeypatch.setenv(name, value)
    client = create_app({"TESTING": True, "TRUSTED_PROXIES": 1}).test_client()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    token = csrf_of(client.get("/sign-in", headers=proxied))
    response = client.post("/sign-in", data={"key": make_key(), "csrf_token": token}, headers=proxied)
    assert "Secure" in cookie_header(response, SESSION_COOKIE)


@pytest.mark.parametrize("key", ["", "not-a-key", "dbm_" + "Q" * 43])
def test_a_wrong_key_signs_nobody_in(client, key):
    response = sign_in(client, key)
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in?refused=1"
    assert not any(h.startswith(SESSION_COOKIE) for h in response.headers.getlist("Set-Cookie"))
    assert DashboardSession.select().count() == 0
    assert "Not signed in" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert client.get("/jobs").status_code == 303


def test_a_disabled_key_cannot_sign_in(client, make_key):
    key = make_key()
    ApiKey.set_enabled(ApiKey.get().id, False)
    assert sign_in(client, key).headers["Location"] == "/sign-in?refused=1"


@pytest.mark.parametrize("end", {
    "disabled": lambda key_id: ApiKey.set_enabled(key_id, False),
    "rotated": ApiKey.rotate,
    "deleted": ApiKey.remove,
    "expired": lambda key_id: ApiKey.update(expires_at=models.now_ms() - 1).where(ApiKey.id == key_id).execute(),
}.items(), ids=lambda item: item[0])
def test_the_session_ends_at_once_with_its_key(client, signed_in, end):
    _key, token = signed_in()
    end[1](ApiKey.get().id)
    assert client.get("/jobs").headers.get("Location") == "/sign-in"
    response = client.post(f"/jobs/{'x'}/run", data={"csrf_token": token})
    assert response.status_code in (401, 403) and set(response.get_json()) == {"error"}


def test_disabling_the_key_on_the_command_line_ends_its_sessions(client, signed_in, runner):
    signed_in()
    assert runner("keys", "disable", ApiKey.get().id).exit_code == 0
    assert client.get("/jobs").headers.get("Location") == "/sign-in"


def test_an_expired_session_is_over(client, signed_in):
    signed_in()
    DashboardSession.update(expires_at=models.now_ms() - 1).execute()
    assert client.get("/jobs").status_code == 303
    assert DashboardSession.purge_expired() == 1


def test_signing_out_deletes_the_session(client, signed_in):
    _key, token = signed_in()
    response = client.post("/sign-out", data={"csrf_token": token})
    assert response.status_code == 303 and DashboardSession.select().count() == 0
    assert client.get("/jobs").status_code == 303


def test_sign_in_attempts_are_rate_limited(app, backhook_env, monkeypatch):
    for name, value in backhook_env.items():
        monkeypatch.setenv(name, value)
    client = create_app({"TESTING": True, "RATELIMIT_ENABLED": True, "RATELIMIT_SIGN_IN": "3 per minute"}).test_client()
    token = csrf_of(client.get("/sign-in"))
    answers = [client.post("/sign-in", data={"key": "dbm_" + "Q" * 43, "csrf_token": token}) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [303, 303, 303, 429]
    assert "error" in answers[-1].get_json() and answers[-1].headers["Retry-After"]


# --- CSRF --------------------------------------------------------------------------

def test_a_post_without_the_csrf_token_is_refused(client, signed_in, make_job):
    signed_in()
    job = make_job()
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}):
        response = client.post(f"/jobs/{job.id}/run", data=data)
        assert response.status_code == 403 and "CSRF" in response.get_json()["error"]
    assert Execution.select().count() == 0


def test_another_sessions_token_is_refused(app, client, signed_in, make_key, make_job):
    _key, mine = signed_in()
    other = app.test_client()
    sign_in(other, make_key())
    job = make_job()
    assert other.post(f"/jobs/{job.id}/run", data={"csrf_token": mine}).status_code == 403
    assert client.post(f"/jobs/{job.id}/run", data={"csrf_token": mine}).status_code == 303


def test_signing_in_needs_the_forms_token(app, make_key):
    client = app.test_client()
    assert client.post("/sign-in", data={"key": make_key()}).status_code == 403  # no cookie, no token
    token = csrf_of(client.get("/sign-in"))
    assert client.post("/sign-in", data={"key": make_key(), "csrf_token": token[:-1] + "x"}).status_code == 403
    assert client.get_cookie(SIGN_IN_COOKIE, path="/sign-in").http_only


def test_every_form_of_every_page_carries_the_token(client, signed_in, make_job):
    _key, token = signed_in()
    make_job()
    for page in ("/jobs", "/keys", "/settings"):
        html = client.get(page).get_data(as_text=True)
        forms = re.findall(r'<form[^>]*method="post".*?</form>', html, re.S)
        assert forms and all(f'name="csrf_token" value="{token}"' in form for form in forms), page


# --- headers -----------------------------------------------------------------------

@pytest.mark.parametrize("page", ["/sign-in", "/jobs", "/history", "/websites", "/keys", "/settings"])
def test_pages_send_the_security_headers(client, signed_in, page):
    signed_in()
    response = client.get(page)
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html  # the policy allows neither inline


# --- pages following the key's permissions --------------------------------------------

def test_a_read_only_key_sees_no_run_button_and_cannot_run(client, signed_in, make_job):
    _key, token = signed_in("jobs:read")
    job = make_job()
    html = client.get("/jobs").get_data(as_text=True)
    assert job.id in html and "Run now" not in html
    assert ">API keys<" not in html and ">History<" not in html
    response = client.post(f"/jobs/{job.id}/run", data={"csrf_token": token})
    assert response.status_code == 403 and "jobs:execute" in response.get_json()["error"]
    for page in ("/keys", "/history", "/websites"):
        assert client.get(page).status_code == 403, page


def test_run_now_queues_an_execution_and_shows_it(client, signed_in, make_job):
    _key, token = signed_in()
    job = make_job()
    models.WorkerHeartbeat.beat("worker-1", "host", 1, models.now_ms())  # a live worker: no note that none is there
    assert "Run now" in client.get("/jobs").get_data(as_text=True)
    response = client.post(f"/jobs/{job.id}/run", data={"csrf_token": token})
    [execution] = Execution.select()
    assert response.headers["Location"] == f"/executions/{execution.id}"
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Pending" in html and "Cancel" in html and 'src="/static/execution.js"' in html
    live = client.get(f"/executions/{execution.id}/live").get_json()["data"]
    assert live["status"] == "Pending" and live["logs"] == []


def test_the_api_trigger_panel_names_this_job_and_this_server(client, signed_in, make_job):
    signed_in()
    job = make_job()
    html = client.get("/jobs").get_data(as_text=True)  # the test client is http://localhost
    assert f'curl -X POST "http://localhost/api/jobs/{job.id}/run"' in html
    assert 'curl "http://localhost/api/executions/EXECUTION_ID' in html
    assert f'JOB="{job.id}"' in html and "while :; do" in html
    assert "Next run</dt><dd class=\"next-run\">—" in html  # no schedule


def finished_backup(job, path="/nowhere/a.tar.zst"):
    with models.database.atomic():
        execution = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, stage="Completed", progress=100,
                                     started_at=1000, ended_at=3000, size=2048, path=path, sha256="0" * 64)
        ExecutionLog.create(execution=execution.id, message="stored the backup", stage="Uploading")
    return execution


def test_the_execution_page_shows_restore_and_download_only_to_keys_that_may(client, signed_in, make_job):
    job = make_job()
    execution = finished_backup(job)
    _key, token = signed_in("history:read")
    html = client.get(f"/executions/{execution.id}").get_data(as_text=True)
    assert "stored the backup" in html and "2.0 KiB" in html
    assert ">Restore</button>" not in html and ">Download</a>" not in html
    assert client.post(f"/executions/{execution.id}/restore", data={"csrf_token": token}).status_code == 403
    assert client.get(f"/executions/{execution.id}/artifact").status_code == 403

    _key, token = signed_in("history:read", "storage:restore", "storage:download")
    html = client.get(f"/executions/{execution.id}").get_data(as_text=True)
    assert ">Restore</button>" in html and ">Download</a>" in html


def test_cancel_needs_jobs_execute(client, signed_in, make_job):
    execution = Execution.enqueue(make_job())
    _key, token = signed_in("history:read")
    assert "Cancel" not in client.get(f"/executions/{execution.id}").get_data(as_text=True)
    assert client.post(f"/executions/{execution.id}/cancel", data={"csrf_token": token}).status_code == 403
    _key, token = signed_in("history:read", "jobs:execute")
    assert client.post(f"/executions/{execution.id}/cancel", data={"csrf_token": token}).status_code == 303
    assert Execution.get_by_id(execution.id).status == ExecutionStatus.CANCELLED


def test_history_filters_are_the_apis(client, signed_in, make_job, auth):
    signed_in()
    first, second = make_job("first"), make_job("second")
    with models.database.atomic():
        old = Execution.create(job=first.id, status=ExecutionStatus.FAILED, created_at=1_000)  # 1970
        new = Execution.create(job=second.id, status=ExecutionStatus.SUCCESS)
        restore = Execution.create(job=second.id, type=ExecutionType.RESTORE, status=ExecutionStatus.SUCCESS)

    def shown(query):
        html = client.get("/history" + query).get_data(as_text=True)
        return {execution.id for execution in (old, new, restore) if execution.id in html}

    assert shown("") == {old.id, new.id, restore.id}
    assert shown(f"?jobId={first.id}") == {old.id}
    assert shown("?status=Success&type=Backup") == {new.id}
    assert shown("?createdBefore=2000-01-01") == {old.id}
    response = client.get("/history?status=&type=Backup&jobId=")  # the form's empty choices are no filter
    assert response.status_code == 303 and response.headers["Location"] == "/history?type=Backup"
    api = client.get("/api/executions?createdBefore=2000-01-01", headers=auth).get_json()
    assert [execution["id"] for execution in api["data"]] == [old.id]
    assert client.get("/api/executions?createdBefore=yesterday", headers=auth).status_code == 400


def test_websites_show_their_backups_and_the_synced_list(client, signed_in):
    signed_in("websites:read")
    with models.database.atomic():
        site = Website.create(domain="shop.example", synced_at=5_000,
                              remote_backups='[{"id": "remote-7", "type": "full", "size": 10, "status": "completed"}]')
        models.Backup.create(website=site.id, backup_id="b-1", status="in_progress", progress=42)
    html = client.get("/websites").get_data(as_text=True)
    assert "shop.example" in html and "b-1" in html and "42%" in html
    html = client.get("/websites/shop.example").get_data(as_text=True)
    assert "b-1" in html and "remote-7" in html
    assert client.get("/websites/nowhere.example").status_code == 404


def test_keys_are_created_shown_once_rotated_disabled_and_deleted(client, signed_in):
    _key, token = signed_in("keys:manage")
    response = client.post("/keys", data={"csrf_token": token, "name": "ci", "permissions": ["jobs:read"]})
    secret = re.search(r'id="new-key">(dbm_[\w-]+)<', response.get_data(as_text=True)).group(1)
    created = ApiKey.get(ApiKey.name == "ci")
    assert created.permissions == "jobs:read" and ApiKey.authenticate(secret)[0].id == created.id
    assert secret not in client.get("/keys").get_data(as_text=True)  # shown once

    response = client.post(f"/keys/{created.id}/rotate", data={"csrf_token": token})
    rotated = re.search(r'id="new-key">(dbm_[\w-]+)<', response.get_data(as_text=True)).group(1)
    assert ApiKey.authenticate(secret)[0] is None and ApiKey.authenticate(rotated)[0].id == created.id

    client.post(f"/keys/{created.id}/disable", data={"csrf_token": token})
    assert ApiKey.authenticate(rotated) == (None, "API key is disabled")
    client.post(f"/keys/{created.id}/enable", data={"csrf_token": token})
    assert ApiKey.authenticate(rotated)[0] is not None
    assert client.post(f"/keys/{created.id}/delete", data={"csrf_token": token}).status_code == 303
    assert ApiKey.get_or_none(ApiKey.id == created.id) is None
    assert client.post(f"/keys/{created.id}/delete", data={"csrf_token": token}).status_code == 404


@pytest.mark.parametrize("form", [
    {"name": "", "permissions": ["jobs:read"]},
    {"name": "x"},
    {"name": "x", "permissions": ["everything"]},
    {"name": "x", "permissions": ["jobs:read"], "expires_in_days": "-1"},
    {"name": "x", "permissions": ["jobs:read"], "expires_in_days": "9" * 20},
    {"name": "x" * 101, "permissions": ["jobs:read"]},
])
def test_a_bad_key_form_is_a_json_400(client, signed_in, form):
    _key, token = signed_in("keys:manage")
    response = client.post("/keys", data={"csrf_token": token, **form})
    assert response.status_code == 400 and set(response.get_json()) == {"error"}


def test_settings_need_settings_write_to_change(client, signed_in):
    _key, token = signed_in("jobs:read")
    html = client.get("/settings").get_data(as_text=True)
    assert 'id="max-concurrent-jobs">1<' in html and "<form method=\"post\" action=\"/settings\"" not in html
    assert client.post("/settings", data={"csrf_token": token, "max_concurrent_jobs": "4"}).status_code == 403
    _key, token = signed_in("settings:write")
    assert client.post("/settings", data={"csrf_token": token, "max_concurrent_jobs": "4"}).status_code == 303
    assert Setting.read("max_concurrent_jobs") == "4"
    for bad in ("0", "-2", "x", "1e3", ""):
        response = client.post("/settings", data={"csrf_token": token, "max_concurrent_jobs": bad})
        assert response.status_code == 400 and set(response.get_json()) == {"error"}
