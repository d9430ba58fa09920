"""GET /metrics, for Prometheus: a key holding `metrics:read` as a bearer token, or open with BACKHOOK_METRICS_PUBLIC.

Outside /api/, so never rate limited: Prometheus scrapes on a steady interval.
"""
from flask import Blueprint, Response, current_app, request

from metrics import exposition
from routes import require_permission

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require_permission("metrics:read", open_when="METRICS_PUBLIC")
def scrape():
    body, content_type = exposition(current_app.config["DATA_DIR"], request.headers.get("Accept"))
    return Response(body, content_type=content_type)
