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


def _at_most(spec: dict[str, Any], measured: float | None, limit: float, what: str,
             shown: str) -> Score:
    """Pass when a measured value is at most the limit; unscored when nothing was measured."""
    if measured is None:
        return unscored(spec, f"no {what} recorded")
    return verdict(spec, measured <= limit, f"{shown.format(measured)} (max {limit:g})")


@register("latency", keys={"max_ms", "value"}, check=_check_latency)
def latency(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """The generation took at most max_ms milliseconds."""
    return _at_most(spec, ctx.latency_ms, _limit(spec, "max_ms"), "latency", "{:.0f} ms")


@register("max-tokens", keys={"max", "value"}, check=_check_tokens)
def max_tokens(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """The answer used at most max output tokens."""
    return _at_most(spec, ctx.tokens_out, _limit(spec, "max"), "token count", "{} tokens")
