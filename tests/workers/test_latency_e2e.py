"""A Parquet eval set runs a prompt test through a real worker on the tiny model, and the
reported latency is what one request waits: its p50 within ±30% of single requests of the same
cases on the same backend, timed here."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sqlalchemy import select
from sqlmodel import Session

from devtools.seed import ROWS, seed_colours
from tests.conftest import make_settings, wait_final
from tunebot import catalog, datasets, jobs, migrate
from tunebot.commands import parse
from tunebot.core import Actor, build_core
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.models import CaseResult
from tunebot.replies import Reply, render_text
from workers.backends.base import GenParams
from workers.backends.hf import HFBackend
from workers.runners.evaluate import gen_params, render_all

MAX_TOKENS = 24


@pytest.fixture
def world(tmp_path: Path, start_worker, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
          monkeypatch: pytest.MonkeyPatch):
    # One thread on both sides: on a shared, busy CPU two spinning threads per process make
    # a request's time swing tenfold, which would measure the neighbours, not the backend.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = build_core(settings)
    seed_colours(app.engine, settings, tmp_path)
    worker = start_worker(settings, "inference")
    yield settings, app, worker, tiny_model_dir
    torch.set_num_threads(threads)


def test_parquet_prompt_test_reports_single_request_latency(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, app, worker, model = world
    actor = Actor(team_id="T0TEAM", user_id="U0ALICE")
    # The same cases as colours-eval, as a Parquet file whose answers are in `label`; each row
    # also asserts a latency budget, scored with the single-request time.
    budget = json.dumps([{"type": "latency", "max_ms": 600_000}])
    table = pa.Table.from_pylist([{"colour": r["colour"], "label": r["expected"],
                                   "assert": budget} for r in ROWS])
    pq.write_table(table, tmp_path / "colours.parquet", row_group_size=10)
    out = execute(parse("/dataset add colours-pq"), actor, app, tmp_path / "colours.parquet")
    assert "read from column `label`" in out.reply.text, out.reply.text

    # Single requests of every case on the same backend, timed here while the worker idles:
    # half before the job and half after it, so a change in the machine's load is in both.
    backend = HFBackend(str(model), settings)
    ds = datasets.get_dataset(engine=app.engine, team_id="T0TEAM", name="colours-pq")
    rows = datasets.load_rows(ds)
    with session_scope(app.engine) as db:
        content = catalog.resolve(session=db, team_id="T0TEAM", ref="colours@1").content
    prompts = render_all(content, rows)
    gen = gen_params(content, temperature=None, max_tokens=MAX_TOKENS)
    backend.generate(prompts[:1], gen)  # warm, as the worker's backend is after its batch
    times = single_requests(backend, prompts[::2], gen)

    out = execute(parse(f"/prompt test colours@1 on colours-pq model={model} "
                        f"max_tokens={MAX_TOKENS}"), actor, app)
    assert out.job is not None, out.reply.text
    job = wait_final(app.engine, out.job.id, timeout=120)
    assert job.status == "succeeded", job.error
    s = job.result["summaries"][0]
    assert s["cases"] == len(ROWS)
    assert s["latency_method"] == "single requests" and 2 <= s["latency_measured"] <= 8
    assert s["throughput_cps"] > 0
    said = "\n".join(render_text(Reply.from_dict(e.payload))
                     for e in jobs.read_events(engine=app.engine, job_id=job.id))
    assert "cases/s" in said and "sent alone after the batch" in said
    with Session(app.engine) as db:
        cases = db.execute(select(CaseResult).where(CaseResult.job_id == job.id)).scalars().all()
    stored = [c.latency_ms for c in cases]
    for c in cases:  # the latency assert judged the stored (single-request) latency
        (lat,) = [sc for sc in c.scores if sc["name"] == "latency"]
        assert lat["passed"] and lat["detail"].startswith(f"{c.latency_ms:.0f} ms"), lat
    # The stored per-case latencies are the single-request ones (not all one batch's share).
    assert statistics.median(stored) == pytest.approx(s["latency_p50_ms"], rel=0.2)
    assert len(set(stored)) > 1

    times += single_requests(backend, prompts[1::2], gen)
    single = statistics.median(times)
    assert 0.7 * single <= s["latency_p50_ms"] <= 1.3 * single, (s["latency_p50_ms"], single)
    # …and the batch is faster per case than one request: throughput is not 1 / latency.
    assert s["throughput_cps"] > 1000.0 / single


def single_requests(backend: HFBackend, prompts: list, gen: GenParams) -> list[float]:  # type: ignore[type-arg]
    """Each prompt sent alone, timed in ms."""
    times = []
    for p in prompts:
        t0 = time.perf_counter()
        backend.generate([p], gen)
        times.append((time.perf_counter() - t0) * 1000)
    return times
