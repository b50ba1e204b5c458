"""`/finetune start`: one job from data check to registered model — check, train, score, register.

Recipe shape: setup (the data check, the config), train (a spawned child that checkpoints and
resumes), then evaluate and register. A retried attempt (the worker died) reruns the data check,
which is deterministic, and the trainer resumes from the job's own last checkpoint.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]  # real class; typeshed omits it
from pathlib import Path
from typing import Any

from tunebot import datasets, registry, stats
from tunebot.datasets.training import Example
from tunebot.metrics import ThreadMetricLogger
from tunebot.replies import Reply, image, section, table
from workers.backends.base import GenParams
from workers.backends.warm import get_backend
from workers.context import JobContext
from workers.runners.data_check import Prepared, prepare
from workers.scoring import ScoreContext, case_passed, default_scorers, score_case
from workers.training.config import TrainConfig
from workers.training.spawn import TrainingCallbacks, TrainResult, run_training

THREAD_EVERY_S = 30.0


class JobCallbacks(TrainingCallbacks):
    """Bridges the trainer to the job: SQL metrics, a rate-limited thread, cancel checks."""

    def __init__(self, ctx: JobContext, prefix: str = "") -> None:
        self.ctx = ctx
        self.sql = ctx.metrics()
        self.thread = ThreadMetricLogger(ctx.say, THREAD_EVERY_S, self._fmt)
        self.total = 0
        self.prefix = prefix

    def _fmt(self, step: int, m: dict[str, float]) -> str:
        parts = [f"step {step}/{self.total}"]
        for key, label in (("train_loss", "train"), ("val_loss", "val"),
                           ("token_accuracy", "token acc"), ("examples_per_s", "ex/s")):
            if key in m:
                parts.append(f"{label} {m[key]:.3g}")
        return self.prefix + " · ".join(parts)

    def on_start(self, info: dict[str, Any]) -> None:
        """Remember the total step count; say when the matmuls run in bf16 on the CPU."""
        self.total = int(info.get("total_steps", 0))
        if info.get("cpu_bf16") and not info.get("resumed_from"):
            self.ctx.say(f"{self.prefix}Training with bf16 matmuls on this CPU "
                         f"({info['cpu_bf16']}).")

    def on_resume(self, step: int) -> None:
        """Drop metrics logged after the checkpoint we resume from (no gaps, no duplicates)."""
        self.sql.truncate_after(step)
        if step:
            self.ctx.say(f"{self.prefix}Resuming from the checkpoint at step {step}.")

    def on_step(self, step: int, total: int) -> None:
        """Progress for the root status line (rate-limited in the context)."""
        self.total = total or self.total
        if self.total:
            self.ctx.progress(step / self.total, f"{self.prefix}step {step}/{self.total}",
                              every=0.25, seconds=THREAD_EVERY_S)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Every metric to SQL; a line in the thread at most every 30 s."""
        self.sql.log(step, **{k: float(v) for k, v in metrics.items()
                              if isinstance(v, int | float)})
        self.thread.log(step, **metrics)

    def on_event(self, kind: str, text: str) -> None:
        """Overfitting warnings, early stopping: said in the thread at once."""
        icon = "⚠ " if kind in ("overfitting", "early_stop") else ""
        self.ctx.say(f"{self.prefix}{icon}{text}")

    def should_stop(self) -> bool:
        """Raises Cancelled / LeaseLost when the job must stop."""
        self.ctx.check()
        return False


@contextmanager
def allow_children() -> Iterator[None]:
    """Let a Celery prefork child (a daemonic process) start the trainer process.

    The trainer must not outlive the worker, which spawn.py guarantees itself (parent-death
    signal, pipe watchdog); the daemon flag only stops multiprocessing from starting it.
    """
    proc = multiprocessing.current_process()
    config = proc._config  # type: ignore[attr-defined]  # private; not in typeshed's stubs
    saved = {k: config.get(k) for k in ("daemon", "authkey")}
    config["daemon"] = False
    # billiard (Celery's pool) installs its own authkey type, which multiprocessing's spawn
    # refuses to pickle; hand it the same key as multiprocessing's own type.
    key = bytes(saved["authkey"]) if saved["authkey"] is not None else os.urandom(32)
    config["authkey"] = AuthenticationString(key)
    try:
        yield
    finally:
        config.update(saved)


def train(config: TrainConfig, train_set: list[Example], val_set: list[Example], folder: Path,
          callbacks: TrainingCallbacks) -> TrainResult:
    """run_training from inside a worker process."""
    with allow_children():
        return run_training(config, train_set, val_set, folder, callbacks)


