"""Text scorers: equality, substrings, regex, numbers and edit-distance similarity."""

from __future__ import annotations

from typing import Any

import regex
from rapidfuzz.distance import Levenshtein

from workers.scoring.base import (
    Score,
    ScoreContext,
    ScorerError,
    first_of,
    normalise,
    number,
    register,
    unscored,
    verdict,
)

MAX_PATTERN_LEN = 1_000
# Backtracking cost grows with the text; LLM outputs past this are truncated before matching.
MAX_REGEX_INPUT = 20_000
REGEX_TIMEOUT_S = 1.0

_NUMBER = regex.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)


def _reference(spec: dict[str, Any], expected: str | None) -> str | None:
    value = spec.get("value")
    return str(value) if value is not None else expected


@register("equals", keys={"value"})
def equals(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Normalised exact match against the reference."""
    ref = _reference(spec, expected)
    if ref is None:
        return unscored(spec, "no reference answer")
    ok = normalise(output) == normalise(ref)
    return verdict(spec, ok, "matches" if ok else f"expected {ref!r}, got {_clip(output)!r}")


def _check_single(spec: dict[str, Any]) -> None:
    value = spec.get("value")
    if value is not None and not isinstance(value, str):
        raise ScorerError(f"scorer {spec['type']!r}: value must be a string (got {value!r})")


def _substring(
    output: str, expected: str | None, spec: dict[str, Any], *, fold: bool, prefix: bool
) -> Score:
    needle = _reference(spec, expected)
    if needle is None:
        return unscored(spec, "no value and no reference answer")
    hay = output.lstrip() if prefix else output
    if fold or spec.get("ignore_case"):
        hay, needle_cmp = hay.casefold(), needle.casefold()
    else:
        needle_cmp = needle
    ok = hay.startswith(needle_cmp) if prefix else needle_cmp in hay
    yes, no = ("starts with", "does not start with") if prefix else ("contains", "does not contain")
    return verdict(spec, ok, f"{yes if ok else no} {needle!r}")


@register("contains", keys={"value", "ignore_case"}, check=_check_single)
def contains(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Output contains the value (default: the reference answer)."""
    return _substring(output, expected, spec, fold=False, prefix=False)


@register("icontains", keys={"value"}, check=_check_single)
def icontains(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Case-insensitive contains."""
    return _substring(output, expected, spec, fold=True, prefix=False)


@register("starts-with", keys={"value", "ignore_case"}, check=_check_single)
def starts_with(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output (leading whitespace ignored) starts with the value."""
    return _substring(output, expected, spec, fold=False, prefix=True)


def _values(spec: dict[str, Any]) -> list[str]:
    raw = first_of(spec, "values", "value")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
        raise ScorerError(
            f"scorer {spec['type']!r}: values must be a non-empty list of strings (got {raw!r})"
        )
    return raw


def _check_values(spec: dict[str, Any]) -> None:
    _values(spec)


def _many(output: str, spec: dict[str, Any], *, need_all: bool) -> Score:
    values = _values(spec)
    fold = bool(spec.get("ignore_case"))
    hay = output.casefold() if fold else output
    found = [v for v in values if (v.casefold() if fold else v) in hay]
    missing = [v for v in values if v not in found]
    ok = not missing if need_all else bool(found)
    detail = f"found {found}" + (f", missing {missing}" if missing else "")
    return verdict(spec, ok, detail)


@register("contains-any", keys={"value", "values", "ignore_case"}, check=_check_values)
def contains_any(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output contains at least one of the values."""
    return _many(output, spec, need_all=False)


@register("contains-all", keys={"value", "values", "ignore_case"}, check=_check_values)
def contains_all(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output contains every one of the values."""
    return _many(output, spec, need_all=True)


def _compile(spec: dict[str, Any]) -> regex.Pattern[str]:
    pattern = first_of(spec, "pattern", "value")
    if not isinstance(pattern, str) or not pattern:
        raise ScorerError(f"scorer 'regex': pattern must be a non-empty string (got {pattern!r})")
    if len(pattern) > MAX_PATTERN_LEN:
        raise ScorerError(
            f"scorer 'regex': pattern is {len(pattern)} characters (limit {MAX_PATTERN_LEN})"
        )
    flags = regex.IGNORECASE if spec.get("ignore_case") else 0
    try:
        return regex.compile(pattern, flags)
    except regex.error as exc:
        raise ScorerError(f"scorer 'regex': invalid pattern {pattern!r}: {exc}") from None


def _check_regex(spec: dict[str, Any]) -> None:
    _compile(spec)


@register("regex", keys={"pattern", "value", "ignore_case"}, check=_check_regex)
def regex_match(
    output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext
) -> Score:
    """Output matches the pattern somewhere (search), with a time and length guard."""
    pattern = _compile(spec)
    text, note = output, ""
    if len(text) > MAX_REGEX_INPUT:
        text, note = text[:MAX_REGEX_INPUT], f" (first {MAX_REGEX_INPUT} characters)"
    try:
        match = pattern.search(text, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        return unscored(spec, f"regex timed out after {REGEX_TIMEOUT_S:g} s{note}")
    if match is None:
        return verdict(spec, False, f"no match for {pattern.pattern!r}{note}")
    return verdict(spec, True, f"matched {_clip(match.group(0))!r}{note}")


def first_number(text: str) -> float | None:
    """The first number written in the text (thousands commas allowed), else None."""
    match = _NUMBER.search(text)
    return float(match.group(0).replace(",", "")) if match else None


def _check_numeric(spec: dict[str, Any]) -> None:
    number(spec, "tolerance", 0.0, lo=0.0)
    if "value" in spec and not isinstance(spec["value"], int | float | str):
        raise ScorerError(f"scorer 'numeric': value must be a number (got {spec['value']!r})")


@register("numeric", keys={"value", "tolerance", "relative"}, check=_check_numeric)
def numeric(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """First number in the output equals the reference within an absolute/relative tolerance."""
    ref_raw = _reference(spec, expected)
    ref = first_number(ref_raw) if ref_raw is not None else None
    if ref is None:
        return unscored(spec, "no numeric reference answer")
    got = first_number(output)
    if got is None:
        return verdict(spec, False, "no number in the output")
    tol = number(spec, "tolerance", 0.0, lo=0.0) or 0.0
    allowed = tol * abs(ref) if spec.get("relative") else tol
    # A hair of slack so 0.1 + 0.2 style float noise never decides a case.
    ok = abs(got - ref) <= allowed + 1e-9 * max(1.0, abs(ref))
    return verdict(spec, ok, f"got {got:g}, expected {ref:g}" + (f" ± {allowed:g}" if tol else ""))


def _check_threshold(spec: dict[str, Any]) -> None:
    number(spec, "threshold", 0.8, lo=0.0, hi=1.0)


@register("similarity", keys={"value", "threshold"}, check=_check_threshold)
def similarity(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Normalised Levenshtein similarity of the normalised texts, passing at a threshold."""
    ref = _reference(spec, expected)
    if ref is None:
        return unscored(spec, "no reference answer")
    ratio = Levenshtein.normalized_similarity(normalise(output), normalise(ref))
    threshold = number(spec, "threshold", 0.8, lo=0.0, hi=1.0) or 0.0
    return verdict(
        spec, ratio >= threshold, f"similarity {ratio:.2f} (threshold {threshold:g})", value=ratio
    )


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
