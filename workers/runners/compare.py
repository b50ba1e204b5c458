"""`/compare`: prompt vs fine-tuned vs both on the same held-out cases, with a recommendation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunebot import catalog, jobs, registry, stats
from tunebot.commands import parse_ref
from tunebot.datasets.split import leakage
from tunebot.db import session_scope
from tunebot.errors import JobError
from tunebot.models import ModelVersion, PromptVersion
from tunebot.recommend import MIN_CASES, Candidate, Context, money, recommend
from tunebot.replies import Reply, context, image, section, table
from workers.backends.registry import backend_for
from workers.context import JobContext
from workers.runners import report
from workers.runners.evaluate import CandidateRun, evaluate, gen_params
from workers.runners.formats import minimal_content
from workers.runners.prompt_test import load_rows, load_version


def serving_cost_per_1k(run: CandidateRun, device: str, settings: Any, api: bool) -> float:
    """Cost of 1,000 calls: API tokens at the token price; a local model by its measured
    throughput (1,000 calls ÷ cases per second, batched as served), not by its latency."""
    cases = run.first_samples()
    if api:
        tokens = sum(o.tokens_in + o.tokens_out for o in cases) / max(len(cases), 1)
        return tokens * settings.price_per_1k_tokens
    if run.throughput > 0:
        seconds = 1.0 / run.throughput
    else:  # nothing timed (no cases): the per-case times are all there is
        seconds = sum(o.latency_ms for o in cases) / max(len(cases), 1) / 1000.0
    hour = settings.price_gpu_hour if device.startswith("cuda") else settings.price_cpu_hour
    return 1000.0 * seconds * hour / 3600.0


class CompareRunner:
    """Builds the candidates, runs them on the same cases, prices them and recommends."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params

    def run(self) -> dict[str, Any]:
        """The whole comparison."""
        ctx, p = self.ctx, self.p
        version = load_version(ctx, p["prompt"]["version_id"])
        pname = f"{p['prompt']['name']}@{p['prompt']['version']}"
        rows = load_rows(ctx, p["dataset"], p["dataset_version"])
        mv = self._model_version(p["model"])
        rows, excluded = self._exclude_training_cases(rows, mv)
        if len(rows) < MIN_CASES:
            raise JobError(f"only {len(rows)} held-out cases remain after removing {excluded} "
                           f"that were in the training data; at least {MIN_CASES} are needed")
        plans = self._plans(version, pname, rows, mv)
        resolve = registry.ft_resolver(ctx.engine, ctx.job.team_id)
        ctx.say(f"Comparing {len(plans)} candidates on {len(rows)} held-out cases"
                + (f" ({excluded} excluded: found in the adapter's training data)."
                   if excluded else "."))
        runs: list[tuple[dict[str, Any], CandidateRun, str]] = []
        total = len(rows) * len(plans)
        gen = gen_params(version.content, temperature=0.0, max_tokens=None)
        for i, plan in enumerate(plans):
            backend = backend_for(plan["model"], ctx.settings, resolve_ft=resolve)
            run = evaluate(ctx, name=plan["name"], content=plan["content"], rows=rows,
                           backend=backend, gen=gen, done=i * len(rows), total=total)
            runs.append((plan, run, str(getattr(backend, "device", "api"))))
        return self._report(runs, mv, version, excluded, gen.max_new_tokens)

    def _model_version(self, model: str) -> ModelVersion | None:
        if not model.startswith("ft:"):
            return None
        ref = parse_ref(model[3:], "/compare")
        return registry.resolve_model(engine=self.ctx.engine, team_id=self.ctx.job.team_id,
                                      name=ref.name, version=ref.version, label=ref.label)

    def _exclude_training_cases(self, rows: list[dict[str, Any]],
                                mv: ModelVersion | None) -> tuple[list[dict[str, Any]], int]:
        if mv is None:
            return rows, 0
        train_file = Path(mv.adapter_path).parent / "train.jsonl"
        if not train_file.is_file():
            return rows, 0
        train = [json.loads(line) for line in train_file.read_text().splitlines() if line]
        # leakage() reports training items matching eval rows; here the eval rows go.
        rep = leakage(rows, train)
        leaked = {m.train_line for m in rep.matches}
        kept = [r for i, r in enumerate(rows) if getattr(r, "line", i + 1) not in leaked]
        return kept, len(rows) - len(kept)

    def _plans(self, version: PromptVersion, pname: str, rows: list[dict[str, Any]],
               mv: ModelVersion | None) -> list[dict[str, Any]]:
        p = self.p
        if mv is None:
            base = version.content.get("model") or "smollm2"
            return [{"name": f"{pname} on {base}", "kind": "prompt", "model": base,
                     "content": version.content},
                    {"name": f"{pname} on {p['model']}", "kind": "model", "model": p["model"],
                     "content": version.content}]
        ft = f"ft:{mv.name}@{mv.version}"
        trained = (minimal_content(version.content, rows) if mv.template == "minimal"
                   else version.content)
        plans = [{"name": f"{pname} on {mv.base_model}", "kind": "prompt",
                  "model": mv.base_model, "content": version.content},
                 {"name": f"{ft} ({mv.template} prompt)", "kind": "tuned", "model": ft,
                  "content": trained}]
        if p.get("hybrid"):
            plans.append({"name": f"{ft} + {pname}", "kind": "hybrid", "model": ft,
                          "content": version.content})
        return plans

    def _history(self, version: PromptVersion) -> tuple[int, float, int]:
        with session_scope(self.ctx.engine) as s:
            prompt, versions = catalog.prompt_of(session=s, version=version)
        tests = jobs.list_jobs(engine=self.ctx.engine, team_id=self.ctx.job.team_id,
                               kinds=("prompt_test", "prompt_compare"), limit=None)
        name = prompt.name
        n_tests = sum(1 for j in tests if any(c.get("name") == name
                                              for c in j.params.get("candidates", [])))
        first = min(v.created_at for v in versions)
        days = (version.created_at - first).total_seconds() / 86400
        return len(versions), max(days, 0.0), n_tests

    def _report(self, runs: list[tuple[dict[str, Any], CandidateRun, str]],
                mv: ModelVersion | None, version: PromptVersion, excluded: int,
                max_new_tokens: int) -> dict[str, Any]:
        ctx, s = self.ctx, self.ctx.settings
        base_plan, base_run, _ = runs[0]
        rows_out, cands = [], []
        summaries = []
        for plan, run, device in runs:
            summ = report.summarize(run)
            pair = None if run is base_run else report.paired(base_run, run)
            pval = 1.0 if pair is None else pair.p_value
            api = plan["model"].startswith("openai:")
            cost = serving_cost_per_1k(run, device, s, api)
            bad, bad_detail = report.degenerate(run, max_new_tokens)
            cand = Candidate(run.name, plan["kind"], summ["accuracy"], summ["judged"], cost,
                             pval, fixed=pair.c if pair else 0, broken=pair.b if pair else 0,
                             degenerate=bad, degenerate_detail=bad_detail)
            cands.append(cand)
            summaries.append({**summ, "kind": plan["kind"], "p_vs_prompt": pval,
                              "cost_per_1k": cost, "cost_per_1k_correct":
                              cand.cost_per_1k_correct, "device": device,
                              "fixed": cand.fixed, "broken": cand.broken,
                              "degenerate": bad, "degenerate_detail": bad_detail})
            flag = " ⚠" if cand.mostly_degenerate else ""
            rows_out.append([run.name + flag, f"{summ['accuracy']:.1%}",
                             stats.format_ci(*summ["ci"]),
                             "—" if run is base_run else stats.format_p(pval),
                             f"{summ['latency_p50_ms']:.0f}/{summ['latency_p95_ms']:.0f}",
                             f"{summ['throughput_cps']:.1f}",
                             f"{summ['tokens_in']:.0f}/{summ['tokens_out']:.0f}",
                             f"${cost:.4f}", f"${cand.cost_per_1k_correct:.4f}",
                             f"{bad}/{summ['cases']}"])
        train_seconds = float((mv.metrics or {}).get("train_seconds", 0.0)) if mv else 0.0
        train_device = str((mv.metrics or {}).get("device", "cpu")) if mv else "cpu"
        hour = s.price_gpu_hour if train_device.startswith("cuda") else s.price_cpu_hour
        training_cost = train_seconds * hour / 3600.0
        n_versions, days, n_tests = self._history(version)
        tuned = list(cands[1:])
        p_hybrid = 1.0
        if len(runs) == 3:
            p_hybrid = report.paired(runs[1][1], runs[2][1]).p_value
        learned = (mv.metrics or {}).get("learned") if mv else None
        rec = recommend(cands[0], tuned, Context(
            training_cost=training_cost, traffic_per_day=self.p.get("traffic"),
            train_examples=int((mv.metrics or {}).get("train_examples", 0)) if mv else 0,
            prompt_versions=n_versions, prompt_days=days, p_tuned_vs_hybrid=p_hybrid,
            tuned_learned=learned if isinstance(learned, bool) else None,
            learning_note=str((mv.metrics or {}).get("learning_note", "")) if mv else ""))
        chart = self._chart(summaries)
        deploy = self._deploy_times(mv)
        header = ["candidate", "accuracy", "95% CI", "p vs prompt", "p50/p95 ms", "cases/s",
                  "tokens in/out", "$/1k calls", "$/1k correct", "degenerate"]
        prices = (f"prices: GPU ${s.price_gpu_hour}/h · CPU ${s.price_cpu_hour}/h · "
                  f"API ${s.price_per_1k_tokens}/1k tokens (TUNEBOT_PRICE_*); a local model's "
                  "$/1k calls from its throughput (cases/s, batched); "
                  + report.latency_note(summaries[0]))
        lines = [f"training cost {money(training_cost)} ({train_seconds:.0f} s on "
                 f"{train_device})" if mv else "no training (both candidates are prompts)",
                 f"time to deploy: {deploy}; the prompt: {n_versions} version(s), {n_tests} "
                 f"test run(s), {days:.1f} day(s) from first to this version"]
        if rec.break_even_calls is not None:
            lines.append(f"break-even after ~{rec.break_even_calls:,.0f} calls"
                         + (f" (~{rec.break_even_days:.1f} days)" if rec.break_even_days
                            is not None else ""))
        if excluded:
            lines.append(f"{excluded} eval case(s) excluded: found in the training data")
        if self.p.get("hybrid") and mv is not None and mv.template == "minimal":
            lines.append(f"note: ft:{mv.name}@{mv.version} was trained with template=minimal "
                         "(the bare user turn), so the hybrid row — the full prompt — is out of "
                         "its training distribution; /finetune start … template=full trains "
                         "for the hybrid")
        blocks = [table(header, rows_out), context(prices), section("\n".join(lines)),
                  section(rec.line + "\n" + "\n".join(f"• {r}" for r in rec.reasons)),
                  image(str(chart), "accuracy vs cost per 1,000 calls")]
        ctx.say(Reply(text=rec.line, blocks=blocks))
        return {"candidates": summaries, "recommendation": rec.line, "decision": rec.decision,
                "cases_needed": rec.cases_needed,
                "reasons": rec.reasons, "training_cost": training_cost, "chart": str(chart),
                "break_even_calls": rec.break_even_calls, "break_even_days":
                rec.break_even_days, "excluded": excluded, "headline": rec.line}

    def _deploy_times(self, mv: ModelVersion | None) -> str:
        if mv is None or mv.job_id is None:
            return "prompt only"
        job = jobs.get(engine=self.ctx.engine, job_id=mv.job_id)
        if job is None or job.started_at is None or job.finished_at is None:
            return "unknown"
        secs = (_aware(job.finished_at) - _aware(job.started_at)).total_seconds()
        return f"fine-tune job #{job.id} took {secs / 60:.1f} min (data check + training)"

    def _chart(self, summaries: list[dict[str, Any]]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for sm in summaries:
            lo, hi = sm["ci"]
            acc = sm["accuracy"]
            ax.errorbar(sm["cost_per_1k"], 100 * acc,
                        yerr=[[100 * (acc - lo)], [100 * (hi - acc)]], fmt="o", capsize=4,
                        label=sm["candidate"])
        ax.set_xlabel("serving cost per 1,000 calls ($)")
        ax.set_ylabel("accuracy (%) with 95% CI")
        ax.set_title("prompt vs fine-tuned: accuracy against cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = self.ctx.artifact_dir / "compare.png"
        fig.savefig(path)
        plt.close(fig)
        return path


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
