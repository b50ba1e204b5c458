"""`tunebot ci`: the promotion gate for a pull request.

Each candidate is compared, paired, with a baseline on an eval set by the same jobs Slack
queues (`/prompt compare BASELINE CANDIDATE on DATASET`), followed to their end, and judged by
the team's promotion rule (tunebot/promotion.py); a refused candidate is a regression. The
caller (tunebot/cli.py) chooses where the jobs run: on the workers (the job is sent to the
broker), or in its own process with `--local` (it passes a function that runs the worker's
`execute_job` on the job it just queued, so the scoring is the workers' code either way).

This module only orchestrates and writes the results: the lines the CLI prints, JUnit XML (one
testcase per candidate) and a markdown table for a pull-request comment.
"""

from __future__ import annotations

import re
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunebot import catalog, datasets, jobs
from tunebot.access import check_policy
from tunebot.catalog.files import GUIDELINES, load_yaml
from tunebot.commands import LABEL_RE, Ref, parse, parse_ref
from tunebot.core import Actor, Core
from tunebot.db import session_scope
from tunebot.dispatch import HANDLERS
from tunebot.errors import UserError
from tunebot.handlers.common import check_model, pin
from tunebot.models import FINAL_STATUSES, Job
from tunebot.promotion import Decision, Evidence, decide, decide_first
from tunebot.stats import format_ci, format_p

USAGE = ("tunebot ci REF [REF…] --against LABEL|REF [--on DATASET] [--model M] "
         "[--junit FILE] [--markdown FILE] [--local]")
NO_WORKER_SECONDS = 30.0
# Characters XML 1.0 cannot carry at all (a job's error text may hold any of them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

Runner = Callable[[int], object]
Note = Callable[[str], None]


@dataclass(frozen=True)
class Pair:
    """One candidate to judge: pinned versions (the dicts `handlers.common.pin` returns), the
    eval set and the model; no baseline when the label is not set yet (a first label)."""

    candidate: dict[str, Any]
    baseline: dict[str, Any] | None
    dataset: str
    model: str | None
    against: str  # what --against named, for the "(unset)" case

    @property
    def cand_ref(self) -> str:
        """The candidate as NAME@V."""
        return f"{self.candidate['name']}@{self.candidate['version']}"

    @property
    def base_ref(self) -> str:
        """The baseline as NAME@V, or the label that is not set yet."""
        if self.baseline is None:
            return f"{self.candidate['name']}:{self.against} (unset)"
        return f"{self.baseline['name']}@{self.baseline['version']}"

    @property
    def same(self) -> bool:
        """The candidate is the baseline's own version: nothing to measure."""
        return self.baseline is not None and \
            self.baseline["version_id"] == self.candidate["version_id"]

    def command(self) -> str:
        """The command of the grammar that measures it (what a user would type in Slack)."""
        model = f" model={shlex.quote(self.model)}" if self.model else ""
        on = shlex.quote(self.dataset)
        if self.baseline is None:
            return f"/prompt test {self.cand_ref} on {on}{model}"
        return f"/prompt compare {self.base_ref} {self.cand_ref} on {on}{model}"


@dataclass(frozen=True)
class Verdict:
    """What the gate says about one candidate, with the numbers behind it."""

    pair: Pair
    passed: bool
    reason: str
    evidence: Evidence | None = None
    accuracy: float | None = None  # a first label: the candidate's own score
    ci: tuple[float, float] | None = None
    job_id: int | None = None
    model: str = ""
    errored: bool = False  # the job failed or was cancelled: no evidence at all
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """The testcase's name: candidate vs baseline on the eval set."""
        return f"{self.pair.cand_ref} vs {self.pair.base_ref} on {self.pair.dataset}"

    def line(self) -> str:
        """The one line the CLI prints for it."""
        mark = "✓" if self.passed else "✗"
        return f"{mark} {self.name}: {self.reason}"

    def details(self) -> str:
        """Every number, one per line (the body of a JUnit failure)."""
        out: list[str] = []
        ev = self.evidence
        if ev is not None:
            out += [f"candidate {ev.candidate}: {ev.acc_candidate:.1%} "
                    f"(95% CI {format_ci(*ev.ci_candidate)})",
                    f"baseline  {ev.holder}: {ev.acc_holder:.1%} "
                    f"(95% CI {format_ci(*ev.ci_holder)})",
                    f"difference: {ev.diff_pts:+.1f} pts, {format_p(ev.p_value)} "
                    "(paired on the same cases, exact McNemar)",
                    f"cases fixed: {ev.fixed}, broken: {ev.broken} (of {ev.n})"]
        elif self.accuracy is not None and self.ci is not None:
            out.append(f"candidate {self.pair.cand_ref}: {self.accuracy:.1%} "
                       f"(95% CI {format_ci(*self.ci)}); {self.pair.base_ref}: nothing to "
                       "compare with, judged as a first label")
        out.append(f"dataset: {self.pair.dataset}" + (f" · model: {self.model}"
                                                      if self.model else ""))
        if self.job_id is not None:
            out.append(f"job: #{self.job_id} (tunebot run \"{self.pair.command()}\")")
        out.append(f"verdict: {self.reason}")
        return "\n".join(out)