def code_version() -> str:
    """The short git commit of the running code (part of every reuse key), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


class FinetuneRunner:
    """Data check → LoRA training in a child process → held-out score → registered model."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params

    def run(self) -> dict[str, Any]:
        """The whole fine-tune."""
        ctx = self.ctx
        prep = prepare(ctx)
        device = prep.estimate.get("device", "cpu")
        config = TrainConfig.from_hyperparams(prep.hp, model_dir=str(prep.model_dir),
                                              device=device)
        if prep.folds:
            result, fold_scores = self._kfold(prep, config)
        else:
            result = train(config, prep.train, prep.val, ctx.artifact_dir, JobCallbacks(ctx))
            fold_scores = []
        ctx.check()
        score, side_by_side = self._held_out(prep, result)
        learned, note = learning_verdict(result, score)
        mv = self._register(prep, result, score, device, learned, note)
        ref = f"ft:{mv.name}@{mv.version}"
        blocks = [section(
            f"Registered {ref} (best step {result.best_step}"
            + (f", val loss {result.best_val_loss:.3f}" if result.best_val_loss is not None
               else "") + f"). Trained {result.final_step}/{result.total_steps} steps in "
            f"{result.train_seconds:.0f} s, {result.examples_per_s:.2f} ex/s"
            + (" — stopped early." if result.stopped_early else "."))]
        if score is not None:
            blocks.append(section(
                f"Held-out accuracy {score['tuned']:.1%} (95% CI "
                f"{stats.format_ci(*score['tuned_ci'])}) vs base {score['base']:.1%} on "
                f"{score['n']} validation examples."))
        if fold_scores:
            mean = sum(fold_scores) / len(fold_scores)
            sd = (sum((x - mean) ** 2 for x in fold_scores) / max(len(fold_scores) - 1, 1)) ** .5
            blocks.append(section(f"{len(fold_scores)}-fold held-out accuracy: "
                                  + ", ".join(f"{x:.1%}" for x in fold_scores)
                                  + f" · mean {mean:.1%} ± {sd:.1%}"))
        if side_by_side:
            blocks.append(table(["input", "expected", "base", "tuned"], side_by_side))
        if result.loss_png is not None and Path(result.loss_png).is_file():
            blocks.append(image(str(result.loss_png), "loss curve (train vs validation)"))
        ctx.say(Reply(text=f"Registered {ref}", blocks=blocks))
        if learned is False:
            hp = prep.hp
            lr, epochs = float(hp.get("lr") or 2e-4), int(hp.get("epochs") or 3)
            ctx.say(Reply(text=f"⚠ {ref} did not learn its task: {note}. Try a higher learning "
                          f"rate or more epochs (it trained at lr={lr:g}, epochs={epochs}: e.g. "
                          f"lr={min(lr * 2, 1e-2):g} epochs={min(epochs * 2, 25)}), more "
                          "training rows, or template=full if the task lives in the prompt. "
                          "/compare with it says nothing about fine-tuning."))
        return {"model": ref, "learned": learned, "learning_note": note,
                "best_step": result.best_step, "best_val_loss": result.best_val_loss,
                "final_step": result.final_step, "held_out": score,
                "folds": fold_scores, "stopped_early": result.stopped_early,
                "headline": f"{ref} registered"}

    def _kfold(self, prep: Prepared, config: TrainConfig) -> tuple[TrainResult, list[float]]:
        best: tuple[float, TrainResult, Path] | None = None
        scores: list[float] = []
        for i, (fold_train, fold_val) in enumerate(prep.folds, start=1):
            folder = self.ctx.artifact_dir / f"fold-{i}"
            res = train(config, fold_train, fold_val, folder,
                        JobCallbacks(self.ctx, prefix=f"fold {i}/{len(prep.folds)}: "))
            fold_prep = Prepared(fold_train, fold_val, [], prep.hp, prep.estimate, prep.model_dir,
                                 prep.output_spec, prep.scorers)
            sc, _ = self._held_out(fold_prep, res, show=0)
            scores.append(sc["tuned"] if sc else 0.0)
            key = res.best_val_loss if res.best_val_loss is not None else float("inf")
            if best is None or key < best[0]:
                best = (key, res, folder)
        assert best is not None
        return best[1], scores

    def _held_out(self, prep: Prepared, result: TrainResult,
                  show: int = 5) -> tuple[dict[str, Any] | None, list[list[str]]]:
        """Score the validation split with the prompt-test scorers: base vs tuned."""
        if not prep.val or result.adapter_dir is None:
            return None, []
        prompts = [ex.messages[:-1] for ex in prep.val]
        expected = [ex.messages[-1]["content"] for ex in prep.val]
        spec = prep.output_spec or {"format": "text"}
        specs = prep.scorers or default_scorers(spec, expected=expected[0])
        max_new = max(8, min(256, max(len(e) for e in expected) // 2 + 8))
        gen = GenParams(temperature=0.0, max_new_tokens=max_new)
        outputs: dict[str, list[str]] = {}
        passed: dict[str, list[bool]] = {}
        values: dict[str, float] = {}
        for name, adapter in (("base", None), ("tuned", Path(result.adapter_dir))):
            self.ctx.check()
            backend = get_backend(str(prep.model_dir.resolve()), self.ctx.settings,
                                  adapter_dir=adapter)
            gens = backend.generate(prompts, gen)
            outputs[name] = [g.text for g in gens]
            scored = [score_case(g.text, exp, None, specs, ScoreContext(output_spec=spec))
                      for g, exp in zip(gens, expected, strict=True)]
            passed[name] = [bool(case_passed(s)) for s in scored]
            # The graded side too (similarity, F1…): free text can improve below a pass mark.
            values[name] = sum(sum(x.value for x in s) / len(s) if s else 0.0
                               for s in scored) / max(len(scored), 1)
        n = len(expected)
        k_t, k_b = sum(passed["tuned"]), sum(passed["base"])
        score = {"n": n, "tuned": k_t / n, "base": k_b / n, "tuned_ci": list(stats.wilson(k_t, n)),
                 "base_ci": list(stats.wilson(k_b, n)), "tuned_value": values["tuned"],
                 "base_value": values["base"]}
        rows = [[_snip(prompts[i][-1]["content"]), _snip(expected[i], 20),
                 _snip(outputs["base"][i], 24), _snip(outputs["tuned"][i], 24)]
                for i in range(min(show, n))]
        return score, rows

    def _register(self, prep: Prepared, result: TrainResult, score: dict[str, Any] | None,
                  device: str, learned: bool | None, note: str) -> Any:
        ctx, p = self.ctx, self.p
        assert result.adapter_dir is not None
        adapter = Path(result.adapter_dir)
        # The examples it trained on, beside the adapter: /compare excludes them from eval.
        (adapter.parent / "train.jsonl").write_text("".join(
            json.dumps({"messages": ex.messages}) + "\n" for ex in prep.train))
        pinned = p.get("prompt")
        name = p.get("name") or (pinned["name"] if pinned else p["dataset"])
        ds = datasets.get_dataset(engine=ctx.engine, team_id=ctx.job.team_id, name=p["dataset"],
                         version=p.get("dataset_version"))
        return registry.register(
            engine=ctx.engine, team_id=ctx.job.team_id, name=name, created_by=ctx.job.requested_by,
            base_model=p["model"] if not str(p["model"]).startswith("ft:") else str(prep.model_dir),
            adapter_path=str(adapter), dataset_hash=ds.content_hash,
            prompt_ref=f"{pinned['name']}@{pinned['version']}" if pinned else None,
            template=p.get("template") or "minimal",
            hyperparams={k: v for k, v in prep.hp.items() if v is not None},
            code_version=code_version(), best_step=result.best_step, job_id=ctx.job_id,
            metrics={"best_val_loss": result.best_val_loss, "train_seconds": result.train_seconds
                     or result.seconds, "device": device, "train_examples": len(prep.train),
                     "val_examples": len(prep.val), "data_check_seconds": prep.seconds,
                     "examples_per_s": result.examples_per_s, "held_out": score,
                     "learned": learned, "learning_note": note, "finished_at": time.time()})


MIN_LOSS_DROP = 0.10  # a validation loss that never fell 10% below its first value did not move
MIN_GRADED_GAIN = 0.02  # a tie on pass/fail still counts as learning when the mean score rose


def learning_verdict(result: TrainResult, score: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether the tuned model learned its task, and why not: it is not better than its base
    on the validation split (unless the base is already perfect), or its validation loss never
    fell meaningfully below the first evaluation. None when there is nothing to judge by."""
    reasons = []
    if score is not None and score["n"] > 0:
        graded_gain = score.get("tuned_value", 0.0) - score.get("base_value", 0.0)
        tie = score["tuned"] == score["base"] < 1.0 and graded_gain <= MIN_GRADED_GAIN
        if score["tuned"] < score["base"] or tie:
            reasons.append(f"held-out {score['tuned']:.1%} is no better than the base model's "
                           f"{score['base']:.1%}")
    losses = [float(h["val_loss"]) for h in result.history if h.get("val_loss") is not None]
    if len(losses) >= 2 and min(losses[1:]) > losses[0] * (1 - MIN_LOSS_DROP):
        reasons.append(f"validation loss {min(losses):.3g} never fell {MIN_LOSS_DROP:.0%} below "
                       f"its first evaluation ({losses[0]:.3g})")
    if reasons:
        return False, "; ".join(reasons)
    if (score is None or score["n"] == 0) and len(losses) < 2:
        return None, "no validation split to judge it by"
    return True, ""


def _snip(text: str, n: int = 50) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
