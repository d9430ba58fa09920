"""Sending the notification outbox (notifications.py queues it): leases, retries, and the three kinds.

Each worker runs a Courier in a thread of its own. At each tick it claims due
messages, each the oldest waiting message of its notification, so a
notification's messages go out in order and one at a time across all
workers, and hands each to one of a few sender threads. So a hanging or failing endpoint holds one sender
for one timeout and delays only its own messages; a backup, a webhook and
the other endpoints never wait on it.

A claim is a lease, as leases.py does for executions: a guarded UPDATE on
the message still being due and unleased, so two workers never send it at
once, and a worker that dies mid-send leaves a lease that lapses and the
message is sent again (receivers tell a repeat by its webhook-id). A failed
attempt is retried after FIRST_RETRY_SECONDS, doubling up to
LONGEST_RETRY_SECONDS, and after MAX_ATTEMPTS the message is `failed`.
"""
import base64
import hashlib
import hmac
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from importlib.metadata import version
from urllib.parse import urlsplit, urlunsplit

import requests
from peewee import fn

from database import database
from models import Notification, NotificationOutbox, now_ms
from notifications import load_apprise, shown_destination
from statuses import NotificationEvent, NotificationKind, OutboxStatus

log = logging.getLogger("backhook.notifications")

MAX_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 30
LONGEST_RETRY_SECONDS = 3600
SENDERS = 8  # messages sent at once by one worker, each to another notification
BURST = 50   # messages a sender sends one after the other to an endpoint that takes them, before it yields
KEEP_FINISHED_MS = 30 * 86_400_000  # sent and failed messages are forgotten after 30 days
USER_AGENT = f"backhook/{version('backhook')}"

Outbox = NotificationOutbox


def retry_delay_ms(attempts):
    """How long after its `attempts`-th failed attempt a message is tried again."""
    return min(FIRST_RETRY_SECONDS * 2 ** (attempts - 1), LONGEST_RETRY_SECONDS) * 1000


def lease_ms(timeout_seconds):
    """A send's lease: it outlasts the send's connect and read timeouts, whatever the kind."""
    return int(3 * timeout_seconds * 1000)


# --- the claim ---------------------------------------------------------------------------

def due(now):
    return ((Outbox.status == OutboxStatus.PENDING) & (Outbox.next_attempt_at <= now)
            & (Outbox.lease_expires_at.is_null() | (Outbox.lease_expires_at <= now)))


def first_of_its_notification():
    """No older message of the same notification waits: each notification's messages go out in order.

    A ping's /start must reach its service before the success that follows it,
    so a message waiting for its retry holds back the later ones of its
    notification (its endpoint is failing anyway), and none of the others.
    """
    older = Outbox.alias()
    return ~fn.EXISTS(older.select(older.id).where(
        (older.notification == Outbox.notification) & (older.status == OutboxStatus.PENDING)
        & (older.id < Outbox.id)))


def claim_due(worker_id, lease, limit, now, busy=(), notification_id=None):
    """Lease up to `limit` due messages, each the first of its notification and none of `busy`'s; returns them.

    With `notification_id`, only that notification's next message is considered.
    """
    mine = due(now) if notification_id is None else due(now) & (Outbox.notification == notification_id)
    if limit <= 0 or not Outbox.select().where(mine).exists():
        return []  # a read: the usual idle tick takes no write lock
    candidates = (Outbox.select(Outbox.id, Outbox.notification)
                  .where(mine & first_of_its_notification() & Outbox.notification.not_in(list(busy)))
                  .order_by(Outbox.id).limit(limit))
    return [message for message in (claim(row.id, worker_id, lease, now) for row in candidates) if message]


def claim(message_id, worker_id, lease, now):
    """Lease one message if it is still due, unleased and first of its notification; returns it, or None.

    The guarded write is the claim: of two workers, one changes the row and the other nothing.
    """
    with database.atomic():
        taken = Outbox.update(worker_id=worker_id, lease_expires_at=now + lease, attempts=Outbox.attempts + 1).where(
            (Outbox.id == message_id) & due(now) & first_of_its_notification()).execute()
    if not taken:
        return None  # another worker's claim came first
    return Outbox.select(Outbox, Notification).join(Notification).where(Outbox.id == message_id).first()


def record(message, worker_id, problem, now):
    """Write how the attempt went, while this worker still holds the message: sent, retried later, or failed."""
    if problem is None:
        fields = dict(status=OutboxStatus.SENT, sent_at=now, last_error=None)
    elif message.attempts >= MAX_ATTEMPTS or message.event == NotificationEvent.TEST:
        fields = dict(status=OutboxStatus.FAILED, last_error=problem)  # a test's sender is told at once
    else:
        fields = dict(next_attempt_at=now + retry_delay_ms(message.attempts), last_error=problem)
    with database.atomic():
        return Outbox.update(worker_id=None, lease_expires_at=None, **fields).where(
            (Outbox.id == message.id) & (Outbox.worker_id == worker_id) & (Outbox.attempts == message.attempts)
            & (Outbox.status == OutboxStatus.PENDING)).execute() == 1


def purge_finished(now=None):
    """Forget sent and failed messages older than KEEP_FINISHED_MS (the chores call it)."""
    old = (Outbox.status != OutboxStatus.PENDING) & (Outbox.created_at < (now_ms() if now is None else now)
                                                     - KEEP_FINISHED_MS)
    if Outbox.select().where(old).exists():
        with database.atomic():
            Outbox.delete().where(old).execute()


# --- sending ---------------------------------------------------------------------------------

