"""The compressors an artifact can go through, all behind one interface.

A compressor has a `name` (as stored in a job's `compression`), the
`extension` its artifacts get, `open(out)`, a writer whose `write(data)`
compresses into `out` and whose `close()` ends the compressed stream and
leaves `out` open, and `reader(stream)`, which undoes it for a restore.
"""
import gzip

import zstandard

from sources import CHUNK

# zstd level 3, as the zstd tool, compressing in threads of its own (C, no GIL)
# while the attempt's thread reads the dump, hashes and writes. Two threads,
# because backhook also hashes and fsyncs the artifact and needs the second
# core to keep up with `tar | zstd`; jobs smaller than zstd's default keep the
# worker's memory down for a little more output (bench/RESULTS.md, "Figures
# behind the code: pipeline").
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
ZSTD_JOB_BYTES = 4 * CHUNK
GZIP_LEVEL = 6


class Zstd:
    name, extension = "zstd", ".zst"

    def open(self, out):
        parameters = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, threads=ZSTD_THREADS, job_size=ZSTD_JOB_BYTES)
        return zstandard.ZstdCompressor(compression_params=parameters).stream_writer(
            out, closefd=False, write_size=CHUNK)

    def reader(self, stream):
        return zstandard.ZstdDecompressor().stream_reader(stream, read_size=CHUNK, closefd=False)


class Gzip:
    name, extension = "gzip", ".gz"

    def open(self, out):
        # mtime=0: the same dump gives the same artifact, whenever it is made.
        return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def reader(self, stream):
        return gzip.GzipFile(fileobj=stream, mode="rb")


class Passthrough:
    """What `none` writes through: `out` itself, with a close() that leaves it open."""

    def __init__(self, out):
        self.write = out.write  # bound once, so a chunk costs no extra call

    def close(self):
        pass


class Uncompressed:
    name, extension = "none", ""

    def open(self, out):
        return Passthrough(out)

    def reader(self, stream):
        return stream


COMPRESSORS = {compressor.name: compressor for compressor in (Zstd(), Gzip(), Uncompressed())}


def compressor(name):
    """The compressor a job's `compression` names."""
    return COMPRESSORS[name]
