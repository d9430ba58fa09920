"""The command-line forms other tools depend on."""
import subprocess
import sys

import pytest

import backup
import models
import test_sources
from models import ApiKey, Job, Setting, Website
from support import PROJECT


def test_init_is_safe_to_repeat(runner):
    first = runner("init")
    second = runner("init")
    assert first.exit_code == 0 and second.exit_code == 0
    assert "up to date" in second.output


def test_init_creates_the_database_from_nothing(backhook_env, database_url):
    result = subprocess.run([sys.executable, "-m", "cli", "init"], env=backhook_env, cwd=PROJECT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    db = models.open_database(database_url)
    try:
        assert {model._meta.table_name for model in models.ALL_MODELS} <= set(db.get_tables())
        assert models.schema_version() == models.schema_sections()[-1][0]
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
    result = runner("keys", "create", "ci", "-p", "jobs:write")
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
        assert backup.job_directory(Job.get(Job.name == name)) == tmp_path / name


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
