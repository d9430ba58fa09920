"""The `backhook` command line, built on Flask's CLI."""
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote, urlparse

import click
from flask import current_app
from flask.cli import FlaskGroup
from peewee import DatabaseError, IntegrityError, InterfaceError
from playhouse.db_url import parse as parse_url

HERE = Path(__file__).resolve().parent
if __package__:
    # Installed, this is backhook/cli.py, and its sibling modules are imported as
    # top-level modules from their own directory: the installation claims no
    # generic top-level name (`models`, `config`) in site-packages.
    sys.path.insert(0, str(HERE))

import config  # noqa: E402  (the project's own modules need HERE on sys.path)
import dbcopy  # noqa: E402
import destinations  # noqa: E402
import job_definition  # noqa: E402
import models  # noqa: E402
import retention  # noqa: E402
import schedules  # noqa: E402
import notifications  # noqa: E402
import outbox  # noqa: E402
from compression import COMPRESSORS  # noqa: E402
from database import connect_database, database, is_postgresql_url, opened  # noqa: E402
from migrations import latest_version, migrate  # noqa: E402
from app import create_app  # noqa: E402
from models import (ApiKey, Execution, Job, Notification, NotificationOutbox, Setting, Website, iso,  # noqa: E402
                    normalize_domain)
from sources import SourceError, describe_source, shown_source  # noqa: E402
from encryption import parse_recipients  # noqa: E402
from restore import SCRATCH, RestoreRefused, queue_restore, run_in_this_process  # noqa: E402
from statuses import FINISHED, ExecutionStatus, ExecutionType, NotificationKind, NotifyOn, OutboxStatus  # noqa: E402
from wakeup import trigger, wake_workers  # noqa: E402

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_PROCESSES = max(2, os.cpu_count() or 1)


# Only these may create the database; every other command needs an initialised one.
CREATES_DATABASE = ("init", "run", "serve", "worker")


def load_app():
    """The app a command runs in, once the environment and the database are fit for that command."""
    try:
        settings = config.load()
    except config.ConfigError as exc:
        fail(str(exc))
    if click.get_current_context().find_root().invoked_subcommand in CREATES_DATABASE:
        Path(settings["DATA_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        problem = database_problem(settings["DATABASE_URL"])
        if problem:
            fail(problem)
    try:
        return create_app()
    except config.ConfigError as exc:  # a database URL of a kind backhook cannot use
        fail(str(exc))


def database_problem(url):
    """Why the database at `url` cannot serve a command that must not create it; None when it can."""
    if url.startswith("sqlite:///"):
        path = "/" + urlparse(url).path.lstrip("/")
        if not Path(path).is_file():
            return (f"no backhook database at {path}: run `backhook init` to create one, or point "
                    f"BACKHOOK_DATA_DIR (default ./var, of the current directory) at the data directory that holds yours")
        where = f"the database at {path}"
        try:
            with closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)) as db:
                found = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            return f"cannot read {where}: {exc}"
    elif is_postgresql_url(url):
        params = parse_url(url)
        where = f"the PostgreSQL database {params.get('database')} on {params.get('host') or 'localhost'}"
        db = connect_database(url)
        try:
            found = 0
            if db.execute_sql("SELECT to_regclass('schema_version')").fetchone()[0] is not None:
                found = db.execute_sql("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        except DatabaseError as exc:
            return f"cannot use {where} (BACKHOOK_DATABASE_URL): {one_line(exc)}"
        finally:
            db.close()
    else:
        return None
    latest = latest_version()
    if found == 0:
        return f"{where} is not a backhook database yet: run `backhook init` first"
    if found < latest:
        return f"{where} has schema version {found}: run `backhook init` to upgrade it to version {latest}"
    return None


def one_line(exc):
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


class BackhookGroup(FlaskGroup):
    """Flask's CLI, which gives every command an app context, without what backhook has no use for:
    Flask's options for picking another app and the commands that extensions register (`limiter`)."""

    def __init__(self, **extra):
        super().__init__(create_app=load_app, add_default_commands=False, add_version_option=False,
                         load_dotenv=False, set_debug_flag=False, **extra)
        self.params = [param for param in self.params if param.name not in ("env_file", "app", "debug")]

    def get_command(self, ctx, name):
        return click.Group.get_command(self, ctx, name)

    def list_commands(self, ctx):
        return click.Group.list_commands(self, ctx)

    def parse_args(self, ctx, args):
        return click.Group.parse_args(self, ctx, args)

    def invoke(self, ctx):
        # A locked or unreachable database is the user's to fix: one line, not a traceback.
        try:
            return super().invoke(ctx)
        except (DatabaseError, InterfaceError) as exc:
            raise click.ClickException(f"database error: {one_line(exc)}") from None


@click.group(cls=BackhookGroup)
@click.version_option(version("backhook"), prog_name="backhook", message="%(prog)s %(version)s")
def main():
    """backhook: self-hosted backup orchestrator.

    Configuration comes from the environment (BACKHOOK_DATA_DIR, default ./var;
    see README.md). Each command has its own --help.
    """


def entry_point():
    """The `backhook` console script: every file this process and its children create is private."""
    os.umask(config.UMASK)
    main()


def fail(message):
    raise click.ClickException(message)


def create_unique(model, duplicate_message, **fields):
    try:
        with database.atomic():
            return model.create(**fields)
    except IntegrityError:
        fail(duplicate_message)


def find(model, row_id, what):
    row = model.get_or_none(model.id == row_id)
    if row is None:
        fail(f"no {what} with id {row_id}")
    return row


def find_job(reference):
    """A job by its id or, failing that, by its name."""
    job = Job.get_or_none(Job.id == reference) or Job.get_or_none(Job.name == reference)
    if job is None:
        fail(f"no job with the name or id {reference!r} (see `backhook jobs list`)")
    return job


def add_lifecycle_commands(group, find_row, what, metavar, with_delete=True):
    """`enable`, `disable` and (unless told not to) `delete` for keys and jobs alike; `find_row(reference)` finds
    the row."""
    for name, enabled in (("enable", True), ("disable", False)):
        @group.command(name, help=f"{name.capitalize()} a {what}.")
        @click.argument("reference", metavar=metavar)
        def toggle(reference, enabled=enabled, name=name):
            row = find_row(reference)
            with database.atomic():
                type(row).update(enabled=enabled).where(type(row).id == row.id).execute()
            state = {True: "enabled", False: "disabled"}
            click.echo(f"{what} {row.name} ({row.id}): {state[row.enabled]} → {state[enabled]}")

    if not with_delete:
        return

    @group.command("delete", help=f"Delete a {what}.")
    @click.argument("reference", metavar=metavar)
    def delete(reference):
        row = find_row(reference)
        with database.atomic():
            row.delete_instance(recursive=True)
        click.echo(f"{what} {row.name} ({row.id}) deleted")


# --- processes -----------------------------------------------------------------

def gunicorn_command(bind, processes):
    # By path, not by module name: installed, the modules are importable only from HERE.
    return [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(processes),
            "--graceful-timeout", "20", "--no-control-socket", "--pythonpath", str(HERE),
            "--config", f"file:{HERE / 'gunicorn_config.py'}", "app:create_app()"]


def worker_command():
    return [sys.executable, str(HERE / "worker.py")]


def warn_if_exposed(bind):
    """Warn when gunicorn would face clients itself: slow clients can hold all its sync processes."""
    if current_app.config["TRUSTED_PROXIES"] or is_loopback(bind):
        return
    click.echo(f"warning: serving on {bind}, which is not a loopback address, and BACKHOOK_TRUSTED_PROXIES "
               "is not set. Each gunicorn process serves one client at a time, so a few clients sending slowly "
               "can stall every request. Put a buffering reverse proxy such as nginx in front, and set "
               "BACKHOOK_TRUSTED_PROXIES: see docs/deploy.md, 'Behind a reverse proxy'.", err=True)


def is_loopback(bind):
    if bind.startswith(("unix:", "fd://")):
        return True  # a local socket: whatever reaches it is already on this machine
    if bind.startswith("["):
        host = bind[1:bind.find("]")]
    else:
        host = bind.split(":")[0] if bind.count(":") == 1 else bind
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well resolve to a public address
        return False


@main.command()
def init():
    """Create or upgrade the database; safe to repeat."""
    old, new = migrate()
    if old == new:
        click.echo(f"database is up to date (schema version {new})")
    else:
        click.echo(f"database upgraded from schema version {old} to {new}")


@main.command()
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help="HOST:PORT for the web server")
@click.option("--processes", default=DEFAULT_PROCESSES, show_default=True, help="gunicorn processes")
def serve(bind, processes):
    """Run the web server only, under gunicorn."""
    warn_if_exposed(bind)
    command = gunicorn_command(bind, processes)
    os.execv(command[0], command)


