"""`make bench` / `make bench-quick`: run every benchmark, gather bench/results.json, print a table.

Each benchmark runs as its own process (a clean interpreter, its own torch threads) and writes
its own JSON; this collects them with the machine's description. Every figure with a baseline
is a ratio measured side by side in the same run — see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "ack": "bench.bench_ack",
    "queue": "bench.bench_queue",
    "scaling": "bench.bench_scaling",
    "inference": "bench.bench_inference",
    "llamacpp": "bench.bench_llamacpp",
    "finetune": "bench.bench_finetune",
    "datacheck": "bench.bench_datacheck",
}
# Extra arguments per benchmark. Every figure has at least 3 interleaved rounds (issue #20's
# rigour rule): the fine-tune comparison runs its default 3 (it was 1 before).
EXTRA: dict[str, list[str]] = {}
# --quick (under 5 minutes in all): one repeat of the slowest model measures.
EXTRA_QUICK = {"inference": ["--repeats", "1"]}


def machine() -> dict[str, object]:
    """What ran the benchmarks: CPU model and ISA flags, cores, library versions."""
    from bench.common import cpu_info, library_versions

    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform(),
                               "cpus": os.cpu_count(), "processor": platform.processor(),
                               **cpu_info(), "versions": library_versions()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write bench/results.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (under ~5 minutes)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", choices=sorted(BENCHES), action="append")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results.json (bench/results-quick.json with --quick)")
    ap.add_argument("--table", type=Path, metavar="RESULTS",
                    help="only print the table of an existing results.json")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    from bench.common import commit

    results: dict[str, object] = {"machine": machine(), "quick": args.quick, "commit": commit(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    # A quick run writes beside the full one, never over it (its sizes are not comparable).
    tag = "results-quick" if args.quick else "results"
    args.out = args.out or HERE / f"{tag}.json"
    failed = 0
    for name in args.only or list(BENCHES):
        out = HERE / f"{tag}-{name}.json"
        cmd = [sys.executable, "-m", BENCHES[name], "--device", args.device, "--out", str(out),
               *EXTRA.get(name, [])]
        if args.quick:
            cmd += ["--quick", *EXTRA_QUICK.get(name, [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        results[name] = (json.loads(out.read_text()) if proc.returncode == 0 and out.exists()
                         else {"error": f"exit {proc.returncode}"})
        results[name + "_seconds"] = round(time.monotonic() - started, 1)
        failed += proc.returncode != 0
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["headline"] = headline(results)
    results["headline_goals"] = HEADLINE_GOALS
    results["seconds"] = round(sum(v for k, v in results.items() if k.endswith("_seconds")
                                   and isinstance(v, float)), 1)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if failed else 0


# Issue #20's goals for each headline ratio (">=" : at least, "<=" : at most).
HEADLINE_GOALS = {
    "inference_vs_llamacpp": ">= 3", "inference_vs_naive": ">= 8", "finetune_vs_trl": ">= 3",
    "finetune_peak_memory_vs_trl": "<= 0.7", "ack_throughput_vs_bolt": ">= 1",
    "ack_p99_vs_bolt": "<= 1.2", "queue_jobs_per_s_vs_celery": None, "finetune_vs_naive": ">= 3",
}


def _per_round(pairs: list[tuple[float, float]]) -> dict[str, float] | None:
    """{median, min, max} of num/den over rounds (None when nothing was measured)."""
    from bench.common import spread

    ratios = [a / b for a, b in pairs if a and b]
    return spread(ratios, 3) if ratios else None


def headline(results: dict[str, object]) -> dict[str, dict[str, float] | None]:
    """Issue #20's headline ratios, each {median, min, max} over its rounds (None: not run).

    inference_vs_llamacpp = llama.cpp's best time at equal accuracy / tunebot's;
    inference_vs_naive = one-at-a-time generate / tunebot as a prompt test runs it;
    finetune_vs_trl = tunebot examples/s / TRL's best (with or without gradient
    checkpointing, per round); finetune_peak_memory_vs_trl = tunebot's training peak RSS
    increase over its RSS at the start of training / the same of that TRL run; ack_* against
    the bare Bolt app doing the same work when measured (else the bare app), at the headline
    concurrency; queue_jobs_per_s_vs_celery = tunebot / the bare Celery task, Redis broker.
    """
    out: dict[str, dict[str, float] | None] = {}
    out["inference_vs_llamacpp"] = _get(results, "llamacpp", "ratio_vs_best")  # type: ignore[assignment]
    naive = _get(results, "inference", "variants", "one_at_a_time", "seconds_per_repeat")
    ours = _get(results, "inference", "variants", "batched_prefix", "seconds_per_repeat")
    out["inference_vs_naive"] = (_per_round(list(zip(naive, ours, strict=True)))
                                 if isinstance(naive, list) and isinstance(ours, list) else None)
    ft = _get(results, "finetune", "results")
    out["finetune_vs_trl"] = out["finetune_peak_memory_vs_trl"] = None
    trl_variants = ("trl", "trl-nogc", "trl-best")
    if isinstance(ft, dict) and "tunebot" in ft and any(v in ft for v in trl_variants):
        trls = [v for v in trl_variants if v in ft]
        speed, memory = [], []
        for i, ex in enumerate(ft["tunebot"]["examples_per_s_all"]):
            best = max(trls, key=lambda v: ft[v]["examples_per_s_all"][i])  # noqa: B023
            speed.append((ex, ft[best]["examples_per_s_all"][i]))
            mem_t = (ft["tunebot"].get("training_peak_increase_bytes_all") or [None] * (i + 1))[i]
            mem_b = (ft[best].get("training_peak_increase_bytes_all") or [None] * (i + 1))[i]
            if mem_t is not None and mem_b:
                memory.append((float(mem_t), float(mem_b)))
        out["finetune_vs_trl"] = _per_round(speed)
        out["finetune_peak_memory_vs_trl"] = _per_round(memory)
    if isinstance(ft, dict) and "tunebot" in ft and "naive" in ft:
        out["finetune_vs_naive"] = _per_round(list(zip(ft["tunebot"]["examples_per_s_all"],
                                                       ft["naive"]["examples_per_s_all"],
                                                       strict=False)))
    ack = results.get("ack")
    h = None
    if isinstance(ack, dict):
        h = _get(ack, "same_work", "ratio") or _get(ack, "headline", "ratio")
    out["ack_throughput_vs_bolt"] = _get(h, "throughput")  # type: ignore[assignment]
    out["ack_p99_vs_bolt"] = _get(h, "p99_ms")  # type: ignore[assignment]
    out["queue_jobs_per_s_vs_celery"] = _get(  # type: ignore[assignment]
        results, "queue", "brokers", "redis", "ratio", "jobs_per_s")
    return out


def _get(d: object, *path: str) -> object:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _n(v: object, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) else "—"


def headlines(results: dict[str, object]) -> list[tuple[str, str, str, str]]:
    """(measure, tunebot, baseline, ratio) for each headline figure present in the results."""
    rows: list[tuple[str, str, str, str]] = []
    ack = results.get("ack")
    if isinstance(ack, dict) and "headline" in ack:
        h, c = ack["headline"], ack["setup"]["concurrency"]
        for key, label, fmt in (("p99_ms", "p99 ms", ".0f"), ("p50_ms", "p50 ms", ".0f"),
                                ("throughput", "commands/s", ".1f")):
            rows.append((f"ack @{c}: {label}", _n(h["tunebot"][key]["median"], fmt),
                         _n(h["baseline"][key]["median"], fmt),
                         _n(h["ratio"][key]["median"], ".2f") + "x"))
        rows.append((f"ack @{c}: errors", str(h["tunebot"]["errors_total"]),
                     str(h["baseline"]["errors_total"]), "goal met" if ack["goal"]["met"]
                     else "goal missed"))
        for conc, row in ack.get("scaling", {}).items():
            if int(conc) != c:
                rows.append((f"ack @{conc}: p99 ms", _n(row["tunebot"]["p99_ms"]["median"], ".0f"),
                             _n(row["baseline"]["p99_ms"]["median"], ".0f"),
                             _n(row["ratio"]["p99_ms"]["median"], ".2f") + "x"))
    for broker, r in (_get(results, "queue", "brokers") or {}).items():  # type: ignore[union-attr]
        for key, label, fmt in (("p50_ms", "submit→first line p50 ms", ".0f"),
                                ("p99_ms", "submit→first line p99 ms", ".0f"),
                                ("jobs_per_s", "no-op jobs/s", ".1f")):
            rows.append((f"queue {broker}: {label}", _n(r["tunebot"][key]["median"], fmt),
                         _n(r["baseline"][key]["median"], fmt),
                         _n(r["ratio"][key]["median"], ".2f") + "x"))
    sc = results.get("scaling")
    if isinstance(sc, dict) and "workers" in sc:
        rows.append(("prompt tests/s, 2 workers vs 1",
                     _n(sc["workers"]["2"]["jobs_per_s"]["median"], ".2f"),
                     _n(sc["workers"]["1"]["jobs_per_s"]["median"], ".2f"),
                     _n(sc["ratio_2_vs_1"]["median"], ".2f") + "x"))
    inf = results.get("inference")
    for v in ("batched", "batched_prefix"):
        row = _get(inf, "variants", v)
        if isinstance(row, dict):
            base = _get(inf, "variants", "one_at_a_time", "cases_per_s")
            rows.append((f"inference {v}: cases/s", _n(row.get("cases_per_s"), ".2f"),
                         _n(base, ".2f"), _n(row.get("speedup_vs_one_at_a_time"), ".2f") + "x"))
    lc = results.get("llamacpp")
    best = _get(lc, "best_equal_accuracy")
    if isinstance(lc, dict) and isinstance(best, str):
        rows.append((f"inference vs llama.cpp ({best}): s",
                     _n(_get(lc, "configs", "tunebot", "seconds", "median"), ".2f"),
                     _n(_get(lc, "configs", best, "seconds", "median"), ".2f"),
                     _n(_get(lc, "ratio_vs_best", "median"), ".2f") + "x faster"))
    cw = _get(inf, "cold_warm")
    if isinstance(cw, dict):
        rows.append(("inference: time to first result s (warm vs cold cache)",
                     _n(cw.get("ttfr_warm_s"), ".2f"), _n(cw.get("ttfr_cold_cache_s"), ".2f"),
                     "—"))
    ft = _get(results, "finetune", "results")
    if isinstance(ft, dict) and "tunebot" in ft:
        for base in ("naive", "trl", "trl-best"):
            if base in ft:
                rows.append((f"fine-tune examples/s vs {base}",
                             _n(ft["tunebot"]["examples_per_s"], ".2f"),
                             _n(ft[base]["examples_per_s"], ".2f"),
                             _n(ft["tunebot"]["examples_per_s"] / ft[base]["examples_per_s"],
                                ".2f") + "x"))
        best = "trl-best" if "trl-best" in ft else "trl"
        rows.append((f"fine-tune held-out accuracy vs {best}",
                     _n(ft["tunebot"].get("heldout_accuracy"), ".3f"),
                     _n(_get(ft, best, "heldout_accuracy"), ".3f"), "—"))
    for size, row in (_get(results, "datacheck", "sizes") or {}).items():  # type: ignore[union-attr]
        t, b = _get(row, "seconds", "median"), _get(row, "baseline_seconds", "median")
        rows.append((f"data check {size} rows: s", _n(t, ".2f"), _n(b, ".2f"),
                     _n(t / b, ".2f") + "x" if isinstance(t, float) and b else "—"))
        rows.append((f"data check {size} rows: peak MB", _n(row.get("peak_mb"), ".1f"),
                     _n(row.get("baseline_peak_mb"), ".1f"),
                     _n(row["peak_mb"] / row["baseline_peak_mb"], ".2f") + "x"
                     if row.get("baseline_peak_mb") else "—"))
    return rows


def table(results: dict[str, object]) -> str:
    """The headline figures as a plain-text table (medians; ratio = tunebot / baseline)."""
    rows = [("measure", "tunebot", "baseline", "ratio"), *headlines(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = results.get("headline") or headline(results)
    if isinstance(head, dict):
        lines.append("\nheadline (median, min–max over rounds; goal):")
        for key, v in head.items():
            goal = HEADLINE_GOALS.get(key) or "—"
            lines.append(f"  {key:30s} " + (f"{v['median']:.2f}x ({v['min']:.2f}–{v['max']:.2f})"
                                              if isinstance(v, dict) else "not measured")
                         + f"  goal {goal}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
