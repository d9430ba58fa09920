"""remote_backups.py: the WPSec backup state machine, as a rule without a database and as apply() on a real one."""
import dataclasses
import json

import pytest

import models
from events import webhook_event
from models import Backup, BackupEvent, Execution, ExecutionLog, Website
from remote_backups import (NEW_STATE, advanced, apply, failure_message, finish_synced_executions, has_event,
                            link_execution, listed_backup, public_listing, remote_progress)
from statuses import BackupStatus, ExecutionStatus, Stage

AT = 1_700_000_000_000
SPOOL_ID = "0123456789abcdef0123456789abcdef"


def event(kind, at=AT, **fields):
    return webhook_event(kind, {"domain": "example.com", "backup_id": "backup_1", **fields}, received_at=at)


def new():
    return dict(NEW_STATE, id="pk", created_at=AT - 1)


def moved(*events, state=None):
    """The state after `events` in order, as apply() would leave it; terminal states ignore what follows."""
    state = state or new()
    for each in events:
        state = advanced(state, each) or state
    return state


# --- the rule, without a database --------------------------------------------------------------

def test_a_new_backup_is_pending_with_no_progress():
    assert (new()["status"], new()["progress"]) == (BackupStatus.PENDING, 0)


def test_pending_goes_to_in_progress_and_then_to_completed():
    pending = moved(event("progress", status="pending"))
    assert (pending["status"], pending["updated_at"]) == (BackupStatus.PENDING, AT)
    running = moved(event("progress", at=AT + 1, status="in_progress", progress=40), state=pending)
    assert (running["status"], running["progress"]) == (BackupStatus.IN_PROGRESS, 40)
    done = moved(event("complete", at=AT + 2), state=running)
    assert (done["status"], done["progress"], done["completed_at"], done["updated_at"]) == (
        BackupStatus.COMPLETED, 100, AT + 2, AT + 2)


def test_a_progress_event_without_a_status_means_the_backup_runs():
    assert moved(event("progress"))["status"] == BackupStatus.IN_PROGRESS


def test_in_progress_never_goes_back_to_pending():
    assert moved(event("progress", progress=10), event("progress", status="pending"))["status"] \
        == BackupStatus.IN_PROGRESS


def test_progress_only_rises_and_an_omitted_progress_keeps_the_value():
    assert moved(event("progress", progress=60), event("progress", progress=40))["progress"] == 60
    assert moved(event("progress", progress=35), event("progress", status="in_progress"))["progress"] == 35


@pytest.mark.parametrize("sent,stored", [(45.5, 46), (45.4999, 45), (0.5, 1), (99.5, 100), (12, 12),
                                         (0.49999999999999994, 0)])
def test_progress_is_rounded_half_up(sent, stored):
    assert moved(event("progress", progress=sent))["progress"] == stored


def test_failed_keeps_the_plugins_message():
    failed = moved(event("progress", progress=30), event("failed", error_message="  disk full "))
    assert (failed["status"], failed["progress"], failed["error_message"]) == (BackupStatus.FAILED, 30, "disk full")


@pytest.mark.parametrize("final", [event("complete"), event("failed", error_message="first")],
                         ids=["completed", "failed"])
@pytest.mark.parametrize("late", [event("progress", progress=80), event("complete"),
                                  event("failed", error_message="late")], ids=["progress", "complete", "failed"])
def test_a_terminal_state_takes_no_further_event(final, late):
    assert advanced(moved(final), dataclasses.replace(late, received_at=AT + 5)) is None


def test_advancing_leaves_the_given_state_unchanged():
    state = new()
    advanced(state, event("complete"))
    assert state == new()


@pytest.mark.parametrize("message,stored", [(None, "Backup failed"), ("", "Backup failed"), ("   ", "Backup failed"),
                                            ({"code": 28}, '{"code": 28}'), (28, "28"), ("x" * 20_000, "x" * 10_000)],
                         ids=["absent", "empty", "blank", "object", "number", "long"])
def test_failure_message_is_the_plugins_text_json_of_anything_else_or_the_default(message, stored):
    assert failure_message(message) == stored


@pytest.mark.parametrize("progress,mapped", [(0, 5), (50, 50), (100, 95), (45.5, 46)])
def test_remote_progress_is_mapped_into_the_remote_backup_band(progress, mapped):
    assert remote_progress(progress) == mapped


# --- apply(), on the test database --------------------------------------------------------------

@pytest.fixture
def site(app):
    with models.database.atomic():
        return Website.create(domain="example.com")


def stored():
    backup = Backup.get(Backup.backup_id == "backup_1")
    return backup.status, backup.progress


def test_apply_creates_the_backup_and_records_the_event(site):
    assert apply(event("progress", progress=20)) is True
    backup = Backup.get()
    assert (backup.website_id, backup.status, backup.progress, backup.created_at) == (
        site.id, BackupStatus.IN_PROGRESS, 20, AT)
    [history] = BackupEvent.select()
    assert (history.backup_pk_id, history.kind, json.loads(history.payload)["progress"]) == (backup.id, "progress", 20)


def test_apply_to_an_unknown_website_changes_nothing(site):
    assert apply(dataclasses.replace(event("complete"), domain="other.example")) is None
    assert Backup.select().count() == 0 and BackupEvent.select().count() == 0


def test_a_replayed_event_applies_once(site):
    replayed = dataclasses.replace(event("progress", progress=20), spool_id=SPOOL_ID)
    assert apply(event("progress", at=AT - 5, progress=10)) is True
    assert apply(replayed) is True
    assert has_event(Backup.get().id, SPOOL_ID)
    assert apply(dataclasses.replace(replayed, payload={**replayed.payload, "progress": 90})) is False
    assert stored() == (BackupStatus.IN_PROGRESS, 20) and BackupEvent.select().count() == 2


