"""Slack ack latency under load: tunebot's HTTP bot vs a bare Bolt app that only acks.

    python -m bench.bench_ack [--quick] [--device cpu|cuda] [--out PATH]

N signed `/tunebot ping` slash commands from 100 users (each one a job: tunebot commits a job
row and a "queued" event to PostgreSQL and sends the task to Redis before it answers) are fired
at concurrency C by an asyncio + httpx client, against two servers measured side by side in the
same run, repeats interleaved:

- tunebot: `tunebot bot --http` (uvicorn, Bolt dispatch in Starlette's thread pool), on a fresh
  migrated PostgreSQL database and the Redis broker, quota raised for the run;
- baseline: a bare sync Bolt app whose one listener only calls ack(), wired the fast way
  (`process_before_response=True`, dispatched off the event loop in Starlette's thread pool);
- bare_work: the same bare app doing tunebot's submit work before the ack: the job INSERT and
  its event in one PostgreSQL transaction, then the broker send (Celery send_task to Redis).
  The goal is judged against this side (issue #20), at concurrency 10, 50 and 100.

Both sign-verify every request and both start against the local Slack Web API stand-in
(tests/slack_api/; Bolt calls auth.test once). During every run a CPU-busy process stands in for
a worker busy with a prompt test on the same host, on both sides alike. Reported per side:
time to the HTTP 200 (p50/p95/p99), commands/s and errors (non-200, timeouts, or a tunebot
reply that is not "Queued …"), min/median/max over the repeats, ratios tunebot/baseline per
repeat; and the same at concurrency 10, 25, 50 and 100 (the scaling table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    flush_redis,
    free_port,
    host,
    load_average,
    percentile,
    pg_database,
    redis_url,
    spread,
    wait_port,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results-ack.json"
SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench-token"
USERS = 100
DUMP = os.environ.get("BENCH_ACK_DUMP")  # a JSONL file: every run's (sent at, latency) pairs
LEVELS = (10, 25, 50, 100)
# The busy process: one core's worth of a worker's arithmetic (a 1-thread float32 matmul loop, as
# a prompt test on the CPU keeps a core busy), running through every run on both sides.
BUSY = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a)")


# ---- the baseline server (run in its own process) --------------------------------------


# The bare app's own job tables when it does tunebot's work (issue #20: "the job INSERT with
# its event in one transaction and the broker send"), in the same PostgreSQL database; the
# idempotency key enforced by a unique index, as tunebot's is.
BARE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bare_jobs (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, "
    "user_id TEXT NOT NULL, args JSONB NOT NULL, status TEXT NOT NULL, "
    "idempotency_key TEXT NOT NULL UNIQUE, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS bare_job_events (id BIGSERIAL PRIMARY KEY, job_id BIGINT NOT "
    "NULL REFERENCES bare_jobs (id), seq INT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, "
    "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), UNIQUE (job_id, seq))",
)
BARE_TASK = "bare.run_job"


def serve_baseline(port: int, api_url: str, work: bool = False) -> None:
    """The bare app, wired the fast way Bolt allows: sync Bolt with process_before_response
    (the listener runs in the dispatching thread and its ack is returned directly, no 10 ms
    ack poll), dispatched off the event loop in Starlette's thread pool. With `work`, its
    listener does what tunebot's submit does: INSERT the job row and its first event in one
    PostgreSQL transaction (psycopg, one connection per dispatch thread), then send the task
    to the Redis broker with Celery's send_task, then ack "Queued job #N"."""
    import threading

    import anyio
    import uvicorn
    from slack_bolt import App
    from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
    from slack_sdk import WebClient
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    bolt = App(client=WebClient(token=BOT_TOKEN, base_url=api_url), signing_secret=SECRET,
               token_verification_enabled=False, process_before_response=True)
    pattern = re.compile(r"^/(prompt|dataset|finetune|model|compare|tunebot)$")
    if not work:
        @bolt.command(pattern)
        def on_command(ack: Any) -> None:
            ack()
    else:
        import psycopg
        from celery import Celery
        from psycopg.types.json import Jsonb

        db = os.environ["TUNEBOT_DATABASE_URL"].replace("+psycopg", "")
        celery = Celery("bare", broker=os.environ["TUNEBOT_BROKER_URL"])
        celery.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        local = threading.local()

        def conn() -> Any:
            if getattr(local, "conn", None) is None or local.conn.closed:
                local.conn = psycopg.connect(db, autocommit=True)
            return local.conn

        @bolt.command(pattern)
        def on_work_command(ack: Any, body: dict[str, Any]) -> None:
            c = conn()
            with c.transaction():
                row = c.execute(
                    "INSERT INTO bare_jobs (kind, user_id, args, status, idempotency_key) "
                    "VALUES ('ping', %s, %s, 'queued', %s) RETURNING id",
                    (body["user_id"], Jsonb({"text": body.get("text", "")}),
                     body["trigger_id"])).fetchone()
                assert row is not None
                c.execute("INSERT INTO bare_job_events (job_id, seq, kind, text) "
                          "VALUES (%s, 1, 'queued', 'queued')", (row[0],))
            celery.send_task(BARE_TASK, args=[row[0]], queue="bare-ack")
            ack(f"Queued job #{row[0]}")

    async def events(request: Request) -> Response:
        body = await request.body()
        resp = await anyio.to_thread.run_sync(bolt.dispatch, to_bolt_request(request, body))
        return to_starlette_response(resp)

    app = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_tunebot_variant(port: int, variant: str) -> None:
    """An experiment, not tunebot's server: tunebot's own listeners (settings from the same
    environment) on a Bolt app changed as `variant` says: `limitK` dispatches through a K-thread
    CapacityLimiter instead of the thread pool's 40 (requests queue in order instead of
    time-slicing one GIL); `pbr` sets Bolt's process_before_response, so the listener runs in
    the dispatching thread and the ack is returned directly (sync Bolt otherwise runs it on a
    second thread and polls for the ack every 10 ms). `pbr-limit8` is both. `inline` dispatches
    on the event loop itself, one request at a time (what Bolt's own Starlette adapter does)."""
    import anyio
    import uvicorn
    from slack_bolt import App as BoltApp
    from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bot import listeners
    from bot.notifier import make_client
    from tunebot.core import build_core
    from tunebot.settings import load_settings

    settings = load_settings()
    core = build_core(settings)
    bolt = BoltApp(client=make_client(settings), signing_secret=SECRET,
                   token_verification_enabled=False, ignoring_self_events_enabled=True,
                   process_before_response="pbr" in variant)
    listeners.register(bolt, core)
    m = re.search(r"limit(\d+)", variant)
    limiter = anyio.CapacityLimiter(int(m.group(1))) if m else None

    async def events(request: Request) -> Response:
        body = await request.body()
        if "inline" in variant:  # on the event loop itself, one at a time, as Bolt's adapter does
            return to_starlette_response(bolt.dispatch(to_bolt_request(request, body)))
        resp = await anyio.to_thread.run_sync(bolt.dispatch, to_bolt_request(request, body),
                                              limiter=limiter)
        return to_starlette_response(resp)

    app = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the load generator ----------------------------------------------------------------


