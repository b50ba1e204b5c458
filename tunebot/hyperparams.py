"""Fine-tune hyperparameters: the accepted keys, their ranges, and how `auto` is resolved.

Pure (no torch): the bot validates `k=v` options before queueing, and the worker resolves
`auto` once the data's size and lengths and the model's size are known. Two values stay
symbolic after `resolve_auto`: `target_modules="auto"` (the model's attention projections,
looked up on the loaded model in workers/training) and `val_split="auto"` (10%, at least 5 and
at most 500 examples: tunebot.datafiles.split applies it).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunebot.commands import parse_name, parse_ref
from tunebot.errors import UserError

AUTO = "auto"
ALL_LINEAR = "all-linear"
USAGE = "/finetune start M on DATASET [{key}=…]"
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")

# Auto rules. Epochs aim at 3 within an examples × epochs window (as OpenAI's auto does), then
# rise until the run takes at least MIN_TOTAL_STEPS optimizer steps: 21 steps at 2e-4 left the
# bundled 135M model where it started on every starter set. LoRA's learning rate follows the
# model's size (small models take and need larger steps; 2e-4 when the size is unknown).
EPOCHS_AIM, EXAMPLE_EPOCHS_RANGE = 3, (100, 25_000)
MIN_TOTAL_STEPS = 36  # at 1e-3, 35 steps taught the bundled model sentiment (96% held out)
LR_BY_PARAMS = ((5e8, 1e-3), (3e9, 5e-4), (1.5e10, 2e-4))  # (up to N parameters, lr)
LR_LARGEST = 1e-4
BATCH_CHOICES = (16, 8, 4, 2, 1)
MIN_STEPS_PER_EPOCH = 4
EVALS_PER_RUN = 10
DEFAULTS: dict[str, Any] = {
    "lr": 2e-4, "grad_accum": 1, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
    "weight_decay": 0.0, "warmup_ratio": 0.03, "patience": 3, "seed": 42,
    "truncate": "refuse", "template": "minimal",
}


@dataclass(frozen=True)
class Spec:
    """One hyperparameter: its type, range or choices."""

    kind: str  # int | float | choice | modules | ref | name
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    auto: bool = True


SPECS: dict[str, Spec] = {
    "epochs": Spec("int", 1, 25),
    "lr": Spec("float", 1e-6, 1e-2),
    "batch_size": Spec("int", 1, 256),
    "grad_accum": Spec("int", 1, 64),
    "max_seq_len": Spec("int", 16, 32768),
    "lora_r": Spec("int", 1, 256),
    "lora_alpha": Spec("int", 1, 1024),
    "lora_dropout": Spec("float", 0.0, 0.5),
    "target_modules": Spec("modules"),
    "weight_decay": Spec("float", 0.0, 0.3),
    "warmup_ratio": Spec("float", 0.0, 0.5),
    "patience": Spec("int", 1, 20),
    "eval_every": Spec("int", 1, 10_000),
    "seed": Spec("int", 0, 2**32 - 1),
    "val_split": Spec("float", 0.05, 0.5),
    "kfold": Spec("int", 2, 10),
    "truncate": Spec("choice", choices=("refuse", "ok")),
    "prompt": Spec("ref", auto=False),
    "template": Spec("choice", choices=("minimal", "full")),
    "name": Spec("name", auto=False),
}
KEYS = tuple(SPECS)


def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every key converted and range-checked; keys not given are `auto` (prompt/name: None)."""
    unknown = [k for k in params if k not in SPECS]
    if unknown:
        key = str(unknown[0])[:40]
        close = _suggest(key)
        hint = f"; did you mean {close}?" if close else ""
        raise UserError(f"unknown hyperparameter {key} (allowed: {', '.join(KEYS)}){hint}",
                        USAGE.format(key="k"))
    out: dict[str, Any] = {k: (AUTO if s.auto else None) for k, s in SPECS.items()}
    for key, raw in params.items():
        out[key] = _convert(key, SPECS[key], str(raw).strip())
    return out


def _suggest(key: str) -> str | None:
    # A shared leading part (lrate → lr, epoch → epochs) beats difflib on short names.
    prefixed = [k for k in KEYS if key.startswith(k) or k.startswith(key)]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.75)
    return close[0] if close else None


