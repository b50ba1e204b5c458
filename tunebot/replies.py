"""Transport-neutral replies: what a command or job says, rendered by the CLI or by bot/blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Block kinds: section(text) · fields(pairs) · table(header, rows) · code(text)
# · image(path, title) · actions(buttons) · context(text) · divider
Block = dict[str, Any]


@dataclass
class Reply:
    """A message: fallback text plus structured blocks, optionally a new root status line."""

    text: str
    blocks: list[Block] = field(default_factory=list)
    status: str | None = None  # when set, the job's root message becomes this line
    ephemeral: bool = False
    error: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored in job_events.payload."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        """Inverse of to_dict; ignores unknown keys."""
        keys = ("text", "blocks", "status", "ephemeral", "error")
        known = {k: data[k] for k in keys if k in data}
        return cls(**known)


def section(text: str) -> Block:
    """A paragraph of text."""
    return {"type": "section", "text": text}


def fields(pairs: list[tuple[str, str]]) -> Block:
    """Label/value pairs shown side by side."""
    return {"type": "fields", "pairs": [[k, v] for k, v in pairs]}


def table(header: list[str], rows: list[list[Any]]) -> Block:
    """A small table (rendered monospaced in Slack)."""
    return {"type": "table", "header": header, "rows": [[str(c) for c in r] for r in rows]}


def code(text: str) -> Block:
    """Preformatted text."""
    return {"type": "code", "text": text}


def image(path: str, title: str) -> Block:
    """A file on disk to upload into the thread (a chart, a loss curve)."""
    return {"type": "image", "path": path, "title": title}


def context(text: str) -> Block:
    """Small print under a message."""
    return {"type": "context", "text": text}


def actions(buttons: list[dict[str, str]]) -> Block:
    """Buttons: each {"action_id", "text", "value"}."""
    return {"type": "actions", "buttons": buttons}


def error(text: str, usage: str | None = None) -> Reply:
    """An error reply, with the command's usage line when there is one."""
    full = f"{text}\nUsage: {usage}" if usage else text
    return Reply(text=full, blocks=[section(full)], ephemeral=True, error=True)


def render_text(reply: Reply) -> str:
    """Render a reply for the terminal."""
    out: list[str] = []
    for block in reply.blocks or [section(reply.text)]:
        kind = block.get("type")
        if kind in ("section", "context"):
            out.append(block["text"])
        elif kind == "code":
            out.append(block["text"])
        elif kind == "fields":
            width = max((len(k) for k, _ in block["pairs"]), default=0)
            out.extend(f"{k.ljust(width)}  {v}" for k, v in block["pairs"])
        elif kind == "table":
            out.append(format_table(block["header"], block["rows"]))
        elif kind == "image":
            out.append(f"[{block['title']}: {block['path']}]")
        elif kind == "actions":
            out.append("  ".join(f"[{b['text']}]" for b in block["buttons"]))
        elif kind == "divider":
            out.append("")
    return "\n".join(out)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain monospaced table."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) if i < len(r) else 0 for r in cols) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
