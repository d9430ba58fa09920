"""One artifact's way from the dump to where it is stored: compressor, optional encryptor, every sink.

    dump chunks -> compressor -> [encryptor] -> digest (size, SHA-256) -> sink, or a Fanout to sinks

A compressor (compression.py) and an encryptor share one interface,
`open(out) -> writer` whose `close()` ends its stream and leaves `out` open;
a sink (sinks.py) opens one writer per artifact. The digest is taken once,
of the bytes every sink receives, and each sink's copy is verified against it.
Each piece is passed along, never copied.
"""
import hashlib


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
    """One writer in front of several sinks' writers: each gets every piece."""

    def __init__(self, outs):
        self.outs = outs

    def write(self, data):
        for out in self.outs:
            out.write(data)
        return len(data)

    def flush(self):
        for out in self.outs:
            out.flush()


class Pipeline:
    """Writes one artifact to every sink: `open`, `write` each chunk of the dump, `seal`, `commit`, `verify`,
    `write_manifest`.

    `abort()` at any point before the artifact is recorded leaves nothing of
    it on any sink. The attempt passed to `open` is asked `check()` before
    each chunk (it raises to stop) and told `dumped(raw_bytes)` after it.
    """

    def __init__(self, compression, sinks, encryptor=None):
        self.compression, self.sinks, self.encryptor = compression, list(sinks), encryptor
        self.extension = compression.extension + (encryptor.extension if encryptor else "")
        self.artifacts, self.stages, self.head = [], [], None
        self.raw_bytes = 0

    def locations(self, name):
        return [sink.location(name) for sink in self.sinks]

    def open(self, name, attempt):
        """Start the artifact `name` on every sink; returns the pipeline, ready for the dump's chunks."""
        self.attempt = attempt
        try:
            for sink in self.sinks:
                self.artifacts.append(sink.open(name))
            out = self.stored = Digest(self.artifacts[0] if len(self.artifacts) == 1 else Fanout(self.artifacts))
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
        for artifact in self.artifacts:
            artifact.close()
        return self.stored.size, self.stored.sha256.hexdigest()

    def commit(self):
        """Put the sealed artifact under its name on every sink."""
        for artifact in self.artifacts:
            artifact.commit()

    def verify(self, progress):
        """Read every sink's copy back against the digest; `progress(fraction)` may raise to stop."""
        size, sha256, count = self.stored.size, self.stored.sha256.hexdigest(), len(self.artifacts)
        for number, artifact in enumerate(self.artifacts):
            artifact.verify(size, sha256, lambda fraction, done=number: progress((done + fraction) / count))
        return size, sha256

    def write_manifest(self, data):
        """Put the manifest (manifest.py) beside the verified artifact on every sink."""
        for artifact in self.artifacts:
            artifact.write_manifest(data)

    def abort(self):
        """Remove whatever this artifact left on any sink, partial or committed."""
        stages, self.stages, self.head = self.stages, [], None  # ends zstd's threads now, not at collection
        for stage in stages:
            if hasattr(stage, "abort"):
                stage.abort()  # an encryptor's child process (encryption.py) ends with the artifact
        for artifact in self.artifacts:
            artifact.abort()
