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
    "finetune": "bench.bench_finetune",
    "datacheck": "bench.bench_datacheck",
}
# Extra arguments per benchmark: the fine-tune comparison is one run (the budget: the
# whole of `make bench` in under 25 minutes on 2 cores), each of its variants timed once.
EXTRA = {"finetune": ["--rounds", "1"]}
# --quick (under 5 minutes in all): one repeat of the slowest model measures.
EXTRA_QUICK = {"inference": ["--repeats", "1"]}


def machine() -> dict[str, object]:
    """What ran the benchmarks."""
    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform(),
                               "cpus": os.cpu_count(), "processor": platform.processor()}
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
    results["seconds"] = round(sum(v for k, v in results.items() if k.endswith("_seconds")
                                   and isinstance(v, float)), 1)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if failed else 0


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
    cw = _get(inf, "cold_warm")
    if isinstance(cw, dict):
        rows.append(("inference: time to first result s (warm vs cold cache)",
                     _n(cw.get("ttfr_warm_s"), ".2f"), _n(cw.get("ttfr_cold_cache_s"), ".2f"),
                     "—"))
    ft = _get(results, "finetune", "results")
    if isinstance(ft, dict) and "tunebot" in ft:
        for base in ("naive", "trl"):
            if base in ft:
                rows.append((f"fine-tune examples/s vs {base}",
                             _n(ft["tunebot"]["examples_per_s"], ".2f"),
                             _n(ft[base]["examples_per_s"], ".2f"),
                             _n(ft["tunebot"]["examples_per_s"] / ft[base]["examples_per_s"],
                                ".2f") + "x"))
        rows.append(("fine-tune held-out accuracy vs trl",
                     _n(ft["tunebot"].get("heldout_accuracy"), ".3f"),
                     _n(_get(ft, "trl", "heldout_accuracy"), ".3f"), "—"))
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
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
