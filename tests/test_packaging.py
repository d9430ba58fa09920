"""`pip install .` gives a working `backhook` that needs no source tree and claims no generic top-level name."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version

import pytest
import requests

from support import PROJECT, free_port, wait_until

pytestmark = pytest.mark.sqlite_only("packaging does not depend on the metadata backend")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the source tree (a build writes into the tree it builds)."""
    work = tmp_path_factory.mktemp("build")
    shutil.copytree(PROJECT, work / "source", ignore=shutil.ignore_patterns(
        ".venv*", "var", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "test-output"))
    # Without build isolation: the test extras bring a setuptools that builds wheels, so no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "dist"), str(work / "source")], check=True, capture_output=True)
    return next((work / "dist").glob("backhook-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtualenv with the wheel installed; returns its bin directory.

    Its dependencies come from this test run's own environment, without its
    editable backhook, so that nothing is downloaded.
    """
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    dependencies = work / "dependencies"
    dependencies.mkdir()
    for entry in os.scandir(sysconfig.get_paths()["purelib"]):
        if not entry.name.startswith(("backhook", "__editable__")):
            (dependencies / entry.name).symlink_to(entry.path)
    python = venv / "bin" / "python"
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    (venv / site_packages / "dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def clean_env(**extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("BACKHOOK_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


def test_the_wheel_holds_only_the_backhook_directory_and_its_data_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert all(name.startswith(("backhook/", "backhook-")) for name in names), names
    assert {"backhook/schema.sql", "backhook/openapi.yaml", "backhook/cli.py", "backhook/routes/jobs.py",
            "backhook/templates/base.html", "backhook/templates/jobs.html", "backhook/static/dashboard.css",
            "backhook/static/execution.js"} <= set(names)


def test_the_installed_backhook_initialises_and_serves_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env()
    backhook = str(installed / "backhook")

    done = subprocess.run([backhook, "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == f"backhook {version('backhook')}", done.stderr
    done = subprocess.run([backhook, "init"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "var" / "backhook.db").is_file()

    port = free_port()
    server = subprocess.Popen([backhook, "serve", "--bind", f"127.0.0.1:{port}", "--processes", "1"], cwd=elsewhere,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def live():
            assert server.poll() is None, server.stdout.read()
            try:
                return requests.get(f"http://127.0.0.1:{port}/livez", timeout=1).ok
            except (requests.ConnectionError, requests.Timeout):  # booting, or a loaded machine
                return False

        wait_until(live, timeout=30, message="the installed backhook to serve")
        document = requests.get(f"http://127.0.0.1:{port}/api/openapi.json", timeout=5)
        assert document.status_code == 200 and "/api/jobs/{jobId}/run" in str(document.json()["paths"])
        # The dashboard's templates and static files come from the installed package.
        sign_in = requests.get(f"http://127.0.0.1:{port}/sign-in", timeout=5)
        assert sign_in.status_code == 200 and 'name="csrf_token"' in sign_in.text
        style = requests.get(f"http://127.0.0.1:{port}/static/dashboard.css", timeout=5)
        assert style.status_code == 200 and "prefers-color-scheme" in style.text
    finally:
        server.terminate()
        server.wait(30)


def test_the_installation_claims_no_generic_top_level_module(installed, tmp_path):
    for name in ("app", "config", "models", "ratelimit", "routes", "cli", "worker"):
        done = subprocess.run([installed / "python", "-c", f"import {name}"], cwd=tmp_path, env=clean_env(),
                              capture_output=True, text=True)
        assert "ModuleNotFoundError" in done.stderr, name
