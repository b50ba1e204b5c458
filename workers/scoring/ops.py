"""Operational scorers: latency and output length budgets."""

from __future__ import annotations

from typing import Any

from workers.scoring.base import (
    Score,
    ScoreContext,
    ScorerError,
    number,
    register,
    unscored,
    verdict,
)


def _limit(spec: dict[str, Any], key: str) -> float:
    raw = spec.get(key, spec.get("value"))
    if raw is None:
        raise ScorerError(f"scorer {spec['type']!r}: needs {key!r} (a positive number)")
    return number({**spec, key: raw}, key, None, lo=0.0) or 0.0


def _check_latency(spec: dict[str, Any]) -> None:
    _limit(spec, "max_ms")


def _check_tokens(spec: dict[str, Any]) -> None:
    _limit(spec, "max")


@register("latency", keys={"max_ms", "value"}, check=_check_latency)
def latency(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """The generation took at most max_ms milliseconds."""
    limit = _limit(spec, "max_ms")
    if ctx.latency_ms is None:
        return unscored(spec, "no latency recorded")
    ok = ctx.latency_ms <= limit
    return verdict(spec, ok, f"{ctx.latency_ms:.0f} ms (max {limit:g})")


@register("max-tokens", keys={"max", "value"}, check=_check_tokens)
def max_tokens(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """The answer used at most max output tokens."""
    limit = _limit(spec, "max")
    if ctx.tokens_out is None:
        return unscored(spec, "no token count recorded")
    ok = ctx.tokens_out <= limit
    return verdict(spec, ok, f"{ctx.tokens_out} tokens (max {limit:g})")
