"""GET /api/executions/<id>/artifact: a successful backup's stored artifact, streamed from disk.

The file is never read whole: werkzeug's file wrapper hands it to the server
in pieces (gunicorn sends it with sendfile), and `make_conditional` answers
`Range` (one range, 206) and `If-None-Match` (304) from the recorded SHA-256
as the ETag. It is sent from the first recorded copy (destinations.py) that
exists; only a local copy honours Range. The row's location is not trusted
blindly: a stale or tampered row could name any file the web process can
read, so only this execution's artifact inside its job's folder on that
destination is ever sent.
"""
import base64
import os
from contextlib import ExitStack
from pathlib import Path

from flask import Blueprint, current_app, request
from werkzeug.wsgi import wrap_file

import destinations
from routes import error, require_permission
from routes.executions import find_execution
from sinks import is_artifact_name
from sources import CHUNK, BackupError
from statuses import ExecutionStatus, ExecutionType

bp = Blueprint("artifacts", __name__, url_prefix="/api/executions")


@bp.get("/<execution_id>/artifact")
@require_permission("storage:download")
def download_artifact(execution_id):
    execution = find_execution(execution_id)
    if execution.type != ExecutionType.BACKUP or execution.status != ExecutionStatus.SUCCESS:
        error(f"Execution {execution.id} is not a successful backup ({execution.type}, {execution.status})", 404)
    if execution.path is None:
        error(f"Execution {execution.id} has no artifact any more: retention deleted it", 404)
    if execution.sha256 is None or execution.size is None:
        error(f"Execution {execution.id} recorded no checksum for its artifact, so it cannot be sent as verified",
              409)
    copy, sink = destinations.readable_copy(execution)
    if copy is None:
        error(f"Execution {execution.id} has no artifact in its job's directory on any of its destinations: "
              "it is gone (deleted by hand?)", 404)
    if sink.is_local:
        return local_artifact(execution, sink, stored_artifact(execution, sink, copy.location))
    return remote_artifact(execution, sink, copy.location)


def local_artifact(execution, sink, path):
    try:
        stream = open(path, "rb")
    except OSError:
        error(f"Execution {execution.id} has no artifact: its file {path.name} is gone", 404)
    try:
        size = os.fstat(stream.fileno()).st_size
        if size != execution.size:
            error(f"The artifact of execution {execution.id} is {size:,} bytes on disk, not the {execution.size:,} "
                  "recorded: it was changed after its backup and is not sent", 409)
        response = artifact_response(stream, size, path.name, execution.sha256)
    except BaseException:
        stream.close()
        raise
    return response


def remote_artifact(execution, sink, location):
    """A copy in a remote store, streamed as the store sends it; Range is not honoured (only local files)."""
    size = sink.size(location)
    if size is not None and size != execution.size:
        error(f"The artifact of execution {execution.id} is {size:,} bytes in {sink.describe()}, not the "
              f"{execution.size:,} recorded: it was changed after its backup and is not sent", 409)
    opened = ExitStack()
    try:
        stream = opened.enter_context(sink.read(location))
    except BackupError as exc:
        opened.close()
        error(f"Execution {execution.id}: its artifact cannot be read from {sink.describe()}: {exc}", 502)

    def pieces():
        with opened:
            while piece := stream.read(CHUNK):
                yield piece

    response = artifact_response(pieces(), execution.size, location.rsplit("/", 1)[-1], execution.sha256,
                                 ranges=False)
    response.call_on_close(opened.close)  # a client gone before the first piece
    return response


def stored_artifact(execution, sink, location):
    """The path of this successful backup's local copy, inside its job's folder on that destination; else a 404.

    The row is not trusted blindly: a stale or tampered row could name any
    file the web process can read.
    """
    directory = sink.directory.resolve()
    path = Path(location).resolve()
    if (path.parent != directory or not is_artifact_name(path.name)
            or f"-{execution.id}." not in path.name or not path.is_file()):
        error(f"Execution {execution.id} has no artifact in its job's directory {directory}", 404)
    return path


def artifact_response(stream, size, name, sha256, ranges=True):
    """`stream`: a local file (sent in pieces, Range honoured), or an iterator of a remote copy's pieces."""
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    body = wrap_file(request.environ, stream, buffer_size=CHUNK) if ranges else stream
    response = current_app.response_class(body, mimetype="application/octet-stream", direct_passthrough=True)
    response.content_length = size
    response.set_etag(sha256)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    # Both name the whole file's checksum, also on a 206: Digest (RFC 3230) and its successor (RFC 9530).
    response.headers["Digest"] = f"sha-256={digest}"
    response.headers["Repr-Digest"] = f"sha-256=:{digest}:"
    if not ranges:
        return response.make_conditional(request)  # If-None-Match only
    return response.make_conditional(request, accept_ranges=True, complete_length=size)
