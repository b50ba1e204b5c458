"""Prompt-test inference against llama.cpp's `llama-server` (continuous batching), side by side.

    python -m bench.bench_llamacpp [--quick] [--rounds N] [--threads N] [--out PATH]

Needs `make bench-peers` (bench/peers.sh): the server and the f32 GGUF under var/peers/.

The same cases as bench_inference (the `sentiment` prompt's eval set, its production version),
rendered by the same chat template into the same token ids (tunebot's `HFBackend.encode`), sent
to the server as token ids so both sides read identical input; greedy (temperature 0,
top_k 1), the same max new tokens, all cases at once (as a prompt test hands tunebot every
case in one call), `cache_prompt` on. The peer gets every configuration the sweep names:

- models: the bundled Q4_1 GGUF (what tunebot dequantises its weights from), an f32 GGUF
  converted from the same fp32 weights tunebot runs (tunebot computes in fp32 by default) and,
  where the CPU has native bf16, a bf16 GGUF of them (the peer of tunebot's
  TUNEBOT_CPU_PRECISION=bf16, which is then timed as a side of its own, `tunebot-bf16`);
- slots (`-np`) and logical / physical batch sizes (`-b` / `-ub`);
- the same threads as tunebot's torch (`-t` and `-tb`).

Each configuration is a fresh server, warmed with one short unrelated request (so the eval
prompts are not cached before the clock starts). Rounds interleave tunebot and every
configuration, so machine noise falls on all alike. Per configuration: median / min / max wall
seconds from the first request sent to the last answer, accuracy with the prompt test's choice
scorer, and how many outputs equal tunebot's. The headline is llama.cpp's best configuration
*at equal accuracy* (not more than 1 point below tunebot's: a peer that is more accurate
counts too) divided by tunebot's time, per round
(llama.cpp's best median config's time in round i / tunebot's time in round i), min / median /
max over rounds. Every precision served is eligible for that best. `tunebot-bf16` gets the same
ratio against the same best (`ratio_bf16_vs_best`), recorded beside the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import free_port, host, load_average, spread, wait_port

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "var" / "peers"
DEFAULT_OUT = Path(__file__).resolve().parent / "results-llamacpp.json"
# (model, slots, batch, ubatch). Slot counts from issue #20's table (8 / 16 / 40); llama.cpp's
# default batches (-b 2048 -ub 512) and a smaller physical batch, the latter on f32 only (the
# precision tunebot computes in; Q4_1 was slower at every slot count in the table).
SWEEP_SLOTS = (8, 16, 40)
SWEEP_BATCHES = ((2048, 512), (512, 128))
QUICK_SWEEP = (("q4_1", 16, 2048, 512), ("f32", 16, 2048, 512), ("f32", 8, 512, 128))
# With native bf16: the bf16 GGUF at the f32 sweep's best shapes in the last full run.
BF16_SWEEP = (("bf16", 16, 2048, 512), ("bf16", 16, 512, 128), ("bf16", 8, 512, 128))
MODELS = ("q4_1", "f32", "bf16")
CTX_PER_SLOT = 256  # prompts here are ~55 tokens, answers <= 16


def model_path(name: str) -> Path:
    """The GGUF for a sweep model name."""
    if name in ("f32", "bf16"):
        return PEERS / f"smollm2-{name}.gguf"
    from workers.backends.gguf_cache import bundled_gguf

    return bundled_gguf()


def server_binary() -> Path:
    """var/peers/llama-server, or a clear error naming the make target that builds it."""
    binary = PEERS / "llama-server"
    if not binary.is_file() or not (PEERS / "smollm2-f32.gguf").is_file():
        raise SystemExit("llama.cpp peer not built: run `make bench-peers` first "
                         f"(expects {binary} and {PEERS / 'smollm2-f32.gguf'})")
    return binary


def server_version() -> str:
    """`llama-server --version`'s line, e.g. "version: 1 (abc123)"."""
    out = subprocess.run([str(server_binary()), "--version"], capture_output=True, text=True,
                         timeout=30)
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("version")]
    return lines[0] if lines else "unknown"


