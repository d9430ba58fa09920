"""GET /api/openapi.json: openapi.yaml, read once per process and served as JSON."""
import functools
from pathlib import Path

import yaml
from flask import Blueprint

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"

bp = Blueprint("openapi", __name__, url_prefix="/api")


@functools.cache
def document():
    with DOCUMENT_PATH.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


@bp.get("/openapi.json")
def openapi_json():
    return document()
