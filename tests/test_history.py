"""GET /api/executions (the history, filtered and paged) and Idempotency-Key on POST /api/jobs/<id>/run."""
import threading

import pytest
import requests

import models
import worker
from models import Execution, IdempotencyKey, Job
from routes.executions import execution_to_api
from statuses import ExecutionStatus, ExecutionType
from support import hold_write_lock

DAY_MS = 24 * 3600 * 1000


def listing(client, auth, **params):
    response = client.get("/api/executions", headers=auth, query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def ids(body):
    return [entry["id"] for entry in body["data"]]


def add_executions(job, count, start=1_700_000_000_000, **fields):
    """`count` executions of `job`, one a millisecond from `start`; returns them oldest first."""
    with models.database.atomic():
        return [Execution.create(job=job.id, created_at=start + number, **fields) for number in range(count)]


@pytest.fixture
def two_jobs(make_job):
    return make_job("alpha"), make_job("beta")


# --- the listing ----------------------------------------------------------------------

def test_lists_executions_newest_first_each_in_the_polls_shape(client, auth, two_jobs):
    alpha, beta = two_jobs
    old, = add_executions(alpha, 1, start=1000)
    new, = add_executions(beta, 1, start=2000, status=ExecutionStatus.FAILED, error="disk full")
    body = listing(client, auth)
    assert list(body) == ["success", "data", "next"]
    assert body["success"] is True and body["next"] is None
    assert body["data"] == [{**execution_to_api(Execution.with_job_name(new.id)), "lastRestoreDrill": None},
                            {**execution_to_api(Execution.with_job_name(old.id)), "lastRestoreDrill": None}]
    assert "logs" not in body["data"][0] and body["data"][0]["jobName"] == "beta"
    poll = client.get(f"/api/executions/{new.id}", headers=auth).get_json()["data"]
    assert body["data"][0] == {**poll, "lastRestoreDrill": None}  # the poll's fields, and the drill


def test_an_empty_history_is_an_empty_list(client, auth):
    assert listing(client, auth) == {"success": True, "data": [], "next": None}


def test_the_default_page_is_100_and_next_names_its_last_execution(client, auth, two_jobs):
    executions = add_executions(two_jobs[0], 101)
    body = listing(client, auth)
    assert ids(body) == [execution.id for execution in reversed(executions[1:])]
    assert body["next"] == executions[1].id
    following = listing(client, auth, before=body["next"])
    assert ids(following) == [executions[0].id] and following["next"] is None


def test_a_page_that_ends_exactly_at_the_oldest_has_no_next(client, auth, two_jobs):
    add_executions(two_jobs[0], 4)
    body = listing(client, auth, limit=4)
    assert len(body["data"]) == 4 and body["next"] is None


def test_paging_with_next_visits_every_execution_once_even_when_times_tie(client, auth, two_jobs):
    alpha, beta = two_jobs
    with models.database.atomic():  # three executions per millisecond, of both jobs
        executions = [Execution.create(job=(alpha, beta)[number % 2].id, created_at=5000 + number // 3)
                      for number in range(25)]
    expected = [execution.id for execution in sorted(executions, key=lambda e: (e.created_at, e.id), reverse=True)]
    seen, cursor = [], None
    while True:
        body = listing(client, auth, limit=4, **({"before": cursor} if cursor else {}))
        seen += ids(body)
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == expected


def test_before_means_strictly_older_in_created_at_then_id_order(client, auth, two_jobs):
    alpha, _beta = two_jobs
    with models.database.atomic():
        tied = [Execution.create(id=f"{letter}" * 32, job=alpha.id, created_at=7000) for letter in "abc"]
        newer = Execution.create(job=alpha.id, created_at=7001)
    assert ids(listing(client, auth)) == [newer.id, "c" * 32, "b" * 32, "a" * 32]
    assert ids(listing(client, auth, before=tied[1].id)) == ["a" * 32]
    assert ids(listing(client, auth, before=newer.id)) == ["c" * 32, "b" * 32, "a" * 32]


def test_filters_by_job_status_and_type_and_combine(client, auth, two_jobs):
    alpha, beta = two_jobs
    made = {}
    number = 0
    with models.database.atomic():
        for job in (alpha, beta):
            for status in (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED):
                for kind in ExecutionType:
                    number += 1
                    made[job.name, status, kind] = Execution.create(job=job.id, status=status, type=kind,
                                                                    created_at=10_000 + number).id

    def expected(job=None, status=None, kind=None):
        return [made[key] for key in reversed(made)  # created in this order, a millisecond apart
                if job in (None, key[0]) and status in (None, key[1]) and kind in (None, key[2])]

    for job in (None, alpha, beta):
        for status in (None, ExecutionStatus.SUCCESS, ExecutionStatus.FAILED):
            for kind in (None, *ExecutionType):
                params = {name: value for name, value in
                          (("jobId", job and job.id), ("status", status), ("type", kind)) if value}
                found = listing(client, auth, **params)
                assert ids(found) == expected(job and job.name, status, kind), params
    assert listing(client, auth, status=ExecutionStatus.PENDING)["data"] == []


def test_filters_and_paging_combine(client, auth, two_jobs):
    alpha, beta = two_jobs
    wanted = []
    with models.database.atomic():
        for number in range(30):
            status = ExecutionStatus.FAILED if number % 3 == 0 else ExecutionStatus.SUCCESS
            execution = Execution.create(job=(alpha, beta)[number % 2].id, status=status, created_at=20_000 + number)
            if status == ExecutionStatus.FAILED and number % 2 == 0:
                wanted.append(execution.id)
    wanted.reverse()
    first = listing(client, auth, jobId=alpha.id, status="Failed", limit=3)
    assert ids(first) == wanted[:3] and first["next"] == wanted[2]
    second = listing(client, auth, jobId=alpha.id, status="Failed", limit=3, before=first["next"])
    assert ids(second) == wanted[3:] and second["next"] is None


def test_an_unknown_job_id_filter_lists_nothing(client, auth, two_jobs):
    add_executions(two_jobs[0], 2)
    assert listing(client, auth, jobId="no-such-job") == {"success": True, "data": [], "next": None}


def test_a_limit_of_1_to_1000_is_the_page_size(client, auth, two_jobs):
    with models.database.atomic():
        Execution.insert_many([{"id": f"{number:032x}", "job": two_jobs[0].id, "created_at": number}
                               for number in range(1001)]).execute()
    largest = listing(client, auth, limit=1000)
    assert len(largest["data"]) == 1000 and largest["next"] == f"{1:032x}"
    assert ids(listing(client, auth, limit=1)) == [f"{1000:032x}"]


@pytest.mark.parametrize("params, message", [
    ({"limit": "0"}, "'limit'"), ({"limit": "1001"}, "'limit'"), ({"limit": "-1"}, "'limit'"),
    ({"limit": "ten"}, "'limit'"), ({"limit": ""}, "'limit'"), ({"limit": "１０"}, "'limit'"),
    ({"status": "success"}, "'status'"), ({"status": "Done"}, "'status'"), ({"status": ""}, "'status'"),
    ({"type": "backup"}, "'type'"), ({"type": "Verify"}, "'type'"),
    ({"before": "no-such-execution"}, "'before'"), ({"before": ""}, "'before'"), ({"before": "a\x00b"}, "'before'"),
    ({"jobId": "a\x00b"}, "'jobId'"),
])
def test_bad_parameters_are_a_400_naming_the_parameter(client, auth, two_jobs, params, message):
    add_executions(two_jobs[0], 2)
    response = client.get("/api/executions", headers=auth, query_string=params)
    assert response.status_code == 400, response.get_json()
    assert message in response.get_json()["error"]


def test_the_listing_needs_history_read(client, make_key):
    response = client.get("/api/executions", headers={"Authorization": f"Bearer {make_key('jobs:read')}"})
    assert response.status_code == 403 and "history:read" in response.get_json()["error"]
    assert client.get("/api/executions").status_code == 401


# --- Idempotency-Key ------------------------------------------------------------------

def run(client, auth, job, key=None):
    headers = {**auth, **({"Idempotency-Key": key} if key is not None else {})}
    return client.post(f"/api/jobs/{job.id}/run", headers=headers)


def executions_of(job):
    return Execution.select().where(Execution.job == job.id).count()


def test_the_same_key_answers_the_first_execution_and_queues_nothing_more(client, auth, make_job):
    job = make_job()
    first = run(client, auth, job, "nightly-2026-12-03")
    again = run(client, auth, job, "nightly-2026-12-03")
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json() == {"success": True, "executionId": first.get_json()["executionId"]}
    assert executions_of(job) == 1


def test_without_the_header_every_call_queues_a_run(client, auth, make_job):
    job = make_job()
    answers = {run(client, auth, job).get_json()["executionId"] for _ in range(3)}
    assert len(answers) == 3 and executions_of(job) == 3


def test_another_key_or_another_job_queues_a_new_run(client, auth, make_job):
    alpha, beta = make_job("alpha"), make_job("beta")
    first = run(client, auth, alpha, "k1").get_json()["executionId"]
    assert run(client, auth, alpha, "k2").get_json()["executionId"] != first
    other = run(client, auth, beta, "k1").get_json()["executionId"]
    assert other != first and Execution.get_by_id(other).job_id == beta.id
    assert executions_of(alpha) == 2 and executions_of(beta) == 1


def test_a_key_older_than_24_hours_no_longer_matches(client, auth, make_job):
    job = make_job()
    first = run(client, auth, job, "k").get_json()["executionId"]
    IdempotencyKey.update(created_at=IdempotencyKey.created_at - DAY_MS + 60_000).execute()
    assert run(client, auth, job, "k").get_json()["executionId"] == first  # a minute short of 24 h: still it
    IdempotencyKey.update(created_at=IdempotencyKey.created_at - 60_000).execute()
    second = run(client, auth, job, "k").get_json()["executionId"]
    assert second != first and executions_of(job) == 2
    assert run(client, auth, job, "k").get_json()["executionId"] == second  # the key now names the new run


def test_the_worker_chore_purges_only_expired_keys(client, auth, make_job, data_dir):
    import config
    job = make_job()
    run(client, auth, job, "old")
    run(client, auth, job, "new")
    IdempotencyKey.update(created_at=models.now_ms() - DAY_MS - 1).where(IdempotencyKey.key == "old").execute()
    chores = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)})).background_tasks()["chores"]
    purge, = [task for task in chores if task.name == "idempotency key purge"]
    assert purge.run(now=0.0)
    assert [row.key for row in IdempotencyKey.select()] == ["new"]
    assert not purge.run(now=1.0)  # not due again before its interval
    assert executions_of(job) == 2  # the runs themselves stay in the history