@contextmanager
def llama_server(model: str, slots: int, batch: int, ubatch: int,
                 threads: int) -> Iterator[str]:
    """A running llama-server on a free port; yields its base URL, stops it afterwards."""
    port = free_port()
    log = open(PEERS / f"server-{model}-{slots}-{batch}-{ubatch}.log", "w")  # noqa: SIM115
    cmd = [str(server_binary()), "-m", str(model_path(model)), "--host", "127.0.0.1",
           "--port", str(port), "-np", str(slots), "-c", str(slots * CTX_PER_SLOT),
           "-b", str(batch), "-ub", str(ubatch), "-t", str(threads), "-tb", str(threads),
           "--cont-batching", "--no-webui", "--temp", "0"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=120, proc=proc)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode} (see var/peers/)")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama-server at {url} not healthy after {timeout:.0f} s")


async def _complete_all(url: str, ids: list[list[int]], max_new: int) -> list[str]:
    import httpx

    limits = httpx.Limits(max_connections=len(ids), max_keepalive_connections=len(ids))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(prompt: list[int]) -> str:
            r = await client.post(f"{url}/completion", json={
                "prompt": prompt, "n_predict": max_new, "temperature": 0, "top_k": 1,
                "cache_prompt": True, "stream": False})
            r.raise_for_status()
            return str(r.json()["content"])

        return list(await asyncio.gather(*(one(p) for p in ids)))


def complete_all(url: str, ids: list[list[int]], max_new: int) -> tuple[list[str], float]:
    """Every prompt sent at once; (texts in order, seconds from first send to last answer)."""
    t0 = time.perf_counter()
    texts = asyncio.run(_complete_all(url, ids, max_new))
    return texts, time.perf_counter() - t0


