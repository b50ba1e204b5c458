"""LoRA training through the real spawned child: learning, masking, early stopping, checkpoints,
SIGKILL and resume, parent death, cancel; plus the pure parts (labels, batching, estimate)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from tunebot.datasets.split import split
from tunebot.datasets.training import Example
from tunebot.errors import Cancelled, JobError
from workers.training import TrainConfig, TrainingCallbacks, estimate, run_training
from workers.training import checkpoint as ckpt
from workers.training.collate import (
    IGNORE,
    Encoded,
    MaskedBatchError,
    batch_order,
    collate,
    encode_all,
    encode_chat,
    step_plan,
    truncate,
)
from workers.training.loss import supervised_loss
from workers.training.monitor import Monitor

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"red": "warm", "orange": "warm", "yellow": "warm", "pink": "warm", "brown": "warm",
           "blue": "cool", "green": "cool", "purple": "cool", "teal": "cool", "grey": "cool"}


def chat(user: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def colour_examples(swap: bool = False) -> list[Example]:
    """40 examples: 10 colours × 4 spellings; swap=True gives every colour the other answer."""
    other = {"warm": "cool", "cool": "warm"}
    out = []
    for i in range(4):
        for colour, answer in COLOURS.items():
            a = other[answer] if swap else answer
            out.append(Example(len(out) + 1, chat(f"colour: {colour}" + " ." * i, a)))
    return out


def tiny_config(model_dir: Path, **over: Any) -> TrainConfig:
    # One thread: these matmuls are tiny, and a second thread only adds synchronisation
    # (with other jobs on the cores, several times slower).
    base: dict[str, Any] = {
        "model_dir": str(model_dir), "epochs": 20, "lr": 1e-2, "batch_size": 8, "lora_r": 16,
        "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
        "max_seq_len": 64, "eval_every": 10, "patience": 20, "warmup_ratio": 0.0, "seed": 3,
        # fp32 whatever the CPU: these tests pin fp32's numbers (bf16 has its own test below)
        "threads": 1, "cpu_bf16": False}
    return TrainConfig(**(base | over))


class Recorder(TrainingCallbacks):
    """Keeps what a metric logger would: one row per step, truncated on resume."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.events: list[tuple[str, str]] = []
        self.evals: list[tuple[int, float]] = []
        self.resumed: list[int] = []
        self.info: dict[str, Any] = {}
        self.steps: list[int] = []

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_resume(self, step: int) -> None:
        self.resumed.append(step)
        self.metrics = {s: m for s, m in self.metrics.items() if s <= step}

    def on_step(self, step: int, total: int) -> None:
        self.steps.append(step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        assert step not in self.metrics, f"step {step} logged twice"
        self.metrics[step] = metrics

    def on_eval(self, step: int, val_loss: float) -> None:
        self.evals.append((step, val_loss))

    def on_event(self, kind: str, text: str) -> None:
        self.events.append((kind, text))


def greedy_hits(model_dir: Path, adapter: Path | None, examples: list[Example]) -> int:
    """How many examples the model answers exactly (greedy, a few new tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    hits = 0
    for ex in examples:
        prompt = tok.apply_chat_template(ex.messages[:-1], tokenize=False,
                                         add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        hits += text == ex.messages[-1]["content"]
    return hits


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def colour_split() -> tuple[list[Example], list[Example]]:
    train, val, _ = split(colour_examples(), val_split=0.2, seed=1)
    return train, val


@pytest.fixture(scope="module")
def run_a(tiny_model_dir: Path, colour_split, tmp_path_factory) -> tuple[Any, Recorder, Path]:
    """One uninterrupted training on the colour task (32 train / 8 validation, 80 steps)."""
    art = tmp_path_factory.mktemp("run-a")
    rec = Recorder()
    train, val = colour_split
    result = run_training(tiny_config(tiny_model_dir, checkpoint_every=3), train, val, art, rec)
    return result, rec, art


# --- labels, truncation, batches (in process) --------------------------------------------


def supervised_text(tok: Any, enc: Encoded) -> str:
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True)
                       if lab != IGNORE])


def test_only_the_answer_and_its_end_of_turn_are_supervised(tok):
    enc = encode_chat(tok, chat("colour: red", "warm"), max_seq_len=64)
    assert supervised_text(tok, enc) == "warm<|im_end|>"
    assert enc.labels[-1] == IGNORE  # the newline after <|im_end|> is not learnt
    full = tok.decode(enc.input_ids)
    assert full == tok.apply_chat_template(chat("colour: red", "warm"), tokenize=False)
    sup = [t for t, lab in enumerate(enc.labels) if lab != IGNORE]
    assert sup == list(range(sup[0], sup[-1] + 1))  # one contiguous span


def test_every_assistant_turn_is_learnt_except_weight_zero(tok):
    messages = [{"role": "system", "content": "answer warm or cool"},
                {"role": "user", "content": "colour: red"},
                {"role": "assistant", "content": "hot", "weight": 0},
                {"role": "user", "content": "no, one word"},
                {"role": "assistant", "content": "warm"},
                {"role": "user", "content": "and blue"},
                {"role": "assistant", "content": "cool"}]
    enc = encode_chat(tok, messages, max_seq_len=256)
    assert supervised_text(tok, enc) == "warm<|im_end|>cool<|im_end|>"


def test_truncation_keeps_the_answer_and_cuts_the_prompt_from_the_left(tok):
    long = chat("colour: " + "very " * 40 + "red", "warm")
    enc = encode_chat(tok, long, max_seq_len=24)
    assert enc.truncated and len(enc.input_ids) == 24
    assert supervised_text(tok, enc) == "warm<|im_end|>"
    tail = "red<|im_end|>\n<|im_start|>assistant\nwarm<|im_end|>\n"
    assert tok.decode(enc.input_ids).endswith(tail)
    # an answer longer than the window: half the window for the prompt's tail, answer cut
    cut = truncate(Encoded(list(range(30)), [IGNORE] * 10 + list(range(10, 30))), 16)
    assert cut.input_ids == list(range(2, 18)) and cut.labels[:8] == [IGNORE] * 8


def test_an_all_masked_batch_is_an_error_not_a_no_op(tiny_model_dir, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    enc = encode_chat(tok, chat("colour: red", "warm"), max_seq_len=64)
    masked = Encoded(enc.input_ids, [IGNORE] * len(enc.labels))
    with pytest.raises(MaskedBatchError, match="no supervised tokens"):
        supervised_loss(model, collate([masked, masked], tok.pad_token_id))
    only_weight_zero = [{"role": "user", "content": "x"},
                        {"role": "assistant", "content": "y", "weight": 0}]
    with pytest.raises(MaskedBatchError, match="line 1 has no assistant tokens"):
        encode_all(tok, [Example(1, only_weight_zero)], 64)


PATHS = {"packed, prefix once": {}, "padded, prefix cache": {"pack": False},
         "padded": {"pack": False, "share_prefix": False},
         "packed, no prefix": {"share_prefix": False}}


def test_every_loss_path_gives_transformers_loss_and_the_same_gradients(tiny_model_dir, tok):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.eval()  # no dropout: every path must agree to rounding
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # make the adapter matter
    items = encode_all(tok, [[{"role": "system", "content": "classify the colour"},
                              *chat("colour: " + "red " * k, "warm")] for k in range(1, 6)], 64)
    batch = collate(items, tok.pad_token_id)
    assert batch.shared_prefix >= 8
    mask = torch.zeros_like(batch.input_ids)
    for r, e in enumerate(items):
        mask[r, : len(e.input_ids)] = 1
    # transformers' own loss: every logit computed, mean over the supervised tokens
    ref = model(input_ids=batch.input_ids, attention_mask=mask, labels=batch.labels)
    ref.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for path, kwargs in PATHS.items():
        model.zero_grad()
        out = supervised_loss(model, batch, **kwargs)
        (out.loss_sum / out.n_tokens).backward()
        assert out.n_tokens == batch.n_supervised
        assert out.loss_sum.item() / out.n_tokens == pytest.approx(ref.loss.item(), rel=1e-5), path
        for name, grad in ref_grads.items():
            got = dict(model.named_parameters())[name].grad
            torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=path)


def test_length_grouped_batches_pad_less_and_replay_exactly():
    lengths = [(i * 37) % 90 + 10 for i in range(200)]
    grouped = batch_order(lengths, 8, seed=5, epoch=0)
    plain = batch_order(lengths, 8, seed=5, epoch=0, group_by_length=False)

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)

    assert sorted(i for b in grouped for i in b) == list(range(200))
    assert padding(grouped) < padding(plain) / 4
    assert grouped == batch_order(lengths, 8, seed=5, epoch=0)
    assert grouped != batch_order(lengths, 8, seed=5, epoch=1)


def test_step_plan_groups_accumulation_within_epochs():
    plan = step_plan([5] * 20, batch_size=4, grad_accum=2, epochs=3, seed=0)
    assert len(plan) == 9  # 5 batches an epoch → 3 steps (2 + 2 + 1) × 3 epochs
    assert [e for e, _ in plan] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [len(m) for _, m in plan[:3]] == [2, 2, 1]
    assert len(step_plan([5] * 20, batch_size=4, grad_accum=2, epochs=3, seed=0,
                         max_steps=4)) == 4


def test_monitor_warns_on_overfitting_and_stops_with_patience():
    m = Monitor(patience=3)
    assert m.observe(10, 2.0, 1.5) == []
    assert m.observe(20, 1.5, 1.2) == []
    assert m.observe(30, 1.0, 1.3) == []  # one rise: no warning yet
    events = m.observe(40, 0.7, 1.4)  # second rise while training loss fell
    assert [k for k, _ in events] == ["overfitting"]
    assert "1.200 → 1.300 → 1.400" in events[0][1] and "best step so far is 20" in events[0][1]
    events = m.observe(50, 0.5, 1.5)  # third evaluation without improvement: patience 3
    assert [k for k, _ in events] == ["early_stop"]  # the warning is not repeated
    assert "step 50" in events[0][1] and "keeping step 20" in events[0][1]
    assert m.should_stop and m.best_step == 20
    again = Monitor.from_state(json.loads(json.dumps(m.state_dict())))
    assert again == m
    off = Monitor(patience=1, enabled=False)
    off.observe(1, 1.0, 1.0)
    off.observe(2, 0.5, 2.0)
    assert not off.should_stop


def test_estimate_arithmetic():
    hp = {"epochs": 3, "batch_size": 8, "grad_accum": 1, "max_seq_len": 80, "lora_r": 16,
          "eval_every": 9}
    e = estimate(216, [50] * 200 + [100] * 16, hp, 134_515_008, "cpu", n_val=24,
                 model_shape={"hidden_size": 576, "num_layers": 30})
    assert e["steps_per_epoch"] == 27 and e["total_steps"] == 81 and e["evaluations"] == 9
    assert e["tokens_per_epoch"] == 200 * 50 + 16 * 80  # clipped at max_seq_len
    assert e["tokens_total"] == 3 * e["tokens_per_epoch"]
    tps = e["tokens_per_s"]
    train_s = e["tokens_total"] / tps
    eval_s = 9 * 24 * (e["tokens_per_epoch"] / 216) / (3 * tps)
    assert e["seconds"] == pytest.approx(20 + train_s + eval_s)
    assert 200 * 2**20 < e["peak_memory_bytes"] < 4 * 2**30
    assert estimate(216, [50] * 216, hp, 2 * 134_515_008, "cpu")["tokens_per_s"] == \
        pytest.approx(tps / 2)
    tight = estimate(216, [50] * 216, hp, 134_515_008, "cpu", memory_budget_bytes=10**8,
                     model_shape={"hidden_size": 576, "num_layers": 30})
    assert tight["gradient_checkpointing"] and tight["peak_memory_bytes"] < e["peak_memory_bytes"]


def test_checkpoint_reads_only_inside_the_artifact_folder(tmp_path):
    art = tmp_path / "job-1"
    art.mkdir()
    outside = tmp_path / "evil.pt"
    torch.save({"x": 1}, outside)
    with pytest.raises(JobError, match="not inside this job's artifact folder"):
        ckpt.inside(art / ".." / "evil.pt", art)
    (art / "link.pt").symlink_to(outside)
    with pytest.raises(JobError):
        ckpt.inside(art / "link.pt", art)
    assert ckpt.inside(art / "a" / "b.pt", art) == (art / "a" / "b.pt").resolve()


def test_rng_states_round_trip_through_weights_only(tmp_path):
    import random

    import numpy as np

    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


class ListReporter:
    """The recipe's reporter for in-process runs."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []

    def send(self, kind: str, *payload: Any) -> None:
        self.messages.append((kind, *payload))

    def stop_requested(self) -> bool:
        return False


def test_checkpoints_from_other_settings_are_not_resumed(tiny_model_dir, tmp_path):
    from workers.training.recipe import FinetuneRecipe

    train = colour_examples()[:16]
    first = FinetuneRecipe(tiny_config(tiny_model_dir, max_steps=3), train, [], tmp_path,
                           ListReporter())
    first.setup()
    first.train()
    assert ckpt.complete_steps(tmp_path / "checkpoints") == [3]
    rep = ListReporter()
    other = FinetuneRecipe(tiny_config(tiny_model_dir, max_steps=2, lr=1e-3), train, [],
                           tmp_path, rep)
    other.setup()
    assert other.step == 0
    assert [m[1] for m in rep.messages if m[0] == "event"] == ["restart"]
    assert ckpt.complete_steps(tmp_path / "checkpoints") == []


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path, monkeypatch):
    from workers.training import spawn

    monkeypatch.setattr(spawn, "LOCK_WAIT_S", 0.3)
    with spawn._train_lock(tmp_path):
        with pytest.raises(JobError, match="another training process is still running"):
            with spawn._train_lock(tmp_path):
                pass
    with spawn._train_lock(tmp_path):  # released with its holder
        pass


