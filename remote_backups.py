"""The WPSec backup state machine: how events move a backup, and how its wpsec:// execution follows.

`advanced(state, event)` is the rule, without a database: an unknown
backup_id starts at pending, completed and failed are terminal, progress
only rises. `apply(event)` is the one way an event reaches the database,
from the webhook route, the spool replay and the status poll alike.
"""
import json
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

from peewee import Case

import notifications
from database import database, opened, run_sql
from models import Backup, BackupEvent, BackupTally, Execution, WebhookTally, Website, new_id, now_ms
from statuses import TERMINAL_BACKUP_STATUSES, BackupStatus, EventKind, ExecutionStatus, Stage, WebhookOutcome

DEFAULT_FAILURE = "Backup failed"
REMOTE_BAND = (5, 95)  # the global progress the Remote Backup stage owns (README.md, "Stages and progress")

# A backup's state as apply() reads and writes it: plain SQL on tuples and
# dicts, because this is the webhook's hot path and runs under the write lock
# (bench/RESULTS.md, "Figures behind the code: events").
STATE = ("id", "status", "progress", "error_message", "execution_id", "created_at", "updated_at", "completed_at")
SELECT_STATE = f"SELECT {', '.join(STATE)} FROM backup WHERE website_id = ? AND backup_id = ?"
INSERT_STATE = (f"INSERT INTO backup (website_id, backup_id, {', '.join(STATE)}) "
                f"VALUES (?, ?, {', '.join('?' for _ in STATE)})")
CHANGING = ("status", "progress", "error_message", "updated_at", "completed_at")  # no indexed column
UPDATE_STATE = f"UPDATE backup SET {', '.join(f'{name} = ?' for name in CHANGING)} WHERE id = ?"
NEW_STATE = dict.fromkeys(STATE) | {"status": BackupStatus.PENDING, "progress": 0}
# What apply() answers for each outcome: None for no such website, False for a replayed duplicate.
APPLY_RESULT = {WebhookOutcome.APPLIED: True, WebhookOutcome.IGNORED: True, WebhookOutcome.DUPLICATE: False,
                WebhookOutcome.UNKNOWN_WEBSITE: None}


# --- the rule ------------------------------------------------------------------------

def advanced(state, event):
    """A backup's state (a dict of STATE) moved by `event`; None when it was already final."""
    if state["status"] in TERMINAL_BACKUP_STATUSES:
        return None
    at, payload = event.received_at, event.payload
    state = dict(state, updated_at=at)
    if event.kind == EventKind.COMPLETE:
        state.update(status=BackupStatus.COMPLETED, progress=100, completed_at=at)
    elif event.kind == EventKind.FAILED:
        state.update(status=BackupStatus.FAILED, error_message=failure_message(payload.get("error_message")))
    else:
        if payload.get("progress") is not None:
            state["progress"] = max(state["progress"] or 0, round_half_up(payload["progress"]))
        # A progress event without a status means the backup runs; pending never follows in_progress.
        if BackupStatus.IN_PROGRESS in (state["status"], payload.get("status") or BackupStatus.IN_PROGRESS):
            state["status"] = BackupStatus.IN_PROGRESS
    return state


def round_half_up(value):
    # Decimal(value) is the float's exact value, so 45.5 -> 46 and 0.49999999999999994 -> 0.
    return int(Decimal(value).to_integral_value(ROUND_HALF_UP))


def failure_message(value):
    """The stored error of a failed backup: the plugin's text, or JSON of anything else it sent."""
    if value is None or isinstance(value, str):
        return (value or "").strip()[:10_000] or DEFAULT_FAILURE
    return json.dumps(value)[:10_000]


def remote_progress(progress):
    """A remote backup's 0-100 mapped into the execution's Remote Backup band."""
    low, high = REMOTE_BAND
    return low + round_half_up(progress * (high - low) / 100)


# --- applying events -------------------------------------------------------------------