def test_a_late_event_joins_the_history_without_changing_the_backup(site):
    apply(event("complete"))
    before = Backup.get().__data__
    assert apply(event("progress", at=AT + 1, progress=10)) is True
    assert Backup.get().__data__ == before
    assert [row.kind for row in BackupEvent.select().order_by(BackupEvent.id)] == ["complete", "progress"]


def test_only_a_complete_that_changed_the_backup_queues_a_sync(site):
    apply(event("failed"))
    apply(event("complete"))
    assert Website.get().sync_requested_at is None
    apply(event("complete", backup_id="backup_2"))
    assert Website.get().sync_requested_at is not None


# --- the wpsec:// execution --------------------------------------------------------------------

@pytest.fixture
def execution(site, make_job):
    execution = Execution.enqueue(make_job(name="wp", source="wpsec://example.com"))
    Execution.update(status=ExecutionStatus.RUNNING, stage=Stage.REQUESTING).where(
        Execution.id == execution.id).execute()
    return execution.id


def execution_state(execution_id):
    row = Execution.get_by_id(execution_id)
    return row.status, row.stage, row.progress


def test_linking_an_event_the_execution_missed_catches_it_up(site, execution):
    apply(event("progress", progress=40))
    backup = link_execution(site.id, "backup_1", execution)
    assert backup.execution_id == execution and Backup.select().count() == 1
    assert execution_state(execution) == (ExecutionStatus.RUNNING, Stage.REMOTE_BACKUP, 41)


def test_the_execution_follows_its_backup_to_syncing_then_success_once_synced(site, execution):
    link_execution(site.id, "backup_1", execution)
    apply(event("progress", progress=50))
    assert execution_state(execution) == (ExecutionStatus.RUNNING, Stage.REMOTE_BACKUP, 50)
    assert finish_synced_executions(site.id, "Backup list synced") == []  # not completed yet
    apply(event("complete"))
    assert execution_state(execution) == (ExecutionStatus.RUNNING, Stage.SYNCING, 95)
    assert finish_synced_executions(site.id, "Backup list synced") == [execution]
    assert execution_state(execution) == (ExecutionStatus.SUCCESS, Stage.COMPLETED, 100)
    said = [row.message for row in ExecutionLog.select().where(ExecutionLog.execution == execution).order_by(
        ExecutionLog.id.desc()).limit(2)]
    assert said[1] == "Backup list synced" and "lists no download_url for backup backup_1" in said[0]
    assert finish_synced_executions(site.id, "Backup list synced") == []


def test_a_synced_list_offering_the_backup_for_download_sends_the_execution_on_to_downloading(site, execution):
    link_execution(site.id, "backup_1", execution)
    apply(event("complete"))
    Website.update(remote_backups=json.dumps([
        {"id": "backup_1", "size": 10, "download_url": "https://cdn.example.com/b/backup_1.zip?sig=s3cr3t"}])).execute()
    assert finish_synced_executions(site.id, "Backup list synced") == [execution]
    assert execution_state(execution) == (ExecutionStatus.RUNNING, Stage.DOWNLOADING, 95)
    said = [row.message for row in ExecutionLog.select().where(ExecutionLog.execution == execution)]
    assert "at https://cdn.example.com/b/backup_1.zip?…: copying it home" in said[-1]
    assert "s3cr3t" not in json.dumps(said)
    assert finish_synced_executions(site.id, "Backup list synced") == []  # its attempt copies it now


@pytest.mark.parametrize("listing, shown", [
    ('[{"id": "b", "download_url": "https://u:pw@h.example:8443/x.zip?sig=1#f"}]', "https://h.example:8443/x.zip?…"),
    ('[{"id": "b", "download_url": "http://[::1]/x"}]', "http://[::1]/x"),
    ('[{"id": "b", "download_url": "http://h:notaport/x"}]', "(a malformed URL)"),
    ('[{"id": "b"}, 3, null]', None),
])
def test_the_api_shows_a_listed_download_url_without_its_query_or_password(listing, shown):
    assert public_listing(listing)[0].get("download_url") == shown


def test_a_listed_backup_is_found_by_its_id_whatever_its_type(site):
    assert listed_backup('[{"id": 7, "size": 1}, {"id": "8"}]', "7") == {"id": 7, "size": 1}
    assert listed_backup('[{"id": "8"}]', "7") is None
    assert listed_backup("not json", "7") is None and listed_backup(None, "7") is None


def test_a_failed_backup_fails_its_execution_with_the_message(site, execution):
    link_execution(site.id, "backup_1", execution)
    apply(event("failed", error_message="Out of disk"))
    row = Execution.get_by_id(execution)
    assert (row.status, row.stage, row.error, row.lease_expires_at) == (
        ExecutionStatus.FAILED, Stage.FAILED, "Out of disk", None)


def test_an_execution_that_ended_is_not_reopened(site, execution):
    link_execution(site.id, "backup_1", execution)
    Execution.update(status=ExecutionStatus.CANCELLED, stage=Stage.CANCELLED).where(
        Execution.id == execution).execute()
    apply(event("progress", progress=70))
    apply(event("complete"))
    assert execution_state(execution)[:2] == (ExecutionStatus.CANCELLED, Stage.CANCELLED)
    assert finish_synced_executions(site.id, "Backup list synced") == []
