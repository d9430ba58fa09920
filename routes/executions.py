from flask import Blueprint, current_app

from models import Execution
from routes import error, query_flag, require_permission
from wakeup import wake_workers

bp = Blueprint("executions", __name__, url_prefix="/api/executions")


def find_execution(execution_id):
    execution = Execution.with_job_name(execution_id)
    if execution is None:
        error("Execution not found", 404)
    return execution


@bp.get("/<execution_id>")
@require_permission("history:read")
def show_execution(execution_id):
    execution = find_execution(execution_id)
    return {"success": True, "data": execution.to_api(include_logs=query_flag("includeLogs"))}


@bp.post("/<execution_id>/cancel")
@require_permission("jobs:execute")
def cancel_execution(execution_id):
    execution, accepted = Execution.cancel(execution_id)
    if execution is None:
        error("Execution not found", 404)
    if not accepted:
        error(f"Execution already finished ({execution.status})", 409)
    if execution.status == "Running":
        wake_workers(current_app.config["DATA_DIR"])  # its worker stops it at once
    return {"success": True, "data": execution.to_api()}
