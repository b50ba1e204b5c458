"""oneDNN for the linear layers of a model answering on the CPU.

PyTorch's CPU wheel runs fp32 `nn.Linear` through MKL's sgemm, which on AMD processors takes a
generic path: measured on this project's 2-core EPYC (Zen 4), the same matmuls run 1.2–2.5×
faster through oneDNN, which picks its kernels by instruction set, not by vendor (the biggest
gain at the 64-row shape of a decoding step). Generation spends about 80% of its time in these
matmuls. The weights are used as they are (no packed copy, so no extra memory, and weight
updates are seen at once). The fast path is taken only where no gradient is wanted — a module
that is being trained keeps PyTorch's own path, autograd included — and only after a probe has
shown the op present and agreeing with `F.linear` on this machine.

bf16 matmuls: where the CPU multiplies bf16 natively (AVX-512-BF16 or AMX, read from the
kernel's CPU flags at run time), a layer can keep a bf16 copy of its weight and multiply in bf16
(oneDNN's bf16 GEMM, fp32 accumulation; activations cast on the way in, results back to fp32,
so norms, attention and softmax stay fp32). The copy is remade whenever the fp32 weight changes.
Only used where a probe measures it faster on this machine, and only for matmuls of at least
BF16_MIN_ROWS rows (a decoding step with a few rows left is faster in fp32). Answers can differ
from fp32, so the backend checks them (workers/backends/hf.py) and falls back when they do.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
RTOL, ATOL = 1e-4, 1e-4  # fp32 sums in another order; anything further off means a broken op
BF16_MIN_ROWS = 16  # fewer rows: fp32 is faster (measured on the EPYC of bench/results.json)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products; without them, emulated


@functools.cache
def available() -> bool:
    """Whether oneDNN's linear op exists here and computes what F.linear computes."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 64, generator=gen)
    w, b = torch.randn(48, 64, generator=gen), torch.randn(48, generator=gen)
    try:
        with torch.inference_mode():
            got = op(x, w, b, "none", [], "")
    except RuntimeError as exc:
        log.info("oneDNN linear unavailable: %s", exc)
        return False
    ok = got.shape == (3, 5, 48) and torch.allclose(got, nn.functional.linear(x, w, b),
                                                    rtol=RTOL, atol=ATOL)
    if not ok:
        log.warning("oneDNN linear disagrees with F.linear on this machine; not using it")
    return ok


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where /proc is not there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def bf16_native() -> str | None:
    """The CPU feature that makes bf16 matmuls native here (amx_bf16 or avx512_bf16), or None."""
    flags = cpu_flags()
    return next((f for f in reversed(BF16_FLAGS) if f in flags), None)


@functools.cache
def bf16_probe() -> dict[str, object]:
    """Whether bf16 matmuls pay off on this machine: native bf16, results close to fp32, and a
    decoding-sized matmul (64 rows, a SmolLM2 MLP shape) measured faster. Cached per process."""
    feature = bf16_native()
    out: dict[str, object] = {"feature": feature, "use": False}
    if feature is None or not torch.backends.mkldnn.is_available():
        out["why"] = "the CPU has no native bf16 (AVX-512-BF16 or AMX)"
        return out
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 576, generator=gen)
    w = torch.randn(1536, 576, generator=gen) / 24
    wb = w.to(torch.bfloat16)
    try:
        with torch.inference_mode():
            ref = nn.functional.linear(x, w)
            got = nn.functional.linear(x.to(torch.bfloat16), wb).float()
            timings = {}
            for name, fn in (("fp32", lambda: _fp32(x, w, None)),
                             ("bf16", lambda: nn.functional.linear(x.to(torch.bfloat16), wb))):
                fn()
                best = float("inf")
                for _ in range(5):
                    t = time.perf_counter()
                    for _ in range(4):
                        fn()
                    best = min(best, time.perf_counter() - t)
                timings[name] = best
    except RuntimeError as exc:
        out["why"] = f"bf16 matmul failed: {exc}"
        return out
    err = float((got - ref).abs().max() / ref.abs().max())
    out["speedup"] = round(timings["fp32"] / timings["bf16"], 2)
    out["max_rel_error"] = round(err, 4)
    if err > 0.05:
        out["why"] = f"bf16 results off by {err:.2%} of the largest value"
    elif timings["bf16"] * 1.15 > timings["fp32"]:
        out["why"] = f"bf16 measured no faster ({out['speedup']}x fp32)"
    else:
        out["use"] = True
    return out


def _fp32(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if available():
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return nn.functional.linear(x, w, b)


class OneDNNLinear(nn.Linear):
    """nn.Linear whose gradient-free CPU fp32 forward runs through oneDNN (same weights), in
    bf16 when `bf16` is set on it (see set_bf16) and the matmul has enough rows."""

    bf16 = False
    _bf16_weight: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if (x.dtype is torch.float32 and x.device.type == "cpu"
                and self.weight.dtype is torch.float32 and self.weight.is_contiguous()
                and not (torch.is_grad_enabled()
                         and (x.requires_grad or self.weight.requires_grad))):
            if self.bf16 and x.numel() >= BF16_MIN_ROWS * self.in_features:
                y = nn.functional.linear(x.to(torch.bfloat16), self._weight_bf16()).float()
                return y + self.bias if self.bias is not None else y
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)

    def _weight_bf16(self) -> torch.Tensor:
        # Keyed on the storage and its version counter: any in-place update (an optimizer step,
        # a merged adapter, load_state_dict) makes a new copy.
        key = (self.weight.data_ptr(), self.weight._version)
        if self._bf16_weight is None or self._bf16_weight[0] != key:
            self._bf16_weight = (key, self.weight.detach().to(torch.bfloat16))
        return self._bf16_weight[1]


def set_bf16(model: nn.Module, on: bool, *, drop: bool = True) -> int:
    """Turn bf16 matmuls on or off for the model's oneDNN layers; returns how many there are.
    Off with `drop` also frees the bf16 copies of the weights."""
    n = 0
    for module in model.modules():
        if isinstance(module, OneDNNLinear):
            module.bf16 = on
            if not on and drop:
                module._bf16_weight = None
            n += 1
    return n


@contextlib.contextmanager
def fp32(model: nn.Module) -> Iterator[None]:
    """Within the block, every oneDNN layer of the model multiplies in fp32 (bf16 copies kept)."""
    layers = [m for m in model.modules() if isinstance(m, OneDNNLinear)]
    was = [m.bf16 for m in layers]
    for m in layers:
        m.bf16 = False
    try:
        yield
    finally:
        for m, on in zip(layers, was, strict=True):
            m.bf16 = on


def use_onednn(model: nn.Module) -> int:
    """Route the model's plain nn.Linear layers through oneDNN when inferring on the CPU.

    Returns how many layers use it (0 when the op is not available). Each layer's class becomes
    OneDNNLinear, so the model still copies, pickles and saves as before. Idempotent; LoRA
    layers keep working, since peft wraps the base nn.Linear and calls it.
    """
    if not available():
        return 0
    n = 0
    for module in model.modules():
        if type(module) in (nn.Linear, OneDNNLinear):
            module.__class__ = OneDNNLinear
            n += 1
    return n


def restore(model: nn.Module) -> None:
    """Undo use_onednn: every layer back to a plain nn.Linear on PyTorch's own path."""
    for module in model.modules():
        cls = type(module)  # tested apart, so mypy keeps module an nn.Module, not OneDNNLinear
        if cls is OneDNNLinear:
            for attr in ("bf16", "_bf16_weight"):
                module.__dict__.pop(attr, None)
            module.__class__ = nn.Linear
