"""Prompt-test inference on the bundled SmolLM2: tunebot's backend vs one-at-a-time generate.

    python -m bench.bench_inference [--quick] [--device cpu|cuda] [--out PATH]

Every case of the `sentiment` prompt's eval set, greedy, side by side in one run (repeats
interleaved, so machine noise hits all alike): plain `model.generate` one case at a time with
PyTorch's own kernels (the baseline); tunebot with length-bucketed batches only; tunebot as a
prompt test runs it (the default: batches plus the shared-prefix KV cache, every case in one
call, progress told per batch); and that default with PyTorch's own linear kernels instead of
oneDNN (workers/backends/cpu_linear.py), so the kernel's share of the speedup shows apart from
the batching's. Also cold vs warm time-to-first-result.

Every variant runs with the same torch CPU threads (torch's default, all cores, unless
--threads). Other processes on the machine slow the one-at-a-time loop's many small
multi-threaded ops most, so the load average at start and end is recorded with the timings,
and each variant's process CPU seconds too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunebot.catalog.templates import render_messages
from tunebot.settings import Settings
from workers.backends import cpu_linear
from workers.backends.base import Generation, GenParams, Message
from workers.backends.gguf_cache import converted_dir
from workers.backends.hf import HFBackend
from workers.backends.hf_generate import common_prefix_len
from workers.backends.warm import WarmCache
from workers.scoring.choice import predict_choice

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results-inference.json"
# A few-shot variant (`--few-shot`, and the fallback when prompts/sentiment.yaml is missing):
# the shared prefix is most of each prompt, the case where prefix reuse pays most.
FEW_SHOT = {
    "messages": [
        {"role": "system", "content": (
            "You are a sentiment classifier for customer reviews. Read the review and answer "
            "with exactly one word: positive or negative. Do not explain.")},
        {"role": "user", "content": "The battery died after two days and support never replied."},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "Fast delivery and it works perfectly, very happy."},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Cheap plastic, it cracked the first time I used it."},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "Lovely staff and the room was spotless."},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "{{ text }}"},
    ],
    "params": {"max_new_tokens": 4},
}


def production_version(path: Path) -> dict[str, Any] | None:
    """The production (else latest) version's content from a catalog YAML file."""
    import yaml

    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    versions = data["versions"]
    number = (data.get("labels") or {}).get("production", len(versions))
    return versions[number - 1]


def load_cases(limit: int | None, few_shot: bool = False) -> tuple[
        list[list[Message]], list[str], dict[str, Any], str]:
    """Rendered prompts, expected labels, the version content, and where the prompt came from."""
    content = None if few_shot else production_version(ROOT / "prompts" / "sentiment.yaml")
    source = "prompts/sentiment.yaml (production)"
    if content is None:
        content, source = FEW_SHOT, "built-in few-shot sentiment prompt"
    rows = [json.loads(line) for line in
            (ROOT / "prompts" / "datasets" / "sentiment-eval.jsonl").read_text().splitlines()
            if line.strip()]
    rows = rows[:limit] if limit else rows
    prompts = [render_messages(content, {k: v for k, v in r.items()
                                         if k not in ("expected", "assert")}) for r in rows]
    return prompts, [str(r["expected"]) for r in rows], content, source


@contextmanager
def pytorch_kernels(backend: HFBackend) -> Iterator[None]:
    """The backend's model on PyTorch's own linear kernels for a while (as a plain script has)."""
    cpu_linear.restore(backend.model)
    try:
        yield
    finally:
        if backend.onednn_layers:
            cpu_linear.use_onednn(backend.model)


def one_at_a_time(backend: HFBackend, prompts: list[list[Message]], n: int) -> list[str]:
    """The baseline: what a plain script does, model.generate per case."""
    tok, model = backend.tokenizer, backend.model
    texts = []
    with torch.inference_mode(), pytorch_kernels(backend):
        for p in prompts:
            enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True).to(model.device)
            out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                                 pad_token_id=backend.pad_id)
            texts.append(tok.decode(out[0, enc["input_ids"].shape[1]:],
                                    skip_special_tokens=True))
    return texts


def accuracy(texts: list[str], expected: list[str], choices: list[str]) -> float:
    """Share of answers whose predicted label (the prompt-test choice scorer's) is expected."""
    choices = choices or sorted(set(expected))
    hits = sum(predict_choice(t, choices) == e for t, e in zip(texts, expected, strict=True))
    return hits / len(texts)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


LAST_GENERATIONS: list[Generation] = []  # the latest as_prompt_test call's, for the FLOP count


def as_prompt_test(backend: HFBackend, prompts: list[list[Message]],
                   params: GenParams) -> list[str]:
    """Every case in one call, each batch handed back as it finishes (evaluate.evaluate's feed)."""
    seen: list[int] = []

    def on_batch(idx: list[int], gens: list[Generation]) -> None:
        seen.extend(idx)

    gens = backend.generate(prompts, params, on_batch=on_batch)
    LAST_GENERATIONS[:] = gens
    assert sorted(seen) == list(range(len(prompts)))
    return [g.text for g in gens]


