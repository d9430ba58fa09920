"""Every setting backhook reads from the environment, read in this one place."""
import grp
import os
from pathlib import Path

import limits

# Every file and directory backhook creates is its owner's alone (the database
# holds source passwords); each backhook process sets this umask as it starts.
UMASK = 0o077


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and says what it takes."""


def _flag(value):
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _number(env, name, default, kind=float):
    value = env.get(name, default)
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not {'a whole number' if kind is int else 'a number'}") from None


def _group_id(env, name):
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ConfigError(f"{name}={value!r}: there is no such group") from None


def _rate_limit(env, name, default):
    value = env.get(name, "").strip() or default
    try:
        items = limits.parse_many(value)
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(f"{name}={value!r} is not a usable rate limit: write one or more limits of at least 1 "
                          "in flask-limiter's notation, for example '300 per minute', '10/second' or "
                          "'5/second;300/minute'")
    return value


def load(environ=None):
    """Return the settings as a Flask-style mapping of upper-case keys."""
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("BACKHOOK_DATA_DIR", "./var")).resolve()
    return {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": env.get("BACKHOOK_DATABASE_URL") or f"sqlite:///{data_dir}/backhook.db",
        "WPFORT_BACKEND_TOKEN": env.get("WPFORT_BACKEND_TOKEN") or None,
        "RATELIMIT_STORAGE_URI": env.get("BACKHOOK_RATELIMIT_STORAGE_URI")
        or f"backhook+sqlite:///{data_dir}/ratelimit.db",
        # Keeps backhook's counters apart from other users of a shared Redis.
        "RATELIMIT_KEY_PREFIX": env.get("BACKHOOK_RATELIMIT_KEY_PREFIX", "backhook"),
        "RATELIMIT_ENABLED": _flag(env.get("BACKHOOK_RATELIMIT_ENABLED", "true")),
        # Per client IP, over all /api/ routes together.
        "RATELIMIT_READ": _rate_limit(env, "BACKHOOK_RATELIMIT_READ", "100 per minute"),  # GET and HEAD
        "RATELIMIT_WRITE": _rate_limit(env, "BACKHOOK_RATELIMIT_WRITE", "20 per minute"),  # POST, PUT, DELETE, PATCH
        # Per client IP, dashboard sign-in attempts (POST /sign-in), apart from the API's limits.
        "RATELIMIT_SIGN_IN": _rate_limit(env, "BACKHOOK_RATELIMIT_SIGN_IN", "10 per minute"),
        "TRUSTED_PROXIES": _number(env, "BACKHOOK_TRUSTED_PROXIES", "0", int),
        "LEASE_SECONDS": _number(env, "BACKHOOK_LEASE_SECONDS", "30"),
        # How long a stopping worker lets running backups finish before it
        # interrupts them and puts them back in the queue.
        "WORKER_GRACE_SECONDS": _number(env, "BACKHOOK_WORKER_GRACE_SECONDS", "30"),
        "WPSEC_POLL_AFTER": _number(env, "BACKHOOK_WPSEC_POLL_AFTER", "300"),
        # How long a request waits on a locked SQLite database before giving up.
        "DATABASE_BUSY_SECONDS": _number(env, "BACKHOOK_DATABASE_BUSY_SECONDS", "10"),
        # Artifacts are 0600; with a group (a name or a gid) they are 0640 and that group's.
        "ARTIFACT_GROUP": _group_id(env, "BACKHOOK_ARTIFACT_GROUP"),
        # How long a notification's endpoint may take to accept a connection, and then to answer.
        "NOTIFY_TIMEOUT_SECONDS": _number(env, "BACKHOOK_NOTIFY_TIMEOUT_SECONDS", "10"),
        # rclone's own config file, where an rclone: destination's remote is defined (rclone's default if unset).
        "RCLONE_CONFIG": env.get("RCLONE_CONFIG") or None,
        # GET /metrics without an API key, for a Prometheus that reaches backhook only over a private network.
        "METRICS_PUBLIC": _flag(env.get("BACKHOOK_METRICS_PUBLIC", "false")),
    }
