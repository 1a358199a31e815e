"""Compressed uploads: which names are taken, and the bounded decoding of gzip and zstd streams.

An upload named `.gz` or `.zst` is stored as it was sent; the worker reads it through a
`DecodedStream`, which decodes in bounded chunks while it streams and stops at the limits
(EH_MAX_DECODED_BYTES, EH_MAX_DECODE_RATIO) before it allocates past them. The API decodes
the head only (`decode_head`), to check the first line. Pure logic, no service: tested alone
by tests/test_decoding.py.
"""

from __future__ import annotations

import io
import re
import zlib

import zstandard

GZIP, ZSTD = "gzip", "zstd"
MAGIC = {GZIP: b"\x1f\x8b", ZSTD: b"\x28\xb5\x2f\xfd"}
SUFFIXES = {".gz": GZIP, ".zst": ZSTD}
# What an upload may be named: JSON lines under their usual names, a rotated log's number,
# then a compression suffix. The content, not the name, decides whether the file is valid.
ACCEPTED_NAME = re.compile(
    r".+\.(?:jsonl|ndjson|json|log)(?:\.\d{1,6})?(?:\.gz|\.zst)?", re.IGNORECASE | re.DOTALL
)
ACCEPTED_NAMES_TEXT = (
    ".jsonl, .ndjson, .json (JSON lines) or .log, optionally rotated "
    "(app.log.1) and compressed (.gz, .zst)"
)
RAW_READ_BYTES = 64 * 1024  # compressed bytes read from storage at a time
RATIO_GRACE_BYTES = 1024 * 1024  # the ratio limit applies once this much is decoded
# zstd's decompressobj has no max_length: it is fed this many compressed bytes at a time. A
# zstd block decodes to at most 128 KiB from at least 4 bytes, so one feed decodes to at most
# 8 MiB (what exceeds the caller's max_length waits in `pending_output`, as a view).
ZSTD_FEED_BYTES = 256


class DecodeError(Exception):
    """The compressed stream cannot be decoded past `offset` decoded bytes; `reason` says why
    in words fit for the job's owner."""

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} (after {offset} decoded bytes)")
        self.reason, self.offset = reason, offset


class CorruptStream(DecodeError):
    """Not gzip/zstd, damaged, or cut short."""


class DecodeLimit(DecodeError):
    """The stream decodes to more than a limit allows (a bomb, or simply too large)."""


def compression_of(file_name: str) -> str | None:
    """The compression an upload's name declares (gzip, zstd or None); ValueError, with the
    names that are taken, for a name this service does not take."""
    if not ACCEPTED_NAME.fullmatch(file_name):
        raise ValueError(
            f"accepted file names end in {ACCEPTED_NAMES_TEXT}; "
            f"got {file_name or 'a file without a name'!r}"
        )
    lower = file_name.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if lower.endswith(suffix)), None)


def object_suffix(compression: str | None) -> str:
    """The stored object's name ending: .jsonl, .jsonl.gz or .jsonl.zst."""
    return ".jsonl" + {GZIP: ".gz", ZSTD: ".zst", None: ""}[compression]


# --------------------------------------------------------------------------- decoders


class GzipDecoder:
    """One gzip member (RFC 1952) at a time; zlib's own bounded decoding (max_length)."""

    def __init__(self):
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.pending_output = b""

    def decode(self, data: bytes, max_length: int) -> bytes:
        return self.zlib.decompress(data, max_length)

    @property
    def unconsumed_tail(self) -> bytes:
        return self.zlib.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self.zlib.eof

    @property
    def unused_data(self) -> bytes:
        return self.zlib.unused_data


class ZstdDecoder:
    """One zstd frame at a time, its output bounded by feeding it small slices of input."""

    def __init__(self):
        self.obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=False)
        self.tail = b""  # input not fed yet
        self.pending_output = b""  # decoded past the caller's max_length

    def decode(self, data: bytes, max_length: int) -> bytes:
        if self.pending_output or self.obj.eof:  # decoded already: no more input until used
            out = self.pending_output
            self.pending_output = out[max_length:]
            if not self.obj.eof:
                self.tail = data
            return bytes(out[:max_length])
        out, view, pos = bytearray(), memoryview(data), 0
        while len(out) < max_length and pos < len(data) and not self.obj.eof:
            try:
                out += self.obj.decompress(view[pos : pos + ZSTD_FEED_BYTES])
            except zstandard.ZstdError as exc:
                raise ValueError(str(exc)) from None
            pos += ZSTD_FEED_BYTES
        if self.obj.eof:  # the frame ended: what it did not use, and the slices never fed
            self.tail = bytes(self.obj.unused_data) + bytes(view[pos:])
        else:
            self.tail = bytes(view[pos:])
        if len(out) > max_length:
            self.pending_output = memoryview(bytes(out))[max_length:]
            return bytes(out[:max_length])
        return bytes(out)

    @property
    def unconsumed_tail(self) -> bytes:
        return b"" if self.obj.eof else self.tail

    @property
    def eof(self) -> bool:
        return self.obj.eof and not self.pending_output

    @property
    def unused_data(self) -> bytes:
        return self.tail if self.obj.eof else b""


