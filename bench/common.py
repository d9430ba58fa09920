"""What the benchmarks share: machine facts, servers, wrk, statistics, /proc readings, reports.

Every script in bench/ is runnable alone (`.venv/bin/python bench/NAME.py`)
and exposes `main(argv) -> str`, the Markdown section it prints, so that
run_all.py can collect the sections into bench/RESULTS.md.
"""
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BENCH = PROJECT / "bench"
# Generated data and caches, reused between runs; the smoke test points it elsewhere.
WORK = Path(os.environ.get("BENCH_WORK_DIR") or PROJECT / "var" / "bench")
TOKEN = "bench-webhook-token"
SITE_DOMAIN = "site{}.bench.test"  # wrk.lua spells the domains the same way

sys.path.insert(0, str(PROJECT))
import cli  # noqa: E402  (needs the project on sys.path)
import models  # noqa: E402


# --- machine ----------------------------------------------------------------------

def machine():
    """The facts RESULTS.md records about where and when a run happened."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{int(meminfo['MemTotal'].split()[0]) / 1024 / 1024:.1f} GiB",
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        # Share of the last minute in which some runnable task waited for a CPU.
        "cpu_pressure": Path("/proc/pressure/cpu").read_text().split()[2].split("=")[1] + "%",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def require_tool(command, package=None):
    """Stop the benchmark, naming the tool, when `command` is missing; .ci/run installs the packages."""
    if not shutil.which(command):
        sys.exit(f"bench: `{command}` is missing: install the Debian package {package or command} (.ci/run does)")


# --- databases and processes --------------------------------------------------------

def backhook_env(data_dir, **extra):
    """The environment of backhook processes under benchmark.

    Rate limiting is off: every benchmark client is 127.0.0.1, so the per-IP
    limits on /api/ (100 GET and 20 POST a minute) would answer 429 to almost
    every request and the benchmark would measure the limiter instead of the
    route. The webhooks are outside /api/ and never limited anyway.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("BACKHOOK_")}
    env.update({
        "BACKHOOK_DATA_DIR": str(data_dir),
        "BACKHOOK_DATABASE_URL": f"sqlite:///{data_dir}/backhook.db",
        "WPFORT_BACKEND_TOKEN": TOKEN,
        "BACKHOOK_RATELIMIT_ENABLED": "false",
        "PYTHONPATH": str(PROJECT),
    })
    env.update(extra)
    return env


def fresh_dir(name):
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def open_backhook_db(data_dir):
    """Open (and create or upgrade) the backhook database of `data_dir` in this process."""
    models.open_database(f"sqlite:///{data_dir}/backhook.db")
    models.migrate()
    return models.database


def add_websites(count):
    with models.database.atomic():
        for start in range(0, count, 500):
            models.Website.insert_many(
                [{"id": models.new_id(), "domain": SITE_DOMAIN.format(i), "created_at": models.now_ms()}
                 for i in range(start, min(count, start + 500))]).execute()


def api_key():
    return models.ApiKey.issue("bench", models.PERMISSIONS)[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process (gunicorn, worker) in its own session, stopped with its whole group."""

    def __init__(self, command, env, log_path, url=None):
        self.url, self.log_path = url, log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, path="/livez", timeout=30):
        import requests
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited early:\n{Path(self.log_path).read_text()[-3000:]}")
            try:
                requests.get(self.url + path, timeout=2)
                return self
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.05)
        raise RuntimeError(f"{self.url} did not answer within {timeout}s")

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def gunicorn(env, app="app:create_app()", processes=cli.DEFAULT_PROCESSES, name="gunicorn"):
    """Serve `app` with exactly the settings of `backhook serve`, only the app swapped."""
    port = free_port()
    command = cli.gunicorn_command(f"127.0.0.1:{port}", processes)
    assert command[-1] == "app:create_app()", command
    command[-1] = app
    log = Path(env["BACKHOOK_DATA_DIR"]) / f"{name}.log"
    return Process(command, env, log, url=f"http://127.0.0.1:{port}").wait_ready()


def worker(env):
    log = Path(env["BACKHOOK_DATA_DIR"]) / "worker.log"
    return Process(cli.worker_command(), env, log)


def worker_available():
    """False until the worker branch is merged: its stub exits at once."""
    return "not built yet" not in (PROJECT / "worker.py").read_text()


# --- wrk ------------------------------------------------------------------------------

def wrk(url, duration, connections, threads=2, **lua_env):
    """Run wrk with bench/wrk.lua; return its summary as a dict (latencies in ms).

    `lua_env` becomes BENCH_* variables the Lua script reads (mode, token, ...).
    """
    require_tool("wrk")
    env = dict(os.environ, **{f"BENCH_{key.upper()}": str(value) for key, value in lua_env.items()})
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{int(duration)}s",
               "--timeout", "5s", "-s", str(BENCH / "wrk.lua"), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / seconds,
        # wrk counts non-2xx/3xx as "status" errors; socket errors are the rest.
        "errors": raw["status"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "non2xx": raw["status"],
        "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "command": " ".join(command),
    }


# --- statistics and /proc ------------------------------------------------------------

def median(values):
    return statistics.median(values)


def percentile(values, pct):
    """Nearest-rank percentile: the smallest value with pct% of the samples at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, reaped_children=False):
    """utime + stime of one process (plus its reaped children's), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(pid):
    """utime + stime of `pid` and every process below it that is still running."""
    total = 0.0
    for member in descendants(pid):
        try:
            total += cpu_seconds(member)
        except OSError:  # ended since it was listed
            pass
    return total


def descendants(pid):
    """`pid` and every process below it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def rss_mb(pid, field="VmRSS"):
    """A process's resident memory (or its peak, with field="VmHWM") in MB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- reports -------------------------------------------------------------------------

def verdict(met):
    return "**met**" if met else "**MISSED**"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run_standalone(main):
    """`python bench/NAME.py [args]`: print the section (main prints as it goes)."""
    main(sys.argv[1:])
