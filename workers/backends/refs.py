"""Model references on the worker: tunebot.modelref's grammar (the one the bot checks), plus
what only a worker can check — that a local path is a folder here — and ft: resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunebot.modelref import USAGE, ModelRef, ModelRefError
from tunebot.modelref import parse_model_ref as parse_grammar

# resolve_ft(name, version, label) -> (base model ref, adapter folder), from the model registry.
FtResolver = Callable[[str, int | None, str | None], tuple[str, Path]]

__all__ = ["USAGE", "FtResolver", "ModelRef", "ModelRefError", "parse_model_ref", "resolve_ft"]


def parse_model_ref(text: str, *, check_exists: bool = True) -> ModelRef:
    """Parse a model= value; a path becomes absolute and must be a folder unless told not."""
    ref = parse_grammar(text)
    if ref.kind != "path":
        return ref
    path = Path(ref.name).absolute()
    if check_exists and not path.is_dir():
        raise ModelRefError(f"model path '{ref.name[:80]}' is not a folder on this worker")
    return ModelRef("path", str(path))


def resolve_ft(ref: ModelRef, resolver: FtResolver | None) -> tuple[ModelRef, Path]:
    """Turn ft:NAME into (base model ref, adapter folder) through the registry's resolver."""
    if resolver is None:
        raise ModelRefError(f"'{ref}' needs the model registry, which is not available here")
    base_text, adapter_dir = resolver(ref.name, ref.version, ref.label)
    base = parse_model_ref(base_text)
    if not base.is_local or base.kind == "ft":
        raise ModelRefError(f"'{ref}' has base '{base_text}', which cannot carry a LoRA adapter")
    return base, Path(adapter_dir)
