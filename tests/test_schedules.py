"""Schedules: checking them, their due times (DST included), and queueing each due run once, with an injected clock."""
import datetime
import logging
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

import schedules
from models import Execution, ExecutionLog, Job, iso, now_ms
from schedules import ScheduleError, enqueue_due, next_run, set_schedule
from statuses import ExecutionStatus
from support import PROJECT, wait_until


def ms(text, zone="UTC"):
    """'2026-03-29 03:00' on the wall clock of `zone` (or with its own offset), in ms since the epoch."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return round(moment.timestamp() * 1000)


def utc(ms_value):
    return iso(ms_value)


def scheduled(make_job, expression, zone="UTC", at="2026-06-01 12:00", name="nightly", **fields):
    """A job with `expression` set at `at` (UTC), so its first due run is the first after then."""
    job = make_job(name=name, **fields)
    set_schedule(job, expression, zone, now=ms(at))
    return Job.get_by_id(job.id)


def finish_all():
    Execution.update(status=ExecutionStatus.SUCCESS).where(Execution.status.in_(schedules.ACTIVE)).execute()


def runs_of(job):
    return list(Execution.select().where(Execution.job == job.id).order_by(Execution.created_at))


# --- checking a schedule ---------------------------------------------------------------------

@pytest.mark.parametrize("expression, stored", [
    ("0 3 * * *", "0 3 * * *"), ("  0   3 * *  * ", "0 3 * * *"), ("*/15 9-17 * * mon-fri", "*/15 9-17 * * mon-fri"),
    ("@daily", "@daily"), ("@DAILY", "@daily"), ("@midnight", "@midnight"), ("@hourly", "@hourly"),
    ("@weekly", "@weekly"), ("@monthly", "@monthly"), ("@yearly", "@yearly"), ("@annually", "@annually"),
])
def test_five_fields_and_the_aliases_are_accepted(expression, stored):
    assert schedules.check(expression, "Europe/Berlin") == stored


@pytest.mark.parametrize("expression, reason", [
    ("61 * * * *", "[61 * * * *] is not acceptable, out of range"),   # croniter's reasons, as it gives them
    ("0 0 * * 8", "out of range"),
    ("*/0 * * * *", "step '0' in field 0 is not acceptable"),
    ("a b c d e", "[a b c d e] is not acceptable"),
    ("0 0 30 2 *", "failed to find next date"),                        # February 30th never comes
    ("* * * *", "has 4"), ("0 3 * * * 2026", "has 6"), ("", "cannot be empty"),
    ("@reboot", "unknown schedule alias '@reboot'"), ("@daily 3", "unknown schedule alias"),
])
def test_a_bad_schedule_is_refused_with_the_reason(expression, reason):
    with pytest.raises(ScheduleError) as refused:
        schedules.check(expression, "UTC")
    assert reason in str(refused.value)


@pytest.mark.parametrize("zone, reason", [
    ("Mars/Olympus_Mons", "No time zone found with key Mars/Olympus_Mons"),  # zoneinfo's reasons
    ("europe/berlin", "No time zone found"),
    ("../etc/passwd", "ZoneInfo keys must refer to subdirectories of TZPATH"),
    ("/etc/localtime", "may not be absolute paths"),
    ("", "must be normalized relative paths"),
])
def test_an_unknown_timezone_is_refused_with_zoneinfos_reason(zone, reason):
    with pytest.raises(ScheduleError) as refused:
        schedules.check("0 3 * * *", zone)
    assert str(refused.value).startswith(f"unknown timezone {zone!r}") and reason in str(refused.value)


# --- due times: the aliases and daylight saving time (croniter's rule, README "Schedules") -------

@pytest.mark.parametrize("alias, after, due", [
    ("@daily", "2026-06-01 12:00", "2026-06-02 00:00"),
    ("@midnight", "2026-06-01 00:00", "2026-06-02 00:00"),  # strictly after: a due time just served is not due again
    ("@hourly", "2026-06-01 12:00:00.001", "2026-06-01 13:00"),
    ("@weekly", "2026-06-01 12:00", "2026-06-07 00:00"),   # Sunday midnight
    ("@monthly", "2026-06-01 12:00", "2026-07-01 00:00"),
    ("@yearly", "2026-06-01 12:00", "2027-01-01 00:00"),
])
def test_the_aliases_are_due_at_midnight_in_the_jobs_timezone(alias, after, due):
    assert next_run(alias, "Europe/Berlin", ms(after, "Europe/Berlin")) == ms(due, "Europe/Berlin")


def test_a_time_in_the_spring_forward_gap_runs_at_the_first_minute_after_it(make_job):
    # 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    job = scheduled(make_job, "30 2 * * *", "Europe/Berlin", at="2026-03-28 12:00")
    assert utc(job.next_run_at) == "2026-03-29T01:00:00.000Z"  # 03:00 CEST
    assert enqueue_due(now=job.next_run_at)[0][1] is not None
    assert utc(Job.get_by_id(job.id).next_run_at) == "2026-03-30T00:30:00.000Z"  # 02:30 CEST the day after


def test_an_hourly_schedule_passes_over_the_hour_that_does_not_exist():
    after_one = next_run("0 * * * *", "Europe/Berlin", ms("2026-03-29 01:00", "Europe/Berlin"))
    assert after_one == ms("2026-03-29 03:00", "Europe/Berlin") == ms("2026-03-29 01:00")


def test_a_time_that_comes_twice_on_the_fall_back_day_runs_at_both(make_job):
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET; 02:30 comes at 00:30 and again at 01:30 UTC.
    job = scheduled(make_job, "30 2 * * *", "Europe/Berlin", at="2026-10-24 12:00")
    due = []
    for _ in range(3):
        job = Job.get_by_id(job.id)
        due.append(utc(job.next_run_at))
        assert enqueue_due(now=job.next_run_at)[0][1] is not None
        finish_all()
    assert due == ["2026-10-25T00:30:00.000Z", "2026-10-25T01:30:00.000Z", "2026-10-26T01:30:00.000Z"]
    assert len(runs_of(job)) == 3


# --- queueing each due run once ---------------------------------------------------------------------

def test_a_due_run_is_queued_once_and_the_next_due_time_is_the_following_one(make_job):
    job = scheduled(make_job, "0 3 * * *")
    assert utc(job.next_run_at) == "2026-06-02T03:00:00.000Z"
    assert enqueue_due(now=ms("2026-06-02 02:59:59.999")) == []
    ((queued_job, execution),) = enqueue_due(now=job.next_run_at)
    assert queued_job.id == job.id and execution.status == ExecutionStatus.PENDING
    assert execution.created_at == job.next_run_at
    assert utc(Job.get_by_id(job.id).next_run_at) == "2026-06-03T03:00:00.000Z"
    assert enqueue_due(now=job.next_run_at + 500) == []  # the same due time, seen again: nothing more
    assert len(runs_of(job)) == 1
    logs = [line.message for line in ExecutionLog.select().where(ExecutionLog.execution == execution.id)]
    assert logs == ["queued by the schedule '0 3 * * *' (UTC): the scheduled run due 2026-06-02T03:00:00.000Z"]


# Each process claims the due runs at the times it reads on stdin, printing how many it queued.
CLAIMER = """
import sys
import schedules
from database import open_database
open_database(sys.argv[1])
for line in sys.stdin:
    print(sum(1 for _job, execution in schedules.enqueue_due(now=int(line)) if execution), flush=True)