def _range(spec: Spec) -> str:
    return f"between {spec.lo:g} and {spec.hi:g}"


def _convert(key: str, spec: Spec, raw: str) -> Any:
    usage = USAGE.format(key=key)
    if spec.auto and raw == AUTO:
        return AUTO
    if spec.kind == "choice":
        if raw not in spec.choices:
            raise UserError(f"{key} must be one of {', '.join(spec.choices)} (got {raw[:40]})",
                            usage)
        return raw
    if spec.kind == "modules":
        return _modules(raw, usage)
    if spec.kind == "ref":
        return str(parse_ref(raw, usage))
    if spec.kind == "name":
        return parse_name(raw, usage, "model name")
    try:
        value: float = int(raw) if spec.kind == "int" else float(raw)
    except ValueError:
        what = "an integer" if spec.kind == "int" else "a number"
        raise UserError(f"{key} must be {what} {_range(spec)}, or auto (got {raw[:40]})",
                        usage) from None
    assert spec.lo is not None and spec.hi is not None
    if not math.isfinite(value):  # nan passes no range check by itself: named apart
        raise UserError(f"{key} must be a finite number {_range(spec)} (got {raw[:40]})", usage)
    if not spec.lo <= value <= spec.hi:
        raise UserError(f"{key} must be {_range(spec)} (got {raw[:40]})", usage)
    return value


def _modules(raw: str, usage: str) -> str | list[str]:
    if raw == ALL_LINEAR:
        return ALL_LINEAR
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not MODULE_RE.match(n)]
    if not names or bad:
        raise UserError("target_modules must be names of the model's linear layers separated "
                        f"by commas (e.g. q_proj,v_proj), all-linear, or auto (got {raw[:60]})",
                        usage)
    return list(dict.fromkeys(names))


def auto_epochs(n_examples: int) -> int:
    """3 epochs, moved so that examples × epochs stays within 100–25,000 (and 1–25 epochs)."""
    lo, hi = EXAMPLE_EPOCHS_RANGE
    n = max(1, n_examples)
    epochs = EPOCHS_AIM
    if n * epochs < lo:
        epochs = math.ceil(lo / n)
    elif n * epochs > hi:
        epochs = hi // n
    return int(min(25, max(1, epochs)))


def train_size(n_examples: int, val_split: Any) -> int:
    """Examples left for training once the validation split is carved (auto: 10%, at least 5
    and at most 500, as tunebot.datasets.split applies it)."""
    if val_split == AUTO or val_split is None:
        held = min(500, max(5, round(0.1 * n_examples))) if n_examples > 10 else 0
    else:
        held = round(float(val_split) * n_examples)
    return max(1, n_examples - held)


def auto_lr(model_params: int | None) -> float:
    """LoRA's learning rate by model size (LR_BY_PARAMS); 2e-4 when the size is unknown."""
    if model_params is None:
        return float(DEFAULTS["lr"])
    return next((lr for limit, lr in LR_BY_PARAMS if model_params <= limit), LR_LARGEST)


