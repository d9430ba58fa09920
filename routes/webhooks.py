"""The WPSec plugin's webhooks: validate, apply in one transaction, answer.

When the database cannot take the event (locked past its timeout, disk
error), it is spooled to disk and still acknowledged; the worker replays it.
"""
import hmac
import logging

from flask import Blueprint, Response, current_app, request
from peewee import DatabaseError

from models import COMPLETE, FAILED_EVENT, PROGRESS, Backup, event_problem
from routes import error, json_object
from spool import spool_event

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger("backhook.webhooks")
# Sent as bytes: Flask's JSON response machinery cost about a twentieth of a whole webhook.
ACKNOWLEDGED = b'{"success":true}\n'


@bp.post("/backup-progress")
def backup_progress():
    return receive(PROGRESS)


@bp.post("/backup-complete")
def backup_complete():
    return receive(COMPLETE)


@bp.post("/backup-failed")
def backup_failed():
    return receive(FAILED_EVENT)


def receive(kind):
    check_token()
    body = json_object()
    problem = event_problem(kind, body)
    if problem:
        error(problem, 400)
    try:
        applied = Backup.apply_webhook(body["domain"], body["backup_id"], kind, body)
    except DatabaseError as exc:
        return keep_for_later(kind, body, exc)
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


def keep_for_later(kind, body, exc):
    try:
        spool_id = spool_event(current_app.config["DATA_DIR"], kind, body)
    except OSError as spool_exc:
        log.error("webhook %s for %s lost: database failed (%s) and spooling failed (%s)",
                  kind, body["domain"], exc, spool_exc)
        error("The event could not be stored", 500)
    log.warning("webhook %s for %s spooled as %s: database unavailable (%s)", kind, body["domain"],
                spool_id, exc)
    return acknowledged()


def acknowledged():
    return Response(ACKNOWLEDGED, mimetype="application/json")
