"""One line: reading lines from a stream, parsing and validating them. No services needed."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest

import core
import lines
import outbox

VALID = {
    "timestamp": "2026-11-23T10:00:00+01:00",
    "level": "info",
    "service": "checkout",
    "event_type": "order.created",
    "message": "order created",
}


# --------------------------------------------------------------------------- reading lines


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1024])
def test_read_lines_keeps_byte_counts_across_chunks(chunk_size):
    data = b"a\r\n\nbbb\nlast"
    found = list(lines.read_lines(io.BytesIO(data), chunk_size=chunk_size))
    assert found == [(b"a\r", 3, 1), (b"", 1, 1), (b"bbb", 4, 1), (b"last", 4, 1)]
    assert sum(size for _, size, _ in found) == len(data)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1024])
def test_a_run_of_empty_lines_is_one_step_counting_every_line(chunk_size):
    """A GiB of newlines is a few thousand steps for the worker, not a billion: each chunk's
    run of empty lines comes at once, with how many lines and bytes it is. Lines around it,
    and blank lines that are not empty (spaces, CR), come one by one as before."""
    data = b"a\n" + b"\n" * 5 + b"b\n \n\r\n\n\nc"
    found = list(lines.read_lines(io.BytesIO(data), chunk_size=chunk_size))
    assert sum(size for _, size, _ in found) == len(data)
    assert sum(count for _, _, count in found) == data.count(b"\n") + 1
    assert [raw for raw, _, _ in found if raw] == [b"a", b"b", b" ", b"\r", b"c"]
    assert all(raw == b"" and size == count for raw, size, count in found if count > 1)
    if chunk_size == 1024:
        assert (b"", 5, 5) in found and len(found) < data.count(b"\n") + 1


def test_a_gib_of_newlines_is_read_in_a_few_thousand_steps():
    class Newlines(io.RawIOBase):
        left = 1024**3

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = b"\n" * n
            self.left -= n
            return n

    steps = lines_read = 0
    for _raw, _size, count in lines.read_lines(io.BufferedReader(Newlines())):
        steps += 1
        lines_read += count
    assert lines_read == 1024**3 and steps <= 1024**3 // lines.READ_CHUNK_BYTES + 1


@pytest.mark.parametrize("chunk_size", [2, 5, 64])
def test_overlong_lines_are_reported_not_held(chunk_size):
    data = b"ok\n" + b"x" * 25 + b"\n" + b"y" * 11 + b"\nend"
    found = list(lines.read_lines(io.BytesIO(data), max_line_bytes=10, chunk_size=chunk_size))
    assert found == [(b"ok", 3, 1), (None, 26, 1), (None, 12, 1), (b"end", 3, 1)]


def test_empty_stream_has_no_lines():
    assert list(lines.read_lines(io.BytesIO(b""))) == []


# --------------------------------------------------------------------------- one line


def test_parse_line_normalises_a_valid_entry():
    line = {**VALID, "level": "WARNING", "request_id": "r-1", "context": {"order": 7}}
    entry = lines.parse_line(json.dumps(line).encode(), lines.log_entry_validator())
    assert entry["level"] == "warning"
    assert entry["environment"] == "production"
    assert entry["timestamp"].isoformat() == "2026-11-23T10:00:00+01:00"
    assert entry["context"] == {"order": 7, "extra": {"request_id": "r-1"}}


BAD_LINES = [
    (b"{oops", "invalid JSON"),
    (b"[1, 2]", "is not of type 'object'"),
    (
        json.dumps({k: v for k, v in VALID.items() if k != "service"}).encode(),
        "'service' is a required property",
    ),
    (json.dumps({**VALID, "level": "loud"}).encode(), "$.level"),
    (json.dumps({**VALID, "service": ""}).encode(), "$.service"),
    (json.dumps({**VALID, "timestamp": "2026-11-23T10:00:00"}).encode(), "$.timestamp"),
    (
        json.dumps({**VALID, "timestamp": "2026-13-23T10:00:00Z"}).encode(),
        "$.timestamp: not a valid date-time",
    ),
    (
        b'{"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s", '
        b'"event_type": "e", "message": "m", "context": {"ratio": NaN}}',
        "NaN, Infinity",
    ),
    (json.dumps({**VALID, "context": {"big": 1e999}}).encode(), "NaN, Infinity"),
    (json.dumps({**VALID, "took": float("inf")}).encode(), "NaN, Infinity"),
    (json.dumps({**VALID, "message": "a\x00b"}).encode(), "NUL character"),
    (json.dumps({**VALID, "context": {"k\x00": 1}}).encode(), "NUL character"),
    (json.dumps({**VALID, "service": "s\ud800"}).encode(), "unpaired surrogate"),
    (json.dumps({**VALID, "context": {"v": ["\udfff"]}}).encode(), "unpaired surrogate"),
    (
        json.dumps({**VALID, "context": {"a.b": 1, "a": {"b": 2}}}).encode(),
        "two keys name the path 'a.b'",
    ),
    (
        json.dumps({**VALID, "context": {"a": {"b.c": 1, "b": {"c": 2}}}}).encode(),
        "two keys name the path 'a.b.c'",
    ),
    (
        json.dumps({**VALID, "context": {"x": [{"p.q": 1, "p": {"q": 2}}]}}).encode(),
        "two keys name the path 'p.q'",
    ),
    (
        json.dumps({**VALID, "context": {"x": [[{"p.q": 1, "p": {"q": 2}}]]}}).encode(),
        "two keys name the path 'p.q'",
    ),
    (
        b'{"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s", '
        b'"event_type": "e", "message": "m", "context": {"a\\u002eb": 1, "a": {"b": 2}}}',
        "two keys name the path 'a.b'",
    ),
    (
        json.dumps({**VALID, "context": {"extra.foo": 1}, "foo": 2}).encode(),
        "two keys name the path 'extra.foo'",
    ),
    (
        json.dumps({**VALID, "context": {"user.名": 1, "user": {"名": 2}}}).encode(),
        "two keys name the path 'user.名'",
    ),  # json.dumps writes the key as "user.\\u540d"
    (
        json.dumps({**VALID, "context": {"a.b": {"c": 1}, "a": {"b": {"c": 2}}}}).encode(),
        "two keys name the path 'a.b.c'",
    ),
    (
        json.dumps({**VALID, "context": {"n": "HERE"}}).encode().replace(b'"HERE"', b"1" * 5000),
        "invalid JSON: Exceeds the limit",
    ),
    (json.dumps({**VALID, "level": "INFO\n"}).encode(), "$.level"),
    (json.dumps({**VALID, "timestamp": "2026-11-23T10:00:00Z\n"}).encode(), "$.timestamp"),
    (
        json.dumps({**VALID, "timestamp": "1969-12-31T23:59:59Z"}).encode(),
        "is outside the range event_log holds",
    ),
    (
        json.dumps({**VALID, "timestamp": "2106-02-07T08:28:16+02:00"}).encode(),
        "is outside the range event_log holds",
    ),
    (json.dumps({**VALID, "context": [1]}).encode(), "$.context"),
    (b'{"message": "caf\xe9"}', "not valid UTF-8"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_parse_line_explains_invalid_lines(line, reason):
    with pytest.raises(lines.InvalidLine) as info:
        lines.parse_line(line, lines.log_entry_validator())
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "context",
    [
        {"a.b": 1},
        {"a": 1, "a.b": 2},
        {"a.b": {}, "a": {"b": 1}},
        {"a.b": 1, "c": {"a": {"b": 2}}},
        {"a.b": None, "a": {"b": 2}},
        {"a.b": {"c": 1}, "a": {"b": {"d": 2}}},
    ],
)
def test_parse_line_takes_dotted_keys_that_name_distinct_paths(context):
    line = json.dumps({**VALID, "context": context}).encode()
    assert lines.parse_line(line, lines.log_entry_validator())["context"] == context


@pytest.mark.parametrize(
    "text",
    [
        '"emoji \\ud83d\\ude00"',  # a surrogate pair: one character
        '"a backslash, then u0000: \\\\u0000"',
    ],
)
def test_parse_line_takes_escapes_that_are_storable(text):
    line = (
        '{"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s", '
        f'"event_type": "e", "message": {text}}}'
    ).encode()
    assert lines.parse_line(line, lines.log_entry_validator())["message"] == json.loads(text)


@pytest.mark.parametrize(
    "timestamp",
    [
        "1970-01-01T01:00:00+01:00",
        "2106-02-07T06:28:15Z",
        "2026-11-23t10:00:00z",
        "2026-11-23 10:00:00.123456-05:30",
    ],
)
def test_parse_line_takes_timestamps_up_to_the_edges_of_event_log(timestamp):
    line = json.dumps({**VALID, "timestamp": timestamp}).encode()
    assert lines.parse_line(line, lines.log_entry_validator())["timestamp"].tzinfo is not None


@pytest.mark.parametrize("filler", [".", "a.", "\\u002e", '\\"'])
def test_a_line_near_the_size_limit_is_checked_in_linear_time(filler):
    """The checks that look for dotted keys and odd escapes scan each byte a bounded number
    of times: a quadratic scan of this line would take many minutes."""
    text = filler * (900_000 // len(filler))
    line = (
        '{"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s", '
        f'"event_type": "e", "message": "{text}", "context": {{"{text}": 1}}}}'
    ).encode()
    started = time.process_time()  # this process's CPU, which other processes do not inflate
    lines.parse_line(line, lines.log_entry_validator())
    assert time.process_time() - started < 5


@pytest.mark.parametrize(
    "context",
    [
        # A long key over many leaves: full path strings would cost key length × leaves.
        {"a.b": 1, "k" * 50_000: {f"k{i}": 1 for i in range(70_000)}},
        # Many strings deep down, and an escaped emoji to make the worker look at every string.
        {"s": "\U0001f600", "deep": "HERE"},
    ],
)
def test_the_context_checks_are_linear_in_the_line(context):
    line = json.dumps({**VALID, "context": context}).encode()
    line = line.replace(b'"HERE"', b"[" * 900 + b'"a", ' * 200_000 + b'"z"' + b"]" * 900)
    started = time.process_time()  # this process's CPU, which other processes do not inflate
    lines.parse_line(line, lines.log_entry_validator(), max_context_paths=100_000)
    assert time.process_time() - started < 5


def keys(count: int, prefix: str = "k") -> dict:
    return {f"{prefix}{i}": i for i in range(count)}


@pytest.mark.parametrize(
    ("context", "paths"),
    [
        (keys(1000), 1000),
        ({"a": keys(600), "b": {"c": keys(400)}}, 1000),  # nested keys count, objects do not
        ({"list": [keys(500), [keys(499)]]}, 1000),  # the array is a path, its objects' keys too
        ({"a": keys(1000), "z": None}, 1001),  # a null too: it is a key the line sends
        ({"x": keys(20_000)}, 20_000),
        ({"empty": {}, **keys(1001, "n")}, 1001),
    ],
)
def test_a_context_with_more_paths_than_the_limit_is_an_invalid_line(context, paths):
    """EH_MAX_CONTEXT_PATHS (1,000 by default): ClickHouse's JSON type keeps files per path,
    and 31 lines of 20,000 made an insert fail for everyone's events (issue 21)."""
    line = json.dumps({**VALID, "context": context}).encode()
    if paths <= lines.MAX_CONTEXT_PATHS:
        assert lines.parse_line(line, lines.log_entry_validator())["context"] == context
    else:
        with pytest.raises(lines.InvalidLine, match="more than 1000 paths.*EH_MAX_CONTEXT_PATHS"):
            lines.parse_line(line, lines.log_entry_validator())
    assert (
        lines.parse_line(line, lines.log_entry_validator(), max_context_paths=paths)["context"]
        == context
    )
    with pytest.raises(lines.InvalidLine, match=f"more than {paths - 1} paths"):
        lines.parse_line(line, lines.log_entry_validator(), max_context_paths=paths - 1)


