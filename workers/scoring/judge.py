"""LLM-as-judge: a fixed grading prompt sent to a judge backend, its 1–5 score parsed."""

from __future__ import annotations

import re
from typing import Any

from workers.backends.base import Message
from workers.scoring.base import (
    Score,
    ScoreContext,
    ScorerError,
    number,
    register,
    unscored,
    verdict,
)

JUDGE_SYSTEM = "You are a strict, fair grader of AI assistant answers."
JUDGE_TEMPLATE = """Grade the ANSWER against the RUBRIC.

RUBRIC:
{rubric}

INPUT:
{input}

ANSWER:
{output}

REFERENCE ANSWER (may be empty):
{reference}

Give a score from 1 (fails the rubric) to 5 (fully meets it).
Reply with one line and nothing else: Score: N"""

_SCORE_PATTERNS = (
    re.compile(r"\bscore\s*(?:is|of|=|:)?\s*\**\s*([1-5])(?:\.0)?(?!\d)", re.IGNORECASE),
    re.compile(r"(?<![\d.])([1-5])\s*(?:/|out of)\s*5\b", re.IGNORECASE),
    re.compile(r"^\s*\**([1-5])\**\s*(?:[.)]\s*)?$", re.MULTILINE),
)
_VERDICT = re.compile(r"\b(PASS|FAIL)(?:ED|ES)?\b", re.IGNORECASE)


def judge_messages(*, rubric: str, input_text: str, output: str, reference: str) -> list[Message]:
    """The chat prompt sent to the judge."""
    user = JUDGE_TEMPLATE.format(
        rubric=rubric.strip(),
        input=input_text.strip(),
        output=output.strip(),
        reference=reference.strip(),
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_judgement(answer: str) -> tuple[float, str] | None:
    """Read a judge answer as (value in [0,1], label): 'Score: 4' → 0.75; PASS/FAIL → 1/0."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(answer)
        if match:
            score = int(match.group(1))
            return (score - 1) / 4, f"score {score}/5"
    verdicts = {m.group(1).upper() for m in _VERDICT.finditer(answer)}
    if len(verdicts) == 1:
        word = verdicts.pop()
        return (1.0 if word == "PASS" else 0.0), word
    return None


def _check_judge(spec: dict[str, Any]) -> None:
    rubric = spec.get("rubric", spec.get("value"))
    if not isinstance(rubric, str) or not rubric.strip():
        raise ScorerError(f"scorer 'llm-judge': needs a 'rubric' (a string) (got {rubric!r})")
    threshold = spec.get("threshold")
    if isinstance(threshold, int | float) and not isinstance(threshold, bool) and threshold > 1:
        raise ScorerError(
            f"scorer 'llm-judge': threshold is on the 0–1 scale, e.g. 0.75 for a score of 4/5 "
            f"(got {threshold})"
        )
    number(spec, "threshold", 0.75, lo=0.0, hi=1.0)


@register("llm-judge", keys={"rubric", "value", "threshold"}, check=_check_judge)
def llm_judge(output: str, expected: str | None, spec: dict[str, Any], ctx: ScoreContext) -> Score:
    """Ask the judge backend to grade the output against a rubric; value = (score − 1) / 4."""
    _check_judge(spec)
    rubric = str(spec.get("rubric", spec.get("value")))
    messages = judge_messages(
        rubric=rubric, input_text=ctx.input_text, output=output, reference=expected or ""
    )
    backend = ctx.judge()
    try:
        answer = backend.generate([messages], ctx.judge_params)[0].text
    except Exception as exc:  # one judge failure must not sink the whole run
        return unscored(spec, f"judge {getattr(backend, 'name', '?')} failed: {exc}")
    parsed = parse_judgement(answer)
    if parsed is None:
        return unscored(spec, f"unparseable judge answer: {answer.strip()[:120]!r}")
    value, label = parsed
    threshold = number(spec, "threshold", 0.75, lo=0.0, hi=1.0) or 0.0
    return verdict(spec, value >= threshold, f"judge: {label}", value=value)
