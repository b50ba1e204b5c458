"""The search space: how a candidate prompt is built from a start version and a few choices.

A candidate is a whole catalog version's content (what would be saved), built from:
instruction (the start's own words, or its docs.task; or a proposer's rewrite), placement
(system message or the user turn), label definitions derived from the choices and the
non-held-out rows, an answer prefix (`Category:` in the assistant's answer, or as a cue ending
the user turn), few-shot demonstrations as chat turns (bootstrapped, prototypes or seeded,
class-balanced, k from 0 to 8), their order, and the output parameters (max_new_tokens long
enough for every valid answer under the model's tokenizer, a stop at the newline).
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.optimize.split import RESERVED, answer_key

MAX_DEMOS = 8
MAX_PROMPT_TOKENS = 2000  # the guidelines' prompt-tokens default: bigger prompts cost every call
PREFIXES = ("Answer", "Category")
STOPWORDS = frozenset("""a about after again all also am an and any are as at be been before
being but by can could did do does doing for from had has have having he her here his how i if
in into is it its just me more most my no not now of on once only or other our out over own
please same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who why will with
would you your yours hello thanks thank still get got cant dont""".split())
TokenLen = Callable[[str], int]


@dataclass(frozen=True)
class Recipe:
    """The choices one candidate makes (what its description and the saved docs report)."""

    instruction: str = "start"  # start | task | proposed
    placement: str = "system"  # system | user
    definitions: bool = False
    prefix: str | None = None  # answer prefix word, e.g. "Category"
    prefix_mode: str = "reply"  # reply: the assistant answers "Category: x"; cue: the user
    #                             turn ends with "Category:"
    demos: str = "none"  # none | bootstrapped | prototypes | seeded
    k: int = 0
    order: str = "round-robin"  # round-robin | reversed | shuffled
    labelled_input: bool = False  # "Ticket: …" rather than the bare text

    def describe(self) -> str:
        """A short line saying what the candidate is."""
        parts = [f"instruction {self.instruction} in {self.placement}"]
        if self.definitions:
            parts.append("label definitions")
        if self.prefix:
            parts.append(f"prefix `{self.prefix}:` ({self.prefix_mode})")
        parts.append(f"{self.k} demos ({self.demos}, {self.order})" if self.k else "no demos")
        if self.labelled_input:
            parts.append("labelled input")
        return " · ".join(parts)


@dataclass
class Candidate:
    """One prompt in the race."""

    name: str
    content: dict[str, Any]
    recipe: Recipe | None  # None: the start version as it is
    tokens: int = 0  # prompt tokens of the shared part (ties go to the smaller)
    origin: str = "grid"
    demos: list[dict[str, Any]] = field(default_factory=list)  # its demonstration rows

    def describe(self) -> str:
        """What this candidate is, in words."""
        return "the start version as it is" if self.recipe is None else self.recipe.describe()


@dataclass
class Parts:
    """What every candidate is built from."""

    start: dict[str, Any]
    variables: list[str]
    choices: list[str] | None
    instructions: dict[str, str]  # source → text
    definitions: str
    demo_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # source → ranked


def answer_text(row: dict[str, Any]) -> str:
    """The expected answer as the assistant would write it."""
    exp = row.get("expected")
    return exp if isinstance(exp, str) else json.dumps(exp, ensure_ascii=False)


def strip_template(text: str) -> str:
    """A template's words without its Jinja expressions, and without lines left as a bare
    label such as `Ticket:`."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", text, flags=re.S)
    lines = [ln.rstrip() for ln in text.splitlines()]
    kept = [ln for ln in lines if ln.strip() and not re.fullmatch(r"\s*[\w ]{1,30}:\s*", ln)]
    return "\n".join(kept).strip()


def start_instruction(content: dict[str, Any]) -> str:
    """The start version's instruction: its system message, else its first user turn's words."""
    msgs = content.get("messages") or [{"role": "user", "content": content.get("template", "")}]
    system = [m["content"] for m in msgs if m["role"] == "system"]
    if system:
        return strip_template("\n".join(system))
    users = [m["content"] for m in msgs if m["role"] == "user"]
    return strip_template(users[-1] if users else "")


