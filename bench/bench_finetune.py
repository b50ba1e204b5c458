"""LoRA fine-tuning speed and quality on the bundled SmolLM2: tunebot vs two Trainer scripts.

    python -m bench.bench_finetune [--quick] [--device cpu|cuda] [--out PATH] [--threads N]

The same 64 `sentiment-train` chats (template=minimal: user turn "text: …", answer =
`expected`), LoRA r=8/alpha=16/dropout 0.05 on q_proj,v_proj, max_seq_len, learning rate,
batch size, thread count and number of optimizer steps, trained several ways side by side:

- naive: transformers Trainer + peft, every row padded to max_seq_len, loss on all tokens
  (DataCollatorForLanguageModeling) — the first script most people write;
- trl: TRL SFTTrainer with its defaults (dynamic padding, completion-only loss on
  prompt/completion data, gradient checkpointing on) — what a careful engineer writes;
- trl-nogc: the same with gradient checkpointing off (TRL's default recomputes activations,
  which a 135M model on CPU does not need);
- trl-best: TRL's best CPU configuration we know — completion-only loss, no gradient
  checkpointing, padding-free batches (`padding_free=True`: each batch one flat sequence with
  restarting position ids, which transformers' sdpa masking turns into a block-diagonal mask);
- tunebot: workers.training's recipe (logits only at supervised positions, the batch's shared
  prefix run once, length-grouped batches).

Each variant runs in its own process (so peak memory is its own), rounds interleave the
variants (machine noise hits all alike), and speed is the median over rounds of examples per
second from the start of the training loop to the end of its last optimizer step (model
loading, tokenisation and saving excluded for all). Round r trains with seed 42 + r; after every
round the trained model is scored (greedy accuracy) on all 80 `sentiment-eval` rows, so each
variant has one held-out accuracy per seed, and "equal accuracy" (issue #20: within 3 points)
compares the means. trl is a bench-only dependency
(`pip install trl`). Training memory (CPU): each process's RSS sampled every 5 ms; the peak
increase between the start of the training loop and its last step over the RSS at its start
(`training_peak_increase_bytes_all`, per round), beside the whole-process peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results-finetune.json"
VARIANTS = ("naive", "trl", "trl-nogc", "trl-best", "tunebot")
TRL_VARIANTS = ("trl", "trl-nogc", "trl-best")
QUICK_VARIANTS = ("trl-best", "tunebot")  # bench-quick: the strongest baseline only
EQUAL_ACCURACY_POINTS = 3.0  # issue #20: held-out accuracy within 3 points counts as equal
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}


def load_rows(name: str, n: int) -> list[dict[str, Any]]:
    """The first n rows of a prompts/datasets JSONL file."""
    lines = (ROOT / "prompts" / "datasets" / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()][:n]


def user_turn(row: dict[str, Any]) -> str:
    """template=minimal's user turn for a sentiment row."""
    return f"text: {row['text']}"


# --- one variant, in its own process -------------------------------------------------------


def _setup_torch(spec: dict[str, Any]) -> Any:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    return torch


class _Clock:
    """Start of the training loop and end of the latest optimizer step."""

    start: float | None = None
    last: float | None = None
    steps = 0
    facts: dict[str, Any] | None = None  # tunebot's training facts (precision, packing)


def _trainer_callback(clock: _Clock) -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.last = time.perf_counter()
            clock.steps += 1

    return Timer()


def _training_args(spec: dict[str, Any], out: str, **extra: Any) -> dict[str, Any]:
    cuda = spec["device"] == "cuda"
    return {"output_dir": out, "per_device_train_batch_size": spec["batch_size"],
            "max_steps": spec["steps"], "learning_rate": spec["lr"],
            "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0,
            "logging_steps": 10_000, "save_strategy": "no", "report_to": [],
            "use_cpu": not cuda, "bf16": cuda, "seed": spec["seed"],
            "dataloader_num_workers": 0, "disable_tqdm": True, **extra}


