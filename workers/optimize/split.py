"""Where each row goes: a dev split (selection), a demo pool, and the held-out cases.

With a training set: dev and pool come from it (training rows whose input also appears in the
eval set are dropped first), and every eval row is held out. Without one, the eval set itself is
split, seeded and stratified by the expected answer: every other row of each answer (half)
is held out and untouched until the final measurement; of the rest, the first 60% is
the dev split and the remaining 40% the demo pool.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

RESERVED = ("expected", "assert")
DEV_MAX = 48  # dev rows: enough to separate candidates, few enough for the budget
DEV_SHARE = 0.4  # of a training set
EVAL_DEV_SHARE = 0.6  # of the non-held-out half of an eval set (the rest is the demo pool)
JINJA_MARKS = ("{{", "{%", "{#")  # a demo is pasted into a template: such rows cannot be demos


@dataclass
class Split:
    """The rows of one optimisation: selection, demonstrations and the final measurement."""

    dev: list[dict[str, Any]]
    pool: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    source: str  # "train" or "eval"
    note: str
    dropped_overlap: int = 0


def answer_key(row: dict[str, Any]) -> str:
    """The expected answer as a string key (JSON for structured answers)."""
    exp = row.get("expected")
    return exp if isinstance(exp, str) else json.dumps(exp, sort_keys=True, default=str)


def input_key(row: dict[str, Any]) -> str:
    """The row's inputs (every variable), normalised, to find the same case in two sets."""
    return json.dumps({k: " ".join(str(v).lower().split()) for k, v in row.items()
                       if k not in RESERVED}, sort_keys=True)


def stratified_order(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Rows shuffled within each expected answer, then dealt round-robin across answers, so
    every prefix is as class-balanced as the data allows (graded answers form one group)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[answer_key(row)].append(row)
    if len(groups) > max(8, len(rows) // 3):  # free text: every answer differs; one group
        groups = {"": list(rows)}
    rng = random.Random(seed)
    lists = []
    for key in sorted(groups):
        items = list(groups[key])
        rng.shuffle(items)
        lists.append(items)
    out: list[dict[str, Any]] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def demo_safe(row: dict[str, Any]) -> bool:
    """Whether a row can be pasted into a template as a demonstration."""
    return not any(m in str(v) for v in row.values() for m in JINJA_MARKS)


def make_split(eval_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]] | None,
               *, seed: int = 0) -> Split:
    """Carve dev, pool and held-out rows (see the module docstring for the rule)."""
    if train_rows:
        seen = {input_key(r) for r in eval_rows}
        fresh = [r for r in train_rows if input_key(r) not in seen]
        order = stratified_order(fresh, seed)
        n_dev = min(DEV_MAX, max(4, round(DEV_SHARE * len(order))))
        dev, pool = order[:n_dev], [r for r in order[n_dev:] if demo_safe(r)]
        dropped = len(train_rows) - len(fresh)
        note = (f"dev split: {len(dev)} rows of the training set, demo pool: {len(pool)} rows"
                + (f" ({dropped} training rows dropped: the same input is in the eval set)"
                   if dropped else "") + f"; held out: all {len(eval_rows)} eval rows")
        return Split(dev, pool, list(eval_rows), "train", note, dropped)
    order = stratified_order(eval_rows, seed)
    count: dict[str, int] = defaultdict(int)
    heldout_ids = set()
    for row in order:  # every other row of each answer: the held-out half is balanced too
        if count[answer_key(row)] % 2 == 0:
            heldout_ids.add(id(row))
        count[answer_key(row)] += 1
    # Held-out rows keep the eval set's order, so a case number means the same row everywhere.
    heldout = [r for r in eval_rows if id(r) in heldout_ids]
    rest = [r for r in order if id(r) not in heldout_ids]
    n_dev = min(DEV_MAX, max(2, round(EVAL_DEV_SHARE * len(rest))))
    dev, pool = rest[:n_dev], [r for r in rest[n_dev:] if demo_safe(r)]
    note = (f"no training set: the eval set is split (seeded, stratified by answer): "
            f"{len(heldout)} rows held out until the final measurement, {len(dev)} dev rows, "
            f"{len(pool)} in the demo pool")
    return Split(dev, pool, heldout, "eval", note)
