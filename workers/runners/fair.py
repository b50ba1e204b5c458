"""`/compare REF on DATASET fair`: the whole fight, each side at its best, as a chain of jobs.

Stages (tunebot/jobs/chain.py runs them as child jobs; this runner runs again from the top
each time a child ends, and holds no worker in between):

1. optimize — the best optimised version started from REF: a finished `prompt_optimize` job
   with the same key is reused, else one runs as a child;
2. fine-tune — the auto fine-tune (no hyperparameters, template=minimal) on the prompt's
   training set with prompt=REF: a registered adapter with the same key is reused, else one
   trains as a child;
3. the comparison, here: REF, the optimised version, the tuned model (its own template) and
   the hybrid (tuned model + optimised prompt) on DATASET's held-out cases, each step's gain
   paired, costs, time to deploy and the recommendation (tunebot/recommend.py), with the
   optimised prompt as the prompt side at its best.

A stage's key: workspace, starting version, dataset content hashes, model, settings (budget;
auto hyperparameters) and code version. 1 and 2 run side by side when workers allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunebot import datasets, jobs, registry, stats
from tunebot.core import Actor, Core
from tunebot.errors import JobError
from tunebot.handlers.optimize import submit_optimize
from tunebot.jobs import chain
from tunebot.models import ACTIVE_STATUSES, Job, ModelVersion, PromptVersion
from tunebot.recommend import MIN_CASES, Candidate, Context, money, recommend
from tunebot.replies import Reply, context, image, section, table
from workers.backends.registry import backend_for
from workers.context import JobContext
from workers.runners import report
from workers.runners.compare import CompareRunner, _aware, serving_cost_per_1k
from workers.runners.evaluate import CandidateRun, evaluate, gen_params
from workers.runners.finetune import code_version
from workers.runners.formats import minimal_content
from workers.runners.prompt_test import load_rows, load_version

REUSE_SCAN = 500  # finished jobs / adapters looked at for a reusable stage


@dataclass
class Stage:
    """A finished stage: what it produced, the job that produced it, and whether reused."""

    job: Job | None
    reused: bool
    minutes: float | None


def _minutes(job: Job | None) -> float | None:
    if job is None or job.started_at is None or job.finished_at is None:
        return None
    return (_aware(job.finished_at) - _aware(job.started_at)).total_seconds() / 60.0


class FairRunner:
    """The parent of the chain: submits or reuses the stages, then compares all four."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params
        self.notes: dict[str, Any] = dict(ctx.job.result or {})
        self.code = code_version()
        self._hashes: dict[tuple[str, int | None], str] = {}

    # -- the chain ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """One pass: every stage done → the comparison; else submit what is missing and wait."""
        ctx = self.ctx
        children = chain.stages(engine=ctx.engine, parent_id=ctx.job_id)
        opt = self._optimize(children.get("optimize"))
        ft = self._finetune(children.get("finetune"))
        self._save_notes()
        if opt is None or ft is None:
            waiting = [s for s, done in (("optimize", opt), ("fine-tune", ft)) if done is None]
            note = "waiting for " + " and ".join(waiting)
            ctx.status(f"{ctx.job.title or ctx.job.kind} · #{ctx.job_id} · {note}")
            raise chain.Waiting(note)
        return self._compare(opt, ft)

    def _say_once(self, key: str, text: str) -> None:
        said = self.notes.setdefault("said", [])
        if key not in said:
            said.append(key)
            self.ctx.say(text)

    def _save_notes(self) -> None:
        chain.remember(engine=self.ctx.engine, job_id=self.ctx.job_id, owner=self.ctx.owner,
                       state=self.notes)

    def _failed(self, stage: str, child: Job) -> JobError:
        why = child.error or child.status
        return JobError(f"the {stage} stage (job #{child.id}) {child.status}: {why} — "
                        "nothing was compared; fix it and run /compare … fair again "
                        "(finished stages are reused)")

    def _dataset_hash(self, name: str | None, version: int | None) -> str | None:
        if not name:
            return None
        key = (name, version)
        if key not in self._hashes:  # one query per dataset version, however many jobs
            self._hashes[key] = datasets.get_dataset(
                engine=self.ctx.engine, team_id=self.ctx.job.team_id, name=name,
                version=version).content_hash
        return self._hashes[key]

    # -- stage 1: optimize ----------------------------------------------------------------

    def _optimize(self, child: Job | None) -> Stage | None:
        p = self.p
        if child is None:
            found = self._reusable_optimize()
            if found is not None:
                self._say_once("optimize", f"Stage optimize: reusing job #{found.id} (same "
                               f"start, data, model, budget and code) → "
                               f"{_saved_ref(found) or 'no better version found'}.")
                return Stage(found, True, _minutes(found))
            core = Core(self.ctx.settings, self.ctx.engine, self.ctx.waker)
            actor = Actor(team_id=self.ctx.job.team_id, user_id=self.ctx.job.requested_by,
                          idempotency_key=chain.stage_key(self.ctx.job_id, "optimize"))
            out = submit_optimize(core, actor, ref=f"{p['prompt']['name']}@"
                                  f"{p['prompt']['version']}", dataset=p["dataset"],
                                  train=p["train"], model=p["model"], budget=p.get("budget"),
                                  parent_id=self.ctx.job_id)
            assert out.job is not None
            self._say_once("optimize", f"Stage optimize: no finished optimisation of "
                           f"{p['prompt']['name']}@{p['prompt']['version']} has this key; "
                           f"started job #{out.job.id} (its climb follows here).")
            return None
        if child.status in ACTIVE_STATUSES:
            return None
        if child.status != "succeeded":
            raise self._failed("optimize", child)
        r = child.result or {}
        self._say_once("optimize-done", f"Stage optimize done (job #{child.id}): "
                       f"{_saved_ref(child) or 'no better version'} — dev-selected; held-out "
                       f"{_pct(r.get('start_accuracy'))} → {_pct(r.get('winner_accuracy'))}.")
        return Stage(child, False, _minutes(child))

    def _reusable_optimize(self) -> Job | None:
        p, ctx = self.p, self.ctx
        want = (p["prompt"]["version_id"], p["model"], p.get("budget"),
                self._dataset_hash(p["dataset"], p["dataset_version"]),
                self._dataset_hash(p["train"], p["train_version"]), self.code)
        for job in jobs.list_jobs(engine=ctx.engine, team_id=ctx.job.team_id,
                                  kinds=("prompt_optimize",), limit=REUSE_SCAN):
            q, r = job.params, job.result or {}
            if job.status != "succeeded" or q.get("proposer") or not r:
                continue
            try:
                have = (q["prompt"]["version_id"], q["model"], q.get("budget"),
                        self._dataset_hash(q["dataset"], q["dataset_version"]),
                        self._dataset_hash(q.get("train"), q.get("train_version")),
                        r.get("code_version"))
            except Exception:  # a dataset deleted since, or params of an older shape
                continue
            if have == want:
                return job
        return None

    # -- stage 2: fine-tune ---------------------------------------------------------------

    def _finetune(self, child: Job | None) -> tuple[Stage, ModelVersion] | None:
        p, ctx = self.p, self.ctx
        if child is None:
            found = self._reusable_adapter()
            if found is not None:
                mv, job = found
                self._say_once("finetune", f"Stage fine-tune: reusing ft:{mv.name}@{mv.version}"
                               f" (same prompt version, training data, model, auto settings "
                               f"and code).")
                return Stage(job, True, _minutes(job)), mv
            sub = chain.submit_child(
                engine=ctx.engine, waker=ctx.waker, parent=ctx.job, stage="finetune",
                kind="finetune", params=self._finetune_params(),
                title=f"🔧 fine-tune ft:{p['prompt']['name']} · {p['model']} on {p['train']} "
                      "(auto settings)")
            self._say_once("finetune", f"Stage fine-tune: no registered adapter has this key; "
                           f"started job #{sub.job.id} (auto settings, template=minimal).")
            return None
        if child.status in ACTIVE_STATUSES:
            return None
        if child.status != "succeeded":
            raise self._failed("fine-tune", child)
        mv = self._model_of(child)
        self._say_once("finetune-done", f"Stage fine-tune done (job #{child.id}): "
                       f"ft:{mv.name}@{mv.version}" + ("" if (mv.metrics or {}).get("learned")
                                                       is not False else " (did not learn)"))
        return Stage(child, False, _minutes(child)), mv

    def _finetune_params(self) -> dict[str, Any]:
        p = self.p
        return {"model": p["model"], "dataset": p["train"], "dataset_version": p["train_version"],
                "prompt": p["prompt"], "template": "minimal", "name": None, "hp": {}}

    def _model_of(self, child: Job) -> ModelVersion:
        ref = str((child.result or {}).get("model", ""))
        name, _, version = ref.removeprefix("ft:").partition("@")
        if not name or not version.isdigit():
            raise JobError(f"the fine-tune stage (job #{child.id}) registered no model")
        return registry.resolve_model(engine=self.ctx.engine, team_id=self.ctx.job.team_id,
                                      name=name, version=int(version))

    def _reusable_adapter(self) -> tuple[ModelVersion, Job] | None:
        p, ctx = self.p, self.ctx
        train_hash = self._dataset_hash(p["train"], p["train_version"])
        prompt_ref = f"{p['prompt']['name']}@{p['prompt']['version']}"
        models = registry.list_models(engine=ctx.engine, team_id=ctx.job.team_id)
        for mv in sorted(models, key=lambda m: m.created_at, reverse=True)[:REUSE_SCAN]:
            if (mv.base_model, mv.dataset_hash, mv.prompt_ref, mv.template, mv.code_version) \
                    != (p["model"], train_hash, prompt_ref, "minimal", self.code):
                continue
            job = jobs.get(engine=ctx.engine, job_id=mv.job_id) if mv.job_id else None
            # The settings: auto (no hyperparameters asked for), which only its job records.
            if job is not None and job.kind == "finetune" and not job.params.get("hp"):
                return mv, job
        return None

    # -- stage 3: the comparison ----------------------------------------------------------

    def _compare(self, opt: Stage, ft: tuple[Stage, ModelVersion]) -> dict[str, Any]:
        ctx, p = self.ctx, self.p
        ft_stage, mv = ft
        start = load_version(ctx, p["prompt"]["version_id"])
        saved = (opt.job.result or {}).get("saved") if opt.job else None
        best = load_version(ctx, int(saved["version_id"])) if saved else start
        sname = f"{p['prompt']['name']}@{start.version}"
        bname = f"{p['prompt']['name']}@{best.version}"
        rows = load_rows(ctx, p["dataset"], p["dataset_version"])
        helper = CompareRunner(ctx)
        rows, excluded = helper._exclude_training_cases(rows, mv)
        if len(rows) < MIN_CASES:
            raise JobError(f"only {len(rows)} held-out cases remain after removing {excluded} "
                           f"that were in the training data; at least {MIN_CASES} are needed")
        ftref = f"ft:{mv.name}@{mv.version}"
        plans = [("start", f"{sname} (start)", p["model"], start.content),
                 ("optimised", f"{bname} (optimised)", p["model"], best.content),
                 ("tuned", f"{ftref} ({mv.template} prompt)", ftref,
                  minimal_content(start.content, rows) if mv.template == "minimal"
                  else start.content),
                 ("hybrid", f"{ftref} + {bname}", ftref, best.content)]
        ctx.say(f"Stage compare: {len(plans)} candidates on {len(rows)} held-out cases of "
                f"{p['dataset']}" + (f" ({excluded} excluded: in the adapter's training data)."
                                     if excluded else "."))
        resolve = registry.ft_resolver(ctx.engine, ctx.job.team_id)
        runs: list[tuple[str, CandidateRun, str, int]] = []
        for i, (kind, name, model, content) in enumerate(plans):
            backend = backend_for(model, ctx.settings, resolve_ft=resolve)
            gen = gen_params(content, temperature=0.0, max_tokens=None)
            run = evaluate(ctx, name=name, content=content, rows=rows, backend=backend, gen=gen,
                           done=i * len(rows), total=len(rows) * len(plans))
            runs.append((kind, run, str(getattr(backend, "device", "cpu")), gen.max_new_tokens))
        return self._report(runs, opt, ft_stage, mv, excluded, helper, best)

    def _report(self, runs: list[tuple[str, CandidateRun, str, int]], opt: Stage,
                ft_stage: Stage, mv: ModelVersion, excluded: int,
                helper: CompareRunner, best: PromptVersion) -> dict[str, Any]:
        ctx, s = self.ctx, self.ctx.settings
        metrics = mv.metrics or {}
        train_seconds = float(metrics.get("train_seconds", 0.0) or 0.0)
        device = str(metrics.get("device", "cpu"))
        hour = s.price_gpu_hour if device.startswith("cuda") else s.price_cpu_hour
        training_cost = train_seconds * hour / 3600.0
        deploy = {"start": "in place now",
                  "optimised": _deploy(opt),
                  "tuned": _deploy(ft_stage),
                  "hybrid": _both(opt, ft_stage)}
        cands: dict[str, Candidate] = {}
        summaries: list[dict[str, Any]] = []
        rows_out: list[list[str]] = []
        start_run = runs[0][1]
        previous: CandidateRun | None = None
        for kind, run, dev, max_new in runs:
            summ = report.summarize(run)
            vs_start = None if run is start_run else report.paired(start_run, run)
            step = None if previous is None else report.paired(previous, run)
            bad, detail = report.degenerate(run, max_new)
            cost = serving_cost_per_1k(run, dev, s, api=False)
            cand = Candidate(run.name, {"start": "prompt", "optimised": "prompt"}.get(kind, kind),
                             summ["accuracy"], summ["judged"], cost,
                             degenerate=bad, degenerate_detail=detail)
            cands[kind] = cand
            prev_acc = summaries[-1]["accuracy"] if summaries else None
            gain = "—" if prev_acc is None or step is None else \
                f"{100 * (summ['accuracy'] - prev_acc):+.1f} pts ({stats.format_p(step.p_value)})"
            summaries.append({**summ, "kind": kind, "cost_per_1k": cost,
                              "cost_per_1k_correct": cand.cost_per_1k_correct, "device": dev,
                              "step_p": step.p_value if step else None,
                              "p_vs_start": vs_start.p_value if vs_start else None,
                              "degenerate": bad, "degenerate_detail": detail,
                              "deploy": deploy[kind]})
            flag = " ⚠" if cand.mostly_degenerate else ""
            rows_out.append([run.name + flag, f"{summ['accuracy']:.1%}",
                             stats.format_ci(*summ["ci"]), gain,
                             f"${cost:.4f}", "—" if kind in ("start", "optimised")
                             else money(training_cost), deploy[kind], f"{bad}/{summ['cases']}"])
            previous = run
        rec = self._recommend(runs, cands, training_cost, mv, helper._history(best))
        reused = [name for name, st in (("optimize", opt), ("fine-tune", ft_stage)) if st.reused]
        ran = [name for name, st in (("optimize", opt), ("fine-tune", ft_stage)) if not st.reused]
        chart = helper._chart([{**x, "candidate": x["candidate"]} for x in summaries])
        lines = [f"stages reused: {', '.join(reused) or 'none'} · run now: "
                 f"{', '.join(ran) or 'none'} (a stage is reused when workspace, start version, "
                 "dataset contents, model, settings and code version all match)",
                 f"training cost {money(training_cost)} ({train_seconds:.0f} s on {device})"]
        if rec.break_even_calls is not None:
            lines.append(f"break-even after ~{rec.break_even_calls:,.0f} calls")
        if excluded:
            lines.append(f"{excluded} eval case(s) excluded: found in the training data")
        if mv.template == "minimal":
            lines.append(f"note: {runs[2][1].name.split(' ')[0]} was trained with "
                         "template=minimal, so the hybrid (the full optimised prompt) is out of "
                         "its training distribution; /finetune start … template=full trains "
                         "for the hybrid")
        header = ["candidate", "accuracy", "95% CI", "step gain (paired)", "$/1k calls",
                  "training", "time to deploy", "degenerate"]
        prices = (f"prices: GPU ${s.price_gpu_hour}/h · CPU ${s.price_cpu_hour}/h "
                  "(TUNEBOT_PRICE_*) · the prompt side at its best is the optimised version "
                  "(chosen on a development split, never on these cases)")
        ctx.say(Reply(text=rec.line, blocks=[
            table(header, rows_out), context(prices), section("\n".join(lines)),
            section(rec.line + "\n" + "\n".join(f"• {r}" for r in rec.reasons)),
            image(str(chart), "accuracy vs cost per 1,000 calls")]))
        return {"candidates": summaries, "recommendation": rec.line, "decision": rec.decision,
                "reasons": rec.reasons, "training_cost": training_cost, "chart": str(chart),
                "reused": reused, "ran": ran, "excluded": excluded,
                "optimize_job": opt.job.id if opt.job else None,
                "finetune_job": ft_stage.job.id if ft_stage.job else None,
                "model": f"ft:{mv.name}@{mv.version}", "cases_needed": rec.cases_needed,
                "headline": rec.line}

    def _recommend(self, runs: list[tuple[str, CandidateRun, str, int]],
                   cands: dict[str, Candidate], training_cost: float,
                   mv: ModelVersion, history: tuple[int, float, int]) -> Any:
        # The prompt side at its best (the optimised version) against the tuned side, paired.
        best_run = runs[1][1]
        tuned: list[Candidate] = []
        for kind, run, _, _ in runs[2:]:
            pair = report.paired(best_run, run)
            c = cands[kind]
            tuned.append(Candidate(c.name, c.kind, c.accuracy, c.n, c.cost_per_1k,
                                   pair.p_value, fixed=pair.c, broken=pair.b,
                                   degenerate=c.degenerate,
                                   degenerate_detail=c.degenerate_detail))
        metrics = mv.metrics or {}
        learned = metrics.get("learned")
        return recommend(cands["optimised"], tuned, Context(
            training_cost=training_cost, traffic_per_day=self.p.get("traffic"),
            train_examples=int(metrics.get("train_examples", 0) or 0),
            prompt_versions=history[0], prompt_days=history[1],
            p_tuned_vs_hybrid=report.paired(runs[2][1], runs[3][1]).p_value,
            tuned_learned=learned if isinstance(learned, bool) else None,
            learning_note=str(metrics.get("learning_note", ""))))


def _saved_ref(job: Job) -> str:
    saved = (job.result or {}).get("saved")
    return str(saved.get("ref", "")) if isinstance(saved, dict) else ""


def _pct(x: Any) -> str:
    return f"{float(x):.1%}" if isinstance(x, int | float) else "?"


def _deploy(stage: Stage) -> str:
    how = "reused" if stage.reused else "ran now"
    if stage.minutes is None:
        return how
    return f"{stage.minutes:.1f} min ({how})"


def _both(a: Stage, b: Stage) -> str:
    if a.minutes is None or b.minutes is None:
        return "both stages"
    return f"{a.minutes + b.minutes:.1f} min (both stages)"
