"""The manifest `<artifact>.json` beside every artifact, and the stock commands that restore an artifact.

An artifact must be restorable without backhook, by someone who has only the
file and a shell. Its manifest says what it holds (job, source without
credentials, time, sizes, SHA-256, compression, encryption) and, in
`restore`, the shell lines that restore it with stock tools. docs/restore.md
gives the same lines per source kind with placeholders, and
tests/test_restore_docs.py runs both, so the two cannot drift apart.

The lines use three placeholders: `$ARTIFACT` (the artifact's path),
`$SHA256` (its checksum) and `$TARGET` (where to restore), and a fourth,
`$IDENTITY` (the age identity file), for an encrypted artifact. In a manifest the
first two are filled in with the artifact's file name, so its lines run in
the artifact's directory, and only `TARGET` is left to set.
"""
import json
from importlib.metadata import version

from encryption import EXTENSION
from models import iso
from sources import shown_source, source_kind

FORMAT = 1  # bumped when a field changes meaning

# Each stock tool reads the artifact's stored bytes as its compression wrote them.
DECOMPRESS = {
    "zstd": 'zstd -dc "{artifact}"',
    "gzip": 'gzip -dc "{artifact}"',
    "none": 'cat "{artifact}"',
}

# An encrypted artifact goes through `age -d` first; the decompressor then reads its stdin.
DECRYPT = 'age -d -i "$IDENTITY" "{artifact}"'
DECOMPRESS_STDIN = {"zstd": "zstd -dc", "gzip": "gzip -dc", "none": None}
IDENTITY_LINE = ("# IDENTITY: the age identity file of one of the recipients (age-keygen's key.txt, or the SSH"
                 " private key whose public key the job encrypts to).")

CHECK = 'echo "{sha256}  {artifact}" | sha256sum -c -'

# The lines after the checksum check, per source kind; `{decompress}` writes the artifact's plain bytes to stdout.
RESTORE = {
    "sqlite": [
        "# TARGET: the SQLite database file to restore. Stop the programs that use it first.",
        CHECK,
        '{decompress} > "$TARGET.restoring"',
        'test "$(sqlite3 "$TARGET.restoring" "PRAGMA integrity_check")" = ok',
        "# The old database and its -wal and -shm files are kept aside, never overwritten.",
        "stamp=$(date -u +%Y%m%dT%H%M%SZ)",
        'for old in "$TARGET" "$TARGET-wal" "$TARGET-shm"; do'
        ' if [ -e "$old" ]; then mv "$old" "$old.before-restore-$stamp"; fi; done',
        'mv "$TARGET.restoring" "$TARGET"',
    ],
    "postgresql": [
        "# TARGET: the name of a new database to restore into; psql and createdb find the server"
        " as usual (PGHOST, PGPORT, PGUSER, ~/.pgpass).",
        CHECK,
        'createdb "$TARGET"',
        '{decompress} | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$TARGET"',
    ],
    "mysql": [
        "# TARGET: the name of a new database to restore into (the dump creates none); mariadb and"
        " mariadb-admin find the server as usual (~/.my.cnf, or -h, -P, -u and -p).",
        CHECK,
        'mariadb-admin create "$TARGET"',
        '{decompress} | mariadb --database="$TARGET"',
    ],
    "files": [
        "# TARGET: a new or empty directory to restore into. As root, tar restores owners by number too.",
        CHECK,
        'mkdir -p "$TARGET"',
        'test -z "$(ls -A "$TARGET")"  # refuses a directory that is not empty',
        '{decompress} | tar -x -p --numeric-owner --xattrs --acls -f - -C "$TARGET"',
    ],
    "command": [
        "# TARGET: the file to write the command's output into, byte for byte as it printed it.",
        CHECK,
        "set -o noclobber  # refuses to overwrite an existing file",
        '{decompress} > "$TARGET"',
    ],
}


def restore_commands(kind, compression, artifact="$ARTIFACT", sha256="$SHA256", encrypted=False):
    """The shell lines that restore an artifact of this source kind and compression, or [] for none.

    An artifact name never needs quoting (it is `<UTC stamp>-<id>.<ext>`), so it is written as given.
    An encrypted artifact's lines start by naming the identity (`$IDENTITY`), and decrypt with `age -d`
    in front of the decompressor, after the checksum check of the stored (encrypted) bytes.
    """
    if kind not in RESTORE:
        return []
    lines = RESTORE[kind]
    if encrypted:
        decompress = " | ".join(filter(None, [DECRYPT.format(artifact=artifact), DECOMPRESS_STDIN[compression]]))
        lines = [IDENTITY_LINE, *lines]
    else:
        decompress = DECOMPRESS[compression].format(artifact=artifact)
    return [line.format(artifact=artifact, sha256=sha256, decompress=decompress) for line in lines]


def manifest(job, execution_id, name, created_ms, raw_size, size, sha256, destinations=()):
    """The manifest of the artifact `name`, as a dict; it never holds a credential of the source.

    `destinations`: where its copies are stored, as users see them (describe(): no credentials).
    """
    kind = source_kind(job.source)
    recipients = job.recipient_keys() if name.endswith(EXTENSION) else []
    return {
        "format": FORMAT,
        "artifact": name,
        "jobId": job.id,
        "jobName": job.name,
        "sourceKind": kind,
        "source": shown_source(job.source),
        "destinations": list(destinations),
        "executionId": execution_id,
        "createdAt": iso(created_ms),
        "rawSize": raw_size,
        "size": size,
        "sha256": sha256,
        "compression": job.compression,
        # The age recipients, public keys only: who can decrypt this artifact; None when it is not encrypted.
        "encryption": {"format": "age", "recipients": recipients} if recipients else None,
        "backhookVersion": version("backhook"),
        "restore": restore_commands(kind, job.compression, artifact=name, sha256=sha256, encrypted=bool(recipients)),
    }


def encode(document):
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
