"""The WPSec plugin API client, and the worker's WPSec chores built on it.

Each call goes to `<site base URL>/?wpsec_endpoint=<route>` with the site's
`x-api-key`. Calls have connect and read timeouts and retry with exponential
backoff and jitter through urllib3's Retry. POST backup/start is retried only
when the connection was never made: a retried start could start two backups.
Failures are logged with the site and the route, never with the key, and are
raised as WpsecError to the worker; no webhook response ever waits on them.

The worker calls, once per loop iteration and in any order:
`replay_spool(data_dir)` (spool.py), `sync_requested_websites()` and
`poll_silent_remote_backups(poll_after_seconds)`; and an attempt at a claimed
wpsec:// execution runs `follow_remote_backup(run)`, then copies the backup
home when the plugin lists it for download (homecopy.py).
"""
import json
import logging

import requests
from peewee import OperationalError
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from events import polled_event
from models import Backup, Execution, Job, Website, database, now_ms
from remote_backups import apply, finish_synced_executions, link_execution
from sources import wpsec_domain
from statuses import OPEN_BACKUP_STATUSES, BackupStatus, ExecutionStatus, Stage

log = logging.getLogger("backhook.wpsec")

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRIES = 3
BACKOFF_FACTOR = 0.5  # 0.5 s, 1 s, 2 s, ... each plus up to BACKOFF_JITTER s
BACKOFF_JITTER = 0.5
RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_AFTER_MAX = 30  # a site's Retry-After of hours must not stall the worker
# A site whose list cannot be fetched is tried again after these delays, then given up on.
SYNC_RETRY_DELAYS_MS = (10_000, 60_000, 300_000)
REMOTE_CHECK_SECONDS = 0.5  # how often a wpsec:// attempt looks whether its execution ended


class WpsecError(Exception):
    """A WPSec call that failed after its retries; the message names the site and the route."""


class KeySession(requests.Session):
    """A session that, like the Authorization header requests strips, never follows a redirect to another
    host with the site's x-api-key."""

    def rebuild_auth(self, prepared_request, response):
        if "x-api-key" in prepared_request.headers and self.should_strip_auth(response.request.url,
                                                                               prepared_request.url):
            del prepared_request.headers["x-api-key"]
        super().rebuild_auth(prepared_request, response)


def session():
    """A session for calls to a site: RETRIES with backoff and jitter, on connections and RETRY_STATUSES."""
    retry = Retry(total=RETRIES, connect=RETRIES, read=RETRIES, status=RETRIES, other=0, redirect=3,
                  backoff_factor=BACKOFF_FACTOR, backoff_jitter=BACKOFF_JITTER, backoff_max=30,
                  status_forcelist=RETRY_STATUSES, allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
                  retry_after_max=RETRY_AFTER_MAX,
                  raise_on_status=False)
    opened = KeySession()
    adapter = HTTPAdapter(max_retries=retry)
    opened.mount("http://", adapter)
    opened.mount("https://", adapter)
    return opened


