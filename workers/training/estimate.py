"""Before queueing: tokens, steps, time and peak memory of a fine-tune, from measured throughput.

Time comes from a throughput measured with this trainer, scaled by model size (tokens/s is
inversely proportional to parameters at these sizes: the matmuls dominate) and by threads:

- CPU: SmolLM2-135M-Instruct (134.5M params), LoRA r=8 on q_proj/v_proj, the first 64
  sentiment-train chats (48.9 tokens each under the chat template), batch 8, fp32, 2 threads,
  tunebot's trainer: 4.63 examples/s (median of 2 rounds) × 48.9 = CPU_TOKENS_PER_S effective
  tokens/s (tokens of the examples per second of training, the shared prefix counted once
  per example). Measured 2026-11-24 with `python -m bench.bench_finetune --quick` on this
  project's developer machine: 2 cores of an AMD EPYC (KVM guest, AVX2, no AVX-512), while
  other jobs kept the load average at 3–5, so it errs on the slow side.
- CUDA: not measured (no GPU was lent for this work). GPU_TOKENS_PER_S is derived, not
  measured: LoRA training costs ~4 × params FLOPs per token (forward 2P, backward to the
  activations 2P; frozen weights get no gradient), at an assumed 40 TFLOP/s effective for
  small bf16 batches on an H100-class GPU. Replace it with a measurement from
  `python -m bench.bench_finetune --device cuda`.

Memory: tunebot.hyperparams.peak_memory_bytes (weights + LoRA with Adam state + activations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tunebot.hyperparams import (
    auto_max_seq_len,
    lora_param_count,
    peak_memory_bytes,
    steps_per_epoch,
)

REF_PARAMS = 134_515_008  # SmolLM2-135M
REF_THREADS = 2
CPU_TOKENS_PER_S = 225.0
GPU_FLOPS = 40e12
STARTUP_S = {"cpu": 20.0, "cuda": 30.0}  # spawn + imports + model load, measured on CPU
EVAL_SPEEDUP = 3.0  # a forward pass is about a third of forward + backward


def tokens_per_s(model_params: int, device: str, threads: int = REF_THREADS) -> float:
    """Expected training throughput (effective tokens/s) for a model of this size."""
    if device == "cuda":
        return GPU_FLOPS / (4 * model_params)
    return CPU_TOKENS_PER_S * (REF_PARAMS / model_params) * (threads / REF_THREADS)


def estimate(n_examples: int, token_lengths: Sequence[int], hyperparams: Mapping[str, Any],
             model_params: int, device: str, *, n_val: int = 0,
             model_shape: Mapping[str, int] | None = None, threads: int = REF_THREADS,
             memory_budget_bytes: int | None = None) -> dict[str, Any]:
    """Tokens, steps per epoch, total steps, seconds and peak memory for resolved hyperparameters.

    token_lengths: each training example's length under the chat template (before truncation).
    """
    hp = hyperparams
    max_len = int(hp["max_seq_len"]) if str(hp.get("max_seq_len")) != "auto" else \
        auto_max_seq_len(max(token_lengths, default=16))
    clipped = [min(n, max_len) for n in token_lengths]
    mean_len = sum(clipped) / max(1, len(clipped))
    epochs, bs, accum = int(hp["epochs"]), int(hp["batch_size"]), int(hp["grad_accum"])
    per_epoch = steps_per_epoch(n_examples, bs, accum)
    total = per_epoch * epochs
    tokens_epoch = int(round(mean_len * n_examples))
    tps = tokens_per_s(model_params, device, threads)
    evals = math.ceil(total / max(1, int(hp.get("eval_every") or total))) if n_val else 0
    eval_s = evals * n_val * mean_len / (tps * EVAL_SPEEDUP)
    train_s = tokens_epoch * epochs / tps
    shape = dict(model_shape or {})
    hidden, layers = shape.get("hidden_size"), shape.get("num_layers")
    lora = lora_param_count(hidden_size=hidden, num_layers=layers, r=int(hp["lora_r"])) \
        if hidden and layers else 0
    dtype_bytes = 2 if device == "cuda" else 4
    mem = peak_memory_bytes(model_params=model_params, batch_size=bs, seq_len=max_len,
                            lora_params=lora, hidden_size=hidden, num_layers=layers,
                            dtype_bytes=dtype_bytes)
    grad_ckpt = memory_budget_bytes is not None and mem > memory_budget_bytes
    if grad_ckpt:
        mem = peak_memory_bytes(model_params=model_params, batch_size=bs, seq_len=max_len,
                                lora_params=lora, hidden_size=hidden, num_layers=layers,
                                dtype_bytes=dtype_bytes, grad_checkpointing=True)
        train_s *= 4 / 3  # one extra forward per step
    return {
        "examples": n_examples, "epochs": epochs, "batch_size": bs, "grad_accum": accum,
        "max_seq_len": max_len, "tokens_per_epoch": tokens_epoch,
        "tokens_total": tokens_epoch * epochs, "steps_per_epoch": per_epoch,
        "total_steps": total, "evaluations": evals, "tokens_per_s": tps,
        "seconds": STARTUP_S.get(device, 20.0) + train_s + eval_s,
        "peak_memory_bytes": mem, "gradient_checkpointing": grad_ckpt, "device": device,
        "basis": (f"{tps:,.0f} tokens/s on {device} " + ("(measured for SmolLM2-135M on 2 CPU "
                  "cores, scaled by model size)" if device == "cpu" else
                  "(derived from FLOPs, not measured)")),
    }