def apply(event):
    """Apply one event in one transaction; None when no website has its domain, False for a replayed duplicate.

    An unknown backup_id creates the record; terminal states stick; progress
    only rises; every event joins the history; a complete one queues a sync
    of the site's backup list, a failed one its notifications. A replayed event carries its spool_id and
    applies once. The website is looked up inside the same transaction: with
    several processes writing, each transaction first finds its page cache
    stale, so a separate read would pay for that twice. The event's outcome
    is counted for /metrics in the same transaction.
    """
    # On the database, not through the proxy, whose indirection every step
    # of the transaction would pay (bench/RESULTS.md, "Figures behind the code: events").
    with opened().atomic():
        row = run_sql("SELECT id FROM website WHERE domain = ?", (event.domain,)).fetchone()
        outcome = _apply_to_website(row[0], event) if row else WebhookOutcome.UNKNOWN_WEBSITE
        WebhookTally.add(event.kind, outcome)
    return APPLY_RESULT[outcome]


def _apply_to_website(website_id, event):
    """Apply `event` to a backup of the website; returns its WebhookOutcome."""
    payload = dict(event.payload, spool_id=event.spool_id) if event.spool_id else dict(event.payload)
    # On SQLite BEGIN IMMEDIATE took the write lock up front. PostgreSQL
    # locks the row as it is read, so two events of one backup apply one
    # after the other, each from the state the other left.
    row = run_sql(opened().for_update(SELECT_STATE), (website_id, event.backup_id)).fetchone()
    if row is None:
        state = advanced(dict(NEW_STATE, id=new_id(), created_at=event.received_at), event)
        run_sql(INSERT_STATE, (website_id, event.backup_id, *(state[name] for name in STATE)))
        BackupTally.move(None, state["status"])
    else:
        if event.spool_id is not None and has_event(row[0], event.spool_id):
            return WebhookOutcome.DUPLICATE
        state = advanced(dict(zip(STATE, row)), event)
        if state:
            run_sql(UPDATE_STATE, (*(state[name] for name in CHANGING), state["id"]))
            BackupTally.move(row[1], state["status"])
    run_sql("INSERT INTO backup_event (backup_pk, kind, payload, received_at) VALUES (?, ?, ?, ?)",
            (row[0] if row else state["id"], event.kind, json.dumps(payload), event.received_at))
    if state and event.kind == EventKind.COMPLETE:
        run_sql("UPDATE website SET sync_requested_at = ? WHERE id = ?", (now_ms(), website_id))
    if state and state["execution_id"]:
        mirror(state, event.backup_id)  # a failure is then the execution's, reported as such
    elif state and event.kind == EventKind.FAILED:
        notifications.website_backup_failed(event.domain, event.backup_id, state["error_message"])
    return WebhookOutcome.APPLIED if state else WebhookOutcome.IGNORED


def has_event(backup_pk, spool_id):
    """Whether the backup's history already holds the replayed event `spool_id`."""
    return (BackupEvent.select().where((BackupEvent.backup_pk == backup_pk)
                                       & BackupEvent.payload.contains(spool_id)).exists())


# --- the wpsec:// execution a backup drives ------------------------------------------

def mirror(state, backup_id):
    """Make the wpsec:// execution of a backup (its STATE dict) follow it, inside the caller's transaction.

    Each change is a guarded write on the execution still Running, so one
    that a cancel, its worker or an earlier event ended meanwhile stays as
    it ended. An end keeps `worker_id`: the attempt following the execution
    tells from it that the remote backup ended it, not another worker.
    """
    execution_id, status, transition = state["execution_id"], state["status"], Execution.transition
    running = ExecutionStatus.RUNNING
    if status == BackupStatus.COMPLETED:
        transition(execution_id, running, dict(stage=Stage.SYNCING, progress=REMOTE_BAND[1]),
                   where=Execution.stage != Stage.SYNCING,
                   logs=[dict(stage=Stage.SYNCING, message=f"Remote backup {backup_id} completed; "
                                                           "syncing the site's backup list")])
    elif status == BackupStatus.FAILED:
        error = state["error_message"]
        transition(execution_id, running, dict(status=ExecutionStatus.FAILED, stage=Stage.FAILED, error=error,
                                               ended_at=now_ms(), lease_expires_at=None),
                   logs=[dict(stage=Stage.FAILED, level="error", message=f"Remote backup {backup_id} failed: {error}")])
    else:
        progress = remote_progress(state["progress"])
        # The common case first: one more progress event in Remote Backup.
        if not transition(execution_id, running, dict(progress=progress),
                          where=(Execution.stage == Stage.REMOTE_BACKUP) & (Execution.progress < progress)):
            transition(execution_id, running,
                       dict(stage=Stage.REMOTE_BACKUP, progress=Case(None, [(Execution.progress < progress, progress)],
                                                                     Execution.progress)),
                       where=Execution.stage.not_in([Stage.REMOTE_BACKUP, Stage.SYNCING]),
                       logs=[dict(stage=Stage.REMOTE_BACKUP, message=f"Remote backup {backup_id} is running")])


