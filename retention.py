"""Retention: pruning a job's older artifacts once its new backup is recorded Success.

The run calls `prune` only after its own Success is written (issue 12), so
nothing here can cost the job its newest good backup: the newest successful
artifact and the pruning attempt's own are never deleted, whatever `keep` says.
"""
import destinations
import models
from models import ArtifactCopy, Execution
from sources import BackupError, SourceError
from statuses import ExecutionStatus, ExecutionType


def expired(holders, keep, own_id):
    """Of the successful executions holding an artifact, newest first, those to prune.

    The `keep` newest stay; `keep` is at least 1 here, so the newest always stays.
    """
    return [old for old in holders[keep:] if old.id != own_id]


def artifact_holders(job_id):
    """The job's successful backups that still name an artifact, newest first (a Restore never names one)."""
    return list(Execution.select(Execution.id, Execution.path)
                .where((Execution.job == job_id) & (Execution.type == ExecutionType.BACKUP)
                       & (Execution.status == ExecutionStatus.SUCCESS)
                       & Execution.path.is_null(False))
                .order_by(Execution.created_at.desc(), Execution.id.desc()))


def prune(job, execution_id, check, log):
    """Delete the job's successful artifacts older than its `keep` newest, every copy; the problems met, or None.

    Each copy (an ArtifactCopy, on one of the destinations) is first
    forgotten in the database (committed), then deleted from its store, so no
    row ever names a missing file; its manifest goes after it, so a copy that
    could not be deleted keeps its manifest, and its row comes back. The
    execution's `path` is cleared with its last copy. `check()` before each
    deletion may raise to stop; `log(message, level)` reports each one.
    """
    keep = job.keep
    if not keep or keep < 1:
        return None
    holders = artifact_holders(job.id)
    deleted, problems = 0, []
    for old in expired(holders, keep, execution_id):
        old.job = job
        for copy in destinations.recorded_copies(old):
            check()
            if not forget(old, copy):
                continue  # another run pruned it meanwhile
            problem = delete_copy(job, old, copy, log)
            if problem:
                problems.append(problem)
            else:
                deleted += 1
    log(f"retention: keeping the {min(len(holders), keep)} newest of at most {keep} backups; deleted {deleted}")
    return "; ".join(problems) or None


def forget(old, copy):
    """Drop the copy's row (and the execution's `path` with its last copy) in one transaction; False if gone."""
    with models.database.atomic():
        if copy.id is None:  # recorded before version 6: the execution's path is its only copy
            return Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=None),
                                        where=Execution.path == copy.location)
        if not ArtifactCopy.delete().where(ArtifactCopy.id == copy.id).execute():
            return False
        if not ArtifactCopy.select().where(ArtifactCopy.execution == old.id).exists():
            Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=None), where=Execution.path == old.path)
        return True


def remember(old, copy):
    """Name a copy again after its deletion failed, so no file is left unaccounted for and the next run retries."""
    with models.database.atomic():
        if copy.id is not None:
            ArtifactCopy.create(id=copy.id, execution=old.id, position=copy.position,
                                destination=copy.destination, location=copy.location)
        Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=old.path), where=Execution.path.is_null())


def delete_copy(job, old, copy, log):
    """Delete one forgotten copy and then its manifest; the problem met, or None."""
    where = f"from {destinations.describe(copy.destination, job)}"
    try:
        sink = destinations.sink_for(copy.destination, job)
        sink.delete(copy.location)
    except (OSError, BackupError, SourceError) as exc:
        remember(old, copy)
        problem = (f"could not delete {copy.location} (execution {old.id}) {where}: "
                   f"{getattr(exc, 'strerror', None) or exc}")
        log(f"retention: {problem}; it is kept", "error")
        return problem
    log(f"retention: deleted {copy.location} (execution {old.id}) {where}")
    try:
        sink.delete_manifest(copy.location)  # only now: an artifact that stays keeps its manifest
    except (OSError, BackupError) as exc:
        problem = (f"could not delete the manifest of {copy.location} (execution {old.id}) {where}: "
                   f"{getattr(exc, 'strerror', None) or exc}")
        log(f"retention: {problem}", "error")
        return problem
    return None
