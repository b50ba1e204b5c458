"""oneDNN for the linear layers of a model answering on the CPU.

PyTorch's CPU wheel runs fp32 `nn.Linear` through MKL's sgemm, which on AMD processors takes a
generic path: measured on this project's 2-core EPYC (Zen 4), the same matmuls run 1.2–2.5×
faster through oneDNN, which picks its kernels by instruction set, not by vendor (the biggest
gain at the 64-row shape of a decoding step). Generation spends about 80% of its time in these
matmuls. The weights are used as they are (no packed copy, so no extra memory, and weight
updates are seen at once). The fast path is taken only where no gradient is wanted — a module
that is being trained keeps PyTorch's own path, autograd included — and only after a probe has
shown the op present and agreeing with `F.linear` on this machine.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
RTOL, ATOL = 1e-4, 1e-4  # fp32 sums in another order; anything further off means a broken op


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


class OneDNNLinear(nn.Linear):
    """nn.Linear whose gradient-free CPU fp32 forward runs through oneDNN (same weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if (x.dtype is torch.float32 and x.device.type == "cpu"
                and self.weight.dtype is torch.float32 and self.weight.is_contiguous()
                and not (torch.is_grad_enabled()
                         and (x.requires_grad or self.weight.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


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
            module.__class__ = nn.Linear
