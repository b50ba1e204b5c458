"""Successive halving: every candidate on a few dev rows, the better half on twice as many, …
until the survivors have seen the whole dev split. Rows already scored are never re-run.

Ties (equal dev score on the same rows) go to the candidate with fewer prompt tokens, then to
the one raced first (the start version is raced first, so it keeps a tie).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.optimize.space import Candidate

MIN_RUNG_ROWS = 8  # fewer rows cannot tell candidates apart


class CandidateFailed(Exception):
    """A candidate that cannot run (e.g. its prompt does not fit the context): out of the race."""


@dataclass
class Entry:
    """A candidate's standing: its scores per dev row and how far it got."""

    cand: Candidate
    order: int
    scores: dict[int, float] = field(default_factory=dict)
    failed: str = ""
    rung: int = 0  # the last rung it ran in

    def score(self, n: int | None = None) -> float:
        """The mean score over the first n dev rows (all scored rows when n is None)."""
        keys = [i for i in self.scores if n is None or i < n]
        return sum(self.scores[i] for i in keys) / len(keys) if keys else 0.0

    def key(self, n: int) -> tuple[float, int, int]:
        """Sort key at a rung of n rows: higher score, then fewer tokens, then raced first."""
        return (-self.score(n), self.cand.tokens, self.order)

    @property
    def rows(self) -> int:
        """How many dev rows it was scored on."""
        return len(self.scores)


def rung_sizes(n_dev: int, n_cands: int) -> list[int]:
    """Rows per rung: doubling up to the whole dev split; as many rungs as halving needs."""
    if n_dev <= 0:
        return []
    halvings = max(math.ceil(math.log2(max(n_cands, 1))), 1)
    sizes = [n_dev]
    while len(sizes) < halvings + 1 and sizes[-1] // 2 >= MIN_RUNG_ROWS:
        sizes.append(sizes[-1] // 2)
    return sorted(set(sizes))


# (candidate, dev row indices to score) → a score in [0, 1] per row, in that order
Evaluate = Callable[[Candidate, list[int]], list[float]]
# (rung number, standings after it) → new candidates to join the next rung (a proposer)
Extra = Callable[[int, list[Entry]], list[Candidate]]
Report = Callable[[int, int, list[Entry]], None]  # (rung, rows, standings) after each rung


def race(cands: list[Candidate], n_dev: int, evaluate: Evaluate, *, keep: float = 0.5,
         extra: Extra | None = None, report: Report | None = None) -> list[Entry]:
    """Race the candidates on the dev rows; returns every entry, best first (the leaderboard).

    The leaderboard ranks by how far each got (rows scored), then by score on those rows,
    then by fewer tokens.
    """
    entries = [Entry(c, i) for i, c in enumerate(cands)]
    alive = list(entries)
    sizes = rung_sizes(n_dev, len(cands))
    for r, n in enumerate(sizes):
        for e in alive:
            todo = [i for i in range(n) if i not in e.scores]
            if not todo:
                continue
            try:
                values = evaluate(e.cand, todo)
            except CandidateFailed as exc:
                e.failed = str(exc) or "failed"
                continue
            e.scores.update(zip(todo, values, strict=True))
            e.rung = r
        alive = sorted((e for e in alive if not e.failed), key=lambda e: e.key(n))
        if report is not None:
            report(r, n, alive)
        if r == len(sizes) - 1:
            break
        alive = alive[:max(1, math.ceil(len(alive) * keep))]
        if extra is not None:
            for c in extra(r, alive):
                e = Entry(c, len(entries))
                entries.append(e)
                alive.append(e)
    return leaderboard(entries)


def leaderboard(entries: list[Entry]) -> list[Entry]:
    """Entries ranked: furthest first, then by score on their rows, fewer tokens, raced first."""
    ok = [e for e in entries if not e.failed]
    ranked = sorted(ok, key=lambda e: (-e.rows, -e.score(), e.cand.tokens, e.order))
    return ranked + [e for e in entries if e.failed]
