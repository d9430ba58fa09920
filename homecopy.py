"""WPSec backups come home: the file of a finished remote backup, streamed into the job's destinations.

Once a wpsec:// execution's backup list is synced and gives its backup a
`download_url` (remote_backups.finish_synced_executions), the attempt that
followed the remote backup (wpsec.follow_remote_backup) takes `dumper(run)`
as any backup takes its source's dumper (sources.py): the download is one
more source stream, through the same pipeline, compression, encryption,
hashing, verify, manifest and retention (backup.Run.store). It runs in the
worker, never in a webhook.

A download_url may be signed: messages show its scheme, host and path only
(remote_backups.shown_url), and the attempt scrubs its query from its logs.
The site's x-api-key goes only to the site's own origin.
"""
import re
import socket
from urllib.parse import unquote, urlsplit

import requests

import wpsec
from models import Backup, Website
from remote_backups import download_url, listed_backup, shown_url
from sources import CHUNK, BackupError, Dumper

# The site's archive keeps its own extension inside the artifact's name; anything else is `bin`.
ARCHIVE_SUFFIX = re.compile(r"\.((?:tar\.)?(?:gz|bz2|xz|zst)|tar|tgz|zip|sql|wpress|7z)$")
QUERY = re.compile(r"\?[^\s'\")]*")  # a URL's query string, as an exception's message may quote it


def dumper(run):
    """The Dumper that downloads the remote backup of `run`'s execution; BackupError when nothing can be.

    It tells the attempt's reporter to hide the URL's query and password.
    """
    backup = Backup.get_or_none(Backup.execution == run.execution.id)
    website = backup and Website.get_or_none(Website.id == backup.website_id)
    if website is None:
        raise BackupError("the remote backup of this execution is no longer recorded: nothing to copy home")
    entry = listed_backup(website.remote_backups, backup.backup_id)
    url = download_url(entry)
    if url is None:
        raise BackupError(f"the site's backup list no longer offers backup {backup.backup_id} for download")
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # an unclosed [ of an IPv6 address, a port that is not a number from 0 to 65535
        parts, usable = None, False
    if not usable:
        raise BackupError(f"the plugin's download_url for backup {backup.backup_id} is not an http:// or https:// "
                          f"URL ({shown_url(url)}): nothing was copied home")
    run.report.hide(*secrets_of(parts))
    size = listed_size(entry)
    run.log(f"copying backup {backup.backup_id} of {website.domain} home from {shown_url(url)}"
            + (f" ({size:,} bytes listed)" if size is not None else ""))
    return Dumper(suffix(parts.path), lambda _source, attempt, out: download(url, size, website, attempt, out),
                  lambda _source: size)


def secrets_of(parts):
    """What of a download URL (split) must never be shown: its query, as written and decoded, and any password."""
    found = [parts.query, unquote(parts.query)] if parts.query else []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    return found


def listed_size(entry):
    """The backup's size in bytes as the plugin lists it, or None when it gives none that is a whole number."""
    size = entry.get("size") if isinstance(entry, dict) else None
    if isinstance(size, str) and size.strip().isdigit():
        size = int(size)
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def suffix(path):
    found = ARCHIVE_SUFFIX.search(path.rsplit("/", 1)[-1].lower())
    return found.group(1) if found else "bin"


def same_origin(url, other):
    try:
        one, two = urlsplit(url), urlsplit(other or "")
        return (one.scheme, one.hostname, one.port) == (two.scheme, two.hostname, two.port)
    except ValueError:
        return False


def download(url, size, website, run, out):
    """Stream the file at `url` into `out` in CHUNK pieces; BackupError unless every listed byte arrived.

    A connection that fails, or an answer in RETRY_STATUSES, is retried as a
    WPSec call is, before any byte is written; a body cut short fails. A
    stop of the attempt `run` (a cancel, the timeout) cuts the connection, so
    that a site gone silent cannot hold the attempt for a read timeout.
    """
    where = shown_url(url)
    headers = {"Accept-Encoding": "identity"}  # the file's own bytes, as the plugin listed their size
    if same_origin(url, website.wpsec_url) and website.wpsec_api_key:
        headers["x-api-key"] = website.wpsec_api_key
    received = 0
    try:
        with wpsec.session() as site, site.get(url, headers=headers, stream=True, allow_redirects=True,
                                                timeout=(wpsec.CONNECT_TIMEOUT, wpsec.READ_TIMEOUT)) as response:
            if response.status_code != 200:
                raise BackupError(f"downloading {where} failed: HTTP {response.status_code}; nothing was copied home")
            with run.interrupting(lambda: cut(response)):
                for piece in response.iter_content(CHUNK):
                    out.write(piece)
                    received += len(piece)
    except requests.RequestException as exc:
        run.check()  # a connection cut by a stop is the stop, not a failed download
        reason = QUERY.sub("?…", str(exc))
        raise BackupError(f"downloading {where} failed: {type(exc).__name__}: {reason}; nothing was copied home") \
            from None
    run.check()  # a stop that cut the connection may look like the end of the file
    if size is not None and received != size:
        raise BackupError(f"downloading {where} ended after {received:,} of the {size:,} bytes the plugin lists: "
                          "the file is cut short; nothing was copied home")
    if received == 0:
        raise BackupError(f"downloading {where} gave an empty file; nothing was copied home")


def cut(response):
    """End a download blocked in a read, from another thread: closing its socket would not wake the read.

    The socket is the connection's, or, once http.client has let go of it
    (an answer with `Connection: close`), the one its reader still holds.
    """
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is None:
        reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the read has ended
