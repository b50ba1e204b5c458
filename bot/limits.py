"""Slack's Block Kit limits, in one place: every block, view and message tunebot builds goes
through these helpers, so nothing Slack would refuse (`invalid_blocks`, `msg_too_long`,
`invalid_arguments`) is ever sent. Too much text is clipped with a visible note (the CLI shows
it whole), too many fields or buttons are split across blocks, and too many blocks end in a
note saying how many were left out.

The limits are Slack's documented ones (api.slack.com/reference/block-kit); the local Slack
API in devtools/slack_api/blockcheck.py enforces the same ones independently.
"""

from __future__ import annotations

from typing import Any

MESSAGE_BLOCKS = 50           # blocks in a message
VIEW_BLOCKS = 100             # blocks in a modal or Home tab
MESSAGE_TEXT = 40_000         # a message's top-level text (longer: msg_too_long)
NOTIFICATION_TEXT = 3000      # what tunebot puts in the top-level text (the notification)
SECTION_TEXT = 3000           # a section's text
FIELDS_PER_SECTION = 10       # a section's fields
FIELD_TEXT = 2000             # each field's text
HEADER_TEXT = 150             # a header's plain text
CONTEXT_ELEMENTS = 10         # a context block's elements
CONTEXT_TEXT = 3000           # a context element's text
ACTION_ELEMENTS = 25          # an actions block's elements
BUTTON_TEXT = 75              # a button's label
BUTTON_VALUE = 2000           # a button's value
ACTION_ID = 255               # action_id and block_id
OPTION_TEXT = 75              # an option's label
OPTION_VALUE = 150            # an option's value
SELECT_OPTIONS = 100          # options of a static select
INPUT_LABEL = 2000            # an input block's label
INPUT_HINT = 2000             # an input block's hint
INPUT_MAX_LENGTH = 3000       # plain_text_input max_length (and so its initial_value)
PLACEHOLDER = 150             # placeholder text
VIEW_TITLE = 24               # a modal's title, submit and close labels
PRIVATE_METADATA = 3000       # a view's private_metadata
CALLBACK_ID = 255             # a view's callback_id

ELLIPSIS = "…"


def clip(text: str, limit: int, *, note: bool = True) -> str:
    """`text` if it fits, else its start and a visible note of how much was cut (plain `…`
    when `note` is False or the limit is too small for one)."""
    if len(text) <= limit:
        return text
    if note:
        tail = _note(len(text) - limit)
        for _ in range(3):  # the note's own length can change the count by a digit
            keep = limit - len(tail)
            if keep <= 0:
                break
            head = _safe_cut(text, keep)
            tail = _note(len(text) - len(head))
            if len(head) + len(tail) <= limit:
                return head + tail
    return _safe_cut(text, max(limit - 1, 0)) + ELLIPSIS


def _note(cut: int) -> str:
    return f"{ELLIPSIS} ({cut:,} more characters not shown)"


def _safe_cut(text: str, keep: int) -> str:
    # Never end inside an HTML entity (&amp; &lt; &gt;) that escaping produced.
    head = text[:keep]
    amp = head.rfind("&", max(0, keep - 5))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head


def plain(text: str, limit: int) -> dict[str, Any]:
    """A plain_text object, clipped to `limit`."""
    return {"type": "plain_text", "text": clip(text, limit, note=False) or " "}


def mrkdwn(text: str, limit: int = SECTION_TEXT) -> dict[str, Any]:
    """A mrkdwn text object, clipped to `limit` with a note."""
    return {"type": "mrkdwn", "text": clip(text, limit) or " "}


def section(text: str) -> dict[str, Any]:
    """A section of mrkdwn text, clipped to 3,000 characters with a note."""
    return {"type": "section", "text": mrkdwn(text or " ", SECTION_TEXT)}


def code_section(text: str) -> dict[str, Any]:
    """Preformatted text in one section; the fences survive clipping (the note is inside)."""
    return {"type": "section", "text": {"type": "mrkdwn",
                                        "text": "```" + clip(text or " ", SECTION_TEXT - 6)
                                                + "```"}}


def field_sections(items: list[str]) -> list[dict[str, Any]]:
    """Sections of at most 10 fields each, every field clipped to 2,000 characters."""
    fields = [mrkdwn(item, FIELD_TEXT) for item in items]
    return [{"type": "section", "fields": fields[i:i + FIELDS_PER_SECTION]}
            for i in range(0, len(fields), FIELDS_PER_SECTION)] or [section(" ")]


def context(texts: list[str]) -> list[dict[str, Any]]:
    """Context blocks of at most 10 mrkdwn elements each."""
    elements = [mrkdwn(t, CONTEXT_TEXT) for t in texts]
    return [{"type": "context", "elements": elements[i:i + CONTEXT_ELEMENTS]}
            for i in range(0, len(elements), CONTEXT_ELEMENTS)]


def button(action_id: str, text: str, value: str = "") -> dict[str, Any]:
    """A button within Slack's limits (its value is never clipped: it carries data, so a
    value that does not fit is refused here, where the bug is)."""
    if len(value) > BUTTON_VALUE or len(action_id) > ACTION_ID:
        raise ValueError(f"button {action_id[:40]!r}: value or action_id too long for Slack")
    return {"type": "button", "action_id": action_id, "value": value,
            "text": plain(text, BUTTON_TEXT)}


def actions(elements: list[dict[str, Any]], block_id: str | None = None) -> list[dict[str, Any]]:
    """Actions blocks of at most 25 elements each (block_id on the first)."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(elements), ACTION_ELEMENTS):
        block: dict[str, Any] = {"type": "actions", "elements": elements[i:i + ACTION_ELEMENTS]}
        if block_id is not None and i == 0:
            block["block_id"] = block_id
        out.append(block)
    return out


def option(text: str, value: str) -> dict[str, Any]:
    """A select option (its value must fit: it is what the submission carries)."""
    if len(value) > OPTION_VALUE:
        raise ValueError(f"option value {value[:40]!r}… is too long for Slack")
    return {"text": plain(text, OPTION_TEXT), "value": value}


def fit(blocks: list[dict[str, Any]], limit: int = MESSAGE_BLOCKS) -> list[dict[str, Any]]:
    """At most `limit` blocks: when there are more, the first ones, a note saying how many were
    left out, and the trailing actions (the buttons stay usable)."""
    if len(blocks) <= limit:
        return blocks
    tail: list[dict[str, Any]] = []
    body = list(blocks)
    while body and body[-1].get("type") == "actions" and len(tail) < 2:
        tail.insert(0, body.pop())
    keep = limit - 1 - len(tail)
    left_out = len(body) - keep
    note = {"type": "context", "elements": [mrkdwn(
        f"{ELLIPSIS} {left_out} more block(s) not shown: Slack shows at most {limit} at once; "
        "the CLI (`tunebot run`) prints the whole reply.")]}
    return [*body[:keep], note, *tail]
