"""The production gate for prompt and model labels: a protected label (TUNEBOT_PROTECTED_LABELS)
moves on evidence — a paired comparison of the candidate with the label's current holder on the
prompt's eval set, on the same model — decided by the team's rule (tunebot.promotion).

Prompts compare two versions on one model (`prompt_compare`); models compare two adapters on
one base model under the prompt the candidate was trained for, each rendered with its own
template (`model_compare`, the same runner). Evidence is reused when its key matches
(workspace, both versions, the dataset version — its content — the model and, through the
pinned prompt version, the scorer); otherwise the comparison is queued as a job whose params
carry the pending move (`kind` "prompt" or "model"), and the worker applies the move when the
job finishes, as a compare-and-set on the holder it measured. An admin may force a move with a
reason; every move records why, in label_history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from tunebot import jobs, registry
from tunebot.catalog.store import set_label
from tunebot.commands import Ref
from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.models import Job
from tunebot.promotion import Decision, Evidence, decide, decide_first
from tunebot.settings import Settings

SCAN_JOBS = 500  # how many recent jobs are searched for reusable evidence


def _same(job: Job, kind: str, keys: list[dict[str, Any]], dataset: str,
          dataset_version: int, model: str, finished: bool = True) -> bool:
    p = job.params or {}
    cands = p.get("candidates", [])
    state = (job.status == "succeeded" and bool(job.result)) if finished else \
        job.status in ("queued", "running")
    return (job.kind == kind and state and len(cands) == len(keys)
            and all(all(c.get(k) == v for k, v in key.items())
                    for c, key in zip(cands, keys, strict=False))
            and p.get("dataset") == dataset and p.get("dataset_version") == dataset_version
            and p.get("model") == model)


def _newest(engine: Engine, team_id: str, kind: str, keys: list[dict[str, Any]],
            dataset: str, dataset_version: int, model: str,
            finished: bool = True) -> Job | None:
    for job in jobs.list_jobs(engine=engine, team_id=team_id, kinds=(kind,), limit=SCAN_JOBS):
        if _same(job, kind, keys, dataset, dataset_version, model, finished):
            return job
    return None


def _optimized_from(job: Job, holder_id: int, candidate_id: int, dataset: str,
                    dataset_version: int, model: str) -> bool:
    """A finished `/prompt optimize` that started from the holder and saved the candidate, its
    final paired measure on every case of this dataset version on this model (not on the
    held-out half of an eval split: that is not the gate's case set)."""
    p, r = job.params or {}, job.result or {}
    saved = r.get("saved") or {}
    return (job.kind == "prompt_optimize" and job.status == "succeeded"
            and (p.get("prompt") or {}).get("version_id") == holder_id
            and saved.get("version_id") == candidate_id
            and (r.get("split") or {}).get("source") == "train"
            and len(r.get("summaries") or []) == 2 and bool(r.get("paired"))
            and p.get("dataset") == dataset and p.get("dataset_version") == dataset_version
            and p.get("model") == model)


def find_evidence(*, engine: Engine, team_id: str, holder_id: int, candidate_id: int,
                  dataset: str, dataset_version: int, model: str) -> Job | None:
    """The newest finished comparison of holder (first) with candidate on these cases: a
    `prompt_compare`, or the final paired measure of an optimize job that started from the
    holder and saved the candidate (start first, winner second, like a compare)."""
    for job in jobs.list_jobs(engine=engine, team_id=team_id,
                              kinds=("prompt_compare", "prompt_optimize"), limit=SCAN_JOBS):
        if job.kind == "prompt_compare" and _same(
                job, "prompt_compare", [{"version_id": holder_id},
                                        {"version_id": candidate_id}],
                dataset, dataset_version, model):
            return job
        if _optimized_from(job, holder_id, candidate_id, dataset, dataset_version, model):
            return job
    return None


def find_model_evidence(*, engine: Engine, team_id: str, holder: dict[str, Any],
                        candidate: dict[str, Any], dataset: str, dataset_version: int,
                        base_model: str, finished: bool = True) -> Job | None:
    """The newest finished comparison of two adapters (holder first) on these cases: the same
    model versions, under the same pinned prompt version (its scorer), on the same base
    (finished=False: one still queued or running, so a repeated ask queues no twin)."""
    keys = [{k: c.get(k) for k in ("version_id", "model_version_id")}
            for c in (holder, candidate)]
    return _newest(engine, team_id, "model_compare", keys, dataset, dataset_version,
                   base_model, finished)


def find_test(*, engine: Engine, team_id: str, candidate_id: int, dataset: str,
              dataset_version: int, model: str, template: str | None = None) -> Job | None:
    """The newest finished prompt test of the candidate on these cases (for an adapter,
    model is ft:NAME@V and template the one it was trained with)."""
    for job in jobs.list_jobs(engine=engine, team_id=team_id, kinds=("prompt_test",),
                              limit=SCAN_JOBS):
        if _same(job, "prompt_test", [{"version_id": candidate_id}], dataset,
                 dataset_version, model) and (job.params or {}).get("template") == template:
            return job
    return None


def evidence_of(result: dict[str, Any], job_id: int | None) -> Evidence:
    """The Evidence a finished prompt_compare job measured (holder first, candidate second)."""
    holder, cand = result["summaries"][0], result["summaries"][1]
    paired = result["paired"]
    return Evidence(candidate=cand["candidate"], holder=holder["candidate"],
                    n=int(cand.get("judged", cand.get("cases", 0))),
                    acc_candidate=float(cand["accuracy"]), acc_holder=float(holder["accuracy"]),
                    ci_candidate=(float(cand["ci"][0]), float(cand["ci"][1])),
                    ci_holder=(float(holder["ci"][0]), float(holder["ci"][1])),
                    p_value=float(paired["p_value"]), fixed=int(paired["c"]),
                    broken=int(paired["b"]), job_id=job_id)


def evidence_record(ev: Evidence, decision: Decision, rule: str) -> dict[str, Any]:
    """What label_history keeps of the evidence."""
    return {"job": ev.job_id, "rule": rule, "allowed": decision.allowed, "n": ev.n,
            "candidate": ev.candidate, "holder": ev.holder, "acc_candidate": ev.acc_candidate,
            "acc_holder": ev.acc_holder, "p_value": ev.p_value, "fixed": ev.fixed,
            "broken": ev.broken}


def move(*, engine: Engine, team_id: str, name: str, label: str, version: int, user: str,
         expect: int | None, reason: str, evidence: dict[str, Any] | None,
         forced: bool = False, kind: str = "prompt") -> str:
    """Compare-and-set the label of a prompt or (kind "model") a model; the line that says
    what happened."""
    shown = f"ft:{name}" if kind == "model" else name
    try:
        if kind == "model":
            done = registry.set_model_label(engine=engine, team_id=team_id, name=name,
                                            version=version, label=label, user=user,
                                            expect=expect, reason=reason, forced=forced,
                                            evidence=evidence)
        else:
            with session_scope(engine) as session:
                done = set_label(session=session, team_id=team_id,
                                 ref=Ref(name, version=version), label=label, user=user,
                                 expect=expect, reason=reason, forced=forced,
                                 evidence=evidence)
    except UserError as exc:
        return f"{label} did not move: {exc}"
    if not done.moved:
        return f"{shown}:{label} already points at v{version}."
    was = f"v{done.from_version}" if done.from_version else "unset"
    return f"{shown}:{label} → v{version} (was {was}): {reason}"


def after_job(*, engine: Engine, settings: Settings, team_id: str, params: dict[str, Any],
              result: dict[str, Any], job_id: int | None) -> str:
    """Apply a move a command queued behind this comparison (or first test); the thread line."""
    pending = params["promote"]
    name, label = pending["name"], pending["label"]
    kind = str(pending.get("kind") or "prompt")
    shown = f"ft:{name}" if kind == "model" else name
    if pending.get("first"):
        acc = float(result["summaries"][-1]["accuracy"])
        decision = decide_first(acc, float(pending.get("min", 0.0)),
                                what=f"{shown}@{pending['to']}")
        record = {"job": job_id, "first": True, "accuracy": acc}
    else:
        ev = evidence_of(result, job_id)
        rule = str(pending.get("rule") or settings.promotion_rule)
        decision = decide(ev, rule)
        record = evidence_record(ev, decision, rule)
    if not decision.allowed:
        stays = f"v{pending['expect']}" if pending.get("expect") else "unset"
        return f"{shown}:{label} stays {'on ' if pending.get('expect') else ''}{stays} — " \
               f"{decision.reason}"
    return move(engine=engine, team_id=team_id, name=name, label=label,
                version=int(pending["to"]), user=str(pending["actor"]),
                expect=pending.get("expect"), reason=decision.reason, evidence=record,
                kind=kind)
