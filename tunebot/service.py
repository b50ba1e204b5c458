"""Executes parsed commands for an actor: policy check, then the handler; transport-neutral."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tunebot import jobs
from tunebot.commands import SPECS, Command, usage_for
from tunebot.errors import Forbidden, NotFound, UserError
from tunebot.models import Job
from tunebot.replies import Reply, error, section, table
from tunebot.settings import Settings


@dataclass
class Actor:
    """Who asks, from where: workspace, user, and the Slack context a job answers in."""

    team_id: str
    user_id: str
    is_admin: bool = False
    channel: str | None = None
    thread_ts: str | None = None
    response_url: str | None = None
    idempotency_key: str | None = None
    active_key: str | None = None
    usergroups: frozenset[str] = frozenset()


@dataclass
class App:
    """What every handler needs: settings, the database, and a way to wake workers."""

    settings: Settings
    engine: Engine
    waker: jobs.Waker | None


@dataclass
class Outcome:
    """What a command produced: a reply, and the job it created or found (if any)."""

    reply: Reply
    job: Job | None = None
    created: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Command, Actor, App, Path | None], Outcome]
HANDLERS: dict[tuple[str, str], Handler] = {}

# Policy is declared per command; `check_policy` is the one place it is enforced.
POLICY: dict[tuple[str, str], str] = {
    ("finetune", "start"): "finetune",
    ("model", "label"): "admin",
}


def handler(family: str, action: str) -> Callable[[Handler], Handler]:
    """Register a handler for a subcommand."""
    def register(fn: Handler) -> Handler:
        assert (family, action) in SPECS, (family, action)
        HANDLERS[(family, action)] = fn
        return fn
    return register


def check_policy(cmd: Command, actor: Actor, settings: Settings) -> None:
    """Raise Forbidden unless the actor may run this command."""
    check_policy_for(cmd.family, cmd.action, actor, settings)


def check_policy_for(family: str, action: str, actor: Actor, settings: Settings) -> None:
    """Raise Forbidden unless the actor may run /family action (also for buttons)."""
    policy = POLICY.get((family, action), "anyone")
    if policy == "admin" and not actor.is_admin:
        raise Forbidden(f"/{family} {action} is for admins of this workspace "
                        "(TUNEBOT_ADMINS)")
    if policy == "finetune" and settings.finetune_allowed and not actor.is_admin:
        allowed = set(settings.finetune_allowed)
        if actor.user_id not in allowed and not (actor.usergroups & allowed):
            raise Forbidden("fine-tuning is limited to the people in TUNEBOT_FINETUNE_ALLOWED; "
                            "ask an admin")


def require_owner_or_admin(owner: str, actor: Actor, what: str) -> None:
    """Raise Forbidden unless the actor owns the thing or is an admin."""
    if actor.user_id != owner and not actor.is_admin:
        raise Forbidden(f"only {what}'s owner ({owner}) or an admin may do that")


def execute(cmd: Command, actor: Actor, app: App, file: Path | None = None) -> Outcome:
    """Run a command; user errors become error replies, never exceptions."""
    _load_handlers()
    try:
        check_policy(cmd, actor, app.settings)
        fn = HANDLERS.get((cmd.family, cmd.action))
        if fn is None:
            raise UserError(f"/{cmd.family} {cmd.action} is not available yet",
                            usage_for(cmd.family))
        return fn(cmd, actor, app, file)
    except jobs.QuotaExceeded as exc:
        return Outcome(error(str(exc)))
    except UserError as exc:
        return Outcome(error(str(exc), exc.usage))


def _load_handlers() -> None:
    # Handler modules register themselves on import; import them here, not at module import,
    # so the registry has no cycles.
    import tunebot.handlers  # noqa: F401


def submit_job(cmd: Command | None, actor: Actor, app: App, *, kind: str, params: dict[str, Any],
               title: str) -> Outcome:
    """Create (or find, for a repeated request) the job a command stands for."""
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
    )
    job = sub.job
    verb = "Queued" if sub.created else "Already have"
    text = f"{verb} {title} as job #{job.id} ({job.status})."
    return Outcome(Reply(text=text, blocks=[section(text)], ephemeral=True), job, sub.created)


def find_job(app: App, actor: Actor, job_id: int) -> Job:
    """A job of this workspace, or NotFound."""
    job = jobs.get(app.engine, job_id, actor.team_id)
    if job is None:
        raise NotFound(f"there is no job #{job_id} in this workspace")
    return job


def list_jobs(app: App, actor: Actor, *, kinds: tuple[str, ...] | None = None,
              limit: int = 20) -> list[Job]:
    """The workspace's most recent jobs."""
    with Session(app.engine) as session:
        q = select(Job).where(Job.team_id == actor.team_id)  # type: ignore[arg-type]
        if kinds:
            q = q.where(Job.kind.in_(kinds))  # type: ignore[attr-defined]
        return list(session.execute(q.order_by(Job.id.desc()).limit(limit))  # type: ignore[union-attr]
                    .scalars().all())


def jobs_table(rows: list[Job]) -> Reply:
    """A reply listing jobs."""
    if not rows:
        return Reply(text="No jobs yet.", blocks=[section("No jobs yet.")])
    body = [[f"#{j.id}", j.kind, j.status, f"{int(100 * j.progress)}%", j.requested_by,
             (j.title or "")[:60]] for j in rows]
    return Reply(text=f"{len(rows)} jobs",
                 blocks=[table(["job", "kind", "status", "progress", "by", "title"], body)])
