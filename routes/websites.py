from flask import Blueprint

from models import Backup, Website, iso
from remote_backups import public_listing
from routes import error, newest_first, page_cursor, page_limit, require_permission

bp = Blueprint("websites", __name__, url_prefix="/api/websites")

MAX_LIMIT = 10_000


@bp.get("/<domain>/backups")
@require_permission("websites:read")
def list_backups(domain):
    """A site's backups, newest first; page with ?limit=N and ?before=<backupId>."""
    website = Website.by_domain(domain)
    if website is None:
        error("Website not found", 404)
    limit = page_limit(MAX_LIMIT)
    cursor = page_cursor(lambda before: Backup.get_or_none(
        (Backup.website == website.id) & (Backup.backup_id == before)), "backup of this website")
    backups = newest_first(Backup.select().where(Backup.website == website.id), Backup, limit, cursor)
    return {"success": True, "data": {
        "domain": website.domain,
        "backups": [backup_to_api(backup) for backup in backups],
        "syncedAt": iso(website.synced_at),
        "remoteBackups": public_listing(website.remote_backups),
    }}


def backup_to_api(backup):
    return {"backupId": backup.backup_id, "status": backup.status, "progress": backup.progress,
            "errorMessage": backup.error_message, "createdAt": iso(backup.created_at),
            "updatedAt": iso(backup.updated_at), "completedAt": iso(backup.completed_at)}

