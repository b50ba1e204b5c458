"""Model references as users type them: smollm2, org/name, a local path, ft:NAME, openai:NAME."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunebot.errors import UserError

RefKind = Literal["bundled", "hub", "path", "ft", "openai"]
# resolve_ft(name, version, label) -> (base model ref, adapter folder), from the model registry.
FtResolver = Callable[[str, int | None, str | None], tuple[str, Path]]

BUNDLED = "smollm2"
USAGE = (
    "model= takes smollm2, a Hugging Face id (org/name), a local path (/abs or ./rel), "
    "ft:NAME[@V|:LABEL] or openai:NAME"
)
_HUB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})"
    r"(?:@(?P<version>\d+)|:(?P<label>[A-Za-z0-9][A-Za-z0-9_-]{0,31}))?$"
)
_OPENAI = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class ModelRefError(UserError):
    """A model= value that names no model tunebot can load."""

    def __init__(self, message: str) -> None:
        super().__init__(message, usage=USAGE)


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference; `str(ref)` gives back its canonical spelling."""

    kind: RefKind
    name: str  # bundled name, hub id, absolute path, ft model name or openai model name
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


def parse_model_ref(text: str, *, check_exists: bool = True) -> ModelRef:
    """Parse a model= value; paths must exist unless check_exists is False."""
    s = (text or "").strip()
    if not s:
        raise ModelRefError("no model given")
    if s.lower() == BUNDLED:
        return ModelRef("bundled", BUNDLED)
    if s.startswith("openai:"):
        name = s[len("openai:"):]
        if not _OPENAI.match(name):
            raise ModelRefError(f"'{s}' is not a valid openai:NAME model reference")
        return ModelRef("openai", name)
    if s.startswith("ft:"):
        m = _FT.match(s[3:])
        if not m:
            raise ModelRefError(f"'{s}' is not a valid fine-tuned model (ft:NAME[@V|:LABEL])")
        version = int(m["version"]) if m["version"] else None
        if version == 0:
            raise ModelRefError(f"'{s}': versions start at 1")
        return ModelRef("ft", m["name"], version, m["label"])
    if s.startswith(("/", "./")):
        return ModelRef("path", str(_checked_path(s, check_exists)))
    if _HUB.match(s) and ".." not in s and "--" not in s:
        return ModelRef("hub", s)
    raise ModelRefError(f"unknown model '{s}'")


def _checked_path(s: str, check_exists: bool) -> Path:
    if ".." in Path(s).parts:
        raise ModelRefError(f"model path '{s}' may not contain '..'")
    path = Path(s).absolute()
    if check_exists and not path.is_dir():
        raise ModelRefError(f"model path '{s}' is not a folder on this worker")
    return path


def resolve_ft(ref: ModelRef, resolver: FtResolver | None) -> tuple[ModelRef, Path]:
    """Turn ft:NAME into (base model ref, adapter folder) through the registry's resolver."""
    if resolver is None:
        raise ModelRefError(f"'{ref}' needs the model registry, which is not available here")
    base_text, adapter_dir = resolver(ref.name, ref.version, ref.label)
    base = parse_model_ref(base_text)
    if not base.is_local or base.kind == "ft":
        raise ModelRefError(f"'{ref}' has base '{base_text}', which cannot carry a LoRA adapter")
    return base, Path(adapter_dir)
