"""How a prompt version is rendered for a fine-tuned model: the way its adapter was trained.

`template=minimal` trains on the bare user turn (only the row's variables); `full` on the whole
prompt. Testing an adapter with the other format measures it out of distribution.
"""

from __future__ import annotations

from typing import Any

RESERVED = ("expected", "assert")
TEMPLATES = {"minimal": "the bare user turn, as the adapter was trained",
             "full": "the whole prompt"}


def minimal_content(content: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The prompt format `template=minimal` trains with: only the row's variables, bare."""
    keys = [k for k in rows[0] if k not in RESERVED]
    template = "\n".join(f"{k}: {{{{ {k} }}}}" for k in keys)
    out = {k: v for k, v in content.items() if k not in ("messages", "template")}
    out["messages"] = [{"role": "user", "content": template}]
    return out


def rendered_as(content: dict[str, Any], rows: list[dict[str, Any]],
                template: str | None) -> dict[str, Any]:
    """The content to render for a test: minimal when the adapter was trained that way."""
    return minimal_content(content, rows) if template == "minimal" else content
