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
    job = make_job()
    for page in ("/jobs", "/jobs/new", f"/jobs/{job.id}/edit", "/keys", "/settings"):
        html = client.get(page).get_data(as_text=True)
        forms = re.findall(r'<form[^>]*method="post".*?</form>', html, re.S)
        assert forms and all(f'name="csrf_token" value="{token}"' in form for form in forms), page


# --- headers -----------------------------------------------------------------------

@pytest.mark.parametrize("page", ["/sign-in", "/jobs", "/jobs/new", "/history", "/websites", "/keys", "/settings"])
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


# --- the job form -------------------------------------------------------------------

SECRET = "s3cr3t-Pass"  # a password no page may show


def job_form(tmp_path, **fields):
    """A filled-in new job form, as a browser sends it (checkboxes only when ticked)."""
    source = tmp_path / "site"
    source.mkdir(exist_ok=True)
    return {"name": "site", "source": f"files://{source}", "destinations": f"{tmp_path}/a\n\n{tmp_path}/b\n",
            "compression": "zstd", "keep": "7", "keep_daily": "", "keep_weekly": "4", "keep_monthly": "",
            "schedule": "0 3 * * *", "timezone": "Europe/Berlin", "timeout": "2", "timeout_unit": "hours",
            "recipients": "", "excludes": "*.log\ncache/", "one_file_system": "on", "enabled": "on", **fields}


def test_the_job_form_creates_a_job_as_post_api_jobs_does(client, signed_in, tmp_path, auth):
    _key, token = signed_in()
    assert 'href="/jobs/new"' in client.get("/jobs").get_data(as_text=True)
    page = client.get("/jobs/new").get_data(as_text=True)
    assert 'name="csrf_token"' in page and "command:" in page and 'value="UTC"' in page
    response = client.post("/jobs/new", data={"csrf_token": token, **job_form(tmp_path)})
    assert response.status_code == 303 and response.headers["Location"] == "/jobs"
    [job] = client.get("/api/jobs", headers=auth).get_json()["data"]
    assert job["destinations"] == [f"{tmp_path}/a", f"{tmp_path}/b"] and job["excludes"] == ["*.log", "cache/"]
    assert (job["keep"], job["keepDaily"], job["keepWeekly"], job["timeoutSeconds"]) == (7, None, 4, 7200)
    assert job["schedule"] == "0 3 * * *" and job["timezone"] == "Europe/Berlin" and job["nextRunAt"]
    assert job["oneFileSystem"] and job["enabled"] and not job["allowPartialDestinations"]
    assert job["id"] in client.get("/jobs").get_data(as_text=True)