@dataclass
class Run:
    """The verdicts of one `tunebot ci`, in the order the candidates were given."""

    verdicts: list[Verdict] = field(default_factory=list)
    rule: str = "not-worse"

    @property
    def regressions(self) -> list[Verdict]:
        """Candidates the rule refused (their jobs ran)."""
        return [v for v in self.verdicts if not v.passed and not v.errored]

    @property
    def errors(self) -> list[Verdict]:
        """Candidates whose job failed: no evidence, so no pass."""
        return [v for v in self.verdicts if v.errored]

    @property
    def exit_code(self) -> int:
        """0 when every candidate passed, 1 otherwise (usage errors never get this far)."""
        return 0 if all(v.passed for v in self.verdicts) else 1

    def lines(self) -> list[str]:
        """One line per candidate, then the count."""
        passed = sum(1 for v in self.verdicts if v.passed)
        tail = [f"{passed} passed", f"{len(self.regressions)} regression(s)"]
        if self.errors:
            tail.append(f"{len(self.errors)} error(s)")
        return [v.line() for v in self.verdicts] + \
            [f"tunebot ci: {', '.join(tail)} (rule: {self.rule})"]


# ---- planning: every reference, dataset and model checked before any job is queued ---------

def parse_against(raw: str) -> Ref | str:
    """`production` (a bare label: each candidate's own prompt's label) or a REF
    (NAME@V or NAME:LABEL: one baseline for every candidate)."""
    if "@" in raw or ":" in raw:
        return parse_ref(raw, USAGE)
    if LABEL_RE.match(raw):
        return raw
    raise UserError(f"`{raw[:60]}` is neither a label (e.g. production) nor a reference "
                    "(NAME@3, NAME:production)", USAGE)


def candidate_ref(raw: str, app: Core, actor: Actor) -> Ref:
    """A REF of the catalog, or a catalog file (prompts/NAME.yaml): its last version, which
    must be in the catalog already (`tunebot catalog import prompts/` puts it there)."""
    if not raw.endswith((".yaml", ".yml")) and "/" not in raw:
        return parse_ref(raw, USAGE)
    path = Path(raw)
    if path.stem == GUIDELINES:
        raise UserError(f"{raw} holds the team's guidelines, not a prompt: leave it out", USAGE)
    if not path.is_file():
        raise UserError(f"no such file: {raw}", USAGE)
    data = load_yaml(path)
    versions = data.get("versions") if isinstance(data, dict) else None
    if not isinstance(versions, list) or not versions:
        raise UserError(f"{raw}: not a catalog file (it needs a `versions:` list)", USAGE)
    name, number = str(data.get("name") or path.stem), len(versions)
    content = catalog.parse_content(versions[-1], f"{path.name}: versions[{number - 1}]")
    importing = f"run `tunebot catalog import {path.parent or '.'}/` first"
    with session_scope(app.engine) as session:
        try:
            version = catalog.resolve(session=session, team_id=actor.team_id,
                                      ref=Ref(name, number))
        except UserError:
            raise UserError(f"{raw}: {name} v{number} is not in the catalog; {importing}",
                            USAGE) from None
        same = version.content_hash == catalog.content_hash(content)
    if not same:
        raise UserError(f"{raw}: its last version differs from {name} v{number} in the "
                        f"catalog; {importing} (versions never change: a new one goes at the "
                        "end of `versions:`)", USAGE)
    return Ref(name, number)


def plan(app: Core, actor: Actor, refs: list[str], against: str, *,
         dataset: str | None = None, model: str | None = None) -> list[Pair]:
    """Resolve and check everything the run needs; a UserError here is a usage error."""
    if not refs:
        raise UserError("name at least one candidate REF", USAGE)
    base = parse_against(against)
    if model is not None:
        check_model(app, actor, model, USAGE)
    fixed_base = pin(app, actor, base) if isinstance(base, Ref) else None
    pairs: list[Pair] = []
    seen: set[int] = set()
    for raw in refs:
        ref = candidate_ref(raw, app, actor)
        cand = pin(app, actor, ref)
        if cand["version_id"] in seen:
            continue  # named twice (a file and its REF): judged once
        seen.add(cand["version_id"])
        with session_scope(app.engine) as session:
            prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=ref.name)
            linked = (prompt.datasets or {}).get("eval")
            labels = catalog.labels_of(session=session, team_id=actor.team_id, name=ref.name)
        baseline = fixed_base
        if isinstance(base, str):
            # The label of the candidate's own prompt; not set yet: judged as a first label.
            baseline = pin(app, actor, Ref(ref.name, label=base)) if base in labels else None
        name = dataset or linked
        if not name:
            raise UserError(f"{ref.name} links no eval set (datasets.eval in its YAML): "
                            "pass --on DATASET", USAGE)
        ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=name)
        if ds.row_count == 0:
            raise UserError(f"dataset {ds.name} has no rows", USAGE)
        pairs.append(Pair(cand, baseline, ds.name, model, against))
    return pairs