def link_execution(website_id, backup_id, execution_id):
    """Tie a remote backup to the wpsec:// execution that started it; return the Backup.

    The backup's webhooks may have arrived first: the execution then
    catches up with the state they left.
    """
    with database.atomic():
        backup = Backup.get_or_none((Backup.website == website_id) & (Backup.backup_id == backup_id))
        if backup is None:
            backup = Backup.create(website=website_id, backup_id=backup_id, status=BackupStatus.PENDING,
                                   execution=execution_id)
            BackupTally.move(None, BackupStatus.PENDING)
        else:
            backup.execution = execution_id
            backup.save(only=[Backup.execution])
        mirror({name: getattr(backup, name) for name in STATE}, backup_id)
    return backup


def finish_synced_executions(website_id, note):
    """Move on the executions whose remote backup completed and whose sync has run; return their ids.

    When the synced list gives the backup a `download_url`, the execution
    goes on to Downloading, where its attempt copies the file home
    (homecopy.py); otherwise it ends Success with no artifact, and its logs
    say why. `note` says how the sync went.
    """
    now = now_ms()
    running = ExecutionStatus.RUNNING
    with database.atomic():
        listing = Website.select(Website.remote_backups).where(Website.id == website_id).scalar()
        waiting = [(row.id, row.backup_id) for row in Execution.select(Execution.id, Backup.backup_id).join(
            Backup, on=(Backup.execution == Execution.id)).where(
            (Backup.website == website_id) & (Backup.status == BackupStatus.COMPLETED)
            & (Execution.status == running) & (Execution.stage == Stage.SYNCING)).objects()]
        moved = []
        for execution_id, backup_id in waiting:
            url = download_url(listed_backup(listing, backup_id))
            if url:
                fields = dict(stage=Stage.DOWNLOADING)
                why = f"the plugin lists backup {backup_id} for download at {shown_url(url)}: copying it home"
            else:
                fields = dict(status=ExecutionStatus.SUCCESS, stage=Stage.COMPLETED, progress=100, ended_at=now,
                              lease_expires_at=None)
                why = (f"the plugin lists no download_url for backup {backup_id}: it stays on the site, and this "
                       "execution stores no artifact (path is null)")
            if Execution.transition(execution_id, running, fields, where=Execution.stage == Stage.SYNCING,
                                    logs=[dict(stage=Stage.SYNCING, message=note),
                                          dict(stage=fields["stage"], message=why)]):
                moved.append(execution_id)
        return moved


# --- the site's backup list ----------------------------------------------------------

def listed_backup(listing, backup_id):
    """The entry of `backup_id` in a site's stored backup list (JSON text, as synced), or None."""
    try:
        entries = json.loads(listing) if listing else []
    except ValueError:
        return None
    return next((entry for entry in entries if isinstance(entry, dict) and entry.get("id") is not None
                 and str(entry["id"]) == backup_id), None) if isinstance(entries, list) else None


def download_url(entry):
    """The entry's download_url when it gives one (a non-empty string), else None."""
    url = entry.get("download_url") if isinstance(entry, dict) else None
    return url.strip() if isinstance(url, str) and url.strip() else None


def shown_url(url):
    """A download URL as logs and the API show it: scheme, host, port and path, never a signed query or a password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a malformed URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")


def public_listing(listing):
    """A site's stored backup list as the API shows it: each download_url without its query (it may be signed)."""
    entries = json.loads(listing) if listing else []
    if not isinstance(entries, list):
        return entries
    return [dict(entry, download_url=shown_url(entry["download_url"]))
            if isinstance(entry, dict) and isinstance(entry.get("download_url"), str) else entry
            for entry in entries]