def test_counting_context_paths_stops_at_the_limit():
    """A line of a million keys costs no more to refuse than the limit's worth of counting
    (after the JSON is read): bounded CPU, not wall time."""
    context = {"x": keys(1_000_000)}
    started = time.process_time()
    for _ in range(1000):
        with pytest.raises(lines.InvalidLine):
            lines.check_context_paths(context, 1000)
    assert time.process_time() - started < 5  # a full count each time would take minutes


def test_unknown_fields_never_overwrite_the_lines_own_context():
    line = {**VALID, "context": {"extra": 1, "_extra": {"keep": "me"}}, "request_id": "r1"}
    entry = lines.parse_line(json.dumps(line).encode(), lines.log_entry_validator())
    assert entry["context"] == {
        "extra": 1,
        "_extra": {"keep": "me"},
        "__extra": {"request_id": "r1"},
    }


def test_line_event_ids_are_uuid5_of_job_and_line():
    job_id = uuid.uuid4()
    ids = outbox.line_event_ids(job_id)
    for line_no in (1, 42, 10**9):
        assert uuid.UUID(ids(line_no)) == uuid.uuid5(job_id, str(line_no))


def test_pattern_errors_are_explained_in_words():
    with pytest.raises(lines.InvalidLine) as info:
        lines.parse_line(
            json.dumps({**VALID, "level": "verbose"}).encode(), lines.log_entry_validator()
        )
    assert str(info.value) == (
        "$.level: 'verbose' is not valid: debug, info, warning, error or "
        "critical, in any letter case."
    )


