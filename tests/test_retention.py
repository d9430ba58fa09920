"""Retention: which artifacts go (without a database), the GFS buckets' edges, then pruning on a real one."""
import datetime
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

import models
import retention
from models import Execution, now_ms
from retention import Policy
from sinks import LocalDirectorySink, manifest_location
from statuses import ExecutionStatus


def ignore(message, level="info"):
    pass


def holders(*ids):
    """Holders named `ids`, newest first, a second apart."""
    return [SimpleNamespace(id=id_, path=f"/backups/{id_}", started_at=None, created_at=1000 * (len(ids) - number))
            for number, id_ in enumerate(ids)]


def test_the_keep_newest_stay_and_the_rest_expire():
    assert [old.id for old in retention.expired(holders("e5", "e4", "e3", "e2"), Policy(keep=2), "e5")] == [
        "e3", "e2"]


def test_the_newest_artifact_never_expires_whatever_the_order_of_finishing():
    # The pruning attempt (e1) is older than a backup that succeeded before it: e1 is kept, e2 too.
    assert [old.id for old in retention.expired(holders("e2", "e1"), Policy(keep=1), "e1")] == []
    assert retention.expired(holders("e2"), Policy(keep=1), "e2") == []


def test_nothing_expires_while_there_are_no_more_artifacts_than_kept():
    assert retention.expired(holders("e3", "e2"), Policy(keep=5), "e3") == []


def test_a_policy_without_any_rule_keeps_everything():
    assert retention.expired(holders("e3", "e2", "e1"), Policy(), None) == []


# --- GFS: the buckets, at their edges ------------------------------------------------------

def ms(local, zone="UTC"):
    """'2026-01-04 23:30[:59.999]' on the wall clock of `zone` (or with its own offset, '…+01:00'), in ms."""
    moment = datetime.datetime.fromisoformat(local)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return round(moment.timestamp() * 1000)


def kept(policy, *times, own=None):
    """The local times (in the policy's timezone) of the artifacts `policy` keeps, oldest first."""
    made = [SimpleNamespace(id=text, path=f"/backups/{text}", started_at=ms(text, policy.timezone), created_at=0)
            for text in times]
    made.sort(key=lambda holder: (holder.started_at, holder.id), reverse=True)
    gone = {old.id for old in retention.expired(made, policy, own)}
    return sorted((text for text in times if text not in gone), key=lambda text: ms(text, policy.timezone))



def test_daily_keeps_the_newest_of_each_day_and_a_missing_day_is_not_counted():
    times = ("2026-03-01 03:00", "2026-03-02 03:00", "2026-03-02 15:00", "2026-03-04 03:00", "2026-03-05 03:00")
    # 2026-03-03 has no backup: the 3 days kept are the 5th, the 4th and the 2nd (its newest), not the 3rd.
    assert kept(Policy(daily=3), *times) == ["2026-03-02 15:00", "2026-03-04 03:00", "2026-03-05 03:00"]


def test_the_week_turns_from_sunday_to_monday():
    times = ("2026-01-03 12:00", "2026-01-04 23:59:59.999", "2026-01-05 00:00")  # Sat, Sun, Mon
    assert kept(Policy(weekly=2), *times) == ["2026-01-04 23:59:59.999", "2026-01-05 00:00"]
    assert kept(Policy(weekly=1), *times) == ["2026-01-05 00:00"]


def test_weeks_are_iso_weeks_across_the_new_year():
    # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in 2020-W53; 2021-01-04 (Mon) begins 2021-W01.
    assert kept(Policy(weekly=2), "2020-12-31 03:00", "2021-01-03 03:00", "2021-01-04 03:00") == [
        "2021-01-03 03:00", "2021-01-04 03:00"]
    # 2025-12-29 (Mon) is in 2026-W01 with 2026-01-04, so it is not the newest of its week; 2025-12-28 ends 2025-W52.
    assert kept(Policy(weekly=2), "2025-12-28 03:00", "2025-12-29 03:00", "2026-01-04 03:00") == [
        "2025-12-28 03:00", "2026-01-04 03:00"]


