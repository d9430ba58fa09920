from flask import Blueprint

from heartbeats import workers_seen
from routes import error

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready while the database answers; the body says how many workers it saw in the last minute.

    Ready even with no worker: the web process can still take triggers and
    webhooks, which wait in the database for one.
    """
    try:
        workers = workers_seen()
    except Exception:  # any failure to reach the database means not ready
        error("Database unavailable", 503)
    return {"status": "ok", "workers": workers}
