"""Backup sources: parsing the SRC forms of `backhook jobs add`, showing them safely, and dumping them.

Three functions own what the rest of backhook knows about a SRC string:
`parse_source` (every part validated, or SourceError saying what to write
instead), `shown_source` (the source as it may be shown anywhere) and
`source_secrets` (every spelling of its secrets, for scrubbing messages). The
last two never raise, so that a row stored before today's validation still
lists, and still never shows its password.
"""
import ipaddress
import os
import re
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote

from models import CONTROL_CHARACTERS, normalize_domain

SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "files": "files",
    "wpsec": "wpsec",
}
EXAMPLES = {
    "sqlite": "sqlite:///abs/path.db",
    "postgresql": "postgresql://user@host:5432/db",
    "mysql": "mysql://user@host:3306/db",
    "files": "files:///abs/dir",
    "wpsec": "wpsec://example.com",
}
PERCENT_ENCODING = ("percent-encode the user name and the password: '@' as %40, '/' as %2F, '?' as %3F, "
                    "'#' as %23, ':' as %3A and '%' as %25 (Python's urllib.parse.quote(password, safe=''))")


class BackupError(Exception):
    """A backup failed for a reason a person can act on; the message is shown as is."""


class SourceError(BackupError, ValueError):
    """A SRC that cannot be used. The message never holds any part of the source's credentials."""


@dataclass(frozen=True)
class Source:
    """A parsed SRC. Parts are percent-decoded; `options` are (name, value) query parameters."""
    kind: str
    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    path: str | None = None       # sqlite:, files:
    domain: str | None = None     # wpsec:
    command: str | None = None    # command:
    options: tuple = ()


# --- query parameters ------------------------------------------------------------
#
# PostgreSQL's go to pg_dump as they are, in the connection URI (libpq's own
# names). MySQL's are mapped to mariadb-dump's flags. `password` is taken out
# and handed over through the environment. Names here are the known ones;
# anything else is refused when the job is added.

PG_OPTIONS = {
    "hostaddr", "passfile", "require_auth", "channel_binding", "connect_timeout", "client_encoding",
    "options", "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "gssencmode", "sslmode", "sslnegotiation",
    "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir",
    "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib",
    "gssdelegation", "service", "target_session_attrs", "load_balance_hosts", "password",
}
PG_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
}
PG_NUMBERS = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
              "tcp_user_timeout", "sslcompression", "sslsni"}
PG_PATHS = {"passfile", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslcrldir"}
# libpq reads these from no environment variable, so they reach pg_dump through a private service file.
PG_SERVICE_FILE_ONLY = {"sslpassword"}

MYSQL_FLAGS = {  # query parameter -> mariadb-dump flag
    "ssl": "--ssl", "ssl-ca": "--ssl-ca", "ssl-capath": "--ssl-capath", "ssl-cert": "--ssl-cert",
    "ssl-key": "--ssl-key", "ssl-cipher": "--ssl-cipher", "ssl-crl": "--ssl-crl",
    "ssl-crlpath": "--ssl-crlpath", "tls-version": "--tls-version",
    "ssl-verify-server-cert": "--ssl-verify-server-cert", "charset": "--default-character-set",
    "compress": "--compress",
}
MYSQL_BOOLEANS = {"ssl", "ssl-verify-server-cert", "compress"}
MYSQL_PATHS = {"ssl-ca", "ssl-capath", "ssl-cert", "ssl-key", "ssl-crl", "ssl-crlpath"}
# mariadb-dump cannot require TLS without checking the server's certificate, so
# REQUIRED is as strict as VERIFY_IDENTITY rather than quietly weaker.
MYSQL_SSL_MODES = {
    "DISABLED": ["--ssl=0"],
    "PREFERRED": ["--ssl=1"],
    "REQUIRED": ["--ssl=1", "--ssl-verify-server-cert=1"],
    "VERIFY_CA": ["--ssl=1", "--ssl-verify-server-cert=1"],
    "VERIFY_IDENTITY": ["--ssl=1", "--ssl-verify-server-cert=1"],
}
MYSQL_OPTIONS = set(MYSQL_FLAGS) | {"ssl-mode", "password"}
BOOLEANS = {"1": "1", "true": "1", "yes": "1", "on": "1", "0": "0", "false": "0", "no": "0", "off": "0"}

KNOWN_OPTIONS = {"postgresql": PG_OPTIONS, "mysql": MYSQL_OPTIONS}
# Query parameters whose value is a credential, or says where one is: never shown.
SECRET_OPTIONS = {"password", "sslpassword", "sslkey", "ssl-key"}


# --- parsing ---------------------------------------------------------------------------

URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
                 r"(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?", re.S)
HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_source(text):
    """The parsed SRC, every part checked; SourceError says what is wrong and how to write it."""
    if text.startswith("command:"):
        if not text[len("command:"):].strip():
            raise SourceError("command: needs a shell command after the colon")
        return Source("command", command=text[len("command:"):])
    scheme = text.split(":", 1)[0]
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        raise SourceError(f"unknown source {scheme!r}; use sqlite:///, postgresql://, mysql://, files:///, "
                          "wpsec:// or command:")
    match = URL.fullmatch(text)
    if match is None:
        raise SourceError(f"{scheme}: write it as {EXAMPLES[kind]}")
    if CONTROL_CHARACTERS.search(text):
        raise SourceError(f"{scheme}: control characters (a newline, a tab) must be percent-encoded")
    return PARSERS[kind](kind, scheme, match)


def _decoded(text, what, scheme):
    if BAD_PERCENT.search(text):
        raise SourceError(f"{scheme}: a '%' in the {what} must be written %25")
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise SourceError(f"{scheme}: the {what} is not valid percent-encoded UTF-8") from None
    if "\0" in value:
        raise SourceError(f"{scheme}: the {what} holds a NUL character")
    return value


def _local(kind, scheme, match):
    if match["authority"] or not match["path"].startswith("/"):
        raise SourceError(f"{scheme}: needs an absolute path, as in {EXAMPLES[kind]}")
    if match["query"] is not None or match["fragment"] is not None:
        raise SourceError(f"{scheme}: takes no options; a '?' in the path is written %3F and a '#' %23")
    return Source(kind, path="/" + _decoded(match["path"], "path", scheme).lstrip("/"))


def _wpsec(kind, scheme, match):
    domain = normalize_domain(_decoded(match["authority"], "domain", scheme))
    if (match["path"] not in ("", "/") or match["query"] is not None or match["fragment"] is not None
            or not HOST_NAME.fullmatch(domain)):
        raise SourceError(f"{scheme}: needs a registered website's domain and nothing else, as in {EXAMPLES[kind]}")
    return Source(kind, domain=domain)


def _server(kind, scheme, match):
    example = EXAMPLES[kind]
    # A password holding an unencoded '/', '?', '#' or '@' makes every URL
    # parser cut the source somewhere else; refuse rather than guess.
    if "@" in match["path"] + (match["query"] or "") or match["fragment"] is not None \
            or match["authority"].count("@") > 1:
        raise SourceError(f"{scheme}: the credentials are ambiguous; {PERCENT_ENCODING}")
    userinfo, at, hostport = match["authority"].rpartition("@")
    user, colon, password = userinfo.partition(":")
    user = _decoded(user, "user name", scheme) or None
    password = _decoded(password, "password", scheme) or None
    if at and not user:
        raise SourceError(f"{scheme}: a user name goes before the '@', as in {example}")
    host, port = _host_and_port(hostport, scheme, example)
    if "/" in match["path"][1:]:
        raise SourceError(f"{scheme}: the database name is the one part after the host; a '/' in it is written %2F")
    database = _decoded(match["path"][1:], "database name", scheme)
    if not database:
        raise SourceError(f"{scheme}: needs a database after the host, as in {example}")
    if kind == "postgresql" and len(database.encode()) > 63:
        raise SourceError(f"{scheme}: a database name has at most 63 bytes")
    if kind == "mysql" and len(database) > 64:
        raise SourceError(f"{scheme}: a database name has at most 64 characters")
    options = _options(kind, scheme, match["query"])
    given = dict(options)
    if "password" in given:
        if password is not None:
            raise SourceError(f"{scheme}: give the password once, in the URL or as ?password=, not both")
        password = given["password"]
        options = tuple(option for option in options if option[0] != "password")
    if kind == "postgresql" and PG_SERVICE_FILE_ONLY & set(given) and "service" in given:
        raise SourceError(f"{scheme}: sslpassword cannot be combined with service; put it in the service's entry")
    return Source(kind, user=user, password=password, host=host, port=port, database=database, options=options)


