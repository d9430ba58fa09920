"""The WPSec plugin's webhooks: validate (events.py), apply in one transaction (remote_backups.py), answer.

When the database cannot take the event (locked past its timeout, disk
error), it is spooled to disk and still acknowledged; the worker replays it.
"""
import hmac
import logging

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError

from database import opened
from events import InvalidEvent, webhook_event
from models import WebhookTally
from remote_backups import apply
from routes import ApiError, error, json_object
from spool import spool_event
from statuses import EventKind, WebhookOutcome

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger("backhook.webhooks")
# Sent as bytes: Flask's JSON response machinery is a share of a webhook worth saving
# (bench/RESULTS.md, "Figures behind the code: events").
ACKNOWLEDGED = b'{"success":true}\n'


@bp.post("/backup-progress")
def backup_progress():
    return receive(EventKind.PROGRESS)


@bp.post("/backup-complete")
def backup_complete():
    return receive(EventKind.COMPLETE)


@bp.post("/backup-failed")
def backup_failed():
    return receive(EventKind.FAILED)


def receive(kind):
    check_token()
    try:
        event = webhook_event(kind, json_object())
    except InvalidEvent as exc:
        refuse(kind, ApiError(str(exc), 400))
    except ApiError as exc:  # not a JSON object, or too large
        refuse(kind, exc)
    try:
        applied = apply(event)
    except DatabaseError as exc:
        return keep_for_later(event, exc)
    if applied is None:
        error("Website not found", 404)
    return acknowledged()


def check_token():
    expected = current_app.config["WPFORT_BACKEND_TOKEN"]
    if not expected:
        error("Webhooks are disabled: WPFORT_BACKEND_TOKEN is not configured", 503)
    presented = request.headers.get("x-wpfort-token", "")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        error("Missing or invalid x-wpfort-token", 401)


def refuse(kind, answer):
    """Count a refused body for /metrics, then raise its answer; a busy database costs only the count."""
    try:
        with opened().atomic():
            WebhookTally.add(kind, WebhookOutcome.INVALID)
    except DatabaseError as exc:
        log.warning("webhook %s refused (%s); not counted: %s", kind, answer.message, exc)
    raise answer


def keep_for_later(event, exc):
    try:
        spool_id = spool_event(current_app.config["DATA_DIR"], event)
    except OSError as spool_exc:
        log.error("webhook %s for %s lost: database failed (%s) and spooling failed (%s)",
                  event.kind, event.domain, exc, spool_exc)
        error("The event could not be stored", 500)
    log.warning("webhook %s for %s spooled as %s: database unavailable (%s)", event.kind, event.domain,
                spool_id, exc)
    return acknowledged()


def acknowledged():
    return Response(ACKNOWLEDGED, mimetype="application/json")
