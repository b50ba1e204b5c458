"""Training-data check at scale: 10,000 and 100,000 rows validated, with the length histogram.

Reports, per size: seconds and peak Python memory (tracemalloc) of the streaming validation, the
same for a plain baseline that reads the whole file with json.loads per line and keeps every
object (what a naive check does), and the time to tokenise every example under SmolLM2's chat
template for the length histogram (with --tokenize; it needs the converted model).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from tunebot.datasets.training import length_histogram, validate_training

WORDS = ("great", "terrible", "battery", "shipping", "refund", "screen", "fast", "slow", "love",
         "broken", "support", "price", "quality", "again", "never", "always", "app", "order")


def make_file(path: Path, n: int, seed: int = 0) -> None:
    """n distinct chat examples of realistic length."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            label = rng.choice(("positive", "negative"))
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "Classify the review."},
                {"role": "user", "content": f"{text} #{i}"},
                {"role": "assistant", "content": label}]}) + "\n")


def measure(fn) -> tuple[float, int, object]:  # type: ignore[no-untyped-def]
    """Seconds of one plain call, and peak traced bytes of a second, traced call.

    Timed and traced separately: tracemalloc slows Python down several times over.
    """
    t = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return secs, peak, out


def naive(path: Path) -> int:
    """Baseline: load everything, then check."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ok = sum(1 for r in rows if isinstance(r.get("messages"), list)
             and any(m.get("role") == "assistant" for m in r["messages"]))
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 rows only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokenize", action="store_true", help="also time the length histogram")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results-datacheck.json")
    args = ap.parse_args(argv)
    sizes = [10_000] if args.quick else [10_000, 100_000]
    results: dict[str, object] = {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"train-{n}.jsonl"
            make_file(path, n)
            runs = [measure(lambda p=path: validate_training(p, max_rows=1_000_000))
                    for _ in range(args.repeats)]
            base = [measure(lambda p=path: naive(p)) for _ in range(args.repeats)]
            report = runs[0][2]
            row = {
                "rows": n, "file_mb": round(path.stat().st_size / 1e6, 2),
                "examples": len(report.examples), "errors": report.error_count,  # type: ignore[attr-defined]
                "seconds": _mmm([r[0] for r in runs]),
                "peak_mb": round(max(r[1] for r in runs) / 1e6, 1),
                "baseline_seconds": _mmm([r[0] for r in base]),
                "baseline_peak_mb": round(max(r[1] for r in base) / 1e6, 1),
            }
            if args.tokenize:
                row["histogram"] = _tokenize(report.examples)  # type: ignore[attr-defined]
            results["sizes"][str(n)] = row  # type: ignore[index]
            print(f"{n:>7} rows: validate {row['seconds']['median']:.2f} s "
                  f"(peak {row['peak_mb']} MB) · naive load {row['baseline_seconds']['median']:.2f}"
                  f" s (peak {row['baseline_peak_mb']} MB)", flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


def _mmm(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 3), "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3)}


def _tokenize(examples: list) -> dict[str, object]:  # type: ignore[type-arg]
    from transformers import AutoTokenizer

    from tunebot.settings import Settings
    from workers.backends.gguf_cache import converted_dir
    from workers.training.recipe import encoded_lengths

    tok = AutoTokenizer.from_pretrained(converted_dir(Settings().models_dir))
    t = time.perf_counter()
    lengths = encoded_lengths(tok, examples, 10**9)
    hist = length_histogram(lengths, 128)
    return {"seconds": round(time.perf_counter() - t, 2), **hist}


if __name__ == "__main__":
    sys.exit(main())