def test_the_month_turns_at_midnight_of_the_first_in_the_jobs_timezone():
    times = ("2026-01-31 12:00", "2026-01-31 23:59", "2026-02-01 00:00")
    assert kept(Policy(monthly=2), *times) == ["2026-01-31 23:59", "2026-02-01 00:00"]
    # 23:30 UTC on the 31st is already February in Berlin: there it is that month's newest, not January's.
    utc = Policy(monthly=2)
    berlin = Policy(monthly=2, timezone="Europe/Berlin")
    made = [SimpleNamespace(id=name, path=name, started_at=ms(text), created_at=0)
            for name, text in (("feb-in-berlin", "2026-01-31 23:30"), ("jan", "2026-01-31 12:00"),
                               ("dec", "2025-12-31 12:00"))]
    assert [old.id for old in retention.expired(made, utc, None)] == ["jan"]
    assert [old.id for old in retention.expired(made, berlin, None)] == ["dec"]


def test_an_artifact_at_midnight_belongs_to_the_day_it_begins():
    times = ("2026-01-04 23:59:59.999", "2026-01-05 00:00", "2026-01-05 12:00")
    assert kept(Policy(daily=2), *times) == ["2026-01-04 23:59:59.999", "2026-01-05 12:00"]


def test_days_are_the_jobs_wall_clock_days_on_the_days_daylight_saving_time_changes():
    berlin = Policy(daily=2, timezone="Europe/Berlin")
    # 2026-03-29 has 23 hours in Berlin: 00:30 (23:30 UTC the day before) and 23:30 are one day.
    assert kept(berlin, "2026-03-28 12:00", "2026-03-29 00:30", "2026-03-29 23:30") == [
        "2026-03-28 12:00", "2026-03-29 23:30"]
    # 2026-10-25 has 25 hours: 02:30 comes twice, first in summer time (+02:00), then in winter time (+01:00).
    assert kept(berlin, "2026-10-24 12:00", "2026-10-25T02:30+02:00", "2026-10-25T02:30+01:00",
                "2026-10-25 23:30") == ["2026-10-24 12:00", "2026-10-25 23:30"]
    assert kept(berlin, "2026-10-24 12:00", "2026-10-25T02:30+02:00", "2026-10-25T02:30+01:00") == [
        "2026-10-24 12:00", "2026-10-25T02:30+01:00"]
    # In UTC the same instants fall on other days.
    assert kept(Policy(daily=2), "2026-03-28 12:00", "2026-03-28T23:30", "2026-03-29 21:30") == [
        "2026-03-28T23:30", "2026-03-29 21:30"]


def test_each_rule_keeps_its_own_buckets_so_older_backups_are_promoted():
    # 67 daily backups from New Year, kept 7 daily, 4 weekly, 12 monthly (the report of databasus #773).
    days = [(datetime.date(2026, 1, 1) + datetime.timedelta(days=number)).isoformat() + " 03:00"
            for number in range(67)]
    assert days[-1] == "2026-03-08 03:00"
    assert kept(Policy(daily=7, weekly=4, monthly=12), *days) == [
        "2026-01-31 03:00",                                         # January's newest
        "2026-02-15 03:00", "2026-02-22 03:00",                     # the Sundays of 2026-W07 and W08
        "2026-02-28 03:00",                                         # February's newest
        "2026-03-01 03:00",                                         # 2026-W09's Sunday
        *[f"2026-03-0{day} 03:00" for day in range(2, 9)],          # the last 7 days (2026-W10 whole)
    ]


def test_keep_and_the_gfs_rules_keep_their_union():
    times = ("2026-01-01 03:00", "2026-01-02 03:00", "2026-01-03 03:00", "2026-01-03 15:00", "2026-01-03 21:00")
    assert kept(Policy(keep=2, daily=2), *times) == ["2026-01-02 03:00", "2026-01-03 15:00", "2026-01-03 21:00"]


def test_the_newest_and_the_pruning_runs_own_artifact_stay_whatever_the_rules():
    times = ("2026-01-01 03:00", "2026-01-01 04:00", "2026-01-01 05:00")
    assert kept(Policy(monthly=1), *times) == ["2026-01-01 05:00"]
    assert kept(Policy(monthly=1), *times, own="2026-01-01 03:00") == ["2026-01-01 03:00", "2026-01-01 05:00"]


@pytest.mark.parametrize("numbers, problem", [
    (dict(keep=0), "keep must be"), (dict(daily=-1), "keepDaily must be"), (dict(weekly=1.5), "keepWeekly must be"),
    (dict(monthly="3"), "keepMonthly must be"), (dict(daily=True), "keepDaily must be"),
])
def test_a_policy_of_anything_but_whole_numbers_of_at_least_one_is_refused(numbers, problem):
    assert retention.policy_problem(**numbers).startswith(problem)


