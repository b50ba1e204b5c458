"""Worker death: SIGKILL the GPU worker (main process and pool child) three times during one
fine-tune of the tiny model → each time its trainer dies with it, the job resumes from its
checkpoints within max_attempts, never two trainers at once, metrics without gaps or repeats,
and the registered adapter loads and scores.

Full size only (`make reliability`): under `make test` the single-kill resume is
tests/workers/test_finetune_sigkill.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select
from sqlmodel import Session

from tests.reliability.conftest import Report
from tests.workers.test_finetune_e2e import add_train
from tests.workers.test_prompt_test_e2e import run, texts, wait_final, world  # noqa: F401
from tunebot import jobs
from tunebot.models import Metric

# Full size only (`make reliability`): in `make test` it is deselected, not skipped —
# tests/workers/test_finetune_sigkill.py is the reduced run's one SIGKILL resume.
pytestmark = pytest.mark.full_only
HP = ("epochs=20 lr=1e-3 batch_size=1 max_seq_len=48 lora_r=4 eval_every=40 patience=20 "
      "seed=3")
KILLS = 3


def _checkpoint_steps(settings, job_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    root = settings.artifacts / f"job-{job_id}" / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*")
                  if p.name.split("-")[1].isdigit())


def _descendants(worker) -> list[psutil.Process]:  # type: ignore[no-untyped-def]
    """Everything under the pool children: the trainer (and multiprocessing's helpers)."""
    main = psutil.Process(worker.proc.pid)
    return [p for child in main.children() for p in child.children(recursive=True)]


def _is_trainer(p: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def test_three_sigkills_during_one_finetune(world, tmp_path: Path, start_worker,  # type: ignore[no-untyped-def]  # noqa: F811
                                            report: Report) -> None:
    settings, app, actor, worker, model = world
    add_train(app, settings, tmp_path)
    out = run(app, actor, f"/finetune start {model} on colours-train prompt=colours {HP}")
    job_id = out.job.id
    last = -1
    max_trainers = 0
    survivors = 0
    for kill in range(1, KILLS + 1):
        deadline = time.monotonic() + 300
        # Wait for this attempt to write a checkpoint past the one the last kill left behind.
        while True:
            job = jobs.get(engine=app.engine, job_id=job_id)
            steps = _checkpoint_steps(settings, job_id)
            if job.status == "running" and job.attempt == kill and steps and steps[-1] > last:
                trainers = _descendants(worker)
                if any(_is_trainer(p) for p in trainers):
                    break
            assert job.status in ("queued", "running"), (job.status, job.error)
            assert time.monotonic() < deadline, f"kill {kill}: no new checkpoint"
            time.sleep(0.2)
        last = steps[-1]
        max_trainers = max(max_trainers, sum(_is_trainer(p) for p in trainers))
        main = psutil.Process(worker.proc.pid)
        for p in [main, *main.children()]:
            os.kill(p.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(trainers, timeout=15)
        survivors += len(alive)
        assert not alive, f"kill {kill}: trainer outlived its worker: {alive}"
        worker = start_worker(settings, "inference,gpu")  # lease expires; reconciler requeues
    job = wait_final(app.engine, job_id, timeout=600)
    said = "\n".join(texts(app, job_id))
    with Session(app.engine) as s:
        steps = [m.step for m in s.execute(select(Metric).where(
            Metric.job_id == job_id, Metric.name == "train_loss")).scalars()]
    strides = {b - a for a, b in zip(sorted(steps), sorted(steps)[1:], strict=False)}
    resumed = said.count("Resuming from the checkpoint at step")
    test = wait_final(app.engine, run(app, actor, "/prompt test colours on colours-eval "
                                      "model=ft:colours").job.id, timeout=300)
    report.add("2 worker death", "SIGKILLs of the gpu worker during one fine-tune", KILLS,
               held=resumed, lost=KILLS - resumed + survivors,
               duplicated=len(steps) - len(set(steps)),
               note=f"attempt {job.attempt}/{job.max_attempts}, {len(steps)} loss points, "
               f"strides {sorted(strides)}, adapter test {test.status}")
    assert job.status == "succeeded", f"{job.error}\n{said}"
    assert job.attempt == KILLS + 1 <= job.max_attempts and resumed == KILLS
    assert job.result["final_step"] == 20 * 35
    assert len(steps) == len(set(steps)) and max(steps) == 20 * 35
    assert len(strides) == 1, sorted(strides)  # evenly spaced: no gap where a run died
    assert max_trainers == 1
    assert test.status == "succeeded", test.error
