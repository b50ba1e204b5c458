"""Embedding similarity with the bundled all-MiniLM-L6-v2, loaded once per process."""

from __future__ import annotations

from typing import Any

from workers.scoring.base import (
    Score,
    ScoreContext,
    number,
    register,
    unscored,
    verdict,
)
from workers.scoring.embedder import Embedder


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
