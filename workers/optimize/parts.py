"""The ingredients a race needs, prepared once per job: instructions, label definitions, the
demonstration sets (bootstrapped, prototypes, seeded) and the token length of answers."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from workers.backends.base import Backend
from workers.optimize.space import (
    Parts,
    TokenLen,
    answer_text,
    balanced,
    label_definitions,
    start_instruction,
)
from workers.optimize.split import RESERVED, answer_key

log = logging.getLogger(__name__)
PROBE_ROWS = 24  # pool rows the bootstrap probe answers (what "the model handles" is read from)


def token_counter(backend: Backend) -> TokenLen:
    """Token length of a text under the backend's tokenizer (about 3 characters a token when
    the backend has none, as over HTTP)."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None:
        return lambda text: len(text) // 3 + 1
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def input_text(row: dict[str, Any]) -> str:
    """A row's inputs as one text (what similarity is measured on)."""
    return "\n".join(str(v) for k, v in row.items() if k not in RESERVED)


def make_parts(start: dict[str, Any], pool: list[dict[str, Any]], known: list[dict[str, Any]],
               choices: list[str] | None, *, seed: int) -> Parts:
    """Instructions and definitions of the space; `known` are the non-held-out rows."""
    instructions = {"start": start_instruction(start)}
    task = ((start.get("docs") or {}).get("task") or "").strip()
    if task and task != instructions["start"]:
        instructions["task"] = task
    if not instructions["start"]:
        instructions["start"] = task or "Answer the request."
    defs = label_definitions(known, choices) if choices else ""
    seeded = list(pool)
    random.Random(seed).shuffle(seeded)
    return Parts(start=start, variables=list((start.get("variables") or {}).keys()),
                 choices=choices, instructions=instructions, definitions=defs,
                 demo_sets={"seeded": balanced(seeded, len(seeded))})


def prototypes(pool: list[dict[str, Any]], encode: Callable[[list[str]], Any]
               ) -> list[dict[str, Any]]:
    """Pool rows ranked, within each answer, by closeness to their answer's centroid (the
    bundled MiniLM embedder), dealt class-balanced."""
    import numpy as np  # with the embedder, only in a worker

    if not pool:
        return []
    vecs = np.asarray(encode([input_text(r) for r in pool]), dtype=float)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-9
    keys = [answer_key(r) for r in pool]
    sims = np.zeros(len(pool))
    for key in set(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        centroid = vecs[idx].mean(axis=0)
        sims[idx] = vecs[idx] @ centroid
    ranked = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (-sims[i], i))]
    return balanced(ranked, len(ranked))


def bootstrapped(pool: list[dict[str, Any]], handled: Sequence[bool]) -> list[dict[str, Any]]:
    """Pool rows the probe answered correctly first (class-balanced), then the others."""
    good = [r for r, ok in zip(pool, handled, strict=False) if ok]
    return balanced(pool, len(pool), prefer=good)


def answers_of(choices: list[str] | None, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every valid answer: the choices, or the expected answers seen in the known rows."""
    return list(choices) if choices else [answer_text(r) for r in rows if r.get("expected")]
