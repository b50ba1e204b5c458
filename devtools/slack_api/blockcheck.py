"""Block Kit limits Slack enforces with `invalid_blocks`, so bot bugs fail here as live."""

from __future__ import annotations

from typing import Any

MAX_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
LIMITS = {"section": 3000, "header": 150, "context": None, "markdown": 12000}


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return ""


def problems(blocks: Any, *, max_blocks: int = MAX_BLOCKS) -> list[str]:
    """Return the reasons Slack would reject `blocks` (empty when they are fine)."""
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    found: list[str] = []
    if len(blocks) > max_blocks:
        found.append(f"no more than {max_blocks} items allowed [json-pointer:/blocks]")
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{i}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            found.append(f"missing required field: type {where}")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in seen_ids:
                found.append(f"duplicate block_id {block_id!r} {where}")
            seen_ids.add(block_id)
        kind = block["type"]
        limit = LIMITS.get(kind)
        if limit is not None and len(_text_of(block.get("text"))) > limit:
            found.append(f"must be less than {limit + 1} characters {where}/text")
        if kind == "section" and "text" not in block and "fields" not in block:
            found.append(f"section needs text or fields {where}")
        if kind == "section" and len(block.get("fields", [])) > 10:
            found.append(f"no more than 10 fields allowed {where}/fields")
        if kind == "actions" and not 0 < len(block.get("elements", [])) <= 25:
            found.append(f"actions need 1 to 25 elements {where}/elements")
        if kind == "context" and not 0 < len(block.get("elements", [])) <= 10:
            found.append(f"context needs 1 to 10 elements {where}/elements")
    return found
