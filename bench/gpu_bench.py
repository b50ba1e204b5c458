"""tunebot's batched inference and LoRA training step vs the plain HF / peft loop, on a GPU.

    bash bench/gpu.sh [--device cuda|cpu] [--quick] [--out PATH]     (the entry point)
    python3 bench/gpu_bench.py ...                                      (what it runs)

Self-contained for a lent GPU machine (issue #20, deliverable 6): no weights travel, no
network, no celery / trl / pydantic there. It imports only torch, transformers, peft and the
three tunebot modules the measured code lives in (workers/backends/hf_generate.py,
workers/training/collate.py, workers/training/loss.py), loaded without their packages'
__init__ (which pull in the bot's settings).

Models: SmolLM2-135M's architecture and a ~1B config of the same family, built from the config
with random weights, in bf16 on both sides (fp32 with --device cpu, where bf16 matmuls are slow
on most CPUs). Inputs are synthetic token ids shaped like a prompt test: a shared prefix
(a system prompt) and per-case suffixes of varied length, greedy, a fixed number of new
tokens (EOS switched off on both sides, so both generate the same count).

- inference: tunebot = the rows sorted by length, in batches, the shared prefix's KV computed
  once (`generate_batch` with `build_prefix`); baseline = `model.generate` on left-padded
  batches of the same size in the given order (the plain HF loop). tokens/s = new tokens / s;
  MFU = 2·params·(prompt + new tokens) / s / the device's bf16 peak.
- training: LoRA r=8 on q_proj/v_proj, AdamW, completion-only labels; tunebot =
  `supervised_loss` (logits only at supervised positions, shared prefix once, packing) +
  backward + step; baseline = the plain peft loop (`model(input_ids, attention_mask,
  labels).loss.backward()` on right-padded rows). MFU with 4·params·real tokens per step
  (forward 2N, backward through the frozen weights 2N; LoRA's own FLOPs left out).
Peak GPU memory per side (torch.cuda.max_memory_allocated, reset between sides). Results go to
bench/results-gpu.json; everything stops adding sizes past --budget seconds (default 420).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results-gpu.json"
# Peak dense bf16 tensor FLOP/s by device-name fragment (vendors' datasheets, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "4090": 165e12}
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rope_theta": 100000.0,
                "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
# ~1B: SmolLM2's family shape at Llama-3.2-1B's width and depth (1.0B parameters).
ONE_B = {**SMOLLM2_135M, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
         "num_attention_heads": 32, "num_key_value_heads": 8}


def _load_tunebot_modules() -> tuple[Any, Any, Any]:
    """hf_generate, collate and loss, without workers.training's / workers.backends' __init__."""
    for pkg in ("workers", "workers.backends", "workers.training"):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = [str(ROOT / pkg.replace(".", "/"))]
            sys.modules[pkg] = mod
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    out = []
    for name in ("workers.backends.hf_generate", "workers.training.collate",
                 "workers.training.loss"):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                name, ROOT / (name.replace(".", "/") + ".py"))
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        out.append(sys.modules[name])
    return out[0], out[1], out[2]


def build_model(shape: dict[str, Any], layers: int | None, device: str, dtype: Any) -> Any:
    """A Llama model from the config, random weights, on the device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**shape, **({"num_hidden_layers": layers} if layers else {})},
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def n_params(model: Any) -> int:
    """Parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def synthetic_cases(n: int, vocab: int, prefix: int, seed: int = 1) -> list[list[int]]:
    """n prompts: a shared prefix, then 8..48 random tokens each (ids 3.. so no pad/EOS)."""
    import random

    rng = random.Random(seed)
    head = [rng.randrange(3, vocab) for _ in range(prefix)]
    return [head + [rng.randrange(3, vocab) for _ in range(rng.randrange(8, 49))]
            for _ in range(n)]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def tunebot_generate(gen: Any, model: Any, cases: list[list[int]], batch: int,
                     max_new: int) -> list[list[int]]:
    """HFBackend.generate's core: length-sorted even batches, the shared prefix once."""
    p = gen.common_prefix_len(cases)
    prefix = gen.build_prefix(model, cases[0][:p]) if p >= 4 else None
    p = p if prefix is not None else 0
    order = sorted(range(len(cases)), key=lambda i: len(cases[i]))
    n_batches = -(-len(order) // batch)
    size = -(-len(order) // n_batches)
    out: list[list[int]] = [[] for _ in cases]
    for s in range(0, len(order), size):
        chunk = order[s:s + size]
        got = gen.generate_batch(model, [cases[i][p:] for i in chunk], prefix=prefix, pad_id=0,
                                 eos_ids=set(), max_new_tokens=max_new, prefill_tokens=4096)
        for i, g in zip(chunk, got, strict=True):
            out[i] = g
    return out


def hf_generate(model: Any, cases: list[list[int]], batch: int, max_new: int,
                device: str) -> list[list[int]]:
    """The plain loop: left-padded batches in the given order, model.generate, greedy."""
    import torch

    out: list[list[int]] = []
    with torch.inference_mode():
        for s in range(0, len(cases), batch):
            rows = cases[s:s + batch]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows],
                                device=device)
            g = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                               min_new_tokens=max_new, do_sample=False, pad_token_id=0,
                               eos_token_id=None)
            out.extend(g[:, width:].tolist())
    return out