# ---- running: queue each measurement, follow it to its end, judge it ------------------------

def submit(app: Core, actor: Actor, pair: Pair) -> Job:
    """Queue the pair's job through the command's own handler (the same checks and params as
    in Slack); raises jobs.QuotaExceeded when the CLI user has too many jobs going."""
    cmd = parse(pair.command())
    check_policy(cmd.family, cmd.action, actor, app.settings)
    out = HANDLERS[(cmd.family, cmd.action)](cmd, actor, app, None)
    if out.job is None:  # a job command's handler returns its job or raises; never silent
        raise UserError(out.reply.text, USAGE)
    return out.job


def evidence_of(job: Job) -> Evidence:
    """The paired comparison a finished prompt_compare job measured (baseline first)."""
    res = job.result or {}
    holder, cand = res["summaries"]
    paired = res["paired"]
    return Evidence(candidate=cand["candidate"], holder=holder["candidate"], n=int(cand["cases"]),
                    acc_candidate=float(cand["accuracy"]), acc_holder=float(holder["accuracy"]),
                    ci_candidate=(float(cand["ci"][0]), float(cand["ci"][1])),
                    ci_holder=(float(holder["ci"][0]), float(holder["ci"][1])),
                    p_value=float(paired["p_value"]), fixed=int(paired["c"]),
                    broken=int(paired["b"]), job_id=job.id)


def _seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None:
        return 0.0
    return max((job.finished_at - job.started_at).total_seconds(), 0.0)


def judge(pair: Pair, job: Job, *, rule: str, minimum: float) -> Verdict:
    """The rule applied to a finished job; a job that did not succeed is an error."""
    model = str(job.params.get("model") or "")
    if job.status != "succeeded":
        return Verdict(pair, False, f"job #{job.id} {job.status}: {job.error or 'no reason'} "
                       "(no evidence, so no pass)", job_id=job.id, model=model, errored=True,
                       seconds=_seconds(job))
    try:
        if pair.baseline is None:
            summary = (job.result or {})["summaries"][0]
            acc = float(summary["accuracy"])
            ci = (float(summary["ci"][0]), float(summary["ci"][1]))
            first: Decision = decide_first(acc, minimum, what=pair.cand_ref)
            return Verdict(pair, first.allowed, f"no {pair.against} to compare with: "
                           f"{first.reason} (job #{job.id})", accuracy=acc, ci=ci,
                           job_id=job.id, model=model, seconds=_seconds(job))
        ev = evidence_of(job)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return Verdict(pair, False, f"job #{job.id} left no readable result "
                       f"({exc.__class__.__name__}: {exc})", job_id=job.id, model=model,
                       errored=True, seconds=_seconds(job))
    decision = decide(ev, rule)
    return Verdict(pair, decision.allowed, decision.reason, evidence=ev, job_id=job.id,
                   model=model, seconds=_seconds(job))