def bodies(n: int) -> list[bytes]:
    """n distinct `/tunebot ping` slash commands from USERS users (unique trigger ids)."""
    from devtools.slack_api.payloads import slash_command_body

    return [slash_command_body("ping", command="/tunebot", user_id=f"U{i % USERS:05d}",
                               user_name=f"user{i % USERS}") for i in range(n)]


async def _fire(url: str, payloads: list[bytes], concurrency: int,
                ok: Callable[[bytes], bool]) -> dict[str, Any]:
    import httpx

    from devtools.slack_api.payloads import signed_headers

    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (sent at, latency) seconds, for --dump
    errors: Counter[str] = Counter()
    todo = iter(payloads)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def user() -> None:
            for body in todo:
                headers = signed_headers(body, SECRET)
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    errors[exc.__class__.__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t)
                timeline.append((t - started, latencies[-1]))
                if r.status_code != 200:
                    errors[f"http {r.status_code}"] += 1
                elif not ok(r.content):
                    errors["unexpected reply"] += 1

        started = time.perf_counter()  # read by user() only after the gather below starts
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"n": len(payloads), "wall_s": wall, "latencies": latencies, "timeline": timeline,
            "errors": dict(errors)}


def fire(url: str, n: int, concurrency: int, ok: Callable[[bytes], bool]) -> dict[str, Any]:
    """One run: n commands at this concurrency; latency percentiles in ms, commands/s, errors."""
    raw = asyncio.run(_fire(url, bodies(n), concurrency, ok))
    if DUMP:
        with open(DUMP, "a") as f:
            f.write(json.dumps({"url": url, "c": concurrency, "timeline": raw["timeline"]}) + "\n")
    lat = [x * 1000 for x in raw["latencies"]]
    return {"n": n, "concurrency": concurrency, "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99), "max_ms": max(lat),
            "throughput": n / raw["wall_s"], "errors": sum(raw["errors"].values()),
            "error_kinds": raw["errors"]}


