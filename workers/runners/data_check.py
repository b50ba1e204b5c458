"""The data check every fine-tune starts with: validate, measure lengths, dedupe, split, estimate.

`/dataset check` and `/finetune estimate` run only this (inference queue); `/finetune start`
runs it first on the gpu queue and fails the job with its report when the data does not pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebot import catalog, datasets, hyperparams
from tunebot.catalog.templates import render_messages
from tunebot.datasets.report import format_report
from tunebot.datasets.split import kfold, leakage, split
from tunebot.datasets.training import (
    Example,
    Renderer,
    length_histogram,
    truncation_verdict,
    validate_training,
)
from tunebot.db import session_scope
from tunebot.errors import JobError
from tunebot.models import PromptVersion
from tunebot.replies import Reply, code, fields, section
from workers.backends.hf_load import local_dir
from workers.backends.refs import parse_model_ref
from workers.context import JobContext
from workers.runners.prompt_test import load_version
from workers.training.estimate import estimate
from workers.training.recipe import encoded_lengths


@dataclass
class Prepared:
    """Data ready to train on, and what the user was told about it."""

    train: list[Example]
    val: list[Example]
    folds: list[tuple[list[Example], list[Example]]]
    hp: dict[str, Any]
    estimate: dict[str, Any]
    model_dir: Path
    output_spec: dict[str, Any] = field(default_factory=dict)
    scorers: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _prompt_version(ctx: JobContext) -> PromptVersion | None:
    pinned = ctx.job.params.get("prompt")
    if not pinned:
        return None
    return load_version(ctx, pinned["version_id"])


def _renderer(ctx: JobContext, version: PromptVersion | None, template: str) -> Renderer | None:
    if version is None or template != "full":
        return None

    def render(row: dict[str, Any]) -> list[dict[str, str]]:
        # Each render is bounded (two seconds at most), and a Cancel lands between any two.
        ctx.check()
        return render_messages(version.content, row)

    return render


def _eval_rows(ctx: JobContext, version: PromptVersion | None) -> tuple[str | None, list]:
    """The eval set the prompt's YAML names (for the leakage check)."""
    if version is None:
        return None, []
    with session_scope(ctx.engine) as s:
        prompt = catalog.get_prompt(session=s, team_id=ctx.job.team_id,
                                    name=ctx.job.params["prompt"]["name"])
        name = (prompt.datasets or {}).get("eval")
    if not name:
        return None, []
    try:
        ds = datasets.get_dataset(engine=ctx.engine, team_id=ctx.job.team_id, name=name)
    except Exception:
        return name, []
    return name, datasets.load_rows(ds)


