"""API keys: format, hashed storage, every way a key can be refused, permissions."""
import sqlite3

import pytest

import models
from models import ApiKey


def get_jobs(client, headers):
    return client.get("/api/jobs", headers=headers)


def test_issued_key_has_the_documented_format(make_key):
    key = make_key()
    assert key.startswith("dbm_") and len(key) >= 36
    assert models.KEY_PATTERN.fullmatch(key)


def stored_bytes(backend, data_dir):
    """Everything the database holds: the raw files on SQLite, every row on PostgreSQL."""
    if backend == "sqlite":
        with sqlite3.connect(data_dir / "backhook.db") as db:
            rows = repr(db.execute("SELECT * FROM api_key").fetchall()).encode()
        return rows + (data_dir / "backhook.db").read_bytes() + (data_dir / "backhook.db-wal").read_bytes()
    return b"".join(repr(models.database.execute_sql(f"SELECT * FROM {table}").fetchall()).encode()
                    for table in models.database.get_tables())


def test_only_the_hash_and_a_display_prefix_are_stored(make_key, backend, data_dir):
    key = make_key()
    row = ApiKey.get()
    assert row.key_hash == models.hash_key(key) and key.startswith(row.prefix)
    assert len(row.prefix) < 16
    raw = stored_bytes(backend, data_dir)
    assert key.encode() not in raw and key[len(row.prefix):].encode() not in raw


def test_valid_bearer_key_is_accepted(client, make_key):
    response = get_jobs(client, {"Authorization": f"Bearer {make_key('jobs:read')}"})
    assert response.status_code == 200


@pytest.mark.parametrize("header", [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Token dbm_" + "a" * 43,
    "bearer dbm_" + "a" * 43,
    "Bearer dbm_short",
    "Bearer xyz_" + "a" * 43,
    "Bearer dbm_" + "a" * 43,
])
def test_missing_malformed_or_unknown_key_is_401(client, header):
    headers = {} if header is None else {"Authorization": header}
    response = get_jobs(client, headers)
    assert response.status_code == 401
    assert set(response.get_json()) == {"error"}


def test_key_in_query_string_is_not_accepted(client, make_key):
    assert client.get(f"/api/jobs?key={make_key()}").status_code == 401


def test_key_differing_in_last_character_is_401(client, make_key):
    key = make_key()
    altered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert get_jobs(client, {"Authorization": f"Bearer {altered}"}).status_code == 401


def test_disabled_key_is_401(client, make_key):
    key = make_key()
    ApiKey.update(enabled=False).execute()
    response = get_jobs(client, {"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert "disabled" in response.get_json()["error"]


def test_expired_key_is_401(client, make_key):
    key = make_key(expires_in_days=1)
    ApiKey.update(expires_at=models.now_ms() - 1).execute()
    response = get_jobs(client, {"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert "expired" in response.get_json()["error"]


@pytest.mark.parametrize("method, path, permission", [
    ("get", "/api/jobs", "jobs:read"),
    ("post", "/api/jobs/x/run", "jobs:execute"),
    ("get", "/api/executions/x", "history:read"),
    ("post", "/api/executions/x/cancel", "jobs:execute"),
])
def test_missing_permission_is_403_naming_it(client, make_key, method, path, permission):
    others = [p for p in models.PERMISSIONS if p != permission]
    headers = {"Authorization": f"Bearer {make_key(*others)}"}
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == 403
    assert permission in response.get_json()["error"]


def test_last_used_is_recorded_at_most_once_a_minute(client, make_key, monkeypatch):
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    get_jobs(client, headers)
    first = ApiKey.get().last_used_at
    assert first is not None
    models._last_touched.clear()  # as another process would see it
    get_jobs(client, headers)
    assert ApiKey.get().last_used_at == first
    models._last_touched.clear()
    monkeypatch.setattr(models, "now_ms", lambda: first + 61_000)
    get_jobs(client, headers)
    assert ApiKey.get().last_used_at == first + 61_000


def test_unknown_permission_is_refused_at_creation(app):
    with pytest.raises(ValueError):
        ApiKey.issue("x", ["jobs:destroy"])


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(client, make_key, scheme):
    assert client.get("/api/jobs", headers={"Authorization": f"{scheme} {make_key()}"}).status_code == 200
