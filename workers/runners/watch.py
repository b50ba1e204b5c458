"""A watch's run: re-test what its reference points to now, on the dataset's current version,
and judge it against the last accepted run (tunebot.watches.judge); only an alert is posted."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from tunebot import catalog, datasets, registry, watches
from tunebot.errors import Cancelled, JobError, LeaseLost
from tunebot.models import Watch
from tunebot.replies import Reply, context, fields, section, table
from tunebot.stats import format_ci, format_p, wilson
from workers.backends.registry import backend_for
from workers.context import JobContext
from workers.runners import report
from workers.runners.evaluate import CandidateRun, evaluate, gen_params
from workers.runners.prompt_test import check_rows, load_rows

MAX_FLIPPED = 10  # flipped cases shown in an alert (the count says how many there are)


def _snip(value: object, n: int) -> str:
    line = " ".join(str(value if value is not None else "").split())
    return line if len(line) <= n else line[: n - 1] + "…"


class WatchRunner:
    """One scheduled run of a watch."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.p = ctx.job.params

    def _watch(self) -> Watch:
        watch = watches.get_watch(engine=self.ctx.engine, watch_id=int(self.p["watch_id"]),
                                  team_id=self.ctx.job.team_id)
        if watch is None:
            raise JobError(f"watch #{self.p['watch_id']} no longer exists")
        return watch

    def run(self) -> dict[str, Any]:
        """Test, judge, record; post an alert when the judgement asks for one."""
        ctx = self.ctx
        watch = self._watch()
        assert watch.id is not None
        if watch.state != "active":
            return {"skipped": f"watch #{watch.id} is {watch.state}"}
        if ctx.job.active_key != watches.watch_key(watch.id):
            # A copy of a run (the Re-run button): the watch runs at its next tick instead,
            # through the claim that keeps its runs one at a time.
            watches.run_soon(engine=ctx.engine, watch_id=watch.id)
            where = f"in {watch.channel}" if watch.channel else "in `tunebot jobs`"
            watches.emit_alert(engine=ctx.engine, job_id=ctx.job_id, waker=ctx.waker, reply=Reply(
                status=f"⏩ Watch #{watch.id} runs again at its next tick",
                text=f"It posts {where} only on a regression, a failed run or a changed eval "
                     "set; /watch list shows its last run."))
            return {"rescheduled": watch.id}
        try:
            return self._run(watch)
        except (Cancelled, LeaseLost):
            raise  # not a failed run: cancelled on request, or another worker has it now
        except Exception as exc:
            # Recorded on the watch (/watch list shows it); the job fails, and its failure
            # is the alert (posted once for a run of failures: see tunebot.watches.tick).
            watches.record_failure(engine=ctx.engine, watch_id=watch.id,
                                   error=str(exc) or exc.__class__.__name__)
            raise

    def _run(self, watch: Watch) -> dict[str, Any]:
        ctx = self.ctx
        assert watch.id is not None
        team = ctx.job.team_id
        with Session(ctx.engine) as session:
            # What the reference points to now: a label that moved is followed.
            version = catalog.resolve(session=session, team_id=team, ref=watch.prompt_ref)
            content = dict(version.content)
        ds = datasets.get_dataset(engine=ctx.engine, team_id=team, name=watch.dataset)
        rows = load_rows(ctx, ds.name, ds.version)
        name = f"{watch.prompt_name}@{version.version}"
        check_rows(rows, version, name)
        model = watch.model or content.get("model") or "smollm2"
        ctx.say(f"Watch #{watch.id}: {watch.prompt_ref} is {name}; testing it on {ds.name} "
                f"v{ds.version} ({len(rows)} cases) with {model}.")
        backend = backend_for(model, ctx.settings,
                              resolve_ft=registry.ft_resolver(ctx.engine, team))
        gen = gen_params(content, temperature=None, max_tokens=None)
        run = evaluate(ctx, name=name, content=content, rows=rows, backend=backend, gen=gen)
        summary = report.summarize(run)
        passes: list[bool | None] = [o.passed for o in run.first_samples()]
        judgement = watches.judge(watch, passes, ds.content_hash, name=name)
        facts = watches.RunFacts(job_id=ctx.job_id, passes=passes,
                                 accuracy=summary["accuracy"], version=version.version,
                                 model=model, dataset_version=ds.version,
                                 dataset_hash=ds.content_hash)
        ctx.check()  # a run that lost its lease records nothing
        watches.record_run(engine=ctx.engine, watch_id=watch.id, facts=facts,
                           judgement=judgement)
        ctx.say(f"{name} on {model}: {summary['accuracy']:.1%} — {judgement.outcome}.")
        if judgement.alert:
            reply = (self._regression(watch, run, facts, judgement)
                     if judgement.outcome == "regression"
                     else self._dataset_changed(watch, facts, summary, ds.name))
            watches.emit_alert(engine=ctx.engine, job_id=ctx.job_id, reply=reply,
                               waker=ctx.waker)
        result: dict[str, Any] = {
            "watch_id": watch.id, "outcome": judgement.outcome, "candidate": name,
            "model": model, "dataset": ds.name, "dataset_version": ds.version,
            "accuracy": summary["accuracy"], "ci": summary["ci"],
            "headline": f"{name} {summary['accuracy']:.1%} ({judgement.outcome})"}
        if judgement.paired is not None:
            res = judgement.paired
            result["paired"] = {"p_value": res.p_value, "diff_pts": res.diff_pts,
                                "broke": len(res.flipped_worse), "fixed": len(res.flipped_better),
                                "against_job": watch.accepted_job_id}
        return result

    def _regression(self, watch: Watch, run: CandidateRun, facts: watches.RunFacts,
                    judgement: watches.Judgement) -> Reply:
        res = judgement.paired
        assert res is not None and watch.id is not None
        broke = [judgement.cases[i] for i in res.flipped_worse]
        fixed = [judgement.cases[i] for i in res.flipped_better]
        line = (f"🚨 Watch #{watch.id}: {watch.prompt_ref} ({run.name}) on {watch.dataset} "
                f"dropped from {res.acc_a:.1%} to {res.acc_b:.1%} ({res.diff_pts:+.1f} pts, "
                f"{format_p(res.p_value)}): {len(broke)} case(s) broke, {len(fixed)} fixed "
                f"· job #{facts.job_id}")
        before = f"job #{watch.accepted_job_id}: {self._was(watch)}"
        now = f"job #{facts.job_id}: {run.name} on {facts.model}, {watch.dataset} " \
              f"v{facts.dataset_version}"
        # The line is the channel message (the status); its thread starts with the numbers.
        blocks = [fields([
            ("last accepted run", f"{before} · {res.acc_a:.1%} ({format_ci(*res.ci_a)})"),
            ("this run", f"{now} · {res.acc_b:.1%} ({format_ci(*res.ci_b)})"),
            ("paired test", f"exact McNemar {format_p(res.p_value)} over {res.n} cases "
                            f"({len(broke)} broke, {len(fixed)} fixed)")])]
        old = watches.case_results(engine=self.ctx.engine, job_id=watch.accepted_job_id or 0,
                                   indexes=broke[:MAX_FLIPPED])
        cases = {o.index: o for o in run.first_samples()}
        rows = []
        for i in broke[:MAX_FLIPPED]:
            o = cases[i]
            inputs = " · ".join(f"{v}" for k, v in o.row.items() if k not in ("expected",
                                                                              "assert"))
            was = old[i].output if i in old else "(not stored)"
            rows.append([str(i + 1), _snip(inputs, 40), _snip(o.expected, 20), _snip(was, 24),
                         _snip(o.output, 24)])
        if rows:
            more = f" (first {MAX_FLIPPED} of {len(broke)})" if len(broke) > MAX_FLIPPED else ""
            blocks.append(section(f"Cases that passed in job #{watch.accepted_job_id} and fail "
                                  f"now{more}:"))
            blocks.append(table(["case", "input", "expected", "was", "now"], rows))
        blocks.append(context(f"The last accepted run stays the baseline; a run as bad as this "
                              f"one stays quiet. /watch stop {watch.id} ends the watch."))
        return Reply(text=line, blocks=blocks, status=line)

    @staticmethod
    def _was(watch: Watch) -> str:
        return (f"{watch.prompt_name}@{watch.accepted_version} on {watch.accepted_model}, "
                f"{watch.dataset} v{watch.accepted_dataset_version}")

    def _dataset_changed(self, watch: Watch, facts: watches.RunFacts, summary: dict[str, Any],
                         dataset: str) -> Reply:
        assert watch.id is not None
        old_hash = (watch.accepted_dataset_hash or "")[:12]
        lo, hi = wilson(summary["passed"], summary["judged"])
        line = (f"🔄 Watch #{watch.id}: the eval set {dataset} changed under the watch "
                f"(v{watch.accepted_dataset_version} → v{facts.dataset_version}, content "
                f"{old_hash} → {facts.dataset_hash[:12]}); this run is the new baseline "
                f"· job #{facts.job_id}")
        blocks = [fields([
            ("last accepted run", f"job #{watch.accepted_job_id}: {self._was(watch)} · "
                                  f"{(watch.accepted_accuracy or 0):.1%}"),
            ("this run", f"job #{facts.job_id}: {watch.prompt_name}@{facts.version} on "
                         f"{facts.model}, {dataset} v{facts.dataset_version} · "
                         f"{facts.accuracy:.1%} ({format_ci(lo, hi)})")]),
            context("The two runs are not on the same cases, so they are not compared; "
                    "if the change was not meant, restore the eval set with /dataset add.")]
        return Reply(text=line, blocks=blocks, status=line)
