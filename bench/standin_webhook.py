"""A stand-in for routes/webhooks.py until the webhooks branch is merged (remove then).

It does the same kind of work as the real progress webhook: check the token,
parse the body, find the website, upsert the backup and append the event in
one transaction.
"""
import hmac
import json

from flask import Blueprint, current_app, request

import app as backhook
import models
from models import Backup, BackupEvent, Website

bp = Blueprint("standin_webhooks", __name__)


@bp.post("/webhooks/backup-progress")
def progress():
    if not hmac.compare_digest(request.headers.get("x-wpfort-token", ""), current_app.config["WPFORT_BACKEND_TOKEN"]):
        return {"error": "Unauthorized"}, 401
    body = request.get_json(silent=True, force=True)
    site = Website.by_domain(body["domain"])
    if site is None:
        return {"error": "Website not found"}, 404
    with models.database.atomic():
        backup = Backup.get_or_none((Backup.website == site.id) & (Backup.backup_id == body["backup_id"]))
        if backup is None:
            backup = Backup.create(website=site.id, backup_id=body["backup_id"], status="in_progress")
        progress = round(body["progress"])
        if progress > backup.progress:
            Backup.update(progress=progress, updated_at=models.now_ms()).where(Backup.id == backup.id).execute()
        BackupEvent.create(backup_pk=backup.id, kind="progress", payload=json.dumps(body))
    return {"success": True}


def create_app():
    application = backhook.create_app()
    application.register_blueprint(bp)
    return application