def parse_configs(text: str) -> list[tuple[str, int, int, int]]:
    """`--configs MODEL:SLOTS:BATCH:UBATCH,...` (MODEL q4_1, f32 or bf16) into sweep tuples."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4 or parts[0] not in MODELS:
            raise SystemExit(f"--configs: {item!r} is not MODEL:SLOTS:BATCH:UBATCH with MODEL "
                             "q4_1, f32 or bf16")
        try:
            slots, batch, ubatch = (int(x) for x in parts[1:])
        except ValueError:
            raise SystemExit(f"--configs: {item!r}: slots, batch and ubatch must be integers") \
                from None
        if not (1 <= slots <= 256 and 1 <= ubatch <= batch <= 8192):
            raise SystemExit(f"--configs: {item!r}: slots 1-256, 1 <= ubatch <= batch <= 8192")
        out.append((parts[0], slots, batch, ubatch))
    return out


def sweep(quick: bool, configs: str | None = None,
          bf16: bool = False) -> list[tuple[str, int, int, int]]:
    """The configurations to serve (--configs, else the quick or the full sweep, with the bf16
    GGUF's where tunebot has a bf16 path here and that GGUF is built)."""
    if configs:
        return parse_configs(configs)
    if quick:
        base = list(QUICK_SWEEP)
    else:
        base = [("q4_1", s, *SWEEP_BATCHES[0]) for s in SWEEP_SLOTS] + [
            ("f32", s, b, ub) for s in SWEEP_SLOTS for b, ub in SWEEP_BATCHES]
    if bf16 and model_path("bf16").is_file():
        base += list(BF16_SWEEP[:1] if quick else BF16_SWEEP)
    return base


def config_name(cfg: tuple[str, int, int, int]) -> str:
    m, s, b, ub = cfg
    return f"{m} np={s} b={b} ub={ub}"


def run(*, quick: bool, rounds: int, threads: int, limit: int | None,
        configs: str | None = None) -> dict[str, Any]:
    """Run tunebot and every llama.cpp configuration `rounds` times, interleaved."""
    import torch

    from bench.bench_inference import accuracy, as_prompt_test, load_cases
    from tunebot.settings import Settings
    from workers.backends.base import GenParams
    from workers.backends.warm import WarmCache

    server_binary()
    torch.set_num_threads(threads)
    load_start = load_average()
    prompts, expected, content, source = load_cases(limit)
    max_new = int((content.get("params") or {}).get("max_new_tokens") or 16)
    choices = list((content.get("output") or {}).get("choices") or [])
    params = GenParams(max_new_tokens=max_new)
    backend = WarmCache().get("smollm2", Settings(), device="cpu")
    ids = [backend.encode(p) for p in prompts]
    warm_ids = list(backend.tokenizer("Hello there")["input_ids"])
    as_prompt_test(backend, prompts[:4], params)  # warm (kernels, allocator), as a warm worker
    from workers.backends.hf import HFBackend

    bf16 = HFBackend.from_loaded(backend.model, backend.tokenizer, name="smollm2",
                                 batch_size=backend.batch_size,
                                 prefill_tokens=backend.prefill_tokens, precision="bf16")
    sides = {"tunebot": backend} | ({"tunebot-bf16": bf16} if bf16.bf16 else {})
    if bf16.bf16:
        as_prompt_test(bf16, prompts[:4], params)

    served = sweep(quick, configs, bf16=bf16.bf16)
    times: dict[str, list[float]] = {side: [] for side in sides}
    times.update({config_name(c): [] for c in served})
    texts: dict[str, list[str]] = {}
    for r in range(rounds):
        for side, be in sides.items():
            texts[side], s = _timed_tunebot(be, prompts, params)
            times[side].append(s)
            print(f"round {r + 1}/{rounds} {side} {s:6.2f} s", flush=True)
        time.sleep(0.5)  # let torch's worker threads go idle before the server starts
        for cfg in served:
            name = config_name(cfg)
            with llama_server(*cfg, threads=threads) as url:
                complete_all(url, [warm_ids], 1)  # warm: a short unrelated prompt
                texts[name], s = complete_all(url, ids, max_new)
            times[name].append(s)
            print(f"round {r + 1}/{rounds} {name:28s} {s:6.2f} s", flush=True)

    result: dict[str, Any] = {
        **host(), "cases": len(ids), "max_new_tokens": max_new, "threads": threads,
        "rounds": rounds,
        "prompt": source, "prompt_tokens_mean": round(statistics.mean(len(x) for x in ids), 1),
        "llama_server": server_version(), "peer_build": _peer_build(),
        "ctx_per_slot": CTX_PER_SLOT, "load_average_start": load_start,
        **summarise(times, texts, lambda t: accuracy(t, expected, choices)),
    }
    if "tunebot-bf16" in sides:
        result["tunebot_bf16_note"] = bf16.precision_note
    result["load_average_end"] = load_average()
    return result


def summarise(times: dict[str, list[float]], texts: dict[str, list[str]],
              score: Any) -> dict[str, Any]:
    """Per side: seconds (min/median/max and per round), accuracy, outputs equal to tunebot's;
    llama.cpp's best configuration at equal accuracy (see _select) and the per-round ratio of
    its time to tunebot's; the same against the fastest at any accuracy."""
    tb = texts["tunebot"]
    tb_acc = score(tb)
    out: dict[str, Any] = {}
    for name, ts in times.items():
        acc = score(texts[name])
        out[name] = {
            "seconds": spread(ts, 2), "seconds_per_round": [round(x, 3) for x in ts],
            "cases_per_s": round(len(tb) / statistics.median(ts), 2),
            "accuracy": round(acc, 4),
            "identical_to_tunebot": sum(a == b for a, b in zip(texts[name], tb, strict=True)),
            "equal_accuracy": abs(acc - tb_acc) <= 0.01 + 1e-9,
        }
    peers = [n for n in out if not n.startswith("tunebot")]
    best_any = min(peers, key=lambda n: out[n]["seconds"]["median"])
    result: dict[str, Any] = {"tunebot_accuracy": round(tb_acc, 4), "configs": out,
                              "best_any_accuracy": best_any}
    result["ratio_vs_best_any_accuracy"] = spread(
        [b / t for b, t in zip(times[best_any], times["tunebot"], strict=True)], 2)
    return _select(result, times)


def _select(result: dict[str, Any], times: dict[str, list[float]]) -> dict[str, Any]:
    """Mark the eligible peers — not more than 1 point below tunebot's accuracy (a faster peer
    that is also more accurate is one a user would pick, so it cannot be left out) — and set the
    fastest of them as the best, with tunebot's (and tunebot-bf16's) per-round ratio to it."""
    configs = result["configs"]
    for c in configs.values():
        c["eligible"] = c["accuracy"] >= result["tunebot_accuracy"] - 0.01 - 1e-9
    eligible = [n for n in configs if not n.startswith("tunebot") and configs[n]["eligible"]]
    for key in ("ratio_vs_best", "ratio_bf16_vs_best"):
        result.pop(key, None)
    result["best_equal_accuracy"] = None
    if eligible:
        best = min(eligible, key=lambda n: configs[n]["seconds"]["median"])
        result["best_equal_accuracy"] = best
        for side, key in (("tunebot", "ratio_vs_best"), ("tunebot-bf16", "ratio_bf16_vs_best")):
            if side in times:
                result[key] = spread([b / t for b, t in zip(times[best], times[side],
                                                            strict=True)], 2)
    result["goal"] = {"rule": "tunebot >= 3x llama.cpp's best configuration at equal accuracy",
                      "met": bool(eligible) and result["ratio_vs_best"]["median"] >= 3.0}
    result["selection_rule"] = ("the fastest configuration not more than 1 point below "
                                "tunebot's accuracy")
    return result


def reselect(result: dict[str, Any]) -> dict[str, Any]:
    """The best configuration chosen again from a finished run's own per-round times and
    accuracies, with this module's rule (for a run made under an older rule; the measurements
    are untouched). Returns the result with the selection fields replaced."""
    return _select(result, {n: c["seconds_per_round"] for n, c in result["configs"].items()})


def _timed_tunebot(backend: Any, prompts: Any, params: Any) -> tuple[list[str], float]:
    from bench.bench_inference import as_prompt_test

    t0 = time.perf_counter()
    texts = as_prompt_test(backend, prompts, params)
    return texts, time.perf_counter() - t0


def _peer_build() -> dict[str, Any]:
    info: dict[str, Any] = {}
    version = PEERS / "VERSION.json"
    if version.is_file():
        info.update(json.loads(version.read_text()))
    flags = PEERS / "isa-flags.txt"
    if flags.is_file():
        info["isa_flags"] = flags.read_text().split()
    return info


def print_table(r: dict[str, Any]) -> None:
    """Configurations by median time."""
    print(f"{r['cases']} cases · max_new_tokens={r['max_new_tokens']} · {r['threads']} threads "
          f"· {r['rounds']} rounds · {r['llama_server']} · load {r['load_average_start'][0]} → "
          f"{r['load_average_end'][0]}")
    print(f"{'side':30s}{'min s':>8s}{'median s':>10s}{'max s':>8s}{'accuracy':>10s}"
          f"{'same as tunebot':>17s}")
    for name, c in sorted(r["configs"].items(), key=lambda kv: kv[1]["seconds"]["median"]):
        s = c["seconds"]
        print(f"{name:30s}{s['min']:>8.2f}{s['median']:>10.2f}{s['max']:>8.2f}"
              f"{c['accuracy']:>10.1%}{c['identical_to_tunebot']:>12d}/{r['cases']}")
    if r.get("best_equal_accuracy"):
        print(f"llama.cpp best at equal accuracy: {r['best_equal_accuracy']}; llama.cpp / tunebot "
              f"= {r['ratio_vs_best']['median']}× ({r['ratio_vs_best']['min']}–"
              f"{r['ratio_vs_best']['max']}×)")
    if r.get("ratio_bf16_vs_best"):
        b = r["ratio_bf16_vs_best"]
        print(f"tunebot with TUNEBOT_CPU_PRECISION=bf16: llama.cpp best / tunebot-bf16 = "
              f"{b['median']}× ({b['min']}–{b['max']}×)")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 configurations, 1 round, 32 cases")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu only: llama-server is built for the CPU here")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="both sides' threads (default: torch's default, all cores)")
    ap.add_argument("--cases", type=int, default=None, help="first N cases (default all)")
    ap.add_argument("--configs", default=None, metavar="M:NP:B:UB,...",
                    help="serve only these (e.g. f32:16:2048:512,q4_1:8:2048:512)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--reselect", type=Path, metavar="RESULTS",
                    help="choose the best configuration again in a finished run's JSON (this "
                         "benchmark's, or bench/results.json with its headline) and rewrite it")
    args = ap.parse_args(argv)
    if args.reselect:
        data = json.loads(args.reselect.read_text())
        if "llamacpp" in data:  # bench/results.json: its llama.cpp part and the headline
            from bench.run import headline

            data["llamacpp"] = reselect(data["llamacpp"])
            data["headline"] = headline(data)
        else:
            data = reselect(data)
        args.reselect.write_text(json.dumps(data, indent=2) + "\n")
        print(f"rewrote {args.reselect}")
        return 0
    if args.configs:
        parse_configs(args.configs)  # a bad --configs fails before anything loads
    if args.device != "cpu":
        raise SystemExit("bench_llamacpp compares on the CPU only (--device cpu)")
    import torch

    threads = args.threads or torch.get_num_threads() or (os.cpu_count() or 1)
    result = run(quick=args.quick, rounds=args.rounds or (1 if args.quick else 3),
                 threads=threads, limit=args.cases or (32 if args.quick else None),
                 configs=args.configs)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