def test_an_unknown_job_is_404_and_a_disabled_one_409_before_the_key_is_looked_at(client, auth, make_job):
    job = make_job()
    first = run(client, auth, job, "k").get_json()["executionId"]
    Job.update(enabled=False).where(Job.id == job.id).execute()
    assert run(client, auth, job, "k").status_code == 409
    assert run(client, auth, job, "x" * 300).status_code == 409
    response = client.post("/api/jobs/no-such-job/run", headers={**auth, "Idempotency-Key": "k"})
    assert response.status_code == 404 and response.get_json() == {"error": "Job not found"}
    Job.update(enabled=True).where(Job.id == job.id).execute()
    assert run(client, auth, job, "k").get_json()["executionId"] == first


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "café", "new\x7fline", "\x01"])
def test_a_key_that_is_not_1_to_255_printable_ascii_characters_is_a_400(client, auth, make_job, key):
    job = make_job()
    response = client.post(f"/api/jobs/{job.id}/run", headers=[*auth.items(), ("Idempotency-Key", key)])
    assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["error"]
    assert executions_of(job) == 0


def test_a_key_of_255_printable_characters_is_accepted(client, auth, make_job):
    job = make_job()
    key = ("".join(chr(code) for code in range(0x20, 0x7f)) * 3)[1:256]  # every printable one, space inside
    assert len(key) == 255 and " " in key.strip()
    first = run(client, auth, job, key)
    assert first.status_code == 200 and run(client, auth, job, key).get_json() == first.get_json()


