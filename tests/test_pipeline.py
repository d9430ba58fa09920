"""The pipeline in process: dump chunks through compression (and an encryptor) to one or more sinks."""
import hashlib
import os
import random
import subprocess

import pytest

import backup
import sinks
from compression import compressor
from pipeline import Pipeline
from sinks import LocalDirectorySink
from sources import BackupError
from support import wait_until


def threads():
    """The ids of this process's threads, zstd's own C threads included."""
    return set(os.listdir("/proc/self/task"))


def assert_no_thread_left(before):
    # A joined thread leaves /proc a moment after join() returns: wait for that, not longer.
    wait_until(lambda: threads() <= before, timeout=2, message="the threads started here to end")


class Attempt:
    """The two calls a Pipeline makes on its attempt; check() raises once `stopped` is set."""

    def __init__(self):
        self.stopped, self.checks, self.reported = False, 0, []

    def check(self):
        self.checks += 1
        if self.stopped:
            raise backup.Stopped("cancel")

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
    attempt = Attempt()
    pipeline = Pipeline(compressor("none"), [LocalDirectorySink(tmp_path)]).open("x.out", attempt)
    pipeline.write(b"one")
    pipeline.write(b"two")
    attempt.stopped = True
    with pytest.raises(backup.Stopped):
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


# --- threads, checksums, stopping ----------------------------------------------------------

def open_pipeline(run, partial, compression):
    """A pipeline writing `partial` (`<artifact>.partial`) in its directory, as an attempt opens it."""
    return Pipeline(compressor(compression), [LocalDirectorySink(partial.parent)]).open(partial.stem, run)


def write_pieces(writer, pieces=12, size=1024 * 1024):
    rng = random.Random(3)
    written = b""
    for _ in range(pieces):
        piece = rng.randbytes(size // 2) + bytes(size // 2)
        writer.write(piece)
        written += piece
    return written


def test_a_sealed_zstd_artifact_matches_its_checksum_and_leaves_no_thread_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "WRITEBACK_BYTES", 1024 * 1024)  # several background syncs
    before = threads()
    partial = tmp_path / "artifact.tar.zst.partial"
    writer = open_pipeline(Attempt(), partial, "zstd")
    written = write_pieces(writer)
    size, sha256 = writer.seal()

    assert_no_thread_left(before)
    stored = partial.read_bytes()
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (size, sha256)
    assert subprocess.run(["zstd", "-dc", str(partial)], capture_output=True, check=True).stdout == written


def test_a_stopped_artifact_is_discarded_without_a_file_or_a_thread_left(tmp_path):
    before = threads()
    run, partial = Attempt(), tmp_path / "artifact.tar.zst.partial"
    writer = open_pipeline(run, partial, "zstd")
    write_pieces(writer, pieces=6)
    run.stopped = True
    with pytest.raises(backup.Stopped):
        writer.write(b"more")
    writer.abort()
    assert not partial.exists()
    assert_no_thread_left(before)


def test_a_failed_background_sync_fails_the_artifact(tmp_path, monkeypatch):
    """Linux reports a failed writeback to one fsync only, so the background one must not swallow it."""
    def failing_fdatasync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sinks, "WRITEBACK_BYTES", 1024 * 1024)
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    partial = tmp_path / "artifact.out.partial"
    writer = open_pipeline(Attempt(), partial, "none")
    write_pieces(writer, pieces=3)
    # Only once the background sync has failed: a seal that comes first stops the thread before it syncs.
    wait_until(lambda: writer.artifacts[0].writeback.error is not None, message="the background sync to fail")
    with pytest.raises(OSError, match="Input/output error"):
        writer.seal()
    writer.abort()
    assert not partial.exists()
