"""decoding.py alone: which names are taken, and the bounded decoding of gzip and zstd streams
(concatenated members and frames, bombs, truncated and corrupt streams, the head the API
checks). No service."""

from __future__ import annotations

import io
import tracemalloc

import pytest

import decoding
import lines
import uploads
from helpers import COMPRESS, compressed_bomb, gz

GiB, MiB = 1024**3, 1024**2


CONTENT = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(50_000))


def stream(
    data: bytes, compression: str, *, max_decoded: int = 64 * GiB, max_ratio: float = 200
) -> decoding.DecodedStream:
    return decoding.DecodedStream(
        io.BytesIO(data), compression, max_decoded=max_decoded, max_ratio=max_ratio
    )


def read_all(s: decoding.DecodedStream, n: int = MiB) -> bytes:
    out = bytearray()
    while chunk := s.read(n):
        assert len(chunk) <= n
        out += chunk
    return bytes(out)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "compression"),
    [
        ("app.jsonl", None),
        ("app.ndjson", None),
        ("app.json", None),
        ("app.log", None),
        ("APP.LOG", None),
        ("app.log.1", None),
        ("app.jsonl.12", None),
        ("app.log.2.gz", "gzip"),
        ("x.jsonl.zst", "zstd"),
        ("x.ndjson.GZ", "gzip"),
        ("logs 2026-12-07.json.gz", "gzip"),
    ],
)
def test_names_as_they_come_are_taken(name, compression):
    assert decoding.compression_of(name) == compression


@pytest.mark.parametrize(
    "name",
    [
        "",
        "app.txt",
        "app.jsonl.bz2",
        "app.gz",
        "app.log.gz.1",
        "app.tar.gz",
        ".jsonl.zip",
        "app.log.x",
        "jsonl",
        "app.csv.gz",
    ],
)
def test_other_names_are_refused_with_the_names_taken(name):
    with pytest.raises(uploads.UnsupportedFileName) as refused:
        uploads.compression_of(name)
    assert refused.value.status == 415 and ".ndjson" in refused.value.detail


# --------------------------------------------------------------------------- whole streams


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_stream_decodes_in_bounded_reads(compression):
    s = stream(COMPRESS[compression](CONTENT), compression)
    assert read_all(s, 4096) == CONTENT
    assert s.decoded == len(CONTENT)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_concatenated_members_read_as_one_file(compression):
    """`cat a.gz b.gz > c.gz` (and zstd frames alike) is one file of both contents."""
    pack = COMPRESS[compression]
    data = pack(CONTENT[:1000]) + pack(b"") + pack(CONTENT[1000:])
    assert read_all(stream(data, compression), 777) == CONTENT


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_an_empty_archive_decodes_to_nothing(compression):
    assert read_all(stream(COMPRESS[compression](b""), compression)) == b""


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_file_that_is_not_that_compression_is_corrupt(compression):
    with pytest.raises(decoding.CorruptStream) as broken:
        read_all(stream(b'{"a": 1}\n' * 100, compression))
    assert compression in broken.value.reason and broken.value.offset == 0


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_truncated_stream_says_where_it_broke_after_the_lines_before_it(compression):
    data = COMPRESS[compression](CONTENT)
    s = stream(data[: len(data) // 2], compression)
    got = []
    with pytest.raises(decoding.CorruptStream) as broken:
        for line, _size, _count in lines.read_lines(s):
            got.append(line)
    assert "truncated" in broken.value.reason
    assert broken.value.offset == s.decoded > 0
    assert got and b"\n".join(got) + b"\n" == CONTENT[: len(b"\n".join(got)) + 1]


def test_trailing_garbage_after_a_gzip_member_is_corrupt():
    with pytest.raises(decoding.CorruptStream) as broken:
        read_all(stream(gz(CONTENT) + b"garbage", "gzip"))
    assert broken.value.offset == len(CONTENT)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_bomb_stops_at_the_ratio_limit_naming_it(compression):
    bomb = COMPRESS[compression](b"\n" * (256 * MiB))
    s = stream(bomb, compression)
    with pytest.raises(decoding.DecodeLimit) as stopped:
        read_all(s)
    assert "EH_MAX_DECODE_RATIO (200)" in stopped.value.reason
    assert s.decoded <= 200 * s.encoded + MiB


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_decoded_size_limit_stops_before_decoding_past_it(compression):
    s = stream(COMPRESS[compression](CONTENT), compression, max_decoded=100_000, max_ratio=0)
    with pytest.raises(decoding.DecodeLimit) as stopped:
        read_all(s)
    assert "EH_MAX_DECODED_BYTES (100000 bytes)" in stopped.value.reason
    assert s.decoded <= 100_001


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_1_gib_bomb_is_decoded_in_flat_memory(compression):
    """1 GiB of newlines, compressed (16 gzip members or zstd frames of 64 MiB each), read to
    the end with no ratio limit: no allocation grows with the output (a read decoding all it
    was given, without max_length, would allocate a member's 64 MiB at once)."""
    bomb = compressed_bomb(compression)
    tracemalloc.start()
    try:
        s = stream(bomb, compression, max_ratio=0)
        while s.read(MiB):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.decoded == GiB
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_skip_drops_the_decoded_bytes_already_processed():
    s = stream(gz(CONTENT), "gzip")
    assert s.skip(123_457) == 123_457
    assert read_all(s) == CONTENT[123_457:]


# --------------------------------------------------------------------------- the head


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_head_is_decoded_from_the_first_bytes_only(compression):
    data = COMPRESS[compression](CONTENT)
    head, whole = decoding.decode_head(compression, data[: len(data) // 2], 1000)
    assert CONTENT.startswith(head) and 0 < len(head) <= 1001 and not whole
    head, whole = decoding.decode_head(compression, COMPRESS[compression](b"{}\n"), 1000)
    assert (head, whole) == (b"{}\n", True)
    with pytest.raises(decoding.CorruptStream):
        decoding.decode_head(compression, b'{"not": "compressed"}\n', 1000)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"[1]\n", "not a JSON object"),
        (b"x" * (2 * MiB) + b"\n", "longer than 1 MiB"),
        (b"\x00\x01", "NUL"),
    ],
)
def test_the_inspector_checks_the_decoded_first_line(compression, content, detail):
    inspector = uploads.UploadInspector(GiB, compression)
    with pytest.raises(uploads.NotJsonLines) as refused:
        data = COMPRESS[compression](content)
        for i in range(0, len(data), 65536):
            inspector.feed(data[i : i + 65536])
        inspector.finish()
    assert detail in refused.value.detail


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_inspector_counts_the_bytes_sent_against_the_upload_limit(compression):
    data = COMPRESS[compression](CONTENT)
    inspector = uploads.UploadInspector(len(data), compression)
    inspector.feed(data)
    inspector.finish()
    assert (inspector.size, inspector.lines_total) == (len(data), 0)
    with pytest.raises(uploads.UploadTooLarge):
        uploads.UploadInspector(len(data) - 1, compression).feed(data)