def timed(fn: Any, device: str) -> tuple[Any, float]:
    """(result, seconds), the device synchronised on both ends."""
    _sync(device)
    t0 = time.perf_counter()
    r = fn()
    _sync(device)
    return r, time.perf_counter() - t0


def bench_inference(gen: Any, model: Any, *, device: str, cases: list[list[int]], batch: int,
                    max_new: int, rounds: int, peak: float | None) -> dict[str, Any]:
    """Both sides, rounds interleaved (after one warm-up each)."""
    n = n_params(model)
    prompt_tokens = sum(len(c) for c in cases)
    new_tokens = len(cases) * max_new
    sides = {
        "tunebot": lambda: tunebot_generate(gen, model, cases, batch, max_new),
        "hf_generate": lambda: hf_generate(model, cases, batch, max_new, device),
    }
    for fn in sides.values():
        fn()  # warm-up: kernels, allocator, autotuning
    times: dict[str, list[float]] = {k: [] for k in sides}
    outs: dict[str, list[list[int]]] = {}
    peaks: dict[str, int | None] = {}
    for _ in range(rounds):
        for name, fn in sides.items():
            _reset_peak(device)
            outs[name], s = timed(fn, device)
            peaks[name] = _peak(device)
            times[name].append(s)
    result: dict[str, Any] = {"cases": len(cases), "batch": batch, "max_new_tokens": max_new,
                              "prompt_tokens": prompt_tokens,
                              "shared_prefix": gen.common_prefix_len(cases), "sides": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        flops = 2 * n * (prompt_tokens + new_tokens) / med
        result["sides"][name] = {
            "seconds": _spread(ts), "new_tokens_per_s": round(new_tokens / med, 1),
            "achieved_tflops": round(flops / 1e12, 3),
            "mfu": round(flops / peak, 4) if peak else None, "peak_memory_bytes": peaks[name]}
    same = sum(a == b for a, b in zip(outs["tunebot"], outs["hf_generate"], strict=True))
    result["identical_outputs"] = same
    result["ratio"] = _spread([b / t for t, b in zip(times["tunebot"], times["hf_generate"],
                                                      strict=True)])
    return result


def _train_items(collate: Any, cases: list[list[int]], answer: int) -> list[Any]:
    """Completion-only examples: the last `answer` tokens of each case carry labels."""
    items = []
    for c in cases:
        labels = [collate.IGNORE] * (len(c) - answer) + c[-answer:]
        items.append(collate.Encoded(input_ids=list(c), labels=labels))
    return items


def _lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                     target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, cfg)


