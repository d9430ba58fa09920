"""The security table, case by case: authentication on every protected route, path tricks,
hostile bodies, hashed keys and no shell built from what a client sends.

Single cases already pinned elsewhere are not repeated here: key format and
hashed storage (test_auth.py), X-Forwarded-For with 0 trusted proxies
(test_ratelimit.py), oversized bodies on the trigger route (test_errors.py),
a missing, wrong or unconfigured webhook token (test_webhooks.py), passwords
in ps output while a dump runs (test_faults.py). SECURITY.md maps each promise
to its tests.
"""
import ast
import http.client
import json
import re
import sys

import pytest
import requests

import models
from cli import is_loopback
from models import ApiKey
from routes import json_object, webhooks
from support import PROJECT, TOKEN, LiveProcess, free_port, trigger, wait_for_status


def protected_routes(app):
    """(method, url with every id replaced by 'x', permission) for each route behind a key."""
    routes = []
    for rule in app.url_map.iter_rules():
        permission = getattr(app.view_functions[rule.endpoint], "required_permission", None)
        if permission is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = rule.build({name: "x" for name in rule.arguments}, append_unknown=False)[1]
            routes.append((method, url, permission))
    return sorted(routes)


def assert_json_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json and set(response.get_json()) == {"error"}


# --- authentication and permissions on every protected route ---------------------

def other_key(key):
    return key[:-1] + ("A" if key[-1] != "A" else "B")


AUTH_FAILURES = {
    "no header": lambda key: {},
    "empty bearer": lambda key: {"Authorization": "Bearer "},
    "basic scheme": lambda key: {"Authorization": f"Basic {key}"},
    "token scheme": lambda key: {"Authorization": f"Token {key}"},
    "scheme without a space": lambda key: {"Authorization": f"Bearer{key}"},
    "key twice": lambda key: {"Authorization": f"Bearer {key} {key}"},
    "key in another header": lambda key: {"X-API-Key": key},
    "key in a cookie": lambda key: {"Cookie": f"api_key={key}"},
    "unknown key": lambda key: {"Authorization": "Bearer dbm_" + "Q" * 43},
    "last character differs": lambda key: {"Authorization": f"Bearer {other_key(key)}"},
    "the stored hash presented as the key": lambda key: {"Authorization": f"Bearer {models.hash_key(key)}"},
}


@pytest.mark.parametrize("failure", sorted(AUTH_FAILURES))
def test_every_protected_route_refuses_a_bad_key_with_401(app, client, make_key, failure):
    key = make_key()
    for method, url, _ in protected_routes(app):
        response = client.open(url, method=method, headers=AUTH_FAILURES[failure](key))
        assert_json_error(response, 401)


@pytest.mark.parametrize("state", ["disabled", "expired"])
def test_every_protected_route_refuses_a_disabled_or_expired_key_with_401(app, client, make_key, state):
    key = make_key(expires_in_days=1)
    change = {"enabled": False} if state == "disabled" else {"expires_at": models.now_ms() - 1}
    ApiKey.update(**change).execute()
    for method, url, _ in protected_routes(app):
        response = client.open(url, method=method, headers={"Authorization": f"Bearer {key}"})
        assert_json_error(response, 401)
        assert state in response.get_json()["error"]


def test_every_protected_route_names_the_missing_permission_with_403(app, client, make_key):
    for method, url, permission in protected_routes(app):
        others = [p for p in models.PERMISSIONS if p != permission]
        response = client.open(url, method=method, headers={"Authorization": f"Bearer {make_key(*others)}"})
        assert_json_error(response, 403)
        assert permission in response.get_json()["error"]


def test_authentication_comes_before_lookup_so_ids_cannot_be_probed(client, make_job):
    job = make_job()
    existing = client.post(f"/api/jobs/{job.id}/run")
    missing = client.post("/api/jobs/no-such-job/run")
    assert existing.status_code == missing.status_code == 401
    assert existing.get_json() == missing.get_json()