DECODERS = {GZIP: GzipDecoder, ZSTD: ZstdDecoder}


class DecodedStream:
    """A file-like `read(n)` of the decoded bytes of a compressed stream `raw` (anything with
    `read(n)`), in bounded memory: at most `n` bytes decoded per read, concatenated members
    (gzip) and frames (zstd) read as one stream.

    Raises CorruptStream where the stream is damaged or ends inside a member, and DecodeLimit
    before decoding past `max_decoded` bytes, or past `max_ratio` times the compressed bytes
    read (once RATIO_GRACE_BYTES are decoded; 0: no ratio limit). `decoded` counts the decoded
    bytes returned.
    """

    def __init__(self, raw, compression: str, *, max_decoded: int, max_ratio: float):
        self.raw, self.compression = raw, compression
        self.max_decoded, self.max_ratio = max_decoded, max_ratio
        self.decoder = DECODERS[compression]()
        self.fed = False  # the current member has had input
        self.input = b""  # compressed bytes read and not yet fed
        self.encoded = self.decoded = 0
        self.stopped: DecodeLimit | None = None  # raised by the next read

    def read(self, n: int = RAW_READ_BYTES) -> bytes:
        while True:
            if self.stopped is not None:
                raise self.stopped
            if not self.input and not self.decoder.pending_output:
                self.input = self.raw.read(RAW_READ_BYTES)
                self.encoded += len(self.input)
                if not self.input:
                    return self._at_end()
            if out := self._decode(n):
                return out

    def skip(self, n: int) -> int:
        """Read and drop `n` decoded bytes (a resumed job's processed part); how many were."""
        done = 0
        while done < n and (chunk := self.read(min(n - done, 1024 * 1024))):
            done += len(chunk)
        return done

    def close(self) -> None:
        self.raw.close()

    def _decode(self, n: int) -> bytes:
        cap, limit = self._cap()
        data, self.input = self.input, b""
        self.fed = self.fed or bool(data)
        try:
            out = self.decoder.decode(data, min(n, cap - self.decoded + 1))
        except (zlib.error, ValueError) as exc:
            raise CorruptStream(
                f"the {self.compression} stream is corrupt ({exc})", self.decoded
            ) from None
        if self.decoder.eof:  # a member ended: what follows it starts the next one
            # (zlib's unconsumed_tail then repeats part of unused_data: it is not added)
            self.input = self.decoder.unused_data
            self.decoder, self.fed = DECODERS[self.compression](), False
        else:
            self.input = self.decoder.unconsumed_tail
        if self.decoded + len(out) > cap:  # what is within the limit is read first
            out = out[: cap - self.decoded]
            self.stopped = DecodeLimit(limit, cap)
        self.decoded += len(out)
        return out

    def _cap(self) -> tuple[int, str]:
        """The most the stream may have decoded to now, and the reason if it decodes past it."""
        by_ratio = max(RATIO_GRACE_BYTES, int(self.max_ratio * self.encoded))
        if self.max_ratio > 0 and by_ratio < self.max_decoded:
            return by_ratio, (
                f"the file decodes to more than EH_MAX_DECODE_RATIO "
                f"({self.max_ratio:g}) times its compressed size: it looks like "
                "a compression bomb"
            )
        return self.max_decoded, (
            f"the file decodes to more than EH_MAX_DECODED_BYTES ({self.max_decoded} bytes)"
        )

    def _at_end(self) -> bytes:
        if self.fed:
            raise CorruptStream(
                f"the {self.compression} stream is truncated: it ends inside a compressed block",
                self.decoded,
            )
        if not self.encoded:
            raise CorruptStream(f"the file is empty, not {self.compression}", 0)
        return b""


def decode_head(compression: str, head: bytes, max_bytes: int) -> tuple[bytes, bool]:
    """The first up to `max_bytes` decoded bytes of a compressed file whose first bytes are
    `head`, and whether that is all the file holds (its end was reached inside `head`).
    CorruptStream if `head` is not that compression. Bounded: decodes at most `max_bytes`."""
    if not MAGIC[compression].startswith(head[:4]) and not head.startswith(MAGIC[compression]):
        raise CorruptStream(f"the file is not {compression} (its name says it is)", 0)
    stream = DecodedStream(io.BytesIO(head), compression, max_decoded=max_bytes + 1, max_ratio=0)
    out = bytearray()
    try:
        while len(out) <= max_bytes and (chunk := stream.read(max_bytes + 1 - len(out))):
            out += chunk
    except DecodeLimit:
        return bytes(out), False
    except CorruptStream as exc:
        if "truncated" in exc.reason:
            return bytes(out), False
        raise
    return bytes(out), len(out) <= max_bytes
