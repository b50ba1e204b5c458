"""Block Kit limits Slack enforces, so bot bugs fail here as they would live: chat.* methods
answer `invalid_blocks` (and `msg_too_long` for text), views.* answer `invalid_arguments`.

Written from Slack's reference (api.slack.com/reference/block-kit), independently of the bot's
own bot/limits.py: this is the other side of the wire.
"""

from __future__ import annotations

from typing import Any

MAX_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
MAX_TEXT = 40_000             # a message's top-level text
SECTION_TEXT = 3000
FIELDS = 10
FIELD_TEXT = 2000
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
ACTION_ELEMENTS = 25
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
URL = 3000
ID = 255                      # block_id, action_id, callback_id, external_id
OPTION_TEXT = 75
OPTION_VALUE = 150
OPTIONS = 100
LABEL = 2000                  # input label and hint
PLACEHOLDER = 150
INPUT_MAX_LENGTH = 3000
TEXT_OBJECT = 3000            # any other text object
MARKDOWN_BLOCK = 12_000
ALT_TEXT = 2000
VIEW_TITLE = 24               # title, submit, close
PRIVATE_METADATA = 3000


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return ""


class _Found:
    """Collects problems, each with Slack's json-pointer suffix."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, what: str, where: str) -> None:
        self.items.append(f"{what} [json-pointer:{where}]")

    def length(self, value: Any, limit: int, where: str) -> None:
        if value is not None and len(str(value)) > limit:
            self.add(f"must be less than {limit + 1} characters", where)

    def text(self, obj: Any, limit: int, where: str, *, plain: bool = False) -> None:
        if obj is None:
            return
        if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
            self.add("must be a text object", where)
            return
        if plain and obj.get("type") != "plain_text":
            self.add("must be a plain_text object", where)
        if not _text_of(obj):
            self.add("must be more than 0 characters", where)
        self.length(_text_of(obj), limit, where)


def _element(found: _Found, el: Any, where: str) -> None:
    if not isinstance(el, dict):
        found.add("must be an object", where)
        return
    found.length(el.get("action_id"), ID, f"{where}/action_id")
    kind = el.get("type")
    if kind == "button":
        found.text(el.get("text"), BUTTON_TEXT, f"{where}/text", plain=True)
        found.length(el.get("value"), BUTTON_VALUE, f"{where}/value")
        found.length(el.get("url"), URL, f"{where}/url")
    elif kind == "plain_text_input":
        max_length = el.get("max_length")
        if max_length is not None and not 0 < int(max_length) <= INPUT_MAX_LENGTH:
            found.add(f"must be between 1 and {INPUT_MAX_LENGTH}", f"{where}/max_length")
        limit = min(int(max_length or INPUT_MAX_LENGTH), INPUT_MAX_LENGTH)
        found.length(el.get("initial_value"), limit, f"{where}/initial_value")
        found.text(el.get("placeholder"), PLACEHOLDER, f"{where}/placeholder", plain=True)
    elif kind in ("static_select", "multi_static_select", "radio_buttons", "checkboxes"):
        options = el.get("options") or []
        if not 0 < len(options) <= OPTIONS:
            found.add(f"must provide 1 to {OPTIONS} options", f"{where}/options")
        for j, opt in enumerate([*options, *([el["initial_option"]]
                                            if el.get("initial_option") else [])]):
            at = f"{where}/options/{j}"
            found.text((opt or {}).get("text"), OPTION_TEXT, f"{at}/text")
            found.length((opt or {}).get("value"), OPTION_VALUE, f"{at}/value")
        found.text(el.get("placeholder"), PLACEHOLDER, f"{where}/placeholder", plain=True)
    elif kind == "image":
        found.length(el.get("alt_text"), ALT_TEXT, f"{where}/alt_text")
    elif kind in ("plain_text", "mrkdwn"):  # a context element
        found.text(el, TEXT_OBJECT, where)


def problems(blocks: Any, *, max_blocks: int = MAX_BLOCKS) -> list[str]:
    """Return the reasons Slack would reject `blocks` (empty when they are fine)."""
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    found = _Found()
    if len(blocks) > max_blocks:
        found.add(f"no more than {max_blocks} items allowed", "/blocks")
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            found.add("missing required field: type", where)
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in seen_ids:
                found.add(f"duplicate block_id {block_id!r}", where)
            seen_ids.add(block_id)
            found.length(block_id, ID, f"{where}/block_id")
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                found.add("section needs text or fields", where)
            found.text(block.get("text"), SECTION_TEXT, f"{where}/text")
            fields = block.get("fields") or []
            if len(fields) > FIELDS:
                found.add(f"no more than {FIELDS} items allowed", f"{where}/fields")
            for j, f in enumerate(fields):
                found.text(f, FIELD_TEXT, f"{where}/fields/{j}")
            if block.get("accessory") is not None:
                _element(found, block["accessory"], f"{where}/accessory")
        elif kind == "header":
            found.text(block.get("text"), HEADER_TEXT, f"{where}/text", plain=True)
        elif kind == "markdown":
            found.length(block.get("text"), MARKDOWN_BLOCK, f"{where}/text")
        elif kind == "context":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= CONTEXT_ELEMENTS:
                found.add(f"context needs 1 to {CONTEXT_ELEMENTS} elements",
                          f"{where}/elements")
            for j, el in enumerate(elements):
                _element(found, el, f"{where}/elements/{j}")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= ACTION_ELEMENTS:
                found.add(f"actions need 1 to {ACTION_ELEMENTS} elements", f"{where}/elements")
            for j, el in enumerate(elements):
                _element(found, el, f"{where}/elements/{j}")
        elif kind == "input":
            found.text(block.get("label"), LABEL, f"{where}/label", plain=True)
            found.text(block.get("hint"), LABEL, f"{where}/hint", plain=True)
            if not isinstance(block.get("element"), dict):
                found.add("missing required field: element", where)
            else:
                _element(found, block["element"], f"{where}/element")
        elif kind == "image":
            found.length(block.get("alt_text"), ALT_TEXT, f"{where}/alt_text")
    return found.items


def view_problems(view: dict[str, Any]) -> list[str]:
    """Return the reasons Slack would reject a modal or Home tab view."""
    found = _Found()
    is_modal = view.get("type") == "modal"
    if is_modal and view.get("title") is None:
        found.add("missing required field: title", "/view/title")
    for key in ("title", "submit", "close"):
        found.text(view.get(key), VIEW_TITLE, f"/view/{key}", plain=True)
    found.length(view.get("private_metadata"), PRIVATE_METADATA, "/view/private_metadata")
    found.length(view.get("callback_id"), ID, "/view/callback_id")
    found.length(view.get("external_id"), ID, "/view/external_id")
    return found.items + problems(view.get("blocks", []), max_blocks=MAX_MODAL_BLOCKS)