def test_keys_are_compared_in_constant_time(client, make_key, monkeypatch):
    compared = []
    real = models.hmac.compare_digest
    monkeypatch.setattr(models.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    key = make_key()
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert compared == [(models.hash_key(key), models.hash_key(key))]


def test_a_used_key_leaves_no_trace_in_any_file_of_the_data_dir(start_server, make_key, data_dir):
    key = make_key()
    server = start_server(processes=2, BACKHOOK_RATELIMIT_ENABLED="true")
    for url in ("/api/jobs", "/api/executions/x", "/api/jobs/x/run"):
        requests.request("POST" if url.endswith("/run") else "GET", server.url + url,
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    requests.get(server.url + "/api/jobs", headers={"Authorization": f"Bearer {other_key(key)}"}, timeout=10)
    server.stop()
    secret = key[len(ApiKey.get().prefix):].encode()
    files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "ratelimit.db" for path in files)
    for path in files:
        assert secret not in path.read_bytes(), path
        assert other_key(key)[12:].encode() not in path.read_bytes(), path


# --- the webhook token (its other failures: test_webhooks.py) ---------------------------

WEBHOOK = "/webhooks/backup-progress"
EVENT = {"domain": "example.com", "backup_id": "b-1", "progress": 10}


@pytest.fixture
def website(app):
    with models.database.atomic():
        return models.Website.create(domain="example.com")


@pytest.mark.parametrize("where", ["last character differs", "a prefix", "query string", "cookie"])
def test_a_webhook_token_not_exactly_in_its_header_is_401(client, website, where):
    headers, url = {}, WEBHOOK
    if where == "last character differs":
        headers = {"x-wpfort-token": TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")}
    elif where == "a prefix":
        headers = {"x-wpfort-token": TOKEN[:-1]}
    elif where == "query string":
        url = f"{WEBHOOK}?x-wpfort-token={TOKEN}"
    else:
        headers = {"Cookie": f"x-wpfort-token={TOKEN}"}
    assert_json_error(client.post(url, json=EVENT, headers=headers), 401)
    assert models.Backup.select().count() == 0


def test_the_webhook_token_is_compared_in_constant_time(client, website, monkeypatch):
    compared = []
    real = webhooks.hmac.compare_digest
    monkeypatch.setattr(webhooks.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert client.post(WEBHOOK, json=EVENT, headers={"x-wpfort-token": TOKEN}).status_code == 200
    assert compared == [(TOKEN.encode(), TOKEN.encode())]


# --- path tricks in ids ------------------------------------------------------------

PATH_TRICKS = [
    "..",
    "../jobs",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e",
    "x%00y",
    "%00",
    "x%0d%0aSet-Cookie:%20a=b",
    "%ff%fe",
    "%25%32%65%25%32%65",
    "x'%20OR%20'1'='1",
    "x" * 8000,
]
ID_ROUTES = [("GET", "/api/executions/{}"), ("POST", "/api/jobs/{}/run"), ("POST", "/api/executions/{}/cancel"),
             ("GET", "/api/websites/{}/backups")]


def raw_answer(url, method, path, headers):
    """Send `path` byte for byte, as a client library would not; (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def raw_request(url, method, path, headers):
    status, answer_headers, body = raw_answer(url, method, path, headers)
    return status, answer_headers.get("Content-Type"), body


def test_path_tricks_in_ids_are_a_clean_json_404(start_server, make_key, make_job):
    make_job()
    auth = {"Authorization": f"Bearer {make_key()}"}
    server = start_server(processes=2)
    for method, route in ID_ROUTES:
        for trick in PATH_TRICKS:
            status, content_type, body = raw_request(server.url, method, route.format(trick), auth)
            assert status in (400, 404), (method, route, trick[:40], status, body[:200])
            assert content_type == "application/json" and set(json.loads(body)) == {"error"}


def test_an_id_of_ten_thousand_characters_is_a_json_404_in_the_app(client, auth):
    for method, route in ID_ROUTES:
        assert_json_error(client.open(route.format("x" * 10_000), method=method, headers=auth), 404)


def test_a_request_line_past_gunicorns_limit_is_refused_as_json(start_server, make_key):
    auth = {"Authorization": f"Bearer {make_key()}"}
    server = start_server(processes=1)
    status, content_type, body = raw_request(server.url, "GET", "/api/executions/" + "x" * 10_000, auth)
    assert status == 414
    assert content_type == "application/json" and set(json.loads(body)) == {"error"}


def test_the_live_server_redirects_nowhere_and_says_nosniff_and_no_store_on_every_answer(
        start_server, make_key, website):
    server = start_server(processes=2, BACKHOOK_RATELIMIT_ENABLED="true", BACKHOOK_RATELIMIT_WRITE="1/minute")
    auth = {"Authorization": f"bearer {make_key()}"}
    cases = [
        ("GET", "/api/jobs", auth, 200),
        ("GET", "/api//jobs", {**auth, "Host": "evil.example"}, 404),
        ("GET", "/api/jobs/", {**auth, "Host": "evil.example"}, 404),
        ("OPTIONS", "/api/jobs", {}, 405),
        ("OPTIONS", "/webhooks/backup-progress", {}, 405),
        ("POST", "/api/jobs/x/run", auth, 404),
        ("POST", "/api/jobs/x/run", auth, 429),
        ("POST", "/webhooks/backup-progress", {"x-wpfort-token": "wrong"}, 401),
        ("GET", "/api/executions/" + "x" * 10_000, auth, 414),  # refused by gunicorn itself
    ]
    for method, path, headers, status in cases:
        answer_status, answer_headers, body = raw_answer(server.url, method, path, headers)
        assert answer_status == status, (method, path[:40], answer_status, body[:200])
        assert answer_headers["Content-Type"] == "application/json" and json.loads(body), (method, path[:40])
        assert answer_headers["X-Content-Type-Options"] == "nosniff", (method, path[:40])
        assert answer_headers["Cache-Control"] == "no-store", (method, path[:40])
        assert "Location" not in answer_headers, (method, path[:40])


# --- slow clients: a buffering reverse proxy is required --------------------------

@pytest.mark.parametrize("command, host, env, warned", [
    ("serve", "0.0.0.0", {}, True),
    ("run", "0.0.0.0", {}, True),
    ("serve", "127.0.0.1", {}, False),
    ("serve", "0.0.0.0", {"BACKHOOK_TRUSTED_PROXIES": "1"}, False),
], ids=["serve-public", "run-public", "serve-loopback", "serve-public-behind-a-proxy"])
def test_serving_on_a_public_address_without_a_trusted_proxy_warns_that_a_proxy_is_needed(
        backhook_env, command, host, env, warned):
    port = free_port()
    server = LiveProcess([sys.executable, "-m", "cli", command, "--bind", f"{host}:{port}", "--processes", "1"],
                         {**backhook_env, **env}, url=f"http://127.0.0.1:{port}")
    try:
        server.wait_until_answering(timeout=30)
        output = server.output()
        assert ("warning: serving on" in output and "reverse proxy" in output and "docs/deploy.md" in output) \
            == warned, output
    finally:
        server.stop()


@pytest.mark.parametrize("bind, loopback", [
    ("127.0.0.1:8000", True), ("127.0.0.2:8000", True), ("localhost:8000", True), ("[::1]:8000", True),
    ("unix:/run/backhook/web.sock", True), ("0.0.0.0:8000", False), ("0.0.0.0", False), ("[::]:8000", False),
    ("192.0.2.10:8000", False), ("backups.example.com:8000", False), (":8000", False),
])
def test_only_loopback_addresses_and_local_sockets_count_as_not_exposed(bind, loopback):
    assert is_loopback(bind) is loopback


# --- hostile bodies ----------------------------------------------------------------

@pytest.fixture
def echo_client(app):
    """A route that parses its body the way every JSON route does."""
    @app.post("/echo")
    def echo():
        return json_object()

    return app.test_client()


@pytest.mark.parametrize("body", [
    "[" * 100_000,
    '{"a":' * 100_000,
    "[" * 100_000 + "]" * 100_000,
])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(echo_client, body):
    assert_json_error(echo_client.post("/echo", data=body, content_type="application/json"), 400)


@pytest.mark.parametrize("content_type, body", [
    ("application/x-www-form-urlencoded", "domain=example.com&backup_id=1"),
    ("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"),
    ("text/plain", "hello"),
    ("application/json", ""),
    ("application/json", "[1, 2]"),
    ("application/json", '"a string"'),
    ("application/json", "{'single': 'quotes'}"),
    ("application/json; charset=latin-1", b"\xff\xfe\x00"),
    ("application/xml", "<a/>"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(echo_client, content_type, body):
    assert_json_error(echo_client.post("/echo", data=body, content_type=content_type), 400)


def chunked(body, size=64 * 1024):
    """The body as a chunked upload: no Content-Length for the server to refuse it by."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


@pytest.mark.parametrize("route", ["/webhooks/backup-progress", "/webhooks/backup-complete",
                                   "/webhooks/backup-failed"])
def test_hostile_webhook_bodies_are_refused_cleanly_by_the_live_server(start_server, website, route):
    server = start_server(processes=2)
    url, headers = server.url + route, {"x-wpfort-token": TOKEN, "Content-Type": "application/json"}
    oversized = json.dumps({**EVENT, "padding": "x" * (2 * 1024 * 1024)}).encode()
    at_the_limit = json.dumps({**EVENT, "padding": ""}).encode()
    at_the_limit = at_the_limit.replace(b'""', b'"' + b"x" * (1024 * 1024 - len(at_the_limit)) + b'"')
    assert len(at_the_limit) == 1024 * 1024
    cases = [
        ("nested 100,000 deep", "[" * 100_000, 400),
        ("an object nested 100,000 deep", '{"a":' * 100_000, 400),
        ("over 1 MiB", oversized, 413),
        ("over 1 MiB, chunked", chunked(oversized), 413),
        ("exactly 1 MiB", at_the_limit, 200),
        ("exactly 1 MiB, chunked", chunked(at_the_limit), 200),
    ]
    for name, body, status in cases:
        response = requests.post(url, data=body, headers=headers, timeout=30)
        assert response.status_code == status, (name, response.status_code, response.text[:200])
        assert set(response.json()) == ({"error"} if status >= 400 else {"success"}), name


# --- no shell built from user input -----------------------------------------------

# The one place a shell may run: the `command:` source and its restore command, which
# only the server's own command line (`backhook jobs add`) can define, never HTTP.
SHELL_ALLOWED = {("sources.py", "shell_argv")}
SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "spawnl", "spawnlp", "execl", "execlp"}
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/env"}


def shell_uses(path):
    """(file name, enclosing function) for every shell the code at `path` could start."""
    found = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            shell_true = any(kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and not kw.value.value)
                             for kw in node.keywords)
            if shell_true or name in SHELL_CALLS:
                found.append((path.name, function))
        if isinstance(node, ast.List) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in SHELLS:
                found.append((path.name, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return found


def project_modules():
    return sorted(list(PROJECT.glob("*.py")) + list((PROJECT / "routes").glob("*.py")))


def test_no_shell_is_started_outside_the_admin_defined_command_source():
    uses = {use for path in project_modules() for use in shell_uses(path)}
    assert uses <= SHELL_ALLOWED


def test_the_shell_scan_would_see_a_shell(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, subprocess\n"
                      "def a(x): subprocess.run(x, shell=True)\n"
                      "def b(x): os.system(x)\n"
                      "def c(x): subprocess.Popen(['/bin/sh', '-c', x])\n"
                      "def d(x): subprocess.run(['tar', x], shell=False)\n")
    assert shell_uses(sample) == [("sample.py", "a"), ("sample.py", "b"), ("sample.py", "c")]


SHELL_INJECTIONS = ["x; touch {marker}", "$(touch {marker})", "`touch {marker}`", "x|touch {marker}",
                    "x && touch {marker}"]


def test_shell_metacharacters_in_ids_do_nothing(start_server, make_key, make_job, tmp_path):
    make_job()
    auth = {"Authorization": f"Bearer {make_key()}"}
    server = start_server(processes=2)
    marker = tmp_path / "pwned"
    for injection in SHELL_INJECTIONS:
        value = requests.utils.quote(injection.format(marker=marker), safe="")
        for method, route in ID_ROUTES:
            response = requests.request(method, server.url + route.format(value), headers=auth, timeout=10)
            assert response.status_code == 404 and set(response.json()) == {"error"}
    assert not marker.exists()
    assert models.Execution.select().count() == 0


# --- SECURITY.md ------------------------------------------------------------------

def test_every_test_named_in_security_md_exists():
    text = (PROJECT / "SECURITY.md").read_text()
    references = set(re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text))
    assert len(references) >= 20
    for path, name in sorted(references):
        module = ast.parse((PROJECT / path).read_text())
        defined = {node.name for node in ast.walk(module) if isinstance(node, ast.FunctionDef)}
        assert name in defined, f"SECURITY.md names {path}::{name}, which does not exist"


def test_shell_metacharacters_in_webhook_fields_and_source_paths_run_nothing(
        client, auth, website, make_job, start_worker, tmp_path):
    marker = tmp_path / "pwned"
    for injection in SHELL_INJECTIONS:
        value = injection.format(marker=marker)
        response = client.post(WEBHOOK, json={**EVENT, "backup_id": value}, headers={"x-wpfort-token": TOKEN})
        assert response.status_code == 200
        assert models.Backup.get(models.Backup.backup_id == value)  # stored as data, verbatim
    relative = f"pwned-{tmp_path.name}"  # a path holds no slash in a name: the shell would run in the cwd
    source = tmp_path / f"data $(touch {relative}) `touch {relative}`; touch {relative}"
    source.mkdir()
    (source / "file").write_text("contents\n")
    job = make_job(name="odd-path", source=f"files://{source}")
    start_worker()
    data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert data["status"] == "Success", data["error"]
    assert not marker.exists()
    assert not (PROJECT / relative).exists() and not list(tmp_path.rglob(relative))


# --- credentials in sources -----------------------------------------------------------

def test_a_stored_source_with_ambiguous_credentials_fails_its_backup_and_never_shows_them(
        client, auth, runner, make_job, start_worker):
    """A row stored before sources were checked: its password holds an unencoded '/'."""
    job = make_job(name="legacy", source="postgresql://postgres:Xq7/zK9v@127.0.0.1:5432/test")
    worker = start_worker()
    data = wait_for_status(client, auth, trigger(client, auth, job.id))
    assert data["status"] == "Failed"
    assert data["error"].startswith("postgresql: the credentials are ambiguous; percent-encode")
    shown = [str(data), worker.output(), client.get("/api/jobs", headers=auth).get_data(as_text=True),
             runner("jobs", "list").output]
    for output in shown:
        assert "Xq7" not in output and "zK9v" not in output
