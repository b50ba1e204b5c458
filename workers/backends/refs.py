"""Model references on the worker: tunebot.modelref's grammar (the one the bot checks), plus
what only a worker can check — that a local path is a folder here, under a configured model
root (TUNEBOT_MODEL_DIRS) — and ft: resolution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tunebot.modelref import USAGE, ModelRef, ModelRefError
from tunebot.modelref import parse_model_ref as parse_grammar

# resolve_ft(name, version, label) -> (base model ref, adapter folder), from the model registry.
FtResolver = Callable[[str, int | None, str | None], tuple[str, Path]]

__all__ = ["USAGE", "FtResolver", "ModelRef", "ModelRefError", "local_model_dir",
           "parse_model_ref", "resolve_ft", "under_roots"]


def under_roots(path: Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, symlinks resolved, lies inside one of `roots` (resolved too)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable parent
        return False
    return any(real.is_relative_to(Path(r).resolve()) for r in roots)


def _refusal() -> ModelRefError:
    # One sentence for every path that cannot be used — outside the roots, missing, a file, a
    # symlink leading out — so the answer tells nothing about folders outside the roots (not
    # even whether they exist). It names no path: not even the absolute form of what was
    # typed, which would show the worker's working folder.
    return ModelRefError("the model path is not a folder on this worker under the model "
                         "folders it may load from (TUNEBOT_MODEL_DIRS)")


def local_model_dir(text: str, roots: Sequence[Path]) -> Path:
    """The folder a model path names, symlinks resolved, if it is one inside `roots`."""
    path = Path(text).absolute()
    if not under_roots(path, roots):
        raise _refusal()
    real = path.resolve()
    if not real.is_dir():
        raise _refusal()
    return real


def parse_model_ref(text: str, *, check_exists: bool = True,
                    roots: Sequence[Path] | None = None) -> ModelRef:
    """Parse a model= value; a path becomes absolute and, unless told not to check, must be a
    folder — under `roots` when given (every worker caller gives its settings' model_roots)."""
    ref = parse_grammar(text)
    if ref.kind != "path":
        return ref
    path = Path(ref.name).absolute()
    if check_exists:
        if roots is not None:
            local_model_dir(ref.name, roots)
        elif not path.is_dir():
            raise _refusal()
    return ModelRef("path", str(path))


def resolve_ft(ref: ModelRef, resolver: FtResolver | None, *,
               roots: Sequence[Path] | None = None) -> tuple[ModelRef, Path]:
    """Turn ft:NAME into (base model ref, adapter folder) through the registry's resolver."""
    if resolver is None:
        raise ModelRefError(f"'{ref}' needs the model registry, which is not available here")
    base_text, adapter_dir = resolver(ref.name, ref.version, ref.label)
    base = parse_model_ref(base_text, roots=roots)
    if not base.is_local or base.kind == "ft":
        raise ModelRefError(f"'{ref}' has base '{base_text}', which cannot carry a LoRA adapter")
    return base, Path(adapter_dir)
