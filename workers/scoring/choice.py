"""Classification: read a label from an output, and the per-class report over a run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from workers.scoring.base import (
    Score,
    ScoreContext,
    ScorerError,
    normalise,
    register,
    score_name,
    verdict,
)

INVALID = "(invalid)"


def predict_choice(output: str, choices: Sequence[str]) -> str:
    """The choice whose name occurs earliest in the output as a whole word, else '(invalid)'."""
    text = output.lower()
    best: tuple[int, int, str] | None = None
    for choice in choices:
        needle = choice.lower().strip()
        if not needle:
            continue
        match = re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text)
        if match is None:
            continue
        # Earliest wins; at the same position the longer name ("account access" over "account").
        key = (match.start(), -len(needle), choice)
        if best is None or key[:2] < best[:2]:
            best = key
    return best[2] if best else INVALID


def _choices(spec: dict[str, Any], ctx: ScoreContext | None) -> list[str]:
    choices = spec.get("choices")
    if choices is None and ctx is not None:
        choices = ctx.output_spec.get("choices")
    if choices is None and ctx is None:
        return []
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise ScorerError(
            "scorer 'choice': needs 'choices' (a non-empty list of labels) in the spec "
            f"or the prompt's output spec (got {choices!r})"
        )
    return choices


def _check_choice(spec: dict[str, Any]) -> None:
    _choices(spec, None)


@register("choice", keys={"choices", "value"}, check=_check_choice)
def choice(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """The label read from the output equals the expected label (normalised)."""
    predicted = predict_choice(output, _choices(spec, ctx))
    ref = spec.get("value", expected)
    if ref is None:
        return Score(
            score_name(spec), None, 0.0, f"predicted {predicted!r}, no reference label", predicted
        )
    ok = normalise(predicted) == normalise(str(ref))
    return verdict(spec, ok, f"predicted {predicted!r}, expected {ref!r}", predicted=predicted)


def _canonical(label: str, lookup: dict[str, str]) -> str:
    return label if label == INVALID else lookup.get(normalise(label), label)


def classification_report(
    pairs: Sequence[tuple[str, str]], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and a confusion matrix.

    Rows of the matrix are expected labels, columns predicted labels plus '(invalid)'.
    Labels match after normalisation; unknown ones are appended. Macro F1 averages the
    classes that occur as expected or predicted (sklearn's default set).
    """
    lookup = {normalise(label): label for label in labels}
    rows = list(labels)
    cols = list(labels)
    canon = [(_canonical(e, lookup), _canonical(p, lookup)) for e, p in pairs]
    for exp, pred in canon:
        if exp not in rows:
            rows.append(exp)
            if exp not in cols:
                cols.append(exp)
        if pred != INVALID and pred not in cols:
            cols.append(pred)
    cols.append(INVALID)
    matrix = [[0] * len(cols) for _ in rows]
    for exp, pred in canon:
        matrix[rows.index(exp)][cols.index(pred)] += 1

    per_class: dict[str, dict[str, float | int]] = {}
    classes = [c for c in cols if c != INVALID]
    for label in classes:
        tp = sum(1 for e, p in canon if e == label and p == label)
        predicted = sum(1 for _, p in canon if p == label)
        support = sum(1 for e, _ in canon if e == label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    present = [c for c in classes if per_class[c]["support"] or any(p == c for _, p in canon)]
    n = len(canon)
    correct = sum(1 for e, p in canon if e == p)
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "per_class": per_class,
        "macro_f1": sum(per_class[c]["f1"] for c in present) / len(present) if present else 0.0,
        "labels": rows,
        "columns": cols,
        "confusion": matrix,
    }
