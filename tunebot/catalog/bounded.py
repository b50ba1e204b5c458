"""Work run in a child process with hard limits: an address-space cap and a wall-clock timeout.

The template sandbox checks sizes before it builds anything (tunebot/catalog/templates.py);
this is the floor under it for whatever a check does not foresee, such as one C-level
operation that runs long. Each child is a fresh interpreter that imports only its entry point,
its address space capped at its idle size plus `memory` bytes (RLIMIT_AS); when a reply does
not arrive within `seconds` of the request (or of the previous reply of the same request), the
child is killed and the caller gets `Limit`. Children stay warm, one per concurrent caller up
to `size`, and are replaced when killed or dead.

Frames are a 4-byte length and a JSON body, both ways (nothing is unpickled on either side).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import resource
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STARTUP_SECONDS = 60.0  # a cold interpreter on a loaded machine; not part of any request's time
_HEADER = struct.Struct(">I")
_MAX_FRAME = 256 * 2**20
_END = b'{"end": true}'
# Run in the child: register the entry's parent packages without running their __init__
# (tunebot.catalog's loads the whole SQL store: about a second and 70 MB per child), then call
# the entry point.
_BOOT = """
import importlib, importlib.util, sys
module, func = sys.argv[1].split(":")
parts = module.split(".")
for i in range(2, len(parts)):
    name = ".".join(parts[:i])
    if name not in sys.modules:
        sys.modules[name] = importlib.util.module_from_spec(importlib.util.find_spec(name))
getattr(importlib.import_module(module), func)()
"""


class Limit(Exception):
    """A request ran past a hard limit; its child is gone. `kind`: time, memory or crash."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Unavailable(Exception):
    """No child process could be started here (the caller decides what to do without one)."""


# ---- the child's side ----------------------------------------------------------------------


def serve(handler: Callable[[Any], Iterator[dict[str, Any]]]) -> None:
    """A child's main loop: cap memory, then answer each request with the handler's replies
    until the parent closes the pipe. Run by the boot code, never imported for this in a parent.
    """
    memory = int(sys.argv[2])
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the protocol
    cap = _cap_memory(memory)
    _write_frame(out, json.dumps({"ready": True, "cap": cap}).encode())
    while True:
        frame = _read_frame(0, None)
        if frame is None:
            return
        try:
            for reply in handler(json.loads(frame)):
                _write_frame(out, json.dumps(reply).encode())
        except MemoryError:
            # Whatever the handler held is unreliable now: say so and start over fresh.
            os.write(out, _frame(b'{"limit": "memory"}'))
            os._exit(3)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill every later request
            _write_frame(out, json.dumps({"fault": f"{type(exc).__name__}: {exc}"[:300]})
                         .encode())
        _write_frame(out, _END)  # the parent reads up to here: no reply is left for the next


def _cap_memory(memory: int) -> int | None:
    """RLIMIT_AS at the current address space plus `memory`; the cap, or None where the size
    of the address space cannot be read (the timeout still holds there)."""
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return None
    cap = vm + memory
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return cap


# ---- framing -------------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _write_frame(fd: int, body: bytes) -> None:
    view = memoryview(_frame(body))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    buf = bytearray()
    poller = select.poll() if deadline is not None else None
    if poller is not None:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while len(buf) < n:
        if poller is not None and deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    raise TimeoutError
                continue
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(fd: int, deadline: float | None) -> bytes | None:
    head = _read_exact(fd, _HEADER.size, deadline)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > _MAX_FRAME:
        raise ValueError(f"a frame of {size:,} bytes")
    return _read_exact(fd, size, deadline)


# ---- the parent's side ---------------------------------------------------------------------


