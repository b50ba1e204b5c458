"""Queue overhead: submit → the worker's first line of a no-op job, vs a bare Celery task.

    python -m bench.bench_queue [--quick] [--device cpu|cuda] [--out PATH]

On each broker — Redis (with PostgreSQL, the production pair) and the embedded SQLite broker
(`sqla+sqlite`, with the SQLite database) — two real worker processes run side by side, one
task at a time each, repeats interleaved:

- tunebot: `tunebot worker --queues inference` (`-c 1`). A job is submitted as the bot and the
  CLI submit it (`/tunebot ping`: quota check, job row and "queued" event committed, then the
  task sent); its first line is the worker's first event in SQL (the "· running" status line,
  written right after it took the job's lease). Done = the job row's finished_at.
- baseline: a bare Celery app on the same broker with the same worker options (prefetch 1,
  acks_late, `-c 1`, 0.2 s SQL poll interval), doing the same SQL writes (issue #20): the
  submit INSERTs the job row and its "queued" event in one transaction, then sends the task;
  the task takes a lease, writes the "running" line (its first line), a "started" line,
  progress, the answer, finishes the row and writes a final event, each its own transaction,
  in its own tables of the same database (PostgreSQL with Redis, SQLite with SQLite).
  Done = its finished_at, as tunebot's.

Latency: jobs sent one at a time, 0.15–0.35 s apart (an idle queue), p50/p99 of submit → first
line. Throughput: a burst of jobs submitted back to back, jobs/s from the first submit to the
last one done. min/median/max over repeats, ratios tunebot/baseline per repeat.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from bench.common import (
    as_utc,
    flush_redis,
    host,
    load_average,
    percentile,
    pg_database,
    redis_url,
    spread,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results-queue.json"
BARE_TASK = "bare.record"
BARE_QUEUE = "bare"
QUOTA = 100_000  # raised for the run: a burst is one user's many jobs


# ---- the bare Celery app -----------------------------------------------------------------


def bare_celery(broker: str):  # type: ignore[no-untyped-def]
    """A plain Celery app on `broker`, with tunebot's worker options and nothing else."""
    from celery import Celery

    app = Celery("bare", broker=broker)
    transport: dict[str, object] = {}
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as kombu_sql

        kombu_sql.Transport.polling_interval = 0.2  # tunebot's setting (kombu's default: 1 s)
        transport = {"connect_args": {"timeout": 30}}
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue=BARE_QUEUE, worker_prefetch_multiplier=1,
                    task_acks_late=True, broker_transport_options=transport,
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    return app


def bare_tables():  # type: ignore[no-untyped-def]
    """The bare app's job and event tables (SQLAlchemy Core, PostgreSQL or SQLite)."""
    from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

    meta = MetaData()
    jobs = Table("bare_jobs", meta, Column("id", Integer, primary_key=True, autoincrement=True),
                 Column("kind", String(32), nullable=False),
                 Column("user_id", String(32), nullable=False),
                 Column("status", String(16), nullable=False),
                 Column("worker", String(64)), Column("lease_until", Float),
                 Column("progress", Float), Column("answer", Text),
                 Column("created_at", Float, nullable=False), Column("finished_at", Float))
    events = Table("bare_job_events", meta,
                   Column("id", Integer, primary_key=True, autoincrement=True),
                   Column("job_id", Integer, ForeignKey("bare_jobs.id"), nullable=False),
                   Column("seq", Integer, nullable=False), Column("text", Text, nullable=False),
                   Column("created_at", Float, nullable=False))
    return meta, jobs, events