def test_a_policy_of_whole_numbers_or_nothing_is_accepted():
    assert retention.policy_problem() is None
    assert retention.policy_problem(keep=1, daily=7, weekly=4, monthly=12) is None

def manifest_of(path):
    return Path(manifest_location(str(path)))


@pytest.fixture
def successes(make_job, tmp_path):
    """A job keeping 2, with four successful executions and their artifacts and manifests, oldest first."""
    job = make_job(name="kept", keep=2)
    directory = tmp_path / "backups" / "kept"
    directory.mkdir(parents=True)
    made = []
    with models.database.atomic():
        for number in range(4):
            path = directory / f"artifact-{number}.tar.zst"
            path.write_bytes(b"backup")
            manifest_of(path).write_text("{}")
            made.append(Execution.create(job=job, status=ExecutionStatus.SUCCESS, path=str(path),
                                         created_at=now_ms() - 1000 * (10 - number)))
    return job, made, LocalDirectorySink(directory)


def test_prune_forgets_then_deletes_the_older_artifacts_and_keeps_the_newest(successes):
    job, made, sink = successes
    lines = []

    def log(message, level="info"):
        lines.append(message)

    assert retention.prune(job, made[-1].id, lambda: None, log) is None
    paths = {execution.id: Execution.get_by_id(execution.id).path for execution in made}
    assert [paths[execution.id] is None for execution in made] == [True, True, False, False]
    assert sorted(path.name for path in sink.directory.iterdir()) == [
        "artifact-2.tar.zst", "artifact-2.tar.zst.json", "artifact-3.tar.zst", "artifact-3.tar.zst.json"]
    assert lines[-1] == "retention: keeping 2 of 4 backups (the 2 newest); deleted 2"


def test_a_file_that_cannot_be_deleted_stays_named_and_is_reported(successes):
    job, made, sink = successes
    stuck = made[0].path
    # A directory where the artifact was: unlink() refuses it, as it would a file on a read-only mount.
    sink.directory.joinpath("artifact-0.tar.zst").unlink()
    sink.directory.joinpath("artifact-0.tar.zst").mkdir()
    problem = retention.prune(job, made[-1].id, lambda: None, ignore)
    assert problem.startswith(f"could not delete {stuck} (execution {made[0].id})")
    assert Execution.get_by_id(made[0].id).path == stuck
    assert manifest_of(stuck).exists()  # deleted only after its artifact
    assert Execution.get_by_id(made[1].id).path is None
    assert not manifest_of(made[1].path).exists()


def test_a_manifest_that_cannot_be_deleted_is_reported_and_its_artifact_stays_forgotten(successes):
    job, made, sink = successes
    stuck = manifest_of(made[0].path)
    stuck.unlink()
    stuck.mkdir()  # unlink() refuses a directory, as it would a file on a read-only mount
    problem = retention.prune(job, made[-1].id, lambda: None, ignore)
    assert problem.startswith(f"could not delete the manifest of {made[0].path} (execution {made[0].id})")
    assert not Path(made[0].path).exists() and Execution.get_by_id(made[0].id).path is None
    assert not Path(made[1].path).exists() and not manifest_of(made[1].path).exists()


def test_a_stop_during_pruning_leaves_the_rest_named(successes):
    job, made, sink = successes

    def stop():
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        retention.prune(job, made[-1].id, stop, ignore)
    assert all(Execution.get_by_id(execution.id).path for execution in made)


def test_a_job_without_keep_prunes_nothing(successes):
    job, made, sink = successes
    job.keep = None
    assert retention.prune(job, made[-1].id, lambda: None, ignore) is None
    assert len(list(sink.directory.iterdir())) == 8


# --- GFS on a real database, and `backhook jobs prune` ------------------------------------------

