"""The pipeline in process: dump chunks through compression (and an encryptor) to one or more sinks."""
import hashlib
import random

import pytest

from compression import compressor
from pipeline import Pipeline
from sinks import LocalDirectorySink
from sources import BackupError


class Attempt:
    """What a pipeline asks of its attempt: check() before each chunk, dumped() after it."""

    def __init__(self, stop_after=None):
        self.checks, self.reported, self.stop_after = 0, [], stop_after

    def check(self):
        self.checks += 1
        if self.stop_after is not None and self.checks > self.stop_after:
            raise BackupError("stopped")

    def dumped(self, raw_bytes):
        self.reported.append(raw_bytes)


class Xor:
    """A stand-in encryptor with the compressor's interface, so the encryptor's place can be tested."""
    extension = ".xor"

    def __init__(self):
        self.closed = False

    def open(self, out):
        self.out = out
        return self

    def write(self, data):
        return self.out.write(bytes(byte ^ 0x5A for byte in data))

    def close(self):
        self.closed = True


def chunks(count=5, size=256 * 1024):
    rng = random.Random(7)
    return [rng.randbytes(size // 2) + bytes(size // 2) for _ in range(count)]


def two_sinks(tmp_path):
    sinks = [LocalDirectorySink(tmp_path / "a"), LocalDirectorySink(tmp_path / "b")]
    for sink in sinks:
        sink.directory.mkdir()
    return sinks


def store(pipeline, name, pieces, attempt=None):
    pipeline.open(name, attempt or Attempt())
    for piece in pieces:
        pipeline.write(piece)
    return pipeline.seal()


def test_one_local_sink_gets_the_compressed_dump_under_its_name_once_committed(tmp_path):
    pieces, attempt = chunks(), Attempt()
    pipeline = Pipeline(compressor("zstd"), [LocalDirectorySink(tmp_path)])
    name = f"artifact.tar{pipeline.extension}"
    size, sha256 = store(pipeline, name, pieces, attempt)

    assert [path.name for path in tmp_path.iterdir()] == [name + ".partial"]
    pipeline.commit()
    stored = (tmp_path / name).read_bytes()
    assert [path.name for path in tmp_path.iterdir()] == [name]
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (size, sha256)
    assert pipeline.location == str(tmp_path / name)
    with open(tmp_path / name, "rb") as stream:
        assert compressor("zstd").reader(stream).read() == b"".join(pieces)
    assert attempt.checks == len(pieces)
    assert attempt.reported == [sum(map(len, pieces[:n + 1])) for n in range(len(pieces))]


def test_two_sinks_get_the_same_bytes_and_each_copy_is_verified(tmp_path):
    sinks = two_sinks(tmp_path)
    pipeline = Pipeline(compressor("gzip"), sinks)
    size, sha256 = store(pipeline, "x.sql.gz", chunks())
    pipeline.commit()
    fractions = []
    assert pipeline.verify(fractions.append) == (size, sha256)
    assert (tmp_path / "a" / "x.sql.gz").read_bytes() == (tmp_path / "b" / "x.sql.gz").read_bytes()
    assert pipeline.locations("x.sql.gz") == [str(tmp_path / "a" / "x.sql.gz"), str(tmp_path / "b" / "x.sql.gz")]
    assert fractions == sorted(fractions) and fractions[-1] == 1 and max(fractions) <= 1


def test_a_corrupted_copy_on_any_sink_fails_verification(tmp_path):
    sinks = two_sinks(tmp_path)
    pipeline = Pipeline(compressor("none"), sinks)
    store(pipeline, "x.out", [b"payload" * 1000])
    pipeline.commit()
    with open(tmp_path / "b" / "x.out", "r+b") as stream:
        stream.write(b"X")
    with pytest.raises(BackupError, match="verification failed: .*/b/x.out"):
        pipeline.verify(lambda fraction: None)


def test_abort_leaves_nothing_on_any_sink_before_or_after_the_commit(tmp_path):
    sinks = two_sinks(tmp_path)
    for commit in (False, True):
        pipeline = Pipeline(compressor("zstd"), sinks)
        store(pipeline, "x.tar.zst", chunks(2))
        if commit:
            pipeline.commit()
        pipeline.abort()
        assert not list((tmp_path / "a").iterdir()) and not list((tmp_path / "b").iterdir())


def test_the_attempt_stops_the_dump_before_the_next_chunk_is_written(tmp_path):
    pipeline = Pipeline(compressor("none"), [LocalDirectorySink(tmp_path)]).open("x.out", Attempt(stop_after=2))
    pipeline.write(b"one")
    pipeline.write(b"two")
    with pytest.raises(BackupError, match="stopped"):
        pipeline.write(b"three")
    assert pipeline.raw_bytes == 6
    pipeline.abort()
    assert not list(tmp_path.iterdir())


def test_an_encryptor_sits_between_the_compressor_and_the_sinks_and_the_digest_is_of_what_is_stored(tmp_path):
    encryptor = Xor()
    pipeline = Pipeline(compressor("gzip"), [LocalDirectorySink(tmp_path)], encryptor=encryptor)
    assert pipeline.extension == ".gz.xor"
    size, sha256 = store(pipeline, "x.sql.gz.xor", [b"select 1;\n" * 500])
    pipeline.commit()
    stored = (tmp_path / "x.sql.gz.xor").read_bytes()
    assert encryptor.closed
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (size, sha256)
    decrypted = bytes(byte ^ 0x5A for byte in stored)
    assert decrypted[:2] == b"\x1f\x8b"  # gzip's magic: compression came first
    pipeline.verify(lambda fraction: None)
