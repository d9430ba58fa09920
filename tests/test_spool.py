"""The webhook spool (spool.py): an event the database cannot take is kept on disk, acknowledged, and replayed once."""
import json
import sqlite3
import subprocess
import sys

import psycopg2
import pytest
from peewee import SqliteDatabase

import database
import models
from events import webhook_event
from models import Backup, BackupEvent
from spool import REJECTED_NAME, SPOOL_NAME, replay_spool, spool_event
from support import PROJECT, hold_write_lock
from test_webhooks import HEADERS, backup, events, hook, site  # noqa: F401 (hook and site are fixtures)


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
    database.open_database(database_url, busy_seconds=0.05)


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
from events import webhook_event
data_dir, room = sys.argv[1], int(sys.argv[2])
size = (Path(data_dir) / spool.SPOOL_NAME).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    spool.spool_event(data_dir, webhook_event("progress", {"domain": "example.com", "backup_id": "refused",
                                                           "pad": "x" * 2 * room}))
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
    models.database.initialize(SqliteDatabase(str(tmp_path / "no" / "such" / "dir.db")))
    response = hook("complete")
    assert response.status_code == 200 and response.get_json() == {"success": True}
    record = json.loads((data_dir / SPOOL_NAME).read_text())
    assert record["domain"] == "example.com" and record["kind"] == "complete"
    models.database.close()
    database.open_database(database_url)
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


def test_events_spooled_while_a_replay_runs_are_neither_lost_nor_doubled(site, data_dir):
    import threading

    def spool_many(writer):
        for number in range(250):
            body = {"domain": "example.com", "backup_id": f"w{writer}-{number}"}
            spool_event(data_dir, webhook_event("progress", body))

    writers = [threading.Thread(target=spool_many, args=(n,)) for n in range(4)]
    for writer in writers:
        writer.start()
    applied = 0
    while any(writer.is_alive() for writer in writers):
        applied += replay_spool(data_dir)
    applied += replay_spool(data_dir)
    assert applied == 1000
    assert Backup.select().count() == 1000 and BackupEvent.select().count() == 1000
