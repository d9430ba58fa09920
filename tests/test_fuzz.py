"""Property-based fuzzing of every documented operation against gunicorn on loopback.

schemathesis generates valid and invalid requests from openapi.yaml and sends
them to a real server with several processes. Every answer must be a non-5xx,
match the document (status, headers, content type, body schema) and, when it
is an error, be JSON {"error": "..."}. The budget is fixed and seeded, so a
run is reproducible and costs CI well under a minute per test.
"""
import hashlib
from collections import defaultdict

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import models
from models import Backup, Execution, Job, Website
from routes import openapi
from sinks import job_directory
from statuses import ExecutionStatus
from support import TOKEN

EXAMPLES_PER_OPERATION = 60
SEED = 20261122


@schemathesis.check
def error_is_json(ctx, response, case):
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), \
        f"{response.status_code} answered as {response.headers.get('content-type')}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, error_is_json]


def documented_example(name):
    return openapi.document()["components"]["parameters"][name]["example"]


@pytest.fixture
def fuzz_server(app, start_server, tmp_path):
    """A server over a database holding what the document's examples name, so fuzzing reaches 200s.

    That is a Pending execution (to cancel), a successful backup with its artifact (to download),
    and two jobs of their own for PATCH and DELETE, so that neither changes what the others read.
    """
    with models.database.atomic():
        job = Job.create(id=documented_example("jobId"), name="Daily files",
                         source=f"files://{tmp_path}", destination=str(tmp_path / "backups"))
        Execution.create(id=documented_example("executionId"), job=job.id)
        backed_up = documented_example("backupExecutionId")
        artifact = job_directory(job) / f"20261122T000000Z-{backed_up}.tar"
        artifact.parent.mkdir(parents=True)
        artifact.write_bytes(b"an artifact to download" * 100)
        Execution.create(id=backed_up, job=job.id, status=ExecutionStatus.SUCCESS, path=str(artifact),
                         size=artifact.stat().st_size, sha256=hashlib.sha256(artifact.read_bytes()).hexdigest())
        for name, example in (("Changed files", "changedJobId"), ("Deleted files", "deletedJobId")):
            Job.create(id=documented_example(example), name=name, source=f"files://{tmp_path}",
                       destination=str(tmp_path / "backups"))
        website = Website.create(domain="example.com")
        Backup.create(website=website.id, backup_id="backup_123456789", status="in_progress", progress=45)
    # The limits would turn most of the budget into 429s after the first 20 POSTs per
    # minute; they are pinned by test_ratelimit.py, and 429 stays documented.
    return start_server(processes=3, BACKHOOK_RATELIMIT_ENABLED="false")


def load_schema(server, headers):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": server.url,
        "headers": headers,
        "request-timeout": 10,
        "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True},
    })
    # The document as served; from_url would leave out the operation that serves it.
    document = requests.get(f"{server.url}/api/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(document, config=config)


def fuzz(schema, checks, headers=None):
    """Run every operation in both generation modes, sending `headers` (the credentials) with each case.

    Given to each call as well as to the config, the credentials count as the
    caller's own for ignored_auth also on an operation with header parameters
    (POST /api/jobs/{jobId}/run's Idempotency-Key), where it would otherwise
    take them for generated ones. Returns the failures, one per operation and
    mode, and the statuses each operation answered.
    """
    failures, statuses = [], defaultdict(set)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
                                 database=None, phases=[Phase.explicit, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def send(case):
                statuses[operation.label].add(case.call_and_validate(checks=checks, headers=headers).status_code)

            try:
                send()
            except Unsatisfiable:
                pass  # nothing in this operation can be made invalid (no body, free-form strings)
            except Exception as exc:  # one operation's failure must not hide another's
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures, statuses


def documented_labels():
    return {f"{method.upper()} {path}" for path, item in openapi.document()["paths"].items() for method in item}


def test_fuzz_with_credentials(fuzz_server, make_key):
    credentials = {"Authorization": f"Bearer {make_key()}", "x-wpfort-token": TOKEN}
    failures, statuses = fuzz(load_schema(fuzz_server, credentials), CHECKS + [ignored_auth], credentials)
    assert not failures, "\n\n".join(failures)
    # Every operation was reached, and past its credentials to a success at least once.
    assert set(statuses) == documented_labels()
    assert {label for label, seen in statuses.items() if not any(200 <= s < 300 for s in seen)} == set()


def test_fuzz_without_credentials(fuzz_server):
    failures, statuses = fuzz(load_schema(fuzz_server, {}), CHECKS)
    assert not failures, "\n\n".join(failures)
    assert set(statuses) == documented_labels()
    protected = {label for label in statuses if label.startswith(("GET /api/jobs", "POST /api/", "GET /api/ex",
                                                                  "PATCH /api/", "DELETE /api/",
                                                                  "GET /api/websites", "POST /webhooks"))}
    assert all(statuses[label] <= {400, 401, 404, 405, 413} for label in protected), dict(statuses)