def tunebot_ok(content: bytes) -> bool:
    """A tunebot ack that created the job (not an outage or quota answer)."""
    return b"Queued" in content


def baseline_ok(content: bytes) -> bool:
    """The bare app's empty ack."""
    return True


def bare_work_ok(content: bytes) -> bool:
    """The bare app's ack after its job row, event and broker send."""
    return b"Queued job #" in content


# ---- the stack ----------------------------------------------------------------------------


class Procs:
    """Child processes in their own sessions, stopped together."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start one child, its output in logdir/name.log."""
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, only: subprocess.Popen[bytes] | None = None) -> None:
        """SIGTERM each child's group (or just `only`'s), then SIGKILL what lingers."""
        procs = self.procs if only is None else [only]
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def truncate(db_url: str) -> None:
    """Empty the job tables and the broker between tunebot runs, so each run starts alike."""
    import psycopg

    with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, job_events RESTART IDENTITY CASCADE")
        conn.execute("TRUNCATE bare_jobs, bare_job_events RESTART IDENTITY CASCADE")


def create_bare_tables(db_url: str) -> None:
    """The bare app's job tables (BARE_SCHEMA) in the run's database."""
    import psycopg

    with psycopg.connect(db_url.replace("+psycopg", ""), autocommit=True) as conn:
        for ddl in BARE_SCHEMA:
            conn.execute(ddl)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start both servers and the busy process, then measure, repeats interleaved."""
    from devtools.env import settings_env
    from devtools.slack_api.server import SlackAPIServer
    from tunebot import migrate
    from tunebot.settings import Settings

    headline = args.concurrency
    levels = sorted({*LEVELS, headline}) if not args.no_scaling else [headline]
    n_for = {c: (args.n if c == headline else args.n_scaling) for c in levels}
    with tempfile.TemporaryDirectory() as tmp, pg_database() as db_url, \
            SlackAPIServer(bot_token=BOT_TOKEN, app_token="xapp-bench",
                           signing_secret=SECRET) as slack:
        broker = redis_url()
        migrate.upgrade(db_url)
        create_bare_tables(db_url)
        settings = Settings(var_dir=Path(tmp) / "var", database_url=db_url, broker_url=broker,
                            slack_api_url=slack.api_url)
        env = settings_env(settings)
        env.update({"SLACK_SIGNING_SECRET": SECRET, "SLACK_BOT_TOKEN": BOT_TOKEN,
                    "TUNEBOT_MAX_JOBS_PER_USER": "100000"})
        procs = Procs(Path(tmp))
        try:
            tb_port, base_port, work_port = free_port(), free_port(), free_port()
            tb = procs.start("tunebot-bot", [sys.executable, "-m", "tunebot.cli", "bot",
                                             "--http", "--port", str(tb_port)], env)
            base = procs.start("baseline", [sys.executable, "-m", "bench.bench_ack",
                                            "--serve-baseline", str(base_port),
                                            "--api-url", slack.api_url], env)
            work = procs.start("bare_work", [sys.executable, "-m", "bench.bench_ack",
                                             "--serve-baseline", str(work_port), "--work",
                                             "--api-url", slack.api_url], env)
            wait_port(tb_port, proc=tb)
            wait_port(base_port, proc=base)
            wait_port(work_port, proc=work)
            urls = {"tunebot": f"http://127.0.0.1:{tb_port}/slack/events",
                    "baseline": f"http://127.0.0.1:{base_port}/slack/events",
                    "bare_work": f"http://127.0.0.1:{work_port}/slack/events"}
            oks = {"tunebot": tunebot_ok, "baseline": baseline_ok, "bare_work": bare_work_ok}
            for variant in args.experiment:
                v_port = free_port()
                v = procs.start(variant, [sys.executable, "-m", "bench.bench_ack",
                                          "--serve-tunebot-variant", variant, "--port",
                                          str(v_port)], env)
                wait_port(v_port, proc=v)
                urls[f"tunebot_{variant}"] = f"http://127.0.0.1:{v_port}/slack/events"
                oks[f"tunebot_{variant}"] = tunebot_ok
            for i in range(args.busy):  # a worker busy on a prompt test, on both sides alike
                procs.start(f"busy-{i}", [sys.executable, "-c", BUSY], env)
            for side in urls:  # warm-up: imports, auth.test, connection pools
                warm = fire(urls[side], 40, 5, oks[side])
                if warm["errors"]:
                    raise RuntimeError(f"{side} warm-up failed: {warm['error_kinds']}")
            runs: dict[int, dict[str, list[dict[str, Any]]]] = {
                c: {side: [] for side in urls} for c in levels}
            for rep in range(args.repeats):
                for c in levels:
                    if c != headline and rep >= args.scaling_repeats:
                        continue
                    order = list(urls) if rep % 2 == 0 else list(urls)[::-1]
                    for side in order:
                        if side != "baseline":
                            truncate(db_url)
                            flush_redis(broker)
                        time.sleep(0.5)
                        r = fire(urls[side], n_for[c], c, oks[side])
                        runs[c][side].append(r)
                        print(f"  rep {rep + 1} c={c:<3} {side:8} p50 {r['p50_ms']:6.0f} ms  "
                              f"p99 {r['p99_ms']:6.0f} ms  {r['throughput']:6.1f}/s  "
                              f"errors {r['errors']}", flush=True)
        finally:
            procs.stop()
            flush_redis(broker)
    table = {str(c): summarise(runs[c]) for c in levels}
    head = table[str(headline)]
    # The goal is judged against the bare app doing the same work, at 10, 50 and 100.
    goal_levels = [c for c in (10, 50, 100) if str(c) in table] or [headline]

    def met(row: dict[str, Any]) -> bool:
        r = row["ratio_vs_same_work"]
        return bool(r["throughput"]["median"] >= 1.0 and r["p99_ms"]["median"] <= 1.2
                    and row["tunebot"]["errors_total"] == 0)

    goal = all(met(table[str(c)]) for c in goal_levels)
    return {"setup": {"commands": args.n, "users": USERS, "concurrency": headline,
                      "scaling_commands": args.n_scaling, "repeats": args.repeats,
                      "scaling_repeats": args.scaling_repeats,
                      "busy_processes": args.busy, "database": "postgresql (fresh, migrated)",
                      "broker": "redis", "quota": 100000,
                      "tunebot": "tunebot bot --http (uvicorn, Bolt sync dispatch in thread pool)",
                      "baseline": "sync Bolt App, process_before_response, dispatched off the "
                                  "event loop (Starlette thread pool), ack() only",
                      "bare_work": "the same bare app doing tunebot's submit work: job INSERT "
                                   "+ event INSERT in one PostgreSQL transaction, Celery "
                                   "send_task to Redis, then ack"},
            "headline": head, "scaling": table,
            "same_work": {"concurrency": headline, "ratio": head["ratio_vs_same_work"],
                          "bare_work": head["bare_work"],
                          "per_level": {c: {"ratio": table[str(c)]["ratio_vs_same_work"],
                                            "met": met(table[str(c)])} for c in goal_levels}},
            "goal": {"rule": "against the bare app doing the same work, at concurrency "
                             f"{', '.join(map(str, goal_levels))}: tunebot throughput >= 1x, "
                             "p99 <= 1.2x, 0 errors", "met": goal}}


def profile(n: int) -> dict[str, Any]:
    """Where one command's time goes: both Bolt apps dispatched serially in this process (no
    HTTP, no contention), tunebot's steps timed by wrapping them; ms per command."""
    import functools

    from slack_bolt import App
    from slack_bolt.request import BoltRequest
    from slack_sdk import WebClient

    import tunebot.jobs as jobs_pkg
    import tunebot.jobs.store as jobs_store
    from bot.app import build_bolt
    from devtools.slack_api.payloads import signed_headers
    from devtools.slack_api.server import SlackAPIServer
    from tunebot import migrate
    from tunebot.core import build_core
    from tunebot.settings import Settings

    spent: Counter[str] = Counter()

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    # Handlers call the package's `jobs.submit`; the store calls its own helpers by name.
    steps = {"submit (total)": (jobs_pkg, "submit"),
             "  idempotency pre-select": (jobs_store, "_find_existing"),
             "  send task to broker": (jobs_store, "_wake"),
             "  queued event": (jobs_store, "add_event"),
             "  send notify to broker": (jobs_store, "notify")}
    for label, (module, attr) in steps.items():
        setattr(module, attr, timed(label, getattr(module, attr)))
    out: dict[str, Any] = {"commands": n}
    with tempfile.TemporaryDirectory() as tmp, pg_database() as db_url, \
            SlackAPIServer(bot_token=BOT_TOKEN, app_token="xapp-bench",
                           signing_secret=SECRET) as slack:
        broker = redis_url()
        migrate.upgrade(db_url)
        settings = Settings(var_dir=Path(tmp), database_url=db_url, broker_url=broker,
                            slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN,
                            slack_signing_secret=SECRET, max_jobs_per_user=100000)
        core = build_core(settings)
        bare = App(client=WebClient(token=BOT_TOKEN, base_url=slack.api_url),
                   signing_secret=SECRET, token_verification_enabled=False)
        bare.command(re.compile(r"^/tunebot$"))(lambda ack: ack())
        for name, bolt in (("baseline", bare), ("tunebot", build_bolt(settings, core))):
            reqs = [BoltRequest(body=b.decode(), headers=signed_headers(b, SECRET))
                    for b in bodies(n + 20)]
            for r in reqs[:20]:
                bolt.dispatch(r)
            spent.clear()
            t, cpu = time.perf_counter(), time.process_time()
            for r in reqs[20:]:
                resp = bolt.dispatch(r)
                assert resp.status == 200, resp.body
            total, cpu = time.perf_counter() - t, time.process_time() - cpu
            # cpu: this process's CPU (the bot's share; PostgreSQL's and Redis's are elsewhere)
            out[name] = {"dispatch_ms": round(1000 * total / n, 2),
                         "bot_cpu_ms": round(1000 * cpu / n, 2),
                         **{k: round(1000 * v / n, 2) for k, v in spent.items()}}
            print(f"  {name}: {out[name]}", flush=True)
        core.engine.dispose()
        flush_redis(broker)
    return out