# --- through the spawned child -----------------------------------------------------------


def test_the_loss_falls_and_the_tuned_model_answers_better(run_a, tiny_model_dir, colour_split):
    result, rec, art = run_a
    assert result.final_step == result.total_steps == 80
    train_losses = [m["train_loss"] for _, m in sorted(rec.metrics.items())]
    assert train_losses[-1] < train_losses[0] / 5
    assert rec.evals[-1][1] < rec.evals[0][1] / 3
    _, val = colour_split
    assert greedy_hits(tiny_model_dir, result.adapter_dir, val) > \
        greedy_hits(tiny_model_dir, None, val)
    assert greedy_hits(tiny_model_dir, result.adapter_dir, val) >= len(val) - 2


def test_the_run_is_monitored_and_its_artifacts_are_standard(run_a):
    result, rec, art = run_a
    assert sorted(rec.metrics) == list(range(1, 81))  # every step logged once, in order
    m = rec.metrics[10]
    assert {"train_loss", "token_accuracy", "lr", "tokens_per_s", "examples_per_s",
            "memory_bytes", "val_loss", "val_token_accuracy"} <= set(m)
    assert m["memory_bytes"] > 50 * 2**20 and m["tokens_per_s"] > 0
    assert [s for s, _ in rec.evals] == list(range(10, 81, 10))
    assert result.best_step == min(rec.evals, key=lambda e: e[1])[0]
    assert result.best_val_loss == pytest.approx(min(v for _, v in rec.evals))
    assert rec.info["device"] == "cpu" and rec.info["dtype"] == "float32"
    assert rec.info["share_prefix"] is True
    assert result.adapter_dir == art / "adapter"
    assert {p.name for p in result.adapter_dir.iterdir()} >= {"adapter_model.safetensors",
                                                             "adapter_config.json"}
    assert (art / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kept = ckpt.complete_steps(art / "checkpoints")
    assert set(kept) == {80, result.best_step}
    assert result.examples_per_s > 0 and result.peak_mem > 0


def test_sigkill_of_the_trainer_then_resume_reaches_the_same_end(run_a, tiny_model_dir,
                                                                  colour_split, tmp_path):
    result_a, rec_a, _ = run_a
    train, val = colour_split
    config = tiny_config(tiny_model_dir, checkpoint_every=3)

    class KillAt(Recorder):
        def on_step(self, step: int, total: int) -> None:
            super().on_step(step, total)
            if step == 41:
                os.kill(self.info["pid"], signal.SIGKILL)

    rec = KillAt()
    with pytest.raises(JobError, match="training process died .*SIGKILL"):
        run_training(config, train, val, tmp_path, rec)
    assert not psutil.pid_exists(rec.info["pid"]) or \
        psutil.Process(rec.info["pid"]).status() == psutil.STATUS_ZOMBIE
    last = max(ckpt.complete_steps(tmp_path / "checkpoints"))
    assert 39 <= last < 80  # every 3 steps and at each evaluation; the child may run ahead

    rec.__class__ = Recorder  # the same metric store, no more killing
    result = run_training(config, train, val, tmp_path, rec)
    assert rec.resumed == [0, last]
    assert result.final_step == result_a.final_step == 80
    assert sorted(rec.metrics) == sorted(rec_a.metrics)  # continuous, no duplicates
    for step, m in rec_a.metrics.items():
        assert rec.metrics[step]["train_loss"] == pytest.approx(m["train_loss"], rel=1e-3)
    assert result.best_val_loss == pytest.approx(result_a.best_val_loss, rel=1e-3)
    assert ("resumed", f"resumed from the checkpoint at step {last}/80") in rec.events


def test_cancel_stops_at_a_step_and_keeps_its_checkpoint(tiny_model_dir, colour_split, tmp_path):
    train, val = colour_split

    class CancelAt(Recorder):
        def should_stop(self) -> bool:
            if self.steps and self.steps[-1] >= 4:
                raise Cancelled()
            return False

    rec = CancelAt()
    with pytest.raises(Cancelled):
        run_training(tiny_config(tiny_model_dir), train, val, tmp_path, rec)
    steps = ckpt.complete_steps(tmp_path / "checkpoints")
    assert steps and 4 <= steps[-1] <= 6  # the step in flight finishes, then it stops
    progress = json.loads((ckpt.step_dir(tmp_path / "checkpoints", steps[-1]) /
                           "progress.json").read_text())
    assert progress["step"] == steps[-1] and not progress["finished"]
    assert not (tmp_path / "adapter").exists()
    assert not psutil.pid_exists(rec.info["pid"]) or \
        psutil.Process(rec.info["pid"]).status() == psutil.STATUS_ZOMBIE


def test_early_stopping_when_validation_disagrees_with_training(tiny_model_dir, tmp_path):
    # Training always answers warm, validation always cool: the better the model learns the
    # training set, the worse validation gets.
    train = [Example(i + 1, chat(f"colour: {c}" + " ." * k, "warm"))
             for i, (k, c) in enumerate((k, c) for k in range(3) for c in COLOURS)][:24]
    val = [Example(i + 1, chat(f"colour: {c} . . .", "cool")) for i, c in enumerate(COLOURS)][:8]
    rec = Recorder()
    cfg = tiny_config(tiny_model_dir, epochs=10, eval_every=2, patience=3)
    result = run_training(cfg, train, val, tmp_path, rec)
    kinds = [k for k, _ in rec.events]
    assert "early_stop" in kinds and "overfitting" in kinds
    assert result.stopped_early and result.final_step < result.total_steps == 30
    assert result.best_step < result.final_step
    best = ckpt.step_dir(tmp_path / "checkpoints", result.best_step) / "adapter"
    assert (best / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()


PARENT = """
import sys
from pathlib import Path
from workers.training import TrainConfig, TrainingCallbacks, run_training

class Say(TrainingCallbacks):
    def on_step(self, step, total):
        print("STEP", step, "torch" in sys.modules, flush=True)

if __name__ == "__main__":
    ex = [[{"role": "user", "content": f"colour: {c}"}, {"role": "assistant", "content": a}]
          for c, a in [("red", "warm"), ("blue", "cool")] * 16]
    config = TrainConfig(model_dir=sys.argv[1], epochs=25, batch_size=4, max_seq_len=64,
                         threads=1)
    run_training(config, ex, [], Path(sys.argv[2]), Say())
"""


def test_the_trainer_dies_with_its_parent(tiny_model_dir, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, str(script), str(tiny_model_dir),
                               str(tmp_path / "art")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        for line in parent.stdout:
            if line.startswith("STEP 2"):
                break
        assert line.split() == ["STEP", "2", "False"]  # the worker's process never loads torch
        family = psutil.Process(parent.pid).children(recursive=True)
        trainers = [p for p in family if "spawn_main" in " ".join(p.cmdline())]
        assert len(trainers) == 1
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        alive = family
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        assert alive == [], f"left behind: {[p.cmdline() for p in alive]}"
        with open(tmp_path / "art" / ".train.lock", "w") as f:  # its lock died with it
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from workers.backends.gguf_cache import converted_dir

    # A fixed place under the temp dir: the GGUF is dequantised once per machine, not per run.
    return converted_dir(Path(tempfile.gettempdir()) / "tunebot-test-models")


@pytest.mark.smollm2
def test_smollm2_fine_tunes_and_its_adapter_loads_with_peft(smollm2_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = [json.loads(line) for line in
            (REPO / "prompts/datasets/sentiment-train.jsonl").read_text().splitlines()[:16]]
    train = [Example(i + 1, chat(f"text: {r['text']}", r["expected"])) for i, r in enumerate(rows)]
    config = TrainConfig(model_dir=str(smollm2_dir), epochs=1, batch_size=4, lora_r=8,
                         lora_alpha=16, target_modules=["q_proj", "v_proj"], max_seq_len=96,
                         max_steps=4, lr=1e-3)
    rec = Recorder()
    result = run_training(config, train, [], tmp_path, rec)
    assert result.final_step == 4 and sorted(rec.metrics) == [1, 2, 3, 4]
    assert rec.info["target_modules"] == ["q_proj", "v_proj"] and rec.info["share_prefix"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir),
                                      result.adapter_dir)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(trained) == 60 and any(p.abs().sum() > 0 for p in trained)


def test_learning_verdict_reads_the_validation_split_and_the_loss_curve() -> None:
    from workers.runners.finetune import learning_verdict
    from workers.training.spawn import TrainResult

    def result(*losses: float) -> TrainResult:
        return TrainResult(best_step=1, best_val_loss=min(losses) if losses else None,
                           final_step=10, adapter_dir=None, seconds=1.0, examples_per_s=1.0,
                           tokens_per_s=1.0, peak_mem=0,
                           history=[{"step": i, "val_loss": v} for i, v in enumerate(losses)])

    def score(tuned: float, base: float) -> dict:
        return {"n": 48, "tuned": tuned, "base": base}

    assert learning_verdict(result(2.0, 0.4), score(0.85, 0.2)) == (True, "")
    flat, why = learning_verdict(result(6.8, 6.7, 6.7), score(0.0, 0.2))
    assert flat is False and "no better than the base model's 20.0%" in why \
        and "never fell 10% below its first evaluation (6.8)" in why
    assert learning_verdict(result(2.0, 0.5), score(0.3, 0.3))[0] is False  # tie: nothing gained
    assert learning_verdict(result(2.0, 0.5), score(1.0, 1.0))[0] is True  # base already perfect
    assert learning_verdict(result(), None) == (None, "no validation split to judge it by")
    # Free text: no case passes either way, but the graded score rose — it learned.
    graded = {"n": 10, "tuned": 0.0, "base": 0.0, "tuned_value": 0.61, "base_value": 0.22}
    assert learning_verdict(result(1.9, 1.7), graded)[0] is True
    assert learning_verdict(result(1.9, 1.7), {**graded, "tuned_value": 0.23})[0] is False


# --- bf16 on a CPU that has it (in process, so the CPU check can be stood in for) --------------


class _Quiet:
    """The reporter a recipe run in process needs: keeps the step losses, never stops."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []
        self.start: dict[str, Any] = {}

    def send(self, kind: str, *payload: Any) -> None:
        if kind == "log":
            self.logs.append(payload[1])
        elif kind == "start":
            self.start = payload[0]

    def stop_requested(self) -> bool:
        return False


@pytest.mark.parametrize("native", ["avx512_bf16", None])
def test_cpu_bf16_training_keeps_lora_fp32_and_learns(tiny_model_dir, colour_split, tmp_path,
                                                      monkeypatch, native):
    from safetensors import safe_open

    from workers.backends import cpu_linear
    from workers.training.recipe import FinetuneRecipe

    # torch runs bf16 on any x86 CPU (emulated where there is no native support): stand in for
    # the CPU check so the bf16 path is tested everywhere, and its absence too.
    monkeypatch.setattr(cpu_linear, "bf16_native", lambda: native)
    train, val = colour_split
    reporter = _Quiet()
    recipe = FinetuneRecipe(tiny_config(tiny_model_dir, cpu_bf16=True, epochs=10), train, val,
                            tmp_path, reporter)
    recipe.setup()
    q = recipe.model.get_base_model().model.layers[0].self_attn.q_proj
    emb = recipe.model.get_base_model().get_input_embeddings().weight
    head = recipe.model.get_base_model().get_output_embeddings().weight
    trainable = [p for p in recipe.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # optimizer sees fp32
    assert emb.dtype == head.dtype == torch.float32
    if native:
        assert recipe.facts["autocast"] == "bfloat16" and native in recipe.facts["cpu_bf16"]
        assert q.base_layer.weight.dtype == torch.bfloat16 and not q.base_layer.weight.requires_grad
    else:
        assert recipe.facts["autocast"] is None and "cpu_bf16" not in recipe.facts
        assert q.base_layer.weight.dtype == torch.float32
    result = recipe.train()
    assert reporter.start["autocast"] == recipe.facts["autocast"]  # the thread is told
    losses = [m["train_loss"] for m in reporter.logs]
    assert losses[-1] < losses[0] / 3
    adapter = Path(result["adapter_dir"])
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    # Served as tunebot serves it: on the fp32 base, and better than the base alone.
    assert greedy_hits(tiny_model_dir, adapter, val) > greedy_hits(tiny_model_dir, None, val)
    recipe.cleanup()
