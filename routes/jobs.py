import re

from flask import Blueprint, current_app, request

import destinations
from models import Job, JobDestination, iso
from routes import error, require_permission
from sources import describe_source
from wakeup import trigger

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")

IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def job_to_api(job, texts):
    """`job` comes from Job.listing(), which adds its newest execution; `texts`, its destinations in order."""
    shown = [destinations.describe(text, job) for text in texts or [job.destination]]
    return {
        "id": job.id,
        "name": job.name,
        **describe_source(job.source),
        "destination": shown[0],
        "destinations": shown,
        "allowPartialDestinations": job.allow_partial_destinations,
        "compression": job.compression,
        "encryptTo": job.recipient_keys(),  # age public keys; [] when the backups are not encrypted
        "keep": job.keep,
        "enabled": job.enabled,
        "lastExecution": job.last_id and {"id": job.last_id, "status": job.last_status,
                                          "endedAt": iso(job.last_ended_at)},
    }


@bp.get("")
@require_permission("jobs:read")
def list_jobs():
    return {"success": True, "data": [listed for _job, listed in listed_jobs()]}


def listed_jobs():
    """[(job, its API form)] for every job by name, in two queries however many jobs there are."""
    texts = {}
    for row in JobDestination.select().order_by(JobDestination.job, JobDestination.position):  # one query for all
        texts.setdefault(row.job_id, []).append(row.destination)
    return [(job, job_to_api(job, texts.get(job.id))) for job in Job.listing()]


@bp.post("/<job_id>/run")
@require_permission("jobs:execute")
def run_job(job_id):
    job = Job.get_or_none(Job.id == job_id)
    if job is None:
        error("Job not found", 404)
    if not job.enabled:
        error("Job is disabled", 409)
    execution = trigger(job, current_app.config["DATA_DIR"], idempotency_key())
    return {"success": True, "executionId": execution.id}


def idempotency_key():
    """The Idempotency-Key header, None without one; a 400 unless it is 1 to 255 printable ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        error("'Idempotency-Key' must be 1 to 255 printable ASCII characters", 400)
    return key
