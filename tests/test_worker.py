"""The worker's contract: claims, pickup, leases, stopping, cancel, timeout, progress, and its periodic tasks."""
import os
import signal
import socket
import statistics
import time
from pathlib import Path

import pytest

import models
from leases import MAX_ATTEMPTS
from models import Execution, Setting
from sinks import job_directory
from support import hold_write_lock, poll, run_to_end, trigger, wait_for_status, wait_until
from worker import Task


def command_job(make_job, command, name="cmd", **fields):
    return make_job(name=name, source=f"command:{command}", **fields)


def files_in(job):
    directory = job_directory(job)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def partials_in(job):
    return [name for name in files_in(job) if name.endswith(".partial")]


def test_pending_executions_wait_for_a_worker_and_then_run(client, auth, make_job, start_worker):
    job = command_job(make_job, "echo hello")
    execution_id = trigger(client, auth, job.id)
    assert poll(client, auth, execution_id)["status"] == "Pending"
    start_worker()
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success" and data["progress"] == 100 and data["stage"] == "Completed"


def test_trigger_wakes_an_idle_worker_at_once(client, auth, make_job, start_worker):
    job = command_job(make_job, "true")
    start_worker()
    delays = []
    for _ in range(10):
        execution_id = run_to_end(client, auth, job.id)["id"]
        execution = Execution.get_by_id(execution_id)
        delays.append(execution.started_at - execution.created_at)
    # The contract is 50 ms at the median; the fallback poll alone would give
    # about 500 ms, so this bound proves the wake-up without being flaky.
    assert statistics.median(delays) <= 200, delays


def test_each_execution_runs_once_and_never_beyond_the_global_limit(
        client, auth, make_job, start_worker, tmp_path):
    marker = tmp_path / "runs.log"
    job = command_job(make_job, f"echo ran >> {marker}; sleep 0.05; echo payload")
    Setting.write("max_concurrent_jobs", 2)
    for _ in range(3):
        start_worker()
    ids = [trigger(client, auth, job.id) for _ in range(40)]
    for execution_id in ids:
        wait_for_status(client, auth, execution_id, timeout=60)

    executions = list(Execution.select().where(Execution.id.in_(ids)))
    assert {e.status for e in executions} == {"Success"}
    assert {e.attempts for e in executions} == {1}
    assert marker.read_text().count("ran") == 40
    # Claims and ends are stamped inside their write transactions, so the
    # intervals [started_at, ended_at) show how many ran at each instant.
    events = sorted([(e.started_at, 1) for e in executions] + [(e.ended_at, -1) for e in executions],
                    key=lambda event: (event[0], event[1]))
    running, most = 0, 0
    for _moment, change in events:
        running += change
        most = max(most, running)
    assert most == 2


def kill_worker_during_attempt(start_worker, job, execution_id, attempt):
    """Start a worker with a 1 s lease and kill -9 it while the attempt is writing."""
    worker = start_worker(BACKHOOK_LEASE_SECONDS="1")
    wait_until(lambda: Execution.get_by_id(execution_id).attempts == attempt and partials_in(job),
               message=f"attempt {attempt} to be writing")
    abandoned = partials_in(job)
    worker.stop(sig=signal.SIGKILL)
    return abandoned