def signature(secret, message_id, timestamp, body):
    """Standard Webhooks: v1, then the base64 HMAC-SHA256 of "id.timestamp.body" keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def send(message, timeout_seconds):
    """Deliver one message once; None when it arrived, else what went wrong (no URL, no secret in it)."""
    notification = message.notification
    try:
        if notification.kind == NotificationKind.WEBHOOK:
            return send_webhook(message, notification, timeout_seconds)
        if notification.kind == NotificationKind.PING:
            return send_ping(message, notification, timeout_seconds)
        return send_apprise(message, notification, timeout_seconds)
    except requests.Timeout:
        return f"no answer within {timeout_seconds:g} s"
    except requests.RequestException as exc:  # its text names the URL, path and all: say only what failed
        return f"could not connect ({type(exc).__name__})"


def send_webhook(message, notification, timeout_seconds):
    body = message.payload.encode()
    timestamp = str(now_ms() // 1000)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "webhook-id": message.id,
               "webhook-timestamp": timestamp,
               "webhook-signature": signature(notification.secret, message.id, timestamp, body)}
    response = requests.post(notification.url, data=body, headers=headers, timeout=timeout_seconds,
                             allow_redirects=False)
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def ping_url(url, event):
    """URL/start, URL or URL/fail, keeping the URL's query (Healthchecks' ?rid=, ?create=)."""
    suffix = {NotificationEvent.START: "/start", NotificationEvent.SUCCESS: "",
              NotificationEvent.TEST: ""}.get(event, "/fail")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix if suffix else parts.path))


def send_ping(message, notification, timeout_seconds):
    document = json.loads(message.payload)
    body = (document.get("logTail") or document.get("message") or "").encode()
    response = requests.post(ping_url(notification.url, message.event), data=body, timeout=timeout_seconds,
                             headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": USER_AGENT},
                             allow_redirects=False)
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


APPRISE_TYPES = {NotificationEvent.SUCCESS: "success", NotificationEvent.FAILURE: "failure",
                 NotificationEvent.CANCEL: "warning", NotificationEvent.RETENTION_ERROR: "warning",
                 NotificationEvent.OVERDUE: "failure", NotificationEvent.SIZE_DROP: "warning"}


def send_apprise(message, notification, timeout_seconds):
    apprise = load_apprise()
    document = json.loads(message.payload)
    plugin = apprise.Apprise.instantiate(notification.url)
    if plugin is None:
        return "apprise can no longer read this notification's URL"
    plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout_seconds
    sender = apprise.Apprise()
    sender.add(plugin)
    body = document["message"] + (f"\n\n{document['logTail']}" if document.get("logTail") else "")
    job = document.get("job")
    title = f"backhook: {message.event}" + (f" ({job['name']})" if job else "")
    sent = sender.notify(body=body, title=title, notify_type=APPRISE_TYPES.get(message.event, "info"))
    return None if sent else f"apprise could not deliver to {shown_destination(notification)}"


class Courier:
    """One worker's delivery of the outbox: `deliver_due` claims and hands out, sender threads send.

    `clock` gives the time in ms (a test passes its own); `timeout_seconds`
    bounds each connect and read.
    """

    def __init__(self, worker_id, timeout_seconds, senders=SENDERS, clock=now_ms):
        self.worker_id, self.timeout_seconds, self.clock = worker_id, timeout_seconds, clock
        self.lease = lease_ms(timeout_seconds)
        self.senders = senders
        self.pool = ThreadPoolExecutor(senders, thread_name_prefix="notify")
        self.sending = {}  # notification id -> future
        self.lock = threading.Lock()

    def deliver_due(self):
        """Claim what is due and give each message to a sender thread; returns at once."""
        with self.lock:
            busy = set(self.sending)
        for message in claim_due(self.worker_id, self.lease, self.senders - len(busy), self.clock(), busy):
            with self.lock:  # held across the submit: the sender's own removal of its entry waits for it
                self.sending[message.notification_id] = self.pool.submit(self.deliver, message)

    def deliver(self, message):
        """Send `message`, then, while its endpoint takes them, the notification's next due ones."""
        try:
            for _ in range(BURST):
                if self.attempt(message):
                    break  # a failing endpoint waits for its backoff
                following = claim_due(self.worker_id, self.lease, 1, self.clock(),
                                      notification_id=message.notification_id)
                if not following:
                    break
                message = following[0]
        finally:
            with self.lock:
                self.sending.pop(message.notification_id, None)
            database.close()  # this sender thread's connection: sends are rare, connections are not free

    def attempt(self, message):
        """Send one message and record how it went; returns the problem, or None if it arrived."""
        where = f"notification {message.notification_id} ({shown_destination(message.notification)})"
        try:
            problem = send(message, self.timeout_seconds)
        except Exception as exc:  # a bug: the attempt still counts, so the message cannot loop forever
            log.exception("%s: message %s could not be sent", where, message.id)
            problem = f"internal error: {type(exc).__name__}"
        if not record(message, self.worker_id, problem, self.clock()):
            log.warning("%s: message %s lease lost before its outcome was written", where, message.id)
        elif problem:
            log.warning("%s: %s message %s, attempt %d of %d: %s", where, message.event, message.id,
                        message.attempts, MAX_ATTEMPTS, problem)
        return problem

    def wait(self, timeout=None):
        """Wait until every message handed out so far is sent or given up (the tests use it)."""
        with self.lock:
            futures = list(self.sending.values())
        wait(futures, timeout)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def send_now(message_id, worker_id, timeout_seconds):
    """Claim and send one message in this process (`notify test`); returns the problem, or None if it arrived."""
    message = claim(message_id, worker_id, lease_ms(timeout_seconds), now_ms())
    if message is None:
        return "a worker is sending it already"
    problem = send(message, timeout_seconds)
    record(message, worker_id, problem, now_ms())
    return problem
