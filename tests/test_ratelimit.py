"""Rate limits per client IP on /api/, exact across several gunicorn processes."""
import pytest
import requests

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
