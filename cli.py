"""The `backhook` command line, built on Flask's CLI."""
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup
from peewee import IntegrityError

import dbcopy
import models
from app import create_app
from models import ApiKey, Job, Setting, Website, iso, normalize_domain
from sources import describe_source, source_kind

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_PROCESSES = max(2, os.cpu_count() or 1)


@click.group(cls=FlaskGroup, create_app=create_app, add_default_commands=False,
             add_version_option=False, load_dotenv=False)
def main():
    """backhook: self-hosted backup orchestrator."""


def fail(message):
    raise click.ClickException(message)


def create_unique(model, duplicate_message, **fields):
    try:
        with models.database.atomic():
            return model.create(**fields)
    except IntegrityError:
        fail(duplicate_message)


def find(model, row_id, what):
    row = model.get_or_none(model.id == row_id)
    if row is None:
        fail(f"no {what} with id {row_id}")
    return row


def add_lifecycle_commands(group, model, what, delete_note=""):
    """`enable ID`, `disable ID` and `delete ID` for keys and jobs alike."""
    for name, enabled in (("enable", True), ("disable", False)):
        @group.command(name, help=f"{name.capitalize()} a {what}.")
        @click.argument("row_id", metavar="ID")
        def toggle(row_id, enabled=enabled, name=name):
            row = find(model, row_id, what)
            with models.database.atomic():
                model.update(enabled=enabled).where(model.id == row.id).execute()
            click.echo(f"{what} {row.id} {name}d")

    @group.command("delete", help=f"Delete a {what}{delete_note}.")
    @click.argument("row_id", metavar="ID")
    def delete(row_id):
        row = find(model, row_id, what)
        with models.database.atomic():
            row.delete_instance(recursive=True)
        click.echo(f"{what} {row.id} deleted")


# --- processes -----------------------------------------------------------------

def gunicorn_command(bind, processes):
    return [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(processes),
            "--graceful-timeout", "20", "--no-control-socket", "--config", "python:gunicorn_config",
            "app:create_app()"]


def worker_command():
    return [sys.executable, "-m", "worker"]


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
    old, new = models.migrate()
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
    models.migrate()
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
  3. Trigger it and poll it:
       curl -X POST http://{bind}/api/jobs/JOB_ID/run -H "Authorization: Bearer YOUR_KEY"
       curl http://{bind}/api/executions/EXECUTION_ID -H "Authorization: Bearer YOUR_KEY"
"""


@main.command("migrate-db")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="the empty database to copy into, e.g. postgresql://backhook@db.internal/backhook")
@click.option("--batch-rows", default=dbcopy.BATCH_ROWS, show_default=True, type=click.IntRange(min=1))
def migrate_db(target_url, batch_rows):
    """Copy this backhook's database (BACKHOOK_DATABASE_URL) into an empty one, e.g. SQLite to PostgreSQL."""
    if target_url == current_app.config["DATABASE_URL"]:
        fail("--to names the database backhook already uses")
    try:
        counts = dbcopy.copy_database(models.database.obj, models.connect_database(target_url), batch_rows,
                                      report=click.echo)
    except dbcopy.CopyError as exc:
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


add_lifecycle_commands(keys, ApiKey, "key")


# --- jobs ----------------------------------------------------------------------

@main.group()
def jobs():
    """Create and list backup jobs."""


@jobs.command("add")
@click.argument("name")
@click.option("--source", required=True, help="sqlite:///, postgresql://, mysql://, files:///, wpsec:// or command:")
@click.option("--destination", required=True, type=click.Path(file_okay=False), help="local directory")
@click.option("--compression", type=click.Choice(["zstd", "gzip", "none"]), default="zstd", show_default=True)
@click.option("--keep", type=click.IntRange(min=1), default=None, help="keep the N newest successful backups")
@click.option("--timeout-hours", type=click.FloatRange(min=0, min_open=True), default=6, show_default=True)
def jobs_add(name, source, destination, compression, keep, timeout_hours):
    """Add a job; its id is printed alone on the last line."""
    try:
        kind = source_kind(source)
    except ValueError as exc:
        fail(str(exc))
    if kind == "wpsec" and Website.by_domain(source.split("://", 1)[1]) is None:
        fail(f"no website {source.split('://', 1)[1]!r}: register it with `backhook websites add` first")
    job = create_unique(Job, f"a job named {name!r} already exists", name=name, source=source,
                        destination=str(Path(destination).resolve()), compression=compression, keep=keep,
                        timeout_seconds=int(timeout_hours * 3600))
    click.echo(f"created job {name} ({kind} → {job.destination}, {compression})")
    click.echo(job.id)


@jobs.command("list")
def jobs_list():
    """One job per line: ID, name, source (without secrets), destination, state."""
    for job in Job.listing():
        state = "enabled" if job.enabled else "disabled"
        click.echo(f"{job.id}  {job.name}  {describe_source(job.source)['source']}  {job.destination}"
                   f"  {job.compression}  {state}  last={job.last_status or 'never'}")


add_lifecycle_commands(jobs, Job, "job", " and its history (stored artifacts stay on disk)")


# --- websites ------------------------------------------------------------------

@main.group()
def websites():
    """Register WordPress sites that report through WPSec webhooks."""


@websites.command("add")
@click.argument("domain")
@click.option("--wpsec-url", default=None, help="the site's base URL, for backup/list and backup/start")
@click.option("--wpsec-api-key", default=None, help="the plugin's x-api-key")
def websites_add(domain, wpsec_url, wpsec_api_key):
    domain = normalize_domain(domain)
    if not domain:
        fail("the domain is empty")
    site = create_unique(Website, f"website {domain} is already registered", domain=domain,
                         wpsec_url=wpsec_url or f"https://{domain}", wpsec_api_key=wpsec_api_key)
    click.echo(f"registered website {domain}")
    click.echo(site.id)


@websites.command("list")
def websites_list():
    for site in Website.select().order_by(Website.domain):
        key = f"{site.wpsec_api_key[:4]}…" if site.wpsec_api_key else "none"
        click.echo(f"{site.id}  {site.domain}  {site.wpsec_url}  api_key={key}"
                   f"  synced={iso(site.synced_at) or 'never'}")


@websites.command("remove")
@click.argument("domain")
def websites_remove(domain):
    site = Website.by_domain(domain)
    if site is None:
        fail(f"no website {normalize_domain(domain)}")
    with models.database.atomic():
        site.delete_instance(recursive=True)
    click.echo(f"removed website {site.domain}")


# --- settings ------------------------------------------------------------------

@main.group()
def settings():
    """Read and change global settings."""


@settings.command("set")
@click.argument("key")
@click.argument("value", type=click.IntRange(min=1))
def settings_set(key, value):
    try:
        Setting.write(key, value)
    except ValueError as exc:
        fail(str(exc))
    click.echo(f"{key} = {value}")


@settings.command("get")
@click.argument("key")
def settings_get(key):
    click.echo(Setting.read(key))


if __name__ == "__main__":
    main()
