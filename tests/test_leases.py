"""Lease decisions with an injected `now`, on the test's real database: claim, renew, reclaim, requeue or fail."""
import pytest

from leases import MAX_ATTEMPTS, Sightings, claim, reclaim, renew, requeue_or_fail
from models import Execution, ExecutionLog, Setting
from statuses import ExecutionStatus, Stage

LEASE_MS = 1000
LAPSED_AT = 6000   # when the leases of `held` executions run out
AFTER = 7000       # a `now` after that


@pytest.fixture
def job(make_job):
    return make_job(name="leased")


def held(job, worker_id="gone", attempts=1, status=ExecutionStatus.RUNNING, **fields):
    """An execution of `job` that `worker_id` holds, with a lease running out at LAPSED_AT."""
    execution = Execution.enqueue(job)
    Execution.update(status=status, stage=fields.pop("stage", Stage.DUMPING), worker_id=worker_id,
                     attempts=attempts, lease_expires_at=LAPSED_AT, **fields).where(
        Execution.id == execution.id).execute()
    return Execution.get_by_id(execution.id)


def queued(job, count):
    """`count` Pending executions of `job`, created a millisecond apart, oldest first."""
    return [Execution.create(job=job.id, created_at=1000 + number) for number in range(count)]


def no_leftovers(_job, _execution_id):
    return []


# --- claim ---------------------------------------------------------------------------------

def test_claim_takes_the_oldest_pending_up_to_the_global_limit(job):
    Setting.write("max_concurrent_jobs", 2)
    oldest, second, _third = queued(job, 3)
    claimed = claim("w1", LEASE_MS, now=5000)
    assert [execution.id for execution in claimed] == [oldest.id, second.id]
    for execution in claimed:
        assert (execution.status, execution.stage, execution.worker_id) == ("Running", "Initializing", "w1")
        assert (execution.started_at, execution.lease_expires_at, execution.attempts) == (5000, 6000, 1)
        assert execution.job.name == "leased"
    assert claim("w2", LEASE_MS, now=5001) == []  # both slots are taken, by another worker too


def test_claim_fills_only_the_slots_left_by_running_executions(job):
    Setting.write("max_concurrent_jobs", 2)
    held(job)
    pending = queued(job, 2)
    assert [execution.id for execution in claim("w1", LEASE_MS, now=5000)] == [pending[0].id]


def test_claim_of_nothing_pending_returns_nothing(job):
    held(job)
    assert claim("w1", LEASE_MS, now=5000) == []


def test_a_second_claim_keeps_the_first_start_and_clears_a_stale_cancel(job):
    execution = Execution.enqueue(job)
    Execution.update(started_at=1234, attempts=1, cancel_requested=True).where(Execution.id == execution.id).execute()
    (claimed,) = claim("w1", LEASE_MS, now=5000)
    assert (claimed.started_at, claimed.attempts, claimed.cancel_requested) == (1234, 2, False)


# --- renew ---------------------------------------------------------------------------------

def test_renew_extends_the_workers_own_leases_from_now(job):
    ours = [held(job, worker_id="w1") for _ in range(2)]
    assert renew("w1", [execution.id for execution in ours], LEASE_MS, now=AFTER) == []
    assert {Execution.get_by_id(execution.id).lease_expires_at for execution in ours} == {AFTER + LEASE_MS}


def test_renew_returns_the_ids_another_worker_took_over(job):
    kept, taken = held(job, worker_id="w1"), held(job, worker_id="w2", attempts=2)
    assert renew("w1", [kept.id, taken.id], LEASE_MS, now=AFTER) == [taken.id]
    assert Execution.get_by_id(kept.id).lease_expires_at == AFTER + LEASE_MS
    assert Execution.get_by_id(taken.id).lease_expires_at == LAPSED_AT  # not ours to renew


def test_renew_does_not_stop_a_run_that_its_remote_backup_ended(job):
    ended = held(job, worker_id="w1", status=ExecutionStatus.FAILED, stage=Stage.FAILED)
    requeued = held(job, worker_id=None, status=ExecutionStatus.PENDING, stage=Stage.QUEUED)  # by a reclaim
    Execution.update(lease_expires_at=None).where(Execution.id.in_([ended.id, requeued.id])).execute()
    assert renew("w1", [ended.id, requeued.id], LEASE_MS, now=AFTER) == [requeued.id]


def test_renew_of_no_runs_writes_nothing(job):
    assert renew("w1", [], LEASE_MS, now=AFTER) == []


# --- reclaim -------------------------------------------------------------------------------

def test_a_lapsed_lease_is_reclaimed_only_after_it_was_watched_for_the_patience(job):
    execution = held(job)
    sightings = Sightings(patience_seconds=2.0)
    assert reclaim(sightings, [], no_leftovers, now=AFTER, at=100.0) == []
    assert reclaim(sightings, [], no_leftovers, now=AFTER, at=101.9) == []
    assert Execution.get_by_id(execution.id).status == "Running"
    assert [due.id for due in reclaim(sightings, [], no_leftovers, now=AFTER, at=102.0)] == [execution.id]
    reclaimed = Execution.get_by_id(execution.id)
    assert (reclaimed.status, reclaimed.stage, reclaimed.worker_id, reclaimed.lease_expires_at) == (
        "Pending", "Queued", None, None)


