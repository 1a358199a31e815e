"""The API below aiohttp's client: WebSocket frames read and written by hand, a WebSocket's
messages read until it closes, and a TCP proxy that fails on demand."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading

import aiohttp

import eventhorizon

# --------------------------------------------------------------------------- raw WebSockets


async def upgrade_with_a_tiny_buffer(host: str, port: int, path: str, header: str) -> socket.socket:
    """A raw socket with a 1 KiB receive buffer, upgraded to a WebSocket at `path` (with one
    extra request header), its handshake's answer read."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n{header}\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await loop.sock_recv(sock, 1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def read_frame(sock: socket.socket) -> bytes:
    """The payload of the next (unmasked, unfragmented) frame a server sent."""
    head = await read_exactly(sock, 2)
    length = head[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(await read_exactly(sock, 2 if length == 126 else 8), "big")
    return await read_exactly(sock, length)


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await asyncio.get_running_loop().sock_recv(sock, n - len(data))
        assert chunk, "the connection closed"
        data += chunk
    return data


async def read_until_the_connection_ends(sock: socket.socket, timeout: float) -> bytes:
    """Read all a socket receives until the server closes or resets it."""
    loop = asyncio.get_running_loop()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)  # catch up quickly
    received = bytearray()

    async def read_all():
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                received.extend(chunk)
        except ConnectionResetError:
            pass

    await asyncio.wait_for(read_all(), timeout)
    return bytes(received)


def close_code_of(frames: bytes) -> int | None:
    """The code of the close frame among a server's (unmasked) WebSocket frames, if any."""
    at = 0
    while at + 2 <= len(frames):
        opcode, length, at = frames[at] & 0x0F, frames[at + 1] & 0x7F, at + 2
        if length == 126:
            length, at = int.from_bytes(frames[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(frames[at : at + 8], "big"), at + 8
        if opcode == 0x8 and length >= 2 and at + 2 <= len(frames):
            return int.from_bytes(frames[at : at + 2], "big")
        at += length
    return None


# --------------------------------------------------------------------------- a faulty network


class TcpProxy:
    """127.0.0.1:`port` forwarding to `target` (host, port), with the faults a test switches
    on while it runs: `hang()`: what clients send from then on is swallowed and never answered,
    the connections left open (a server stuck mid-request); `cut_requests_over(n)`: a
    connection that has carried more than n bytes upstream is reset (a server dying mid-body;
    small requests still pass); `down()` / `up()`: every connection reset, new ones too."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.hanging = threading.Event()
        self.swallowed = threading.Event()  # something sent while hanging: a request is stuck
        self.is_down = False
        self.cut_over: int | None = None
        self.cuts = 0
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self.hanging.set()

    def cut_requests_over(self, n: int) -> None:
        self.cut_over = n

    def down(self) -> None:
        self.is_down = True
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)

    def up(self) -> None:
        self.is_down = False

    def close(self) -> None:
        """Reset every connection, and refuse new ones: a close alone would not wake the
        thread blocked in accept(), which would go on taking (and swallowing) connections."""
        self.is_down = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.is_down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            sent = [0]  # bytes this connection carried upstream
            threading.Thread(target=self._pump, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, sent: list[int] | None) -> None:
        try:
            while data := source.recv(65536):
                if sent is not None and self.hanging.is_set():
                    self.swallowed.set()
                    continue
                if sent is not None:
                    sent[0] += len(data)
                    if self.cut_over is not None and sent[0] > self.cut_over:
                        self.cuts += 1
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _reset(sock)
        with self._lock:
            self._sockets -= {source, sink}


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a server that died would look; the shutdown
    wakes a thread blocked reading it (a close alone would not)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------- WebSocket messages


async def received_until_closed(ws, timeout: float = 60.0) -> list[dict]:
    """Every state a WebSocket sends until the server closes it, within `timeout` seconds."""

    async def receive_all():
        states = []
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT, message
            states.append(json.loads(message.data))
        return states

    return await asyncio.wait_for(receive_all(), timeout)


def ranks(states) -> list[tuple[int, int]]:
    return [(eventhorizon.STATUS_RANK[s["status"]], s["lines_processed"]) for s in states]
