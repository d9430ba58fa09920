"""Webhook throughput against a bare Flask hello route, both under the same gunicorn settings.

    .venv/bin/python bench/webhooks.py [--processes 3] [--seconds 10] [--connections 16]

Needs `wrk`. Prints requests/s, p99 and errors for each, and the ratio; the
target is >= 0.6x the hello route with 0 errors and p99 <= 25 ms.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

PROJECT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
POST_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-wpfort-token"] = "%s"
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"domain":"bench.example","backup_id":"b-%%d","status":"in_progress","progress":%%d}',
                             counter %% 500, counter %% 101)
  return wrk.format(nil, nil, nil, body)
end
""" % TOKEN


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(data_dir, before_site=None):
    """A fresh database in `data_dir` with the site bench.example; the environment to serve it with."""
    env = {**os.environ, "BACKHOOK_DATA_DIR": data_dir, "WPFORT_BACKEND_TOKEN": TOKEN,
           "BACKHOOK_RATELIMIT_ENABLED": "false", "PYTHONPATH": f"{PROJECT}:{PROJECT / 'bench'}"}
    subprocess.run([sys.executable, "-m", "cli", "init"], cwd=PROJECT, env=env, check=True, capture_output=True)
    if before_site:
        before_site(os.path.join(data_dir, "backhook.db"))
    subprocess.run([sys.executable, "-m", "cli", "websites", "add", "bench.example"], cwd=PROJECT, env=env,
                   check=True, capture_output=True)
    return env


def serve(target, processes, env, path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
                             str(processes), "--no-control-socket", target], cwd=PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.post(url + path, json={}, timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{target} did not start")


def wrk(url, script, seconds, connections):
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        out = subprocess.run(["wrk", "--latency", "-t", "2", "-c", str(connections), "-d", f"{seconds}s",
                              "-s", lua.name, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total_errors = (int(errors.group(1)) if errors else 0) + (
        sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return rate, p99_ms, total_errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        env = prepare(data_dir)
        results = {}
        for name, target, path in [("hello", "hello_app:app", "/hello"),
                                   ("webhook", "app:create_app()", "/webhooks/backup-progress")]:
            proc, url = serve(target, args.processes, env, path)
            try:
                wrk(url + path, POST_SCRIPT, 2, args.connections)  # warm up
                results[name] = wrk(url + path, POST_SCRIPT, args.seconds, args.connections)
            finally:
                proc.terminate()
                proc.wait()
    for name, (rate, p99, errors) in results.items():
        print(f"{name:8} {rate:9.0f} req/s  p99 {p99:6.1f} ms  errors {errors}")
    ratio = results["webhook"][0] / results["hello"][0]
    verdict = "PASS" if ratio >= 0.6 and results["webhook"][1] <= 25 and results["webhook"][2] == 0 else "FAIL"
    print(f"ratio    {ratio:.2f}x (target >= 0.60x, p99 <= 25 ms, 0 errors): {verdict}")


if __name__ == "__main__":
    main()
