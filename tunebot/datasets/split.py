"""Train/validation splits, k-fold, and train/eval leakage — deterministic, seeded, pure."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tunebot.datasets.rows import LABEL_LIMIT, RESERVED
from tunebot.datasets.training import Example, minimal_user_turn

T = TypeVar("T")

MIN_FOR_SPLIT = 20
AUTO_FRACTION, AUTO_MIN, AUTO_MAX = 0.10, 5, 500
SPLIT_RANGE = (0.05, 0.5)
NO_SPLIT_NOTE = "fewer than 20 examples: no validation split, early stopping off"

_SPACE = re.compile(r"\s+")


def split(
    examples: Sequence[T], *, val_split: float | str | None = "auto", seed: int = 42
) -> tuple[list[T], list[T], str]:
    """(train, val, note): a seeded split, stratified by answer when answers are few labels."""
    explicit = val_split not in (None, "auto")
    if explicit and (isinstance(val_split, bool) or not isinstance(val_split, int | float)
                     or not SPLIT_RANGE[0] <= val_split <= SPLIT_RANGE[1]):
        raise ValueError(f"val_split must be between {SPLIT_RANGE[0]} and {SPLIT_RANGE[1]}, "
                         f"or auto (got {val_split!r})")
    n = len(examples)
    if val_split is None:
        return list(examples), [], "val_split=None: no validation split, early stopping off"
    if n < MIN_FOR_SPLIT:
        return list(examples), [], NO_SPLIT_NOTE
    if explicit:
        n_val = min(n - 1, max(1, round(float(val_split) * n)))
        how = f"val_split={val_split}"
    else:
        n_val = min(AUTO_MAX, max(AUTO_MIN, round(AUTO_FRACTION * n)))
        how = f"auto: 10%, at least {AUTO_MIN}, at most {AUTO_MAX}"
    rng = random.Random(seed)
    groups = _label_groups(examples)
    if groups is None:
        val_idx = set(rng.sample(range(n), n_val))
    else:
        val_idx = _stratified(groups, n_val, n, rng)
        how += ", stratified by answer"
    train = [x for i, x in enumerate(examples) if i not in val_idx]
    val = [x for i, x in enumerate(examples) if i in val_idx]
    return train, val, f"{len(train)} train / {len(val)} validation ({how})"


def _stratified(groups: dict[Hashable, list[int]], n_val: int, n: int,
                rng: random.Random) -> set[int]:
    # Largest-remainder apportionment in integers: each label's share of val is proportional.
    for idx in groups.values():
        rng.shuffle(idx)
    take = {lab: n_val * len(idx) // n for lab, idx in groups.items()}
    left = n_val - sum(take.values())
    order = sorted(groups, key=lambda lab: -(n_val * len(groups[lab]) % n))  # stable: first seen
    for lab in order[:left]:
        take[lab] += 1
    return {i for lab, idx in groups.items() for i in idx[: take[lab]]}


def kfold(examples: Sequence[T], k: int, seed: int = 42) -> list[tuple[list[T], list[T]]]:
    """k (train, val) folds; every example is in exactly one val fold; stratified when it can."""
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 10:
        raise ValueError(f"k must be between 2 and 10 (got {k!r})")
    n = len(examples)
    if n < k:
        raise ValueError(f"k={k} folds need at least {k} examples (got {n})")
    rng = random.Random(seed)
    groups = _label_groups(examples)
    if groups is None:
        order = list(range(n))
        rng.shuffle(order)
    else:
        for idx in groups.values():
            rng.shuffle(idx)
        order = [i for idx in groups.values() for i in idx]
    # Dealt round-robin, so fold sizes differ by at most one and labels spread evenly.
    fold_of = {i: pos % k for pos, i in enumerate(order)}
    return [([x for i, x in enumerate(examples) if fold_of[i] != f],
             [x for i, x in enumerate(examples) if fold_of[i] == f]) for f in range(k)]


def _label_groups(examples: Sequence[Any]) -> dict[Hashable, list[int]] | None:
    groups: dict[Hashable, list[int]] = {}
    for i, x in enumerate(examples):
        label = answer_of(x)
        if label is None:
            return None
        groups.setdefault(label, []).append(i)
        if len(groups) > LABEL_LIMIT:
            return None
    return groups if len(groups) > 1 else None


def answer_of(item: Any) -> str | None:
    """The answer to stratify on: the last assistant turn, or a row's `expected`."""
    messages = _messages(item)
    if messages is not None:
        answers = [m.get("content") for m in messages
                   if isinstance(m, Mapping) and m.get("role") == "assistant"]
        return answers[-1] if answers and isinstance(answers[-1], str) else None
    if isinstance(item, Mapping):
        expected = item.get("expected")
        if isinstance(expected, str):
            return expected
    return None


