"""The local transformers backend on a tiny random model (and one SmolLM2 test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from devtools.tiny_model import build_tiny_model
from tests.conftest import make_settings
from tunebot.errors import JobError
from workers.backends import gguf_cache
from workers.backends.base import GenParams
from workers.backends.hf import HFBackend
from workers.backends.hf_generate import common_prefix_len, prefill_groups
from workers.backends.registry import backend_for
from workers.backends.warm import WarmCache

SYSTEM = "Classify the sentiment of the review as positive, negative or neutral. One word."
REVIEWS = [
    "I love this phone, great battery",
    "terrible service, never again",
    "it is okay I guess",
    "The food was cold and the staff was rude to us all evening",
    "great",
    "Works fine.",
    "Delivery was slow but the refund came fast",
    "no",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny matmuls gain nothing from threads, and spinning OpenMP threads on a busy CI box
    # make these tests ten times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chats(reviews: list[str] = REVIEWS) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r}]
            for r in reviews]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HFBackend:
    settings = make_settings(tmp_path_factory.mktemp("hf"))
    return HFBackend(str(tiny_model_dir), settings, device="cpu", batch_size=3)


def reference(model_dir: Path, prompts: list[list[dict[str, str]]], n: int) -> list[str]:
    """Plain transformers: one prompt at a time through model.generate, greedy."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = []
    for p in prompts:
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        texts.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def test_batched_greedy_equals_one_at_a_time(backend: HFBackend, tiny_model_dir: Path) -> None:
    params = GenParams(max_new_tokens=12)
    batched = backend.generate(chats(), params)
    # The system turn (and the user turn's header) is shared by every case, and cached once.
    shared = common_prefix_len([backend.encode(c) for c in chats()])
    assert shared > len(backend.tokenizer(SYSTEM)["input_ids"])
    assert {g.extra["prefix_tokens"] for g in batched} == {shared}
    alone = [backend.generate([c], params)[0] for c in chats()]
    expected = reference(tiny_model_dir, chats(), 12)
    assert [g.text for g in batched] == expected
    assert [g.text for g in alone] == expected
    assert any(g.text for g in batched)
    assert {g.extra["batch_size"] for g in batched} == {3, 2}  # 8 cases in batches of 3


