"""GET /api/websites/<domain>/backups: a site's backups, newest first, with the last remote list."""
import json
import re

import pytest

import models
from models import Backup, Website

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
BACKUP_FIELDS = ["backupId", "status", "progress", "errorMessage", "createdAt", "updatedAt", "completedAt"]


@pytest.fixture
def site(app):
    with models.database.atomic():
        return Website.create(domain="example.com")


def add_backups(site, count, start=1_700_000_000_000):
    with models.database.atomic():
        for number in range(count):
            Backup.create(website=site.id, backup_id=f"b{number:03d}", status="in_progress",
                          progress=number % 101, created_at=start + number, updated_at=start + number)


def get(client, auth, path="/api/websites/example.com/backups", **params):
    return client.get(path, headers=auth, query_string=params)


def test_answers_the_spec_shape_newest_first(client, auth, site):
    add_backups(site, 3)
    Backup.update(status="completed", progress=100, completed_at=1_700_000_001_000).where(
        Backup.backup_id == "b002").execute()
    response = get(client, auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    data = body["data"]
    assert list(data) == ["domain", "backups", "syncedAt", "remoteBackups"]
    assert data["domain"] == "example.com" and data["syncedAt"] is None and data["remoteBackups"] == []
    assert [entry["backupId"] for entry in data["backups"]] == ["b002", "b001", "b000"]
    newest = data["backups"][0]
    assert list(newest) == BACKUP_FIELDS
    assert newest["status"] == "completed" and newest["progress"] == 100 and newest["errorMessage"] is None
    assert all(ISO_MS.fullmatch(newest[field]) for field in ("createdAt", "updatedAt", "completedAt"))
    assert data["backups"][1]["completedAt"] is None


def test_shows_the_last_remote_list_and_when_it_was_synced(client, auth, site):
    remote = [{"id": "r1", "type": "full", "size": 1234, "created_at": "2026-01-01 00:00:00", "status": "completed"}]
    Website.update(remote_backups=json.dumps(remote), synced_at=1_700_000_000_000).execute()
    data = get(client, auth).get_json()["data"]
    assert data["remoteBackups"] == remote
    assert data["syncedAt"] == "2023-11-14T22:13:20.000Z"


def test_webhook_progress_is_visible_through_the_api(client, auth, site):
    from support import TOKEN
    client.post("/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                json={"domain": "example.com", "backup_id": "live", "progress": 45.5})
    backups = get(client, auth).get_json()["data"]["backups"]
    assert [(b["backupId"], b["status"], b["progress"]) for b in backups] == [("live", "in_progress", 46)]


@pytest.mark.parametrize("domain", ["EXAMPLE.com", "example.com.", "%20example.com%20"])
def test_domain_in_the_path_matches_like_webhooks(client, auth, site, domain):
    assert get(client, auth, f"/api/websites/{domain}/backups").status_code == 200


def test_unknown_website_is_404(client, auth, site):
    response = get(client, auth, "/api/websites/nope.example/backups")
    assert response.status_code == 404
    assert response.get_json() == {"error": "Website not found"}


def test_limit_defaults_to_100(client, auth, site):
    add_backups(site, 120)
    assert len(get(client, auth).get_json()["data"]["backups"]) == 100


def test_limit_and_before_page_through_the_history(client, auth, site):
    add_backups(site, 7)
    seen, before = [], None
    while True:
        params = {"limit": 3, **({"before": before} if before else {})}
        page = get(client, auth, **params).get_json()["data"]["backups"]
        if not page:
            break
        seen += [entry["backupId"] for entry in page]
        before = page[-1]["backupId"]
    assert seen == [f"b{n:03d}" for n in range(6, -1, -1)]


def test_paging_is_stable_when_backups_share_a_creation_time(client, auth, site):
    with models.database.atomic():
        for number in range(5):
            Backup.create(website=site.id, backup_id=f"same{number}", status="pending", created_at=5, updated_at=5)
    first = get(client, auth, limit=2).get_json()["data"]["backups"]
    rest = get(client, auth, limit=10, before=first[-1]["backupId"]).get_json()["data"]["backups"]
    ids = [entry["backupId"] for entry in first + rest]
    assert sorted(ids) == [f"same{n}" for n in range(5)] and len(set(ids)) == 5


def test_limit_of_10000_is_allowed(client, auth, site):
    assert get(client, auth, limit=10000).status_code == 200


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "abc", "1.5", "", "²"])
def test_bad_limit_is_400(client, auth, site, limit):
    response = get(client, auth, limit=limit)
    assert response.status_code == 400
    assert "limit" in response.get_json()["error"]


def test_before_naming_no_backup_of_the_site_is_400(client, auth, site):
    add_backups(site, 2)
    response = get(client, auth, before="nope")
    assert response.status_code == 400
    assert "before" in response.get_json()["error"]


def test_needs_the_websites_read_permission(client, make_key, site):
    key = make_key("jobs:read", "history:read")
    response = client.get("/api/websites/example.com/backups", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert "websites:read" in response.get_json()["error"]
