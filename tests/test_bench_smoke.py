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
