"""Failure injection for the fake workspace: HTTP errors, rate limits and ok=false answers."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class Failure:
    """An injected failure: HTTP `status` (or ok=false `error` at 200) for matching calls."""

    status: int
    error: str
    methods: frozenset[str] | None
    remaining: int | None
    until: float | None
    retry_after: int

    def matches(self, method: str, now: float) -> bool:
        """Whether this failure is still live and covers `method`."""
        if self.until is not None and now >= self.until:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.methods is None:
            return "." in method  # pseudo-methods such as response_url only when named
        return method in self.methods


class FailureInjection:
    """Mixin of Workspace: injected failures, consumed as matching calls arrive."""

    _lock: Any  # the workspace's RLock
    _failures: list[Failure]

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        methods: Iterable[str] | None = None,
        *,
        retry_after: int = 1,
    ) -> None:
        """Answer the next `n` matching calls with HTTP `status`; nothing is recorded."""
        self._add_failure(status, methods, remaining=n, until=None, retry_after=retry_after)

    def fail_for(
        self,
        seconds: float,
        status: int = 429,
        methods: Iterable[str] | None = None,
        *,
        retry_after: int = 1,
    ) -> None:
        """Answer every matching call with HTTP `status` for `seconds`."""
        self._add_failure(
            status, methods, remaining=None, until=time.time() + seconds, retry_after=retry_after
        )

    def error_next(self, method: str, error: str, n: int = 1) -> None:
        """Answer the next `n` calls of `method` with HTTP 200 `{"ok": false, "error": error}`."""
        with self._lock:
            self._failures.append(Failure(200, error, frozenset([method]), n, None, 0))

    def clear_failures(self) -> None:
        """Drop every injected failure."""
        with self._lock:
            self._failures.clear()

    def _add_failure(
        self,
        status: int,
        methods: Iterable[str] | None,
        *,
        remaining: int | None,
        until: float | None,
        retry_after: int,
    ) -> None:
        error = "ratelimited" if status == 429 else "internal_error"
        chosen = (
            None
            if methods is None
            else frozenset([methods] if isinstance(methods, str) else methods)
        )
        with self._lock:
            self._failures.append(Failure(status, error, chosen, remaining, until, retry_after))

    def take_failure(self, method: str) -> Failure | None:
        """Consume and return the injected failure that applies to this call, if any."""
        now = time.time()
        with self._lock:
            for failure in self._failures:
                if failure.matches(method, now):
                    if failure.remaining is not None:
                        failure.remaining -= 1
                    return failure
            return None
