"""Defining, changing and deleting jobs over HTTP: POST, PATCH and DELETE /api/jobs (jobs:write).

The checks are job_definition.py's, the same as `backhook jobs add` and `jobs set`
make; command: jobs stay the command line's; a delete never takes a stored backup.
"""
import concurrent.futures
import sqlite3
from pathlib import Path

import pytest
import requests

import models
from models import Execution, ExecutionLog, Job, JobCreationKey, JobDestination, Website
from sinks import manifest_location
from support import hold_write_lock, run_in_process, run_to_end

PASSWORD = "Xq7-zK9v"  # no test output may ever show it


@pytest.fixture
def writer(make_key):
    return {"Authorization": f"Bearer {make_key('jobs:read', 'jobs:write', 'jobs:execute', 'history:read')}"}


@pytest.fixture
def definition(tmp_path):
    """A valid body: a files:// job stored in tmp_path/backups."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "hello.txt").write_text("hello\n")
    return {"name": "site", "source": f"files://{source}", "destinations": [str(tmp_path / "backups")]}


def create(client, headers, body, **extra):
    return client.post("/api/jobs", json=body, headers={**headers, **extra})


def assert_error(response, status, *words):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


# --- creating ------------------------------------------------------------------------------

SOURCES = {
    "sqlite": "sqlite:///srv/app.db",
    "postgresql": f"postgresql://backup:{PASSWORD}@db.internal:5432/app?sslmode=verify-full",
    "mysql": f"mysql://backup@db.internal:3306/shop?password={PASSWORD}&ssl-mode=REQUIRED",
    "files": "files:///srv/www",
    "wpsec": "wpsec://Example.com",
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_source_kind_but_command_is_created_over_http_without_showing_its_password(client, writer, tmp_path,
                                                                                           kind):
    Website.create(domain="example.com")
    body = {"name": f"{kind}-job", "source": SOURCES[kind], "destinations": [str(tmp_path / "backups")],
            "keep": 7, "compression": "gzip", "timeoutSeconds": 3600}
    response = create(client, writer, body)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()["data"]
    assert (data["name"], data["sourceKind"], data["keep"], data["compression"], data["timeoutSeconds"]) == (
        f"{kind}-job", kind, 7, "gzip", 3600)
    assert data["destinations"] == [str(tmp_path / "backups")] and data["lastExecution"] is None
    stored = Job.get_by_id(data["id"])
    assert stored.source == SOURCES[kind]  # as given: the worker needs its password
    listing = client.get("/api/jobs", headers=writer).get_data(as_text=True)
    assert PASSWORD not in response.get_data(as_text=True) and PASSWORD not in listing
    assert data in client.get("/api/jobs", headers=writer).get_json()["data"]


def test_defaults_are_those_of_jobs_add(client, writer, definition, runner, tmp_path):
    over_http = Job.get_by_id(create(client, writer, definition).get_json()["data"]["id"])
    result = runner("jobs", "add", "by-cli", "--source", definition["source"], "--destination", tmp_path / "backups")
    on_cli = Job.get_by_id(result.output.strip().splitlines()[-1])
    for column in ("compression", "keep", "timeout_seconds", "allow_partial_destinations", "recipients",
                   "excludes", "one_file_system", "enabled", "restore_command"):
        assert getattr(over_http, column) == getattr(on_cli, column), column


@pytest.mark.sqlite_only("the worker runs the same backup whatever database records it")
def test_jobs_created_over_http_run_to_success_on_a_real_worker(client, writer, definition, start_worker, tmp_path):
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (42)")
    db.close()
    files = create(client, writer, {**definition, "excludes": ["*.log"]}).get_json()["data"]
    sqlite = create(client, writer, {"name": "db", "source": f"sqlite://{database}",
                                     "destinations": [str(tmp_path / "backups")]}).get_json()["data"]
    start_worker()
    for job in (files, sqlite):
        done = run_to_end(client, writer, job["id"])
        assert done["status"] == "Success", done
        assert Path(done["path"]).is_file() and done["path"].startswith(str(tmp_path / "backups" / job["name"]))


def test_a_duplicate_name_is_409(client, writer, definition):
    assert create(client, writer, definition).status_code == 201
    assert_error(create(client, writer, definition), 409, "already exists")
    assert Job.select().count() == 1


# --- command: stays the command line's ------------------------------------------------------

def test_a_command_source_is_refused_over_http(client, writer, definition):
    for source in ("command:echo hi", "command:pg_dumpall | gzip", "COMMAND:echo hi"):
        response = create(client, writer, {**definition, "source": source})
        assert response.status_code in (400, 403), source
        if source.startswith("command:"):
            assert_error(response, 403, "command line")
    assert_error(create(client, writer, {**definition, "restoreCommand": "cat > /tmp/x"}), 403, "restoreCommand",
                 "command line")
    assert Job.select().count() == 0


def test_a_patch_can_neither_edit_a_command_job_nor_make_one(client, writer, make_job, definition):
    scripted = make_job("scripted", source="command:echo hi")
    for body in ({"keep": 3}, {"enabled": False}, {"source": "command:echo bye"}, {}):
        assert_error(client.patch(f"/api/jobs/{scripted.id}", json=body, headers=writer), 403, "command line")
    assert Job.get_by_id(scripted.id).source == "command:echo hi" and Job.get_by_id(scripted.id).keep is None
    files = create(client, writer, definition).get_json()["data"]
    assert_error(client.patch(f"/api/jobs/{files['id']}", json={"source": "command:echo hi"}, headers=writer), 403,
                 "command line")
    assert_error(client.patch(f"/api/jobs/{files['id']}", json={"restoreCommand": "true"}, headers=writer), 403)
    assert Job.get_by_id(files["id"]).source == definition["source"]


# --- bad fields --------------------------------------------------------------------------------

MISSING = "(left out)"
AGE_PRIVATE = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS7M2Q9E"

BAD_FIELDS = [
    ({"name": ""}, "'name'", "empty"),
    ({"name": "a/b"}, "'name'", "'/'"),
    ({"name": ".."}, "'name'", ".."),
    ({"name": "n" * 101}, "'name'", "100"),
    ({"name": 5}, "'name'", "string"),
    ({"name": MISSING}, "'name'", "required"),
    ({"source": MISSING}, "'source'", "required"),
    ({"source": "ftp://host/x"}, "'source'", "unknown source"),
    ({"source": "files://relative/dir"}, "'source'", "absolute"),
    ({"source": "postgresql://host"}, "'source'", "database"),
    ({"source": f"postgresql://u:{PASSWORD}@db:99999/app"}, "'source'", "port"),
    ({"source": "wpsec://unregistered.example"}, "'source'", "no website"),
    ({"source": ["files:///etc"]}, "'source'", "string"),
    ({"destinations": MISSING}, "'destinations'", "required"),
    ({"name": None}, "'name'", "required"),
    ({"destinations": []}, "'destinations'", "at least one"),
    ({"destinations": "/srv/backups"}, "'destinations'", "list"),
    ({"destinations": ["relative/dir"]}, "'destinations'", "absolute"),
    ({"destinations": ["/srv/b", "/srv/b/"]}, "'destinations'", "twice"),
    ({"destinations": ["ftp://host/x"]}, "'destinations'", "s3://BUCKET"),
    ({"destinations": ["s3://key:secret@bucket"]}, "'destinations'", "credentials"),
    ({"destinations": [7]}, "'destinations'", "list of strings"),
    ({"compression": "lz4"}, "'compression'", "zstd"),
    ({"keep": 0}, "'keep'", "1 to 100,000"),
    ({"keep": 100_001}, "'keep'", "1 to 100,000"),
    ({"keep": 2.5}, "'keep'", "whole number"),
    ({"keep": True}, "'keep'", "whole number"),
    ({"keep": "7"}, "'keep'", "whole number"),
    ({"timeoutSeconds": 0}, "'timeoutSeconds'", "whole number"),
    ({"timeoutSeconds": 2**31}, "'timeoutSeconds'", "2,592,000"),
    ({"allowPartialDestinations": "yes"}, "'allowPartialDestinations'", "true or false"),
    ({"enabled": 1}, "'enabled'", "true or false"),
    ({"oneFileSystem": None}, "'oneFileSystem'", "true or false"),
    ({"encryptTo": "age1abc"}, "'encryptTo'", "list"),
    ({"encryptTo": ["age1notavalidkey"]}, "'encryptTo'", "not a valid age1"),
    ({"encryptTo": [AGE_PRIVATE]}, "'encryptTo'", "only public keys"),
    ({"excludes": [""]}, "'excludes'", "empty"),
    ({"excludes": ["a\tb"]}, "'excludes'", "control characters"),
    ({"excludes": ["*.log"], "source": "sqlite:///srv/app.db"}, "'excludes'", "files://"),
    ({"oneFileSystem": True, "source": "sqlite:///srv/app.db"}, "'oneFileSystem'", "files://"),
    ({"encryptTo": [], "destination": "/srv/b"}, "unknown field 'destination'", "destinations"),
    ({"owner": "ops"}, "unknown field 'owner'", "a job takes"),
]


@pytest.mark.parametrize("change, named, problem", BAD_FIELDS, ids=[str(case[0])[:60] for case in BAD_FIELDS])
def test_every_bad_field_is_a_400_naming_it_and_creates_nothing(client, writer, definition, change, named,
                                                                 problem):
    body = {**definition, **change}
    message = assert_error(create(client, writer, {k: v for k, v in body.items() if v != MISSING}), 400, named,
                           problem)
    assert PASSWORD not in message and "AGE-SECRET-KEY" not in message
    assert Job.select().count() == 0 and JobDestination.select().count() == 0


def test_a_wpsec_job_can_be_encrypted_since_its_backups_come_home(client, writer, tmp_path):
    Website.create(domain="example.com")
    recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    body = {"name": "wp", "source": "wpsec://example.com", "destinations": [str(tmp_path)], "encryptTo": [recipient]}
    answer = create(client, writer, body)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    assert answer.get_json()["data"]["encryptTo"] == [recipient]


@pytest.mark.parametrize("source", ["ftp://host/x", "postgresql://host", "files:relative", "sqlite:///a?b=1"])
def test_the_api_and_jobs_add_refuse_a_source_with_the_same_message(client, writer, runner, definition, tmp_path,
                                                                     source):
    api = assert_error(create(client, writer, {**definition, "source": source}), 400)
    cli = runner("jobs", "add", "x", "--source", source, "--destination", tmp_path)
    assert cli.exit_code != 0
    assert api.removeprefix("'source': ") in cli.output


def test_a_body_that_is_not_a_json_object_is_a_400(client, writer):
    for data in ("", "[]", "not json", '"text"'):
        response = client.post("/api/jobs", data=data, headers={**writer, "Content-Type": "application/json"})
        assert_error(response, 400, "JSON object")


# --- permissions --------------------------------------------------------------------------------

def test_writing_jobs_needs_jobs_write_which_no_other_permission_implies(client, make_key, make_job, definition):
    job = make_job()
    others = {"Authorization": f"Bearer {make_key('jobs:read', 'jobs:execute', 'history:read', 'storage:restore')}"}
    assert client.get("/api/jobs", headers=others).status_code == 200
    for method, url, body in (("POST", "/api/jobs", definition), ("PATCH", f"/api/jobs/{job.id}", {"keep": 1}),
                              ("DELETE", f"/api/jobs/{job.id}", None)):
        assert_error(client.open(url, method=method, json=body, headers=others), 403, "jobs:write")
    assert Job.select().count() == 1 and Job.get_by_id(job.id).keep is None
    only_write = {"Authorization": f"Bearer {make_key('jobs:write')}"}
    assert create(client, only_write, definition).status_code == 201
    assert_error(client.get("/api/jobs", headers=only_write), 403, "jobs:read")


# --- changing -----------------------------------------------------------------------------------

def test_a_patch_changes_only_the_fields_it_names(client, writer, definition, tmp_path):
    created = create(client, writer, {**definition, "keep": 3, "excludes": ["*.tmp"]}).get_json()["data"]
    response = client.patch(f"/api/jobs/{created['id']}", json={"keep": 10, "compression": "none"}, headers=writer)
    assert response.status_code == 200, response.get_json()
    changed = response.get_json()["data"]
    assert (changed["keep"], changed["compression"]) == (10, "none")
    assert {k: v for k, v in changed.items() if k not in ("keep", "compression")} == \
        {k: v for k, v in created.items() if k not in ("keep", "compression")}
    second = str(tmp_path / "offsite")
    moved = client.patch(f"/api/jobs/{created['id']}", json={"destinations": [second, definition["destinations"][0]],
                                                            "keep": None, "enabled": False}, headers=writer)
    data = moved.get_json()["data"]
    assert (data["destinations"], data["destination"], data["keep"], data["enabled"]) == (
        [second, definition["destinations"][0]], second, None, False)
    job = Job.get_by_id(created["id"])
    assert job.destination == second and job.exclude_patterns() == ["*.tmp"]
    nothing = client.patch(f"/api/jobs/{created['id']}", json={}, headers=writer)
    assert nothing.status_code == 200 and nothing.get_json()["data"] == data


def test_a_patch_can_change_a_sources_password_but_not_its_kind_or_the_jobs_name(client, writer, tmp_path):
    body = {"name": "pg", "source": "postgresql://backup:old@db:5432/app", "destinations": [str(tmp_path)]}
    job = create(client, writer, body).get_json()["data"]
    new_source = f"postgresql://backup:{PASSWORD}@db:5432/app"
    response = client.patch(f"/api/jobs/{job['id']}", json={"source": new_source}, headers=writer)
    assert response.status_code == 200 and PASSWORD not in response.get_data(as_text=True)
    assert Job.get_by_id(job["id"]).source == new_source
    assert_error(client.patch(f"/api/jobs/{job['id']}", json={"source": "files:///srv"}, headers=writer), 400,
                 "'source'", "must stay a postgresql source")
    assert_error(client.patch(f"/api/jobs/{job['id']}", json={"name": "renamed"}, headers=writer), 400,
                 "'name'", "cannot be changed")
    assert client.patch(f"/api/jobs/{job['id']}", json={"name": "pg"}, headers=writer).status_code == 200
    assert_error(client.patch(f"/api/jobs/{job['id']}", json={"excludes": ["x"]}, headers=writer), 400,
                 "'excludes'", "files://")
    assert_error(client.patch(f"/api/jobs/{job['id']}", json={"keep": -1}, headers=writer), 400, "'keep'")
    assert Job.get_by_id(job["id"]).keep is None


def test_patch_and_delete_of_an_unknown_job_are_404(client, writer):
    assert_error(client.patch("/api/jobs/no-such-job", json={"keep": 1}, headers=writer), 404, "Job not found")
    assert_error(client.delete("/api/jobs/no-such-job", headers=writer), 404, "Job not found")


# --- deleting: never a stored backup ------------------------------------------------------------

def test_deleting_a_job_without_backups_removes_it_and_its_history(client, writer, make_job):
    job = make_job()
    Execution.create(job=job.id, status="Failed", error="disk full")
    response = client.delete(f"/api/jobs/{job.id}", headers=writer)
    assert response.status_code == 204 and response.get_data() == b""
    assert Job.get_or_none(Job.id == job.id) is None and Execution.select().count() == 0


def test_a_job_with_a_pending_or_running_execution_cannot_be_deleted(client, writer, make_job):
    job = make_job()
    for status in ("Pending", "Running"):
        execution = Execution.create(job=job.id, status=status)
        for query in ("", "?keepArtifacts=true"):
            assert_error(client.delete(f"/api/jobs/{job.id}{query}", headers=writer), 409, "Pending or Running")
        assert Job.get_by_id(job.id) and Execution.get_by_id(execution.id).status == status
        Execution.update(status="Cancelled").where(Execution.id == execution.id).execute()


def test_a_job_with_stored_backups_is_deleted_only_with_keep_artifacts_and_its_artifacts_stay(client, writer,
                                                                                               make_job):
    job = make_job()
    backups = [run_in_process(job) for _ in range(2)]
    assert all(backup.status == "Success" for backup in backups)
    assert_error(client.delete(f"/api/jobs/{job.id}", headers=writer), 409, "2 stored backup(s)", "keepArtifacts")
    assert Job.get_by_id(job.id) and Execution.select().count() == 2
    response = client.delete(f"/api/jobs/{job.id}?keepArtifacts=true", headers=writer)
    assert response.status_code == 204
    assert Job.get_or_none(Job.id == job.id) is None
    assert Execution.select().count() == 0 and ExecutionLog.select().count() == 0
    for backup in backups:
        assert Path(backup.path).is_file() and Path(manifest_location(backup.path)).is_file()


def test_a_delete_that_meets_a_locked_database_is_a_503_and_deletes_nothing(start_server, make_key, make_job,
                                                                           database_url):
    job = make_job()
    backup = run_in_process(job)
    server = start_server(processes=1, BACKHOOK_DATABASE_BUSY_SECONDS="0.5")
    headers = {"Authorization": f"Bearer {make_key('jobs:write')}"}
    holder = hold_write_lock(database_url, 30)
    try:
        response = requests.delete(f"{server.url}/api/jobs/{job.id}?keepArtifacts=true", headers=headers, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert response.status_code == 503 and set(response.json()) == {"error"}, response.text
    assert Job.get_by_id(job.id) and Execution.get_by_id(backup.id).path == backup.path
    assert Path(backup.path).is_file()
    again = requests.delete(f"{server.url}/api/jobs/{job.id}?keepArtifacts=true", headers=headers, timeout=30)
    assert again.status_code == 204 and Path(backup.path).is_file()


# --- Idempotency-Key --------------------------------------------------------------------------------

def test_a_retried_create_with_an_idempotency_key_answers_the_first_job(client, writer, make_key, definition):
    first = create(client, writer, definition, **{"Idempotency-Key": "create-site"})
    again = create(client, writer, definition, **{"Idempotency-Key": "create-site"})
    assert first.status_code == again.status_code == 201
    assert first.get_json()["data"]["id"] == again.get_json()["data"]["id"] and Job.select().count() == 1
    assert_error(create(client, writer, {**definition, "keep": 2}, **{"Idempotency-Key": "create-site"}), 422,
                 "another body")
    # Another API key's Idempotency-Key is its own: this one is a new request, and the name is taken.
    other = {"Authorization": f"Bearer {make_key('jobs:write')}"}
    assert_error(create(client, other, definition, **{"Idempotency-Key": "create-site"}), 409, "already exists")
    assert_error(create(client, writer, definition, **{"Idempotency-Key": "é"}), 400, "Idempotency-Key")


def test_an_idempotency_key_matches_for_24_hours_and_is_purged_after(client, writer, definition):
    first = create(client, writer, definition, **{"Idempotency-Key": "k"}).get_json()["data"]
    JobCreationKey.update(created_at=models.now_ms() - models.IDEMPOTENCY_MS - 1).execute()
    assert_error(create(client, writer, definition, **{"Idempotency-Key": "k"}), 409, "already exists")
    assert models.purge_idempotency_keys() == 1 and JobCreationKey.select().count() == 0
    assert client.delete(f"/api/jobs/{first['id']}", headers=writer).status_code == 204
    assert create(client, writer, definition, **{"Idempotency-Key": "k"}).status_code == 201


def test_concurrent_creates_with_one_key_make_one_job_and_answer_it_to_all(start_server, make_key, definition):
    server = start_server(processes=3)
    headers = {"Authorization": f"Bearer {make_key('jobs:write')}", "Idempotency-Key": "once"}

    def post(_):
        return requests.post(f"{server.url}/api/jobs", json=definition, headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {answer.status_code for answer in answers} == {201}, [answer.text for answer in answers]
    assert len({answer.json()["data"]["id"] for answer in answers}) == 1
    assert Job.select().count() == 1 and JobCreationKey.select().count() == 1


def test_no_credential_of_a_source_is_in_any_answer_or_the_servers_log(start_server, make_key, tmp_path,
                                                                        data_dir):
    server = start_server(processes=1)
    headers = {"Authorization": f"Bearer {make_key('jobs:read', 'jobs:write')}"}
    body = {"name": "pg", "source": f"postgresql://backup:{PASSWORD}@db:5432/app?sslpassword={PASSWORD}2",
            "destinations": [str(tmp_path)]}
    answers = [requests.post(f"{server.url}/api/jobs", json=body, headers=headers, timeout=10)]
    job_id = answers[0].json()["data"]["id"]
    answers += [requests.patch(f"{server.url}/api/jobs/{job_id}", json={"source": body["source"] + "&sslmode=require"},
                               headers=headers, timeout=10),
                requests.patch(f"{server.url}/api/jobs/{job_id}", json={"source": f"postgresql://u:{PASSWORD}@h:0/d"},
                               headers=headers, timeout=10),
                requests.get(f"{server.url}/api/jobs", headers=headers, timeout=10)]
    assert [answer.status_code for answer in answers] == [201, 200, 400, 200]
    server.stop()
    logs = "".join(path.read_text() for path in data_dir.glob("process-*.log"))
    for text in [answer.text for answer in answers] + [logs]:
        assert PASSWORD not in text


def test_jobs_delete_on_the_command_line_follows_the_same_rule(runner, make_job):
    job = make_job()
    backup = run_in_process(job)
    refused = runner("jobs", "delete", "nightly")
    assert refused.exit_code != 0 and "--keep-artifacts" in refused.output and Job.get_by_id(job.id)
    done = runner("jobs", "delete", "nightly", "--keep-artifacts")
    assert done.exit_code == 0, done.output
    assert Job.get_or_none(Job.id == job.id) is None and Path(backup.path).is_file()