# --------------------------------------------------------------------------- the two validators

# Values that sit on the schema's edges: lengths, letter case, Unicode, the time pattern's
# corners, and every JSON type in place of a string.
EDGES = [
    "",
    "x",
    "s" * 128,
    "s" * 129,
    "é" * 128,
    "😀" * 64,
    "😀" * 65,
    "a\nb",
    " info",
    "info ",
    "INFO",
    "Info",
    "İnfo",
    "ınfo",
    "warn",
    "WARNING",
    "debug",
    "critical",
    "Error",
    "fatal",
    "2026-11-23T10:00:00Z",
    "2026-11-23t10:00:00z",
    "2026-11-23 10:00:00+01:00",
    "2026-11-23T10:00:00.123456789Z",
    "2026-11-23T10:00:00Z\n",
    "2026-11-23T10:00:00",
    "2026-11-23T10:00:00+0100",
    "2026-13-45T99:99:99Z",
    "٢٠٢٦-١١-٢٣T10:00:00Z",
    "2026-11-23T10:00:00.Z",
    "12026-11-23T10:00:00Z",
    "2026-11-23T10:00:00+01:00:00",
    0,
    1,
    -1,
    10**40,
    1.5,
    float("nan"),
    True,
    False,
    None,
    [],
    ["info"],
    {},
    {"a": 1},
]
FIELDS = ["timestamp", "level", "service", "event_type", "message", "environment", "context"]


