"""The deployment docs and unit files say what the program does."""
import configparser
import re
import shlex

import pytest
import requests

import cli
import config
from models import Execution, Setting
from support import PROJECT, wait_for_status

UNITS = {"backhook-web.service": "serve", "backhook-worker.service": "worker"}


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str
    parser.read(PROJECT / "deploy" / name)
    return parser


@pytest.mark.parametrize("name, command", UNITS.items())
def test_units_run_real_commands_after_init(name, command):
    service = unit(name)["Service"]
    assert shlex.split(service["ExecStartPre"])[1:] == ["init"]
    start = shlex.split(service["ExecStart"])
    assert start[0].endswith("/backhook") and start[1] == command
    cli.main.get_command(None, command).make_context(command, start[2:])  # options the CLI accepts
    assert service["KillSignal"] == "SIGTERM" and service["EnvironmentFile"] == "/etc/backhook/backhook.env"


def test_worker_unit_leaves_time_for_the_grace_period():
    service = unit("backhook-worker.service")["Service"]
    assert int(service["TimeoutStopSec"]) > config.load({})["WORKER_GRACE_SECONDS"]
    assert service["KillMode"] == "mixed"  # SIGTERM reaches the worker, not its backup tools


def test_every_variable_in_the_example_environment_is_one_backhook_reads():
    text = (PROJECT / "deploy" / "backhook.env").read_text()
    names = re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, re.M)
    source = (PROJECT / "config.py").read_text()
    assert names and all(f'"{name}"' in source for name in names)


def test_the_docs_name_only_commands_and_variables_that_exist():
    docs = (PROJECT / "docs" / "deploy.md").read_text()
    source = (PROJECT / "config.py").read_text()
    for name in set(re.findall(r"\b(BACKHOOK_[A-Z_]+|WPFORT_[A-Z_]+)\b", docs)):
        assert f'"{name}"' in source, name
    commands = set(re.findall(r"(?:`|/bin/)backhook ([a-z][a-z-]+)", docs))
    assert {"init", "serve", "worker", "migrate-db"} <= commands
    for command in commands:
        assert cli.main.get_command(None, command) is not None, command


@pytest.mark.postgresql_only("the several-machine layout needs a shared database")
def test_two_web_and_two_worker_machines_share_postgresql_and_redis(
        start_server, start_worker, make_key, make_job, client, tmp_path, redis_url, redis_prefix):
    """docs/deploy.md section 5 on loopback: each process has a data directory of its own, as a machine would."""
    def machine(name):
        (tmp_path / name).mkdir()
        return {"BACKHOOK_DATA_DIR": str(tmp_path / name), "BACKHOOK_RATELIMIT_STORAGE_URI": redis_url,
                "BACKHOOK_RATELIMIT_KEY_PREFIX": redis_prefix, "BACKHOOK_RATELIMIT_ENABLED": "true"}

    webs = [start_server(processes=2, **machine(name)) for name in ("web-1", "web-2")]
    workers = [start_worker(**machine(name)) for name in ("worker-1", "worker-2")]
    Setting.write("max_concurrent_jobs", 2)
    job = make_job("shared", source="command:sleep 0.2; echo payload")
    key = make_key()
    auth = {"Authorization": f"Bearer {key}", "Connection": "close"}

    ids = []
    for n in range(10):  # triggers through both web machines; NOTIFY wakes the workers on theirs
        response = requests.post(f"{webs[n % 2].url}/api/jobs/{job.id}/run", headers=auth, timeout=10)
        assert response.status_code == 200, response.text
        ids.append(response.json()["executionId"])
    for execution_id in ids:
        wait_for_status(client, {"Authorization": f"Bearer {key}"}, execution_id, timeout=60)

    executions = list(Execution.select().where(Execution.id.in_(ids)))
    assert {(e.status, e.attempts) for e in executions} == {("Success", 1)}
    assert most_at_once(executions) <= 2
    assert not any((tmp_path / name / "wake").exists() for name in ("web-1", "web-2", "worker-1", "worker-2"))
    assert all(worker.proc.poll() is None for worker in workers)

    # The 20 writes a minute hold for both web machines together.
    writes = [requests.post(f"{webs[n % 2].url}/api/jobs/missing/run", headers=auth, timeout=10).status_code
              for n in range(11)]
    assert writes == [404] * 10 + [429]


def most_at_once(executions):
    events = sorted([(e.started_at, 1) for e in executions] + [(e.ended_at, -1) for e in executions])
    running = most = 0
    for _moment, change in events:
        running += change
        most = max(most, running)
    return most