@main.command()
def worker():
    """Run the worker only."""
    command = worker_command()
    os.execv(command[0], command)


@main.command()
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help="HOST:PORT for the web server")
@click.option("--processes", default=DEFAULT_PROCESSES, show_default=True, help="gunicorn processes")
def run(bind, processes):
    """Run web and worker together; Ctrl-C or SIGTERM stops both."""
    warn_if_exposed(bind)
    migrate()
    children = [subprocess.Popen(gunicorn_command(bind, processes)), subprocess.Popen(worker_command())]
    click.echo(f"backhook web on http://{bind} and a worker are running; Ctrl-C stops both.")
    if not ApiKey.select().exists() or not Job.select().exists():
        click.echo(next_steps(bind))

    def stop(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        stop(None, None)
        codes = [child.wait() for child in children]
    # A child that died on its own (not through our SIGTERM) is a failure.
    sys.exit(0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1)


def next_steps(bind):
    exe = shutil.which("backhook") or str(Path(sys.executable).with_name("backhook"))
    return f"""
Next steps, in another terminal:
  1. Create an API key (it is shown only once):
       {exe} keys create ci -p jobs:read -p jobs:execute -p history:read
  2. Create a job, for example a directory backup:
       {exe} jobs add etc-backup --source files:///etc --destination {Path.cwd() / 'var' / 'backups'}
  3. Run it and watch it to the end:
       {exe} jobs run etc-backup --wait
     or trigger it and poll it over HTTP:
       curl -X POST http://{bind}/api/jobs/JOB_ID/run -H "Authorization: Bearer YOUR_KEY"
       curl http://{bind}/api/executions/EXECUTION_ID -H "Authorization: Bearer YOUR_KEY"
"""


@main.command("migrate-db")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="the empty database to copy into, e.g. postgresql://backhook@db.internal/backhook")
@click.option("--batch-rows", default=dbcopy.BATCH_ROWS, show_default=True, type=click.IntRange(min=1),
              help="rows copied per INSERT")