class _Child:
    """One warm child process and its two pipes."""

    def __init__(self, entry: str, memory: int) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds tunebot/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and boot code
            [sys.executable, "-c", _BOOT, entry, str(memory)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        hello = self.receive(STARTUP_SECONDS)
        if not hello.get("ready"):
            self.kill()
            raise Unavailable(f"the child said {hello!r} at start")

    def send(self, body: bytes) -> None:
        """Write one request, JSON (raises OSError when the child is gone)."""
        _write_frame(self.wfd, body)

    def receive(self, seconds: float) -> dict[str, Any]:
        """The next reply, within `seconds`; Limit (and the child killed) otherwise."""
        try:
            body = _read_frame(self.rfd, time.monotonic() + seconds)
        except TimeoutError:
            self.kill()
            raise Limit("time") from None
        if body is None:
            code = self.kill()
            # 3: the child's own exit after a MemoryError it could not even report.
            raise Limit("memory" if code == 3 else "crash", f"exit status {code}")
        reply = json.loads(body)
        if not isinstance(reply, dict):
            self.kill()
            raise Limit("crash", "a reply that is not an object")
        if reply.get("limit") == "memory":
            self.kill()
            raise Limit("memory")
        return reply

    def kill(self) -> int | None:
        """Kill and reap it; its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        return code

    def close(self, wait: float = 1.0) -> None:
        """Let it go: close its input (it exits at the end of the pipe), kill if it lingers."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=wait)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def forget(self) -> None:
        """In a forked process: drop the inherited pipes without touching the parent's child."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        self.proc.returncode = 0  # never wait for a process that is not ours


class ChildPool:
    """Warm children for one entry point; `run` sends a request and yields its replies."""

    def __init__(self, entry: str, *, seconds: float, memory: int, size: int = 4) -> None:
        self.entry = entry
        self.seconds = seconds
        self.memory = memory
        self.size = size
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._busy = 0
        self._broken_until = 0.0

    def _borrow(self) -> _Child:
        with self._cond:
            while True:
                if self._idle:
                    self._busy += 1
                    return self._idle.pop()
                if self._busy < self.size:
                    if time.monotonic() < self._broken_until:
                        raise Unavailable("child processes failed to start a moment ago")
                    self._busy += 1
                    break
                self._cond.wait()
        try:
            return _Child(self.entry, self.memory)
        except (OSError, Unavailable, Limit) as exc:
            with self._cond:
                self._busy -= 1
                self._broken_until = time.monotonic() + 30
                self._cond.notify()
            log.warning("could not start a bounded child for %s: %s", self.entry, exc)
            raise Unavailable(str(exc)) from None

    def _give_back(self, child: _Child | None) -> None:
        with self._cond:
            self._busy -= 1
            if child is not None:
                self._idle.append(child)
            self._cond.notify()

    def run(self, body: bytes, replies: int = 1) -> Generator[dict[str, Any], None, None]:
        """Send a request (JSON) to a warm child and yield its replies (at most `replies`),
        each within `seconds` of the one before. Limit when a hard limit trips (the child is
        then killed); Unavailable when no child can be started. A caller that stops early gets
        the child killed, since it may still be working."""
        if os.getpid() != self._pid:
            self._reset()
        child = self._borrow()
        done = False
        try:
            try:
                child.send(body)
            except OSError:  # it died while idle (killed from outside): one fresh try
                child.kill()
                child = _Child(self.entry, self.memory)
                child.send(body)
            count = 0
            while True:
                reply = child.receive(self.seconds)
                if reply.get("end"):
                    break
                count += 1
                if count > replies:  # out of step with its parent: never reuse it
                    raise Limit("crash", f"more than {replies} replies")
                yield reply
            done = True
        finally:
            if done:
                self._give_back(child)
            else:
                child.kill()
                self._give_back(None)

    def close(self) -> None:
        """Stop every idle child (at exit)."""
        if os.getpid() != self._pid:
            return
        with self._cond:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()

    def forget(self) -> None:
        """After a fork: the children belong to the parent process; start over empty."""
        for child in self._idle:
            child.forget()
        self._reset()


_POOLS: weakref.WeakSet[ChildPool] = weakref.WeakSet()


def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()


def _forget_all() -> None:
    for pool in list(_POOLS):
        pool.forget()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)

