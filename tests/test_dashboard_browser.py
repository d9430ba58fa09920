"""The dashboard in a real browser: Playwright driving Debian's Chromium against a live server and worker.

Never a browser that `playwright install` downloads: /usr/bin/chromium, or
the tests are skipped (failed under BACKHOOK_REQUIRE_SERVICES=1). Each page is
saved in light and dark, and at a phone's width, under test-output/dashboard/.
"""
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

import models
from models import ApiKey, Execution
from support import PROJECT, REQUIRE_SERVICES

pytestmark = pytest.mark.sqlite_only("the browser sees the same pages on either backend")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = PROJECT / "test-output" / "dashboard"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is not installed (Debian: apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def live(app, start_server, start_worker):
    """A gunicorn server and a worker on this test's database; returns the server."""
    server = start_server(processes=2)
    start_worker()
    return server


@pytest.fixture
def page(browser, live):
    context = browser.new_context(base_url=live.url)
    opened = context.new_page()
    problems = []
    # A CSP violation or a script error shows up here; a refused request (a test's own 403) does not count.
    opened.on("console", lambda message: message.type == "error" and not message.text.startswith(
        "Failed to load resource") and problems.append(message.text))
    opened.on("pageerror", lambda exc: problems.append(str(exc)))
    yield opened
    context.close()
    assert problems == [], problems


def sign_in(page, key):
    page.goto("/sign-in")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/(jobs|history|websites|keys|settings)$"))


def shoot(page, name, phone=False):
    """Save the page in light and dark; with `phone`, also at a phone's width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=SCREENSHOTS / f"{name}-{scheme}.png", full_page=True)
    if phone:
        size = page.viewport_size
        page.set_viewport_size(PHONE)
        page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
        page.set_viewport_size(size)
    page.emulate_media(color_scheme="light")


def test_sign_in_run_a_job_and_watch_it_reach_success_then_restore_it(page, make_key, make_job, live):
    job = make_job()
    page.goto("/sign-in")
    shoot(page, "sign-in", phone=True)
    sign_in(page, make_key())
    page.click("summary")  # the API trigger panel
    assert f"{live.url}/api/jobs/{job.id}/run" in page.inner_text(".trigger-command")
    shoot(page, "jobs", phone=True)

    page.click("button.run-now")
    page.wait_for_url(re.compile(r"/executions/\w+$"))
    page.wait_for_selector("#status .status-success", timeout=60_000)  # the script polls, then reloads
    assert page.get_attribute("#progress", "value") == "100"
    assert page.locator("#logs li").count() > 0
    shoot(page, "execution-success", phone=True)
    backup_url = page.url

    page.check("input[name=target][value=scratch]")
    page.click("form.restore button[type=submit]")
    page.wait_for_url(lambda url: url != backup_url)
    page.wait_for_selector("#status .status-success", timeout=60_000)
    assert page.inner_text("h1").startswith("Restore of")
    shoot(page, "execution-restore")

    page.goto(backup_url)
    assert "Success" in page.inner_text("dl.facts")  # the drill proved it restorable
    page.goto("/history")
    assert page.locator("table.history tbody tr").count() == 2
    shoot(page, "history", phone=True)
    page.select_option("select[name=type]", "Restore")
    page.click("form.filters button")
    page.wait_for_url(re.compile(r"type=Restore"))
    assert page.locator("table.history tbody tr").count() == 1


def test_cancel_a_running_backup(page, make_key, make_job):
    job = make_job("slow", source="command:sleep 60; echo never")
    sign_in(page, make_key())
    page.locator(f"#job-{job.id} button.run-now").click()
    page.wait_for_selector("#status .status-running", timeout=30_000)
    shoot(page, "execution-running")
    page.click("button.cancel")
    page.wait_for_selector("#status .status-cancelled", timeout=30_000)
    assert Execution.get().status == "Cancelled"


def test_create_and_rotate_a_key(page, make_key, live):
    sign_in(page, make_key("keys:manage"))
    page.goto("/keys")
    page.fill("#key-name", "ci")
    page.check("input[value='jobs:read']")
    page.click("form.new-key button[type=submit]")
    secret = page.inner_text("#new-key").strip()
    shoot(page, "keys-created", phone=True)
    api = f"{live.url}/api/jobs"
    assert requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 200

    created = ApiKey.get(ApiKey.name == "ci")
    page.locator(f"#key-{created.id} button.rotate").click()
    rotated = page.inner_text("#new-key").strip()
    assert rotated != secret
    assert requests.get(api, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code == 401
    assert requests.get(api, headers={"Authorization": f"Bearer {rotated}"}, timeout=10).status_code == 200
    page.goto("/keys")
    assert rotated not in page.content()  # shown that once


def test_a_post_without_the_csrf_token_is_refused(page, make_key, make_job):
    job = make_job()
    sign_in(page, make_key())
    answer = page.evaluate("""async (url) => {
        const response = await fetch(url, {method: "POST", credentials: "same-origin",
                                           headers: {"Content-Type": "application/x-www-form-urlencoded"},
                                           body: "csrf_token="});
        return {status: response.status, body: await response.json()};
    }""", f"/jobs/{job.id}/run")
    assert answer["status"] == 403 and "CSRF" in answer["body"]["error"]
    assert Execution.select().count() == 0


def test_the_other_pages_and_a_read_only_key(page, make_key, make_job):
    make_job()
    with models.database.atomic():
        site = models.Website.create(domain="shop.example", synced_at=models.now_ms(), remote_backups=(
            '[{"id": "r-1", "type": "full", "size": 123456, "created_at": "2026-12-01T03:00:00Z", '
            '"status": "completed"}]'))
        models.Backup.create(website=site.id, backup_id="b-9", status="in_progress", progress=40)
    sign_in(page, make_key("jobs:read", "websites:read"))
    assert page.locator("button.run-now").count() == 0  # no jobs:execute
    assert page.locator("nav").inner_text().split() == ["Jobs", "Websites", "Settings"]
    page.goto("/websites")
    shoot(page, "websites")
    page.click("text=shop.example")
    assert "r-1" in page.inner_text("main")
    shoot(page, "website", phone=True)
    page.goto("/settings")
    shoot(page, "settings-read-only")


def test_the_wait_script_of_the_api_trigger_panel_runs(page, make_key, make_job, tmp_path):
    job = make_job()
    key = make_key()
    sign_in(page, key)
    script = tmp_path / "wait.sh"
    # Its five-second pause between polls is for real use; the test need not wait so long.
    script.write_text(page.locator(f"#job-{job.id} .wait-script").text_content().replace("sleep 5", "sleep 0.2"))
    done = subprocess.run(["sh", str(script)], env={**os.environ, "BACKHOOK_API_KEY": key}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("Success 100%")


def test_create_a_job_through_the_form_and_see_it_listed(page, make_key, tmp_path):
    source = tmp_path / "site"
    source.mkdir()
    sign_in(page, make_key())
    page.click("a.new-job")
    page.wait_for_url(re.compile(r"/jobs/new$"))
    page.fill("#job-name", "site")
    page.fill("#job-source", f"files://{source}")
    page.fill("#job-destinations", f"{tmp_path}/backups")
    page.fill("input[name=keep]", "seven")
    page.click("button[type=submit].primary")
    assert "must be a whole number" in page.inner_text("#error-keep")  # refused, what was typed still there
    assert page.input_value("#job-source") == f"files://{source}"
    shoot(page, "job-form-refused", phone=True)
    page.fill("input[name=keep]", "7")
    page.fill("#job-schedule", "0 3 * * *")
    page.click("button[type=submit].primary")
    page.wait_for_url(re.compile(r"/jobs$"))
    job = models.Job.get(models.Job.name == "site")
    assert job.keep == 7 and job.schedule == "0 3 * * *"
    listed = page.inner_text(f"#job-{job.id}")
    assert "site" in listed and f"{tmp_path}/backups" in listed and "never" in listed
    shoot(page, "jobs-with-form-buttons")
    page.locator(f"#job-{job.id} a.edit-job").click()
    assert page.input_value("#job-destinations") == f"{tmp_path}/backups"
    shoot(page, "job-form-edit")
