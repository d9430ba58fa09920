"""Retention: pruning a job's older artifacts once its new backup is recorded Success.

The run calls `prune` only after its own Success is written (issue 12), so
nothing here can cost the job its newest good backup: the newest successful
artifact and the pruning attempt's own are never deleted, whatever `keep` says.
"""
import models
from models import Execution
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


def prune(job, execution_id, sink, check, log):
    """Delete the job's successful artifacts older than its `keep` newest; the problems met, or None.

    Each file is first forgotten in the database (committed), then deleted
    from `sink`, so no row ever names a missing file; its manifest goes after
    it, so an artifact that could not be deleted keeps its manifest.
    `check()` before each deletion may raise to stop; `log(message, level)`
    reports each one.
    """
    keep = job.keep
    if not keep or keep < 1:
        return None
    holders = artifact_holders(job.id)
    deleted, problems = 0, []
    for old in expired(holders, keep, execution_id):
        check()
        with models.database.atomic():
            forgotten = Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=None),
                                             where=Execution.path == old.path)
        if not forgotten:
            continue  # another run pruned it meanwhile
        try:
            sink.delete(old.path)
        except OSError as exc:
            # Named again, so that no file is left unaccounted for and the next run tries again.
            with models.database.atomic():
                Execution.transition(old.id, ExecutionStatus.SUCCESS, dict(path=old.path),
                                     where=Execution.path.is_null())
            problems.append(f"could not delete {old.path} (execution {old.id}): {exc.strerror or exc}")
            log(f"retention: {problems[-1]}; it is kept", "error")
            continue
        deleted += 1
        log(f"retention: deleted {old.path} (execution {old.id})")
        try:
            sink.delete_manifest(old.path)  # only now: an artifact that stays keeps its manifest
        except OSError as exc:
            problems.append(f"could not delete the manifest of {old.path} (execution {old.id}): "
                            f"{exc.strerror or exc}")
            log(f"retention: {problems[-1]}", "error")
    log(f"retention: keeping the {min(len(holders), keep)} newest of at most {keep} backups; deleted {deleted}")
    return "; ".join(problems) or None