def migrate_db(target_url, batch_rows):
    """Copy this backhook's database (BACKHOOK_DATABASE_URL) into an empty one, e.g. SQLite to PostgreSQL."""
    if target_url == current_app.config["DATABASE_URL"]:
        fail("--to names the database backhook already uses")
    try:
        counts = dbcopy.copy_database(opened(), connect_database(target_url), batch_rows,
                                      report=click.echo)
    except (dbcopy.CopyError, config.ConfigError) as exc:
        fail(str(exc))
    click.echo(f"copied {sum(counts.values())} rows in {len(counts)} tables; the counts match.")
    click.echo("Now point every web and worker process at it with BACKHOOK_DATABASE_URL and restart them.")


# --- keys ----------------------------------------------------------------------

@main.group()
def keys():
    """Create and manage API keys."""


@keys.command("create")
@click.argument("name")
@click.option("-p", "--permission", "permissions", multiple=True, required=True,
              type=click.Choice(models.PERMISSIONS), help="repeat for several")
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None)
def keys_create(name, permissions, expires_in_days):
    """Create a key; the key is printed alone on the last line, this once."""
    key, secret = ApiKey.issue(name, permissions, expires_in_days)
    expiry = iso(key.expires_at) or "never"
    click.echo(f"created key {key.id} ({name}) with {key.permissions}; expires {expiry}")
    click.echo("Store it now: it cannot be shown again.")
    click.echo(secret)


@keys.command("list")
def keys_list():
    """One key per line: ID, name, display prefix, permissions, state."""
    now = models.now_ms()
    for key in ApiKey.select().order_by(ApiKey.created_at):
        state = "enabled" if key.enabled else "disabled"
        if key.expires_at is not None and key.expires_at <= now:
            state = "expired"
        click.echo(f"{key.id}  {key.name}  {key.prefix}…  {key.permissions.replace(' ', ',')}  {state}"
                   f"  expires={iso(key.expires_at) or 'never'}  last_used={iso(key.last_used_at) or 'never'}")


@keys.command("rotate")
@click.argument("key_id", metavar="ID")
def keys_rotate(key_id):
    """Replace a key's secret, keeping its name, permissions, expiry and state.

    The old secret stops working at once; the new key is printed alone on the
    last line, this once.
    """
    key, secret = ApiKey.rotate(key_id)
    if key is None:
        fail(f"no key with id {key_id} (see `backhook keys list`)")
    click.echo(f"rotated key {key.id} ({key.name}): the old secret no longer works; "
               f"{key.permissions}; expires {iso(key.expires_at) or 'never'}")
    click.echo("Store it now: it cannot be shown again.")
    click.echo(secret)


add_lifecycle_commands(keys, lambda key_id: find(ApiKey, key_id, "key"), "key", "ID")


# --- jobs ----------------------------------------------------------------------

@main.group()
def jobs():
    """Create, run, inspect and change backup jobs (by name or id)."""


RETENTION_RULES = (("daily", "days"), ("weekly", "ISO weeks (Monday to Sunday)"), ("monthly", "months"))


def retention_options(command):
    """--keep-daily, --keep-weekly and --keep-monthly, of `jobs add` and `jobs set`."""
    for rule, buckets in reversed(RETENTION_RULES):
        command = click.option(f"--keep-{rule}", type=click.IntRange(min=0), default=None, metavar="N",
                               help=f"keep the newest backup of each of the last N {buckets} that have one, "
                                    "in the job's timezone (0: no such rule)")(command)
    return command


@jobs.command("add")
@click.argument("name")
@click.option("--source", required=True, metavar="SRC",
              help="sqlite:///abs/path.db, postgresql://user@host:port/db, mysql://user@host:port/db, "
                   "files:///abs/dir, wpsec://example.com or command:SHELL COMMAND (see above)")
@click.option("--destination", "destination_list", required=True, multiple=True, metavar="DEST",
              help="where backups go: a local directory, s3://BUCKET/PREFIX[?endpoint=…&region=…&profile=…"
                   "&storage_class=…] or rclone:REMOTE:PATH; repeatable: each backup is stored on every one, "
                   "and the execution's path is the first's")
@click.option("--allow-partial-destinations", is_flag=True, default=False,
              help="a backup succeeds with the destinations that stored it when others fail (logged)")
@click.option("--compression", type=click.Choice(list(COMPRESSORS)), default="zstd", show_default=True)
@click.option("--keep", type=click.IntRange(min=1), default=None, help="keep the N newest successful backups")
@retention_options
@click.option("--schedule", default=None, metavar="CRON",
              help="run on this schedule: five cron fields (minute hour day month weekday, \"0 3 * * *\") or "
                   "@hourly, @daily, @weekly, @monthly, @yearly")
@click.option("--timezone", "zone_name", default="UTC", show_default=True, metavar="TZ",
              help="the IANA timezone (Europe/Berlin) the schedule and the retention's days are read in")
@click.option("--timeout-hours", type=click.FloatRange(min=0, min_open=True), default=6, show_default=True)
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="files:// only: leave out what matches this tar pattern (*.log, ./cache); repeatable")
@click.option("--one-file-system", is_flag=True, default=False,
              help="files:// only: do not descend into other file systems mounted below the directory")
@click.option("--restore-command", default=None, metavar="CMD",
              help="command: only: the shell command that restores a backup, which it reads on its stdin")
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="RECIPIENT",
              help="encrypt the backups with age to this public key (age1…, or an ssh-ed25519 / ssh-rsa "
                   "public key line); repeatable")
@click.option("--encrypt-to-file", "encrypt_to_files", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="encrypt to every public key in this recipients file (as age -R reads it: "
                                   "one per line, # comments); repeatable")
