"""The dashboard at /: server-rendered pages over the same queries and views as the JSON API.

A browser signs in with an API key and gets a server-side session
(models.DashboardSession) in an HttpOnly, SameSite=Strict cookie. Each page
and button follows that key's permissions: a page calls the API view it
shows (`call`), which refuses what the key may not do, and the template
hides it. Every POST carries a CSRF token: HMAC of the session's secret once
signed in, a double-submitted cookie on the sign-in form. Errors are the
project's JSON {"error"} answers, as on the API.
"""
import hashlib
import hmac
import secrets
from functools import wraps

import job_definition
import job_form

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from models import PERMISSIONS, ApiKey, DashboardSession, Job, Setting, Website, iso
from ratelimit import limiter
from routes import artifacts, error, executions, jobs, websites
from statuses import FINISHED, ExecutionStatus, ExecutionType, Stage

bp = Blueprint("dashboard", __name__)

SESSION_COOKIE = "backhook_session"
SIGN_IN_COOKIE = "backhook_sign_in"  # the sign-in form's CSRF token, before there is a session
WEBSITES_PER_PAGE = 50
KEY_NAME_MAX_CHARACTERS = 100
MAX_KEY_DAYS = 36_500  # a century: the expiry stays a 64-bit millisecond count
SECURITY_HEADERS = {
    # No inline script or style anywhere: everything comes from /static/.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def sign_in_limit():
    return current_app.config["RATELIMIT_SIGN_IN"]


@bp.after_request
def send_security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    return response


@bp.before_request
def open_session():
    """Find the session of the cookie, joined to its key; refuse a POST whose CSRF token does not match."""
    secret = request.cookies.get(SESSION_COOKIE)
    g.session = DashboardSession.find(secret) if secret else None
    g.secret = secret if g.session else None
    g.api_key = g.session.api_key if g.session else None
    if request.method == "POST":
        expected = csrf_token() if g.session else request.cookies.get(SIGN_IN_COOKIE)
        presented = request.form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            error("Missing or wrong CSRF token: reload the page and try again", 403)


@bp.app_context_processor
def dashboard_helpers():
    return {"csrf_token": csrf_token, "can": can, "signed_in_key": lambda: g.get("api_key"), "iso": iso}


def csrf_token():
    """The signed-in session's form token: the secret itself never reaches the page."""
    if g.get("secret") is None:
        return g.get("sign_in_token", "")
    return hmac.new(g.secret.encode(), b"backhook dashboard csrf", hashlib.sha256).hexdigest()


def can(permission):
    key = g.get("api_key")
    return key is not None and key.allows(permission)


def require(permission):
    """A 403 naming `permission` unless the signed-in key holds it, as the API answers."""
    if not can(permission):
        error(f"API key lacks the '{permission}' permission", 403)


def signed_in(permission=None):
    """Let the page run for a signed-in key holding `permission`; a GET without a session goes to sign-in."""
    def decorate(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            if g.api_key is None:
                if request.method == "GET":
                    return back_to("dashboard.sign_in_form")
                error("Not signed in, or the session ended: sign in again", 401)
            if permission:
                require(permission)
            return view(*args, **kwargs)

        return guarded

    return decorate


def call(view, *args):
    """Run an API view for the signed-in key: its permission, its validation and its answer."""
    require(view.required_permission)
    return view.__wrapped__(*args)


def back_to(endpoint, **values):
    """A 303 to a page (relative: never built from the untrusted Host header)."""
    return redirect(url_for(endpoint, **values), 303)


# --- signing in and out --------------------------------------------------------

@bp.get("/")
def home():
    if g.api_key is None:
        return back_to("dashboard.sign_in_form")
    for permission, endpoint in (("jobs:read", "dashboard.jobs_page"), ("history:read", "dashboard.history_page"),
                                 ("websites:read", "dashboard.websites_page"), ("keys:manage", "dashboard.keys_page")):
        if can(permission):
            return back_to(endpoint)
    return back_to("dashboard.settings_page")


@bp.get("/sign-in")
def sign_in_form():
    g.sign_in_token = secrets.token_urlsafe(32)
    response = current_app.make_response(render_template("sign_in.html", refused="refused" in request.args))
    response.set_cookie(SIGN_IN_COOKIE, g.sign_in_token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/sign-in")
    return response


@bp.post("/sign-in")
@limiter.limit(sign_in_limit, key_func=lambda: f"sign-in:{request.remote_addr}")
def sign_in():
    key, _reason = ApiKey.authenticate(request.form.get("key", "").strip())
    if key is None:  # back to the form, which says so: every 4xx of backhook is JSON, and this is for people
        return back_to("dashboard.sign_in_form", refused=1)
    response = back_to("dashboard.home")
    response.set_cookie(SESSION_COOKIE, DashboardSession.open(key), httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/")
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
    return response


@bp.post("/sign-out")
def sign_out():
    if g.secret:
        DashboardSession.close(g.secret)
    response = back_to("dashboard.sign_in_form")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- jobs and executions ----------------------------------------------------------

@bp.get("/jobs")
@signed_in("jobs:read")
def jobs_page(refused=None, status=200):
    return render_template("jobs.html", jobs=jobs.listed_jobs(), base_url=request.host_url.rstrip("/"),
                           refused=refused), status


# The job form: job_form turns its text into the values POST and PATCH /api/jobs take, and job_definition checks
# and writes them, as it does for the API and the command line. A refused field is shown beside its input.

@bp.get("/jobs/new")
@signed_in("jobs:write")
def new_job_form():
    return render_template("job_form.html", form=job_form.blank(), job=None)


@bp.post("/jobs/new")
@signed_in("jobs:write")
def create_job():
    form = job_form.submitted(request.form)
    try:
        job_definition.create(job_definition.define(job_form.values(form)))
    except job_definition.Invalid as invalid:
        return refused_form(form, invalid)
    return back_to("dashboard.jobs_page")


@bp.get("/jobs/<job_id>/edit")
@signed_in("jobs:write")
def edit_job_form(job_id):
    job = jobs.find_job(job_id)
    if job_definition.kind_of(job.source) == "command":  # revise would refuse whatever the form sent
        error(job_definition.COMMAND_LINE_ONLY, 403)
    return render_template("job_form.html", form=job_form.of_job(job), job=job)


@bp.post("/jobs/<job_id>/edit")
@signed_in("jobs:write")
def change_job(job_id):
    job = jobs.find_job(job_id)
    form = job_form.submitted(request.form)
    try:
        changes = job_definition.revise(job, job_form.values(form, job))
    except job_definition.Invalid as invalid:
        return refused_form(form, invalid, job)
    if not job_definition.change(job, changes):
        error("Job not found", 404)  # deleted meanwhile
    return back_to("dashboard.jobs_page")


def refused_form(form, invalid, job=None):
    """The form again with what was typed (never a source's password) and job_definition's message."""
    form.refuse(invalid)
    job_form.hide_secrets(form, job)
    return render_template("job_form.html", form=form, job=job), invalid.status


@bp.post("/jobs/<job_id>/delete")
@signed_in("jobs:write")
def delete_job(job_id):
    try:
        job = job_definition.delete(job_id, keep_artifacts=request.form.get("keep_artifacts") == "on")
    except job_definition.Invalid as refused:
        if not can("jobs:read"):
            error(refused.message, refused.status)
        return jobs_page(refused=refused.message, status=refused.status)  # the list, the refusal above it
    if job is None:
        error("Job not found", 404)
    return back_to("dashboard.jobs_page")


@bp.post("/jobs/<job_id>/run")
@signed_in()
def run_job(job_id):
    answer = call(jobs.run_job, job_id)
    return back_to("dashboard.execution_page", execution_id=answer["executionId"])


@bp.get("/executions/<execution_id>")
@signed_in("history:read")
def execution_page(execution_id):
    execution = executions.find_shown_execution(execution_id)
    return render_template("execution.html", execution=executions.execution_to_api(execution, include_logs=True),
                           drill=executions.drill_to_api(execution), finished=finished(execution),
                           restorable=(execution.type == ExecutionType.BACKUP
                                       and execution.status == ExecutionStatus.SUCCESS),
                           downloadable=execution.path is not None)


def finished(execution):
    """Ended, retention included: a backup is Success before its worker has applied retention."""
    return execution.status in FINISHED and execution.stage != Stage.APPLYING_RETENTION


@bp.get("/executions/<execution_id>/live")
@signed_in()
def execution_live(execution_id):
    """What the execution page's script polls: the API's answer with logs, on the session's key."""
    require(executions.show_execution.required_permission)
    return {"success": True, "data": executions.execution_to_api(executions.find_shown_execution(execution_id),
                                                                 include_logs=True)}


@bp.post("/executions/<execution_id>/cancel")
@signed_in()
def cancel_execution(execution_id):
    call(executions.cancel_execution, execution_id)
    return back_to("dashboard.execution_page", execution_id=execution_id)


@bp.post("/executions/<execution_id>/restore")
@signed_in("storage:restore")
def restore_execution(execution_id):
    target = "scratch" if request.form.get("target") == "scratch" else None
    try:
        restore = executions.queue_restore(execution_id, target, request.form.get("replace") == "on",
                                           data_dir=current_app.config["DATA_DIR"])
    except executions.RestoreRefused as refused:
        error(refused.message, refused.status)
    return back_to("dashboard.execution_page", execution_id=restore.id)


@bp.get("/executions/<execution_id>/artifact")
@signed_in()
def download_artifact(execution_id):
    return call(artifacts.download_artifact, execution_id)


@bp.get("/history")
@signed_in("history:read")
def history_page():
    """The API's history listing, with the same query arguments; an empty filter of the form is no filter."""
    given = {name: value for name, value in request.args.items(multi=True)}
    if any(value == "" for value in given.values()):
        return back_to("dashboard.history_page", **{name: value for name, value in given.items() if value})
    answer = call(executions.list_executions)
    return render_template("history.html", page=answer["data"], next=answer["next"], filters=given,
                           older={name: value for name, value in given.items() if name != "before"},
                           jobs=Job.select(Job.id, Job.name).order_by(Job.name),
                           statuses=list(ExecutionStatus), types=list(ExecutionType))


# --- websites -------------------------------------------------------------------

@bp.get("/websites")
@signed_in("websites:read")
def websites_page():
    after = request.args.get("after")
    sites = list(Website.listing(after, WEBSITES_PER_PAGE + 1))
    return render_template("websites.html", sites=sites[:WEBSITES_PER_PAGE],
                           next=sites[WEBSITES_PER_PAGE - 1].domain if len(sites) > WEBSITES_PER_PAGE else None)


@bp.get("/websites/<domain>")
@signed_in()
def website_page(domain):
    return render_template("website.html", site=call(websites.list_backups, domain)["data"])


# --- keys and settings ------------------------------------------------------------

@bp.get("/keys")
@signed_in("keys:manage")
def keys_page(created=None, secret=None):
    return render_template("keys.html", keys=ApiKey.select().order_by(ApiKey.created_at), permissions=PERMISSIONS,
                           created=created, secret=secret)


@bp.post("/keys")
@signed_in("keys:manage")
def create_key():
    name = request.form.get("name", "").strip()
    if not name or len(name) > KEY_NAME_MAX_CHARACTERS:
        error(f"A key needs a name of 1 to {KEY_NAME_MAX_CHARACTERS} characters", 400)
    chosen = request.form.getlist("permissions")
    if not chosen:
        error("A key needs at least one permission", 400)
    days = request.form.get("expires_in_days", "").strip()
    if days and not (days.isascii() and days.isdigit() and 1 <= int(days) <= MAX_KEY_DAYS):
        error(f"'expires_in_days' must be a whole number from 1 to {MAX_KEY_DAYS}, or empty for never", 400)
    try:
        key, secret = ApiKey.issue(name, chosen, int(days) if days else None)
    except ValueError as exc:
        error(str(exc), 400)
    return keys_page(created=key, secret=secret)  # shown this once: never stored, never redirected


@bp.post("/keys/<key_id>/<action>")
@signed_in("keys:manage")
def change_key(key_id, action):
    if action == "rotate":
        key, secret = ApiKey.rotate(key_id)
        if key is None:
            error("API key not found", 404)
        return keys_page(created=key, secret=secret)
    changes = {"enable": lambda: ApiKey.set_enabled(key_id, True),
               "disable": lambda: ApiKey.set_enabled(key_id, False),
               "delete": lambda: ApiKey.remove(key_id)}
    if action not in changes:
        error(f"Unknown action {action!r}: enable, disable, rotate or delete", 404)
    if not changes[action]():
        error("API key not found", 404)
    return back_to("dashboard.keys_page")


@bp.get("/settings")
@signed_in()
def settings_page():
    return render_template("settings.html", settings={key: Setting.read(key) for key in Setting.DEFAULTS})


@bp.post("/settings")
@signed_in("settings:write")
def change_settings():
    value = request.form.get("max_concurrent_jobs", "").strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 9 and int(value) >= 1):
        error("'max_concurrent_jobs' must be a whole number of at least 1", 400)
    Setting.write("max_concurrent_jobs", int(value))
    return back_to("dashboard.settings_page")