def test_a_killed_workers_execution_is_reclaimed_and_run_again(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 2; echo finished")
    execution_id = trigger(client, auth, job.id)
    abandoned = kill_worker_during_attempt(start_worker, job, execution_id, attempt=1)

    start_worker(BACKHOOK_LEASE_SECONDS="1")
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success"
    assert Execution.get_by_id(execution_id).attempts == 2
    assert not set(abandoned) & set(files_in(job))
    assert files_in(job) == [Path(data["path"]).name, Path(data["path"]).name + ".json"]
    assert any("stopped renewing its lease" in line["message"] and "re-queued" in line["message"]
               for line in data["logs"])


def test_a_live_worker_renews_its_lease_so_a_long_backup_is_not_taken_over(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 3; echo finished")
    start_worker(BACKHOOK_LEASE_SECONDS="1")
    start_worker(BACKHOOK_LEASE_SECONDS="1")
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Success"
    assert Execution.get_by_id(data["id"]).attempts == 1


def test_a_backup_running_while_the_database_is_locked_longer_than_the_lease_ends_success_on_its_first_attempt(
        client, auth, make_job, start_worker, database_url, tmp_path):
    go = tmp_path / "go"
    job = command_job(make_job, f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished")
    for _ in range(3):  # its own worker and two others, each able to reclaim
        start_worker(BACKHOOK_LEASE_SECONDS="9", BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    execution_id = trigger(client, auth, job.id)
    wait_for_status(client, auth, execution_id, statuses=("Running",))
    holder = hold_write_lock(database_url, 12)  # longer than the lease: it lapses meanwhile
    assert holder.wait(timeout=30) == 0
    released = models.now_ms()
    # Once the database answers, the lease is renewed by its owner, or taken back by a worker.
    wait_until(lambda: (execution := Execution.get_by_id(execution_id)).lease_expires_at is None
               or execution.lease_expires_at > released or execution.attempts > 1,
               message="the lapsed lease to be renewed or taken back")
    go.touch()

    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success", data["error"]
    assert Execution.get_by_id(execution_id).attempts == 1
    assert not any("stopped renewing its lease" in line["message"] for line in data["logs"])


def test_a_dead_drills_database_server_that_does_not_answer_never_holds_up_lease_renewal(
        client, auth, make_job, start_worker, tmp_path):
    silent = socket.create_server(("127.0.0.1", 0))  # connections queue in its backlog; nothing ever answers
    silent.settimeout(30)
    go = tmp_path / "go"
    job = command_job(make_job, f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished")
    start_worker(BACKHOOK_LEASE_SECONDS="1")
    execution_id = trigger(client, auth, job.id)
    wait_for_status(client, auth, execution_id, statuses=("Running",))
    # A drill whose worker died on its last attempt: the reclaim fails it, then its database is to be dropped.
    server_job = make_job(name="silent-db", source=f"postgresql://app@127.0.0.1:{silent.getsockname()[1]}/app")
    drill = Execution.create(job=server_job.id, type="Restore", status="Running", stage="Restoring",
                             restore_target="scratch", worker_id="dead-worker", attempts=MAX_ATTEMPTS,
                             lease_expires_at=models.now_ms() - 60_000)

    dropping, _ = silent.accept()  # the drop of its database, stuck on a server that does not answer
    stuck_at = models.now_ms()
    wait_until(lambda: Execution.get_by_id(execution_id).lease_expires_at > stuck_at + 1000,
               message="the running backup's lease to be renewed while the drop hangs")
    assert Execution.get_by_id(drill.id).status == "Failed"
    dropping.close()
    silent.close()
    go.touch()

    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Success", data["error"]
    assert Execution.get_by_id(execution_id).attempts == 1


def test_an_execution_fails_when_its_last_attempt_loses_its_worker(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 5")
    execution_id = trigger(client, auth, job.id)
    for attempt in (1, 2):
        kill_worker_during_attempt(start_worker, job, execution_id, attempt)

    start_worker(BACKHOOK_LEASE_SECONDS="1")
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Failed"
    assert "stopped renewing its lease" in data["error"] and "no attempts left" in data["error"]
    assert partials_in(job) == []


def test_a_cancel_its_dead_worker_missed_still_ends_the_execution_cancelled(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 5")
    execution_id = trigger(client, auth, job.id)
    kill_worker_during_attempt(start_worker, job, execution_id, attempt=1)
    assert client.post(f"/api/executions/{execution_id}/cancel", headers=auth).status_code == 200

    start_worker(BACKHOOK_LEASE_SECONDS="1")
    data = wait_for_status(client, auth, execution_id)
    assert data["status"] == "Cancelled"
    assert Execution.get_by_id(execution_id).attempts == 1
    assert partials_in(job) == []


def test_sigterm_lets_a_running_backup_finish(client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 1; echo finished")
    worker = start_worker(BACKHOOK_WORKER_GRACE_SECONDS="20")
    execution_id = trigger(client, auth, job.id)
    wait_for_status(client, auth, execution_id, statuses=("Running",))
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0
    assert poll(client, auth, execution_id)["status"] == "Success"


def test_sigterm_requeues_a_backup_that_outlives_the_grace_period(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 60")
    worker = start_worker(BACKHOOK_WORKER_GRACE_SECONDS="0.5")
    execution_id = trigger(client, auth, job.id)
    wait_until(lambda: partials_in(job), message="the backup to be writing")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=10) == 0

    execution = Execution.get_by_id(execution_id)
    assert (execution.status, execution.stage, execution.attempts) == ("Pending", "Queued", 0)
    assert execution.worker_id is None
    assert partials_in(job) == []


def test_cancel_of_a_pending_execution_is_immediate(client, auth, make_job):
    job = command_job(make_job, "echo never")
    execution_id = trigger(client, auth, job.id)
    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 200
    assert poll(client, auth, execution_id)["status"] == "Cancelled"


def test_cancel_of_a_running_backup_kills_it_within_two_seconds(
        client, auth, make_job, start_worker, tmp_path):
    pid_file = tmp_path / "pid"
    job = command_job(make_job, f"echo started; echo $$ > {pid_file}; exec sleep 60")
    start_worker()
    execution_id = trigger(client, auth, job.id)
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() and partials_in(job),
               message="the command to run")
    pid = int(pid_file.read_text())

    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 200
    accepted = time.monotonic()
    data = wait_for_status(client, auth, execution_id, timeout=10)
    assert time.monotonic() - accepted <= 2.0
    assert data["status"] == "Cancelled" and data["error"] is None and data["path"] is None
    assert files_in(job) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_cancel_while_compressing_stops_within_two_seconds_and_leaves_no_thread(
        client, auth, make_job, start_worker):
    job = command_job(make_job, "exec cat /dev/urandom")  # endless, and every byte goes through zstd
    worker = start_worker()
    idle_threads = threads_of(worker.proc.pid)
    execution_id = trigger(client, auth, job.id)
    wait_until(lambda: poll(client, auth, execution_id)["progress"] > 5, message="compression to be under way")

    response = client.post(f"/api/executions/{execution_id}/cancel", headers=auth)
    assert response.status_code == 200
    accepted = time.monotonic()
    data = wait_for_status(client, auth, execution_id, timeout=10)
    assert time.monotonic() - accepted <= 2.0
    assert data["status"] == "Cancelled" and files_in(job) == []
    wait_until(lambda: threads_of(worker.proc.pid) == idle_threads, timeout=5,
               message="the attempt's threads (its own, zstd's, writeback) to end")


def test_a_backup_past_its_timeout_fails_with_a_clear_error(client, auth, make_job, start_worker):
    job = command_job(make_job, "echo started; sleep 60", timeout_seconds=1)
    start_worker()
    data = run_to_end(client, auth, job.id, timeout=15)
    assert data["status"] == "Failed"
    assert "timed out after 1 s" in data["error"]
    assert files_in(job) == []


def test_a_failing_command_fails_with_its_own_stderr(client, auth, make_job, start_worker):
    job = command_job(make_job, "echo partial output; echo 'disk quota exceeded' >&2; exit 3")
    start_worker()
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Failed" and data["stage"] == "Failed"
    assert "exited with status 3" in data["error"] and "disk quota exceeded" in data["error"]
    assert any(line["level"] == "error" and "disk quota exceeded" in line["message"]
               for line in data["logs"])
    assert files_in(job) == []


def test_progress_never_decreases_and_moves_through_the_stages(client, auth, make_job, start_worker):
    # About 3 s of output, so that the poller sees several batched progress writes.
    job = command_job(make_job, "for i in $(seq 1 15); do head -c 2000000 /dev/urandom; sleep 0.2; done",
                      compression="none")
    start_worker()
    execution_id = trigger(client, auth, job.id)
    seen = []
    while not seen or seen[-1][0] not in ("Success", "Failed"):
        data = poll(client, auth, execution_id)
        seen.append((data["status"], data["progress"], data["stage"]))
        time.sleep(0.05)
    progress = [p for _status, p, _stage in seen]
    assert progress == sorted(progress)
    assert seen[-1] == ("Success", 100, "Completed")
    assert any(stage == "Dumping" and 5 <= p < 60 for _s, p, stage in seen)
    assert len({p for p in progress if 5 < p < 60}) >= 2


def test_a_command_printing_nothing_still_shows_its_stage_and_progress_while_it_runs(
        client, auth, make_job, start_worker, tmp_path):
    go = tmp_path / "go"
    job = command_job(make_job, f"while [ ! -e {go} ]; do sleep 0.05; done; echo finally")
    start_worker()
    execution_id = trigger(client, auth, job.id)
    dumping = wait_until(lambda: (data := poll(client, auth, execution_id))["stage"] == "Dumping" and data,
                         message="the silent command's stage to be written")
    assert (dumping["status"], dumping["progress"]) == ("Running", 5)
    assert not go.exists()  # not one byte was dumped yet
    go.touch()
    assert wait_for_status(client, auth, execution_id)["status"] == "Success"


def test_a_missing_tool_fails_with_a_clear_error(client, auth, make_job, start_worker, tmp_path):
    job = make_job(name="pg", source="postgresql://postgres@127.0.0.1:5432/test")
    start_worker(PATH=str(tmp_path))
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Failed"
    assert data["error"] == "pg_dump is not installed (not found on PATH)"


def peak_rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_a_large_backup_streams_in_bounded_memory(client, auth, make_job, start_worker):
    # Incompressible and larger than the memory bound: it can only fit by streaming.
    job = command_job(make_job, "head -c 250000000 /dev/urandom")
    worker = start_worker()
    data = run_to_end(client, auth, job.id, timeout=120)
    Path(data["path"]).unlink()
    assert data["status"] == "Success" and data["size"] > 250_000_000
    assert peak_rss_mb(worker.proc.pid) < 150


def test_the_worker_replays_spooled_webhooks(app, data_dir, start_worker):
    from events import webhook_event
    from spool import SPOOL_NAME, spool_event
    with models.database.atomic():
        models.Website.create(domain="example.com")
    spool_event(data_dir, webhook_event("progress", {"domain": "example.com", "backup_id": "b-1", "progress": 30}))
    start_worker()
    replayed = wait_until(lambda: models.Backup.get_or_none(models.Backup.backup_id == "b-1"), timeout=10,
                          message="the spooled event to be applied")
    assert replayed.progress == 30
    wait_until(lambda: not list(data_dir.glob("webhook-spool*.replaying")), timeout=10,
               message="the replayed spool to be removed")
    assert not (data_dir / SPOOL_NAME).exists()


# --- Task: a periodic duty, run with the time given ---------------------------------------

class Duty:
    """A duty that counts its runs and raises while `failing` is set."""

    def __init__(self):
        self.runs, self.failing = 0, False

    def __call__(self):
        self.runs += 1
        if self.failing:
            raise RuntimeError("database is locked")


def test_a_task_runs_when_due_and_not_before():
    duty = Duty()
    task = Task("reclaim", 1.0, duty)
    assert task.run(now=100.0) and duty.runs == 1  # a new task is due at once
    assert not task.run(now=100.5) and not task.run(now=100.999)
    assert duty.runs == 1
    assert task.run(now=101.0) and duty.runs == 2


def test_a_tasks_next_time_advances_from_when_it_ran():
    task = Task("checkpoint", 0.25, Duty())
    task.run(now=10.0)
    assert task.next_at == 10.25
    task.run(now=13.0)  # late, after a slow tick: the next is an interval after this run, not a burst
    assert task.next_at == 13.25 and task.due_in(now=13.0) == 0.25
    assert task.due_in(now=14.0) == 0.0


def test_a_postponed_task_is_first_due_one_interval_later():
    duty = Duty()
    task = Task("spool replay", 1.0, duty)
    task.postpone(now=50.0)
    assert not task.run(now=50.5) and duty.runs == 0
    assert task.run(now=51.0) and duty.runs == 1


def test_a_failing_duty_is_retried_at_its_next_interval():
    duty = Duty()
    task = Task("website sync", 1.0, duty)
    duty.failing = True
    with pytest.raises(RuntimeError):
        task.run(now=100.0)
    assert not task.run(now=100.5)
    duty.failing = False
    assert task.run(now=101.0) and duty.runs == 2


def test_a_failing_renewal_is_retried_at_the_next_run():
    duty = Duty()
    task = Task("renewals", 3.0, duty, retry_at_once=True)
    duty.failing = True
    with pytest.raises(RuntimeError):
        task.run(now=100.0)
    duty.failing = False
    assert task.run(now=100.25) and duty.runs == 2
    assert task.next_at == 103.25