def jobs_add(name, source, destination_list, allow_partial_destinations, compression, keep, keep_daily,
             keep_weekly, keep_monthly, schedule, zone_name, timeout_hours, excludes, one_file_system,
             restore_command, encrypt_to, encrypt_to_files):
    """Add a job; its id is printed alone on the last line.

    \b
    A password in a URL is percent-encoded ('@' %40, '/' %2F, '?' %3F, '#' %23,
    ':' %3A, '%' %25), or given as ?password=. It is never shown again.
    postgresql:// options are libpq's (?sslmode=verify-full&application_name=…)
    and reach pg_dump as they are; mysql:// options become mariadb-dump flags
    (?ssl-mode=REQUIRED&ssl-ca=/abs/ca.pem&charset=utf8mb4). Unknown options
    are refused.

    \b
    files: keeps extended attributes and ACLs; a file changing while it is
    read is a warning in the logs, an unreadable file fails the backup.

    \b
    command: runs under bash -o pipefail: the backup fails when any stage of a
    pipeline fails, not only the last one (under /bin/sh when bash is missing,
    with a warning in the logs). Its stdout is the backup. --restore-command
    runs the same way, reading a backup on its stdin, for `backhook restore`.

    \b
    --encrypt-to / --encrypt-to-file: each artifact is age-encrypted
    (<name>.<ext>.zst.age) to every recipient; only public keys are accepted.
    Restoring needs a matching identity (`backhook restore --identity-file`).

    \b
    --schedule: the workers queue each due run once; a run due while the job
    still has one Pending or Running is skipped (and logged), and after
    downtime one missed run is caught up. --keep-daily/--keep-weekly/
    --keep-monthly keep the newest backup of each of the last D days, W ISO
    weeks and M months that have one, in --timezone, besides the --keep newest.
    """
    try:
        recipients = parse_recipients(encrypt_to, encrypt_to_files)  # the files are the command line's to read
    except SourceError as exc:
        fail(str(exc))
    values = {"name": name, "source": source, "destinations": [destinations.normalized(t) for t in destination_list],
              "allow_partial_destinations": allow_partial_destinations, "compression": compression, "keep": keep,
              "timeout_seconds": int(timeout_hours * 3600), "excludes": list(excludes),
              "one_file_system": one_file_system, "restore_command": restore_command, "recipients": recipients,
              "keep_daily": keep_daily, "keep_weekly": keep_weekly, "keep_monthly": keep_monthly,
              "schedule": schedule, "timezone": zone_name}
    try:
        job = job_definition.create(job_definition.define(values, on_command_line=True))
    except job_definition.Invalid as invalid:
        fail(invalid.for_command_line())
    texts = destinations.destination_texts(job)
    shown = ", ".join(destinations.describe(text, job) for text in texts)
    encrypted = f", age-encrypted to {len(recipients)} recipient{'s' if len(recipients) > 1 else ''}" if recipients else ""
    click.echo(f"created job {name} ({shown_source(source)} → {shown}, {compression}{encrypted})")
    if job.schedule:
        click.echo(f"scheduled {job.schedule} ({job.timezone}); next run {shown_time(job.next_run_at, job.timezone)}")
        wake_workers(current_app.config["DATA_DIR"])  # a sleeping worker looks again when the first run is due
    click.echo(job.id)


def shown_time(ms, zone_name):
    """An instant as ISO 8601 UTC and, in another timezone, as its wall clock there too."""
    if ms is None:
        return "-"
    if zone_name == "UTC":
        return iso(ms)
    local = datetime.datetime.fromtimestamp(ms / 1000, schedules.zone(zone_name))
    return f"{iso(ms)} ({local:%Y-%m-%d %H:%M %Z})"


@jobs.command("list")
def jobs_list():
    """One job per line: ID, name, source (without secrets), destination, state, age recipients."""
    for job in Job.listing():
        state = "enabled" if job.enabled else "disabled"
        keys = job.recipient_keys()
        encrypted = f"  encrypt_to={'; '.join(keys)}" if keys else ""  # public keys: nothing secret
        scheduled = f"  schedule={job.schedule!r} ({job.timezone}) next={iso(job.next_run_at)}" if job.schedule else ""
        click.echo(f"{job.id}  {job.name}  {shown_source(job.source)}  {job.destination}"
                   f"  {job.compression}  {state}  last={job.last_status or 'never'}{scheduled}{encrypted}")


EXIT_STATUS = {ExecutionStatus.SUCCESS: 0, ExecutionStatus.FAILED: 1, ExecutionStatus.CANCELLED: 2}
WAIT_POLL_SECONDS = 0.5
NO_WORKER_HINT_SECONDS = 10


@jobs.command("run")
@click.argument("reference", metavar="NAME|ID")
@click.option("--wait", is_flag=True,
              help="show stage and progress until the run ends; exit 0 on Success, 1 on Failed, 2 on Cancelled")
