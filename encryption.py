"""age encryption of artifacts: the job's recipients, the encryptor a backup writes through, the decryptor a restore reads through.

A job's recipients are public keys only: age X25519 keys (`age1…`) and SSH
public keys (`ssh-ed25519 …`, `ssh-rsa …`), checked when the job is added
(`parse_recipients`). Anything that looks like a private key is refused: the
server must never be able to read its own encrypted backups.

Encryption and decryption run Debian's `age` binary as a child process of
the attempt, fed and drained by a thread: age encrypts in a process of its
own, on the core zstd leaves, while pyrage's `encrypt_io` would pull every
chunk through Python callbacks holding the GIL (bench/RESULTS.md, "age").
The artifact is the standard age format, so the stock `age -d` reads it.

The identity that decrypts is never stored: a restore reads it from the file
that `BACKHOOK_AGE_IDENTITY_FILE` names in the worker's environment, or that
`backhook restore --identity-file` names in the CLI's own process.
"""
import base64
import os
import re
import struct
import subprocess
import threading

from pipeline import Readable
from sources import CHUNK, BackupError, SourceError
from tools import end_tool, wait_for_tool

EXTENSION = ".age"
IDENTITY_VARIABLE = "BACKHOOK_AGE_IDENTITY_FILE"
SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
PRIVATE_KEY = re.compile(r"AGE-SECRET-KEY-|-----BEGIN [A-Z0-9 ]*PRIVATE KEY|AGE-PLUGIN-[A-Z0-9]+-1", re.I)
PRIVATE_KEY_MESSAGE = ("looks like a private key: only public keys (age1…, ssh-ed25519 …, ssh-rsa …) belong on "
                       "the server; keep the private key off it, where restores are decided")


# --- recipients --------------------------------------------------------------------------

BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32_polymod(values):
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    return checksum


def age_key_bytes(text):
    """The 32 key bytes of an `age1…` recipient, or None when its bech32 encoding or checksum is wrong."""
    if text != text.lower() or not text.startswith("age1"):
        return None
    data = text[4:]
    if any(char not in BECH32_CHARSET for char in data) or len(data) < 7:
        return None
    values = [BECH32_CHARSET.index(char) for char in data]
    expanded = [ord(char) >> 5 for char in "age"] + [0] + [ord(char) & 31 for char in "age"]
    if bech32_polymod(expanded + values) != 1:
        return None
    accumulator, bits, key = 0, 0, bytearray()
    for value in values[:-6]:
        accumulator, bits = accumulator << 5 | value, bits + 5
        if bits >= 8:
            bits -= 8
            key.append(accumulator >> bits & 0xFF)
    return bytes(key) if len(key) == 32 else None


def ssh_fields(blob):
    """The length-prefixed fields of an SSH public key blob (RFC 4253), or None when it is malformed."""
    fields, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            return None
        (length,) = struct.unpack(">I", blob[offset:offset + 4])
        offset += 4
        if offset + length > len(blob):
            return None
        fields.append(blob[offset:offset + length])
        offset += length
    return fields


def ssh_key_problem(kind, encoded):
    try:
        blob = base64.b64decode(encoded, validate=True)
    except ValueError:
        return "its key is not base64"
    fields = ssh_fields(blob)
    if not fields or fields[0] != kind.encode():
        return f"its key is not an {kind} public key"
    if kind == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32):
        return "its ed25519 key is not 32 bytes"
    if kind == "ssh-rsa" and (len(fields) != 3 or len(fields[2]) < 256):
        return "its RSA key is malformed or shorter than 2048 bits"
    return None


def recipient_problem(text):
    """Why `text` is not a public key age can encrypt to, or None."""
    if PRIVATE_KEY.search(text):
        return PRIVATE_KEY_MESSAGE
    words = text.split()
    if not words:
        return "it is empty"
    if words[0].startswith("age1"):
        if len(words) != 1:
            return "an age recipient is one word, age1… (comments go on lines of their own, after #)"
        return None if age_key_bytes(words[0]) else "it is not a valid age1… key (bad encoding or checksum)"
    if words[0] in SSH_TYPES:
        if len(words) < 2:
            return f"an {words[0]} line needs its base64 key"
        return ssh_key_problem(words[0], words[1])
    return "it is neither an age1… key nor an ssh-ed25519 or ssh-rsa public key line"


def parse_recipients(encrypt_to=(), files=()):
    """The recipients of `--encrypt-to` values and `--encrypt-to-file` files, checked; SourceError names the bad one.

    A file is read as `age -R` reads it: one recipient per line, blank lines
    and lines starting with `#` ignored. Duplicates count once.
    """
    found = []
    for value in encrypt_to:
        problem = recipient_problem(value)
        if problem:
            raise SourceError(f"--encrypt-to {shown(value)}: {problem}")
        found.append(" ".join(value.split()))
    for path in files:
        try:
            with open(path, encoding="utf-8") as stream:
                lines = stream.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"--encrypt-to-file {path}: cannot read it: {exc}") from None
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            problem = recipient_problem(line)
            if problem:
                raise SourceError(f"--encrypt-to-file {path}, line {number} ({shown(line)}): {problem}")
            found.append(" ".join(line.split()))
        if not any(line.strip() and not line.strip().startswith("#") for line in lines):
            raise SourceError(f"--encrypt-to-file {path}: it holds no recipient")
    return list(dict.fromkeys(found))