def test_prefix_is_reused_across_calls_until_the_weights_change(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu")
    params = GenParams(max_new_tokens=6)
    b.generate(chats(), params)
    kept = b._prefixes.get(False)
    single = b.generate(chats(REVIEWS[:1]), params)[0]
    assert single.extra["prefix_tokens"] == len(kept) and b._prefixes.get(False) is kept
    with torch.no_grad():  # what an optimizer step does to the weights
        b.model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    changed = b.generate(chats(REVIEWS[:1]), params)[0]
    assert changed.extra["prefix_tokens"] == 0  # the stale cache was dropped, not reused
    assert b.generate(chats(), params)[0].extra["prefix_tokens"] == len(kept)
    assert b._prefixes.get(False) is not kept


def test_without_prefix_cache_left_padding_gives_the_same(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    plain = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu",
                      batch_size=8, prefix_cache=False)
    outs = plain.generate(chats(), GenParams(max_new_tokens=12))
    assert [g.extra["prefix_tokens"] for g in outs] == [0] * len(REVIEWS)
    assert [g.text for g in outs] == reference(tiny_model_dir, chats(), 12)


def test_prefill_groups_of_similar_length_within_the_token_budget() -> None:
    lengths = [5, 2, 9, 3, 2, 30]
    groups = prefill_groups(lengths, 12)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups == [[1, 4, 3], [0], [2], [5]]  # shortest first; 30 alone, over budget
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 12
    assert prefill_groups([4] * 8, 1000) == [list(range(8))]


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_groups_prefilled_apart_then_decoded_together_give_the_same(
        tiny_model_dir: Path, tmp_path: Path, prefix_cache: bool) -> None:
    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu", batch_size=8,
                  prefix_cache=prefix_cache, prefill_tokens=24)
    ids = [b.encode(c) for c in chats()]
    p_len = common_prefix_len(ids) if prefix_cache else 0
    assert len(prefill_groups([len(x) - p_len for x in ids], 24)) >= 3
    forwards: list[tuple[int, int]] = []
    hook = b.model.register_forward_pre_hook(
        lambda _m, _a, kw: forwards.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        outs = b.generate(chats(), GenParams(max_new_tokens=12))
    finally:
        hook.remove()
    assert [g.text for g in outs] == reference(tiny_model_dir, chats(), 12)
    assert {g.extra["batch_size"] for g in outs} == {8}
    # Several prefill forwards, then one forward per new token for all the rows still going.
    decode = [rows for rows, width in forwards if width == 1]
    assert len([w for _, w in forwards if w > 1]) >= 3
    assert len(decode) <= 11 and decode[0] == 8


def test_prompts_without_a_shared_prefix(backend: HFBackend, tiny_model_dir: Path) -> None:
    prompts = [[{"role": "user", "content": r}] for r in REVIEWS[:4]]
    outs = backend.generate(prompts, GenParams(max_new_tokens=8))
    assert [g.text for g in outs] == reference(tiny_model_dir, prompts, 8)


def test_token_counts(backend: HFBackend) -> None:
    outs = backend.generate(chats(), GenParams(max_new_tokens=7))
    tok = backend.tokenizer
    for chat, g in zip(chats(), outs, strict=True):
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert g.tokens_in == len(tok(text, add_special_tokens=False)["input_ids"])
        assert 0 <= g.tokens_out <= 7
        assert g.latency_ms > 0 and g.extra["batch_ms"] >= g.latency_ms * 0.5
    assert max(g.tokens_out for g in outs) == 7


def test_samples_differ_by_seed_and_repeat_with_the_same_seed(backend: HFBackend) -> None:
    def draw(seed: int) -> list[str]:
        params = GenParams(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=seed)
        return [g.text for g in backend.generate(chats(), params)]

    first, again, other = draw(1), draw(1), draw(2)
    assert first == again
    assert first != other
    # K copies of one prompt in one call are K independent draws.
    same = backend.generate(chats(REVIEWS[:1]) * 4, GenParams(temperature=1.0, seed=3,
                                                               max_new_tokens=10))
    assert len({g.text for g in same}) > 1


def test_stop_strings_cut_the_answer(backend: HFBackend) -> None:
    answers = backend.generate(chats(), GenParams(max_new_tokens=16))
    full = max(answers, key=lambda g: len(g.text))
    prompts = chats([REVIEWS[answers.index(full)]])
    printable = [i for i in range(2, len(full.text) - 2) if full.text[i:i + 2].isascii()
                 and full.text[i:i + 2].strip() == full.text[i:i + 2]]
    assert printable, f"no usable stop string in {full.text!r}"
    stop = full.text[printable[0]:printable[0] + 2]
    cut = backend.generate(prompts, GenParams(max_new_tokens=16, stop=(stop, "never-seen")))[0]
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.tokens_out < full.tokens_out
    assert cut.extra["finish_reason"] == "stop" and full.extra["finish_reason"] == "length"


def test_prompt_longer_than_the_context_is_a_job_error(backend: HFBackend) -> None:
    long_chat = chats(["hello " * 600])
    with pytest.raises(JobError, match=r"does not fit .* context of 512 tokens"):
        backend.generate(long_chat, GenParams(max_new_tokens=4))


def test_warm_cache_returns_the_same_object_and_evicts(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    other_dir = build_tiny_model(tmp_path / "other", seed=1)
    cache = WarmCache()
    first = cache.get(str(tiny_model_dir), settings, device="cpu")
    t0 = time.perf_counter()
    assert cache.get(str(tiny_model_dir), settings, device="cpu") is first
    assert time.perf_counter() - t0 < 0.05
    size = first.param_bytes
    cache.budget_bytes = int(size * 1.5)  # room for one tiny model, not two
    second = cache.get(str(other_dir), settings, device="cpu")
    assert cache.keys() == [(str(other_dir), "", "cpu")]
    assert cache.get(str(other_dir), settings, device="cpu") is second
    assert cache.get(str(tiny_model_dir), settings, device="cpu") is not first  # reloaded
    assert cache.total_bytes <= cache.budget_bytes


def test_refuses_pickle_only_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(JobError, match="only pickle weights .*pytorch_model.bin.*safetensors"):
        HFBackend(str(folder), make_settings(tmp_path), device="cpu")


def test_hub_id_not_in_the_local_cache(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="tunebot-tests/absent is not available offline"):
        backend_for("tunebot-tests/absent", make_settings(tmp_path), device="cpu")


def _lora(tiny_model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    torch.manual_seed(0)
    # init_lora_weights=False draws B at random too, so the adapter is not a no-op.
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(out)
    return out


def test_ft_ref_loads_base_plus_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _lora(tiny_model_dir, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    settings, cache = make_settings(tmp_path), WarmCache()
    calls = []

    def resolver(name: str, version: int | None, label: str | None) -> tuple[str, Path]:
        calls.append((name, version, label))
        return str(tiny_model_dir), adapter

    base = backend_for(str(tiny_model_dir), settings, device="cpu", cache=cache)
    before = [g.text for g in base.generate(chats(), GenParams(max_new_tokens=8))]
    tuned = backend_for("ft:demo@1", settings, resolve_ft=resolver, device="cpu", cache=cache)
    assert calls == [("demo", 1, None)] and tuned is not base and tuned.name == "ft:demo@1"
    after = [g.text for g in tuned.generate(chats(), GenParams(max_new_tokens=8))]
    assert after != before
    # The base in the warm cache is untouched by the adapter.
    assert [g.text for g in base.generate(chats(), GenParams(max_new_tokens=8))] == before
    # An unmerged PeftModel in memory (as a fine-tune holds it) answers the same.
    from peft import PeftModel

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    unmerged = HFBackend.from_loaded(PeftModel.from_pretrained(fresh, adapter),
                                     base.tokenizer, name="in-memory")
    assert [g.text for g in unmerged.generate(chats(), GenParams(max_new_tokens=8))] == after


def test_refuses_a_pickled_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _lora(tiny_model_dir, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(JobError, match="adapter .* only pickle weights"):
        HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu",
                  adapter_dir=adapter)


def test_gguf_conversion_is_locked_and_atomic(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the second thread to reach the lock
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(gguf_cache, "_convert", fake_convert)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(gguf_cache.converted_dir(tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [tmp_path / "smollm2"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2.lock", "smollm2"]


@pytest.mark.smollm2
def test_bundled_smollm2_through_the_gguf_cache(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    t0 = time.perf_counter()
    cold = HFBackend("smollm2", settings, device="cpu")
    cold_s = time.perf_counter() - t0
    config = (settings.models_dir / "smollm2" / "config.json").read_text()
    assert "quantization_config" not in config
    del cold
    t1 = time.perf_counter()
    warm = HFBackend("smollm2", settings, device="cpu")
    warm_s = time.perf_counter() - t1
    assert warm_s < cold_s / 3, (cold_s, warm_s)
    prompts = [[{"role": "system", "content": "Classify the sentiment of the review as positive, "
                 "negative or neutral. Answer with one word."},
                {"role": "user", "content": text}]
               for text in ("terrible service, never again", "Works fine.", "I love this phone")]
    outs = warm.generate(prompts, GenParams(max_new_tokens=8))
    assert outs[0].text.strip().lower() == "negative"
    assert all(g.tokens_in > 20 and 0 < g.tokens_out <= 8 for g in outs)
    assert outs[0].extra["prefix_tokens"] > 20
    # The prefix-cached batch answers what plain one-at-a-time generate answers.
    tok = warm.tokenizer
    for p, g in zip(prompts, outs, strict=True):
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        ref = warm.model.generate(**enc, max_new_tokens=8, do_sample=False)
        assert g.text == tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_on_batch_hears_every_case_once_in_even_batches(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu", batch_size=5)
    heard: list[tuple[list[int], list[str]]] = []
    outs = b.generate(chats(), GenParams(max_new_tokens=6),
                      on_batch=lambda idx, gens: heard.append((list(idx), [g.text for g in gens])))
    assert [len(idx) for idx, _ in heard] == [4, 4]  # 8 cases, at most 5 a batch: 4 + 4
    assert sorted(i for idx, _ in heard for i in idx) == list(range(len(REVIEWS)))
    for idx, texts in heard:
        assert texts == [outs[i].text for i in idx]


def test_an_exception_in_on_batch_stops_the_rest(tiny_model_dir: Path, tmp_path: Path) -> None:
    b = HFBackend(str(tiny_model_dir), make_settings(tmp_path), device="cpu", batch_size=3)
    calls: list[int] = []

    def stop(idx: list[int], _gens: object) -> None:
        calls.append(len(idx))
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        b.generate(chats(), GenParams(max_new_tokens=4), on_batch=stop)
    assert calls == [3]