def generated_entries(rng, count: int):
    """Entries near the valid one: fields dropped, replaced by edge values, or added."""
    for _ in range(count):
        entry = dict(VALID)
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(FIELDS + ["extra"])
            roll = rng.random()
            if roll < 0.2:
                entry.pop(field, None)
            else:
                entry[field] = rng.choice(EDGES)
        yield entry


def test_both_validators_give_the_same_verdict_on_every_line(rng):
    """jsonschema-rs decides, python-jsonschema explains: if they disagreed, a line could be
    accepted that the schema refuses (or refused without a reason). Every bad kind the tests
    know, the sample file's lines, and 20,000 seeded generated entries."""
    validator = lines.log_entry_validator()
    known = [
        json.loads(line)
        for line in (core.ROOT / "examples" / "sample.jsonl").read_text().splitlines()
        if line.strip() and is_json(line)
    ]
    corpus = [
        *known,
        *(json.loads(line) for line, _ in BAD_LINES if is_json(line)),
        *generated_entries(rng, 20_000),
    ]
    disagreements = [
        entry
        for entry in corpus
        if validator.fast.is_valid(entry) != validator.explainer.is_valid(entry)
    ]
    assert not disagreements, disagreements[:5]  # the seed is in the captured output
    verdicts = {validator.fast.is_valid(entry) for entry in corpus}
    assert verdicts == {True, False}  # the corpus has both kinds