def test_concurrent_retries_with_one_key_queue_exactly_one_run(start_server, make_job, make_key, database_url):
    """Through a real gunicorn: retries that all found no key yet race to queue; exactly one execution wins.

    Another process holds the write lock while the calls arrive, so every
    gunicorn process reads "no such key" and then waits to write; let go,
    they all write at once, and the losers answer the winner's execution.
    """
    job = make_job()
    server = start_server(processes=4)
    key = make_key("jobs:execute", "jobs:read")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "cron-0300"}
    answers = []

    def at_once(request, count=16):
        threads = [threading.Thread(target=request) for _ in range(count)]
        for thread in threads:
            thread.start()
        return threads

    def use_key():
        assert requests.get(f"{server.url}/api/jobs", headers=headers, timeout=10).status_code == 200

    def call():
        response = requests.post(f"{server.url}/api/jobs/{job.id}/run", headers=headers, timeout=30)
        answers.append((response.status_code, response.json()))

    # Calls at once reach every process: each records the key's use now, so none writes it under the lock.
    for _ in range(3):
        for thread in at_once(use_key):
            thread.join()
    holder = hold_write_lock(database_url, 2)
    threads = at_once(call, 8)
    holder.wait()
    for thread in threads:
        thread.join()
    assert [status for status, _body in answers] == [200] * 8, answers
    assert len({body["executionId"] for _status, body in answers}) == 1
    assert executions_of(job) == 1 and IdempotencyKey.select().count() == 1