def shown(text):
    """A recipient as an error message quotes it: never a private key, and never more than its start."""
    if PRIVATE_KEY.search(text):
        return "(not shown)"
    return text if len(text) <= 40 else text[:37] + "…"


# --- the encryptor -----------------------------------------------------------------------

class AgeStream:
    """One age process, fed by `write()` (or a feeder thread) and drained by a thread of its own (or `read()`)."""

    def __init__(self, argv, spawn, what):
        self.what, self.failure, self.status, self.stderr = what, None, None, ""
        self.child = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def failed(self, exc):
        if self.failure is None:
            self.failure = exc

    def ended(self):
        """Wait for age (once) and release it; BackupError with age's own message when it failed."""
        if self.status is None:
            self.status, self.stderr = wait_for_tool(self.child)
        if self.status != 0:
            # age says why in its own words: a bad recipient, no identity matching, a damaged file.
            message = re.sub(r"^age: (error: )?", "", self.stderr, flags=re.M).strip()
            raise BackupError(f"age could not {self.what}: {message or f'exit status {self.status}'}")

    def abort(self):
        """Kill age and its threads' work now (an aborted artifact, a stopped restore)."""
        end_tool(self.child)


class Encrypting(AgeStream):
    """The writer `AgeEncryptor.open(out)` returns: compressed bytes in, the age stream into `out`."""

    def __init__(self, argv, spawn, out):
        super().__init__(argv, spawn, "encrypt")
        self.out = out
        self.thread = threading.Thread(target=self.drain, name="age-encrypt", daemon=True)
        self.thread.start()

    def drain(self):
        try:
            while piece := self.child.stdout.read1(CHUNK):
                self.out.write(piece)
        except BaseException as exc:  # the sink's error, raised to the writer by the next write() or close()
            self.failed(exc)
            self.child.kill()

    def write(self, data):
        if self.failure:
            raise self.failure
        try:
            self.child.stdin.write(data)
        except (BrokenPipeError, ValueError):
            self.thread.join()
            if self.failure:
                raise self.failure from None
            self.ended()
            raise BackupError("age stopped reading the backup") from None
        return len(data)

    def close(self):
        """End the age stream: every encrypted byte is in `out` when this returns."""
        try:
            self.child.stdin.close()
        except BrokenPipeError:
            pass
        self.thread.join()
        if self.failure:
            raise self.failure
        self.ended()


class AgeEncryptor:
    """The pipeline's encryptor slot (pipeline.py): `extension` and `open(out) -> writer`."""

    extension = EXTENSION

    def __init__(self, recipients, spawn):
        if not recipients:
            raise ValueError("an encryptor needs at least one recipient")
        self.recipients, self.spawn = list(recipients), spawn

    def open(self, out):
        arguments = []
        for recipient in self.recipients:
            arguments += ["-r", recipient]
        return Encrypting(["age", "-e", *arguments], self.spawn, out)


# --- the decryptor -----------------------------------------------------------------------

class Decrypting(AgeStream, Readable):
    """The age stream of `stream` decrypted, as a reader for the decompressor; `read()` raises what went wrong."""

    def __init__(self, identity_file, spawn, stream):
        super().__init__(["age", "-d", "-i", identity_file], spawn, "decrypt the artifact")
        self.stream = stream
        self.thread = threading.Thread(target=self.feed, name="age-decrypt", daemon=True)
        self.thread.start()

    def feed(self):
        try:
            while piece := self.stream.read(CHUNK):
                self.child.stdin.write(piece)
            self.child.stdin.close()
        except BrokenPipeError:
            pass  # age stopped reading: its exit status and message say why
        except BaseException as exc:  # a stop (cancel, timeout) or a read error of the artifact
            self.failed(exc)
            self.child.kill()

    def read(self, size=-1):
        data = self.child.stdout.read(size) if size >= 0 else self.child.stdout.read()
        if data and not self.failure:
            return data
        self.thread.join()
        if self.failure:
            raise self.failure
        self.ended()  # the end of age's output: its exit status says whether it was the whole backup
        return data


def identity_file(given=None):
    """The identity file a restore decrypts with: `given` (the CLI's option) or the process's own variable.

    BackupError when there is none or it cannot be read, before anything is restored.
    """
    path = given or os.environ.get(IDENTITY_VARIABLE)
    if not path:
        raise BackupError(f"the artifact is encrypted with age and no identity was given: set {IDENTITY_VARIABLE} "
                          "in the worker's environment to an identity file, or run `backhook restore ID "
                          "--identity-file FILE`; nothing was restored")
    if not os.access(path, os.R_OK):
        raise BackupError(f"the age identity file {path} cannot be read; nothing was restored")
    return path


def is_encrypted(path):
    return path.endswith(EXTENSION)
