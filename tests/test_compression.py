"""Each compressor behind the one interface: what it writes, the stock tool reads, and its reader undoes."""
import io
import random
import subprocess

import pytest

from compression import COMPRESSORS, compressor

STOCK_TOOLS = {"zstd": ["zstd", "-dc"], "gzip": ["gzip", "-dc"], "none": ["cat"]}


def sample(size=3 * 1024 * 1024 + 17):
    rng = random.Random(11)
    return rng.randbytes(size // 2) + b"compressible text " * (size // 36) + rng.randbytes(size % 997)


def compress(name, data, piece=1024 * 1024):
    out = io.BytesIO()
    writer = compressor(name).open(out)
    for start in range(0, len(data), piece):
        writer.write(data[start:start + piece])
    writer.close()
    return out


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_a_compressed_stream_round_trips_through_its_reader(name):
    data = sample()
    out = compress(name, data)
    out.seek(0)
    assert compressor(name).reader(out).read() == data


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_what_a_compressor_writes_the_stock_tool_restores(name):
    data = sample()
    stored = compress(name, data).getvalue()
    assert subprocess.run(STOCK_TOOLS[name], input=stored, capture_output=True, check=True).stdout == data


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_closing_a_compressor_leaves_its_output_open(name):
    out = compress(name, b"data")
    assert not out.closed


def test_none_writes_the_bytes_unchanged_and_each_compressor_names_its_extension():
    assert compress("none", b"as is").getvalue() == b"as is"
    assert {name: compressor(name).extension for name in COMPRESSORS} == {"zstd": ".zst", "gzip": ".gz", "none": ""}


def test_gzip_output_does_not_depend_on_when_it_was_made():
    assert compress("gzip", b"same dump").getvalue() == compress("gzip", b"same dump").getvalue()
