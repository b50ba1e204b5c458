"""Prompt tests: one version over an eval set (`prompt_test`), or two versions paired."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from tunebot import datasets, registry
from tunebot.catalog import promote
from tunebot.datasets.rows import check_variables
from tunebot.errors import JobError
from tunebot.models import PromptVersion
from workers.backends.registry import backend_for
from workers.context import JobContext
from workers.runners import report
from workers.runners.evaluate import CandidateRun, evaluate, gen_params
from workers.runners.formats import TEMPLATES, rendered_as


def load_version(ctx: JobContext, version_id: int) -> PromptVersion:
    """A pinned prompt version of this job's workspace."""
    with Session(ctx.engine) as session:
        version = session.get(PromptVersion, version_id)
    if version is None or version.team_id != ctx.job.team_id:
        raise JobError(f"prompt version {version_id} no longer exists")
    return version


def load_rows(ctx: JobContext, name: str, version: int) -> list[dict[str, Any]]:
    """The eval rows of the pinned dataset version."""
    ds = datasets.get_dataset(engine=ctx.engine, team_id=ctx.job.team_id, name=name,
                              version=version)
    rows = datasets.load_rows(ds)
    if not rows:
        raise JobError(f"dataset {name} has no rows")
    return rows


def check_rows(rows: list[dict[str, Any]], version: PromptVersion, label: str) -> None:
    """Every row must carry every variable the prompt declares."""
    variables = list((version.content.get("variables") or {}).keys())
    issues = check_variables(rows, variables)
    if issues:
        listed = "\n".join(str(i) for i in issues[:20])
        more = f"\n… and {len(issues) - 20} more" if len(issues) > 20 else ""
        raise JobError(f"the dataset does not fit {label}:\n{listed}{more}")


class PromptTestRunner:
    """Runs one or two pinned versions on the same cases and model, then reports."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params

    def run(self) -> dict[str, Any]:
        """Test each candidate, post summaries (and the paired verdict for a compare).

        A candidate may name its own adapter and template (`model_compare`: two adapters under
        one prompt version, each rendered the way it was trained); the rest share the job's."""
        ctx, p = self.ctx, self.p
        rows = load_rows(ctx, p["dataset"], p["dataset_version"])
        cands = p["candidates"]
        versions = [load_version(ctx, c["version_id"]) for c in cands]
        names = [c.get("label") or f"{c['name']}@{c['version']}" for c in cands]
        for v, name in zip(versions, names, strict=True):
            check_rows(rows, v, name)
        # (a pinned prompt's own "model" is its default, not this job's: the job's model= wins)
        models = [c.get("adapter") or p["model"] for c in cands]
        templates = [c.get("template", p.get("template")) for c in cands]
        resolve = registry.ft_resolver(ctx.engine, ctx.job.team_id)
        samples = int(p.get("samples") or 1)
        total = len(rows) * samples * len(versions)
        ctx.say(f"Running {len(rows)} cases × {samples} sample(s) × {len(versions)} "
                f"version(s) on {p['model']}.")
        runs: list[CandidateRun] = []
        for i, (v, name) in enumerate(zip(versions, names, strict=True)):
            if i == 0 or models[i] != models[i - 1]:
                ctx.say(f"Loading {models[i]} …")
                backend = backend_for(models[i], ctx.settings, resolve_ft=resolve)
            template = templates[i]
            if "template" in cands[i]:  # an adapter of a model comparison: its own format
                ctx.say(f"Rendering {name} with template={template} ({TEMPLATES[template]}), "
                        "as the adapter was trained.")
            elif template and i == 0:
                how = ("as the adapter was trained" if p.get("template_source") == "adapter"
                       else "as asked")
                ctx.say(f"Rendering with template={template} ({TEMPLATES[template]}), {how}; "
                        "template=minimal|full tests the other way.")
            gen = gen_params(v.content, temperature=p.get("temperature"),
                             max_tokens=p.get("max_tokens"))
            content = rendered_as(v.content, rows, template)
            run = evaluate(ctx, name=name, content=content, rows=rows, backend=backend,
                           gen=gen, samples=samples, done=len(runs) * len(rows) * samples,
                           total=total)
            runs.append(run)
        summaries = [report.summarize(r) for r in runs]
        metrics = ctx.metrics()
        for i, s in enumerate(summaries):
            metrics.log(i, accuracy=s["accuracy"], ci_low=s["ci"][0], ci_high=s["ci"][1],
                        latency_p50_ms=s["latency_p50_ms"], latency_p95_ms=s["latency_p95_ms"],
                        tokens_in=s["tokens_in"], tokens_out=s["tokens_out"])
            ctx.say(report.summary_reply(runs[i], s))
        result: dict[str, Any] = {"summaries": summaries, "model": p["model"],
                                  "dataset": p["dataset"], "template": p.get("template")}
        if len(runs) == 2:
            res = report.paired(runs[0], runs[1])
            ctx.say(report.paired_reply(runs[0], runs[1], res))
            result["paired"] = {"verdict": res.verdict, "p_value": res.p_value,
                                "diff_pts": res.diff_pts, "b": res.b, "c": res.c}
        best = summaries[-1] if len(runs) == 1 else max(summaries, key=lambda s: s["accuracy"])
        result["headline"] = f"{best['candidate']} {best['accuracy']:.1%}"
        if p.get("promote"):  # a label move waited for this measurement (the production gate)
            line = promote.after_job(engine=ctx.engine, settings=ctx.settings,
                                     team_id=ctx.job.team_id, params=p, result=result,
                                     job_id=ctx.job_id)
            ctx.say(line)
            result["promotion"] = line
        return result