def stored_backups(job, directory, *started, created_at=None):
    """A successful backup of `job` per UTC time in `started`, with its artifact and manifest in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    with models.database.atomic():
        for number, text in enumerate(started):
            path = directory / f"artifact-{number}.tar.zst"
            path.write_bytes(b"backup")
            manifest_of(path).write_text("{}")
            made.append(Execution.create(job=job, status=ExecutionStatus.SUCCESS, path=str(path),
                                         started_at=ms(text), created_at=created_at or ms(text) - 1000))
    return made


@pytest.fixture
def weekly_job(make_job, tmp_path):
    """A job keeping 2 daily and 2 weekly in Berlin, with backups on 5 days, oldest first."""
    job = make_job(name="gfs", keep_daily=2, keep_weekly=2, timezone="Europe/Berlin")
    made = stored_backups(job, tmp_path / "backups" / "gfs", "2026-01-02 02:00", "2026-01-03 22:00",
                          "2026-01-04 23:30",  # Monday 00:30 in Berlin: the new week's first
                          "2026-01-05 02:00", "2026-01-06 02:00")
    return job, made


def test_prune_applies_the_gfs_rules_in_the_jobs_timezone_and_deletes_every_other_artifact(weekly_job):
    job, made = weekly_job
    assert retention.prune(job, made[-1].id, lambda: None, ignore) is None
    remaining = [Execution.get_by_id(execution.id).path is not None for execution in made]
    # Kept: the last two (daily, and 2026-W02's newest) and 2026-W01's newest, Saturday 23:00 in Berlin. The
    # third is Sunday in UTC but Monday 00:30 in Berlin: in 2026-W02, whose newest is the last.
    assert remaining == [False, True, False, True, True]
    assert [Path(execution.path).exists() for execution in made] == remaining


def test_the_newest_successful_backup_stays_though_it_was_queued_before_the_others(make_job, tmp_path):
    job = make_job(name="late", keep=1)
    # Queued first, started last (it waited for a slot): by its start it is the newest, and it stays.
    late, *others = stored_backups(job, tmp_path / "backups" / "late", "2026-01-03 03:00", "2026-01-01 03:00",
                                   "2026-01-02 03:00", created_at=ms("2025-12-31 00:00"))
    assert retention.prune(job, None, lambda: None, ignore) is None
    assert Execution.get_by_id(late.id).path == late.path and Path(late.path).exists()
    assert [Execution.get_by_id(old.id).path for old in others] == [None, None]


def test_jobs_prune_dry_run_prints_what_would_go_and_why_the_rest_stays_and_deletes_nothing(runner, weekly_job):
    job, made = weekly_job
    result = runner("jobs", "prune", "gfs", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = {execution.id: next(line for line in result.output.splitlines() if line.startswith(execution.id))
             for execution in made}
    assert lines[made[0].id].endswith("would delete") and lines[made[2].id].endswith("would delete")
    assert "(newest, daily 2026-01-06, weekly 2026-W02)" in lines[made[4].id]
    assert "weekly 2026-W01" in lines[made[1].id] and "2026-01-03T22:00:00.000Z (2026-01-03 23:00 CET)" in (
        lines[made[1].id])
    assert "dry run: 2 of 5 backups would be deleted (2 daily, 2 weekly in Europe/Berlin)" in result.output
    assert all(Execution.get_by_id(execution.id).path == execution.path and Path(execution.path).exists()
               for execution in made)


def test_jobs_prune_deletes_what_the_dry_run_showed(runner, weekly_job):
    job, made = weekly_job
    result = runner("jobs", "prune", "gfs")
    assert result.exit_code == 0, result.output
    assert [Path(execution.path).exists() for execution in made] == [False, True, False, True, True]
    assert "retention: keeping 3 of 5 backups (2 daily, 2 weekly in Europe/Berlin); deleted 2" in result.output


def test_jobs_prune_that_cannot_delete_a_file_keeps_it_named_and_fails(runner, weekly_job):
    job, made = weekly_job
    stuck = Path(made[0].path)
    stuck.unlink()
    stuck.mkdir()  # unlink() refuses a directory, as it would a file on a read-only mount
    result = runner("jobs", "prune", "gfs")
    assert result.exit_code != 0 and f"could not delete {stuck}" in result.output
    assert Execution.get_by_id(made[0].id).path == str(stuck) and manifest_of(stuck).exists()
    assert not Path(made[2].path).exists() and Execution.get_by_id(made[2].id).path is None


def test_jobs_prune_of_a_job_without_a_policy_keeps_everything(runner, make_job, tmp_path):
    job = make_job(name="all")
    made = stored_backups(job, tmp_path / "backups" / "all", "2026-01-01 03:00", "2026-01-02 03:00")
    result = runner("jobs", "prune", "all")
    assert result.exit_code == 0, result.output
    assert "no retention policy" in result.output
    assert all(Path(execution.path).exists() for execution in made)