def _host_and_port(hostport, scheme, example):
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(host if bracket else "")
        except ValueError:
            raise SourceError(f"{scheme}: an IPv6 address goes in brackets, as in {scheme}://user@[::1]/db") from None
        if port and not port.startswith(":"):
            raise SourceError(f"{scheme}: a port follows the host after a ':', as in {example}")
        port = port[1:] if port else None
    else:
        host, colon, port = hostport.partition(":")
        port = port if colon else None
        if not host:
            raise SourceError(f"{scheme}: needs a host, as in {example}")
        if not HOST_NAME.fullmatch(host):
            raise SourceError(f"{scheme}: the host must be a host name or an IP address ([…] for IPv6), "
                              f"as in {example}")
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise SourceError(f"{scheme}: the port must be a number from 1 to 65535, as in {example}")
    return host, int(port)


def _options(kind, scheme, query):
    """The query parameters as ((name, value), ...), each known and valid for this kind."""
    known, options = KNOWN_OPTIONS[kind], []
    for item in (query or "").split("&"):
        if not item:
            continue
        name, equals, value = item.partition("=")
        name = _decoded(name, "option name", scheme)
        if kind == "mysql":
            name = name.lower().replace("_", "-")  # ssl_ca and ssl-ca alike, as in my.cnf
        if name not in known:
            raise SourceError(f"{scheme}: unknown option {name!r}; the known ones are {', '.join(sorted(known))}")
        value = _decoded(value, f"value of {name}", scheme)
        if not value:
            raise SourceError(f"{scheme}: the option {name} needs a value, as in ?{name}=…")
        if name in dict(options):
            raise SourceError(f"{scheme}: the option {name} is given twice")
        options.append((name, _option_value(kind, scheme, name, value)))
    return tuple(options)


def _option_value(kind, scheme, name, value):
    choices = PG_CHOICES.get(name) if kind == "postgresql" else None
    if kind == "mysql" and name == "ssl-mode":
        choices, value = tuple(MYSQL_SSL_MODES), value.upper()
    if kind == "mysql" and name in MYSQL_BOOLEANS:
        if value.lower() not in BOOLEANS:
            raise SourceError(f"{scheme}: {name} is true or false")
        return BOOLEANS[value.lower()]
    if choices and value not in choices:
        raise SourceError(f"{scheme}: {name} is one of {', '.join(choices)}")
    if kind == "postgresql" and name in PG_NUMBERS and not (value.isascii() and value.isdigit()):
        raise SourceError(f"{scheme}: {name} is a whole number")
    paths = PG_PATHS if kind == "postgresql" else MYSQL_PATHS
    if name in paths and not value.startswith("/") and not (name == "sslrootcert" and value == "system"):
        raise SourceError(f"{scheme}: {name} needs an absolute path")
    return value


PARSERS = {"sqlite": _local, "files": _local, "wpsec": _wpsec, "postgresql": _server, "mysql": _server}


def source_kind(text):
    """The kind of a valid SRC string, or SourceError saying what is wrong with it."""
    return parse_source(text).kind


def wpsec_domain(text):
    """The normalised domain of a wpsec:// source (`wpsec://Example.com/` is example.com)."""
    return parse_source(text).domain


# --- showing ---------------------------------------------------------------------------

def is_secret_option(name):
    """Whether a query parameter's value is a credential, or says where one is."""
    return unquote(name).lower().replace("_", "-") in SECRET_OPTIONS


def shown_source(text):
    """The source as it may be shown anywhere (API, CLI, logs, errors): no password, no secret option.

    Never raises: a stored row that no longer parses is shown with everything
    up to its last '@' and its whole query string hidden.
    """
    if text.startswith("command:"):
        return "command"  # a command line may hold anything; it is shown to nobody
    match = URL.fullmatch(text)
    if match is None:
        return f"{text.split(':', 1)[0][:20]}:…"
    scheme, authority = match["scheme"], match["authority"]
    try:
        parse_source(text)
    except SourceError:
        # No URL parser takes what follows the last '@' for credentials; a query may hold anything.
        rest = text.partition("://")[2]
        hidden, rest = ("***@", rest.rsplit("@", 1)[1]) if "@" in rest else ("", rest)
        kept = re.split("[?#]", rest, maxsplit=1)
        return f"{scheme}://{hidden}{kept[0]}" + ("?…" if len(kept) > 1 else "")
    userinfo, at, hostport = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    shown = f"{scheme}://{user}{':***' if password else colon}{at}{hostport}{match['path']}"
    if match["query"] is None:
        return shown
    items = [f"{item.partition('=')[0]}=***" if is_secret_option(item.partition("=")[0]) else item
             for item in match["query"].split("&")]
    return f"{shown}?{'&'.join(items)}"


def describe_source(text):
    """The fields an API client may see: the kind, and the source as it may be shown. Never raises."""
    try:
        kind = source_kind(text)
    except SourceError:
        kind = "command" if text.startswith("command:") else SCHEMES.get(text.split(":", 1)[0].lower(), "unknown")
    return {"sourceKind": kind, "source": shown_source(text)}


