"""The application factory: configuration, database, errors, rate limits, blueprints."""
import logging

from flask import Flask, jsonify, request
from limits.errors import StorageError
from peewee import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import get_content_length

import config
from database import open_database
from ratelimit import init_limiter, limit_api, limiter, retry_after_seconds
from routes import (API_HEADERS, MAX_BODY_BYTES, ApiError, artifacts, dashboard, error, executions, health, jobs,
                    metrics, openapi, webhooks, websites)

log = logging.getLogger("backhook")


def create_app(overrides=None):
    app = Flask(__name__)
    app.config.from_mapping(config.load())
    app.config.update(overrides or {})
    # One byte past the limit: werkzeug ends a chunked body at MAX_CONTENT_LENGTH
    # without an error, so json_object reads one byte more to tell "over" from "at".
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.json.sort_keys = False
    # No redirects: werkzeug builds their Location from the untrusted Host
    # header, and its OPTIONS answer is an empty HTML page. A doubled slash is
    # a JSON 404, and OPTIONS a JSON 405 naming the allowed methods.
    app.url_map.merge_slashes = False
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    app.wsgi_app = send_api_headers(app.wsgi_app)
    if app.config["TRUSTED_PROXIES"]:
        # X-Forwarded-Proto and -Host too: the dashboard's cookie is Secure behind an HTTPS proxy, and its
        # trigger panel names the URL clients use.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    # Peewee opens the connection on first use and keeps it for the process's
    # life: reconnecting would be the larger part of each request.
    open_database(app.config["DATABASE_URL"], app.config["DATABASE_BUSY_SECONDS"])
    refuse_large_bodies_early(app)
    refuse_nul_characters(app)
    register_error_handlers(app)

    for blueprint in (jobs.bp, executions.bp, artifacts.bp, websites.bp, openapi.bp):
        limit_api(blueprint)
        app.register_blueprint(blueprint)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)  # not under /api/: Prometheus scrapes at its own steady pace
    app.register_blueprint(dashboard.bp)  # not under /api/: only its sign-in is rate limited
    app.register_blueprint(limiter.exempt(webhooks.bp))  # not under /api/: never rate limited
    init_limiter(app)
    return app


def send_api_headers(wsgi_app):
    """Add API_HEADERS to every answer, errors included, at the cost of one list extend."""
    def with_api_headers(environ, start_response):
        def start(status, headers, exc_info=None):
            headers.extend(API_HEADERS)
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return with_api_headers


def refuse_large_bodies_early(app):
    @app.before_request
    def refuse_large_bodies():
        # From the environ: building request.headers would be most of this hook's cost.
        if (get_content_length(request.environ) or 0) > MAX_BODY_BYTES:
            error("Request body is larger than 1 MiB", 413)


def refuse_nul_characters(app):
    # No stored text can hold U+0000 (PostgreSQL refuses it outright), so an
    # id with one names nothing: a clean 404, not the driver's error as a 500.
    @app.before_request
    def refuse_nul():
        if "\x00" in request.path:
            error("Not found: the URL contains a NUL character", 404)


def register_error_handlers(app):
    @app.errorhandler(ApiError)
    def api_error(exc):
        return jsonify(error=exc.message), exc.status, exc.headers

    @app.errorhandler(429)
    def rate_limited(exc):
        return jsonify(error=f"Rate limit exceeded: {exc.description}"), 429, {
            "Retry-After": str(retry_after_seconds())}

    @app.errorhandler(HTTPException)
    def http_error(exc):
        response = exc.get_response()
        response.data = app.json.dumps({"error": exc.description or exc.name})
        response.content_type = "application/json"
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)  # a PostgreSQL connection lost mid-transaction
    @app.errorhandler(StorageError)  # the rate-limit store: ratelimit.db locked, Redis unreachable
    def database_busy(exc):
        log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        return jsonify(error="Database is busy, retry shortly"), 503, {"Retry-After": "1"}

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error during %s %s", request.method, request.path)
        return jsonify(error="Internal server error"), 500
