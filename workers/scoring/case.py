"""Scoring one case: default scorers for an output format, then prompt scorers and row asserts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from workers.scoring.base import Score, ScoreContext, ScorerError, validate_spec

FORMATS = ("text", "choice", "json")


def default_scorers(output_spec: dict[str, Any], *, expected: str | None = None) -> list[dict]:
    """The scorers a prompt gets when it names none, from its output format."""
    fmt = (output_spec or {}).get("format") or "text"
    if fmt == "choice":
        return [{"type": "choice"}]
    if fmt == "json":
        specs: list[dict[str, Any]] = [{"type": "is-json"}]
        if output_spec.get("schema") is not None:
            specs.append({"type": "json-schema"})
        if expected is not None and _is_json(expected):
            specs.append({"type": "equals-json"})
        return specs
    if fmt == "text":
        return [{"type": "equals"}]
    raise ScorerError(f"unknown output format {fmt!r}; allowed formats: {', '.join(FORMATS)}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_specs(specs: Sequence[Any] | None) -> None:
    """Check every scorer spec of a prompt or a row before any model runs."""
    if specs is None:
        return
    if not isinstance(specs, list | tuple):
        raise ScorerError(f"scorers/assert must be a list of scorer specs (got {specs!r})")
    for spec in specs:
        validate_spec(spec)


def score_case(
    output: str,
    expected: str | None,
    row_asserts: Sequence[dict[str, Any]] | None,
    scorer_specs: Sequence[dict[str, Any]],
    ctx: ScoreContext,
) -> list[Score]:
    """Apply the prompt's scorers, then the row's assert list, to one output."""
    scores = []
    for spec in [*scorer_specs, *(row_asserts or [])]:
        info = validate_spec(spec)
        scores.append(info.fn(output, expected, spec, ctx))
    return scores


def case_passed(scores: Sequence[Score]) -> bool | None:
    """A case passes when every scorer that could judge it passed; None if none could."""
    judged = [s.passed for s in scores if s.passed is not None]
    return all(judged) if judged else None