def test_a_lease_that_has_not_run_out_is_not_watched(job):
    execution = held(job)
    sightings = Sightings(patience_seconds=0.0)
    assert reclaim(sightings, [], no_leftovers, now=LAPSED_AT, at=100.0) == []
    assert sightings.first_seen == {}
    assert Execution.get_by_id(execution.id).worker_id == "gone"


def test_a_renewal_seen_between_sightings_starts_the_watch_again(job):
    execution = held(job)
    sightings = Sightings(patience_seconds=2.0)
    reclaim(sightings, [], no_leftovers, now=AFTER, at=100.0)
    Execution.update(lease_expires_at=LAPSED_AT + 500).where(Execution.id == execution.id).execute()
    assert reclaim(sightings, [], no_leftovers, now=AFTER, at=102.0) == []  # a new lease, first seen now
    assert [due.id for due in reclaim(sightings, [], no_leftovers, now=AFTER, at=104.0)] == [execution.id]


def test_sightings_are_forgotten_once_nothing_has_lapsed(job):
    execution = held(job)
    sightings = Sightings(patience_seconds=2.0)
    reclaim(sightings, [], no_leftovers, now=AFTER, at=100.0)
    assert reclaim(sightings, [], no_leftovers, now=LAPSED_AT - 1, at=101.0) == []
    assert sightings.first_seen == {}
    assert reclaim(sightings, [], no_leftovers, now=AFTER, at=102.0) == []  # watched from 102 on, not 100
    assert Execution.get_by_id(execution.id).status == "Running"


def test_the_workers_own_runs_are_never_reclaimed(job):
    own = held(job, worker_id="w1")
    sightings = Sightings(patience_seconds=0.0)
    for at in (100.0, 200.0):
        assert reclaim(sightings, [own.id], no_leftovers, now=AFTER, at=at) == []
    assert Execution.get_by_id(own.id).worker_id == "w1"


def test_reclaim_removes_only_a_running_attempts_leftovers(job, tmp_path):
    running, pruning = held(job), held(job, status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION)
    partials = {running.id: tmp_path / "running.partial", pruning.id: tmp_path / "artifact.tar.zst"}
    for path in partials.values():
        path.write_text("x")
    asked = []

    def leftovers(leftover_job, execution_id):
        asked.append((leftover_job.id, execution_id))
        return [partials[execution_id]]

    reclaim(Sightings(patience_seconds=0.0), [], leftovers, now=AFTER, at=100.0)
    assert asked == [(job.id, running.id)]
    assert not partials[running.id].exists() and partials[pruning.id].exists()


# --- requeue or fail -----------------------------------------------------------------------

def last_log(execution):
    return ExecutionLog.select().where(ExecutionLog.execution == execution.id).order_by(ExecutionLog.id.desc()).get()


def test_a_lost_attempt_below_the_limit_is_requeued_and_its_partial_files_removed(job, tmp_path):
    partial = tmp_path / "attempt.partial"
    partial.write_text("half")
    execution = held(job, attempts=MAX_ATTEMPTS - 1)
    assert requeue_or_fail(execution, [partial], now=AFTER)
    requeued = Execution.get_by_id(execution.id)
    assert (requeued.status, requeued.stage, requeued.ended_at, requeued.error) == ("Pending", "Queued", None, None)
    assert not partial.exists()
    message = last_log(execution).message
    assert "worker gone stopped renewing its lease" in message and "re-queued" in message
    assert f"(attempt {MAX_ATTEMPTS - 1} of {MAX_ATTEMPTS})" in message and "attempt.partial" in message


def test_a_lost_attempt_at_the_limit_fails(job):
    execution = held(job, attempts=MAX_ATTEMPTS)
    assert requeue_or_fail(execution, [], now=AFTER)
    failed = Execution.get_by_id(execution.id)
    assert (failed.status, failed.stage, failed.ended_at, failed.worker_id) == ("Failed", "Failed", AFTER, None)
    assert "no attempts left" in failed.error and failed.error == last_log(execution).message


def test_a_lost_attempt_with_a_cancel_pending_ends_cancelled(job):
    execution = held(job, cancel_requested=True)
    assert requeue_or_fail(execution, [], now=AFTER)
    cancelled = Execution.get_by_id(execution.id)
    assert (cancelled.status, cancelled.stage, cancelled.ended_at) == ("Cancelled", "Cancelled", AFTER)


def test_a_success_whose_worker_died_while_pruning_is_completed_and_keeps_its_artifact(job):
    execution = held(job, status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION, path="/kept")
    assert requeue_or_fail(execution, [], now=AFTER)
    completed = Execution.get_by_id(execution.id)
    assert (completed.status, completed.stage, completed.progress, completed.path) == (
        "Success", "Completed", 100, "/kept")
    assert "while applying retention" in completed.retention_error and completed.lease_expires_at is None


def test_an_execution_that_changed_since_it_was_seen_is_left_alone(job, tmp_path):
    partial = tmp_path / "new-attempt.partial"
    partial.write_text("new")
    seen = held(job)
    Execution.update(worker_id="w2", attempts=2, lease_expires_at=AFTER + LEASE_MS).where(
        Execution.id == seen.id).execute()  # claimed again meanwhile
    assert not requeue_or_fail(seen, [partial], now=AFTER)
    current = Execution.get_by_id(seen.id)
    assert (current.status, current.worker_id, current.attempts) == ("Running", "w2", 2)
    assert partial.exists()
