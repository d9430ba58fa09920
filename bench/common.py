"""What the benchmarks share: machine facts, servers, wrk, statistics, /proc readings, reports.

Every script in bench/ is runnable alone (`.venv/bin/python bench/NAME.py`)
and exposes `main(argv) -> str`, the Markdown section it prints, so that
run_all.py can collect the sections into bench/RESULTS.md.

The benchmarks stand outside the product: they drive backhook through its
command line and its HTTP API, and fill databases with plain SQL against
schema.sql, never by importing its modules (tests/test_bench_smoke.py checks
this), so that moving code inside backhook cannot change what they measure
without failing them.
"""
import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import secrets
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
# SPEC.md's API key permissions: a benchmark key may do everything.
PERMISSIONS = ("jobs:read", "jobs:execute", "history:read", "websites:read", "storage:restore", "storage:download",
               "metrics:read", "keys:manage", "settings:write")


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


def size_arguments(parser, what):
    """Add the options of the benchmarks that move a source of some size in alternating rounds.

    `what` names the source in the help (e.g. "each source"). --quick shrinks the run so that
    `make bench-smoke` checks the harness without measuring anything.
    """
    parser.add_argument("--size-mb", type=int, default=1024, help=f"size of {what}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action=_QuickSize, help="8 MB, 1 round: checks the harness only")


class _QuickSize(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.quick, namespace.size_mb, namespace.rounds = True, 8, 1


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


# --- the backhook command line --------------------------------------------------------

@functools.cache
def backhook_executable():
    """The `backhook` console script of this virtualenv, which must be installed from this tree."""
    beside = Path(sys.executable).with_name("backhook")
    if not beside.exists():
        sys.exit(f"bench: no `backhook` beside {sys.executable}: run `make install` and use .venv/bin/python")
    # An editable install from another checkout would measure that checkout's code, not this one's.
    direct_url = importlib.metadata.distribution("backhook").read_text("direct_url.json")
    installed_from = json.loads(direct_url or "{}").get("url")
    if installed_from and installed_from != PROJECT.as_uri():
        sys.exit(f"bench: this virtualenv's backhook is installed from {installed_from}, not {PROJECT}: "
                 "run `make install` in this tree")
    return str(beside)


def backhook(data_dir, *args):
    """Run `backhook ARGS` on the data directory `data_dir`; return its output lines."""
    done = subprocess.run([backhook_executable(), *args], env=backhook_env(data_dir), cwd=PROJECT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`backhook {' '.join(args)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout.splitlines()


def init_database(data_dir):
    """Create (or upgrade) the database of `data_dir` as `backhook init` does."""
    backhook(data_dir, "init")


def api_key(data_dir):
    """A new key with every permission; `keys create` prints it alone on its last line."""
    return backhook(data_dir, "keys", "create", "bench", *(arg for p in PERMISSIONS for arg in ("-p", p)))[-1]


def add_job(data_dir, name, source, destination, *options):
    """A job made with `backhook jobs add`, which prints its id alone on its last line."""
    return backhook(data_dir, "jobs", "add", name, "--source", source, "--destination", str(destination),
                    *options)[-1]


def trigger_and_wait(http, url, job_id, db):
    """POST /api/jobs/<id>/run, then read the execution's row until it ends; (seconds, status, size, error)."""
    started = time.monotonic()
    response = http.post(f"{url}/api/jobs/{job_id}/run", timeout=10)
    response.raise_for_status()
    execution_id = response.json()["executionId"]
    while True:
        status, size, error = db.execute("SELECT status, size, error FROM execution WHERE id = ?",
                                         (execution_id,)).fetchone()
        if status in ("Success", "Failed", "Cancelled"):
            return time.monotonic() - started, status, size, error, execution_id
        time.sleep(0.01)


# --- filling a database with SQL ------------------------------------------------------

def now_ms():
    return int(time.time() * 1000)


def new_id():
    """An id in backhook's format: creation time in hex (so ids sort by age) and 80 random bits."""
    return f"{now_ms():012x}{secrets.token_hex(10)}"


def connect(data_dir):
    """A connection to the SQLite database of `data_dir`, in autocommit mode (transactions are explicit)."""
    return sqlite3.connect(Path(data_dir) / "backhook.db", timeout=10, isolation_level=None)


@contextlib.contextmanager
def transaction(data_dir):
    """A connection to the database of `data_dir` inside one transaction, closed at the end.

    Closed explicitly: a connection that lingers until garbage collection
    would keep a later bulk load from leaving WAL mode.
    """
    db = connect(data_dir)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


def add_websites(data_dir, count):
    """Register `count` sites, spelled SITE_DOMAIN, with nothing but their domain."""
    with transaction(data_dir) as db:
        db.executemany("INSERT INTO website (id, domain, created_at) VALUES (?, ?, ?)",
                       [(new_id(), SITE_DOMAIN.format(i), now_ms()) for i in range(count)])


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

    def wait_exec(self, program, timeout=30):
        """This process's argv once it has exec'd into `python -m PROGRAM` (as `backhook serve` does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited early:\n{Path(self.log_path).read_text()[-3000:]}")
            try:
                argv = Path(f"/proc/{self.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
            except OSError:
                argv = []
            if program in argv:
                return argv
            time.sleep(0.005)
        raise RuntimeError(f"process {self.pid} did not become {program} within {timeout}s")

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


def serve(env, processes=None, name="web"):
    """backhook itself: `backhook serve` on a free loopback port, with `processes` gunicorn processes."""
    port = free_port()
    log = Path(env["BACKHOOK_DATA_DIR"]) / f"{name}.log"
    return Process(serve_argv(port, processes), env, log, url=f"http://127.0.0.1:{port}").wait_ready()


def serve_argv(port, processes=None):
    """`backhook serve` on 127.0.0.1:`port`, with its own default process count unless told."""
    command = [backhook_executable(), "serve", "--bind", f"127.0.0.1:{port}"]
    return command + (["--processes", str(processes)] if processes is not None else [])


_serve_commands = {}  # processes (None: serve's default) -> the gunicorn command that `backhook serve` runs


def serve_command(env, processes=None):
    """The gunicorn command line of `backhook serve`, read from the process once it has exec'd gunicorn.

    The baselines run under exactly these settings, so whatever `serve`
    changes in them reaches the baselines too.
    """
    if processes not in _serve_commands:
        log = Path(env["BACKHOOK_DATA_DIR"]) / "serve-command.log"
        with Process(serve_argv(free_port(), processes), env, log) as learner:
            argv = learner.wait_exec("gunicorn")
        # The app to swap is gunicorn's one positional argument, MODULE:VARIABLE, at the end.
        assert "--bind" in argv and "--workers" in argv and ":" in argv[-1] and not argv[-1].startswith("-"), argv
        _serve_commands[processes] = _serve_commands[int(argv[argv.index("--workers") + 1])] = argv
    return list(_serve_commands[processes])


def default_processes(env):
    """How many gunicorn processes `backhook serve` starts when not told."""
    command = serve_command(env)
    return int(command[command.index("--workers") + 1])


def gunicorn(env, app, processes=None, name="gunicorn"):
    """Serve the baseline `app` (a gunicorn app spec) with exactly the settings of `backhook serve`."""
    port = free_port()
    command = serve_command(env, processes)
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    command[-1] = app
    log = Path(env["BACKHOOK_DATA_DIR"]) / f"{name}.log"
    return Process(command, env, log, url=f"http://127.0.0.1:{port}").wait_ready()


def worker(env):
    """`backhook worker`, which becomes the worker process itself (same pid)."""
    log = Path(env["BACKHOOK_DATA_DIR"]) / "worker.log"
    return Process([backhook_executable(), "worker"], env, log)


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
