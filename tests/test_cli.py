"""The command-line forms other tools depend on."""
import hashlib
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

import cli
import database
import migrations
import models
import sinks
import test_sources
from models import ApiKey, Execution, Job, Setting, Website
from support import PROJECT, hold_write_lock, wait_until


def backhook(*args, env=None, cwd=None):
    """`backhook ARGS` in a process of its own, run from `cwd` (by default not the project)."""
    return subprocess.run([sys.executable, str(PROJECT / "cli.py"), *map(str, args)], env=env, cwd=cwd or "/",
                          capture_output=True, text=True)


def test_init_is_safe_to_repeat(runner):
    first = runner("init")
    second = runner("init")
    assert first.exit_code == 0 and second.exit_code == 0
    assert "up to date" in second.output


def test_init_creates_the_database_from_nothing(backhook_env, database_url):
    result = subprocess.run([sys.executable, "-m", "cli", "init"], env=backhook_env, cwd=PROJECT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    db = database.open_database(database_url)
    try:
        assert {model._meta.table_name for model in models.ALL_MODELS} <= set(db.get_tables())
        assert migrations.schema_version() == migrations.schema_sections()[-1][0]
    finally:
        db.close()


def test_keys_create_prints_the_key_alone_on_the_last_line(runner):
    result = runner("keys", "create", "ci", "-p", "jobs:execute", "-p", "history:read")
    assert result.exit_code == 0
    key = result.output.strip().splitlines()[-1]
    assert models.KEY_PATTERN.fullmatch(key)
    row = ApiKey.get(ApiKey.key_hash == models.hash_key(key))
    assert row.permissions.split() == ["history:read", "jobs:execute"]


def test_keys_create_with_expiry(runner):
    result = runner("keys", "create", "temp", "-p", "jobs:read", "--expires-in-days", "2")
    assert result.exit_code == 0
    row = ApiKey.get()
    assert 1.9 * 86_400_000 < row.expires_at - models.now_ms() < 2.1 * 86_400_000


def test_keys_create_refuses_unknown_permission(runner):
    result = runner("keys", "create", "ci", "-p", "jobs:destroy")
    assert result.exit_code != 0
    assert ApiKey.select().count() == 0


def test_keys_list_shows_id_first_and_never_the_secret(runner):
    key = runner("keys", "create", "ci", "-p", "jobs:read").output.strip().splitlines()[-1]
    listing = runner("keys", "list").output
    row = ApiKey.get()
    assert listing.splitlines()[0].startswith(row.id)
    assert key not in listing and row.prefix in listing


def test_keys_disable_enable_delete(runner):
    runner("keys", "create", "ci", "-p", "jobs:read")
    key_id = ApiKey.get().id
    assert runner("keys", "disable", key_id).exit_code == 0
    assert ApiKey.get().enabled is False
    assert runner("keys", "enable", key_id).exit_code == 0
    assert ApiKey.get().enabled is True
    assert runner("keys", "delete", key_id).exit_code == 0
    assert ApiKey.select().count() == 0
    assert runner("keys", "delete", key_id).exit_code != 0


def test_keys_rotate_prints_a_new_key_alone_on_the_last_line_and_keeps_everything_else(runner):
    old = runner("keys", "create", "ci", "-p", "jobs:read", "-p", "history:read",
                 "--expires-in-days", "3").output.strip().splitlines()[-1]
    before = ApiKey.get()
    runner("keys", "disable", before.id)
    result = runner("keys", "rotate", before.id)
    assert result.exit_code == 0, result.output
    new = result.output.strip().splitlines()[-1]
    assert models.KEY_PATTERN.fullmatch(new) and new != old and old not in result.output
    after = ApiKey.get()
    assert (after.id, after.name, after.permissions, after.expires_at, after.enabled, after.created_at) == (
        before.id, before.name, before.permissions, before.expires_at, False, before.created_at)
    assert after.key_hash == models.hash_key(new) and after.prefix == new[:12] != before.prefix
    assert ApiKey.authenticate(new) == (None, "API key is disabled")  # rotating enables nothing


def test_keys_rotate_an_unknown_id_fails_saying_so(runner):
    runner("keys", "create", "ci", "-p", "jobs:read")
    result = runner("keys", "rotate", "no-such-key")
    assert result.exit_code != 0 and "no key with id no-such-key" in result.output
    assert ApiKey.select().count() == 1


def test_keys_rotate_stops_the_old_secret_at_once_over_http(start_server, backhook_env):
    server = start_server(processes=2)
    old = backhook("keys", "create", "ci", "-p", "jobs:read", env=backhook_env).stdout.strip().splitlines()[-1]
    key_id = backhook("keys", "list", env=backhook_env).stdout.split()[0]

    def jobs_with(key):
        return requests.get(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)

    for _ in range(4):  # every gunicorn process has served the old key
        assert jobs_with(old).status_code == 200
    rotated = backhook("keys", "rotate", key_id, env=backhook_env)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    for _ in range(4):
        refused = jobs_with(old)
        assert refused.status_code == 401 and refused.json() == {"error": "Invalid API key"}
        assert jobs_with(new).status_code == 200


def test_jobs_add_prints_the_id_alone_on_the_last_line(runner, tmp_path):
    result = runner("jobs", "add", "etc", "--source", "files:///etc", "--destination", tmp_path,
                    "--compression", "gzip", "--keep", "3")
    assert result.exit_code == 0, result.output
    job = Job.get_by_id(result.output.strip().splitlines()[-1])
    assert (job.name, job.source, job.compression, job.keep) == ("etc", "files:///etc", "gzip", 3)
    assert job.destination == str(tmp_path)


def test_jobs_add_defaults_to_zstd(runner, tmp_path):
    result = runner("jobs", "add", "db", "--source", "sqlite:///srv/app.db", "--destination", tmp_path)
    assert Job.get_by_id(result.output.strip().splitlines()[-1]).compression == "zstd"


def test_jobs_add_accepts_a_command_source(runner, tmp_path):
    result = runner("jobs", "add", "cmd", "--source", "command:echo hello", "--destination", tmp_path)
    assert result.exit_code == 0 and Job.get().source == "command:echo hello"


def test_jobs_add_refuses_bad_sources(runner, tmp_path):
    for source in ["ftp://x/y", "sqlite://relative.db", "files:relative", "postgresql://host",
                   "command:", "wpsec://unregistered.example"]:
        result = runner("jobs", "add", "bad", "--source", source, "--destination", tmp_path)
        assert result.exit_code != 0, source
    assert Job.select().count() == 0


def test_jobs_add_refuses_a_duplicate_name(runner, tmp_path):
    runner("jobs", "add", "a", "--source", "files:///etc", "--destination", tmp_path)
    result = runner("jobs", "add", "a", "--source", "files:///etc", "--destination", tmp_path)
    assert result.exit_code != 0 and "already exists" in result.output


def test_jobs_list_hides_passwords(runner, tmp_path):
    runner("jobs", "add", "pg", "--source", "postgresql://u:hunter2@db:5432/app", "--destination", tmp_path)
    listing = runner("jobs", "list").output
    assert "pg" in listing and "hunter2" not in listing


def test_websites_add_normalises_the_domain(runner):
    result = runner("websites", "add", "  Example.COM. ", "--wpsec-url", "https://example.com",
                    "--wpsec-api-key", "site-key-123456")
    assert result.exit_code == 0
    site = Website.get()
    assert site.domain == "example.com"
    assert "site-key-123456" not in runner("websites", "list").output


def test_wpsec_job_needs_a_registered_website(runner, tmp_path):
    runner("websites", "add", "example.com")
    result = runner("jobs", "add", "wp", "--source", "wpsec://example.com", "--destination", tmp_path)
    assert result.exit_code == 0


def test_settings_set_max_concurrent_jobs(runner):
    assert Setting.read("max_concurrent_jobs") == "1"
    assert runner("settings", "set", "max_concurrent_jobs", "3").exit_code == 0
    assert Setting.read("max_concurrent_jobs") == "3"
    assert runner("settings", "set", "max_concurrent_jobs", "0").exit_code != 0
    assert runner("settings", "set", "unknown_thing", "2").exit_code != 0


def test_websites_remove_matches_the_domain_like_webhooks(runner):
    runner("websites", "add", "example.com", "--wpsec-api-key", "site-key-123456")
    result = runner("websites", "remove", "EXAMPLE.com.")
    assert result.exit_code == 0 and Website.select().count() == 0
    assert runner("websites", "remove", "example.com").exit_code != 0


def test_websites_list_never_shows_the_api_key_in_full(runner):
    runner("websites", "add", "example.com", "--wpsec-api-key", "site-key-123456")
    listing = runner("websites", "list").output
    assert "example.com" in listing and "site-key-123456" not in listing


# --- help, version ------------------------------------------------------------------

def every_command(group=cli.main, path=()):
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from every_command(command, path + (name,))


def test_every_command_and_group_has_help_text():
    for path, command in every_command():
        assert (command.help or "").strip(), f"`backhook {' '.join(path)}` has no help text"
        result = CliRunner().invoke(cli.main, [*path, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output, path


def test_top_level_help_shows_neither_flasks_options_nor_extension_commands(tmp_path):
    result = backhook("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for foreign in ("--env-file", "--app", "--debug", "limiter", "routes", "shell"):
        assert foreign not in result.stdout, foreign
    assert "jobs" in result.stdout and "keys" in result.stdout
    assert list(tmp_path.iterdir()) == []  # help opens no database


def test_version_is_the_distributions():
    result = backhook("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"backhook {version('backhook')}"


# --- which commands may create a database; errors are one line -----------------------------

def one_line_error(result):
    """The single line a failed command printed, after checking that it printed nothing else."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.sqlite_only("the default database is a SQLite file under ./var")
def test_keys_list_elsewhere_creates_no_database_and_names_where_it_looked(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKHOOK_")}
    error = one_line_error(backhook("keys", "list", cwd=tmp_path, env=env))
    assert str(tmp_path / "var" / "backhook.db") in error and "BACKHOOK_DATA_DIR" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [("keys", "list"), ("jobs", "list"), ("jobs", "show", "nightly"),
                                     ("settings", "get", "max_concurrent_jobs"), ("websites", "list")])
def test_commands_other_than_init_refuse_an_uninitialised_database(backhook_env, command):
    error = one_line_error(backhook(*command, env=backhook_env))
    assert "backhook init" in error


def test_only_init_run_serve_and_worker_may_create_the_database():
    assert set(cli.CREATES_DATABASE) == {"init", "run", "serve", "worker"}


def test_a_locked_database_is_one_line_not_a_traceback(backhook_env, database_url):
    assert backhook("init", env=backhook_env).returncode == 0
    holder = hold_write_lock(database_url, 60)
    try:
        error = one_line_error(backhook("keys", "create", "ci", "-p", "jobs:read",
                                        env={**backhook_env, "BACKHOOK_DATABASE_BUSY_SECONDS": "0.2"}))
    finally:
        holder.kill()
        holder.wait()
    assert "database" in error and ("locked" in error or "lock timeout" in error), error


@pytest.mark.parametrize("variable, value", [("BACKHOOK_TRUSTED_PROXIES", "two"),
                                             ("BACKHOOK_LEASE_SECONDS", "soon"),
                                             ("BACKHOOK_ARTIFACT_GROUP", "no-such-group-here")])
def test_a_bad_environment_value_is_one_line_naming_the_variable(backhook_env, variable, value):
    assert backhook("init", env=backhook_env).returncode == 0
    error = one_line_error(backhook("keys", "list", env={**backhook_env, variable: value}))
    assert variable in error and value in error


def test_settings_get_refuses_an_unknown_setting_and_lists_the_known_ones(runner):
    result = runner("settings", "get", "no_such_setting")
    assert result.exit_code != 0
    assert "no_such_setting" in result.output and "max_concurrent_jobs" in result.output


def test_settings_set_says_what_changed(runner):
    result = runner("settings", "set", "max_concurrent_jobs", "3")
    assert result.exit_code == 0 and "max_concurrent_jobs: 1 → 3" in result.output


# --- jobs run, show, set; names wherever ids go ---------------------------------------------

def test_jobs_run_queues_an_execution_without_a_web_process(runner, make_job):
    job = make_job()
    result = runner("jobs", "run", job.name)
    assert result.exit_code == 0, result.output
    execution = Execution.get_by_id(result.output.strip().splitlines()[-1])
    assert (execution.job_id, execution.status) == (job.id, "Pending")


def test_jobs_run_refuses_a_disabled_or_unknown_job(runner, make_job):
    make_job(enabled=False)
    assert "disabled" in runner("jobs", "run", "nightly").output
    assert runner("jobs", "run", "nightly").exit_code != 0
    assert runner("jobs", "run", "no-such-job").exit_code != 0
    assert Execution.select().count() == 0


def test_jobs_run_wait_shows_progress_and_ends_with_the_artifacts_sha256(runner, make_job, start_worker):
    job = make_job()
    start_worker()
    result = runner("jobs", "run", job.id, "--wait")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["Pending", "0%", "Queued"] and "Success   100%  Completed" in lines
    sha256, path = result.output.strip().splitlines()[-1].split("  ")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256
    assert Execution.get().path == path


def test_jobs_run_wait_exits_1_when_the_run_fails(runner, make_job, start_worker):
    make_job("broken", source="command:echo no >&2; exit 3")
    start_worker()
    result = runner("jobs", "run", "broken", "--wait")
    assert result.exit_code == 1, result.output
    assert Execution.get().status == "Failed"


def test_jobs_run_wait_exits_2_when_the_run_is_cancelled(app, make_job, start_worker, backhook_env):
    make_job("slow", source="command:sleep 60")
    start_worker()
    waiting = subprocess.Popen([sys.executable, str(PROJECT / "cli.py"), "jobs", "run", "slow", "--wait"],
                               env=backhook_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_until(lambda: Execution.get_or_none(Execution.status == "Running"), timeout=30,
                             message="the run to start")
        Execution.cancel(running.id)
        stdout, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 2, stdout + stderr
    assert "Cancelled" in stdout + stderr


def test_jobs_show_prints_every_field_and_hides_the_password(runner, tmp_path):
    runner("jobs", "add", "pg", "--source", "postgresql://u:hunter2@db:5432/app", "--destination", tmp_path,
           "--keep", "4")
    result = runner("jobs", "show", "pg")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    for field in Job._meta.sorted_fields:
        assert field.name in result.output
    assert "never run" in result.output


def test_jobs_set_changes_keep_timeout_compression_and_destination_and_says_old_to_new(runner, make_job, tmp_path):
    job = make_job(keep=3)
    result = runner("jobs", "set", "nightly", "--keep", "5", "--timeout-hours", "2", "--compression", "gzip",
                    "--destination", tmp_path / "elsewhere")
    assert result.exit_code == 0, result.output
    changed = Job.get_by_id(job.id)
    assert (changed.keep, changed.timeout_seconds, changed.compression, changed.destination) == (
        5, 7200, "gzip", str(tmp_path / "elsewhere"))
    assert "keep 3 → 5" in result.output and "compression zstd → gzip" in result.output
    assert f"destination {job.destination} → {tmp_path / 'elsewhere'}" in result.output
    assert runner("jobs", "set", "nightly", "--keep-all").exit_code == 0
    assert Job.get_by_id(job.id).keep is None
    assert runner("jobs", "set", "nightly").exit_code != 0  # nothing to change is an error


def test_job_commands_take_the_name_wherever_they_take_the_id(runner, make_job):
    job = make_job()
    result = runner("jobs", "disable", "nightly")
    assert result.exit_code == 0 and "enabled → disabled" in result.output
    assert Job.get_by_id(job.id).enabled is False
    assert runner("jobs", "enable", "nightly").exit_code == 0 and Job.get_by_id(job.id).enabled is True
    assert runner("jobs", "show", job.id).exit_code == 0
    assert runner("jobs", "delete", "nightly").exit_code == 0
    assert Job.select().count() == 0


def add_job(runner, tmp_path, name="job", source="files:///etc", *options):
    return runner("jobs", "add", name, "--source", source, "--destination", tmp_path, *options)


@pytest.mark.parametrize("name, problem", [
    ("", "cannot be empty"), (".", "cannot be named '.'"), ("..", "cannot be named '..'"),
    ("daily/etc", "cannot contain '/'"), ("n" * 101, "at most 100 characters"), ("☃" * 90, "255 bytes"),
    (" padded", "begin or end with a space"), ("line\nbreak", "control characters"),
])
def test_jobs_add_refuses_a_name_that_cannot_be_its_artifacts_directory(runner, tmp_path, name, problem):
    result = add_job(runner, tmp_path, name)
    assert result.exit_code != 0 and problem in result.output
    assert Job.select().count() == 0


def test_a_job_name_of_any_script_up_to_100_characters_is_its_artifacts_directory(runner, tmp_path):
    for name in ["n" * 100, "Café nightly ☃", ".hidden-ok"]:
        result = add_job(runner, tmp_path, name)
        assert result.exit_code == 0, result.output
        assert sinks.job_directory(Job.get(Job.name == name)) == tmp_path / name


@pytest.mark.parametrize("source, problem", [
    ("postgresql://u@db:5432x/app", "the port must be a number from 1 to 65535"),
    ("mysql://u@db.internal:3306/app?ssl-mode=REQUIRD", "ssl-mode is one of"),
    ("postgresql://u@db/app?sslmod=require", "unknown option 'sslmod'; the known ones are"),
    ("files:///srv/site?x", "takes no options"),
])
def test_jobs_add_refuses_a_source_with_a_bad_part_saying_which(runner, tmp_path, source, problem):
    result = add_job(runner, tmp_path, "bad", source)
    assert result.exit_code != 0 and problem in result.output
    assert "Traceback" not in result.output and Job.select().count() == 0


def test_jobs_add_refuses_ambiguous_credentials_and_says_how_to_encode_them(runner, tmp_path):
    result = add_job(runner, tmp_path, "pg", "postgresql://user:Xq7/zK9v@db.internal/app")
    assert result.exit_code != 0
    assert "percent-encode" in result.output and "%2F" in result.output
    assert "Xq7" not in result.output and "zK9v" not in result.output
    assert Job.select().count() == 0


def test_jobs_add_accepts_a_percent_encoded_password_and_never_shows_it(runner, tmp_path):
    result = add_job(runner, tmp_path, "pg", "postgresql://user:Xq7%2FzK9v@db.internal/app?sslmode=require")
    assert result.exit_code == 0, result.output
    listing = runner("jobs", "list").output
    for output in (result.output, listing):
        assert "Xq7" not in output and "zK9v" not in output
    assert "postgresql://user:***@db.internal/app?sslmode=require" in listing


def test_jobs_add_finds_the_website_of_a_wpsec_source_written_with_a_trailing_slash(runner, tmp_path):
    runner("websites", "add", "example.com")
    assert add_job(runner, tmp_path, "wp", "wpsec://Example.com/").exit_code == 0
    assert add_job(runner, tmp_path, "wp2", "wpsec://other.example/").exit_code != 0


def test_excludes_and_one_file_system_are_stored_on_a_files_job_and_refused_for_others(runner, tmp_path):
    result = add_job(runner, tmp_path, "site", "files:///srv/site", "--exclude", "*.log", "--exclude", "./cache",
                     "--one-file-system")
    assert result.exit_code == 0, result.output
    job = Job.get(Job.name == "site")
    assert (job.exclude_patterns(), job.one_file_system) == (["*.log", "./cache"], True)
    assert add_job(runner, tmp_path, "plain").exit_code == 0
    assert (Job.get(Job.name == "plain").exclude_patterns(), Job.get(Job.name == "plain").one_file_system) == (
        [], False)
    for options in (["--exclude", "*.log"], ["--one-file-system"]):
        refused = add_job(runner, tmp_path, "cmd", "command:echo hi", *options)
        assert refused.exit_code != 0 and "only to files:// sources" in refused.output


def test_jobs_add_help_says_commands_run_with_pipefail(runner):
    assert "pipefail" in runner("jobs", "add", "--help").output


@pytest.mark.parametrize("source, kind, shown", test_sources.STORED_BEFORE_VALIDATION)
def test_jobs_list_never_fails_on_a_row_stored_before_sources_were_checked(runner, make_job, source, kind, shown):
    make_job(name="good", source="files:///etc")
    make_job(name="legacy", source=source)
    result = runner("jobs", "list")
    assert result.exit_code == 0, result.output
    assert shown in result.output and "files:///etc" in result.output
    assert "Xq7" not in result.output and "zK9v" not in result.output
