"""The read side of the fake workspace: what the app called, posted and uploaded."""

from __future__ import annotations

import copy
from typing import Any

from .records import Call, Download, Rejected, Response, SocketAck, UploadedFile


class Recorded:
    """Mixin of Workspace: queries over what was recorded, each under the workspace lock."""

    _lock: Any  # the workspace's RLock
    calls: list[Call]
    rejected: list[Rejected]
    responses: list[Response]
    socket_acks: list[SocketAck]
    downloads: list[Download]
    files: list[UploadedFile]
    _messages: dict[str, list[dict[str, Any]]]
    _ephemerals: list[dict[str, Any]]
    _file_content: dict[str, bytes]

    def clear_records(self) -> None:
        """Forget recorded calls, rejections, responses, acks and downloads (state stays)."""
        with self._lock:
            for records in (
                self.calls,
                self.rejected,
                self.responses,
                self.socket_acks,
                self.downloads,
            ):
                records.clear()

    def calls_for(self, method: str) -> list[Call]:
        """Accepted calls of one method, in order."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Every message the bot has in `channel` (roots and replies), in order, as updated."""
        with self._lock:
            if channel[:1] in ("U", "W"):
                channel = f"D{channel[1:]}DM"
            return copy.deepcopy(self._messages.get(channel, []))

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The replies in one thread (not its root), in order, as updated."""
        return [
            m
            for m in self.messages(channel)
            if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts
        ]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message by ts, as updated, or None."""
        return next((m for m in self.messages(channel) if m["ts"] == ts), None)

    def ephemerals(
        self, channel: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Ephemeral messages (each has `channel` and the recipient `user`), in order."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._ephemerals
                if channel in (None, m["channel"]) and user in (None, m["user"])
            ]

    def files_in(self, channel: str, thread_ts: str | None = None) -> list[UploadedFile]:
        """Files the app uploaded into `channel` (and `thread_ts` when given)."""
        with self._lock:
            return [
                f
                for f in self.files
                if f.channel == channel and (thread_ts is None or f.thread_ts == thread_ts)
            ]

    def file_content(self, file_id: str) -> bytes:
        """The bytes of any stored file (uploaded by the app or added by the test)."""
        with self._lock:
            return self._file_content[file_id]