def useful_flops(model: Any, gens: list[Generation]) -> float:
    """Model FLOPs a prompt test needs: 2 × the decoder's weights × tokens run through it
    (every prompt token, the shared prefix once, and each new token but the last), plus
    2 × lm_head's weights per new token (logits only where a token is picked). Padding and
    attention's own score FLOPs (small at these lengths) are not counted."""
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - emb - (
        0 if model.get_output_embeddings().weight is model.get_input_embeddings().weight
        else head)
    prefix = int(gens[0].extra.get("prefix_tokens", 0)) if gens else 0
    run = prefix + sum(g.tokens_in - prefix + max(g.tokens_out - 1, 0) for g in gens)
    new = sum(g.tokens_out for g in gens)
    return float(2 * body * run + 2 * head * new)


def on_pytorch_linear(backend: HFBackend, prompts: list[list[Message]],
                    params: GenParams) -> list[str]:
    """as_prompt_test on PyTorch's own linear kernels."""
    with pytorch_kernels(backend):
        return as_prompt_test(backend, prompts, params)


def cold_warm(settings: Settings, prompts: list[list[Message]], params: GenParams,
              device: str, convert: bool) -> dict[str, float]:
    """Time-to-first-result: converting the GGUF, loading the cached conversion, warm."""
    first = prompts[:1]
    out: dict[str, float] = {}
    if convert:
        with tempfile.TemporaryDirectory() as tmp:
            _, conv_s = timed(lambda: converted_dir(Path(tmp)))
        out["convert_gguf_s"] = round(conv_s, 2)
    converted_dir(settings.models_dir)  # make sure the cache exists before timing a cache load
    cache = WarmCache()
    backend, load_s = timed(lambda: cache.get("smollm2", settings, device=device))
    _, first_s = timed(lambda: backend.generate(first, params))
    _, warm_get_s = timed(lambda: cache.get("smollm2", settings, device=device))
    _, warm_first_s = timed(lambda: backend.generate(first, params))
    out.update({
        "cache_load_s": round(load_s, 2), "warm_get_s": round(warm_get_s, 4),
        "ttfr_cold_cache_s": round(load_s + first_s, 2),
        "ttfr_warm_s": round(warm_get_s + warm_first_s, 3),
    })
    if convert:
        out["ttfr_cold_convert_s"] = round(out["convert_gguf_s"] + load_s + first_s, 2)
    return out


def summary(times: list[float], cpu: list[float], n: int) -> dict[str, float]:
    """min/median/max seconds, cases per second at the median, median process CPU seconds."""
    med = statistics.median(times)
    return {"min_s": round(min(times), 2), "median_s": round(med, 2),
            "max_s": round(max(times), 2), "seconds_per_repeat": [round(t, 3) for t in times],
            "cases_per_s": round(n / med, 2),
            "cpu_median_s": round(statistics.median(cpu), 2)}


