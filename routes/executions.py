import datetime
from types import SimpleNamespace

from flask import Blueprint, current_app, request

from heartbeats import note_if_unattended
from models import Execution, ExecutionLog, iso
from restore import RestoreRefused, queue_restore
from routes import error, json_object, newest_first, page_cursor, page_limit, query_flag, require_permission
from statuses import ExecutionStatus, ExecutionType
from wakeup import wake_workers

bp = Blueprint("executions", __name__, url_prefix="/api/executions")

MAX_LIMIT = 1000


def execution_to_api(execution, include_logs=False):
    """`execution` comes from Execution.with_job_name(), which adds its job's name."""
    data = {
        "id": execution.id,
        "jobId": execution.job_id,
        "jobName": execution.name,
        "type": execution.type,
        "status": execution.status,
        "progress": execution.progress,
        "stage": execution.stage,
        "startedAt": iso(execution.started_at),
        "endedAt": iso(execution.ended_at),
        "duration": execution.duration(),
        "size": execution.size,
        "path": execution.path,
        "error": execution.error,
    }
    if include_logs:
        data["logs"] = [log_to_api(entry) for entry in
                        ExecutionLog.select().where(ExecutionLog.execution == execution.id)
                        .order_by(ExecutionLog.id)]
    return data


def drill_to_api(execution):
    """The last restore drill of a backup execution: {"executionId", "status", "at"}, or None before any.

    `at` is when that drill proved the backup restorable; null when it failed
    or was cancelled (the backup keeps only its last success's time).
    """
    if execution.last_drill_id is None:
        return None
    proven = execution.last_drill_status == ExecutionStatus.SUCCESS
    return {"executionId": execution.last_drill_id, "status": execution.last_drill_status,
            "at": iso(execution.proven_restorable_at) if proven else None}


def log_to_api(entry):
    return {"timestamp": iso(entry.timestamp), "level": entry.level, "stage": entry.stage,
            "message": entry.message}


def find_execution(execution_id):
    """The execution, or a 404 answer; `execution.job` is read when first used (execution_to_api needs it)."""
    execution = Execution.get_or_none(Execution.id == execution_id)
    if execution is None:
        error("Execution not found", 404)
    return execution


def find_shown_execution(execution_id):
    """find_execution with the job's name that execution_to_api shows (as Execution.with_job_name adds it)."""
    execution = find_execution(execution_id)
    execution.name = execution.job.name
    return execution


@bp.get("")
@require_permission("history:read")
def list_executions():
    """Executions newest first, by ?jobId=, ?status=, ?type= and ?createdBefore=; page with ?limit=N and
    ?before=<executionId>.

    One row more than the page is read: when it exists, the page's last id is
    `next`, the `before` of the following page.
    """
    job_id = request.args.get("jobId")
    if job_id is not None and "\x00" in job_id:  # no id holds one, and PostgreSQL would refuse the query
        error("'jobId' must not contain NUL characters", 400)
    filters = {"job_id": job_id, "status": enum_arg("status", ExecutionStatus),
               "execution_type": enum_arg("type", ExecutionType)}
    limit = page_limit(MAX_LIMIT)
    cursor = page_cursor(lambda before: Execution.get_or_none(Execution.id == before), "execution")
    if cursor is None:
        cursor = created_before()
    executions = list(newest_first(Execution.history(**filters), Execution, limit + 1, cursor))
    page = executions[:limit]
    return {"success": True, "data": [history_entry(execution) for execution in page],
            "next": page[-1].id if len(executions) > limit else None}


def created_before():
    """?createdBefore= (an ISO 8601 date or UTC date-time) as a paging cursor, None without one; else a 400.

    A cursor at that moment with the smallest id: newest_first then keeps only
    what was created strictly before it, along the same indexes as a page.
    """
    raw = request.args.get("createdBefore")
    if raw is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or not raw.isascii():
        error("'createdBefore' must be an ISO 8601 date or date-time, for example 2026-12-04 or "
              "2026-12-04T00:00:00.000Z", 400)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return SimpleNamespace(created_at=int(moment.timestamp() * 1000), id="")


def history_entry(execution):
    """A listed execution: the seed's fields, and when a restore drill last proved a backup restorable."""
    return {**execution_to_api(execution), "lastRestoreDrill": drill_to_api(execution)}


def enum_arg(name, enum):
    """The query argument `name` as a member of `enum`, None when absent; a 400 naming the choices otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in set(enum):
        error(f"'{name}' must be one of {', '.join(enum)}", 400)
    return enum(raw)


@bp.get("/<execution_id>")
@require_permission("history:read")
def show_execution(execution_id):
    execution = find_shown_execution(execution_id)
    if execution.status == ExecutionStatus.PENDING:
        note_if_unattended(execution.id)  # before its logs are read, so this very answer shows the note
    return {"success": True, "data": execution_to_api(execution, include_logs=query_flag("includeLogs"))}


@bp.post("/<execution_id>/cancel")
@require_permission("jobs:execute")
def cancel_execution(execution_id):
    execution, accepted = Execution.cancel(execution_id)
    if execution is None:
        error("Execution not found", 404)
    if not accepted:
        error(f"Execution already finished ({execution.status})", 409)
    if execution.status == ExecutionStatus.RUNNING:
        wake_workers(current_app.config["DATA_DIR"])  # its worker stops it at once
    return {"success": True, "data": execution_to_api(execution)}


RESTORE_FIELDS = {"target": str, "replace": bool}


@bp.post("/<execution_id>/restore")
@require_permission("storage:restore")
def restore_execution(execution_id):
    body = json_object(optional=True)
    unknown = sorted(set(body) - set(RESTORE_FIELDS))
    if unknown:
        error(f"Unknown field {unknown[0]!r}; the body takes {', '.join(RESTORE_FIELDS)}", 400)
    for name, kind in RESTORE_FIELDS.items():
        if name in body and not isinstance(body[name], kind):
            error(f"'{name}' must be a {'boolean' if kind is bool else 'string'}", 400)
    try:
        execution = queue_restore(execution_id, body.get("target"), body.get("replace", False),
                                  data_dir=current_app.config["DATA_DIR"])
    except RestoreRefused as refused:
        error(refused.message, refused.status)
    return {"success": True, "executionId": execution.id}
