"""Rate limits per client IP on /api/, exact across several gunicorn processes."""
import multiprocessing
import sqlite3
import subprocess
import sys

import pytest
import requests
from limits import parse
from limits.strategies import SlidingWindowCounterRateLimiter

import config
from ratelimit import SqliteStorage
from support import PROJECT, wait_until

pytestmark = pytest.mark.usefixtures("app")

CLOSE = {"Connection": "close"}  # a new connection each time, so requests spread over processes


@pytest.fixture
def limited_server(start_server):
    def start(**env):
        return start_server(processes=3, BACKHOOK_RATELIMIT_ENABLED="true", **env)
    return start


def hammer(method, url, count, **headers):
    return [requests.request(method, url, headers={**CLOSE, **headers}, timeout=10) for _ in range(count)]


def test_get_limit_is_exactly_100_per_minute_across_processes(limited_server, make_key):
    server = limited_server()
    auth = {"Authorization": f"Bearer {make_key()}"}
    allowed = hammer("GET", server.url + "/api/jobs", 100, **auth)
    assert [r.status_code for r in allowed] == [200] * 100
    breached = requests.get(server.url + "/api/jobs", headers={**CLOSE, **auth}, timeout=10)
    assert breached.status_code == 429
    assert "error" in breached.json()
    assert 1 <= int(breached.headers["Retry-After"]) <= 60


def test_post_limit_is_exactly_20_per_minute_and_separate_from_gets(limited_server, make_key):
    server = limited_server()
    auth = {"Authorization": f"Bearer {make_key()}"}
    answers = hammer("POST", server.url + "/api/jobs/missing/run", 21, **auth)
    assert [r.status_code for r in answers] == [404] * 20 + [429]
    assert answers[-1].headers["Content-Type"].startswith("application/json")
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert requests.get(server.url + "/api/jobs", headers={**CLOSE, **auth}, timeout=10).status_code == 200


def test_head_counts_against_the_read_limit(limited_server, make_key):
    server = limited_server()
    auth = {"Authorization": f"Bearer {make_key()}"}
    assert {r.status_code for r in hammer("HEAD", server.url + "/api/jobs", 100, **auth)} == {200}
    assert requests.get(server.url + "/api/jobs", headers={**CLOSE, **auth}, timeout=10).status_code == 429


def test_forwarded_for_cannot_escape_the_limit_without_trusted_proxies(limited_server):
    server = limited_server()
    answers = [requests.post(server.url + "/api/jobs/x/run",
                             headers={**CLOSE, "X-Forwarded-For": f"10.0.0.{n}"}, timeout=10)
               for n in range(21)]
    assert [r.status_code for r in answers] == [401] * 20 + [429]


def test_forwarded_for_is_honoured_through_trusted_proxies(limited_server):
    server = limited_server(BACKHOOK_TRUSTED_PROXIES="1")
    first_client = hammer("POST", server.url + "/api/jobs/x/run", 21, **{"X-Forwarded-For": "198.51.100.7"})
    assert first_client[-1].status_code == 429
    other = requests.post(server.url + "/api/jobs/x/run",
                          headers={**CLOSE, "X-Forwarded-For": "198.51.100.8"}, timeout=10)
    assert other.status_code == 401


def test_health_routes_are_not_limited(limited_server):
    server = limited_server()
    assert {r.status_code for r in hammer("GET", server.url + "/livez", 120)} == {200}


def test_redis_makes_the_limit_exact_across_machines(start_server, make_key, redis_url, redis_prefix, tmp_path):
    """Two servers with nothing local in common (standing in for two machines) share one Redis."""
    import redis

    machines = []
    for name in ("machine-a", "machine-b"):
        (tmp_path / name).mkdir()
        machines.append(start_server(processes=2, BACKHOOK_DATA_DIR=str(tmp_path / name),
                                     BACKHOOK_RATELIMIT_ENABLED="true", BACKHOOK_RATELIMIT_STORAGE_URI=redis_url,
                                     BACKHOOK_RATELIMIT_KEY_PREFIX=redis_prefix))
    auth = {**CLOSE, "Authorization": f"Bearer {make_key()}"}
    answers = [requests.get(machines[n % 2].url + "/api/jobs", headers=auth, timeout=10) for n in range(100)]
    assert [r.status_code for r in answers] == [200] * 100
    for machine in machines:
        breached = requests.get(machine.url + "/api/jobs", headers=auth, timeout=10)
        assert breached.status_code == 429 and "error" in breached.json()
    assert list(redis.Redis.from_url(redis_url).scan_iter(match=f"*{redis_prefix}*"))
    assert not any((tmp_path / name / "ratelimit.db").exists() for name in ("machine-a", "machine-b"))


# --- tuning: BACKHOOK_RATELIMIT_READ and BACKHOOK_RATELIMIT_WRITE --------------------