def jobs_run(reference, wait):
    """Queue a run now, as POST /api/jobs/ID/run does (no web process needed).

    Without --wait the execution id is printed alone on the last line. With
    --wait a line shows each change of status, stage and progress; on Success
    the last line is the artifact's SHA-256 and path, in sha256sum's format.
    """
    job = find_job(reference)
    if not job.enabled:
        fail(f"job {job.name} is disabled: `backhook jobs enable {job.name}` first")
    execution = trigger(job, current_app.config["DATA_DIR"])
    click.echo(f"queued execution {execution.id} of job {job.name}")
    if not wait:
        click.echo(execution.id)
        return
    execution = wait_until_finished(execution.id)
    if execution.status == ExecutionStatus.SUCCESS:
        click.echo(f"Success in {execution.duration() / 1000:.1f} s, {execution.size or 0:,} bytes stored")
        # The last line in sha256sum's format: `| tail -n 1 | sha256sum -c` checks the artifact.
        click.echo(f"{execution.sha256}  {execution.path}" if execution.path else "no artifact stored")
    else:
        click.echo(f"{execution.status}" + (f": {execution.error}" if execution.error else ""), err=True)
    sys.exit(EXIT_STATUS[execution.status])


def wait_until_finished(execution_id):
    """Print a line for each change of status, stage or progress; return the finished execution.

    Ctrl-C stops the waiting, not the execution: it says so and exits 130.
    """
    try:
        return show_progress_until_finished(execution_id)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; execution {execution_id} goes on", err=True)
        sys.exit(130)


class ProgressLines:
    """A line for each change of an execution's status, stage or progress."""

    def __init__(self, execution_id):
        self.execution_id, self.shown = execution_id, None

    def show(self):
        execution = Execution.get_by_id(self.execution_id)
        state = (execution.status, execution.stage, execution.progress)
        if state != self.shown:
            click.echo(f"{execution.status:<9} {execution.progress:>3}%  {execution.stage or ''}")
            self.shown = state
        return execution


def show_progress_until_finished(execution_id):
    shown, queued_at, hinted = None, time.monotonic(), False
    while True:
        execution = Execution.get_by_id(execution_id)
        state = (execution.status, execution.stage, execution.progress)
        if state != shown:
            click.echo(f"{execution.status:<9} {execution.progress:>3}%  {execution.stage or ''}")
            shown = state
        if execution.status in FINISHED:
            return execution
        if execution.status == ExecutionStatus.PENDING and not hinted and time.monotonic() - queued_at > NO_WORKER_HINT_SECONDS:
            click.echo("no worker has claimed it yet: is `backhook worker` (or `backhook run`) running?", err=True)
            hinted = True
        time.sleep(WAIT_POLL_SECONDS)


@jobs.command("show")
@click.argument("reference", metavar="NAME|ID")
def jobs_show(reference):
    """Show every field of a job (its source without secrets) and its last run."""
    job = find_job(reference)
    for field in Job._meta.sorted_fields:
        value = getattr(job, field.name)
        if field.name == "source":
            value = describe_source(value)["source"]
        elif field.name == "restore_command":
            value = "set (not shown)" if value else "none"  # like a command: source, shown to nobody
        click.echo(f"{field.name:<16} {shown_value(field.name, value)}")
    last = (Execution.select().where((Execution.job == job.id) & (Execution.type == ExecutionType.BACKUP))
            .order_by(Execution.created_at.desc()).first())
    click.echo(f"{'last_execution':<16} " + (f"{last.id} {last.status} ended {iso(last.ended_at) or '-'}"
                                              if last else "never run"))


def shown_value(name, value):
    if name == "keep" and value is None:
        return "all"
    if name.startswith("keep_") and value is None:
        return "none"
    if name == "schedule" and value is None:
        return "none (runs only when triggered)"
    if name == "timeout_seconds":
        return f"{value} ({value / 3600:g} h)"
    if name == "recipients":
        return "; ".join(json.loads(value)) if value else "none (not encrypted)"
    if name.endswith("_at"):
        return iso(value) or "-"
    return value


@jobs.command("set")
@click.argument("reference", metavar="NAME|ID")
@click.option("--keep", type=click.IntRange(min=1), default=None, help="keep the N newest successful backups")
@click.option("--keep-all", is_flag=True, help="keep every backup (no retention: clears --keep and --keep-daily/"
                                              "weekly/monthly)")
@retention_options
@click.option("--timeout-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop a run that takes longer")
@click.option("--compression", type=click.Choice(list(COMPRESSORS)), default=None, help="for the next backups")
@click.option("--destination", default=None, metavar="DEST",
              help="replace the first destination for the next backups (earlier ones stay where they are)")
@click.option("--add-destination", "added", multiple=True, metavar="DEST",
              help="store the next backups on this destination too; repeatable")
@click.option("--remove-destination", "removed", multiple=True, metavar="DEST",
              help="stop storing backups there (the backups already there are not deleted); repeatable")
@click.option("--allow-partial-destinations/--no-allow-partial-destinations", "allow_partial", default=None,
              help="whether a backup succeeds with the destinations that stored it when others fail")
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="RECIPIENT",
              help="encrypt the next backups with age to these public keys instead (repeatable; as for jobs add)")
