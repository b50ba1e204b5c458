"""Block Kit, built by pure functions from transport-neutral replies. User text is escaped.

Every limit Slack enforces is applied through bot/limits.py: long text is clipped with a note
saying how much was cut, fields beyond ten go into another section (each field within 2,000
characters), and a reply with more blocks than a message holds ends with a note saying how many
were left out.
"""

from __future__ import annotations

from typing import Any

from bot import limits
from tunebot.replies import Reply, format_table


def escape(text: str) -> str:
    """Escape &, < and > so text can never ping @channel/@here, mention users or inject links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> list[dict[str, Any]]:
    # Code fences keep tables aligned; the fence itself must survive clipping.
    return [limits.code_section(escape(text).replace("```", "ˋˋˋ"))]


def blocks_of(b: dict[str, Any]) -> list[dict[str, Any]]:
    """One reply block as the Block Kit blocks that show all of it (images are uploaded as
    files instead, so they make none)."""
    kind = b.get("type")
    if kind == "section":
        return [limits.section(escape(b["text"]))]
    if kind == "context":
        return limits.context([escape(b["text"])])
    if kind == "code":
        return _code(b["text"])
    if kind == "table":
        return _code(format_table(b["header"], b["rows"]))
    if kind == "fields":
        return limits.field_sections([escape(f"*{k}*\n{v}") for k, v in b["pairs"]])
    if kind == "divider":
        return [{"type": "divider"}]
    if kind == "actions":
        return limits.actions([limits.button(btn["action_id"], btn["text"], btn.get("value", ""))
                               for btn in b["buttons"]])
    return []


def reply_blocks(reply: Reply) -> list[dict[str, Any]]:
    """Block Kit blocks for a reply, within a message's limits."""
    out = [bb for b in reply.blocks for bb in blocks_of(b)]
    return limits.fit(out) or [limits.section(escape(reply.text or " "))]


def fallback_text(reply: Reply) -> str:
    """The notification text (escaped, clipped)."""
    return limits.clip(escape(reply.text or " "), limits.NOTIFICATION_TEXT)


def images(reply: Reply) -> list[dict[str, str]]:
    """The files a reply wants uploaded into the thread."""
    return [b for b in reply.blocks if b.get("type") == "image"]
