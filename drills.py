"""Restore drills (`"target": "scratch"`): a backup restored into a throwaway target, checked, and removed.

restore.Restore runs a drill like any restore, into the target that
`scratch(job_source, run)` yields, and `record()`s its end on the backup
execution: `proven_restorable_at` on success, and the last drill's status
and id whatever happened.

The throwaway target is of the job's own kind:

- SQLite and directories: a directory `.drill-<execution id>-<attempt>` in
  the job's backup directory, beside the artifacts (where restores are known
  to have room), holding `drill.db` or the unpacked tree;
- PostgreSQL and MariaDB: a database `backhook_drill_<execution id>_<attempt>`
  created on the job's server, like the job's database, so its user needs
  the right to create databases.

`command:` jobs have no drill: a restore command is a black box whose
target only the job's author knows, so the API refuses the drill with 409
rather than run that command anywhere.

Every name carries the execution id and its attempt, so the reclaim of a
dead worker's drill finds and removes exactly what that attempt made
(`remove_leftovers`), without touching a later attempt's.
"""
import logging
import shutil
from contextlib import contextmanager

from database_targets import MysqlTarget, PostgresqlTarget, scratch_database_name
from models import Execution, Job
from sinks import job_directory
from sources import BackupError, Source, SourceError, parse_source
from statuses import ExecutionStatus, ExecutionType

log = logging.getLogger("backhook.restore")

SCRATCH = "scratch"
DATABASE_TARGETS = {"postgresql": PostgresqlTarget, "mysql": MysqlTarget}


def drill_directory(job, execution):
    return job_directory(job) / f".drill-{execution.id}-{execution.attempts}"


def drill_database(execution):
    return scratch_database_name("drill", execution)


@contextmanager
def scratch(source, run):
    """A sources.Source for a throwaway target of `source`'s kind; removed on exit, whatever happened."""
    if source.kind in DATABASE_TARGETS:
        with scratch_database(source, run) as drill_source:
            yield drill_source
    elif source.kind in ("sqlite", "files"):
        with scratch_directory(source, run) as drill_source:
            yield drill_source
    else:
        raise BackupError(f"{source.kind} backups have no restore drill")


@contextmanager
def scratch_directory(source, run):
    directory = drill_directory(run.job, run.execution)
    directory.mkdir(mode=0o700, parents=True)
    try:
        inside = directory / ("drill.db" if source.kind == "sqlite" else "tree")
        run.log(f"drilling into the throwaway {'file' if source.kind == 'sqlite' else 'directory'} {inside}")
        yield Source(source.kind, path=str(inside))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            run.log(f"the drill's directory {directory} could not be removed", "warning")


@contextmanager
def scratch_database(source, run):
    server = DATABASE_TARGETS[source.kind](source, False, run)
    name = drill_database(run.execution)
    drill_source = server.create_database(name)
    try:
        run.log(f"drilling into the throwaway database {name} on {source.host}")
        yield drill_source
    finally:
        problem = server.drop_database(name)
        if problem:
            run.log(f"the drill's database {name} was not dropped: {problem}", "warning")


def record(backup_id, drill_execution_id, status, now):
    """Keep a drill's end on the backup it drilled; a drill older than the one recorded changes nothing.

    Execution ids sort by creation, so two drills ending out of order still
    leave the newer one's result.
    """
    fields = {"last_drill_status": status, "last_drill_id": drill_execution_id}
    if status == ExecutionStatus.SUCCESS:
        fields["proven_restorable_at"] = now
    newer = Execution.last_drill_id.is_null() | (Execution.last_drill_id <= drill_execution_id)
    return Execution.update(**fields).where((Execution.id == backup_id) & newer).execute() == 1


def remove_leftovers(execution):
    """Remove what a Restore attempt whose worker died left outside the job's directory; returns their names.

    That is a drill's throwaway directory or database, and a MariaDB
    restore's staging database (database_targets.MysqlTarget). Never raises:
    a server that does not answer now is logged, and the leftover stays.
    """
    if execution.type != ExecutionType.RESTORE or execution.status != ExecutionStatus.RUNNING:
        return []
    job = Job.get_by_id(execution.job_id)
    try:
        source = parse_source(job.source if execution.restore_target in (None, SCRATCH) else execution.restore_target)
    except SourceError:
        return []
    removed = []
    if execution.restore_target == SCRATCH and source.kind in ("sqlite", "files"):
        directory = drill_directory(job, execution)
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory.name)
    if source.kind in DATABASE_TARGETS:
        names = [scratch_database_name("restore", execution)] if source.kind == "mysql" else []
        if execution.restore_target == SCRATCH:
            names.append(drill_database(execution))
        server = DATABASE_TARGETS[source.kind](source, False, None)
        for name in names:
            problem = server.drop_database(name)
            if problem:
                log.warning("execution %s: its database %s was not dropped: %s", execution.id, name, problem)
            else:
                removed.append(name)
    return removed
