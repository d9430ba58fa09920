"""Notifications (issue 16): who wants to hear about which event, and the messages queued for them.

A notification is one URL of one kind (statuses.NotificationKind):

- webhook: an http(s) URL that receives a JSON document, signed the Standard
  Webhooks way with a `whsec_…` secret that `notify add` shows once;
- ping: a Healthchecks-style URL: URL/start when a backup starts, URL on
  success, URL/fail on anything else, with the log tail as the body;
- apprise: any URL the apprise library can send to (mailto://, slack://,
  tgram://, ntfys://, json://…).

An event becomes one outbox row (NotificationOutbox) per notification that
wants it, written in the transaction of the change that causes it: a run's
end through Execution.transition, a WPSec backup-failed webhook through
remote_backups.apply. The workers send the rows (outbox.py), so a slow or
dead endpoint never holds up a backup or a webhook.
"""
import functools
import json
import logging
import secrets
import statistics
from base64 import b64encode
from urllib.parse import urlsplit, urlunsplit

from database import database
from models import Execution, ExecutionLog, Job, Notification, NotificationOutbox, iso, new_id, now_ms
from statuses import ExecutionStatus, ExecutionType, NotificationEvent, NotificationKind, NotifyOn

Event = NotificationEvent

# What each --on wants; a ping follows every backup run instead (PING_EVENTS).
WANTED = {
    NotifyOn.FAILURE: {Event.FAILURE, Event.CANCEL, Event.RETENTION_ERROR},
    NotifyOn.SUCCESS: {Event.SUCCESS},
    NotifyOn.OVERDUE: {Event.OVERDUE, Event.SIZE_DROP},
    NotifyOn.ALWAYS: {Event.FAILURE, Event.CANCEL, Event.RETENTION_ERROR, Event.SUCCESS, Event.OVERDUE,
                      Event.SIZE_DROP},
}
PING_EVENTS = {Event.START, Event.SUCCESS, Event.FAILURE, Event.CANCEL, Event.RETENTION_ERROR}
LOG_TAIL_LINES = 20
LOG_TAIL_CHARACTERS = 10_000
SIZE_HISTORY = 5         # a new artifact is compared with the median of this many earlier successes
SIZE_HISTORY_NEEDED = 3  # and only once there are this many: two sizes make no median worth trusting


log = logging.getLogger("backhook.notifications")


class NotificationRefused(ValueError):
    """A notification `notify add` cannot make; the message says why."""


# --- the notifications themselves (the CLI's `notify` commands) ------------------------

def new_signing_secret():
    """A Standard Webhooks secret: whsec_ and the base64 of the key's random bytes."""
    return "whsec_" + b64encode(secrets.token_bytes(32)).decode()


def add(url, job=None, on=None, ping=False, overdue_hours=None):
    """Make a notification and return it; a webhook's signing secret is its `.secret`.

    `on` is failure by default, always for a ping (which follows every backup).
    """
    url = url.strip()
    on = on or (NotifyOn.ALWAYS if ping else NotifyOn.FAILURE)
    scheme = urlsplit(url).scheme.lower()
    web = scheme in ("http", "https") and bool(urlsplit(url).netloc)
    if ping:
        if not web:
            raise NotificationRefused("a --ping URL must be an http:// or https:// URL")
        if on != NotifyOn.ALWAYS:
            raise NotificationRefused("a ping URL hears of every backup (/start, success, /fail): "
                                      "leave out --on, or use --on always")
        if overdue_hours is not None:
            raise NotificationRefused("a ping service keeps its own schedule: --overdue-hours is for "
                                      "webhook and apprise notifications")
        kind = NotificationKind.PING
    elif web:
        kind = NotificationKind.WEBHOOK
    else:
        check_apprise_url(url)
        kind = NotificationKind.APPRISE
    if on == NotifyOn.OVERDUE and overdue_hours is None:
        raise NotificationRefused("--on overdue needs --overdue-hours H: how long without a success is overdue")
    if overdue_hours is not None and on not in (NotifyOn.OVERDUE, NotifyOn.ALWAYS):
        raise NotificationRefused("--overdue-hours goes with --on overdue or --on always")
    with database.atomic():
        return Notification.create(
            kind=kind, url=url, job=job.id if job else None, on_event=on,
            secret=new_signing_secret() if kind == NotificationKind.WEBHOOK else None,
            overdue_seconds=None if overdue_hours is None else int(overdue_hours * 3600))


