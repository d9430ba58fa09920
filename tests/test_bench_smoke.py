"""Each benchmark script runs end to end in its tiny --quick mode. No timing is checked."""
import os
import subprocess
import sys

from support import PROJECT

TARGETS = ("webhooks", "pickup", "scale", "backup_speed")  # each ends with its verdict
SCRIPTS = TARGETS + ("webhook_floor",)


def test_every_benchmark_runs_in_quick_mode(tmp_path):
    env = dict(os.environ, BENCH_WORK_DIR=str(tmp_path))
    # All at once: each uses its own directories and ports, and the whole stays short.
    runs = {name: subprocess.Popen([sys.executable, str(PROJECT / "bench" / f"{name}.py"), "--quick"],
                                   cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            for name in SCRIPTS}
    for name, run in runs.items():
        output = run.communicate(timeout=120)[0]
        assert run.returncode == 0, f"bench/{name}.py --quick failed:\n{output}"
        assert "## " in output and ("Verdict" in output or name not in TARGETS), output


def test_a_missing_tool_stops_the_bench_naming_it_and_nothing_installs_packages():
    check = "import common; common.require_tool('no-such-tool-here', 'no-such-package')"
    done = subprocess.run([sys.executable, "-c", check], cwd=PROJECT / "bench", capture_output=True, text=True)
    assert done.returncode != 0
    assert "no-such-tool-here" in done.stderr and "no-such-package" in done.stderr and "Traceback" not in done.stderr
    # Installing system packages is .ci/run's job, never a benchmark's (nor, through the smoke test, a test's).
    assert not [path.name for path in (PROJECT / "bench").glob("*.py") if "apt-get" in path.read_text()]