"""


def test_several_workers_at_once_queue_each_due_run_exactly_once(make_job, database_url):
    jobs = [scheduled(make_job, "0 3 * * *", name=f"job-{number}") for number in range(30)]
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, database_url], cwd=PROJECT, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    try:
        for day in range(2, 6):  # four due times, each seen by four processes at the same moment
            due = ms(f"2026-06-0{day} 03:00")
            for claimer in claimers:
                claimer.stdin.write(f"{due}\n")
                claimer.stdin.flush()
            assert sum(int(claimer.stdout.readline()) for claimer in claimers) == len(jobs)
            for job in jobs:
                assert [run.created_at for run in runs_of(job)][-1] == due
            finish_all()
    finally:
        for claimer in claimers:
            claimer.stdin.close()
            claimer.wait(10)
    assert [len(runs_of(job)) for job in jobs] == [4] * len(jobs)
    # Only the worker that moved a due time on looks at it further: none saw a due run as skipped.
    assert not ExecutionLog.select().where(ExecutionLog.message.contains("skipped")).exists()
    assert {utc(Job.get_by_id(job.id).next_run_at) for job in jobs} == {"2026-06-06T03:00:00.000Z"}


@pytest.mark.parametrize("status", [ExecutionStatus.PENDING, ExecutionStatus.RUNNING])
def test_a_run_due_while_one_is_pending_or_running_is_skipped_and_logged(make_job, caplog, status):
    job = scheduled(make_job, "0 3 * * *")
    busy = Execution.create(job=job.id, status=status)
    caplog.set_level(logging.WARNING, logger="backhook.schedules")
    assert enqueue_due(now=job.next_run_at) == [(job, None)]
    assert [run.id for run in runs_of(job)] == [busy.id]
    message = f"the scheduled run due 2026-06-02T03:00:00.000Z skipped: execution {busy.id} is still {status}"
    assert [line.message for line in ExecutionLog.select().where(ExecutionLog.execution == busy.id)] == [message]
    assert f"job nightly: {message}" in caplog.text
    assert utc(Job.get_by_id(job.id).next_run_at) == "2026-06-03T03:00:00.000Z"  # the schedule goes on
    finish_all()
    (_job, queued), = enqueue_due(now=ms("2026-06-03 03:00"))
    assert queued is not None


def test_after_downtime_one_missed_run_is_caught_up_and_the_schedule_goes_on_from_now(make_job):
    job = scheduled(make_job, "0 * * * *", at="2026-06-01 12:30")
    assert utc(job.next_run_at) == "2026-06-01T13:00:00.000Z"
    back = ms("2026-06-01 18:20")  # no worker ran for five due times
    ((_job, execution),) = enqueue_due(now=back)
    assert utc(Job.get_by_id(job.id).next_run_at) == "2026-06-01T19:00:00.000Z"
    assert enqueue_due(now=back + 1000) == [] and len(runs_of(job)) == 1
    (log_line,) = ExecutionLog.select().where(ExecutionLog.execution == execution.id)
    assert "due 2026-06-01T13:00:00.000Z; queued at 2026-06-01T18:20:00.000Z, after the workers' downtime" in (
        log_line.message)


def test_a_disabled_jobs_due_run_is_skipped_and_its_schedule_goes_on(make_job):
    job = scheduled(make_job, "0 3 * * *", enabled=False)
    assert enqueue_due(now=job.next_run_at) == [(job, None)]
    assert runs_of(job) == [] and utc(Job.get_by_id(job.id).next_run_at) == "2026-06-03T03:00:00.000Z"


def test_a_schedule_this_machine_cannot_read_runs_once_more_and_stops_saying_why(make_job, caplog):
    job = scheduled(make_job, "0 3 * * *")
    Job.update(timezone="Atlantis/Capital").where(Job.id == job.id).execute()  # a zone this tzdata lacks
    ((_job, execution),) = enqueue_due(now=job.next_run_at)
    assert execution is not None and Job.get_by_id(job.id).next_run_at is None
    assert "job nightly: schedule '0 3 * * *' stopped: unknown timezone 'Atlantis/Capital'" in caplog.text
    assert enqueue_due(now=job.next_run_at + 86_400_000) == []

def test_next_due_is_the_earliest_of_every_jobs_next_run(make_job):
    assert schedules.next_due() is None
    scheduled(make_job, "0 3 * * *", name="late")
    early = scheduled(make_job, "0 1 * * *", name="early")
    make_job(name="unscheduled")
    assert schedules.next_due() == early.next_run_at == ms("2026-06-02 01:00")


def test_removing_the_schedule_clears_the_next_run_and_keeps_the_timezone(make_job):
    job = scheduled(make_job, "0 3 * * *", "Europe/Berlin")
    set_schedule(job, None)
    job = Job.get_by_id(job.id)
    assert (job.schedule, job.timezone, job.next_run_at) == (None, "Europe/Berlin", None)
    assert enqueue_due(now=ms("2030-01-01 00:00")) == []


# --- the command line and GET /api/jobs ------------------------------------------------------------

def test_jobs_add_with_a_schedule_shows_its_first_run_and_the_api_lists_it(runner, client, auth, tmp_path):
    result = runner("jobs", "add", "nightly", "--source", "files:///etc", "--destination", tmp_path,
                    "--schedule", "0 3 * * *", "--timezone", "Europe/Berlin")
    assert result.exit_code == 0, result.output
    job = Job.get(Job.name == "nightly")
    assert (job.schedule, job.timezone) == ("0 3 * * *", "Europe/Berlin")
    local = datetime.datetime.fromtimestamp(job.next_run_at / 1000, ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 0) and 0 < job.next_run_at - now_ms() <= 86_400_000
    assert f"next run {iso(job.next_run_at)} ({local:%Y-%m-%d} 03:00 CE" in result.output
    runner("jobs", "add", "manual", "--source", "files:///etc", "--destination", tmp_path)
    listed = {item["name"]: item for item in client.get("/api/jobs", headers=auth).get_json()["data"]}
    assert (listed["nightly"]["schedule"], listed["nightly"]["timezone"], listed["nightly"]["nextRunAt"]) == (
        "0 3 * * *", "Europe/Berlin", iso(job.next_run_at))
    assert (listed["manual"]["schedule"], listed["manual"]["timezone"], listed["manual"]["nextRunAt"]) == (
        None, "UTC", None)


@pytest.mark.parametrize("options, reason", [
    (["--schedule", "0 25 * * *"], "[0 25 * * *] is not acceptable, out of range"),
    (["--schedule", "0 3 * * * *"], "has 6"),
    (["--schedule", "0 3 * * *", "--timezone", "Europe/Atlantis"], "No time zone found with key Europe/Atlantis"),
    (["--timezone", "CEST"], "No time zone found with key CEST"),
])
def test_jobs_add_refuses_a_bad_schedule_or_timezone_with_the_reason(runner, tmp_path, options, reason):
    result = runner("jobs", "add", "nightly", "--source", "files:///etc", "--destination", tmp_path, *options)
    assert result.exit_code != 0 and reason in result.output and "Traceback" not in result.output
    assert Job.select().count() == 0


def test_jobs_schedule_sets_changes_and_removes_a_schedule(runner, make_job):
    make_job()
    result = runner("jobs", "schedule", "nightly", "@daily", "--timezone", "Europe/Berlin")
    assert result.exit_code == 0, result.output
    assert "job nightly: schedule none (UTC) → @daily (Europe/Berlin)" in result.output
    first = Job.get(Job.name == "nightly").next_run_at
    assert datetime.datetime.fromtimestamp(first / 1000, ZoneInfo("Europe/Berlin")).hour == 0
    assert runner("jobs", "schedule", "nightly", "--timezone", "America/New_York").exit_code == 0
    job = Job.get(Job.name == "nightly")
    assert (job.schedule, job.timezone) == ("@daily", "America/New_York") and job.next_run_at != first
    refused = runner("jobs", "schedule", "nightly", "0 0 31 2 *")
    assert refused.exit_code != 0 and "failed to find next date" in refused.output
    assert Job.get(Job.name == "nightly").schedule == "@daily"  # a refused change changes nothing
    assert runner("jobs", "schedule", "nightly", "--timezone", "Nowhere/City").exit_code != 0
    removed = runner("jobs", "schedule", "nightly", "--no-schedule")
    assert removed.exit_code == 0 and "→ none (America/New_York)" in removed.output
    job = Job.get(Job.name == "nightly")
    assert (job.schedule, job.next_run_at) == (None, None)
    assert runner("jobs", "schedule", "nightly").exit_code != 0  # nothing to change is an error
    assert runner("jobs", "schedule", "nightly", "@daily", "--no-schedule").exit_code != 0


# --- the workers, in real time -----------------------------------------------------------------

def test_three_workers_run_each_due_time_once(make_job, start_worker):
    # A yearly schedule whose next run the test moves to a second ahead, three times over.
    job = scheduled(make_job, "0 3 1 1 *", source="command:true", at="2026-01-02 00:00")
    for _ in range(3):
        start_worker()
    for round_number in range(1, 4):
        due = now_ms() + 1500
        Job.update(next_run_at=due).where(Job.id == job.id).execute()
        wait_until(lambda: len(runs_of(job)) == round_number
                   and runs_of(job)[-1].status == ExecutionStatus.SUCCESS, timeout=30,
                   message=f"the run due at {iso(due)} to succeed")
        assert Job.get_by_id(job.id).next_run_at > due  # moved on to next New Year
        assert runs_of(job)[-1].created_at >= due
    assert len(runs_of(job)) == 3