def load_apprise():
    """The apprise module, its log kept out of backhook's: its lines quote URLs, tokens and all.

    Imported here, not at the top: only the commands and workers that use it pay for loading it.
    """
    import apprise

    logging.getLogger("apprise").propagate = False
    return apprise


def check_apprise_url(url):
    """Refuse a URL apprise cannot send to; apprise's own reasons stay unsaid, as they repeat the URL's tokens."""
    plugin = load_apprise().Apprise.instantiate(url)
    if plugin is None:
        scheme = urlsplit(url).scheme or url.split(":", 1)[0]
        raise NotificationRefused(
            f"apprise cannot send to this URL ({scheme}://…): the scheme is not one of its services, or the URL "
            "lacks a part that service needs. A generic webhook is an http:// or https:// URL; see apprise's "
            "documentation for each service's URL")


def shown_url(notification):
    """The notification's URL as `notify list` and the logs may show it: no password, no apprise token."""
    if notification.kind == NotificationKind.APPRISE:
        plugin = load_apprise().Apprise.instantiate(notification.url)
        if plugin is None:
            return urlsplit(notification.url).scheme + "://…"
        # Without its query: the defaults apprise spells out there say nothing about where it goes.
        return plugin.url(privacy=True).split("?")[0]
    parts = urlsplit(notification.url)
    if parts.password is None:
        return notification.url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def shown_destination(notification):
    """Where a message goes, for log lines: the host of a web URL, only the scheme of an apprise one."""
    parts = urlsplit(notification.url)
    if notification.kind == NotificationKind.APPRISE:
        return f"{parts.scheme}://"  # an apprise URL's host is often its token (tgram://BOT_TOKEN/…)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


# --- which notifications want an event --------------------------------------------------

def wants(notification, event, execution_type=ExecutionType.BACKUP):
    """Whether `notification` wants `event` (of an execution of `execution_type`, when it is about one)."""
    if event == Event.TEST:
        return True
    if notification.kind == NotificationKind.PING:
        return execution_type == ExecutionType.BACKUP and event in PING_EVENTS
    if execution_type == ExecutionType.RESTORE:
        return event == Event.FAILURE  # a failed restore or drill: a backup that may not be restorable
    return event in WANTED[notification.on_event]


def watching(job_id):
    """The notifications about the job `job_id`: its own and those of every job."""
    return Notification.select().where(Notification.job.is_null() | (Notification.job == job_id))


def queue(notifications, event, document, job_id=None, execution_id=None, dedupe_key=None, now=None):
    """One outbox row per notification, all holding `document`; returns their ids.

    Runs inside the caller's transaction. With a `dedupe_key` (one per
    notification is made of it) a row another worker queued first is kept
    and this one dropped.
    """
    now = now_ms() if now is None else now
    rows = [dict(id=new_id(), notification=notification.id, event=event, job_id=job_id, execution_id=execution_id,
                 dedupe_key=f"{dedupe_key}:{notification.id}" if dedupe_key else None,
                 payload=json.dumps(document), next_attempt_at=now, created_at=now)
            for notification in notifications]
    if not rows:
        return []
    insert = NotificationOutbox.insert_many(rows)
    if dedupe_key:
        insert = insert.on_conflict_ignore()
    insert.execute()
    return [row["id"] for row in rows]


