"""Score, ScoreContext and the scorer registry every scorer module registers into."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.backends.base import Backend, GenParams
from workers.scoring.embedder import Embedder, load_embedder

COMMON_KEYS = frozenset({"type", "name"})
_TRAILING_PUNCT = ".,;:!?\u2026\u3002"
_WS = re.compile(r"\s+")


class ScorerError(ValueError):
    """A scorer spec that cannot be used: unknown type, unknown key or bad value."""


@dataclass(frozen=True)
class Score:
    """One scorer's verdict on one output; passed is None when it could not judge."""

    name: str
    passed: bool | None
    value: float
    detail: str = ""
    predicted: str | None = None  # the label a choice scorer read from the output


@dataclass
class ScoreContext:
    """What a scorer may need beyond the output: generation facts, output spec, resources."""

    latency_ms: float | None = None
    tokens_out: int | None = None
    output_spec: dict[str, Any] = field(default_factory=dict)
    input_text: str = ""
    judge_backend: Backend | None = None
    judge_factory: Callable[[], Backend] | None = None
    judge_params: GenParams = field(
        default_factory=lambda: GenParams(temperature=0.0, max_new_tokens=32)
    )
    embedder: Embedder | None = None

    def judge(self) -> Backend:
        """The judge backend, built on first use from judge_factory when not given."""
        if self.judge_backend is None and self.judge_factory is not None:
            self.judge_backend = self.judge_factory()
        if self.judge_backend is None:
            raise ScorerError("scorer 'llm-judge' needs a judge backend (none configured)")
        return self.judge_backend

    def get_embedder(self) -> Embedder:
        """The embedding model, the process-wide bundled MiniLM unless one was given."""
        if self.embedder is None:
            self.embedder = load_embedder()
        return self.embedder


ScorerFn = Callable[[str, "str | None", dict[str, Any], ScoreContext], Score]


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer: its function, the spec keys it accepts and a spec check."""

    name: str
    fn: ScorerFn
    keys: frozenset[str]
    check: Callable[[dict[str, Any]], None] | None = None


SCORERS: dict[str, ScorerInfo] = {}


def register(
    name: str, *, keys: Iterable[str] = (), check: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[ScorerFn], ScorerFn]:
    """Decorator that adds a scorer to the registry under a type name."""

    def deco(fn: ScorerFn) -> ScorerFn:
        SCORERS[name] = ScorerInfo(name, fn, COMMON_KEYS | frozenset(keys), check)
        return fn

    return deco


def validate_spec(spec: Any) -> ScorerInfo:
    """Check a scorer spec (type, keys, values) and return its registry entry."""
    if not isinstance(spec, dict):
        raise ScorerError(f"a scorer spec must be a mapping with a 'type' (got {spec!r})")
    kind = spec.get("type")
    info = SCORERS.get(kind) if isinstance(kind, str) else None
    if info is None:
        raise ScorerError(
            f"unknown scorer type {kind!r}; allowed types: {', '.join(sorted(SCORERS))}"
        )
    for key in spec:
        if key not in info.keys:
            raise ScorerError(
                f"scorer {kind!r}: unknown key {key!r} (allowed: {', '.join(sorted(info.keys))})"
            )
    if info.check is not None:
        info.check(spec)
    return info


def normalise(text: str) -> str:
    """Casefold, trim, collapse whitespace and drop trailing punctuation."""
    text = _WS.sub(" ", text.casefold()).strip()
    return text.rstrip(_TRAILING_PUNCT + " ")


def score_name(spec: dict[str, Any]) -> str:
    """The display name of a scorer: its 'name' key, else its type."""
    return str(spec.get("name") or spec["type"])


def number(
    spec: dict[str, Any],
    key: str,
    default: float | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> float | None:
    """Read a numeric spec key, raising ScorerError naming the scorer and key if it is bad."""
    raw = spec.get(key, default)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        try:
            raw = float(raw)
        except (TypeError, ValueError):
            raise ScorerError(
                f"scorer {spec['type']!r}: {key} must be a number (got {raw!r})"
            ) from None
    if (lo is not None and raw < lo) or (hi is not None and raw > hi):
        raise ScorerError(
            f"scorer {spec['type']!r}: {key} must be between {lo} and {hi} (got {raw})"
        )
    return float(raw)


def first_of(spec: dict[str, Any], *keys: str) -> Any:
    """The value of the first key present in the spec, else None."""
    for key in keys:
        if key in spec:
            return spec[key]
    return None


def verdict(
    spec: dict[str, Any],
    passed: bool | None,
    detail: str,
    value: float | None = None,
    predicted: str | None = None,
) -> Score:
    """Build a Score; value defaults to 1.0/0.0 from passed."""
    if value is None:
        value = 1.0 if passed else 0.0
    return Score(score_name(spec), passed, min(1.0, max(0.0, value)), detail, predicted)


def unscored(spec: dict[str, Any], detail: str) -> Score:
    """A Score for an output the scorer could not judge (passed is None)."""
    return Score(score_name(spec), None, 0.0, detail)
