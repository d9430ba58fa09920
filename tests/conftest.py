"""Shared fixtures: an app over a temporary database, keys, jobs, live servers, services."""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import migrations
import models
from app import create_app
from models import ApiKey, Job
from support import (PROJECT, TOKEN, LiveProcess, LoopbackS3, SftpServer, free_port, mariadb, postgres_listeners,
                     psql, require_postgres, require_service, scratch_databases, scratch_postgres_database,
                     wait_until)

BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser):
    parser.addoption("--backend", choices=BACKENDS, default=os.environ.get("BACKHOOK_TEST_BACKEND", "sqlite"),
                     help="the metadata database every test runs on (default: sqlite, or $BACKHOOK_TEST_BACKEND)")


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(reason): the test is about SQLite itself; skipped on PostgreSQL")
    config.addinivalue_line("markers", "postgresql_only(reason): the test is about PostgreSQL itself; "
                                       "skipped on SQLite")


def pytest_report_header(config):
    return f"backhook metadata backend: {config.getoption('--backend')}"


def pytest_collection_modifyitems(config, items):
    backend = config.getoption("--backend")
    for item in items:
        for name, other in (("sqlite_only", "postgresql"), ("postgresql_only", "sqlite")):
            marker = item.get_closest_marker(name)
            if marker and backend == other:
                reason = marker.args[0] if marker.args else name.replace("_", " ")
                item.add_marker(pytest.mark.skip(reason=f"{name}: {reason}"))


@pytest.fixture(scope="session")
def backend(request):
    return request.config.getoption("--backend")


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def database_url(backend, data_dir):
    """A fresh, empty metadata database on the selected backend."""
    if backend == "sqlite":
        yield f"sqlite:///{data_dir}/backhook.db"
        return
    require_postgres()
    with scratch_postgres_database() as url:
        yield url


@pytest.fixture
def scratch_postgres():
    """A fresh PostgreSQL database besides the test's own, dropped afterwards."""
    require_postgres()
    with scratch_postgres_database() as url:
        yield url


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"bh-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def backhook_env(data_dir, database_url):
    """The environment a backhook process of this test runs with."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKHOOK_")}
    env.update({
        "BACKHOOK_DATA_DIR": str(data_dir),
        "BACKHOOK_DATABASE_URL": database_url,
        "WPFORT_BACKEND_TOKEN": TOKEN,
        "BACKHOOK_RATELIMIT_ENABLED": "false",
    })
    return env


@pytest.fixture
def app(backhook_env, monkeypatch):
    for key, value in backhook_env.items():
        monkeypatch.setenv(key, value)
    application = create_app({"TESTING": True})
    migrations.migrate()
    yield application
    models.database.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    test_runner = app.test_cli_runner()

    def invoke(*args):
        return test_runner.invoke(cli.main, [str(arg) for arg in args])

    return invoke


@pytest.fixture
def make_key(app):
    def make(*permissions, **options):
        return ApiKey.issue("test", permissions or models.PERMISSIONS, **options)[1]

    return make


@pytest.fixture
def auth(make_key):
    """Headers with a key holding every permission."""
    return {"Authorization": f"Bearer {make_key()}"}


@pytest.fixture
def make_job(app, tmp_path):
    def make(name="nightly", source=None, **fields):
        if source is None:
            folder = tmp_path / f"src-{name}"
            folder.mkdir(exist_ok=True)
            (folder / "hello.txt").write_text("hello\n")
            source = f"files://{folder}"
        fields.setdefault("destination", str(tmp_path / "backups"))
        with models.database.atomic():
            return Job.create(name=name, source=source, **fields)

    return make


@pytest.fixture
def start_server(backhook_env):
    """Start gunicorn running the app on a free loopback port; stopped after the test."""
    started = []

    def start(processes=3, **env_overrides):
        env = {**backhook_env, **env_overrides}
        subprocess.run([sys.executable, "-m", "cli", "init"], env=env, cwd=PROJECT, check=True,
                       capture_output=True)
        port = free_port()
        server = LiveProcess(cli.gunicorn_command(f"127.0.0.1:{port}", processes), env,
                             url=f"http://127.0.0.1:{port}")
        started.append(server)
        server.wait_until_answering()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory):
    """One SFTP server on loopback for the session (support.SftpServer); skipped without sshd or rclone."""
    server = SftpServer(tmp_path_factory.mktemp("sftp"))
    yield server
    server.stop()


@pytest.fixture
def postgres_url():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def mysql_url():
    require_service("MariaDB", "127.0.0.1", 3306)
    return "mysql://root@127.0.0.1:3306/test"


@pytest.fixture
def pg_databases(postgres_url):
    """A factory of uniquely named PostgreSQL databases, dropped after the test."""
    yield from scratch_databases(lambda sql: psql("test", "-c", sql),
                                 "CREATE DATABASE {}", "DROP DATABASE IF EXISTS {} WITH (FORCE)")


@pytest.fixture
def mysql_databases(mysql_url):
    """A factory of uniquely named MariaDB databases, dropped after the test."""
    yield from scratch_databases(lambda sql: mariadb("-e", sql),
                                 "CREATE DATABASE {} CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS {}")


@pytest.fixture
def redis_url():
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def start_worker(backhook_env, backend):
    """Start `python -m worker` on this test's database; stopped after the test."""
    started = []

    def listeners(env):
        if backend == "postgresql":
            return postgres_listeners(env["BACKHOOK_DATABASE_URL"])
        return set((Path(env["BACKHOOK_DATA_DIR"]) / "wake").glob("*.sock"))

    def start(preexec_fn=None, **env_overrides):
        # A short grace period keeps teardown quick; tests of the grace period set their own.
        env = {**backhook_env, "BACKHOOK_WORKER_GRACE_SECONDS": "1", **env_overrides}
        before = listeners(env)
        worker = LiveProcess([sys.executable, "-m", "worker"], env, preexec_fn=preexec_fn)
        started.append(worker)

        def listening():
            assert worker.proc.poll() is None, worker.output()
            return listeners(env) - before

        wait_until(listening, timeout=20, message="the worker to listen for wake-ups")
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One loopback S3 server for the whole session; each test makes buckets of its own."""
    server = LoopbackS3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The loopback S3 server, its keys in this process's environment (pass `s3.env` to backhook processes)."""
    for key in [key for key in os.environ if key.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    import s3sink

    monkeypatch.setattr(s3sink, "CLIENTS", {})  # each test's clients read its own environment
    return s3_server
