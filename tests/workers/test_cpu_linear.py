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


# ---- bf16 matmuls (TUNEBOT_CPU_PRECISION=bf16) -------------------------------------------
# torch computes bf16 matmuls on any x86 CPU (emulated where the hardware has none), so these
# run everywhere; the native-hardware gate is replaced where a test needs bf16 on.

NATIVE = {"feature": "avx512_bf16", "use": True, "speedup": 1.5}


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_linear, "bf16_probe", lambda: NATIVE)


def test_bf16_is_detected_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for flags, want in (({"avx2", "avx512f"}, None), ({"avx512f", "avx512_bf16"}, "avx512_bf16"),
                        ({"amx_tile", "amx_bf16", "avx512_bf16"}, "amx_bf16"), (set(), None)):
        monkeypatch.setattr(cpu_linear, "cpu_flags", lambda flags=flags: flags)
        cpu_linear.bf16_native.cache_clear()
        cpu_linear.bf16_probe.cache_clear()
        assert cpu_linear.bf16_native() == want
        probe = cpu_linear.bf16_probe()
        assert probe["feature"] == want
        if want is None:
            assert probe["use"] is False and "no native bf16" in str(probe["why"])
    cpu_linear.bf16_native.cache_clear()
    cpu_linear.bf16_probe.cache_clear()


def test_bf16_layers_multiply_in_bf16_and_follow_weight_updates(model: nn.Module) -> None:
    cpu_linear.use_onednn(model)
    layer = next(m for m in model.modules() if isinstance(m, cpu_linear.OneDNNLinear))
    x = torch.randn(cpu_linear.BF16_MIN_ROWS, layer.in_features)
    with torch.inference_mode():
        exact = layer(x)
        assert cpu_linear.set_bf16(model, True) > 0
        got = layer(x)
        want = nn.functional.linear(x.bfloat16(), layer.weight.bfloat16()).float()
        if layer.bias is not None:
            want = want + layer.bias
        torch.testing.assert_close(got, want)
        assert not torch.equal(got, exact)  # rounded, so not the fp32 result
        torch.testing.assert_close(got, exact, rtol=0.05, atol=0.05)
        # Too few rows: fp32 (to fp32's own precision; another row count, another blocking).
        torch.testing.assert_close(layer(x[:1]), exact[:1], rtol=1e-5, atol=1e-5)
        with cpu_linear.fp32(model):
            torch.testing.assert_close(layer(x), exact, rtol=1e-6, atol=1e-6)
        assert layer.bf16  # back on after the block
    with torch.no_grad():
        layer.weight.mul_(2)  # an optimizer step: the bf16 copy must be remade
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), 2 * want - (layer.bias if layer.bias is not None
                                                         else 0), rtol=0.02, atol=0.02)
    cpu_linear.set_bf16(model, False)
    assert layer._bf16_weight is None  # the copy freed
    with torch.enable_grad():
        x.requires_grad_(True)
        assert layer(x).grad_fn is not None  # training never takes the bf16 path


def test_bf16_backend_checks_its_answers_and_falls_back(tiny_model_dir: Path, tmp_path: Path,
                                                         native_bf16: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.backends import hf_generate
    from workers.backends.base import GenParams

    settings = make_settings(tmp_path)
    ref = HFBackend(str(tiny_model_dir), settings, device="cpu")
    assert ref.precision == "fp32" and ref.precision_note == "fp32"  # the default
    prompts = [[{"role": "user", "content": f"review {i}: " + "good " * (i % 5)}]
               for i in range(12)]
    params = GenParams(max_new_tokens=5)
    expected = [g.text for g in ref.generate(prompts, params)]
    fast = HFBackend(str(tiny_model_dir), make_settings(tmp_path, cpu_precision="bf16"),
                     device="cpu", batch_size=6)
    assert fast.precision == "bf16" and "avx512_bf16" in fast.precision_note
    head = fast.model.get_output_embeddings()
    calls: list[int] = []
    real = hf_generate.greedy_disagreements

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        out = real(*a, **kw)
        calls.append(out)
        assert not head.bf16  # logits stay fp32
        return out

    monkeypatch.setattr(hf_generate, "greedy_disagreements", spy)
    gens = fast.generate(prompts, params)
    assert len(calls) == 2 and fast.bf16_checked >= 4  # each batch of 6 checked on 2+ rows
    if not any(calls):  # fp32 agreed on the sample: those rows are fp32's answers
        assert {g.extra["precision"] for g in gens} == {"bf16"}
    # Now fp32 disagrees: the batch is answered again in fp32 and the backend stays fp32.
    monkeypatch.setattr(hf_generate, "greedy_disagreements", lambda *a, **kw: 1)
    fast.precision = "bf16"
    gens = fast.generate(prompts, params)
    assert [g.text for g in gens] == expected
    assert {g.extra["precision"] for g in gens} == {"fp32"}
    assert fast.precision == "fp32" and "answered in fp32" in fast.precision_note
    # Sampling (temperature > 0) never uses bf16: nothing to check it against.
    fast.precision = "bf16"
    sampled = fast.generate(prompts, GenParams(max_new_tokens=3, temperature=0.8, seed=1))
    assert {g.extra["precision"] for g in sampled} == {"fp32"}


def test_greedy_disagreements_is_exact_on_fp32_itself(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    from workers.backends import hf_generate

    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu")
    prompts = [[{"role": "user", "content": f"say {w}"}] for w in ("yes", "no please", "maybe")]
    ids = [b.encode(p) for p in prompts]
    with torch.inference_mode():
        outs = hf_generate.generate_batch(b.model, ids, prefix=None, pad_id=b.pad_id,
                                          eos_ids=b.eos_ids, max_new_tokens=6)
    rows = [(i, o, len(o) < 6) for i, o in zip(ids, outs, strict=True)]
    # What the model generated greedily is what it picks teacher-forced: no disagreement.
    with torch.inference_mode():
        rows = [r for r in rows if r[1]]
        assert rows, "the tiny model answered nothing"
        assert hf_generate.greedy_disagreements(b.model, rows, prefix=None, pad_id=b.pad_id,
                                                eos_ids=b.eos_ids) == 0
        # Change one token of one answer: exactly that row disagrees.
        i, o, e = rows[0]
        wrong = [(i, [(o[0] + 1) % b.model.config.vocab_size, *o[1:]], e), *rows[1:]]
        assert hf_generate.greedy_disagreements(b.model, wrong, prefix=None, pad_id=b.pad_id,
                                                eos_ids=b.eos_ids) == 1


def test_bf16_asked_for_on_a_cpu_without_it_says_so(tiny_model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_linear, "bf16_probe",
                        lambda: {"feature": None, "use": False,
                                 "why": "the CPU has no native bf16 (AVX-512-BF16 or AMX)"})
    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path, cpu_precision="bf16"),
                  device="cpu")
    assert b.precision == "fp32"
    assert "bf16 asked for, but the CPU has no native bf16" in b.precision_note
