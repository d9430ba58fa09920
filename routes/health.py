from flask import Blueprint

from database import database
from routes import error

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    try:
        database.execute_sql("SELECT 1").fetchone()
    except Exception:  # any failure to reach the database means not ready
        error("Database unavailable", 503)
    return {"status": "ok"}