def summarise(sides: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """min/median/max per side and of the paired per-repeat ratios tunebot/baseline."""
    keys = ("p50_ms", "p95_ms", "p99_ms", "throughput")
    out: dict[str, Any] = {}
    for side, runs in sides.items():
        out[side] = {k: spread([r[k] for r in runs], 1) for k in keys}
        out[side]["errors_total"] = sum(r["errors"] for r in runs)
        kinds: Counter[str] = Counter()
        for r in runs:
            kinds.update(r["error_kinds"])
        out[side]["error_kinds"] = dict(kinds)
    for side in sides:
        if side != "baseline":
            name = "ratio" if side == "tunebot" else f"ratio_{side}"
            out[name] = {k: spread([t[k] / b[k] for t, b in zip(sides[side], sides["baseline"],
                                                                 strict=True)], 2) for k in keys}
    if "bare_work" in sides and "tunebot" in sides:
        out["ratio_vs_same_work"] = {k: spread([t[k] / b[k] for t, b in zip(
            sides["tunebot"], sides["bare_work"], strict=True)], 2) for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 commands at concurrency 20")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="accepted for a uniform CLI; the bot path uses no accelerator")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--n", type=int, default=None, help="commands per headline run")
    ap.add_argument("--n-scaling", type=int, default=None, help="commands per scaling run")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=1, help="CPU-busy processes during the runs")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--profile", type=int, default=None, metavar="N",
                    help="serial in-process dispatches per app for the step-by-step timing "
                         "(default 200, quick 50; 0: none)")
    ap.add_argument("--profile-only", action="store_true", help="skip the load runs")
    ap.add_argument("--experiment", action="append", default=[], metavar="VARIANT",
                    help="also measure tunebot's listeners on a changed Bolt app: limitK, pbr, "
                         "pbr-limitK (see serve_tunebot_variant)")
    ap.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-tunebot-variant", metavar="VARIANT", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--api-url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.api_url, work=args.work)
        return 0
    if args.serve_tunebot_variant:
        serve_tunebot_variant(args.port, args.serve_tunebot_variant)
        return 0
    args.n = args.n or (100 if args.quick else 500)
    args.n_scaling = args.n_scaling or (60 if args.quick else 300)
    args.scaling_repeats = 1 if args.quick else args.repeats
    args.concurrency = args.concurrency or (20 if args.quick else 50)
    if args.profile is None:
        args.profile = 50 if args.quick else 200
    if args.profile_only:
        print(json.dumps(profile(args.profile), indent=2))
        return 0
    load_before = load_average()
    result = {**host(), "device": args.device, "quick": args.quick,
              "load_average_before": load_before, **run(args),
              "load_average_after": load_average()}
    if args.profile:
        result["profile_ms_per_command"] = profile(args.profile)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    h = result["headline"]
    print(f"ack @ c={args.concurrency}: tunebot p99 {h['tunebot']['p99_ms']['median']:.0f} ms, "
          f"{h['tunebot']['throughput']['median']:.1f}/s; baseline p99 "
          f"{h['baseline']['p99_ms']['median']:.0f} ms, {h['baseline']['throughput']['median']:.1f}"
          f"/s; ratio p99 {h['ratio']['p99_ms']['median']:.2f}x, throughput "
          f"{h['ratio']['throughput']['median']:.2f}x")
    sw = result["same_work"]["ratio"]
    print(f"vs the bare app doing the same work: p99 {sw['p99_ms']['median']:.2f}x, throughput "
          f"{sw['throughput']['median']:.2f}x; goal met: {result['goal']['met']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
