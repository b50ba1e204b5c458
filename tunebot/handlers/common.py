"""What the handlers share: their route tables, queueing a job, finding and cancelling one,
and resolving what a job will run (pinned prompt versions, checked model references)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunebot import catalog, jobs, registry
from tunebot.access import require_owner_or_admin
from tunebot.commands import SPECS, Command, Ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import NotFound
from tunebot.jobs import chain
from tunebot.modelref import parse_model_ref
from tunebot.models import Job
from tunebot.replies import Reply, section, table

Handler = Callable[[Command, Actor, Core, Path | None], Outcome]


class Routes:
    """One module's handlers by (family, action); tunebot.dispatch merges every table."""

    def __init__(self) -> None:
        self.table: dict[tuple[str, str], Handler] = {}

    def __call__(self, family: str, action: str) -> Callable[[Handler], Handler]:
        """Decorate a handler of /family action."""
        def add(fn: Handler) -> Handler:
            assert (family, action) in SPECS, (family, action)
            self.table[(family, action)] = fn
            return fn
        return add


def submit_job(cmd: Command | None, actor: Actor, app: Core, *, kind: str,
               params: dict[str, Any], title: str, parent_id: int | None = None) -> Outcome:
    """Create (or find, for a repeated request) the job a command stands for; with
    `parent_id`, a stage of that job (tunebot/jobs/chain.py: no quota of its own)."""
    def announce(job: Job) -> Reply:
        line = f"{title} · #{job.id} · queued"
        return Reply(text=line, status=line)

    sub = jobs.submit(
        engine=app.engine, waker=app.waker, team_id=actor.team_id, kind=kind,
        requested_by=actor.user_id, params=params, title=title, channel=actor.channel,
        thread_ts=actor.thread_ts, response_url=actor.response_url,
        idempotency_key=actor.idempotency_key, active_key=actor.active_key,
        max_attempts=app.settings.max_attempts,
        max_active_per_user=app.settings.max_jobs_per_user, announce=announce,
        parent_id=parent_id,
    )
    job = sub.job
    verb = "Queued" if sub.created else "Already have"
    text = f"{verb} {title} as job #{job.id} ({job.status})."
    return Outcome(Reply(text=text, blocks=[section(text)], ephemeral=True), job, sub.created)


def find_job(app: Core, actor: Actor, job_id: int) -> Job:
    """A job of this workspace, or NotFound."""
    job = jobs.get(engine=app.engine, job_id=job_id, team_id=actor.team_id)
    if job is None:
        raise NotFound(f"there is no job #{job_id} in this workspace")
    return job


def cancel_job(app: Core, actor: Actor, job_id: int, *, running: str) -> Outcome:
    """Cancel a job (its requester or an admin); `running` says what a running one does."""
    job = find_job(app, actor, job_id)
    require_owner_or_admin(job.requested_by, actor, f"job #{job.id}")
    assert job.id is not None
    state = jobs.request_cancel(engine=app.engine, job_id=job.id, waker=app.waker)
    # Its stages go with it (tunebot/jobs/chain.py): after the parent, which they then
    # cannot wake.
    stages = chain.cancel_tree(engine=app.engine, job_id=job.id, waker=app.waker)
    text = {"cancelled": f"Job #{job.id} cancelled.",
            "running": f"Job #{job.id} {running}"}.get(
        state, f"Job #{job.id} already ended ({state}).")
    if stages:
        text += " Its stage job(s) " + ", ".join(f"#{i}" for i in stages) + " cancelled too."
    return Outcome(Reply(text=text, blocks=[section(text)]))


def delivery_text(job: Job) -> str:
    """The state of a job's Slack delivery when it is not simply fine: stopped for good (and
    why), or retrying after failures in a row."""
    if job.delivery_failed_at is not None:
        return f"not delivered to Slack: {job.delivery_error or 'failed'}"
    if job.delivery_attempts:
        return f"Slack delivery retrying ({job.delivery_attempts} failed: " \
               f"{job.delivery_error or 'error'})"
    return ""


def jobs_table(rows: list[Job]) -> Reply:
    """A reply listing jobs; a job whose thread could not be posted to Slack says so."""
    if not rows:
        return Reply(text="No jobs yet.", blocks=[section("No jobs yet.")])
    body = [[f"#{j.id}", j.kind, j.status, f"{int(100 * j.progress)}%", j.requested_by,
             (j.title or "")[:60]] for j in rows]
    blocks = [table(["job", "kind", "status", "progress", "by", "title"], body)]
    failing = [(j, delivery_text(j)) for j in rows if delivery_text(j)]
    if failing:
        blocks.append(table(["job", "slack delivery"], [[f"#{j.id}", text[:200]]
                                                        for j, text in failing]))
    return Reply(text=f"{len(rows)} jobs", blocks=blocks)


def check_model(app: Core, actor: Actor, model: str, usage: str) -> str:
    """Validate a model reference (tunebot.modelref's grammar), and that an ft: model exists
    in this workspace; returns it as given."""
    ref = parse_model_ref(model, usage=usage)
    if ref.kind == "ft":
        registry.resolve_model(engine=app.engine, team_id=actor.team_id, name=ref.name,
                               version=ref.version, label=ref.label)
    return model


def pin(app: Core, actor: Actor, ref: Ref) -> dict[str, Any]:
    """Resolve a prompt ref now, so a label moving later does not change the job."""
    with session_scope(app.engine) as session:
        version = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
        return {"ref": str(ref), "name": ref.name, "version": version.version,
                "version_id": version.id, "model": version.content.get("model") or "smollm2"}