QUERY_ITEM = re.compile(r"[?&]([^=&#]*)=([^&#]*)")


def source_secrets(text):
    """Every spelling of every secret of a source that a message could carry, longest first. Never raises.

    That is its password and its secret options, as written and decoded; for a
    stored row that no longer parses, whatever lies between the first ':' and
    the last '@' too.
    """
    if text.startswith("command:"):
        return []
    found = {value for name, value in QUERY_ITEM.findall(text) if is_secret_option(name)}
    rest = text.partition("://")[2]
    if "@" in rest:
        found.add(rest.rsplit("@", 1)[0].partition(":")[2])
    try:
        source = parse_source(text)
    except SourceError:
        pass
    else:
        found |= {source.password or ""} | {value for name, value in source.options if name in SECRET_OPTIONS}
    spellings = set()
    for secret in found:
        spellings |= {secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")}
    return sorted((secret for secret in spellings if secret), key=len, reverse=True)


# --- dumping: each source kind writes its backup's bytes into the pipeline ---
#
# A dumper is `dump(source, run, out)`. `run` is the running attempt
# (backup.Run): it spawns tools in their own process group so that cancel and
# timeout can kill the whole tree, raises Stopped from `run.check()` once the
# attempt must stop, and logs. `out.write(chunk)` hands the bytes to the
# attempt's pipeline (pipeline.py), which compresses, hashes and stores them.
# Everything streams in CHUNK-sized pieces, so memory stays bounded whatever
# the size of the source.

CHUNK = 1024 * 1024
SQLITE_PAGES_PER_STEP = 4096


@dataclass(frozen=True)
class Dumper:
    suffix: str                                   # the artifact's inner extension
    dump: Callable                                # dump(source, run, out)
    estimate: Callable = lambda source: None      # expected bytes, for progress only


def pump(stream, out):
    """Copy a binary stream into `out`, chunk by chunk, until EOF."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        out.write(chunk)


def run_tool(run, argv, out, env=None, warning_statuses=()):
    """Stream a tool's stdout into `out`; fail with its stderr if it fails.

    An exit status in `warning_statuses` does not fail the backup; it is logged as a warning.
    """
    process = run.spawn(argv, env=env)
    with process.stdout:
        pump(process.stdout, out)
    run.wait_tool(process, warning_statuses)


def local_path(source):
    """The absolute path of a sqlite:/// or files:/// source."""
    return parse_source(source).path


def dump_sqlite(source, run, out):
    """Snapshot with SQLite's online backup API, then stream the snapshot.

    The source connection holds one read transaction across all backup
    steps, so the snapshot is a single consistent state even while other
    processes keep writing (a step-wise backup without it restarts on every
    foreign write and may never finish). Steps keep the copy interruptible.
    """
    path = local_path(source)
    if not os.path.isfile(path):
        raise BackupError(f"SQLite database {path} does not exist")
    snapshot = run.scratch_path("snapshot")
    try:
        source_db = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
        try:
            source_db.execute("BEGIN")
            source_db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            target_db = sqlite3.connect(snapshot)
            try:
                source_db.backup(target_db, pages=SQLITE_PAGES_PER_STEP,
                                 progress=lambda status, remaining, total: run.check())
            finally:
                target_db.close()
            source_db.execute("COMMIT")
        finally:
            source_db.close()
        run.log(f"snapshot of {path} taken: {os.path.getsize(snapshot):,} bytes")
        with open(snapshot, "rb") as stream:
            pump(stream, out)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {path} failed: {exc}") from exc
    finally:
        Path(snapshot).unlink(missing_ok=True)


def sqlite_size(source):
    try:
        return os.path.getsize(local_path(source))
    except OSError:
        return None


def postgresql_uri(source):
    """The libpq connection URI pg_dump gets: every option of the source, without its password."""
    userinfo = f"{quote(source.user, safe='')}@" if source.user else ""
    host = f"[{source.host}]" if ":" in source.host else source.host
    port = f":{source.port}" if source.port else ""
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='/')}" for name, value in source.options
                     if name not in PG_SERVICE_FILE_ONLY)
    return f"postgresql://{userinfo}{host}{port}/{quote(source.database, safe='')}" + (f"?{query}" if query else "")


