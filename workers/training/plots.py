"""The loss curve: training vs validation loss per step, as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def loss_curve(history: Sequence[dict[str, Any]], path: Path, *,
               best_step: int | None = None) -> Path:
    """Draw train and validation loss from the run's history; mark the best step; write PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train", color="#1f77b4", linewidth=1.4)
        if val:
            ax.plot(*zip(*val, strict=True), label="validation", color="#d62728", marker="o",
                    markersize=3, linewidth=1.4)
        if best_step:
            ax.axvline(best_step, color="#555", linestyle=":", linewidth=1,
                       label=f"best (step {best_step})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (answer tokens)")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