def run_naive(spec: dict[str, Any], model: Any, tok: Any, clock: _Clock) -> Any:
    """Trainer + peft; rows padded to max_seq_len; loss on every (non-pad) token."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    texts = [tok.apply_chat_template([{"role": "user", "content": user_turn(r)},
                                      {"role": "assistant", "content": r["expected"]}],
                                     tokenize=False) for r in spec["train"]]
    data = Dataset.from_dict(dict(tok(texts, padding="max_length", truncation=True,
                                      max_length=spec["max_seq_len"],
                                      add_special_tokens=False)))
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=TrainingArguments(**_training_args(spec, out)),
                          train_dataset=data, callbacks=[_trainer_callback(clock)],
                          data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
        trainer.train()
    return model


def run_trl(spec: dict[str, Any], model: Any, tok: Any, clock: _Clock, *, gc: bool,
            padding_free: bool = False) -> Any:
    """TRL SFTTrainer with its defaults (prompt/completion data: completion-only loss), with
    gradient checkpointing off unless `gc`, and padding-free batches with `padding_free` (the
    rows are shorter than max_seq_len, so TRL's max_length, which padding-free without packing
    does not enforce, is left unset)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": user_turn(r)}],
         "completion": [{"role": "assistant", "content": r["expected"]}]}
        for r in spec["train"]])
    extra: dict[str, Any] = {} if gc else {"gradient_checkpointing": False}
    if padding_free:
        extra |= {"padding_free": True, "max_length": None}
    else:
        extra["max_length"] = spec["max_seq_len"]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**_training_args(spec, out, **extra))
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                             callbacks=[_trainer_callback(clock)])
        trainer.train()
        return trainer.model


def run_tunebot(spec: dict[str, Any], clock: _Clock) -> Any:
    """workers.training's recipe, in process (the spawn wrapper adds nothing per step)."""
    from tunebot.datasets.training import Example
    from workers.training.config import TrainConfig
    from workers.training.recipe import FinetuneRecipe

    class Reporter:
        def send(self, kind: str, *payload: Any) -> None:
            if kind == "start":
                clock.start = time.perf_counter()
            elif kind == "step":
                clock.last = time.perf_counter()
                clock.steps += 1

        def stop_requested(self) -> bool:
            return False

    train = [Example(i + 1, [{"role": "user", "content": user_turn(r)},
                             {"role": "assistant", "content": r["expected"]}])
             for i, r in enumerate(spec["train"])]
    config = TrainConfig(model_dir=spec["model_dir"], epochs=spec["epochs"], lr=spec["lr"],
                         batch_size=spec["batch_size"], lora_r=LORA["r"],
                         lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                         target_modules=LORA["target_modules"], max_seq_len=spec["max_seq_len"],
                         warmup_ratio=0.0, weight_decay=0.0, seed=spec["seed"],
                         threads=spec["threads"], device=spec["device"],
                         max_steps=spec["steps"], checkpoint_every=10**6, log_every=10**6)
    with tempfile.TemporaryDirectory() as art:
        recipe = FinetuneRecipe(config, train, [], Path(art), Reporter())
        recipe.setup()
        result = recipe.train()
        clock.facts = recipe.facts
        recipe.cleanup()
        # Scored as tunebot serves it: the exported adapter on the fp32 base model.
        from workers.backends.hf_load import apply_adapter, load_model

        model, _ = load_model(Path(spec["model_dir"]), device=spec["device"])
        return apply_adapter(model, Path(result["adapter_dir"]))


def score(model: Any, tok: Any, rows: list[dict[str, Any]], device: str) -> float:
    """Greedy accuracy: the answer starts with the expected label."""
    import torch

    model.eval()
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": user_turn(r)}],
                                       tokenize=False, add_generation_prompt=True) for r in rows]
    hits = 0
    for i in range(0, len(prompts), 8):
        enc = tok(prompts[i:i + 8], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=3, do_sample=False, use_cache=True,
                                 pad_token_id=tok.pad_token_id)
        for j, row in enumerate(rows[i:i + 8]):
            text = tok.decode(out[j, enc.input_ids.shape[1]:], skip_special_tokens=True)
            hits += text.strip().lower().startswith(row["expected"])
    return hits / len(rows)


