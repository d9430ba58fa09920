import hashlib
import json
import re

from flask import Blueprint, current_app, g, request
from peewee import IntegrityError

import destinations
import job_definition
from heartbeats import workers_seen
from models import Job, JobCreationKey, JobDestination, iso
from routes import error, json_object, query_flag, require_permission
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
        "keepDaily": job.keep_daily,
        "keepWeekly": job.keep_weekly,
        "keepMonthly": job.keep_monthly,
        "schedule": job.schedule,
        "timezone": job.timezone,
        "nextRunAt": iso(job.next_run_at),
        "timeoutSeconds": job.timeout_seconds,
        "excludes": job.exclude_patterns(),
        "oneFileSystem": job.one_file_system,
        "enabled": job.enabled,
        "lastExecution": job.last_id and {"id": job.last_id, "status": job.last_status,
                                          "endedAt": iso(job.last_ended_at)},
    }


def one_job_to_api(job_id):
    job = Job.listing().where(Job.id == job_id).first()
    return job_to_api(job, destinations.destination_texts(job))


@bp.get("")
@require_permission("jobs:read")
def list_jobs():
    return {"success": True, "data": [listed for _job, listed in listed_jobs()],
            "workers": workers_seen()}  # beside the seed's fields: whether anyone will run what is triggered


def listed_jobs():
    """[(job, its API form)] for every job by name, in two queries however many jobs there are."""
    texts = {}
    for row in JobDestination.select().order_by(JobDestination.job, JobDestination.position):  # one query for all
        texts.setdefault(row.job_id, []).append(row.destination)
    return [(job, job_to_api(job, texts.get(job.id))) for job in Job.listing()]


@bp.post("")
@require_permission("jobs:write")
def create_job():
    """Define a job as `backhook jobs add` does, with the same checks (job_definition.py); never a command: one."""
    body = json_object()
    key = idempotency_key()
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    if key is not None and (answer := earlier_creation(key, digest)):
        return answer
    try:
        stored = job_definition.define(job_definition.api_values(body))
        job = job_definition.create(stored, idempotency=key and (g.api_key.id, key, digest))
    except (job_definition.Invalid, IntegrityError) as refused:
        # A concurrent call with the same key may have created the job (or taken the key) first.
        if key is not None and (answer := earlier_creation(key, digest)):
            return answer
        if isinstance(refused, IntegrityError):
            raise
        error(refused.for_api(), refused.status)
    return {"success": True, "data": one_job_to_api(job.id)}, 201


def earlier_creation(key, digest):
    """The answer of the call that created a job with this Idempotency-Key in the last 24 hours, or None."""
    earlier = JobCreationKey.fresh(g.api_key.id, key)
    if earlier is None:
        return None
    if earlier.request_sha256 != digest:
        error("'Idempotency-Key' was used within 24 hours for a request with another body", 422)
    return {"success": True, "data": one_job_to_api(earlier.job_id)}, 201


@bp.patch("/<job_id>")
@require_permission("jobs:write")
def change_job(job_id):
    """Change the fields the body names, as `backhook jobs set` does; the answer is the whole job."""
    job = find_job(job_id)
    body = json_object()
    try:
        changes = job_definition.revise(job, job_definition.api_values(body))
    except job_definition.Invalid as invalid:
        error(invalid.for_api(), invalid.status)
    if not job_definition.change(job, changes):
        error("Job not found", 404)  # deleted meanwhile
    return {"success": True, "data": one_job_to_api(job.id)}


@bp.delete("/<job_id>")
@require_permission("jobs:write")
def delete_job(job_id):
    """Delete a job and its history, never its stored backups (job_definition.delete says when it refuses)."""
    try:
        job = job_definition.delete(job_id, keep_artifacts=query_flag("keepArtifacts"))
    except job_definition.Invalid as refused:
        error(refused.for_api(), refused.status)
    if job is None:
        error("Job not found", 404)
    return "", 204


@bp.post("/<job_id>/run")
@require_permission("jobs:execute")
def run_job(job_id):
    job = find_job(job_id)
    if not job.enabled:
        error("Job is disabled", 409)
    try:
        execution = trigger(job, current_app.config["DATA_DIR"], idempotency_key())
    except IntegrityError:  # the job was deleted since it was read
        error("Job not found", 404)
    return {"success": True, "executionId": execution.id}


def find_job(job_id):
    job = Job.get_or_none(Job.id == job_id)
    if job is None:
        error("Job not found", 404)
    return job


def idempotency_key():
    """The Idempotency-Key header, None without one; a 400 unless it is 1 to 255 printable ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        error("'Idempotency-Key' must be 1 to 255 printable ASCII characters", 400)
    return key