def bare_engine(db_url: str):  # type: ignore[no-untyped-def]
    """An engine on the run's database, the bare tables created."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url, connect_args={"timeout": 30} if db_url.startswith("sqlite")
                           else {})
    meta, _, _ = bare_tables()
    meta.create_all(engine)
    return engine


def serve_bare(broker: str, db_url: str) -> None:
    """Run the bare worker: its one task does a no-op job's SQL writes, each its own
    transaction, as tunebot's worker does (lease, "running" line, "started" line, progress,
    the answer, finish, final event); the job counts as done at its finished_at."""
    import socket

    from sqlalchemy import insert, update

    app = bare_celery(broker)
    engine = bare_engine(db_url)
    _, jobs, events = bare_tables()
    me = f"bare@{socket.gethostname()}"

    def event(job_id: int, seq: int, text: str) -> None:
        with engine.begin() as c:
            c.execute(insert(events).values(job_id=job_id, seq=seq, text=text,
                                            created_at=time.time()))

    @app.task(name=BARE_TASK)
    def run_job(job_id: int) -> None:
        with engine.begin() as c:  # the lease
            taken = c.execute(update(jobs).where(jobs.c.id == job_id,
                                                 jobs.c.status == "queued")
                              .values(status="running", worker=me,
                                      lease_until=time.time() + 60)).rowcount
        if not taken:
            return
        event(job_id, 2, "· running")
        event(job_id, 3, f"Started on worker {me}")
        with engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(progress=1.0))
        with engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(answer="pong"))
        with engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id)
                      .values(status="done", finished_at=time.time(), lease_until=None))
        event(job_id, 4, "✓ done")

    app.worker_main(["worker", "-Q", BARE_QUEUE, "-c", "1", "-n", "bare@%h", "-l", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])


class Bare:
    """The baseline side: a job row and its event in one transaction, the task sent by name;
    first line and done read back from the bare tables."""

    name = "baseline"

    def __init__(self, broker: str, db_url: str) -> None:
        self.app = bare_celery(broker)
        self.engine = bare_engine(db_url)
        _, self.jobs, self.events = bare_tables()
        self.sent: dict[str, float] = {}

    def submit(self) -> str:
        """Insert one job with its queued event, send its task; returns its id."""
        from sqlalchemy import insert

        t = time.time()
        with self.engine.begin() as c:
            job_id = c.execute(insert(self.jobs).values(
                kind="noop", user_id="U0BENCH", status="queued", created_at=t)
                .returning(self.jobs.c.id)).scalar_one()
            c.execute(insert(self.events).values(job_id=job_id, seq=1, text="queued",
                                                 created_at=time.time()))
        self.app.send_task(BARE_TASK, args=[job_id], queue=BARE_QUEUE)
        ident = str(job_id)
        self.sent[ident] = t
        return ident

    def collect(self, idents: list[str], timeout: float) -> dict[str, tuple[float, float]]:
        """job id → (the worker's first event, finished_at), waiting for all."""
        from sqlalchemy import func, select

        ids = [int(i) for i in idents]
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as c:
                done = c.execute(select(func.count()).select_from(self.jobs).where(
                    self.jobs.c.id.in_(ids), self.jobs.c.finished_at.is_not(None))).scalar_one()
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        with self.engine.connect() as c:
            first = dict(c.execute(select(self.events.c.job_id, func.min(self.events.c.created_at))
                                   .where(self.events.c.job_id.in_(ids), self.events.c.seq >= 2)
                                   .group_by(self.events.c.job_id)).all())
            fin = dict(c.execute(select(self.jobs.c.id, self.jobs.c.finished_at)
                                 .where(self.jobs.c.id.in_(ids))).all())
        return {str(i): (first[i], fin[i]) for i in ids if i in first and fin.get(i) is not None}


class Tunebot:
    """The tunebot side: `/tunebot ping` through the service, times read back from SQL."""

    name = "tunebot"

    def __init__(self, settings: Any) -> None:
        from tunebot.commands import parse
        from tunebot.core import Actor, build_core

        self.core = build_core(settings)
        self.cmd = parse("/tunebot ping")
        self.actor = Actor(team_id="T0BENCH", user_id="U0BENCH")
        self.sent: dict[str, float] = {}

    def submit(self) -> str:
        """Submit one no-op job as a user would; returns its id."""
        from tunebot.dispatch import execute

        t = time.time()
        out = execute(self.cmd, self.actor, self.core)
        if out.job is None:
            raise RuntimeError(f"submit failed: {out.reply.text}")
        ident = str(out.job.id)
        self.sent[ident] = t
        return ident

    def collect(self, idents: list[str], timeout: float) -> dict[str, tuple[float, float]]:
        """job id → (worker's first event, finished_at) as POSIX times, waiting for all."""
        from sqlalchemy import func, select
        from sqlmodel import Session

        from tunebot.models import Job, JobEvent

        ids = [int(i) for i in idents]
        deadline = time.monotonic() + timeout
        while True:
            # A short transaction per poll: on SQLite every transaction is BEGIN IMMEDIATE
            # (tunebot.db), so a session held open across polls would lock the worker out.
            with Session(self.core.engine) as s:
                done = s.execute(select(func.count()).select_from(Job).where(
                    Job.id.in_(ids), Job.finished_at.is_not(None))).scalar_one()  # type: ignore[union-attr,attr-defined]
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        with Session(self.core.engine) as s:
            # seq 1 is the "queued" line written at submit; seq 2 is the worker's first.
            first = dict(s.execute(select(JobEvent.job_id, func.min(JobEvent.created_at)).where(
                JobEvent.job_id.in_(ids), JobEvent.seq >= 2)  # type: ignore[attr-defined]
                .group_by(JobEvent.job_id)).all())
            fin = dict(s.execute(select(Job.id, Job.finished_at).where(
                Job.id.in_(ids))).all())  # type: ignore[union-attr]
        return {str(i): (as_utc(first[i]), as_utc(fin[i])) for i in ids
                if i in first and fin.get(i) is not None}


def latency(side: Any, n: int, rng: random.Random) -> dict[str, Any]:
    """n jobs, one at a time onto an idle queue: submit → first line, ms."""
    idents = []
    for _ in range(n):
        idents.append(side.submit())
        time.sleep(rng.uniform(0.15, 0.35))
    got = side.collect(idents, timeout=60)
    lat = [(got[i][0] - side.sent[i]) * 1000 for i in idents if i in got]
    return {"n": n, "missing": n - len(lat), "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else float("nan")}


def throughput(side: Any, n: int) -> dict[str, Any]:
    """A burst of n jobs: jobs/s from the first submit to the last done."""
    idents = [side.submit() for _ in range(n)]
    got = side.collect(idents, timeout=300)
    first = min(side.sent[i] for i in idents)
    last = max(done for _, done in got.values())
    return {"n": n, "missing": n - len(got), "jobs_per_s": len(got) / (last - first),
            "submit_per_s": n / (max(side.sent[i] for i in idents) - first + 1e-9)}


def measure_broker(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Both sides on one broker, repeats interleaved."""
    from bench.bench_ack import Procs
    from devtools.env import settings_env
    from tunebot import migrate
    from tunebot.settings import Settings

    var = tmp / kind
    var.mkdir()
    with pg_database() if kind == "redis" else nullcontext("") as pg:
        if kind == "redis":
            broker = bare_broker = redis_url()
            settings = Settings(var_dir=var, database_url=pg, broker_url=broker,
                                max_jobs_per_user=QUOTA)
        else:  # the embedded defaults: SQLite database and broker
            settings = Settings(var_dir=var, max_jobs_per_user=QUOTA)
            bare_broker = f"sqla+sqlite:///{var / 'bare-broker.db'}"
        migrate.upgrade(settings.database_url)
        env = settings_env(settings)
        env["TUNEBOT_LOG_LEVEL"] = "WARNING"  # the bare worker logs no per-task lines either
        procs = Procs(var)
        try:
            # The bare side writes to the same database as tunebot (its own tables).
            bare_db = settings.database_url
            procs.start("tunebot-worker", [sys.executable, "-m", "tunebot.cli", "worker",
                                           "--queues", "inference", "--concurrency", "1"], env)
            procs.start("bare-worker", [sys.executable, "-m", "bench.bench_queue", "--serve-bare",
                                        bare_broker, "--db", bare_db], env)
            sides = [Tunebot(settings), Bare(bare_broker, bare_db)]
            for side in sides:  # warm-up: worker imports, connections, first task
                got = side.collect([side.submit() for _ in range(3)], timeout=120)
                if len(got) != 3:
                    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                                      for p in sorted(var.glob("*.log")))
                    raise RuntimeError(f"{kind}: the {side.name} worker ran {len(got)}/3 "
                                       f"warm-up jobs\n{logs}")
            rng = random.Random(0)
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                s.name: {"latency": [], "throughput": []} for s in sides}
            for rep in range(args.repeats):
                for side in (sides if rep % 2 == 0 else sides[::-1]):
                    lat = latency(side, args.n, rng)
                    time.sleep(0.5)
                    thr = throughput(side, args.burst[kind])
                    time.sleep(0.5)
                    runs[side.name]["latency"].append(lat)
                    runs[side.name]["throughput"].append(thr)
                    print(f"  {kind:6} rep {rep + 1} {side.name:8} p50 {lat['p50_ms']:6.1f} ms  "
                          f"p99 {lat['p99_ms']:6.1f} ms  {thr['jobs_per_s']:7.1f} jobs/s",
                          flush=True)
        finally:
            procs.stop()
            if kind == "redis":
                flush_redis(broker)
    return {"database": "postgresql" if kind == "redis" else "sqlite", **summarise(runs)}


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """min/median/max per side, and per-repeat ratios tunebot/baseline."""
    out: dict[str, Any] = {}
    for side, r in runs.items():
        out[side] = {"p50_ms": spread([x["p50_ms"] for x in r["latency"]], 1),
                     "p99_ms": spread([x["p99_ms"] for x in r["latency"]], 1),
                     "jobs_per_s": spread([x["jobs_per_s"] for x in r["throughput"]], 1),
                     "missing": sum(x["missing"] for k in r for x in r[k])}
    t, b = runs["tunebot"], runs["baseline"]
    out["ratio"] = {
        "p50_ms": spread([x["p50_ms"] / y["p50_ms"] for x, y in zip(t["latency"], b["latency"],
                                                                    strict=True)], 2),
        "p99_ms": spread([x["p99_ms"] / y["p99_ms"] for x, y in zip(t["latency"], b["latency"],
                                                                    strict=True)], 2),
        "jobs_per_s": spread([x["jobs_per_s"] / y["jobs_per_s"] for x, y in
                              zip(t["throughput"], b["throughput"], strict=True)], 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer jobs per run")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="accepted for a uniform CLI; no-op jobs use no accelerator")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--n", type=int, default=None, help="jobs per latency run")
    ap.add_argument("--burst", type=int, default=None,
                    help="jobs per throughput run (default: Redis 100, SQLite 40)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--brokers", default="redis,sqlite")
    ap.add_argument("--serve-bare", metavar="BROKER", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare, args.db)
        return 0
    args.n = args.n or (6 if args.quick else 30)
    # The SQL transport delivers about one message per 0.2 s poll, so its bursts are smaller.
    args.burst = ({"redis": args.burst, "sqlite": args.burst} if args.burst else
                  {"redis": 20, "sqlite": 6} if args.quick else {"redis": 100, "sqlite": 40})
    result: dict[str, Any] = {**host(), "device": args.device, "quick": args.quick,
                              "load_average_before": load_average(),
                              "setup": {"latency_jobs": args.n, "burst_jobs": args.burst,
                                        "repeats": args.repeats, "job": "noop (seconds=0)",
                                        "worker_concurrency": 1},
                              "brokers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.brokers.split(","):
            result["brokers"][kind] = measure_broker(kind, args, Path(tmp))
    result["load_average_after"] = load_average()
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for kind, r in result["brokers"].items():
        print(f"queue {kind}: tunebot p50 {r['tunebot']['p50_ms']['median']:.0f} ms "
              f"({r['ratio']['p50_ms']['median']:.1f}x bare), "
              f"{r['tunebot']['jobs_per_s']['median']:.1f} jobs/s "
              f"({r['ratio']['jobs_per_s']['median']:.2f}x bare)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
