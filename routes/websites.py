import json

from flask import Blueprint, request

from models import Backup, Website, iso
from routes import error, require_permission

bp = Blueprint("websites", __name__, url_prefix="/api/websites")

DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000


@bp.get("/<domain>/backups")
@require_permission("websites:read")
def list_backups(domain):
    """A site's backups, newest first; page with ?limit=N and ?before=<backupId>."""
    website = Website.by_domain(domain)
    if website is None:
        error("Website not found", 404)
    limit = page_limit()
    query = Backup.select().where(Backup.website == website.id)
    before = request.args.get("before")
    if before is not None:
        # A NUL cannot be stored, so it names no backup (and PostgreSQL would refuse the query).
        cursor = None if "\x00" in before else Backup.get_or_none(
            (Backup.website == website.id) & (Backup.backup_id == before))
        if cursor is None:
            error("'before' names no backup of this website", 400)
        query = query.where((Backup.created_at < cursor.created_at)
                            | ((Backup.created_at == cursor.created_at) & (Backup.id < cursor.id)))
    backups = query.order_by(Backup.created_at.desc(), Backup.id.desc()).limit(limit)
    return {"success": True, "data": {
        "domain": website.domain,
        "backups": [backup_to_api(backup) for backup in backups],
        "syncedAt": iso(website.synced_at),
        "remoteBackups": json.loads(website.remote_backups) if website.remote_backups else [],
    }}


def backup_to_api(backup):
    return {"backupId": backup.backup_id, "status": backup.status, "progress": backup.progress,
            "errorMessage": backup.error_message, "createdAt": iso(backup.created_at),
            "updatedAt": iso(backup.updated_at), "completedAt": iso(backup.completed_at)}


def page_limit():
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        error(f"'limit' must be a whole number from 1 to {MAX_LIMIT}", 400)
    return int(raw)
