"""run_training: the parent-side API. Training runs in a spawned child that dies with its parent.

The worker process (a Celery pool child) never imports torch for training: it spawns a fresh
interpreter (multiprocessing "spawn" — CUDA and fork don't mix), relays the child's messages
to the caller's callbacks (which write SQL metrics and thread replies), and relays a cancel back.

The child cannot outlive the worker, three ways: on Linux the kernel sends it SIGKILL when its
parent dies (prctl PR_SET_PDEATHSIG, set first thing in the child); a watchdog thread sees the
command pipe hit end-of-file (the parent's end closes when the parent dies, however it dies)
and checks os.getppid() every half second; and the parent kills it in a `finally`. Note that
PDEATHSIG fires when the parent *thread* that started the child exits, which is also when
run_training returns — by then the child has finished.

A child also holds an exclusive lock on ARTIFACTS/.train.lock while it trains, so two trainings
of one job can never write the same folder, even if a lease were wrongly taken twice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tunebot.errors import Cancelled, JobError, LeaseLost, UserError
from workers.training.config import TrainConfig

STOP_GRACE_S = 120.0  # time for a cancelled child to finish its step and write a checkpoint
LOCK_WAIT_S = 30.0


@dataclass
class TrainResult:
    """What a finished (or early-stopped) training produced."""

    best_step: int
    best_val_loss: float | None
    final_step: int
    adapter_dir: Path | None
    history: list[dict[str, Any]]
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    peak_mem: int
    total_steps: int = 0
    supervised_tokens_per_s: float = 0.0
    train_seconds: float = 0.0
    stopped_early: bool = False
    loss_png: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)


class TrainingCallbacks:
    """What the caller hears from a training run; override what you need (all no-ops here).

    Raising Cancelled or LeaseLost from any method (typically should_stop, via
    JobContext.check) stops the run: on Cancelled the child saves a checkpoint first, on
    LeaseLost it stops at once (another worker owns the job and its folder now).
    """

    def on_start(self, info: dict[str, Any]) -> None:
        """Training began: total_steps, resumed_from, device, dtype, target_modules, …"""

    def on_resume(self, step: int) -> None:
        """The run continues from a checkpoint at `step` (0: fresh); drop metrics past it."""

    def on_step(self, step: int, total: int) -> None:
        """An optimizer step finished."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """train_loss, token_accuracy, lr, tokens_per_s, examples_per_s, epoch, memory_bytes,
        and val_loss/val_token_accuracy on evaluation steps."""

    def on_eval(self, step: int, val_loss: float) -> None:
        """A validation pass finished."""

    def on_event(self, kind: str, text: str) -> None:
        """Something to tell the user: overfitting, early_stop, resumed, restart."""

    def should_stop(self) -> bool:
        """Checked at every step: True (or raising Cancelled) cancels with a checkpoint."""
        return False


def run_training(config: TrainConfig, examples_train: list[Any], examples_val: list[Any],
                 artifact_dir: Path, callbacks: TrainingCallbacks | None = None, *,
                 poll_s: float = 0.5) -> TrainResult:
    """Train in a spawned child process; relay its progress to callbacks; return the result.

    Resumes from ARTIFACTS/checkpoints when a previous attempt left one. Raises Cancelled or
    LeaseLost as should_stop did, UserError/JobError for the child's errors, and JobError when
    the child dies (the checkpoints stay; the next attempt resumes from them).
    """
    cb = callbacks or TrainingCallbacks()
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    out_r, out_w = ctx.Pipe(duplex=False)
    cmd_r, cmd_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, name="tunebot-trainer", daemon=True,
                       args=(config, list(examples_train), list(examples_val), str(artifact_dir),
                             out_w, cmd_r, os.getpid()))
    proc.start()
    out_w.close()  # the child holds the only writer: EOF means it is gone
    cmd_r.close()
    relay = _Relay(cb, cmd_w)
    try:
        result = relay.run(out_r, proc, poll_s)
    finally:
        _finish(proc, cmd_w, out_r)
    if relay.pending is not None:
        raise relay.pending
    if relay.error is not None:
        raise relay.error
    if result is None:
        code = proc.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            how += "; out of memory?" if code == -signal.SIGKILL else ""
        else:
            how = f"exit code {code}"
        raise JobError(f"the training process died ({how}) at step {relay.step}. Its last "
                       "checkpoint is kept; a retry resumes from it.")
    return _to_result(result)


class _Relay:
    """Parent side of the pipe: dispatch messages, check should_stop, forward stop/abort."""

    def __init__(self, cb: TrainingCallbacks, cmd: Any) -> None:
        self.cb, self.cmd = cb, cmd
        self.pending: BaseException | None = None
        self.error: BaseException | None = None
        self.step = 0
        self.deadline = float("inf")

    def _request(self, exc: BaseException) -> None:
        if self.pending is not None:
            return
        self.pending = exc
        self.deadline = time.monotonic() + (STOP_GRACE_S if isinstance(exc, Cancelled) else 10)
        try:
            self.cmd.send("abort" if isinstance(exc, LeaseLost) else "stop")
        except OSError:
            pass  # the child is already gone

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (Cancelled, LeaseLost) as exc:
            self._request(exc)
            return None

    def run(self, conn: Any, proc: Any, poll_s: float) -> dict[str, Any] | None:
        while True:
            if self.pending is None and self._call(self.cb.should_stop):
                self._request(Cancelled())
            if time.monotonic() > self.deadline:
                return None
            try:
                ready = conn.poll(poll_s)
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                return None
            if msg is None:
                if not proc.is_alive() and not conn.poll(0):
                    return None
                continue
            kind, *payload = msg
            if kind == "done":
                return cast(dict[str, Any], payload[0])
            if kind == "error":
                self.error = _rebuild(*payload)
                return None
            if kind == "stopped":
                return None
            self._dispatch(kind, payload)

    def _dispatch(self, kind: str, payload: list[Any]) -> None:
        if kind == "step":
            self.step = payload[0]
            self._call(self.cb.on_step, *payload)
        elif kind == "log":
            self._call(self.cb.on_log, *payload)
        elif kind == "eval":
            self._call(self.cb.on_eval, *payload)
        elif kind == "event":
            self._call(self.cb.on_event, *payload)
        elif kind == "resumed":
            self.step = payload[0]
            self._call(self.cb.on_resume, *payload)
        elif kind == "start":
            self._call(self.cb.on_start, *payload)


def _rebuild(kind: str, message: str, tb: str) -> BaseException:
    if kind == "user":
        return UserError(message)
    if kind == "job":
        return JobError(message)
    return JobError(f"training failed: {message}\n{tb[-2000:]}")


def _finish(proc: Any, cmd: Any, conn: Any) -> None:
    proc.join(timeout=5)
    if proc.is_alive():  # the caller's callback failed, or a stop ran out of time
        try:
            cmd.send("abort")
        except OSError:
            pass
        proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=10)
    for c in (cmd, conn):
        try:
            c.close()
        except OSError:
            pass


def _to_result(d: dict[str, Any]) -> TrainResult:
    return TrainResult(
        best_step=d["best_step"], best_val_loss=d["best_val_loss"], final_step=d["final_step"],
        adapter_dir=Path(d["adapter_dir"]) if d["adapter_dir"] else None, history=d["history"],
        seconds=d["seconds"], examples_per_s=d["examples_per_s"],
        tokens_per_s=d["tokens_per_s"], peak_mem=d["peak_mem"], total_steps=d["total_steps"],
        supervised_tokens_per_s=d["supervised_tokens_per_s"],
        train_seconds=d["train_seconds"], stopped_early=d["stopped_early"],
        loss_png=Path(d["loss_png"]) if d["loss_png"] else None, facts=d["facts"])


# --- the child ---------------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); check it is alive."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog thread still covers it
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _ChildReporter:
    """Child side: messages up the pipe; stop/abort and parent death from the watchdog."""

    def __init__(self, out: Any, cmd: Any, parent_pid: int) -> None:
        self.out, self.cmd, self.parent_pid = out, cmd, parent_pid
        self.stop = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._watch, name="parent-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                if self.cmd.poll(0.5):
                    msg = self.cmd.recv()
                    if msg == "abort":
                        os._exit(3)
                    self.stop.set()
            except (EOFError, OSError):
                os._exit(2)  # the parent's end closed: it is gone
            if os.getppid() != self.parent_pid:
                os._exit(2)

    def send(self, kind: str, *payload: Any) -> None:
        """Deliver one message to the parent, or die if the parent is gone."""
        try:
            with self.lock:
                self.out.send((kind, *payload))
        except (BrokenPipeError, OSError):
            os._exit(2)

    def stop_requested(self) -> bool:
        """Whether the parent asked for a stop."""
        return self.stop.is_set()


def child_main(config: TrainConfig, train: list[Any], val: list[Any], artifact_dir: str,
               out: Any, cmd: Any, parent_pid: int) -> None:
    """Entry point of the spawned training process."""
    die_with_parent(parent_pid)
    reporter = _ChildReporter(out, cmd, parent_pid)
    configure_child_env()
    try:
        with _train_lock(Path(artifact_dir)):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            from workers.training.recipe import FinetuneRecipe

            recipe = FinetuneRecipe(config, train, val, Path(artifact_dir), reporter)
            try:
                recipe.setup()
                result = recipe.train()
            finally:
                recipe.cleanup()
        if not result.get("stopped"):
            reporter.send("done", result)
    except BaseException as exc:  # everything goes back to the parent, which decides
        kind = "user" if isinstance(exc, UserError) else "job" if isinstance(exc, JobError) \
            else "internal"
        msg = str(exc) if kind != "internal" else f"{type(exc).__name__}: {exc}"
        reporter.send("error", kind, msg, traceback.format_exc())
    finally:
        out.close()


def configure_child_env() -> None:
    """Library settings for a training process; must run before torch is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a worker never downloads at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin while waiting are a disaster when other processes share the
    # cores: 4 SmolLM2 steps on 2 threads took 70 s spinning vs 14 s passive (1 thread: 10 s)
    # on this project's 2-core machine with other jobs running.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _train_lock:  # noqa: N801 — used as a context manager
    def __init__(self, folder: Path) -> None:
        self.path = folder / ".train.lock"

    def __enter__(self) -> None:
        import fcntl

        self.f = open(self.path, "w")  # noqa: SIM115 — held for the whole training
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JobError("another training process is still running on this job's "
                                   "folder; not starting a second one") from None
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.f.close()