def test_read_and_write_limits_come_from_the_environment_across_processes(limited_server, make_key):
    server = limited_server(BACKHOOK_RATELIMIT_READ="150 per minute", BACKHOOK_RATELIMIT_WRITE="3/minute")
    auth = {"Authorization": f"Bearer {make_key()}"}
    assert {r.status_code for r in hammer("GET", server.url + "/api/jobs", 150, **auth)} == {200}
    assert requests.get(server.url + "/api/jobs", headers={**CLOSE, **auth}, timeout=10).status_code == 429
    answers = hammer("POST", server.url + "/api/jobs/missing/run", 4, **auth)
    assert [r.status_code for r in answers] == [404] * 3 + [429]


@pytest.mark.parametrize("value", ["lots", "100 per fortnight", "0/minute", "per minute", "100 per minute; x"])
@pytest.mark.parametrize("name", ["BACKHOOK_RATELIMIT_READ", "BACKHOOK_RATELIMIT_WRITE"])
def test_a_limit_not_in_flask_limiters_notation_is_refused_naming_the_variable(name, value):
    with pytest.raises(config.ConfigError, match=f"{name}=.*flask-limiter's notation"):
        config.load({name: value})


def test_backhook_serve_refuses_to_start_with_a_bad_limit(backhook_env):
    env = {**backhook_env, "BACKHOOK_RATELIMIT_READ": "plenty"}
    result = subprocess.run([sys.executable, "-m", "cli", "serve", "--bind", "127.0.0.1:0"], env=env, cwd=PROJECT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "BACKHOOK_RATELIMIT_READ='plenty' is not a usable rate limit" in result.stdout + result.stderr
    assert "Booting worker" not in result.stdout + result.stderr  # refused before gunicorn starts


# --- the store: set up once, exact, sliding, and a 503 when it is busy ----------------

def first_hits_of_fresh_stores(directory, trials, barrier, failures):
    """Each trial: every process opens a store nobody has used yet, at the same moment, and reads it."""
    for trial in range(trials):
        barrier.wait()
        try:
            assert SqliteStorage(f"backhook+sqlite:///{directory}/{trial}/ratelimit.db").get("client") == 0
        except Exception as exc:  # reported to the test, which fails on any
            failures.put(repr(exc))


def in_processes(target, count, *args):
    """Run `target(*args, barrier, queue)` in `count` forked processes; return what they put in the queue."""
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(count), context.Queue()
    processes = [context.Process(target=target, args=(*args, barrier, queue)) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    results = []
    while not queue.empty():
        results.append(queue.get())
    return results


def test_first_hits_on_a_new_store_from_many_processes_at_once_never_fail(tmp_path):
    assert in_processes(first_hits_of_fresh_stores, 8, tmp_path, 100) == []
    assert sqlite3.connect(tmp_path / "0" / "ratelimit.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def hit_concurrently(path, hits, barrier, allowed):
    limiter = SlidingWindowCounterRateLimiter(SqliteStorage(f"backhook+sqlite:///{path}"))
    barrier.wait()
    allowed.put(sum(limiter.hit(parse("100/minute"), "client") for _ in range(hits)))


def test_concurrent_hits_from_many_processes_are_counted_exactly(tmp_path):
    allowed = in_processes(hit_concurrently, 6, tmp_path / "ratelimit.db", 40)
    assert sum(allowed) == 100


def test_the_sliding_window_lets_no_burst_through_across_a_window_boundary(tmp_path):
    """A fixed window would let 100 more through right after the boundary: 200 in half a second."""
    now = [1_000_000.0]
    limiter = SlidingWindowCounterRateLimiter(
        SqliteStorage(f"backhook+sqlite:///{tmp_path}/ratelimit.db", clock=lambda: now[0]))
    limit = parse("100/minute")

    def burst(at, count):
        now[0] = at
        return sum(limiter.hit(limit, "client") for _ in range(count))

    assert burst(1_000_000.0, 1) == 1  # the first hit starts the window
    assert burst(1_000_059.75, 120) == 99
    assert burst(1_000_060.25, 100) == 1  # the last minute already holds 99.6 of the previous window's 100
    assert burst(1_000_090.0, 100) == 49  # half of the previous window has slid out: 100 - 50 - 1
    assert burst(1_000_200.0, 120) == 100  # both windows are over: a fresh allowance


def test_a_rate_limit_store_locked_past_the_budget_is_a_json_503(limited_server, make_key, data_dir):
    server = limited_server(BACKHOOK_DATABASE_BUSY_SECONDS="0.2")
    auth = {**CLOSE, "Authorization": f"Bearer {make_key()}"}
    assert requests.get(server.url + "/api/jobs", headers=auth, timeout=10).status_code == 200
    holder = sqlite3.connect(data_dir / "ratelimit.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        busy = requests.get(server.url + "/api/jobs", headers=auth, timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.status_code == 503
    assert set(busy.json()) == {"error"} and busy.headers["Retry-After"] == "1"
    wait_until(lambda: requests.get(server.url + "/api/jobs", headers=auth, timeout=10).status_code == 200,
               message="the API to answer once the store is free")