def document(event, message, job=None, execution=None, website=None, log_tail=None, at=None):
    """The JSON document a message carries: the event, a sentence, and what it is about."""
    from routes.executions import execution_to_api  # here: that module imports models, which import this lazily

    return {
        "event": event,
        "occurredAt": iso(now_ms() if at is None else at),
        "message": message,
        "job": {"id": job.id, "name": job.name} if job else None,
        "execution": execution_to_api(execution) if execution else None,
        "website": website,
        "logTail": log_tail,
    }


# --- the events ------------------------------------------------------------------------

def never_undoing(queue_events):
    """Queue in a savepoint: messages that cannot be queued are logged, and the change that caused them stands.

    A run's end or a webhook matters more than its notification; a bug here must cost only the latter.
    """
    @functools.wraps(queue_events)
    def guarded(*args, **kwargs):
        try:
            with database.atomic():
                queue_events(*args, **kwargs)
        except Exception:
            log.exception("notifications not queued (%s)", queue_events.__name__)

    return guarded


def ending_event(fields):
    """The event a run-ending transition's `fields` stand for (models.ends_run said it ends one)."""
    status = fields.get("status")
    if status == ExecutionStatus.FAILED:
        return Event.FAILURE
    if status == ExecutionStatus.CANCELLED:
        return Event.CANCEL
    return Event.RETENTION_ERROR if fields.get("retention_error") else Event.SUCCESS


@never_undoing
def execution_ended(execution_id, fields):
    """Queue the notifications of a run that this transaction ends (Execution.transition calls it)."""
    if not Notification.select().exists():
        return  # the usual install without notifications pays one read of an empty table
    event = ending_event(fields)
    execution = Execution.with_job_name(execution_id)
    job = Job.get_by_id(execution.job_id)
    wanted = [n for n in watching(job.id) if wants(n, event, execution.type)]
    if wanted:
        queue(wanted, event, document(event, ending_message(event, execution), job, execution,
                                      log_tail=log_tail(execution_id)),
              job_id=job.id, execution_id=execution_id)
    if event == Event.SUCCESS and execution.type == ExecutionType.BACKUP:
        size_dropped(job, execution)


def ending_message(event, execution):
    what = f"{execution.type} of {execution.name}"
    if event == Event.FAILURE:
        return f"{what} failed: {execution.error or 'no error recorded'}"
    if event == Event.CANCEL:
        return f"{what} was cancelled"
    size = f": {execution.size:,} bytes" if execution.size is not None else ""
    if event == Event.RETENTION_ERROR:
        return f"{what} succeeded{size}, but pruning older backups failed: {execution.retention_error}"
    return f"{what} succeeded{size}"


def log_tail(execution_id):
    """The execution's last log lines as text (already scrubbed of the source's secrets when written)."""
    lines = list(ExecutionLog.select().where(ExecutionLog.execution == execution_id)
                 .order_by(ExecutionLog.id.desc()).limit(LOG_TAIL_LINES))
    text = "\n".join(f"{iso(line.timestamp)} {line.level} [{line.stage or '-'}] {line.message}"
                     for line in reversed(lines))
    return text[-LOG_TAIL_CHARACTERS:]


def size_dropped(job, execution):
    """Queue a size_drop when the new artifact is under half the median of the job's last successes."""
    if execution.size is None:
        return
    earlier = [row.size for row in Execution.select(Execution.size).where(
        (Execution.job == job.id) & (Execution.type == ExecutionType.BACKUP)
        & (Execution.status == ExecutionStatus.SUCCESS) & Execution.size.is_null(False)
        & (Execution.id != execution.id)).order_by(Execution.created_at.desc()).limit(SIZE_HISTORY)]
    if len(earlier) < SIZE_HISTORY_NEEDED or execution.size * 2 >= statistics.median(earlier):
        return
    median = statistics.median(earlier)
    wanted = [n for n in watching(job.id) if wants(n, Event.SIZE_DROP)]
    message = (f"the backup of {job.name} stored {execution.size:,} bytes, under half the median "
               f"({median:,.0f} bytes) of its last {len(earlier)} successful backups")
    queue(wanted, Event.SIZE_DROP, document(Event.SIZE_DROP, message, job, execution),
          job_id=job.id, execution_id=execution.id)