@contextmanager
def postgresql_environment(source):
    """The environment a libpq tool (pg_dump, psql) connects with: the password and the hidden options.

    The password goes through the environment, and options that libpq reads
    from no environment variable through a private service file that exists
    only inside the `with`, so that no secret is ever on a command line.
    """
    env = {"PGCONNECT_TIMEOUT": "15"}
    if source.password:
        env["PGPASSWORD"] = source.password
    hidden = [(name, value) for name, value in source.options if name in PG_SERVICE_FILE_ONLY]
    with tempfile.TemporaryDirectory(prefix="backhook-pg-") as private:
        if hidden:
            service_file = os.path.join(private, "pg_service.conf")
            with open(os.open(service_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
                stream.write("[backhook]\n" + "".join(f"{name}={value}\n" for name, value in hidden))
            env.update(PGSERVICEFILE=service_file, PGSERVICE="backhook")
        yield env


def dump_postgresql(source, run, out):
    """Plain SQL from pg_dump, restorable with psql."""
    source = parse_source(source)
    with postgresql_environment(source) as env:
        run_tool(run, ["pg_dump", "--no-password", f"--dbname={postgresql_uri(source)}"], out, env)


def mysql_flags(options):
    """mariadb-dump's flags for a source's query parameters."""
    flags = []
    for name, value in options:
        if name == "ssl-mode":
            flags += MYSQL_SSL_MODES[value]
        else:
            flags.append(f"{MYSQL_FLAGS[name]}={value}")
    return flags


def mysql_connection(source):
    """(arguments, environment) that connect a MariaDB/MySQL client tool to the source's server.

    The arguments are the source's options, host, port and user; the password
    goes through the environment, never on the command line.
    """
    argv = [*mysql_flags(source.options), "--host", source.host]
    if source.port:
        argv += ["--port", str(source.port)]
    if source.user:
        argv += ["--user", source.user]
    return argv, ({"MYSQL_PWD": source.password} if source.password else {})


def dump_mysql(source, run, out):
    """mariadb-dump (or mysqldump) in one consistent transaction, with routines and triggers.

    Not events: `--events` needs the EVENT privilege, and a backup user
    without it would see every backup fail.
    """
    source = parse_source(source)
    tool = "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"
    connection, env = mysql_connection(source)
    run_tool(run, [tool, "--single-transaction", "--quick", "--routines", "--triggers", *connection,
                   "--", source.database], out, env)


TAR_WARNING = 1  # GNU tar: some files changed while being read; the archive holds what was read


def dump_files(source, run, out):
    """A tar stream of the directory, by the tar binary: faster than tarfile on many small files.

    Extended attributes and ACLs are kept. A live directory makes tar exit 1
    ("file changed as we read it"): a warning, not a failure; 2 is fatal.
    """
    directory = local_path(source)
    if not os.path.isdir(directory):
        raise BackupError(f"directory {directory} does not exist")
    job = run.job
    argv = ["tar", "--create", "--file=-", "--xattrs", "--acls",
            *(["--one-file-system"] if job.one_file_system else []),
            *(f"--exclude={pattern}" for pattern in job.exclude_patterns()),
            "--directory", directory, "."]
    run_tool(run, argv, out, warning_statuses=(TAR_WARNING,))


def files_size(source):
    total = 0
    for root, _dirs, names in os.walk(local_path(source)):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def shell_argv(command, run, what):
    """How an admin-defined shell command runs: bash with pipefail, or /bin/sh with a warning.

    This is the one place a shell runs. The command (a `command:` source, or
    its `--restore-command`) comes only from `backhook jobs add` on the
    server's own command line, never over HTTP, so whoever defines it can
    already run any command. With pipefail, a failing stage of a pipeline
    (`pg_dumpall | gzip`) fails the `what` (backup, restore).
    """
    bash = shutil.which("bash")
    if bash:
        return [bash, "-o", "pipefail", "-c", command]
    run.log(f"bash is not installed: running the command with /bin/sh, where only a pipeline's last "
            f"stage decides whether the {what} fails", "warning")
    return ["/bin/sh", "-c", command]


def dump_command(source, run, out):
    """The stdout of an admin-defined shell command (see shell_argv)."""
    run_tool(run, shell_argv(parse_source(source).command, run, "backup"), out)


# wpsec:// is not a dump: the remote plugin makes the backup. It gets its own
# flow in the worker instead of an entry here.
DUMPERS = {
    "sqlite": Dumper("db", dump_sqlite, sqlite_size),
    "postgresql": Dumper("sql", dump_postgresql),
    "mysql": Dumper("sql", dump_mysql),
    "files": Dumper("tar", dump_files, files_size),
    "command": Dumper("out", dump_command),
}