@click.option("--encrypt-to-file", "encrypt_to_files", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="encrypt the next backups to every public key in this recipients file instead")
@click.option("--no-encryption", is_flag=True, default=False, help="stop encrypting the next backups")
def jobs_set(reference, keep, keep_all, keep_daily, keep_weekly, keep_monthly, timeout_hours, compression,
             destination, added, removed, allow_partial, encrypt_to, encrypt_to_files, no_encryption):
    """Change a job's retention, timeout, compression, destinations or age recipients; prints old → new.

    \b
    --encrypt-to / --encrypt-to-file replace the job's recipients, checked as
    jobs add checks them; --no-encryption removes them. The backups already
    stored keep the encryption they were made with. The schedule and timezone
    change with `backhook jobs schedule`.
    """
    job = find_job(reference)
    rules = {"keep_daily": keep_daily, "keep_weekly": keep_weekly, "keep_monthly": keep_monthly}
    if no_encryption and (encrypt_to or encrypt_to_files):
        fail("--no-encryption and --encrypt-to / --encrypt-to-file contradict each other")
    if keep_all and (keep is not None or any(value is not None for value in rules.values())):
        fail("--keep-all contradicts --keep and --keep-daily/--keep-weekly/--keep-monthly")
    wanted = {}
    if destination is not None or added or removed:
        wanted["destinations"] = changed_destinations(job, destination, added, removed)
    if keep is not None or keep_all:
        wanted["keep"] = keep  # None keeps every backup
    for name, value in rules.items():
        if value is not None or keep_all:
            wanted[name] = value or None  # 0 (or --keep-all): no such rule
    if timeout_hours is not None:
        wanted["timeout_seconds"] = int(timeout_hours * 3600)
    if compression is not None:
        wanted["compression"] = compression
    if allow_partial is not None:
        wanted["allow_partial_destinations"] = allow_partial
    if encrypt_to or encrypt_to_files:
        try:
            wanted["recipients"] = parse_recipients(encrypt_to, encrypt_to_files)
        except SourceError as exc:
            fail(str(exc))
    elif no_encryption:
        wanted["recipients"] = []
    if not wanted:
        fail("nothing to change: give --keep N, --keep-all, --keep-daily/--keep-weekly/--keep-monthly N, "
             "--timeout-hours H, --compression, --destination, --add-destination, --remove-destination, "
             "--allow-partial-destinations, --encrypt-to, --encrypt-to-file or --no-encryption")
    before = job_definition.current(job)
    try:
        changes = job_definition.revise(job, wanted, on_command_line=True)
    except job_definition.Invalid as invalid:
        fail(invalid.for_command_line())
    job_definition.change(job, changes)
    if "destinations" in wanted:
        show_destination_change(job, before["destinations"], wanted["destinations"], removed)
    for name, new in changes.items():
        if name != "destinations":
            click.echo(f"job {job.name}: {name} {shown_value(name, before.get(name))} → {shown_value(name, new)}")
    if "recipients" in changes:
        click.echo("the backups already stored keep the encryption they were made with (restoring an encrypted one "
                   "still needs an identity of its own recipients)")
    if not changes:
        click.echo(f"job {job.name}: nothing changed")


def changed_destinations(job, first, added, removed):
    """`jobs set`'s destination options applied to the job's list: replace the first, add, remove."""
    texts = destinations.destination_texts(job)
    if first is not None:
        texts[0] = destinations.normalized(first)
    for text in added:
        text = destinations.normalized(text)
        if text in texts:
            fail(f"job {job.name} already stores backups on {text}")
        texts.append(text)
    for text in removed:
        text = destinations.normalized(text)
        if text not in texts:
            fail(f"job {job.name} has no destination {text} (it has {', '.join(texts)})")
        texts.remove(text)
    if not texts:
        fail(f"job {job.name} needs at least one destination: add another before removing {removed[-1]}")
    return texts


def show_destination_change(job, old, new, removed):
    if new == old:
        click.echo(f"job {job.name}: destinations unchanged")
        return
    click.echo(f"job {job.name}: destination {', '.join(destinations.describe(t, job) for t in old)} → "
               f"{', '.join(destinations.describe(t, job) for t in new)}")
    for text in map(destinations.normalized, removed):
        click.echo(f"the backups already stored on {destinations.describe(text, job)} stay there: removing a "
                   "destination deletes nothing (retention still prunes those copies once the job's --keep "
                   "expires them, and restores can still read them)")


@jobs.command("schedule")
@click.argument("reference", metavar="NAME|ID")
@click.argument("expression", metavar="CRON", required=False)
@click.option("--timezone", "zone_name", default=None, metavar="TZ",
              help="the IANA timezone (Europe/Berlin) the schedule and retention are read in; default: unchanged")
@click.option("--no-schedule", is_flag=True, help="remove the schedule: the job runs only when triggered")
def jobs_schedule(reference, expression, zone_name, no_schedule):
    """Set, change or remove a job's schedule; prints the next due run.

    \b
    CRON is five fields (minute hour day-of-month month day-of-week, as in
    "0 3 * * *") or @hourly, @daily (= @midnight), @weekly, @monthly,
    @yearly (= @annually). Without CRON, --timezone alone changes the
    timezone and keeps the schedule.
    """
    job = find_job(reference)
    if no_schedule and expression is not None:
        fail("CRON and --no-schedule contradict each other")
    if expression is None and not no_schedule and zone_name is None:
        fail("give CRON, --no-schedule or --timezone TZ")
    old = (job.schedule, job.timezone)
    keep_current = expression is None and not no_schedule
    try:
        next_at = schedules.set_schedule(job, job.schedule if keep_current else expression, zone_name)
    except schedules.ScheduleError as exc:
        fail(str(exc))
    click.echo(f"job {job.name}: schedule {old[0] or 'none'} ({old[1]}) → {job.schedule or 'none'} ({job.timezone})")
    if next_at is not None:
        click.echo(f"next run {shown_time(next_at, job.timezone)}")
        wake_workers(current_app.config["DATA_DIR"])  # a sleeping worker looks again when it is due


