"""One artifact's way from the dump to where it is stored: compressor, optional encryptor, every sink.

    dump chunks -> compressor -> [encryptor] -> digest (size, SHA-256) -> sink, or a Fanout to sinks

A compressor (compression.py) and an encryptor share one interface,
`open(out) -> writer` whose `close()` ends its stream and leaves `out` open;
a sink (sinks.py) opens one writer per artifact. The digest is taken once,
of the bytes every sink receives, and each sink's copy is verified against it.
Each piece is passed along, never copied.
"""
import hashlib

from sources import BackupError


class Readable:
    """A file-like object built on `read(size)`: `readinto` and `readable` follow from it."""

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self):
        return True


class Digest:
    """Counts and hashes the stored bytes on their way to the sinks."""

    def __init__(self, out):
        self.out, self.size, self.sha256 = out, 0, hashlib.sha256()

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


class Fanout:
    """One writer in front of several sinks' writers: each gets every piece.

    `outs` is the pipeline's own list, so a writer the pipeline gives up on
    (`failed(out, error)`, which removes it or raises) gets nothing more.
    """

    def __init__(self, outs, failed=None):
        self.outs, self.failed = outs, failed

    def write(self, data):
        for out in list(self.outs):
            self.send(out, out.write, data)
        return len(data)

    def flush(self):
        for out in list(self.outs):
            self.send(out, out.flush)

    def send(self, out, method, *args):
        try:
            method(*args)
        except (BackupError, OSError) as exc:
            if self.failed is None:
                raise
            self.failed(out, exc)


class Pipeline:
    """Writes one artifact to every sink: `open`, `write` each chunk of the dump, `seal`, `commit`, `verify`,
    `write_manifest`.

    `abort()` at any point before the artifact is recorded leaves nothing of
    it on any sink. The attempt passed to `open` is asked `check()` before
    each chunk (it raises to stop) and told `dumped(raw_bytes)` after it.

    With `dropped` (a job's --allow-partial-destinations), a sink whose store
    fails is given up on instead of failing the artifact: its copy is
    aborted, `dropped(position, sink, error)` is told, and the others go on;
    only when no sink is left does the error fail the artifact. `kept()` names
    the sinks that stored it, by their position in `sinks`.
    """

    def __init__(self, compression, sinks, encryptor=None, dropped=None):
        self.compression, self.sinks, self.encryptor = compression, list(sinks), encryptor
        self.extension = compression.extension + (encryptor.extension if encryptor else "")
        self.artifacts, self.stages, self.head = [], [], None
        self.positions = []  # each artifact's sink, as its index in `sinks`
        self.dropped = dropped
        self.raw_bytes = 0

    def locations(self, name):
        return [sink.location(name) for sink in self.sinks]

    def open(self, name, attempt):
        """Start the artifact `name` on every sink; returns the pipeline, ready for the dump's chunks."""
        self.attempt = attempt
        try:
            for position, sink in enumerate(self.sinks):
                try:
                    self.artifacts.append(sink.open(name))
                    self.positions.append(position)
                except (BackupError, OSError) as exc:
                    if self.dropped is None or (position == len(self.sinks) - 1 and not self.artifacts):
                        raise
                    self.dropped(position, sink, exc)
            if len(self.artifacts) == 1:
                out = self.stored = Digest(self.artifacts[0])
            else:
                out = self.stored = Digest(Fanout(self.artifacts, self.give_up if self.dropped else None))
            if self.encryptor:
                out = self.encryptor.open(out)
                self.stages.append(out)
            self.head = self.compression.open(out)
            self.stages.insert(0, self.head)
        except BaseException:
            self.abort()
            raise
        return self

    @property
    def location(self):
        """Where the artifact is stored, as the execution records it: its first sink's location."""
        return self.artifacts[0].location

    def kept(self):
        """[(position in `sinks`, artifact)] of the sinks still storing the artifact."""
        return list(zip(self.positions, self.artifacts))

    def give_up(self, artifact, error):
        """Drop one sink's artifact (aborted: nothing of it is left) and go on with the others; the last one raises."""
        if len(self.artifacts) == 1:
            raise error
        index = self.artifacts.index(artifact)
        position = self.positions.pop(index)
        del self.artifacts[index]
        self.dropped(position, self.sinks[position], error)
        try:
            artifact.abort()
        except (BackupError, OSError) as exc:  # the copy is left out either way; the attempt's ending retries
            self.dropped(position, self.sinks[position], f"and removing its partial copy failed: {exc}")

    def each(self, step):
        """`step(number, artifact)` for every artifact still stored; a failing one is given up on if allowed."""
        for number, artifact in enumerate(list(self.artifacts)):
            try:
                step(number, artifact)
            except (BackupError, OSError) as exc:
                if self.dropped is None:
                    raise
                self.give_up(artifact, exc)

    def write(self, chunk):
        self.attempt.check()
        self.head.write(chunk)
        self.raw_bytes += len(chunk)
        self.attempt.dumped(self.raw_bytes)

    def seal(self):
        """End the compressed (and encrypted) stream and make it durable on every sink; returns (size, sha256)."""
        stages, self.stages, self.head = self.stages, [], None  # ends zstd's threads now, not at collection
        for stage in stages:
            stage.close()
        self.each(lambda _number, artifact: artifact.close())
        return self.stored.size, self.stored.sha256.hexdigest()

    def commit(self):
        """Put the sealed artifact under its name on every sink."""
        self.each(lambda _number, artifact: artifact.commit())

    def verify(self, progress):
        """Read every sink's copy back against the digest; `progress(fraction)` may raise to stop."""
        size, sha256, count = self.stored.size, self.stored.sha256.hexdigest(), len(self.artifacts)
        self.each(lambda number, artifact: artifact.verify(
            size, sha256, lambda fraction: progress((number + fraction) / count)))
        return size, sha256

    def write_manifest(self, data):
        """Put the manifest (manifest.py) beside the verified artifact on every sink."""
        self.each(lambda _number, artifact: artifact.write_manifest(data))

    def abort(self):
        """Remove whatever this artifact left on any sink, partial or committed."""
        stages, self.stages, self.head = self.stages, [], None  # ends zstd's threads now, not at collection
        for stage in stages:
            if hasattr(stage, "abort"):
                stage.abort()  # an encryptor's child process (encryption.py) ends with the artifact
        for artifact in self.artifacts:
            artifact.abort()
