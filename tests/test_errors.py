"""Bad input and failure: always a JSON error, never HTML, never a 500 for a client's doing."""

import json

import pytest
import requests

import models
from support import TOKEN, hold_write_lock, wait_until


@pytest.mark.parametrize("method, path, status", [
    ("get", "/no/such/route", 404),
    ("get", "/api/jobs/x/run", 405),
    ("delete", "/api/jobs", 405),
    ("put", "/livez", 405),
])
def test_unknown_routes_and_methods_answer_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json and set(response.get_json()) == {"error"}


def test_body_over_one_mebibyte_is_413(client, auth, make_job):
    response = client.post(f"/api/jobs/{make_job().id}/run", headers=auth, data=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "error" in response.get_json()


def test_unexpected_exception_is_a_json_500_without_a_trace(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = client.get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "Internal server error"}
    assert "secret internals" not in response.get_data(as_text=True)


def test_briefly_locked_database_delays_the_trigger_instead_of_failing(start_server, database_url, make_key,
                                                                        make_job):
    auth = {"Authorization": f"Bearer {make_key()}"}
    job = make_job()
    server = start_server(processes=2)
    holder = hold_write_lock(database_url, 1.5)
    response = requests.post(f"{server.url}/api/jobs/{job.id}/run", headers=auth, timeout=30)
    assert holder.wait(10) == 0
    assert response.status_code == 200 and response.json()["success"] is True


def test_database_locked_past_the_budget_is_a_json_503_not_a_500(start_server, database_url, make_key,
                                                                   make_job):
    auth = {"Authorization": f"Bearer {make_key()}"}
    job = make_job()
    server = start_server(processes=2, BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    requests.get(f"{server.url}/api/jobs", headers=auth, timeout=10)  # let key use be recorded first
    holder = hold_write_lock(database_url, 2)
    response = requests.post(f"{server.url}/api/jobs/{job.id}/run", headers=auth, timeout=30)
    holder.wait(10)
    assert response.status_code == 503
    assert "error" in response.json() and response.headers["Retry-After"] == "1"
    wait_until(lambda: requests.post(f"{server.url}/api/jobs/{job.id}/run", headers=auth, timeout=10).ok,
               message="the trigger to succeed once the lock is gone")


@pytest.mark.parametrize("method, path", [
    ("get", "/api/executions/x%00y"),
    ("post", "/api/jobs/x%00/run"),
    ("post", "/api/executions/x%00/cancel"),
    ("get", "/api/websites/example.com%00/backups"),
])
def test_a_nul_character_in_an_id_names_nothing_on_every_backend(client, auth, method, path):
    response = getattr(client, method)(path, headers=auth)
    assert response.status_code == 404
    assert "NUL" in response.get_json()["error"]


def test_a_nul_character_in_a_paging_cursor_names_no_backup(client, auth):
    models.Website.create(domain="example.com")
    response = client.get("/api/websites/example.com/backups?before=b%001", headers=auth)
    assert response.status_code == 400 and "error" in response.get_json()


def test_a_nul_character_in_a_webhook_body_is_a_json_400(client):
    response = client.post("/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                           json={"domain": "example.com", "backup_id": "b\x001", "progress": 5})
    assert response.status_code == 400
    assert "NUL" in response.get_json()["error"]


@pytest.mark.parametrize("body", [
    # A NUL in a key, and a body in UTF-16, which JSON allows and json.loads detects.
    json.dumps({"domain": "example.com", "backup_id": "b1", "progress": 5, "note\u0000": 1}).encode(),
    json.dumps({"domain": "example.com", "backup_id": "b\u00001", "progress": 5}).encode("utf-16"),
])
def test_a_nul_character_is_refused_however_the_body_spells_it(client, body):
    models.Website.create(domain="example.com")
    response = client.post("/webhooks/backup-progress", data=body,
                           headers={"x-wpfort-token": TOKEN, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "NUL" in response.get_json()["error"]
    assert models.Backup.select().count() == 0


def test_a_backslash_u_text_that_is_no_nul_is_kept(client):
    models.Website.create(domain="example.com")
    response = client.post("/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                           json={"domain": "example.com", "backup_id": "b\\u0000", "progress": 5})
    assert response.status_code == 200
    assert models.Backup.get().backup_id == "b\\u0000"
