"""What every blueprint shares: the JSON error, the auth decorator, the body parser, paging."""
import functools
import json
import re

from flask import current_app, g, request
from peewee import Tuple
from werkzeug.wsgi import get_content_length

MAX_BODY_BYTES = 1024 * 1024
# On every answer, errors included: each is JSON for programs, which no browser
# may sniff into HTML and no cache may keep (it can hold a job's state or a key's permissions).
API_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
# Neither database driver can encode half of a UTF-16 pair, so a body holding one is refused like a NUL.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    """Raised anywhere in a request; the app answers {"error": message} with `status`."""

    def __init__(self, message, status, headers=None):
        super().__init__(message)
        self.message, self.status, self.headers = message, status, headers or {}


def error(message, status, headers=None):
    raise ApiError(message, status, headers)


def require_permission(permission, open_when=None):
    """Let the view run only for a usable `Authorization: Bearer` key holding `permission`.

    `open_when` names a config flag that, when set, opens the view to every
    caller (BACKHOOK_METRICS_PUBLIC for /metrics).
    """
    from models import ApiKey

    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            if open_when is not None and current_app.config[open_when]:
                return view(*args, **kwargs)
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():  # schemes ignore case (RFC 7235)
                error("Missing API key: send 'Authorization: Bearer <key>'", 401)
            key, reason = ApiKey.authenticate(presented.strip())
            if key is None:
                error(reason, 401)
            if not key.allows(permission):
                error(f"API key lacks the '{permission}' permission", 403)
            g.api_key = key
            return view(*args, **kwargs)

        guarded.required_permission = permission
        return guarded

    return decorate


def json_object(optional=False):
    """The request body as a JSON object, or a 400; a 413 when a body without Content-Length is too large.

    With `optional`, an empty body is the empty object.
    """
    data = request_body()
    if optional and not data.strip():
        return {}
    if len(data) > MAX_BODY_BYTES:
        error("Request body is larger than 1 MiB", 413)
    try:
        # Strict, unlike json.loads with bytes: a raw lone surrogate is no valid UTF-8, -16 or -32.
        text = data.decode(json.detect_encoding(data))
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        body = None
    if not isinstance(body, dict):
        error("Request body must be a JSON object", 400)
    # No database text can hold U+0000 (see app.refuse_nul_characters) or a
    # lone surrogate. The strict decoding and parsing above refuse both raw, so
    # they can only come spelled as escapes: only then is the body searched.
    if "\\u0000" in text and any("\x00" in string for string in strings(body)):
        error("Request body must not contain NUL characters", 400)
    if ("\\ud" in text or "\\uD" in text) and any(LONE_SURROGATE.search(string) for string in strings(body)):
        error("Request body must not contain unpaired UTF-16 surrogates", 400)
    return body


def request_body():
    """The body's bytes. A chunked body is cut one byte past the limit (app.MAX_CONTENT_LENGTH).

    A body whose length is declared, and no larger than the limit (see
    app.refuse_large_bodies), is read straight from the server: werkzeug's
    stream wrapper is a webhook's cost worth saving (see bench/RESULTS.md,
    "Figures behind the code: database").
    """
    declared = get_content_length(request.environ)
    if declared is None:
        return request.get_data(cache=True)
    return request.environ["wsgi.input"].read(declared)


def strings(value):
    """Every string in a parsed JSON value, keys included; a stack, not recursion, however deep it nests."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def query_flag(name):
    return request.args.get(name, "").strip().lower() in ("1", "true", "yes")


# --- paging: ?limit=N and ?before=<id>, newest first by (created_at, id) ---

DEFAULT_PAGE_LIMIT = 100


def page_limit(maximum, default=DEFAULT_PAGE_LIMIT):
    """?limit= as a whole number from 1 to `maximum`, `default` without one; else a 400."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        error(f"'limit' must be a whole number from 1 to {maximum}", 400)
    return int(raw)


def page_cursor(find, what):
    """The row ?before= names, found by `find(value)`; None without one, a 400 naming `what` when it names none."""
    before = request.args.get("before")
    if before is None:
        return None
    # A NUL cannot be stored, so it names no row (and PostgreSQL would refuse the query).
    row = None if "\x00" in before else find(before)
    if row is None:
        error(f"'before' names no {what}", 400)
    return row


def newest_first(query, model, limit, cursor=None):
    """`query` newest first by (created_at, id), only rows strictly older than `cursor`, at most `limit`.

    The cursor is one row-value comparison, which both databases turn into a
    range of a (..., created_at, id) index: a deep page starts where it
    begins instead of walking every newer row.
    """
    if cursor is not None:
        query = query.where(Tuple(model.created_at, model.id) < Tuple(cursor.created_at, cursor.id))
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit)
