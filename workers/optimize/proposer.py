"""Instruction rewrites from failing dev cases, proposed by an OpenAI-compatible model
(MetaPrompt/GEPA style): the proposer sees the current instruction, the valid answers and a
few cases the best candidate got wrong, and writes a better instruction."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from workers.backends.base import Backend, GenParams

MAX_CASES = 8  # failing cases shown to the proposer
MAX_CHARS = 1500  # a proposed instruction longer than this is cut
CASE_CHARS = 300

SYSTEM = ("You improve instructions for a small language model. You are shown an instruction, "
          "the valid answers, and cases the model answered wrongly with it. Write one improved "
          "instruction that would make the model answer these and similar cases correctly. "
          "Do not copy the cases. Reply with the instruction text only.")


def proposal_prompt(instruction: str, answers: Sequence[str] | None,
                    failures: Sequence[tuple[str, str, str]]) -> list[dict[str, str]]:
    """The chat asking for one rewrite; failures are (input, expected, got)."""
    lines = [f"Instruction:\n{instruction.strip()}"]
    if answers:
        lines.append("Valid answers: " + ", ".join(answers))
    cases = "\n".join(f"- input: {inp[:CASE_CHARS]!r} expected: {exp[:80]!r} got: {got[:80]!r}"
                      for inp, exp, got in failures[:MAX_CASES])
    lines.append(f"Wrong answers:\n{cases or '(none)'}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(lines)}]


def clean(text: str) -> str:
    """A proposal made safe to paste into a template: no Jinja marks, no code fences, bounded."""
    text = re.sub(r"^```\w*|```$", "", text.strip(), flags=re.M).strip()
    text = text.replace("{{", "{ {").replace("}}", "} }").replace("{%", "{ %")
    text = text.replace("%}", "% }").replace("{#", "{ #").replace("#}", "# }")
    return text[:MAX_CHARS].strip()


def propose(backend: Backend, instruction: str, answers: Sequence[str] | None,
            failures: Sequence[tuple[str, str, str]], *, n: int, seed: int) -> list[str]:
    """Up to n distinct, non-empty rewrites (sampled with fixed seeds)."""
    prompts = [proposal_prompt(instruction, answers, failures) for _ in range(n)]
    out: list[str] = []
    for i, prompt in enumerate(prompts):
        gen = backend.generate([prompt], GenParams(temperature=0.7, max_new_tokens=300,
                                                   seed=seed + i))
        text = clean(gen[0].text) if gen else ""
        if text and text not in out and text != instruction.strip():
            out.append(text)
    return out


def failures_of(rows: Sequence[dict[str, Any]], outputs: Sequence[tuple[int, str, bool]],
                ) -> list[tuple[str, str, str]]:
    """(input, expected, got) of the failed (row index, output, passed) triples."""
    res = []
    for i, output, passed in outputs:
        if passed:
            continue
        row = rows[i]
        inp = " · ".join(str(v) for k, v in row.items() if k not in ("expected", "assert"))
        res.append((inp, str(row.get("expected")), output))
    return res
