"""Worker health: heartbeats, the workers /readyz and GET /api/jobs count, and the note a Pending run gets."""
import socket

import config
import heartbeats
import models
import worker
from models import Execution, ExecutionLog, WorkerHeartbeat, now_ms
from statuses import ExecutionStatus
from support import poll, trigger, wait_until

MINUTE = 60_000


def notes(execution_id):
    return [line.message for line in ExecutionLog.select().where(ExecutionLog.execution == execution_id)
            if line.message.startswith(heartbeats.UNATTENDED)]


def test_a_worker_beats_from_its_claim_loop_and_forgets_its_row_when_it_stops(client, auth, start_worker):
    assert client.get("/readyz").get_json() == {"status": "ok", "workers": 0}
    running = start_worker()
    beat = wait_until(lambda: WorkerHeartbeat.get_or_none(), message="the worker's heartbeat")
    assert (beat.host, beat.pid) == (socket.gethostname(), running.proc.pid)
    assert beat.id.startswith(f"{beat.host}-{beat.pid}-") and beat.last_seen >= beat.started_at
    assert client.get("/readyz").get_json() == {"status": "ok", "workers": 1}
    assert client.get("/api/jobs", headers=auth).get_json()["workers"] == 1
    running.stop()
    assert WorkerHeartbeat.select().count() == 0
    assert client.get("/readyz").get_json()["workers"] == 0


def test_the_heartbeat_is_a_task_of_each_tick_due_every_interval(app, data_dir):
    beating = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)}))
    beating.tick(now=1000.0)
    first = WorkerHeartbeat.get_by_id(beating.id)
    WorkerHeartbeat.update(last_seen=1).execute()
    beating.tick(now=1000.0 + heartbeats.BEAT_EVERY_SECONDS / 2)
    assert WorkerHeartbeat.get_by_id(beating.id).last_seen == 1  # not due yet
    beating.tick(now=1000.0 + heartbeats.BEAT_EVERY_SECONDS)
    assert WorkerHeartbeat.get_by_id(beating.id).last_seen >= first.last_seen
    assert WorkerHeartbeat.select().count() == 1  # one row per worker, updated in place


def test_only_workers_seen_within_a_minute_count(app):
    now = now_ms()
    WorkerHeartbeat.beat("fresh", "a", 1, now - 5000, now=now - 5000)
    WorkerHeartbeat.beat("edge", "b", 2, now - MINUTE, now=now - MINUTE)
    WorkerHeartbeat.beat("gone", "c", 3, now - MINUTE - 1, now=now - MINUTE - 1)
    assert heartbeats.workers_seen(now) == 2


def test_heartbeats_of_workers_gone_for_a_day_are_purged(app):
    now = now_ms()
    WorkerHeartbeat.beat("recent", "a", 1, now, now=now - heartbeats.KEEP_MS + 1000)
    WorkerHeartbeat.beat("dead", "b", 2, now, now=now - heartbeats.KEEP_MS - 1000)
    assert heartbeats.purge_stale(now) == 1
    assert [row.id for row in WorkerHeartbeat.select()] == ["recent"]
    assert heartbeats.purge_stale(now) == 0


def test_a_run_triggered_with_no_worker_says_so_once_however_often_it_is_polled(client, auth, make_job):
    execution_id = trigger(client, auth, make_job().id)
    assert notes(execution_id) == [f"{heartbeats.UNATTENDED} in the last 24 h; the execution waits for a worker "
                                   "(`backhook worker` runs one)"]
    for _ in range(3):
        data = poll(client, auth, execution_id, logs=True)
    assert [line["level"] for line in data["logs"]] == ["warning"] and len(notes(execution_id)) == 1


def test_a_worker_that_came_and_went_since_the_note_earns_another(client, auth, make_job):
    now = now_ms()
    WorkerHeartbeat.beat("old", "a", 1, now - 10 * MINUTE, now=now - 10 * MINUTE)
    execution_id = trigger(client, auth, make_job().id)
    assert notes(execution_id) == [f"{heartbeats.UNATTENDED} for 600 s; the execution waits for a worker"]
    back = now_ms() + 1000  # it came back after the note, and was gone again two minutes later
    WorkerHeartbeat.beat("old", "a", 1, now, now=back)
    assert heartbeats.note_if_unattended(execution_id, now=back + 2 * MINUTE)
    assert not heartbeats.note_if_unattended(execution_id, now=back + 3 * MINUTE)
    assert notes(execution_id)[1] == f"{heartbeats.UNATTENDED} for 120 s; the execution waits for a worker"


def test_no_note_while_a_worker_is_alive_or_once_the_run_left_pending(client, auth, make_job):
    WorkerHeartbeat.beat("alive", "a", 1, now_ms())
    job = make_job()
    execution_id = trigger(client, auth, job.id)
    poll(client, auth, execution_id)
    assert notes(execution_id) == []
    WorkerHeartbeat.delete().execute()
    Execution.update(status=ExecutionStatus.RUNNING).where(Execution.id == execution_id).execute()
    poll(client, auth, execution_id)
    assert not heartbeats.note_if_unattended(execution_id) and notes(execution_id) == []


def test_the_cli_trigger_notes_the_missing_worker_too(runner, make_job):
    result = runner("jobs", "run", make_job().name)
    assert result.exit_code == 0, result.output
    assert len(notes(Execution.get().id)) == 1


def test_a_note_that_meets_a_busy_database_never_fails_the_trigger(client, auth, make_job, monkeypatch):
    def busy(*args):
        raise models.OperationalError("database is locked")

    monkeypatch.setattr(heartbeats, "workers_seen", busy)
    response = client.post(f"/api/jobs/{make_job().id}/run", headers=auth)
    assert response.status_code == 200
    assert Execution.get_by_id(response.get_json()["executionId"]).status == ExecutionStatus.PENDING