def normalise_text(s: str) -> str:
    """Casefolded, punctuation dropped, whitespace collapsed: text as a near-duplicate key."""
    s = unicodedata.normalize("NFKC", s).casefold()
    s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
    return _SPACE.sub(" ", s).strip()


@dataclass(frozen=True)
class LeakMatch:
    """A training item whose input also appears in the eval set."""

    train_line: int
    eval_line: int
    kind: str  # "exact" | "normalised"


@dataclass
class LeakageReport:
    """Training items that overlap the eval set, and the training list without them."""

    matches: list[LeakMatch]
    clean: list[Any]
    n_train: int
    n_eval: int
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many training items were removed."""
        return len(self.matches)


def leakage(train_examples: Sequence[T], eval_rows_or_examples: Sequence[Any]) -> LeakageReport:
    """Training items whose input matches an eval item's, exactly or after normalise_text."""
    exact: dict[str, int] = {}
    near: dict[str, int] = {}
    for j, item in enumerate(eval_rows_or_examples):
        line = _line(item, j)
        for text in input_texts(item):
            exact.setdefault(text, line)
            if key := normalise_text(text):
                near.setdefault(key, line)
    matches: list[LeakMatch] = []
    clean: list[T] = []
    for i, item in enumerate(train_examples):
        texts = input_texts(item)
        hit = next((LeakMatch(_line(item, i), exact[t], "exact") for t in texts if t in exact),
                   None)
        if hit is None:
            keys = (normalise_text(t) for t in texts)
            hit = next((LeakMatch(_line(item, i), near[k], "normalised")
                        for k in keys if k and k in near), None)
        if hit is None:
            clean.append(item)
        else:
            matches.append(hit)
    return LeakageReport(matches=matches, clean=clean, n_train=len(train_examples),
                         n_eval=len(eval_rows_or_examples))


def input_texts(item: Any) -> list[str]:
    """The texts that stand for an item's input: user turns, or a row's variables several ways."""
    messages = _messages(item)
    if messages is not None:
        users = [m["content"] for m in messages if isinstance(m, Mapping)
                 and m.get("role") == "user" and isinstance(m.get("content"), str)]
        return ["\n".join(users)] if users else []
    if not isinstance(item, Mapping):
        return []
    variables = {k: v for k, v in item.items() if k not in RESERVED}
    if not variables:
        return []
    values = [v if isinstance(v, str) else str(v) for v in variables.values()]
    # The minimal template's turn (as a tuned model saw it), the same with keys sorted (rows
    # whose columns come in another order), and the bare values (prompt/completion data).
    texts = [minimal_user_turn(variables), minimal_user_turn(dict(sorted(variables.items()))),
             "\n".join(values)]
    return [t for t in dict.fromkeys(texts) if t.strip()]


def _messages(item: Any) -> list[Any] | None:
    if isinstance(item, Example):
        return item.messages
    if isinstance(item, Mapping):
        messages = item.get("messages")
        if isinstance(messages, list):
            return messages
    return None


def _line(item: Any, index: int) -> int:
    return getattr(item, "line", None) or index + 1