class _RssSampler:
    """This process's resident set size every few ms, in a thread (training memory, issue #20).

    ru_maxrss is the whole process's peak, loading included; the training figure is the peak
    between the start of the training loop and its last step, less the RSS at its start (the
    model loaded, the data ready).
    """

    def __init__(self, every_s: float = 0.005) -> None:
        import threading

        self.samples: list[tuple[float, int]] = []
        self.every_s = every_s
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.rss()))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def training_increase(self, start: float, end: float) -> tuple[int, int]:
        """(RSS at the start of training, peak RSS increase over it up to the last step)."""
        before = [r for t, r in self.samples if t <= start]
        during = [r for t, r in self.samples if start <= t <= end]
        base = before[-1] if before else (during[0] if during else 0)
        return base, max([0, *(r - base for r in during)])


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one way (or only score the base model) and measure it."""
    torch = _setup_torch(spec)
    sampler = _RssSampler() if spec["device"] != "cuda" and os.path.exists("/proc/self/statm") \
        else None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.training.collate import encode_all

    device = spec["device"]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    clock = _Clock()
    variant = spec["variant"]
    if variant == "tunebot":
        model = run_tunebot(spec, clock)
    else:
        # fp32 weights; on CUDA the Trainer's bf16=True autocasts
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"],
                                                     dtype=torch.float32).to(device)
        if variant == "naive":
            model = run_naive(spec, model, tok, clock)
        elif variant in TRL_VARIANTS:
            model = run_trl(spec, model, tok, clock, gc=variant == "trl",
                            padding_free=variant == "trl-best")
    result: dict[str, Any] = {"variant": variant}
    if clock.facts is not None:
        result["precision"] = clock.facts.get("cpu_bf16") or clock.facts.get("dtype")
    if variant != "base":
        assert clock.start is not None and clock.last is not None
        seconds = clock.last - clock.start
        examples = spec["steps"] * spec["batch_size"]
        chats = [[{"role": "user", "content": user_turn(r)},
                  {"role": "assistant", "content": r["expected"]}] for r in spec["train"]]
        sup = sum(e.n_supervised for e in encode_all(tok, chats, spec["max_seq_len"]))
        per_example = sup / len(chats)
        result |= {"steps": clock.steps, "seconds": seconds, "examples_per_s": examples / seconds,
                   "supervised_tokens_per_s": examples * per_example / seconds}
    if device == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    else:
        result["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sampler is not None:
        sampler.stop()
        if variant != "base" and clock.start is not None and clock.last is not None:
            base_rss, increase = sampler.training_increase(clock.start, clock.last)
            result["rss_at_training_start_bytes"] = base_rss
            result["training_peak_increase_bytes"] = increase
    if spec["score"]:
        result["heldout_accuracy"] = score(model, tok, spec["eval"], device)
    return result


# --- the driver -----------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(ROOT)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.bench_finetune", "--variant-spec",
                               f.name], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench(*, quick: bool, device: str, threads: int, rounds: int,
          variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Run every variant `rounds` times (interleaved); return medians and scores."""
    from tunebot.settings import Settings
    from workers.backends.gguf_cache import converted_dir

    model_dir = converted_dir(Settings().models_dir)
    epochs = 1 if quick else 2
    spec = {"model_dir": str(model_dir), "device": device, "threads": threads, "seed": 42,
            "lr": 3e-3, "batch_size": 8, "max_seq_len": 64, "epochs": epochs,
            "steps": 8 * epochs, "train": load_rows("sentiment-train.jsonl", 64),
            "eval": load_rows("sentiment-eval.jsonl", 80)}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    base = _child({**spec, "variant": "base", "score": True})
    for r in range(rounds):
        order = list(variants[r % len(variants):]) + list(variants[:r % len(variants)])
        for v in order:
            res = _child({**spec, "variant": v, "score": True, "seed": spec["seed"] + r})
            runs[v].append(res)
            inc = res.get("training_peak_increase_bytes")
            print(f"round {r + 1}/{rounds} {v:9s} {res['examples_per_s']:6.2f} ex/s  "
                  f"{res['peak_memory_bytes'] / 2**20:7.0f} MiB"
                  + (f" (training +{inc / 2**20:.0f} MiB)" if inc is not None else "")
                  + f"  held-out {res['heldout_accuracy']:.1%}", flush=True)
    summary = {}
    for v, rs in runs.items():
        summary[v] = {
            "examples_per_s": statistics.median(x["examples_per_s"] for x in rs),
            "examples_per_s_all": [round(x["examples_per_s"], 3) for x in rs],
            "supervised_tokens_per_s": statistics.median(x["supervised_tokens_per_s"]
                                                         for x in rs),
            "peak_memory_bytes": max(x["peak_memory_bytes"] for x in rs),
            "training_peak_increase_bytes_all": [x.get("training_peak_increase_bytes")
                                                 for x in rs],
            "heldout_accuracy_all": [round(x["heldout_accuracy"], 4) for x in rs],
            "heldout_accuracy": round(statistics.mean(x["heldout_accuracy"] for x in rs), 4),
            "seeds": [spec["seed"] + r for r in range(rounds)], "steps": rs[0]["steps"],
            "precision": rs[0].get("precision") or ("float32" if device == "cpu"
                                                     else "bf16 autocast")}
    ours = summary["tunebot"]["examples_per_s"]
    speedups = {f"vs_{v}": ours / s["examples_per_s"] for v, s in summary.items()
                if v != "tunebot"}
    equal = {v: {"points_apart": round(100 * (summary["tunebot"]["heldout_accuracy"]
                                              - s["heldout_accuracy"]), 2),
                 "equal": abs(summary["tunebot"]["heldout_accuracy"] - s["heldout_accuracy"])
                 * 100 <= EQUAL_ACCURACY_POINTS}
             for v, s in summary.items() if v != "tunebot"}
    return {"date": time.strftime("%Y-%m-%d"), "device": device, "threads": threads,
            "cpu": _cpu_name(), "quick": quick, "rounds": rounds,
            "load_average_at_end": os.getloadavg(),
            "setup": {k: v for k, v in spec.items() if k not in ("train", "eval")}
            | {"n_train": 64, "n_eval": len(spec["eval"]), "lora": LORA},
            "base_model_heldout_accuracy": base["heldout_accuracy"],
            "results": summary, "tunebot_speedup": speedups,
            "accuracy_vs_tunebot": equal, "equal_accuracy_rule":
                f"mean held-out accuracy over the seeds within {EQUAL_ACCURACY_POINTS:g} points"}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 epoch (8 steps), 1 round")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--variants", default=None,
                    help=f"default {','.join(VARIANTS)} ({','.join(QUICK_VARIANTS)} with --quick)")
    ap.add_argument("--variant-spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.variant_spec:
        print(json.dumps(run_variant(json.loads(args.variant_spec.read_text()))))
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    report = bench(quick=args.quick, device=args.device, threads=args.threads, rounds=rounds,
                   variants=tuple((args.variants or ",".join(
                       QUICK_VARIANTS if args.quick else VARIANTS)).split(",")))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'variant':10s} {'ex/s':>7s} {'sup tok/s':>10s} {'peak MiB':>9s} {'held-out':>9s}")
    for v, s in report["results"].items():
        print(f"{v:10s} {s['examples_per_s']:7.2f} {s['supervised_tokens_per_s']:10.1f} "
              f"{s['peak_memory_bytes'] / 2**20:9.0f} {s['heldout_accuracy']:9.1%}")
    print(f"base model held-out accuracy: {report['base_model_heldout_accuracy']:.1%}")
    print("tunebot speed-up: " + ", ".join(f"{k} {v:.2f}×"
                                           for k, v in report["tunebot_speedup"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
