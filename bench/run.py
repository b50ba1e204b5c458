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
    "inference": "bench.bench_inference",
    "finetune": "bench.bench_finetune",
    "datacheck": "bench.bench_datacheck",
}


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
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args(argv)
    results: dict[str, object] = {"machine": machine(), "quick": args.quick,
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    failed = 0
    for name in args.only or list(BENCHES):
        out = HERE / f"results-{name}.json"
        cmd = [sys.executable, "-m", BENCHES[name], "--device", args.device, "--out", str(out)]
        if args.quick:
            cmd.append("--quick")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        results[name] = (json.loads(out.read_text()) if proc.returncode == 0 and out.exists()
                         else {"error": f"exit {proc.returncode}"})
        results[name + "_seconds"] = round(time.monotonic() - started, 1)
        failed += proc.returncode != 0
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