@jobs.command("prune")
@click.argument("reference", metavar="NAME|ID")
@click.option("--dry-run", is_flag=True, help="print what would be deleted and why the rest stays; delete nothing")
def jobs_prune(reference, dry_run):
    """Apply the job's retention now, as after each backup: each backup kept (and why) or deleted.

    The newest successful backup always stays. Every copy of a pruned backup
    goes, each forgotten in the database before its file is deleted.
    """
    job = find_job(reference)
    policy = retention.Policy.of(job)
    planned = retention.plan(job)
    for holder, reasons in planned:
        when = shown_time(retention.artifact_time(holder), job.timezone)
        verdict = f"keep    ({', '.join(reasons)})" if reasons else ("would delete" if dry_run else "delete")
        click.echo(f"{holder.id}  {when}  {holder.path}  {verdict}")
    going = sum(1 for _holder, reasons in planned if not reasons)
    if dry_run:
        click.echo(f"dry run: {going} of {len(planned)} backups would be deleted ({policy.describe()}); "
                   "nothing was deleted")
        return
    problems = retention.prune(job, None, lambda: None,
                               lambda message, level="info": click.echo(message, err=level != "info"))
    if problems:
        fail(problems)


add_lifecycle_commands(jobs, find_job, "job", "NAME|ID", with_delete=False)


@jobs.command("delete")
@click.argument("reference", metavar="NAME|ID")
@click.option("--keep-artifacts", is_flag=True,
              help="delete a job that has stored backups too, leaving every artifact and its manifest where it is")
def jobs_delete(reference, keep_artifacts):
    """Delete a job and its history; never a stored backup (as DELETE /api/jobs/ID does).

    A job with a Pending or Running execution is refused. So is one with
    stored backups, unless --keep-artifacts: its artifacts then stay where they
    are, each with its manifest and the stock commands that restore it, but
    backhook no longer lists, prunes or restores them. To stop a job and keep
    everything, `backhook jobs disable` it.
    """
    job = find_job(reference)
    try:
        deleted = job_definition.delete(job.id, keep_artifacts=keep_artifacts)
    except job_definition.Invalid as refused:
        fail(refused.for_command_line())
    if deleted is None:
        fail(f"no job with the name or id {reference!r} (see `backhook jobs list`)")
    kept = "; its stored backups stay where they are" if keep_artifacts else ""
    click.echo(f"job {job.name} ({job.id}) deleted{kept}")


# --- restores -----------------------------------------------------------------

@main.command("restore")
@click.argument("execution_id", metavar="EXECUTION_ID")
@click.option("--to", "target", default=None, metavar="SRC",
              help="restore into this source of the job's kind instead of the job's own")
@click.option("--scratch", is_flag=True, help="a restore drill: into a throwaway target, checked, then removed")
@click.option("--replace", is_flag=True,
              help="overwrite a target that is not empty (an old SQLite file is then not kept)")
@click.option("--identity-file", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="an age identity file (or SSH private key) that decrypts an encrypted backup; the restore "
                   "then runs in this process, which alone reads the file, and nothing stores it")
def restore_command(execution_id, target, scratch, replace, identity_file):
    """Restore a successful backup, as POST /api/executions/ID/restore does, and show its progress.

    Exits 0 on Success and 1 otherwise. The default target is the job's own
    source; a SQLite database it replaces is kept as
    <name>.before-restore-<UTC stamp> unless --replace.

    \b
    An age-encrypted backup needs an identity: --identity-file FILE runs the
    restore in this process (not the worker's), so the identity never
    leaves it; without it, the worker uses BACKHOOK_AGE_IDENTITY_FILE from
    its own environment.
    """
    if target is not None and scratch:
        fail("--to SRC and --scratch contradict each other")
    settings = current_app.config
    holder = f"cli-{socket.gethostname()}-{os.getpid()}" if identity_file else None
    lease_ms = int(settings["LEASE_SECONDS"] * 1000)
    try:
        execution = queue_restore(execution_id, SCRATCH if scratch else target, replace,
                                  data_dir=settings["DATA_DIR"], claimed_by=holder, lease_ms=lease_ms)
    except RestoreRefused as refused:
        fail(refused.message if refused.status != 404 else f"no execution with id {execution_id}")
    if identity_file:
        click.echo(f"restoring {execution.id} of backup {execution_id} in this process")
        progress = ProgressLines(execution.id)
        try:
            execution = run_in_this_process(execution, holder, lease_ms, os.path.abspath(identity_file),
                                            progress.show)
        except KeyboardInterrupt:
            click.echo(f"\nrestore {execution.id} cancelled", err=True)
            sys.exit(130)
        progress.show()
    else:
        click.echo(f"queued restore {execution.id} of backup {execution_id}")
        execution = wait_until_finished(execution.id)
    if execution.status == ExecutionStatus.SUCCESS:
        click.echo(f"Success in {execution.duration() / 1000:.1f} s: backup {execution_id} restored")
        sys.exit(0)
    click.echo(f"{execution.status}" + (f": {execution.error}" if execution.error else ""), err=True)
    sys.exit(1)


# --- websites ------------------------------------------------------------------

@main.group()
def websites():
    """Register WordPress sites that report through WPSec webhooks."""


@websites.command("add")
@click.argument("domain")
@click.option("--wpsec-url", default=None, help="the site's base URL, for backup/list and backup/start")
@click.option("--wpsec-api-key", default=None, help="the plugin's x-api-key")
def websites_add(domain, wpsec_url, wpsec_api_key):
    """Register a website; its id is printed alone on the last line."""
    domain = normalize_domain(domain)
    if not domain:
        fail("the domain is empty")
    site = create_unique(Website, f"website {domain} is already registered", domain=domain,
                         wpsec_url=wpsec_url or f"https://{domain}", wpsec_api_key=wpsec_api_key)
    click.echo(f"registered website {domain}")
    click.echo(site.id)


