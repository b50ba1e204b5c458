"""oneDNN linear layers for CPU inference: same answers, training untouched."""

from __future__ import annotations

import copy
import platform
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.profiler import profile
from transformers import AutoModelForCausalLM

from tests.conftest import make_settings
from workers.backends import cpu_linear
from workers.backends.hf import HFBackend

ONEDNN_OP = "mkldnn::_linear_pointwise"
# This project's machines (and CI) are x86 with PyTorch's oneDNN build; elsewhere the switch may
# rightly be off, and these tests say nothing.
pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="oneDNN's linear op is required on x86 only")


def ops_run(fn) -> set[str]:  # noqa: ANN001
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.fixture
def model(tiny_model_dir: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()


def test_the_op_is_here_and_agrees_with_f_linear() -> None:
    # This project's machines are x86 with PyTorch's oneDNN build: the probe must pass there.
    assert torch.backends.mkldnn.is_available()
    assert cpu_linear.available()


def test_inference_goes_through_onednn_with_the_same_logits(model: nn.Module) -> None:
    linears = sum(1 for m in model.modules() if type(m) is nn.Linear)
    x = torch.randint(5, 200, (3, 17))
    with torch.inference_mode():
        before = model(input_ids=x).logits
    assert cpu_linear.use_onednn(model) == linears > 0
    assert cpu_linear.use_onednn(model) == linears  # idempotent
    with torch.inference_mode():
        after = model(input_ids=x).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert after.argmax(-1).equal(before.argmax(-1))
    with torch.inference_mode():
        assert ONEDNN_OP in ops_run(lambda: model(input_ids=x))
    cpu_linear.restore(model)
    with torch.inference_mode():
        assert ONEDNN_OP not in ops_run(lambda: model(input_ids=x))


def test_training_keeps_pytorchs_path_and_its_gradients(model: nn.Module) -> None:
    cpu_linear.use_onednn(model)
    model.train()
    x = torch.randint(5, 200, (2, 9))

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()

    names = ops_run(step)
    assert ONEDNN_OP not in names and "aten::linear" in names
    grad = model.model.layers[0].mlp.up_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # no_grad evaluation inside training may take the fast path: nothing needs a gradient.
    with torch.no_grad():
        assert ONEDNN_OP in ops_run(lambda: model(input_ids=x))


def test_a_lora_model_uses_it_under_its_adapter(model: nn.Module) -> None:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False)).eval()
    x = torch.randint(5, 200, (2, 11))
    with torch.inference_mode():
        before = peft_model(input_ids=x).logits
    assert cpu_linear.use_onednn(peft_model) > 0
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer) is cpu_linear.OneDNNLinear  # under the adapter, too
    with torch.inference_mode():
        torch.testing.assert_close(peft_model(input_ids=x).logits, before, rtol=1e-4, atol=1e-4)
        assert ONEDNN_OP in ops_run(lambda: q_proj(torch.randn(2, 3, q_proj.in_features)))


def test_a_switched_model_copies_and_saves_as_before(model: nn.Module, tmp_path: Path) -> None:
    cpu_linear.use_onednn(model)
    twin = copy.deepcopy(model)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), twin.modules(), strict=True))
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", use_safetensors=True).eval()
    x = torch.randint(5, 200, (1, 7))
    with torch.inference_mode():
        torch.testing.assert_close(again(input_ids=x).logits, twin(input_ids=x).logits,
                                   rtol=1e-4, atol=1e-4)
    assert not any(type(m) is cpu_linear.OneDNNLinear for m in again.modules())


def test_the_backend_switches_on_the_cpu_only_when_asked(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fast = HFBackend(str(tiny_model_dir), settings, device="cpu")
    assert fast.onednn_layers > 0
    plain = HFBackend(str(tiny_model_dir), settings, device="cpu", onednn=False)
    assert plain.onednn_layers == 0
    assert not any(type(m) is cpu_linear.OneDNNLinear for m in plain.model.modules())