def auto_max_seq_len(length_p99: int) -> int:
    """The data's p99 token length rounded up to a multiple of 8, within 16–32768."""
    return int(min(32768, max(16, 8 * math.ceil(max(1, length_p99) / 8))))


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch (a last partial batch or accumulation window still steps)."""
    return max(1, math.ceil(math.ceil(max(1, n_examples) / batch_size) / grad_accum))


def peak_memory_bytes(
    *, model_params: int, batch_size: int, seq_len: int, lora_params: int,
    hidden_size: int | None = None, num_layers: int | None = None,
    dtype_bytes: int = 4, grad_checkpointing: bool = False, runtime_bytes: int = 400 * 2**20,
) -> int:
    """Peak training memory: weights + LoRA (fp32 weight, grad, 2 Adam moments) + activations.

    Activations of a Llama-style block, kept for backward, are about 24 hidden-sized vectors
    per token per layer (norms, q/k/v, attention output, residuals, the MLP's 3 projections at
    ~2.7× hidden); with gradient checkpointing only each layer's input (1 vector) is kept plus
    one layer recomputed at a time. Logits are computed only at supervised positions, so the
    vocabulary-sized term is left out. When the shape is unknown, hidden × layers ≈ 1.5 ×
    sqrt(params) (SmolLM2-135M 1.49, Llama-7B 1.60). `runtime_bytes` covers the framework
    (torch's allocator and kernels; on CUDA also the context).
    """
    if hidden_size and num_layers:
        h_times_l, h = hidden_size * num_layers, hidden_size
    else:
        h_times_l = int(1.5 * math.sqrt(model_params))
        h = int(math.sqrt(h_times_l * 20))  # layers ≈ hidden / 20 for these families
    tokens = batch_size * seq_len
    if grad_checkpointing:
        act = tokens * (h_times_l + 24 * h) * dtype_bytes
    else:
        act = tokens * 24 * h_times_l * dtype_bytes
    return int(model_params * dtype_bytes + lora_params * 16 + act + runtime_bytes)


def lora_param_count(*, hidden_size: int, num_layers: int, r: int, modules_per_layer: int = 2,
                     out_size: int | None = None) -> int:
    """LoRA parameters: r × (in + out) per adapted projection (q and v by default) per layer."""
    return num_layers * modules_per_layer * r * (hidden_size + (out_size or hidden_size))


def resolve_auto(
    validated: Mapping[str, Any], *, n_examples: int, length_p99: int,
    memory_budget_bytes: int | None = None, model_params: int | None = None,
    model_shape: Mapping[str, int] | None = None, dtype_bytes: int = 4,
) -> dict[str, Any]:
    """Fill every `auto` from the data (training examples, p99 length) and the memory budget.

    `target_modules` and `val_split` stay "auto" (see the module docstring); kfold auto is off
    (None). `model_shape` may give hidden_size and num_layers for the memory estimate.
    """
    out = dict(validated)
    for key, spec in SPECS.items():
        out.setdefault(key, AUTO if spec.auto else None)
    if out["lr"] == AUTO:
        out["lr"] = auto_lr(model_params)
    epochs_auto = out["epochs"] == AUTO
    for key, value in DEFAULTS.items():
        if out[key] == AUTO:
            out[key] = value
    if out["kfold"] == AUTO:
        out["kfold"] = None
    if out["epochs"] == AUTO:
        out["epochs"] = auto_epochs(n_examples)
    if out["max_seq_len"] == AUTO:
        out["max_seq_len"] = auto_max_seq_len(length_p99)
    if out["batch_size"] == AUTO:
        out["batch_size"] = auto_batch_size(
            n_examples=n_examples, seq_len=out["max_seq_len"], lora_r=out["lora_r"],
            memory_budget_bytes=memory_budget_bytes, model_params=model_params,
            model_shape=model_shape, dtype_bytes=dtype_bytes)
    if epochs_auto:  # enough optimizer steps to move, whatever the data's size
        per_epoch = steps_per_epoch(train_size(n_examples, out["val_split"]), out["batch_size"],
                                    out["grad_accum"])
        out["epochs"] = int(min(25, max(out["epochs"], math.ceil(MIN_TOTAL_STEPS / per_epoch))))
    if out["eval_every"] == AUTO:
        total = out["epochs"] * steps_per_epoch(n_examples, out["batch_size"], out["grad_accum"])
        out["eval_every"] = max(1, round(total / EVALS_PER_RUN))
    return out


def auto_batch_size(
    *, n_examples: int, seq_len: int, lora_r: int, memory_budget_bytes: int | None,
    model_params: int | None, model_shape: Mapping[str, int] | None = None,
    dtype_bytes: int = 4,
) -> int:
    """The largest of 16, 8, 4, 2, 1 that fits the memory budget and leaves ≥ 4 steps an epoch."""
    cap = max(1, n_examples // MIN_STEPS_PER_EPOCH)
    shape = dict(model_shape or {})
    for bs in BATCH_CHOICES:
        if bs > cap:
            continue
        if memory_budget_bytes is None or model_params is None:
            return bs
        hidden, layers = shape.get("hidden_size"), shape.get("num_layers")
        lora = lora_param_count(hidden_size=hidden, num_layers=layers, r=lora_r) \
            if hidden and layers else 0
        need = peak_memory_bytes(model_params=model_params, batch_size=bs, seq_len=seq_len,
                                 lora_params=lora, hidden_size=hidden, num_layers=layers,
                                 dtype_bytes=dtype_bytes)
        if need <= memory_budget_bytes:
            return bs
    return 1
