"""A WPSec backup event: one value, whether a webhook, a spool replay or a status poll brought it.

`webhook_event` validates a webhook body; `spooled_event` a line of the
webhook spool (spool.py), which holds a webhook the database could not take;
`polled_event` turns a backup/status answer into the webhook it stands for.
Each raises InvalidEvent with the reason a client or the log is told, and
`remote_backups.apply` applies what they build. Nothing here touches the
database.
"""
import re
from dataclasses import dataclass, replace
from types import MappingProxyType

from models import normalize_domain, now_ms
from statuses import OPEN_BACKUP_STATUSES, BackupStatus, EventKind

KINDS = tuple(EventKind)
SPOOL_ID = re.compile(r"[0-9a-f]{32}")  # secrets.token_hex(16); an empty id would match every event


class InvalidEvent(ValueError):
    """An event that cannot be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event about one WPSec backup, as it joins the backup's history.

    `domain` is normalized and `backup_id` stripped; `payload` is the body as
    received (read-only). `spool_id` is set on an event replayed from the
    spool, so a replay that runs twice applies it once.
    """
    kind: EventKind
    domain: str
    backup_id: str
    payload: MappingProxyType
    received_at: int
    spool_id: str | None = None


def webhook_event(kind, body, received_at=None):
    """The event a webhook body of `kind` carries; InvalidEvent when the body breaks the contract."""
    kind = EventKind(kind)
    problem = _body_problem(kind, body)
    if problem:
        raise InvalidEvent(problem)
    return Event(kind, normalize_domain(body["domain"]), body["backup_id"].strip(), MappingProxyType(body),
                 now_ms() if received_at is None else received_at)


def _body_problem(kind, body):
    for field in ("domain", "backup_id"):
        value = body.get(field)
        if not isinstance(value, str) or not value.strip() or (field == "domain" and not normalize_domain(value)):
            return f"'{field}' is required and must be a non-empty string"
    if kind == EventKind.PROGRESS:
        if not _acceptable_progress(body.get("progress")):
            return "'progress' must be a number from 0 to 100"
        status = body.get("status")
        if status is not None and status not in OPEN_BACKUP_STATUSES:
            return f"'status' must be '{BackupStatus.PENDING}' or '{BackupStatus.IN_PROGRESS}'"
    return None


def _acceptable_progress(progress):
    # The range test also refuses NaN and infinities, and never converts a huge int to float.
    return progress is None or (_is_number(progress) and 0 <= progress <= 100)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def spooled_event(record):
    """The event a spool line (a decoded JSON value) holds; InvalidEvent unless it has spool.py's shape."""
    if not isinstance(record, dict):
        raise InvalidEvent("not a JSON object")
    if not isinstance(record.get("spool_id"), str) or not SPOOL_ID.fullmatch(record["spool_id"]):
        raise InvalidEvent("no spool_id")
    if type(record.get("received_at")) is not int:
        raise InvalidEvent("no received_at time")
    if record.get("kind") not in KINDS:
        raise InvalidEvent("no known kind")
    if not isinstance(record.get("payload"), dict):
        raise InvalidEvent("no payload object")
    event = webhook_event(record["kind"], record["payload"], received_at=record["received_at"])
    return replace(event, spool_id=record["spool_id"])


def spool_record(event, spool_id):
    """The spool line's fields for `event`, which `spooled_event` reads back as the same event."""
    return {"spool_id": spool_id, "received_at": event.received_at, "kind": event.kind,
            "domain": event.domain, "backup_id": event.backup_id, "payload": dict(event.payload)}


def polled_event(domain, backup_id, answer, received_at=None):
    """The webhook event a backup/status `answer` stands for, or None for a status the plugin never documented."""
    payload = {"domain": domain, "backup_id": backup_id, "source": "backup/status", "answer": answer}
    status = answer.get("status")
    if status == BackupStatus.COMPLETED:
        kind = EventKind.COMPLETE
    elif status == BackupStatus.FAILED:
        kind, payload["error_message"] = EventKind.FAILED, answer.get("error")
    elif status in OPEN_BACKUP_STATUSES:
        kind = EventKind.PROGRESS
        payload.update(status=status, progress=answer.get("progress"))
        if not _acceptable_progress(payload["progress"]):
            payload["progress"] = None  # a progress the webhook would refuse is left out, not the whole answer
    else:
        return None
    return webhook_event(kind, payload, received_at)
