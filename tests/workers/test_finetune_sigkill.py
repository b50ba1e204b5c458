"""SIGKILL the worker (main process and pool child) mid-fine-tune: the trainer dies with them,
the lease expires, a new worker resumes from the last checkpoint and finishes the job once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
from sqlalchemy import select
from sqlmodel import Session

from tests.workers.test_finetune_e2e import add_train
from tests.workers.test_prompt_test_e2e import run, texts, wait_final, world  # noqa: F401
from tunebot import jobs
from tunebot.models import Metric

HP = ("epochs=20 lr=1e-3 batch_size=1 max_seq_len=48 lora_r=4 eval_every=40 patience=20 "
      "seed=3")


def _checkpoints(settings, job_id: int) -> list[Path]:  # type: ignore[no-untyped-def]
    root = settings.artifacts / f"job-{job_id}" / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def test_sigkill_mid_training_resumes_on_a_new_worker(world, tmp_path: Path,  # type: ignore[no-untyped-def]  # noqa: F811
                                                      start_worker) -> None:
    settings, app, actor, worker, model = world
    add_train(app, settings, tmp_path)
    out = run(app, actor, f"/finetune start {model} on colours-train prompt=colours {HP}")
    job_id = out.job.id
    deadline = time.monotonic() + 240
    while not _checkpoints(settings, job_id):
        assert time.monotonic() < deadline, "no checkpoint was written"
        assert jobs.get(engine=app.engine, job_id=job_id).status in ("queued", "running")
        time.sleep(0.2)
    main = psutil.Process(worker.proc.pid)
    pool = main.children()
    trainers = [p for child in pool for p in child.children(recursive=True)]
    assert trainers, "the training child should be running under the pool child"
    for p in [main, *pool]:  # the worker's own processes only, not the trainer
        os.kill(p.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(trainers, timeout=15)
    assert not alive, f"trainer outlived its worker: {alive}"
    start_worker(settings, "inference,gpu")  # the lease expires; the reconciler requeues it
    job = wait_final(app.engine, job_id, timeout=420)
    said = "\n".join(texts(app, job_id))
    assert job.status == "succeeded", f"{job.error}\n{said}"
    assert job.attempt == 2 and "Resuming from the checkpoint at step" in said
    assert job.result["final_step"] == 20 * 35  # 35 train examples, batch 1, 20 epochs
    with Session(app.engine) as s:
        steps = [m.step for m in s.execute(select(Metric).where(
            Metric.job_id == job_id, Metric.name == "train_loss")).scalars()]
    assert len(steps) == len(set(steps)) and max(steps) == 20 * 35