def call(website, method, route, body=None):
    """One WPSec API call; the decoded JSON answer, or WpsecError."""
    where = f"WPSec {method} {route} for {website.domain}"
    if not website.wpsec_url:
        raise _failed(where, "the website has no WPSec URL")
    headers = {"x-api-key": website.wpsec_api_key or "", "Accept": "application/json"}
    try:
        with session() as site:
            response = site.request(method, website.wpsec_url.rstrip("/") + "/",
                                    params={"wpsec_endpoint": route}, json=body, headers=headers,
                                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), allow_redirects=True)
    except requests.RequestException as exc:
        raise _failed(where, f"{type(exc).__name__}: {exc}") from None
    if not response.ok:
        raise _failed(where, f"HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise _failed(where, "the answer is not valid JSON") from None


def _failed(where, reason):
    log.warning("%s failed: %s", where, reason)
    return WpsecError(f"{where} failed: {reason}")


def _unwrap(answer):
    """Accept a bare answer or the plugin's {"success": true, "data": …} envelope."""
    if isinstance(answer, dict) and "data" in answer and "success" in answer:
        return answer["data"]
    return answer


def start_backup(website):
    """Ask the site to start a full backup; return its backup_id."""
    answer = _unwrap(call(website, "POST", "backup/start", {"type": "full", "incremental": False}))
    backup_id = answer.get("backup_id") if isinstance(answer, dict) else None
    if isinstance(backup_id, int) and not isinstance(backup_id, bool):
        backup_id = str(backup_id)
    if not isinstance(backup_id, str) or not backup_id.strip():
        raise _failed(f"WPSec POST backup/start for {website.domain}", "the answer has no backup_id")
    return backup_id.strip()


def backup_status(website, backup_id):
    """The site's view of one backup: {id, status, progress?, error?, started_at, completed_at?}."""
    answer = _unwrap(call(website, "GET", f"backup/status/{backup_id}"))
    if not isinstance(answer, dict):
        raise _failed(f"WPSec GET backup/status for {website.domain}", "the answer is not an object")
    return answer


def list_backups(website):
    """The site's backup list; the plugin answers a bare list or {"success","data":{"backups"}}."""
    answer = _unwrap(call(website, "GET", "backup/list"))
    if isinstance(answer, dict):
        answer = answer.get("backups")
    if not isinstance(answer, list):
        raise _failed(f"WPSec GET backup/list for {website.domain}", "the answer holds no backup list")
    return answer


def sync_website(website):
    """Fetch the site's backup list and store it with the time; False if the fetch failed."""
    try:
        remote = list_backups(website)
    except WpsecError:
        return False
    with database.atomic():
        Website.update(remote_backups=json.dumps(remote), synced_at=now_ms()).where(
            Website.id == website.id).execute()
    return True


# --- the worker's chores ----------------------------------------------------------------

_sync_failures = {}  # website id -> (failed attempts, next attempt ms), in this process
_last_poll = {}      # backup pk -> ms of this process's last status call


def sync_requested_websites(limit=10):
    """Sync up to `limit` sites whose list a complete webhook asked for; return how many were synced.

    A request renewed while the sync ran stays for the next call. A failing
    site is retried after SYNC_RETRY_DELAYS_MS, then its request is dropped.
    The wpsec:// executions waiting in Syncing move on once their site's list
    is fetched (to copy their backup home when it lists a download_url), or
    once its retries are given up.
    """
    now = now_ms()
    candidates = (Website.select().where(Website.sync_requested_at.is_null(False))
                  .order_by(Website.sync_requested_at).limit(limit * 5))
    due = [site for site in candidates if _sync_failures.get(site.id, (0, 0))[1] <= now][:limit]
    synced = 0
    for site in due:
        ok = sync_website(site)
        failures = 0 if ok else _sync_failures.get(site.id, (0, 0))[0] + 1
        if ok or failures > len(SYNC_RETRY_DELAYS_MS):
            _sync_failures.pop(site.id, None)
            with database.atomic():
                Website.update(sync_requested_at=None).where(
                    (Website.id == site.id) & (Website.sync_requested_at == site.sync_requested_at)).execute()
            if not ok:
                log.error("giving up syncing the backup list of %s after %d attempts", site.domain, failures)
            finish_synced_executions(
                site.id, "Backup list synced" if ok else f"Remote backup completed; the backup list could not be "
                                                         f"fetched after {failures} attempts")
        else:
            _sync_failures[site.id] = (failures, now_ms() + SYNC_RETRY_DELAYS_MS[failures - 1])
        synced += ok
    return synced


def follow_remote_backup(run):
    """The attempt `run` (backup.Run) at a wpsec:// execution: start the remote backup, then wait.

    Webhooks (or status polls) write the execution's stages and its end;
    the attempt only waits, so that the worker keeps renewing the lease and
    can cancel or time it out (`run.check()` raises then). Returns None when
    the start failed (the execution is Failed already), ("lost", None) when
    another attempt took the execution over, ("ended", status) when an
    event ended it: the caller stops the attempt with that reason; and
    ("home", None) when the synced list offers the backup for download
    (remote_backups.finish_synced_executions): the caller copies it home.
    """
    execution = run.execution
    if start_remote_backup(execution) is None:
        return None
    while True:
        try:
            row = (Execution.select(Execution.status, Execution.stage, Execution.worker_id, Execution.attempts)
                   .where(Execution.id == execution.id).first())
        except OperationalError as exc:  # a database that cannot answer only delays the news
            log.warning("%s: state not read, database unavailable: %s", execution.id, exc)
        else:
            if row is None or (row.worker_id, row.attempts) != run.report.owner:
                return "lost", None
            if row.status != ExecutionStatus.RUNNING:  # its webhook (or a status poll) ended it
                return "ended", row.status
            if row.stage == Stage.DOWNLOADING:
                return "home", None
        run.stopped.wait(REMOTE_CHECK_SECONDS)
        run.check()


def start_remote_backup(execution):
    """Start the remote backup of a claimed, Running wpsec:// execution; return its backup_id or None.

    Returns as soon as the site has answered: webhooks (or, when they go
    silent, `poll_silent_remote_backups`) then drive the execution through
    Remote Backup and Syncing to Success or Failed. The caller keeps the
    lease renewed while the execution is Running. None means it is Failed.
    """
    domain = wpsec_domain(Job.get_by_id(execution.job_id).source)
    website = Website.by_domain(domain)
    if website is None:
        _fail(execution, f"No website {domain!r} is registered")
        return None
    earlier = Backup.get_or_none(Backup.execution == execution.id)
    if earlier is not None:  # reclaimed after a worker died: that attempt's backup is still ours
        link_execution(website.id, earlier.backup_id, execution.id)
        if earlier.status == BackupStatus.COMPLETED:  # its sync ran for the dead attempt: one more moves this one on
            with database.atomic():
                Website.update(sync_requested_at=now_ms()).where(Website.id == website.id).execute()
        return earlier.backup_id
    with database.atomic():
        Execution.transition(execution.id, ExecutionStatus.RUNNING, dict(stage=Stage.REQUESTING),
                             owner=_holder(execution),
                             logs=[dict(stage=Stage.REQUESTING,
                                        message=f"Asking {website.domain} to start a full backup")])
    try:
        backup_id = start_backup(website)
    except WpsecError as exc:
        _fail(execution, str(exc))
        return None
    link_execution(website.id, backup_id, execution.id)
    return backup_id


def _holder(execution):
    """The attempt that claimed `execution`: its writes here hold only while that attempt still does."""
    return execution.worker_id, execution.attempts


def _fail(execution, message):
    with database.atomic():
        Execution.transition(execution.id, ExecutionStatus.RUNNING,
                             dict(status=ExecutionStatus.FAILED, stage=Stage.FAILED, error=message, ended_at=now_ms(),
                                  lease_expires_at=None),
                             owner=_holder(execution), logs=[dict(stage=Stage.FAILED, level="error", message=message)])


def poll_silent_remote_backups(poll_after_seconds, limit=20):
    """Ask backup/status of wpsec:// backups silent for `poll_after_seconds`; return how many answered.

    The answer is applied like the webhook it stands for, so a lost webhook
    cannot leave an execution Running.
    """
    cutoff = now_ms() - int(poll_after_seconds * 1000)
    silent = (Backup.select(Backup, Website).join(Website).switch(Backup)
              .join(Execution, on=(Backup.execution == Execution.id))
              .where((Execution.status == ExecutionStatus.RUNNING) & Backup.status.in_(OPEN_BACKUP_STATUSES)
                     & (Backup.updated_at <= cutoff))
              .order_by(Backup.updated_at).limit(limit))
    answered = 0
    for backup in silent:
        if _last_poll.get(backup.id, 0) > cutoff:
            continue  # its last status call failed less than an interval ago
        _last_poll[backup.id] = now_ms()
        try:
            status = backup_status(backup.website, backup.backup_id)
        except WpsecError:
            continue
        event = polled_event(backup.website.domain, backup.backup_id, status)
        if event is None:
            log.warning("WPSec backup/status for %s answered an unknown status %r",
                        backup.website.domain, status.get("status"))
            continue
        apply(event)
        _last_poll.pop(backup.id, None)
        answered += 1
    return answered