def label_definitions(rows: Sequence[dict[str, Any]], choices: Sequence[str],
                      per_label: int = 5) -> str:
    """One line per choice with the words that set its rows apart from the others' rows."""
    docs: dict[str, list[set[str]]] = {c: [] for c in choices}
    for row in rows:
        key = answer_key(row)
        if key in docs:
            text = " ".join(str(v) for k, v in row.items() if k not in RESERVED).lower()
            docs[key].append({w for w in re.findall(r"[a-z][a-z'-]{2,}", text)
                              if w not in STOPWORDS})
    lines = []
    for choice in choices:
        mine = docs[choice]
        others = [d for c, ds in docs.items() if c != choice for d in ds]
        df = Counter(w for d in mine for w in d)
        odf = Counter(w for d in others for w in d)
        score = {w: n / max(len(mine), 1) - odf[w] / max(len(others), 1)
                 for w, n in df.items() if n >= 2}
        names = {c.lower() for c in choices}
        words = [w for w, s in sorted(score.items(), key=lambda t: (-t[1], t[0]))
                 if s > 0 and w not in names]
        if words[:per_label]:
            lines.append(f"{choice}: {', '.join(words[:per_label])}")
    return "\n".join(lines)


def balanced(rows: Sequence[dict[str, Any]], k: int, prefer: Sequence[dict[str, Any]] = ()
             ) -> list[dict[str, Any]]:
    """k rows dealt round-robin across expected answers (in first-seen order), each answer's
    preferred rows (`prefer`, in its order) first, then the rest in the given order."""
    first = {id(r) for r in prefer}
    ranked = list(prefer) + [r for r in rows if id(r) not in first]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in ranked:
        groups.setdefault(answer_key(row), []).append(row)
    if len(groups) > max(8, len(ranked) // 3):  # free text: one group
        groups = {"": ranked}
    out: list[dict[str, Any]] = []
    for i in itertools.count():
        layer = [g[i] for g in groups.values() if i < len(g)]
        if not layer:
            break
        out.extend(layer)
        if len(out) >= k:
            break
    return out[:k]


def ordered(demos: list[dict[str, Any]], order: str, seed: int) -> list[dict[str, Any]]:
    """The demonstrations in the candidate's order."""
    if order == "reversed":
        return list(reversed(demos))
    if order == "shuffled":
        out = list(demos)
        random.Random(seed).shuffle(out)
        return out
    return list(demos)


def answer_tokens(token_len: TokenLen, answers: Sequence[str], prefix: str | None,
                  margin: int = 2) -> int:
    """max_new_tokens that fits every valid answer (with its prefix) under the tokenizer."""
    longest = max((token_len(f"{prefix}: {a}" if prefix else a) for a in answers), default=8)
    return longest + margin


def _input_template(variables: list[str], labelled: bool) -> str:
    if len(variables) == 1 and not labelled:
        return f"{{{{ {variables[0]} }}}}"
    return "\n".join(f"{v.replace('_', ' ').capitalize()}: {{{{ {v} }}}}" for v in variables)


def _fill(template: str, row: dict[str, Any]) -> str:
    # demo rows are demo_safe (no Jinja marks), so a plain replacement is exact
    for key, value in row.items():
        if key not in RESERVED:
            template = template.replace(f"{{{{ {key} }}}}", str(value))
    return template


def format_line(choices: list[str] | None, fmt: str, prefix: str | None) -> str:
    """The sentence that tells the model the answer's form."""
    if choices:
        names = ", ".join(choices)
        if prefix:
            return f'Reply with "{prefix}:" followed by exactly one of: {names}.'
        one = "one word" if all(" " not in c for c in choices) else "one option"
        return f"Answer with exactly {one}: {names}."
    if fmt == "json":
        return "Answer with the JSON only."
    return ""


def pick_demos(parts: Parts, recipe: Recipe, seed: int) -> list[dict[str, Any]]:
    """The candidate's demonstration rows, in its order."""
    if not recipe.k:
        return []
    return ordered(parts.demo_sets.get(recipe.demos, [])[:recipe.k], recipe.order, seed)


def build(parts: Parts, recipe: Recipe, *, max_new_tokens: int, seed: int,
          instruction: str | None = None) -> dict[str, Any]:
    """The content of a candidate version: the start's fields with new messages and params."""
    start = parts.start
    fmt = (start.get("output") or {}).get("format", "text")
    words = instruction if instruction is not None else parts.instructions[recipe.instruction]
    block = [words.strip()]
    if recipe.definitions and parts.definitions:
        block.append(parts.definitions)
    block.append(format_line(parts.choices, fmt, recipe.prefix))
    instr = "\n".join(b for b in block if b)
    tmpl = _input_template(parts.variables, recipe.labelled_input)
    cue = f"\n{recipe.prefix}:" if recipe.prefix and recipe.prefix_mode == "cue" else ""
    reply = recipe.prefix if recipe.prefix and recipe.prefix_mode == "reply" else None
    demos = pick_demos(parts, recipe, seed)
    messages: list[dict[str, str]] = []
    if recipe.placement == "system":
        messages.append({"role": "system", "content": instr})
    for row in demos:
        messages.append({"role": "user", "content": _fill(tmpl, row) + cue})
        ans = answer_text(row)
        messages.append({"role": "assistant", "content": f"{reply}: {ans}" if reply else ans})
    last = tmpl + cue
    if recipe.placement == "user":
        last = f"{instr}\n\n{last}"
    messages.append({"role": "user", "content": last})
    out = {k: copy.deepcopy(v) for k, v in start.items() if k not in ("messages", "template")}
    out["messages"] = messages
    params = dict(start.get("params") or {})
    params.update({"temperature": 0.0, "top_p": 1.0, "max_new_tokens": int(max_new_tokens),
                   "seed": 0})
    if parts.choices:
        params["stop"] = ["\n"]
    out["params"] = params
    return out


def grid(parts: Parts, *, sources: Sequence[str], ks: Sequence[int]) -> list[Recipe]:
    """Every recipe of the space (the race samples from it)."""
    prefixes: list[tuple[str | None, str]] = [(None, "reply")]
    if parts.choices:
        prefixes += [(p, m) for p in PREFIXES for m in ("reply", "cue")]
    out = []
    for instr, place, defs, (prefix, mode), labelled in itertools.product(
            sorted(parts.instructions), ("system", "user"),
            (False, True) if parts.definitions else (False,), prefixes, (False, True)):
        base = Recipe(instr, place, defs, prefix, mode, labelled_input=labelled)
        out.append(base)
        for src, k, order in itertools.product(sources, ks, ("round-robin", "reversed",
                                                              "shuffled")):
            if k:
                out.append(Recipe(instr, place, defs, prefix, mode, src, k, order, labelled))
    return out


def demo_counts(n_classes: int) -> list[int]:
    """k values tried: one per class, two per class, and the most that fits MAX_DEMOS."""
    n = max(n_classes, 1)
    return sorted({min(MAX_DEMOS, n * m) for m in (1, 2, 4)} | {MAX_DEMOS})


def sample(recipes: list[Recipe], n: int, seed: int) -> list[Recipe]:
    """n recipes, seeded, spread over the demo counts so each k gets tried."""
    rng = random.Random(seed)
    pool = list(recipes)
    rng.shuffle(pool)
    by_k: dict[int, list[Recipe]] = {}
    for r in pool:
        by_k.setdefault(r.k, []).append(r)
    out: list[Recipe] = []
    for layer in itertools.zip_longest(*[by_k[k] for k in sorted(by_k)]):
        out.extend(r for r in layer if r is not None)
        if len(out) >= n:
            break
    return out[:n]