@never_undoing
def backups_started(executions):
    """Queue the /start pings of backups just claimed (the worker calls it right after the claim)."""
    backups = [e for e in executions if e.type == ExecutionType.BACKUP]
    if not backups or not Notification.select().where(Notification.kind == NotificationKind.PING).exists():
        return
    with database.atomic():
        for execution in backups:
            pings = [n for n in watching(execution.job_id) if wants(n, Event.START)]
            queue(pings, Event.START, document(Event.START, f"Backup of {execution.job.name} started",
                                               execution.job),
                  job_id=execution.job_id, execution_id=execution.id)


@never_undoing
def website_backup_failed(domain, backup_id, error_message):
    """Queue the failure of a WPSec backup that no execution follows, inside the webhook's transaction.

    Every-job notifications hear of it, and those of the jobs that back the
    site up (`wpsec://domain`). A backup an execution follows is reported as
    that execution's failure instead, once.
    """
    everyone = list(Notification.select())  # a small table: one read finds all that might want it
    watched = {n.job_id for n in everyone if n.job_id is not None}
    site_jobs = {job.id for job in Job.select(Job.id).where(
        Job.id.in_(list(watched)) & (Job.source == f"wpsec://{domain}"))} if watched else set()
    wanted = [n for n in everyone if (n.job_id is None or n.job_id in site_jobs)
              and n.kind != NotificationKind.PING and wants(n, Event.FAILURE)]
    if not wanted:
        return
    website = {"domain": domain, "backupId": backup_id, "error": error_message}
    message = f"WPSec backup {backup_id} of {domain} failed: {error_message}"
    queue(wanted, Event.FAILURE, document(Event.FAILURE, message, website=website))


def test_message(notification):
    """Queue one test message for `notification`; returns its outbox row."""
    message = f"Test notification from backhook (notification {notification.id})"
    with database.atomic():
        (message_id,) = queue([notification], Event.TEST, document(Event.TEST, message))
    return NotificationOutbox.get_by_id(message_id)


# --- the dead man's switch (the workers' chores) ---------------------------------------

def check_overdue(now=None):
    """Queue `overdue` for each watched, enabled job without a success for its notification's overdue time.

    It fires once per overdue period: counted from the job's last successful
    backup (or its creation), the n-th period without one queues one message
    under a key made of that success and n, so several workers checking at
    once queue it once, and the next only after another whole period.
    """
    now = now_ms() if now is None else now
    watchers = list(Notification.select().where(Notification.overdue_seconds.is_null(False)))
    if not watchers:
        return
    for job in Job.select().where(Job.enabled):
        mine = [n for n in watchers if n.job_id in (None, job.id)]
        if not mine:
            continue
        last = (Execution.select(Execution.ended_at)
                .where((Execution.job == job.id) & (Execution.status == ExecutionStatus.SUCCESS)
                       & (Execution.type == ExecutionType.BACKUP))
                .order_by(Execution.created_at.desc()).first())
        since = last.ended_at if last is not None and last.ended_at is not None else job.created_at
        for notification in mine:
            period = notification.overdue_seconds * 1000
            periods = (now - since) // period
            if periods < 1:
                continue
            hours = notification.overdue_seconds / 3600
            what = f"since {iso(since)}" if last is not None else f"since it was created ({iso(since)})"
            message = f"{job.name} has had no successful backup for {hours:g} h: none {what}"
            with database.atomic():
                queue([notification], Event.OVERDUE, document(Event.OVERDUE, message, job, at=now),
                      job_id=job.id, dedupe_key=f"overdue:{job.id}:{since}:{periods}", now=now)

