"""Worker scaling: prompt-test jobs/s with 1 and with 2 `tunebot worker` processes.

    python -m bench.bench_scaling [--quick] [--device cpu|cuda] [--out PATH]

A tiny Llama chat model built from a config (tests/tiny_model.py: random weights, a real BPE
tokenizer, so a prompt test does real tokenisation, generation and scoring without a download),
a two-version prompt and a 24-row eval set in the catalog; then bursts of
`/prompt test colours on colours-eval model=<tiny>` jobs through Redis and PostgreSQL, run by
one worker process and by two (each `--queues inference --concurrency 1`). jobs/s is the
burst's size over the time from its first submit to its last job's finished_at; workers are
warmed up (model loaded) first; 1- and 2-worker bursts alternate, so the ratio 2 workers /
1 worker is measured side by side. Each worker gets one torch thread (OMP_NUM_THREADS=1,
`--threads`): with torch's default every worker spins on every core, and on a shared 2-core
machine that measures contention, not scaling. Workers pick their device themselves ("auto":
the GPU when there is one, both workers sharing it), so `--device` only labels the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    as_utc,
    flush_redis,
    host,
    load_average,
    pg_database,
    redis_url,
    spread,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results-scaling.json"


def seed(core: Any, settings: Any, tmp: Path) -> None:
    """The prompt and the eval set the jobs test (the tests' colours world)."""
    from devtools.seed import seed_colours

    seed_colours(core.engine, settings, tmp, team="T0BENCH", user="U0BENCH", versions=1)


def burst(core: Any, text: str, n: int, timeout: float = 600) -> dict[str, Any]:
    """Submit n prompt tests back to back; jobs/s until the last one finished."""
    from sqlalchemy import select
    from sqlmodel import Session

    from tunebot.commands import parse
    from tunebot.core import Actor
    from tunebot.dispatch import execute
    from tunebot.models import Job

    actor = Actor(team_id="T0BENCH", user_id="U0BENCH")
    t0 = time.time()
    ids = []
    for _ in range(n):
        out = execute(parse(text), actor, core)
        if out.job is None:
            raise RuntimeError(out.reply.text)
        ids.append(out.job.id)
    deadline = time.monotonic() + timeout
    while True:
        with Session(core.engine) as s:  # one short transaction per poll
            rows = s.execute(select(Job.status, Job.finished_at, Job.error).where(
                Job.id.in_(ids))).all()  # type: ignore[union-attr]
        if all(r.finished_at is not None for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    failed = [r.error for r in rows if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} prompt tests did not succeed: {failed[0]}")
    last = max(as_utc(r.finished_at) for r in rows)
    return {"n": n, "seconds": last - t0, "jobs_per_s": n / (last - t0)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One worker, then two; repeats of a burst each."""
    from bench.bench_ack import Procs
    from devtools.env import settings_env
    from devtools.tiny_model import build_tiny_model
    from tunebot import migrate
    from tunebot.core import build_core
    from tunebot.settings import Settings

    with tempfile.TemporaryDirectory() as tmp_s, pg_database() as db_url:
        tmp = Path(tmp_s)
        model = build_tiny_model(tmp / "tiny-model")
        broker = redis_url()
        settings = Settings(var_dir=tmp / "var", database_url=db_url, broker_url=broker,
                            max_jobs_per_user=100_000, model_dirs=[tmp])  # the tiny model's root
        migrate.upgrade(db_url)
        core = build_core(settings)
        seed(core, settings, tmp)
        text = f"/prompt test colours on colours-eval model={model}"
        env = settings_env(settings)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        procs = Procs(tmp)
        results: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}

        def start(name: str) -> Any:
            proc = procs.start(name, [sys.executable, "-m", "tunebot.cli", "worker", "--queues",
                                      "inference", "--concurrency", "1", "--hostname",
                                      f"{name}@%h"], env)
            log = tmp / f"{name}.log"
            deadline = time.monotonic() + 120
            while "ready." not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
            return proc

        try:
            start("bench-a")
            second = None
            for rep in range(args.repeats):
                # Interleaved: the machine's noise falls on both counts alike.
                for workers in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    if workers == 2 and second is None:
                        second = start(f"bench-b{rep}")
                    if workers == 1 and second is not None:
                        procs.stop(second)
                        second = None
                    burst(core, text, 2 * workers, timeout=300)  # warm-up: load the model
                    r = burst(core, text, args.jobs)
                    results[str(workers)].append(r)
                    print(f"  rep {rep + 1}, {workers} worker(s): {r['jobs_per_s']:.2f} jobs/s "
                          f"({r['n']} jobs in {r['seconds']:.1f} s)", flush=True)
        finally:
            procs.stop()
            core.engine.dispose()
            flush_redis(broker)
    one, two = results["1"], results["2"]
    return {"setup": {"job": "prompt_test, tiny Llama (2 layers, hidden 64), 24 cases, "
                             "max_new_tokens 4", "jobs_per_burst": args.jobs,
                      "repeats": args.repeats, "broker": "redis", "database": "postgresql",
                      "worker_concurrency": 1,
                      "torch_threads_per_worker": args.threads or "torch default"},
            "workers": {k: {"jobs_per_s": spread([r["jobs_per_s"] for r in v], 3)}
                        for k, v in results.items()},
            "ratio_2_vs_1": spread([b["jobs_per_s"] / a["jobs_per_s"]
                                    for a, b in zip(one, two, strict=True)], 2)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller bursts")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--jobs", type=int, default=None, help="prompt tests per burst")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS per worker (0: torch's default, all cores each)")
    args = ap.parse_args(argv)
    args.jobs = args.jobs or (4 if args.quick else 16)
    result = {**host(), "device": args.device, "quick": args.quick,
              "load_average_before": load_average(), **run(args),
              "load_average_after": load_average()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    w = result["workers"]
    print(f"scaling: 1 worker {w['1']['jobs_per_s']['median']:.2f} jobs/s, 2 workers "
          f"{w['2']['jobs_per_s']['median']:.2f} jobs/s "
          f"({result['ratio_2_vs_1']['median']:.2f}x)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