def test_the_job_form_edits_a_job_and_keeps_what_it_does_not_change(client, signed_in, tmp_path):
    _key, token = signed_in()
    client.post("/jobs/new", data={"csrf_token": token, **job_form(tmp_path)})
    job = models.Job.get()
    page = client.get(f"/jobs/{job.id}/edit").get_data(as_text=True)
    assert f"{tmp_path}/a\n{tmp_path}/b</textarea>" in page and 'value="Europe/Berlin"' in page and "readonly" in page
    form = job_form(tmp_path, keep="", timeout="90", timeout_unit="seconds", enabled="", recipients=(
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"))
    del form["name"], form["enabled"]  # the name is shown, not sent; an unticked box is not sent
    response = client.post(f"/jobs/{job.id}/edit", data={"csrf_token": token, **form})
    assert response.status_code == 303
    job = models.Job.get()
    assert job.keep is None and job.timeout_seconds == 90 and not job.enabled and job.keep_weekly == 4
    assert job.recipient_keys() == ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
    assert 'value="90"' in client.get(f"/jobs/{job.id}/edit").get_data(as_text=True)


@pytest.mark.parametrize("fields, column, message", [
    ({"keep": "seven"}, "keep", "must be a whole number"),
    ({"keep": "0"}, "keep", "must be a whole number from 1"),
    ({"destinations": ""}, "destinations", "at least one destination"),
    ({"destinations": "relative/dir"}, "destinations", "absolute"),
    ({"schedule": "every day"}, "schedule", ""),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
    ({"timeout": "31", "timeout_unit": "hours", "keep": "1", "compression": "lzma"}, "compression", "one of"),
    ({"recipients": "age1notavalidkey"}, "recipients", "not a valid age1"),
    ({"source": "sqlite:///tmp/x.db"}, "excludes", "only to files://"),
])
def test_a_refused_field_shows_its_message_beside_it_and_keeps_what_was_typed(client, signed_in, tmp_path, fields,
                                                                             column, message):
    _key, token = signed_in()
    response = client.post("/jobs/new", data={"csrf_token": token, **job_form(tmp_path, **fields)})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and response.mimetype == "text/html"
    shown = re.search(rf'id="error-{column}">([^<]*)<', html)
    assert shown and message in shown.group(1), html
    assert re.findall(r'class="error field-error"', html) == ['class="error field-error"']  # beside that field only
    assert 'name="schedule" value="' + job_form(tmp_path, **fields)["schedule"] in html  # what was typed stays
    assert models.Job.select().count() == 0
    assert response.headers["Content-Security-Policy"] and " style=" not in html and "<script>" not in html


def test_a_duplicate_name_is_shown_with_409(client, signed_in, tmp_path):
    _key, token = signed_in()
    client.post("/jobs/new", data={"csrf_token": token, **job_form(tmp_path)})
    response = client.post("/jobs/new", data={"csrf_token": token, **job_form(tmp_path)})
    assert response.status_code == 409 and "already exists" in response.get_data(as_text=True)


def test_a_command_source_stays_on_the_command_line(client, signed_in, tmp_path, make_job):
    _key, token = signed_in()
    response = client.post("/jobs/new", data={"csrf_token": token,
                                              **job_form(tmp_path, source="command:echo hi", excludes="",
                                                         one_file_system="")})
    assert response.status_code == 403 and "command line" in re.search(
        r'id="error-source">([^<]*)<', response.get_data(as_text=True)).group(1)
    assert models.Job.select().count() == 0
    job = make_job("cmd", source="command:echo hi")
    html = client.get("/jobs").get_data(as_text=True)
    assert f'href="/jobs/{job.id}/edit"' not in html and f'action="/jobs/{job.id}/delete"' in html
    assert client.get(f"/jobs/{job.id}/edit").status_code == 403
    form = job_form(tmp_path, source="command:echo bye", excludes="", one_file_system="")
    assert client.post(f"/jobs/{job.id}/edit", data={"csrf_token": token, **form}).status_code == 403
    assert models.Job.get_by_id(job.id).source == "command:echo hi"


def test_without_jobs_write_the_form_is_hidden_and_refused(client, signed_in, tmp_path, make_job):
    _key, token = signed_in("jobs:read", "jobs:execute")
    job = make_job()
    html = client.get("/jobs").get_data(as_text=True)
    assert "New job" not in html and "/edit" not in html and "/delete" not in html and "Run now" in html
    for page in ("/jobs/new", f"/jobs/{job.id}/edit"):
        response = client.get(page)
        assert response.status_code == 403 and "jobs:write" in response.get_json()["error"], page
    for action in ("/jobs/new", f"/jobs/{job.id}/edit", f"/jobs/{job.id}/delete"):
        response = client.post(action, data={"csrf_token": token, **job_form(tmp_path)})
        assert response.status_code == 403 and "jobs:write" in response.get_json()["error"], action
    assert [row.name for row in models.Job.select()] == ["nightly"]


def test_the_job_form_needs_the_csrf_token(client, signed_in, tmp_path, make_job):
    signed_in()
    job = make_job()
    for action in ("/jobs/new", f"/jobs/{job.id}/edit", f"/jobs/{job.id}/delete"):
        for data in (job_form(tmp_path), job_form(tmp_path, csrf_token="0" * 64)):
            response = client.post(action, data=data)
            assert response.status_code == 403 and "CSRF" in response.get_json()["error"], action
    assert [(row.name, row.keep) for row in models.Job.select()] == [("nightly", None)]


def test_a_source_password_is_never_sent_back_to_the_page(client, signed_in, tmp_path):
    _key, token = signed_in()
    source = f"postgresql://backup:{SECRET}@db.internal:5432/app"
    form = job_form(tmp_path, name="pg", source=source, excludes="", one_file_system="")
    refused = client.post("/jobs/new", data={"csrf_token": token, **form, "keep": "x"})
    html = refused.get_data(as_text=True)
    assert refused.status_code == 400 and SECRET not in html and 'name="source" value=""' in html
    assert "type the new source again" in html and 'id="error-keep"' in html

    assert client.post("/jobs/new", data={"csrf_token": token, **form}).status_code == 303
    job = models.Job.get()
    page = client.get(f"/jobs/{job.id}/edit").get_data(as_text=True)
    assert SECRET not in page and 'value="postgresql://backup:***@db.internal:5432/app"' in page
    assert SECRET not in client.get("/jobs").get_data(as_text=True)
    shown = dict(form, source="postgresql://backup:***@db.internal:5432/app", keep="3")
    assert client.post(f"/jobs/{job.id}/edit", data={"csrf_token": token, **shown}).status_code == 303
    job = models.Job.get()
    assert job.source == source and job.keep == 3  # left as shown: the stored password stays

    changed = dict(shown, source="postgresql://backup:N3w-Pass@db.internal:5432/app", keep="x")
    html = client.post(f"/jobs/{job.id}/edit", data={"csrf_token": token, **changed}).get_data(as_text=True)
    assert "N3w-Pass" not in html and SECRET not in html and "type the new source again" in html
    assert 'value="postgresql://backup:***@db.internal:5432/app"' in html and models.Job.get().source == source
    changed["keep"] = "3"
    assert client.post(f"/jobs/{job.id}/edit", data={"csrf_token": token, **changed}).status_code == 303
    assert models.Job.get().source == changed["source"]


def test_delete_follows_the_rule_of_stored_backups(client, signed_in, make_job):
    _key, token = signed_in()
    job = make_job()
    backup = finished_backup(job)
    response = client.post(f"/jobs/{job.id}/delete", data={"csrf_token": token})
    html = response.get_data(as_text=True)
    assert response.status_code == 409 and "stored backup(s)" in re.search(r'id="refused">([^<]*)<', html).group(1)
    assert models.Job.get_or_none(models.Job.id == job.id) is not None and job.id in html
    pending = Execution.enqueue(job)
    response = client.post(f"/jobs/{job.id}/delete", data={"csrf_token": token, "keep_artifacts": "on"})
    assert response.status_code == 409 and "Pending or Running" in response.get_data(as_text=True)
    Execution.update(status=ExecutionStatus.CANCELLED).where(Execution.id == pending.id).execute()
    response = client.post(f"/jobs/{job.id}/delete", data={"csrf_token": token, "keep_artifacts": "on"})
    assert response.status_code == 303 and models.Job.get_or_none(models.Job.id == job.id) is None
    assert Execution.get_or_none(Execution.id == backup.id) is None  # the record goes; the file is never touched
    response = client.post(f"/jobs/{job.id}/delete", data={"csrf_token": token})
    assert response.status_code == 404 and set(response.get_json()) == {"error"}


@pytest.mark.parametrize("fields", [
    {}, {"keep": "-1", "timeout": "１２"}, {"timeout": "9" * 40, "timeout_unit": "days"}, {"keep_daily": "1e3"},
    {"name": "../x", "source": "files://relative"}, {"source": "ftp://host/x"},
    {"enabled": "yes", "name": "x\x00", "schedule": "\x00"},
])
def test_odd_form_values_are_refused_on_the_form_never_a_500(client, signed_in, tmp_path, make_job, fields):
    _key, token = signed_in()
    job = make_job()
    for action in ("/jobs/new", f"/jobs/{job.id}/edit"):
        data = {"csrf_token": token, **fields} if not fields else {"csrf_token": token, **job_form(tmp_path, **fields)}
        response = client.post(action, data=data)
        assert response.status_code in (400, 403), (action, response.get_data(as_text=True)[:300])
        assert 'class="error' in response.get_data(as_text=True)
    assert models.Job.select().count() == 1