@websites.command("list")
def websites_list():
    """One website per line: ID, domain, WPSec URL, the API key's first characters, last sync."""
    for site in Website.select().order_by(Website.domain):
        key = f"{site.wpsec_api_key[:4]}…" if site.wpsec_api_key else "none"
        click.echo(f"{site.id}  {site.domain}  {site.wpsec_url}  api_key={key}"
                   f"  synced={iso(site.synced_at) or 'never'}")


@websites.command("remove")
@click.argument("domain")
def websites_remove(domain):
    """Remove a website with its backup records (matched like webhooks: case, spaces, a trailing dot)."""
    site = Website.by_domain(domain)
    if site is None:
        fail(f"no website {normalize_domain(domain)}")
    site.remove()
    click.echo(f"removed website {site.domain}")


# --- notifications -------------------------------------------------------------

@main.group()
def notify():
    """Tell webhooks, ping URLs and apprise services about runs (see README.md, "Notifications")."""


@notify.command("add")
@click.argument("url")
@click.option("--job", "reference", default=None, metavar="NAME|ID", help="only this job's runs (default: every job)")
@click.option("--on", "on", type=click.Choice([on.value for on in NotifyOn]), default=None,
              help="which events: failure (with cancel and retention errors; the default), success, always, "
                   "or overdue (no success within --overdue-hours, or an artifact under half the usual size)")
@click.option("--ping", is_flag=True, help="a Healthchecks-style URL: URL/start, URL on success, URL/fail")
@click.option("--overdue-hours", type=click.FloatRange(min=0, min_open=True), default=None, metavar="H",
              help="the dead man's switch: notify when the job has had no successful backup for H hours")
def notify_add(url, reference, on, ping, overdue_hours):
    """Add a notification; prints its id, and a webhook's signing secret alone on the last line, this once.

    An http:// or https:// URL is a webhook (a signed JSON POST) unless
    --ping; any other URL goes through apprise (mailto://, slack://,
    discord://, tgram://, ntfys://, gotify://, json://…).
    """
    job = find_job(reference) if reference else None
    try:
        notification = notifications.add(url, job, on, ping, overdue_hours)
    except notifications.NotificationRefused as exc:
        fail(str(exc))
    click.echo(f"added notification {notification.id}: {describe_notification(notification)}")
    click.echo(notification.id)
    if notification.secret:
        click.echo("Its signing secret (webhook-signature, Standard Webhooks) follows; it cannot be shown again.")
        click.echo(notification.secret)


def describe_notification(notification):
    job = Job.get_by_id(notification.job_id).name if notification.job_id else "every job"
    overdue = f", overdue after {notification.overdue_seconds / 3600:g} h" if notification.overdue_seconds else ""
    return (f"{notification.kind} {notifications.shown_url(notification)}, on {notification.on_event}, "
            f"{job}{overdue}")


@notify.command("list")
def notify_list():
    """One notification per line: ID, kind, URL (no secret), events, job, and its waiting and failed messages."""
    for notification in Notification.select().order_by(Notification.created_at):
        counts = {status: NotificationOutbox.select().where(
            (NotificationOutbox.notification == notification.id) & (NotificationOutbox.status == status)).count()
            for status in (OutboxStatus.PENDING, OutboxStatus.FAILED)}
        click.echo(f"{notification.id}  {describe_notification(notification)}"
                   f"  pending={counts[OutboxStatus.PENDING]}  failed={counts[OutboxStatus.FAILED]}")


@notify.command("remove")
@click.argument("notification_id", metavar="ID")
def notify_remove(notification_id):
    """Remove a notification and the messages it has not sent yet."""
    notification = find(Notification, notification_id, "notification")
    shown = describe_notification(notification)
    with database.atomic():
        notification.delete_instance(recursive=True)
    click.echo(f"removed notification {notification.id}: {shown}")


@notify.command("test")
@click.argument("notification_id", metavar="ID")
def notify_test(notification_id):
    """Send one test message now, from this process; exits 1 if it did not arrive."""
    notification = find(Notification, notification_id, "notification")
    message = notifications.test_message(notification)
    problem = outbox.send_now(message.id, f"cli-{socket.gethostname()}-{os.getpid()}",
                              current_app.config["NOTIFY_TIMEOUT_SECONDS"])
    if problem:
        fail(f"test message {message.id} to {notifications.shown_destination(notification)} failed: {problem}")
    kind = "signed webhook" if notification.kind == NotificationKind.WEBHOOK else notification.kind
    click.echo(f"sent test message {message.id} ({kind}) to {notifications.shown_destination(notification)}")


# --- settings ------------------------------------------------------------------

@main.group()
def settings():
    """Read and change global settings."""


@settings.command("set")
@click.argument("key", metavar="KEY", type=click.Choice(sorted(Setting.DEFAULTS)))
@click.argument("value", type=click.IntRange(min=1))
def settings_set(key, value):
    """Set a global setting, e.g. `max_concurrent_jobs 4` (across all workers)."""
    old = Setting.read(key)
    Setting.write(key, value)
    click.echo(f"{key}: {old} → {value}")


@settings.command("get")
@click.argument("key", metavar="KEY", type=click.Choice(sorted(Setting.DEFAULTS)))
def settings_get(key):
    """Print a global setting's value."""
    click.echo(Setting.read(key))


if __name__ == "__main__":
    entry_point()
