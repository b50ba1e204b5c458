"""The training configuration: resolved hyperparameters plus how and where to run them.

Pure data (no torch): built in the worker's main process, pickled to the training child.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tunebot.hyperparams import AUTO


@dataclass
class TrainConfig:
    """Everything a training run needs besides its data and its artifact folder."""

    model_dir: str
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = AUTO  # auto | all-linear | names
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    patience: int = 3
    eval_every: int = 10
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # None: every core this process may run on
    checkpoint_every: int | None = None  # None: at each evaluation (or every eval_every steps)
    log_every: int | None = None  # None: about 50 log points per run, at most every 10 steps
    gradient_checkpointing: bool | None = None  # None: when the memory estimate needs it
    memory_budget_bytes: int | None = None  # None: half the free RAM (CPU) or 90% of the GPU
    early_stopping: bool = True
    share_prefix: bool = True  # pack a batch into one sequence, its common prefix once (loss.py)
    # On a CPU with native bf16 (AVX-512-BF16 or AMX): frozen base weights kept in bf16, LoRA
    # weights in fp32, matmuls under bf16 autocast (workers/training/model.py).
    cpu_bf16: bool = True
    group_by_length: bool = True
    max_steps: int | None = None  # cap on optimizer steps (benchmarks, smoke tests)
    max_grad_norm: float = 1.0
    eval_batch_size: int | None = None  # None: 2 × batch_size
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hyperparams(cls, hp: Mapping[str, Any], *, model_dir: str,
                         **overrides: Any) -> TrainConfig:
        """Build from tunebot.hyperparams.resolve_auto's output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in hp.items() if k in names and v is not None}
        values.update(overrides)
        return cls(model_dir=str(model_dir), **{k: v for k, v in values.items()
                                                if k != "model_dir"})

    def n_threads(self) -> int:
        """The torch intra-op thread count: the configured one or every usable core."""
        if self.threads:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    def fingerprint(self, n_train: int, n_val: int) -> str:
        """What a checkpoint must match to be resumed: the parts that shape the run's steps."""
        keys = ("model_dir", "epochs", "lr", "batch_size", "grad_accum", "max_seq_len",
                "lora_r", "lora_alpha", "lora_dropout", "target_modules", "weight_decay",
                "warmup_ratio", "seed", "max_steps", "group_by_length")
        data = {k: asdict(self)[k] for k in keys} | {"n_train": n_train, "n_val": n_val}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
