"""The upload checks alone: no services, no HTTP (tests/test_api.py covers them through the API)."""

from __future__ import annotations

import json

import pytest

import uploads

OBJECT = json.dumps({"message": "hello"}).encode()


def inspect(*chunks: bytes, max_bytes: int = 1024**2) -> uploads.UploadInspector:
    """An inspector fed these chunks in order and finished."""
    inspector = uploads.UploadInspector(max_bytes)
    for chunk in chunks:
        inspector.feed(chunk)
    inspector.finish()
    return inspector


def refusal(*chunks: bytes, max_bytes: int = 1024**2) -> uploads.UploadRefused:
    with pytest.raises(uploads.UploadRefused) as info:
        inspect(*chunks, max_bytes=max_bytes)
    return info.value


def test_a_file_over_the_limit_is_413_naming_the_limit():
    inspector = uploads.UploadInspector(max_bytes=2048)
    inspector.feed(OBJECT + b"\n" + b"x" * (2047 - len(OBJECT)))  # exactly 2048 bytes: fine
    with pytest.raises(uploads.UploadTooLarge) as info:
        inspector.feed(b"\n")
    assert info.value.status == 413
    assert info.value.detail == "the file is larger than the limit of 2 KiB (2048 bytes)"


def test_a_nul_byte_is_binary():
    refused = refusal(OBJECT + b"\n", b"ab\x00cd\n")
    assert (refused.status, refused.detail) == (422, "the file contains NUL bytes: it looks binary")


def test_bad_utf8_is_refused_with_its_offset_in_the_file():
    first = OBJECT + b"\n"
    refused = refusal(first, b"caf\xe9\n")
    assert refused.status == 422
    assert refused.detail == f"the file is not UTF-8 text (bad byte near offset {len(first) + 3})"


def test_a_character_split_across_chunks_is_fine():
    text = '{"message": "日志"}\n'.encode()
    cut = text.index("日".encode()) + 1  # inside the three bytes of 日
    assert inspect(text[:cut], text[cut:]).lines_total == 1


def test_a_file_that_ends_inside_a_character_is_refused():
    refused = refusal(OBJECT + b"\n" + "日".encode()[:2])
    assert refused.detail == "the file ends in the middle of a UTF-8 character"


def test_a_bom_and_blank_lines_may_come_before_the_first_object():
    assert inspect(uploads.UTF8_BOM + b"\n \r\n", OBJECT + b"\n").lines_total == 3


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (
            b"[1, 2]\n" + OBJECT + b"\n",
            "the first line is not a JSON object; each line must be one log entry",
        ),
        (b'"text"\n', "the first line is not a JSON object; each line must be one log entry"),
        (
            b"hello\n",
            "the first line is not JSON (Expecting value: line 1 column 1 (char 0)); "
            "is this a JSON-lines file?",
        ),
    ],
)
def test_a_first_line_that_is_not_an_object_is_refused(content, detail):
    refused = refusal(content)
    assert (refused.status, refused.detail) == (422, detail)


def test_the_first_line_is_judged_when_its_end_arrives():
    inspector = uploads.UploadInspector(1024**2)
    inspector.feed(b'{"message": ')  # no newline yet: nothing to judge
    with pytest.raises(uploads.NotJsonLines):
        inspector.feed(b"oops}\n")


def test_a_first_line_over_1_mib_is_refused_before_it_ends():
    inspector = uploads.UploadInspector(4 * 1024**2)
    start = b'{"message": "'
    inspector.feed(start + b"x" * (uploads.FIRST_LINE_MAX_BYTES - len(start)))  # 1 MiB: fine
    with pytest.raises(uploads.NotJsonLines) as info:
        inspector.feed(b"x")
    assert info.value.detail == "the first line is longer than 1 MiB"


@pytest.mark.parametrize("content", [b"", b"\n", uploads.UTF8_BOM, b" \n\r\n\t"])
def test_an_empty_file_is_refused(content):
    refused = refusal(*([content] if content else []))
    assert (refused.status, refused.detail) == (422, "the file is empty")


@pytest.mark.parametrize(
    ("chunks", "lines_total"),
    [
        ((OBJECT + b"\n",), 1),
        ((OBJECT,), 1),  # no trailing newline: the last line still counts
        ((OBJECT + b"\n" + OBJECT + b"\n",), 2),
        ((OBJECT + b"\n", OBJECT), 2),
        ((OBJECT + b"\n", b"\n", b"\n"), 3),  # blank lines count: they are the file's lines
        ((OBJECT + b"\n\n", b"not json"), 3),  # later lines are the worker's to judge
    ],
)
def test_lines_total_counts_physical_lines(chunks, lines_total):
    inspector = inspect(*chunks)
    assert inspector.lines_total == lines_total
    assert inspector.size == sum(map(len, chunks))


def test_every_refusal_is_an_upload_refused_with_a_status_the_api_knows():
    for cls in (uploads.UploadTooLarge, uploads.NotJsonLines):
        assert issubclass(cls, uploads.UploadRefused) and cls.status in (413, 422)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1024**3, "1 GiB"),
        (10 * 1024**2, "10 MiB"),
        (1536, "1.5 KiB"),
        (1_500_000, "1.43 MiB"),
        (100, "100 bytes"),
    ],
)
def test_limits_are_told_in_binary_units(n, text):
    assert uploads.in_binary_units(n) == text
