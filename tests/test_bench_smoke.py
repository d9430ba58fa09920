"""The benchmarks stand outside the product, and each runs end to end in its tiny --quick mode.

The quick runs take a minute of both cores, so they run only when asked:
`make bench-smoke` (`pytest -m bench tests/test_bench_smoke.py`). No timing is checked.
"""
import ast
import os
import subprocess
import sys

import pytest

from support import PROJECT

TARGETS = ("webhooks", "pickup", "scale", "backup_speed", "backup_age", "restore_speed",
           "restore_postgresql", "offsite", "schedule_latency")  # each ends with its verdict
SCRIPTS = TARGETS + ("webhook_floor",)
BENCH = PROJECT / "bench"


def product_modules():
    """What bench/ must not import: backhook's top-level modules and packages, and the installed package."""
    names = {path.stem for path in PROJECT.glob("*.py")}
    names |= {path.parent.name for path in PROJECT.glob("*/__init__.py")}
    # A script's own directory comes first on sys.path, so a bench module of the same name is what it gets.
    return (names | {"routes", "backhook"}) - {path.stem for path in BENCH.glob("*.py")}


def imported_modules(source):
    """The top-level name of every module that `source` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_no_benchmark_imports_a_product_module():
    # bench/ drives backhook through its CLI and HTTP and fills databases with SQL, so a refactor
    # inside the product cannot break a benchmark, or change what it measures, without a failure here.
    product = product_modules()
    assert {"models", "cli", "worker", "routes"} <= product
    offenders = {path.name: sorted(imported_modules(path.read_text()) & product)
                 for path in sorted(BENCH.glob("*.py"))}
    assert {name: modules for name, modules in offenders.items() if modules} == {}


@pytest.mark.parametrize("source", [
    "import models",
    "import cli, json",
    "from routes.webhooks import receive",
    "import backhook.models as models",
    "def later():\n    import worker\n",
    "import importlib\nimportlib.import_module('config')",
])
def test_the_import_check_sees_every_way_of_importing_a_product_module(source):
    assert imported_modules(source) & product_modules()


def test_the_import_check_lets_benchmarks_import_each_other_and_libraries():
    assert not imported_modules("import common\nimport webhooks\nimport requests\nfrom flask import Flask\n"
                                "from . import hello_app") & product_modules()


@pytest.mark.bench
def test_every_benchmark_runs_in_quick_mode(tmp_path):
    env = dict(os.environ, BENCH_WORK_DIR=str(tmp_path))
    # All at once: each uses its own directories and ports, and the whole stays short.
    runs = {name: subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), "--quick"],
                                   cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            for name in SCRIPTS}
    for name, run in runs.items():
        output = run.communicate(timeout=120)[0]
        assert run.returncode == 0, f"bench/{name}.py --quick failed:\n{output}"
        assert "## " in output and ("Verdict" in output or name not in TARGETS), output


def test_a_missing_tool_stops_the_bench_naming_it_and_nothing_installs_packages():
    check = "import common; common.require_tool('no-such-tool-here', 'no-such-package')"
    done = subprocess.run([sys.executable, "-c", check], cwd=BENCH, capture_output=True, text=True)
    assert done.returncode != 0
    assert "no-such-tool-here" in done.stderr and "no-such-package" in done.stderr and "Traceback" not in done.stderr
    # Installing system packages is .ci/run's job, never a benchmark's (nor, through the smoke test, a test's).
    assert not [path.name for path in BENCH.glob("*.py") if "apt-get" in path.read_text()]