def prepare(ctx: JobContext) -> Prepared:
    """Run the whole data check, post its report, and return the split data and the plan."""
    from transformers import AutoTokenizer

    started = time.monotonic()
    p = ctx.job.params
    hp_in = hyperparams.validate(p.get("hp") or {})
    ds = datasets.get_dataset(engine=ctx.engine, team_id=ctx.job.team_id, name=p["dataset"],
                              version=p.get("dataset_version"))
    version = _prompt_version(ctx)
    template = p.get("template") or "minimal"
    ctx.check()
    rep = validate_training(Path(ds.artifact_path), fmt=None, max_rows=ctx.settings.max_rows,
                            prompt_render=_renderer(ctx, version, template), template=template,
                            max_decoded_bytes=ctx.settings.max_decoded_mb * 2**20)
    if not rep.ok:
        raise JobError(f"the training data of {ds.name} does not pass:\n{format_report(rep)}")
    examples = list(rep.examples)
    eval_name, eval_rows = _eval_rows(ctx, version)
    leak_note = ""
    if eval_rows:
        leak = leakage(examples, eval_rows)
        if leak.count:
            lines = ", ".join(str(m.train_line) for m in leak.matches[:10])
            leak_note = (f"{leak.count} training example(s) also in {eval_name} (lines {lines}"
                         f"{' …' if leak.count > 10 else ''}) removed from training")
            examples = list(leak.clean)
        else:
            leak_note = f"no overlap with {eval_name}"
    ctx.check()
    ref = parse_model_ref(p["model"])
    model_dir = local_dir(ref, ctx.settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lengths = encoded_lengths(tokenizer, examples, 10**9)
    p99 = sorted(lengths)[max(0, int(0.99 * len(lengths)) - 1)] if lengths else 16
    model_params, shape = _model_size(model_dir)
    hp = hyperparams.resolve_auto(hp_in, n_examples=len(examples), length_p99=p99,
                                  model_params=model_params, model_shape=shape)
    hist = length_histogram(lengths, int(hp["max_seq_len"]))
    refusal = truncation_verdict(hist, str(hp.get("truncate") or "refuse"))
    folds: list[tuple[list[Example], list[Example]]] = []
    if hp.get("kfold"):
        folds = kfold(examples, int(hp["kfold"]), seed=int(hp["seed"]))
        train, val = folds[0]
        split_note = f"{hp['kfold']}-fold cross-validation ({len(train)} / {len(val)} per fold)"
    else:
        vs = hp.get("val_split")
        train, val, split_note = split(examples, val_split="auto" if vs in (None, "auto")
                                       else float(vs), seed=int(hp["seed"]))
        split_note = split_note or f"split {len(train)} train / {len(val)} validation"
    device = "cuda" if _cuda() else "cpu"
    est = estimate(len(train), lengths, hp, model_params, device, n_val=len(val),
                   model_shape=shape)
    report = {"rows_read": rep.rows_read, "examples": len(rep.examples),
              "duplicates": rep.duplicates, "after_leakage": len(examples), "leakage": leak_note,
              "lengths": hist, "train": len(train), "val": len(val), "split": split_note,
              "hp": hp, "estimate": est, "format": rep.fmt}
    _post_report(ctx, ds.name, rep, report, est, hp, refusal)
    if refusal:
        raise JobError(refusal)
    out_spec = (version.content.get("output") or {}) if version else {}
    return Prepared(train, val, folds, hp, est, model_dir, out_spec,
                    list((version.content.get("scorers") or []) if version else []), report,
                    time.monotonic() - started)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _model_size(model_dir: Path) -> tuple[int, dict[str, int]]:
    cfg = json.loads((model_dir / "config.json").read_text())
    hidden, layers = int(cfg.get("hidden_size", 0)), int(cfg.get("num_hidden_layers", 0))
    inter, vocab = int(cfg.get("intermediate_size", 4 * hidden)), int(cfg.get("vocab_size", 0))
    params = layers * (4 * hidden * hidden + 3 * hidden * inter) + vocab * hidden
    return params, {"hidden_size": hidden, "num_layers": layers}


def _post_report(ctx: JobContext, name: str, rep: Any, r: dict[str, Any], est: dict[str, Any],
                 hp: dict[str, Any], refusal: str | None) -> None:
    h = r["lengths"]
    head = (f"Data check of {name}: {r['rows_read']} rows, {r['duplicates']} duplicate(s) "
            f"dropped → {r['examples']}, {h['n_over']} over max_seq_len={hp['max_seq_len']} "
            f"(tokens min {h['min']}, p50 {h['p50']:.0f}, p95 {h['p95']:.0f}, max {h['max']}); "
            f"{r['split']}" + (f"; {r['leakage']}" if r["leakage"] else "") + ".")
    minutes = est.get("seconds", 0) / 60
    gib = est.get("peak_memory_bytes", 0) / 2**30
    plan = (f"Estimate: {est.get('total_steps')} steps ({est.get('steps_per_epoch')}/epoch × "
            f"{hp['epochs']} epochs, batch {hp['batch_size']}), ~{minutes:.1f} min on "
            f"{est.get('device', 'cpu')}, peak memory ~{gib:.1f} GiB.")
    auto = ", ".join(f"{k}={v}" for k, v in hp.items() if v is not None and k not in
                     ("prompt", "template", "name"))
    blocks = [section(head), section(plan), fields([("hyperparameters", auto[:900])])]
    if rep.warnings:
        blocks.append(code("\n".join(str(w) for w in rep.warnings[:10])))
    if refusal:
        blocks.append(section(f"⚠ {refusal}"))
    ctx.say(Reply(text=head, blocks=blocks))


class DataCheckRunner:
    """`/dataset check` and `/finetune estimate`: the report and the plan, nothing trained."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def run(self) -> dict[str, Any]:
        """Check, post the report, return it."""
        prepared = prepare(self.ctx)
        return {**prepared.report, "headline": f"{prepared.report['train']} train / "
                f"{prepared.report['val']} validation"}
