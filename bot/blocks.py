"""Block Kit, built by pure functions from transport-neutral replies. User text is escaped."""

from __future__ import annotations

from typing import Any

from tunebot.replies import Reply, format_table

SECTION_LIMIT = 2900  # Slack's section text limit is 3000 characters
MAX_BLOCKS = 45


def escape(text: str) -> str:
    """Escape &, < and > so text can never ping @channel/@here, mention users or inject links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(escape(text))}


def _code(text: str) -> dict[str, Any]:
    # Code fences keep tables aligned; the fence itself must survive clipping.
    body = escape(text).replace("```", "ˋˋˋ")
    return {"type": "section", "text": {"type": "mrkdwn",
                                        "text": "```" + _clip(body, SECTION_LIMIT - 6) + "```"}}


def block(b: dict[str, Any]) -> dict[str, Any] | None:
    """One reply block as a Block Kit block (images are uploaded as files instead)."""
    kind = b.get("type")
    if kind == "section":
        return {"type": "section", "text": _mrkdwn(b["text"])}
    if kind == "context":
        return {"type": "context", "elements": [_mrkdwn(b["text"])]}
    if kind == "code":
        return _code(b["text"])
    if kind == "table":
        return _code(format_table(b["header"], b["rows"]))
    if kind == "fields":
        items = [_mrkdwn(f"*{k}*\n{v}") for k, v in b["pairs"][:10]]
        return {"type": "section", "fields": items}
    if kind == "divider":
        return {"type": "divider"}
    if kind == "actions":
        return {"type": "actions", "elements": [
            {"type": "button", "action_id": btn["action_id"], "value": btn.get("value", ""),
             "text": {"type": "plain_text", "text": btn["text"][:75]}}
            for btn in b["buttons"][:5]]}
    return None


def reply_blocks(reply: Reply) -> list[dict[str, Any]]:
    """Block Kit blocks for a reply."""
    out = [bb for b in reply.blocks if (bb := block(b)) is not None]
    return out[:MAX_BLOCKS] or [{"type": "section", "text": _mrkdwn(reply.text or " ")}]


def fallback_text(reply: Reply) -> str:
    """The notification text (escaped, clipped)."""
    return _clip(escape(reply.text or " "), 3000)


def images(reply: Reply) -> list[dict[str, str]]:
    """The files a reply wants uploaded into the thread."""
    return [b for b in reply.blocks if b.get("type") == "image"]
