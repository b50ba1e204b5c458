"""Two prompt versions compared: a unified diff of their text and the fields that changed."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from tunebot.catalog.content import TEXT_FIELDS
from tunebot.models import PromptVersion


@dataclass
class Diff:
    """Two versions compared: a unified diff of the text and a list of changed fields."""

    a: str
    b: str
    text: str
    changes: list[tuple[str, str, str]]

    @property
    def same(self) -> bool:
        """True when nothing differs."""
        return not self.text and not self.changes


def _text_lines(content: dict[str, Any]) -> list[str]:
    if content.get("messages"):
        lines: list[str] = []
        for m in content["messages"]:
            lines += [f"[{m['role']}]", *str(m.get("content", "")).splitlines(), ""]
        return lines
    return str(content.get("template") or "").splitlines()


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out[prefix] = text


def _short(text: str, n: int = 120) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


def diff(a: PromptVersion, b: PromptVersion, *, a_name: str = "", b_name: str = "") -> Diff:
    """Compare two versions: unified diff of messages/template, then field-by-field changes."""
    la = a_name or f"v{a.version}"
    lb = b_name or f"v{b.version}"
    text = "\n".join(difflib.unified_diff(_text_lines(a.content), _text_lines(b.content),
                                          fromfile=la, tofile=lb, lineterm=""))
    fa: dict[str, str] = {}
    fb: dict[str, str] = {}
    rest_a = {k: v for k, v in a.content.items() if k not in TEXT_FIELDS}
    rest_b = {k: v for k, v in b.content.items() if k not in TEXT_FIELDS}
    _flatten(rest_a, "", fa)
    _flatten(rest_b, "", fb)
    if ("messages" in a.content) != ("messages" in b.content):
        fa["kind"] = "chat" if "messages" in a.content else "template"
        fb["kind"] = "chat" if "messages" in b.content else "template"
    changes = [(k, _short(fa.get(k, "—")), _short(fb.get(k, "—")))
               for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    return Diff(la, lb, text, changes)