def is_json(line) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


NUMBER_EDGES = [
    "0",
    "-0",
    "-0.0",
    "1.0",
    "1e5",
    "1E-7",
    "0.1",
    "1.7976931348623157e308",
    "5e-324",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1e400",
    "NaN",
    "-Infinity",
    "1" * 19,
    "1" * 25,
]


def orjson_corpus(rng) -> list[bytes]:
    """Lines of every kind the tests know, numbers at the edges of both parsers, duplicate
    keys, deep nesting, escapes, and seeded generated entries written both ways."""
    sample = (core.ROOT / "examples" / "sample.jsonl").read_bytes().splitlines()
    numbers = [b'{"context": {"n": %s}}' % n.encode() for n in NUMBER_EDGES]
    shapes = [
        b'{"a": 1, "a": 2}',
        b'{"a": {"b": 1}, "a": 3}',
        b'"\\u00e9\\ud83d\\ude00"',
        b'"\\u0000"',
        b'"\\ud800"',
        b"[" * 300 + b"]" * 300,
        b"[" * 1100 + b"]" * 1100,
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": 1}\r',
        b' {"a" : [1, 2.5, true, null]} ',
        '{"名": "ü\u2028"}'.encode(),
    ]
    generated = [
        json.dumps(entry, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode()
        for entry in generated_entries(rng, 5_000)
    ]
    return [*sample, *(line for line, _ in BAD_LINES), *numbers, *shapes, *generated]


def test_orjson_reads_every_line_it_takes_as_json_does(rng):
    """lines.load_line reads with orjson and leaves to json what orjson refuses, or what it
    would read differently (an integer past 64 bits). For every line orjson is given, both
    must give the same value, down to the types (1 is not 1.0, -0.0 is not 0)."""
    read_by_orjson = 0
    for raw in orjson_corpus(rng):
        try:
            value, by_orjson = lines.load_line(raw)
        except (lines.InvalidLine, RecursionError):  # refused by both (add_line says why)
            continue
        if by_orjson:
            expected = json.loads(raw.decode("utf-8"))
            read_by_orjson += 1
            assert repr(value) == repr(expected), raw[:200]
    assert read_by_orjson > 3_000  # most of the corpus: the comparison is not vacuous


@pytest.mark.parametrize("number", [2**64, 10**30, -(2**70)])
def test_integers_past_64_bits_are_kept_exact(number):
    line = json.dumps({**VALID, "context": {"n": number}}).encode()
    entry = lines.parse_line(line, lines.log_entry_validator())
    assert entry["context"]["n"] == number and type(entry["context"]["n"]) is int
    assert str(number) in entry["context_json"]


def test_a_context_deeper_than_orjson_writes_is_stored():
    deep = current = {}
    for _ in range(400):
        current["d"] = {}
        current = current["d"]
    line = json.dumps({**VALID, "context": deep}).encode()
    entry = lines.parse_line(line, lines.log_entry_validator())
    assert json.loads(entry["context_json"]) == deep
