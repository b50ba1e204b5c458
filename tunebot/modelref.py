"""Model references as users type them — the one grammar, used by the bot to validate a
command and by the worker to load the model. No torch, no database.

    smollm2                      the bundled SmolLM2-135M-Instruct
    org/name                     a Hugging Face id available offline
    /abs/path, ./rel/path        a local folder (checked on the worker, not here)
    ft:NAME[@V|:LABEL]           a registered adapter; NAME and LABEL as the catalog stores
                                 them (lower case, up to 63 characters), V from 1
    openai:NAME                  a model of the OpenAI-compatible endpoint
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tunebot.errors import UserError

RefKind = Literal["bundled", "hub", "path", "ft", "openai"]
BUNDLED = "smollm2"
USAGE = ("model= takes smollm2, a Hugging Face id (org/name), a local path (/abs or ./rel), "
         "ft:NAME[@V|:LABEL] or openai:NAME")
_FT = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_.-]{0,62})"
    r"(?:@(?P<version>\d{1,6})|:(?P<label>[a-z0-9][a-z0-9_-]{0,62}))?$"
)
_OPENAI = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,120}$")
_HUB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_PATH = re.compile(r"^\.?/[A-Za-z0-9_./-]{1,400}$")


class ModelRefError(UserError):
    """A model= value that names no model tunebot can load."""

    def __init__(self, message: str, usage: str = USAGE) -> None:
        super().__init__(message, usage=usage)


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference; `str(ref)` gives back its canonical spelling."""

    kind: RefKind
    name: str  # bundled name, hub id, path as given, ft model name or openai model name
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.kind == "ft":
            suffix = f"@{self.version}" if self.version else f":{self.label}" if self.label else ""
            return f"ft:{self.name}{suffix}"
        if self.kind == "openai":
            return f"openai:{self.name}"
        return self.name

    @property
    def is_local(self) -> bool:
        """Whether this ref runs on local transformers (everything but openai:)."""
        return self.kind != "openai"


def parse_model_ref(text: str, *, usage: str = USAGE) -> ModelRef:
    """Parse a model= value by the grammar above, or raise ModelRefError saying why."""
    s = (text or "").strip()
    if not s:
        raise ModelRefError("no model given", usage)
    shown = s[:80]
    if s == BUNDLED:
        return ModelRef("bundled", BUNDLED)
    if s.startswith("openai:"):
        name = s[len("openai:"):]
        if not _OPENAI.match(name):
            raise ModelRefError(f"'{shown}' is not a valid openai:NAME model reference", usage)
        return ModelRef("openai", name)
    if s.startswith("ft:"):
        m = _FT.match(s[3:])
        if not m:
            raise ModelRefError(f"'{shown}' is not a valid fine-tuned model: ft:NAME[@V|:LABEL] "
                                "with NAME and LABEL in lower case, up to 63 characters", usage)
        version = int(m["version"]) if m["version"] else None
        if version == 0:
            raise ModelRefError(f"'{shown}': versions start at 1", usage)
        return ModelRef("ft", m["name"], version, m["label"])
    if s.startswith(("/", "./")):
        if ".." in s.split("/"):
            raise ModelRefError(f"model path '{shown}' may not contain '..'", usage)
        if not _PATH.match(s):
            raise ModelRefError(f"model path '{shown}' has characters a path here may not "
                                "have (letters, digits, _ . - and /)", usage)
        return ModelRef("path", s)
    if _HUB.match(s) and ".." not in s:
        return ModelRef("hub", s)
    raise ModelRefError(f"unknown model '{shown}': not a model reference tunebot can load", usage)