def run(app: Core, actor: Actor, pairs: list[Pair], *, local: Runner | None = None,
        note: Note | None = None, poll: float = 0.5) -> Run:
    """Measure and judge every pair. Jobs are queued as the CLI user's quota allows and
    followed until they end; with `local`, each is run in this process right after it is
    queued. Interrupted (Ctrl-C, a cancelled CI run), it cancels the jobs it queued."""
    settings = app.settings
    done: dict[int, Verdict] = {}
    active: dict[int, int] = {}  # pair index -> job id
    waiting = list(range(len(pairs)))
    started, warned_worker, warned_quota = time.monotonic(), False, False
    try:
        while waiting or active:
            while waiting:
                i = waiting[0]
                pair = pairs[i]
                if pair.same:
                    done[i] = Verdict(pair, True, "the same version as the baseline: nothing "
                                      "changed, nothing to measure")
                    waiting.pop(0)
                    continue
                try:
                    job = submit(app, actor, pair)
                except jobs.QuotaExceeded as exc:
                    if local is not None and not active:
                        # Nothing of ours will free a place: the queued jobs are someone
                        # else's, waiting for a worker this run does not use.
                        raise UserError(str(exc), USAGE) from None
                    if note is not None and not warned_quota and not active:
                        note(f"tunebot ci: waiting for a place in the job quota: {exc}")
                        warned_quota = True
                    break
                assert job.id is not None
                waiting.pop(0)
                active[i] = job.id
                if local is not None:
                    local(job.id)
            for i, job_id in list(active.items()):
                row = jobs.get(engine=app.engine, job_id=job_id)
                if row is None:  # deleted under us: say so rather than wait forever
                    done[i] = Verdict(pairs[i], False, f"job #{job_id} disappeared",
                                      job_id=job_id, errored=True)
                    del active[i]
                elif row.status in FINAL_STATUSES:
                    done[i] = judge(pairs[i], row, rule=settings.promotion_rule,
                                    minimum=settings.min_production_accuracy)
                    del active[i]
                elif (note is not None and not warned_worker and row.status == "queued"
                      and row.attempt == 0
                      and time.monotonic() - started > NO_WORKER_SECONDS):
                    warned_worker = True
                    note(f"tunebot ci: no worker has taken job #{job_id} in "
                         f"{NO_WORKER_SECONDS:.0f} s; start one (`tunebot worker --queues "
                         f"{row.queue}`) or run with --local. Still waiting…")
            if waiting or active:
                time.sleep(poll)
    except KeyboardInterrupt:
        for job_id in active.values():
            jobs.request_cancel(engine=app.engine, job_id=job_id, waker=app.waker)
        raise
    return Run([done[i] for i in range(len(pairs))], settings.promotion_rule)


# ---- reports --------------------------------------------------------------------------------

def _xml(text: str) -> str:
    return _NOT_XML.sub("?", text)


def junit_xml(result: Run) -> str:
    """JUnit XML: one testsuite, one testcase per candidate; a regression is a <failure>, a
    job that failed an <error>, each with every number in its message and body."""
    verdicts = result.verdicts
    total = f"{sum(v.seconds for v in verdicts):.3f}"
    counts = {"tests": str(len(verdicts)), "failures": str(len(result.regressions)),
              "errors": str(len(result.errors)), "time": total}
    root = ET.Element("testsuites", {"name": "tunebot ci", **counts})
    suite = ET.SubElement(root, "testsuite", {
        "name": "tunebot ci", **counts, "skipped": "0",
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat()})
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "promotion_rule", "value": result.rule})
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"tunebot.ci.{v.pair.candidate['name']}", "name": _xml(v.name),
            "time": f"{v.seconds:.3f}"})
        if not v.passed:
            tag, kind = ("error", "JobFailed") if v.errored else ("failure", "Regression")
            bad = ET.SubElement(case, tag, {"message": _xml(v.reason), "type": kind})
            bad.text = _xml(v.details())
        else:
            ET.SubElement(case, "system-out").text = _xml(v.details())
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown(result: Run) -> str:
    """A summary table for a pull-request comment, then each verdict in words."""
    bad = len(result.regressions) + len(result.errors)
    head = (f"### tunebot ci: ❌ {bad} of {len(result.verdicts)} candidate(s) refused"
            if bad else f"### tunebot ci: ✅ {len(result.verdicts)} candidate(s) not worse")
    rows = ["| | candidate | baseline | eval set | candidate (95% CI) | baseline (95% CI) "
            "| Δ pts | p | fixed | broken | job |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in result.verdicts:
        mark = "✅" if v.passed else "⚠️" if v.errored else "❌"
        ev = v.evidence
        if ev is not None:
            nums = [f"{ev.acc_candidate:.1%} ({format_ci(*ev.ci_candidate)})",
                    f"{ev.acc_holder:.1%} ({format_ci(*ev.ci_holder)})",
                    f"{ev.diff_pts:+.1f}", format_p(ev.p_value), str(ev.fixed), str(ev.broken)]
        elif v.accuracy is not None and v.ci is not None:
            nums = [f"{v.accuracy:.1%} ({format_ci(*v.ci)})", "—", "—", "—", "—", "—"]
        else:
            nums = ["—"] * 6
        job = f"#{v.job_id}" if v.job_id is not None else "—"
        rows.append("| " + " | ".join(_cell(c) for c in [
            mark, v.pair.cand_ref, v.pair.base_ref, v.pair.dataset, *nums, job]) + " |")
    models = sorted({v.model for v in result.verdicts if v.model})
    notes = [f"- **{_cell(v.pair.cand_ref)}**: {_cell(v.reason)}" for v in result.verdicts]
    foot = (f"Rule `{result.rule}` (tunebot/promotion.py)"
            + (f" · model {', '.join(f'`{m}`' for m in models)}" if models else "")
            + " · p: paired exact McNemar on the same cases")
    return "\n".join([head, "", *rows, "", *notes, "", foot, ""])
