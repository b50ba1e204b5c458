"""HTTP mode reads at most TUNEBOT_MAX_BODY_BYTES of a request body: anything larger is answered
413 before its signature is checked, without the rest being read (issue 17, item 7).

The body is sent the way an attacker would: unsigned, with a timestamp header, as fast as the
socket takes it, once with a declared Content-Length and once chunked (no length to check up
front). What the bot's ASGI app pulled off the connection is counted at the app's edge.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from bot.app import build_bolt, http_app
from devtools.slack_api.payloads import signed_headers, slash_command_body
from tests.bot.conftest import SECRET, Served, running_stack
from tests.reliability.conftest import Report, size

LIMIT = 256 * 1024
CHUNK = b"a" * 65536
# What one read of the connection can hand the app at once (asyncio reads up to 256 KiB).
ONE_READ = 256 * 1024 + len(CHUNK)


class Counted:
    """The bot's ASGI app, counting the body bytes it pulled from the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


class PeakRSS:
    """How far this process's resident size rose (the bot runs here): the kernel's high-water
    mark, reset at the start."""

    def __enter__(self) -> PeakRSS:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM back to the current size
        self.base = _status("VmRSS:")
        self.peak = self.base
        return self

    def __exit__(self, *_: object) -> None:
        self.peak = _status("VmHWM:")

    @property
    def growth_mb(self) -> float:
        """How far the peak rose above the start, in MB."""
        return float(self.peak - self.base) / 2**20


def flood(port: int, total: int, *, chunked: bool) -> tuple[int | None, int, float]:
    """POST `total` bytes of body to /slack/events, unsigned but with a timestamp, sending until
    the server answers or closes: (status or None, bytes sent, seconds to the answer)."""
    head = ["POST /slack/events HTTP/1.1", "Host: bot", "Content-Type: application/json",
            f"X-Slack-Request-Timestamp: {int(time.time())}", "X-Slack-Signature: v0=00"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    started = time.monotonic()
    sent = 0
    answer = b""
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        while sent < total and time.monotonic() - started < 60:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                break
            if writable:
                piece = CHUNK if not chunked else b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
                try:
                    sent += sock.send(piece)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        sock.settimeout(30)
        if chunked and sent >= total:
            sock.sendall(b"0\r\n\r\n")
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent, elapsed


def test_oversized_bodies_get_413_without_being_read(tmp_path: Path, redis_url: str,
                                                     report: Report) -> None:
    total = size(24, 120) * 2**20
    with running_stack(tmp_path, None, redis_url, max_body_bytes=LIMIT,
                       database_url=f"sqlite:///{tmp_path / 'bot.db'}") as stack:
        app = Counted(http_app(build_bolt(stack.settings, stack.core)))
        server = Served(app)  # type: ignore[arg-type]  # an ASGI app, as uvicorn takes it
        try:
            results: dict[str, tuple[int | None, int, int, float, float]] = {}
            for name, chunked in (("declared length", False), ("chunked", True)):
                app.read = 0
                with PeakRSS() as mem:
                    status, sent, elapsed = flood(server.port, total, chunked=chunked)
                results[name] = (status, app.read, sent, elapsed, mem.growth_mb)
            # A genuine request still goes through, and so does one just under the limit
            # (whatever its command text, it is read and verified, not refused for its size).
            ok = stack_post(server, slash_command_body("help", command="/tunebot"))
            near = slash_command_body("x" * (LIMIT - 2048), command="/tunebot")
            near_status = stack_post(server, near)
        finally:
            server.stop()
    worst_read = max(r[1] for r in results.values())
    refused = sum(r[0] == 413 for r in results.values())
    report.add("17.7 body limit", f"unsigned {total // 2**20} MB bodies (length, chunked)",
               len(results), held=refused, lost=len(results) - refused,
               note="; ".join(f"{k}: {r[0]} after {r[1]:,} bytes read, {r[3]:.2f} s, "
                              f"RSS +{r[4]:.0f} MB" for k, r in results.items())
               + f"; limit {LIMIT:,}")
    for name, (status, read, _sent, _elapsed, growth) in results.items():
        assert status == 413, (name, results)
        assert read <= LIMIT + ONE_READ, (name, results)
        assert growth < 64, (name, results)
    assert worst_read <= LIMIT + ONE_READ
    assert ok == 200 and near_status == 200, (ok, near_status)


def stack_post(server: Served, body: bytes) -> int:
    """POST a signed body to the served app; its status."""
    headers = signed_headers(body, SECRET)
    return httpx.post(f"{server.base_url}/slack/events", content=body, headers=headers,
                      timeout=30).status_code
