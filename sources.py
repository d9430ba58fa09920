"""Backup sources: parsing the SRC forms of `backhook jobs add`, and showing them safely."""
from urllib.parse import urlparse

SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "files": "files",
    "wpsec": "wpsec",
}


def source_kind(source):
    """The kind of a SRC string, or ValueError saying what is wrong with it."""
    if source.startswith("command:"):
        if not source[len("command:"):].strip():
            raise ValueError("command: needs a shell command after the colon")
        return "command"
    parsed = urlparse(source)
    kind = SCHEMES.get(parsed.scheme)
    if kind is None:
        raise ValueError(
            f"unknown source {source.split(':', 1)[0]!r}; use sqlite:///, postgresql://, "
            "mysql://, files:///, wpsec:// or command:")
    if kind in ("sqlite", "files"):
        if parsed.netloc or not parsed.path.startswith("/"):
            raise ValueError(f"{parsed.scheme}: needs an absolute path, as in {parsed.scheme}:///abs/path")
    elif kind == "wpsec":
        if not parsed.hostname:
            raise ValueError("wpsec: needs a domain, as in wpsec://example.com")
    elif not parsed.hostname or not parsed.path.strip("/"):
        raise ValueError(f"{parsed.scheme}: needs a host and a database, as in {parsed.scheme}://user@host:port/db")
    return kind


def describe_source(source):
    """The fields an API client may see: the kind, and the source without secrets."""
    kind = source_kind(source)
    if kind == "command":
        return {"sourceKind": kind, "source": "command"}
    without_query = source.split("?", 1)[0]
    parsed = urlparse(without_query)
    if parsed.password is None:
        return {"sourceKind": kind, "source": without_query}
    netloc = f"{parsed.username}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return {"sourceKind": kind, "source": parsed._replace(netloc=netloc).geturl()}