def bench_training(collate: Any, loss: Any, base: Any, *, device: str, cases: list[list[int]],
                   batch: int, steps: int, rounds: int, peak: float | None) -> dict[str, Any]:
    """tunebot's supervised_loss step vs the plain peft loop, rounds interleaved."""
    import torch

    model = _lora(base)
    model.train()
    items = _train_items(collate, cases, answer=4)
    batches = [items[s:s + batch] for s in range(0, len(items), batch)][:steps] or [items[:batch]]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def tunebot_step(rows: list[Any]) -> float:
        b = collate.collate(rows, 0).to(device)
        out = loss.supervised_loss(model, b)
        (out.loss_sum / out.n_tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss_sum.detach()) / out.n_tokens

    def plain_step(rows: list[Any]) -> float:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.tensor([r.input_ids + [0] * (width - len(r.input_ids)) for r in rows],
                           device=device)
        mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids))
                             for r in rows], device=device)
        labels = torch.tensor([r.labels + [collate.IGNORE] * (width - len(r.labels))
                               for r in rows], device=device)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    sides = {"tunebot": tunebot_step, "peft_loop": plain_step}
    for fn in sides.values():
        fn(batches[0])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    losses: dict[str, float] = {}
    peaks: dict[str, int | None] = {}
    for _ in range(rounds):
        for name, fn in sides.items():
            _reset_peak(device)
            got, s = timed(lambda fn=fn: [fn(b) for b in batches], device)  # type: ignore[misc]
            peaks[name] = _peak(device)
            losses[name] = round(statistics.mean(got), 4)
            times[name].append(s)
    n = n_params(base)
    real = sum(len(r.input_ids) for b in batches for r in b)
    examples = sum(len(b) for b in batches)
    result: dict[str, Any] = {"steps": len(batches), "batch": batch, "examples": examples,
                              "real_tokens": real, "lora": "r=8 q_proj,v_proj", "sides": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        flops = 4 * n * real / med
        result["sides"][name] = {
            "seconds": _spread(ts), "examples_per_s": round(examples / med, 2),
            "tokens_per_s": round(real / med, 1), "achieved_tflops": round(flops / 1e12, 3),
            "mfu": round(flops / peak, 4) if peak else None, "peak_memory_bytes": peaks[name],
            "mean_loss_last_round": losses[name]}
    result["ratio"] = _spread([b / t for t, b in zip(times["tunebot"], times["peft_loop"],
                                                      strict=True)])
    return result


def _spread(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4),
            "max": round(max(xs), 4)}


def device_info(device: str) -> dict[str, Any]:
    """The card (or CPU), its bf16 peak where known, library versions."""
    import torch
    import transformers

    info: dict[str, Any] = {"device": device, "torch": torch.__version__,
                            "transformers": transformers.__version__,
                            "python": platform.python_version()}
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        info["gpu"] = name
        info["peak_bf16_flops"] = next((v for k, v in PEAK_BF16.items() if k in name), None)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["peak_bf16_flops"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["commit"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true",
                    help="a 2-layer 135M-shaped model with a small vocabulary only, few cases "
                         "and steps (the CPU test)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds after which no further model size is started")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --quick)")
    started = time.monotonic()
    gen, collate, loss = _load_tunebot_modules()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    info = device_info(args.device)
    peak = info["peak_bf16_flops"]
    if args.device == "cpu":
        # One thread: on a shared 2-core machine, OpenMP's spin-waiting threads multiply the
        # time of these small ops many times over (seen here: 10 s to build a 2-layer model).
        torch.set_num_threads(1)
    if args.quick:
        # SmolLM2-135M's layer shape, 2 layers and a 4096-token vocabulary: the code path, fast.
        sizes = [("smollm2-135m-shape-2layers", {**SMOLLM2_135M, "vocab_size": 4096}, 2)]
        n_cases, batch, max_new, rounds, t_cases, t_batch, steps = 8, 4, 4, 1, 8, 4, 2
    else:
        sizes = [("smollm2-135m", SMOLLM2_135M, None), ("llama-1b", ONE_B, None)]
        n_cases, batch, max_new, rounds, t_cases, t_batch, steps = 512, 64, 16, 3, 256, 16, 16
    result: dict[str, Any] = {**info, "dtype": str(dtype).removeprefix("torch."),
                              "quick": args.quick, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime()),
                              "load_average": [round(x, 2) for x in os.getloadavg()],
                              "models": {}}
    for name, shape, layers in sizes:
        if time.monotonic() - started > args.budget:
            result["models"][name] = {"skipped": f"past the {args.budget:.0f} s budget"}
            continue
        model = build_model(shape, layers, args.device, dtype)
        cases = synthetic_cases(n_cases, shape["vocab_size"], prefix=32)
        entry: dict[str, Any] = {"params": n_params(model), "layers": layers
                                 or shape["num_hidden_layers"]}
        entry["inference"] = bench_inference(gen, model, device=args.device, cases=cases,
                                             batch=batch, max_new=max_new, rounds=rounds,
                                             peak=peak)
        print(f"{name}: inference tunebot / hf_generate speedup "
              f"{entry['inference']['ratio']['median']}×, identical "
              f"{entry['inference']['identical_outputs']}/{n_cases}", flush=True)
        entry["training"] = bench_training(collate, loss, model, device=args.device,
                                           cases=cases[:t_cases], batch=t_batch, steps=steps,
                                           rounds=rounds, peak=peak)
        print(f"{name}: training step tunebot / peft loop speedup "
              f"{entry['training']['ratio']['median']}×", flush=True)
        result["models"][name] = entry
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