def run(*, quick: bool, device: str, batch_size: int | None, repeats: int, settings: Settings,
        few_shot: bool = False) -> dict[str, Any]:
    """Run the benchmark and return its results."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    prompts, expected, content, source = load_cases(32 if quick else None, few_shot)
    max_new = int((content.get("params") or {}).get("max_new_tokens") or 16)
    params = GenParams(max_new_tokens=max_new)
    coldwarm = cold_warm(settings, prompts, params, device, convert=not quick)

    cache = WarmCache()
    prefixed = cache.get("smollm2", settings, device=device)
    if batch_size:
        prefixed.batch_size = batch_size
    plain = HFBackend.from_loaded(prefixed.model, prefixed.tokenizer, name="smollm2",
                                  batch_size=prefixed.batch_size, prefix_cache=False,
                                  prefill_tokens=prefixed.prefill_tokens)
    variants: dict[str, Callable[[], list[str]]] = {
        "one_at_a_time": lambda: one_at_a_time(prefixed, prompts, max_new),
        "batched": lambda: [g.text for g in plain.generate(prompts, params)],
        "batched_prefix": lambda: as_prompt_test(prefixed, prompts, params),
        "batched_prefix_pytorch_linear": lambda: on_pytorch_linear(prefixed, prompts, params),
    }
    # TUNEBOT_CPU_PRECISION=bf16 (opt-in), on the same weights, where the CPU has native bf16;
    # its answers are compared with the fp32 prompt test's below.
    bf16 = HFBackend.from_loaded(prefixed.model, prefixed.tokenizer, name="smollm2",
                                 batch_size=prefixed.batch_size,
                                 prefill_tokens=prefixed.prefill_tokens, precision="bf16")
    if bf16.bf16:
        variants["batched_prefix_bf16"] = lambda: as_prompt_test(bf16, prompts, params)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    texts: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            c0 = time.process_time()
            texts[name], s = timed(fn)
            cpu[name].append(time.process_time() - c0)
            runs[name].append(s)

    n, base = len(prompts), texts["one_at_a_time"]
    choices = list((content.get("output") or {}).get("choices") or [])
    result: dict[str, Any] = {
        "device": str(prefixed.model.device), "torch_threads": torch.get_num_threads(),
        "cases": n, "max_new_tokens": max_new, "batch_size": prefixed.batch_size,
        "prefill_tokens": prefixed.prefill_tokens,
        "linear_kernel": "onednn" if prefixed.onednn_layers else "pytorch",
        "onednn_layers": prefixed.onednn_layers,
        "repeats": repeats, "prompt": source,
        "load_average_start": load_start,
        "prompt_tokens_mean": round(statistics.mean(len(prefixed.encode(p)) for p in prompts), 1),
        "shared_prefix_tokens": common_prefix_len([prefixed.encode(p) for p in prompts]),
        "cold_warm": coldwarm, "variants": {},
    }
    base_med = statistics.median(runs["one_at_a_time"])
    for name, times in runs.items():
        result["variants"][name] = {
            **summary(times, cpu[name], n),
            "speedup_vs_one_at_a_time": round(base_med / statistics.median(times), 2),
            "identical_to_one_at_a_time": sum(a == b for a, b in zip(texts[name], base,
                                                                      strict=True)),
            "accuracy": round(accuracy(texts[name], expected, choices), 4),
        }
    # Achieved GFLOP/s of the prompt-test path and its fraction of the machine's fp32 peak.
    from bench.common import peak_fp32_flops

    as_prompt_test(prefixed, prompts, params)  # token counts of this exact run
    flops = useful_flops(prefixed.model, LAST_GENERATIONS)
    peak = peak_fp32_flops()
    med = statistics.median(runs["batched_prefix"])
    result["compute"] = {
        "useful_gflop": round(flops / 1e9, 2), "gflops_batched_prefix": round(flops / med / 1e9, 1),
        "peak_fp32": peak, "fraction_of_peak": round(flops / med / peak["flops"], 3)
        if peak["flops"] else None,
        "precision": "fp32 (the default; bf16 is measured apart as batched_prefix_bf16 where "
                     "the CPU has native bf16)"}
    result["bf16"] = {"note": bf16.precision_note, "rows_checked": bf16.bf16_checked}
    if "batched_prefix_bf16" in runs and peak["flops"]:
        # avx512_bf16's dot product does twice fp32's multiply-adds per lane; AMX far more, so
        # against AMX this is an upper bound of the fraction.
        med16 = statistics.median(runs["batched_prefix_bf16"])
        result["bf16"]["gflops"] = round(flops / med16 / 1e9, 1)
        result["bf16"]["fraction_of_bf16_peak"] = round(flops / med16 / (2 * peak["flops"]), 3)
    if "batched_prefix_bf16" in texts:
        result["bf16"]["identical_to_fp32_prompt_test"] = sum(
            a == b for a, b in zip(texts["batched_prefix_bf16"], texts["batched_prefix"],
                                   strict=True))
    result["differing_examples"] = [
        {"one_at_a_time": a, "batched_prefix": b}
        for a, b in zip(base, texts["batched_prefix"], strict=True) if a != b][:5]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def print_table(r: dict[str, Any]) -> None:
    """A readable table of the results."""
    print(f"SmolLM2-135M on {r['device']} ({r['torch_threads']} threads) · {r['cases']} cases · "
          f"max_new_tokens={r['max_new_tokens']} · batch {r['batch_size']} · "
          f"prompt {r['prompt_tokens_mean']} tokens, {r['shared_prefix_tokens']} shared · "
          f"load {r['load_average_start'][0]} → {r['load_average_end'][0]}")
    print(f"{'variant':<31}{'min s':>8}{'median s':>10}{'max s':>8}{'cpu s':>8}{'cases/s':>9}"
          f"{'speedup':>9}{'identical':>11}{'accuracy':>10}")
    for name, v in r["variants"].items():
        print(f"{name:<31}{v['min_s']:>8}{v['median_s']:>10}{v['max_s']:>8}"
              f"{v['cpu_median_s']:>8}{v['cases_per_s']:>9}{v['speedup_vs_one_at_a_time']:>8}×"
              f"{v['identical_to_one_at_a_time']:>7}/{r['cases']:<3}{v['accuracy']:>10.1%}")
    print("time to first result: " + ", ".join(f"{k}={v}" for k, v in r["cold_warm"].items()))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 cases, no GGUF conversion timing")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--few-shot", action="store_true",
                    help="use the built-in few-shot prompt instead of sentiment's production one")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(quick=args.quick, device=args.device, batch_size=args.batch_size,
                 repeats=args.repeats or (1 if args.quick else 3), settings=Settings(),
                 few_shot=args.few_shot)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
