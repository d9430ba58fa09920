"""Writers take turns on a file lock before BEGIN IMMEDIATE, and the WAL checkpoint is the worker's chore."""
import fcntl
import os
import signal
import subprocess
import sys
import threading

import pytest
from peewee import OperationalError

import database
import models
from sqlite_writers import TurnTakingSqliteDatabase
from support import PROJECT, TOKEN, wait_until

pytestmark = pytest.mark.sqlite_only("the writers' file lock and the write-ahead log are SQLite's")

HOLD_TURN = """
import sys, time
sys.path.insert(0, {project!r})
from sqlite_writers import TurnTakingSqliteDatabase
db = TurnTakingSqliteDatabase({path!r}, timeout=5)
db.begin("IMMEDIATE")
print("holding", flush=True)
time.sleep(60)
"""


@pytest.fixture
def path(tmp_path):
    path = str(tmp_path / "turns.db")
    setup = TurnTakingSqliteDatabase(path, pragmas={"journal_mode": "wal"})
    setup.execute_sql("CREATE TABLE step (id INTEGER PRIMARY KEY, who TEXT)")
    setup.close()
    return path


def writer(path, timeout=5):
    return TurnTakingSqliteDatabase(path, timeout=timeout, lock_type="IMMEDIATE")


def write_step(db, who):
    with db.atomic():
        db.execute_sql("INSERT INTO step (who) VALUES (?)", (who,))


def in_thread(target, *args):
    outcome = {}

    def run():
        try:
            outcome["result"] = target(*args)
        except Exception as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def turn_is_free(path):
    fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_write_transaction_holds_the_turn_from_begin_to_commit(path, app):
    db = writer(path)
    assert turn_is_free(path)
    with db.atomic():
        assert not turn_is_free(path)
        with db.atomic():  # a savepoint: still the same turn
            assert not turn_is_free(path)
        assert not turn_is_free(path)
    assert turn_is_free(path)
    assert isinstance(database.opened(), TurnTakingSqliteDatabase)  # what the app really uses


def test_a_writer_waits_for_the_turn_and_goes_as_soon_as_it_is_free(path):
    first, second = writer(path), writer(path)
    with first.atomic():
        first.execute_sql("INSERT INTO step (who) VALUES ('first')")
        thread, outcome = in_thread(write_step, second, "second")
        thread.join(0.3)
        assert thread.is_alive(), "the second writer must wait while the first holds its turn"
    thread.join(5)
    assert not thread.is_alive() and "error" not in outcome
    assert [row[0] for row in first.execute_sql("SELECT who FROM step ORDER BY id")] == ["first", "second"]


def test_threads_of_one_process_take_turns_too(path):
    shared = writer(path)  # one connection per thread, one turn file for all of them
    with shared.atomic():
        thread, outcome = in_thread(write_step, shared, "other thread")
        thread.join(0.3)
        assert thread.is_alive()
    thread.join(5)
    assert "error" not in outcome
    assert shared.execute_sql("SELECT count(*) FROM step").fetchone()[0] == 1


def test_a_wait_past_the_busy_timeout_falls_back_to_sqlite_and_fails_cleanly(path):
    holder, impatient = writer(path), writer(path, timeout=0.2)
    with holder.atomic():
        thread, outcome = in_thread(write_step, impatient, "late")
        thread.join(10)
        assert not thread.is_alive(), "the wait must end with the busy timeout, not with the holder"
        assert isinstance(outcome.get("error"), OperationalError)
    write_step(impatient, "after")  # the failed attempt left no turn and no lock behind
    assert [row[0] for row in holder.execute_sql("SELECT who FROM step")] == ["after"]


def test_a_rolled_back_transaction_ends_the_turn(path):
    first, second = writer(path), writer(path)
    with pytest.raises(RuntimeError):
        with first.atomic():
            first.execute_sql("INSERT INTO step (who) VALUES ('undone')")
            raise RuntimeError("abandon")
    thread, outcome = in_thread(write_step, second, "next")
    thread.join(5)
    assert not thread.is_alive() and "error" not in outcome
    assert [row[0] for row in first.execute_sql("SELECT who FROM step")] == ["next"]


def test_a_killed_holder_releases_its_turn(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TURN.format(project=str(PROJECT), path=path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waiting, outcome = in_thread(write_step, writer(path), "survivor")
        waiting.join(0.3)
        assert waiting.is_alive()
        os.kill(holder.pid, signal.SIGKILL)
        waiting.join(5)
        assert not waiting.is_alive() and "error" not in outcome
    finally:
        holder.kill()
        holder.wait()


def test_requests_leave_the_checkpoint_to_the_worker(client, data_dir, start_worker):
    database_file = data_dir / "backhook.db"
    models.Website.create(domain="example.com")
    size_before = database_file.stat().st_size
    for number in range(300):
        response = client.post("/webhooks/backup-progress", headers={"x-wpfort-token": TOKEN},
                               json={"domain": "example.com", "backup_id": f"b{number}", "progress": 5})
        assert response.status_code == 200
    # In WAL mode only a checkpoint writes the database file itself.
    assert database_file.stat().st_size == size_before
    start_worker()
    wait_until(lambda: database_file.stat().st_size > size_before, timeout=10)
    assert models.Backup.select().count() == 300


def test_the_app_reads_through_a_large_page_cache_and_no_memory_map(app):
    # A memory map is dropped whole after every other process's write; see database.PAGE_CACHE_KIB.
    assert models.database.execute_sql("PRAGMA mmap_size").fetchone()[0] == 0
    assert models.database.execute_sql("PRAGMA cache_size").fetchone()[0] == -database.PAGE_CACHE_KIB
