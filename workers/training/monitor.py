"""Early stopping and the overfitting warning, from the sequence of evaluations. Pure."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

OVERFIT_EVALS = 2  # consecutive rises of the validation loss that make a warning


@dataclass
class Monitor:
    """Tracks the best validation loss, the patience counter and the overfitting streak."""

    patience: int
    enabled: bool = True
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    warned: bool = False
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # step, train, val

    def observe(self, step: int, train_loss: float, val_loss: float) -> list[tuple[str, str]]:
        """Record one evaluation; returns events (kind, text): overfitting, early_stop."""
        self.evals.append((step, train_loss, val_loss))
        events: list[tuple[str, str]] = []
        if val_loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = val_loss, step, 0
            self.warned = False
        else:
            self.bad_evals += 1
        if not self.warned and self._overfitting():
            self.warned = True
            v = " → ".join(f"{e[2]:.3f}" for e in self.evals[-OVERFIT_EVALS - 1:])
            t = " → ".join(f"{e[1]:.3f}" for e in self.evals[-OVERFIT_EVALS - 1:])
            events.append(("overfitting", f"⚠ validation loss rose for {OVERFIT_EVALS} "
                           f"evaluations ({v}) while training loss fell ({t}): the model is "
                           f"starting to memorise the training set; the best step so far is "
                           f"{self.best_step}."))
        if self.should_stop:
            events.append(("early_stop", f"⏹ early stopping at step {step}: validation loss has "
                           f"not improved for {self.bad_evals} evaluations (patience "
                           f"{self.patience}); keeping step {self.best_step} "
                           f"(val loss {self.best_loss:.4f})."))
        return events

    def _overfitting(self) -> bool:
        if len(self.evals) < OVERFIT_EVALS + 1:
            return False
        last = self.evals[-OVERFIT_EVALS - 1:]
        rising = all(b[2] > a[2] for a, b in zip(last, last[1:], strict=False))
        return rising and last[-1][1] < last[0][1]

    @property
    def improved(self) -> bool:
        """Whether the latest evaluation is the best so far."""
        return bool(self.evals) and self.evals[-1][0] == self.best_step

    @property
    def should_stop(self) -> bool:
        """Patience is used up (and early stopping is on)."""
        return self.enabled and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Monitor:
        """Rebuild from state_dict() output."""
        evals = [tuple(e) for e in state.pop("evals", [])]
        return cls(**state, evals=evals)
