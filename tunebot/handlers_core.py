"""/tunebot help · jobs · whoami · ping · cancel."""

from __future__ import annotations

from pathlib import Path

from tunebot import jobs
from tunebot.commands import FAMILIES, SPECS, Command
from tunebot.replies import Reply, code, fields, section
from tunebot.service import (
    Actor,
    App,
    Outcome,
    find_job,
    handler,
    jobs_table,
    list_jobs,
    require_owner_or_admin,
    submit_job,
)


@handler("tunebot", "help")
def help_(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Usage of every command, or of one family."""
    topic = (cmd.args.get("topic") or "").strip().lstrip("/")
    fams = [topic] if topic in FAMILIES else list(FAMILIES)
    lines = [s.usage for (f, _), s in SPECS.items() if f in fams]
    intro = "tunebot — prompt catalog, prompt tests, fine-tunes and the comparison."
    return Outcome(Reply(text="\n".join([intro, *lines]),
                         blocks=[section(intro), code("\n".join(lines))], ephemeral=True))


@handler("tunebot", "whoami")
def whoami(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """The caller's workspace, user id and role."""
    role = "admin" if actor.is_admin else "member"
    pairs = [("workspace", actor.team_id), ("user", actor.user_id), ("role", role)]
    return Outcome(Reply(text=f"{actor.user_id} in {actor.team_id} ({role})",
                         blocks=[fields(pairs)], ephemeral=True))


@handler("tunebot", "jobs")
def jobs_(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """The workspace's recent jobs."""
    return Outcome(jobs_table(list_jobs(app, actor)))


@handler("tunebot", "ping")
def ping(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """A round-trip job through the broker and a worker."""
    seconds = float(cmd.params.get("seconds", 0))
    return submit_job(cmd, actor, app, kind="noop", params={"seconds": seconds},
                      title="🏓 ping")


@handler("tunebot", "cancel")
def cancel(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Cancel a job (its requester or an admin)."""
    job = find_job(app, actor, cmd.args["job"])
    require_owner_or_admin(job.requested_by, actor, f"job #{job.id}")
    status = jobs.request_cancel(app.engine, job.id, app.waker)  # type: ignore[arg-type]
    text = (f"Job #{job.id} cancelled." if status == "cancelled" else
            f"Job #{job.id} will stop at its next check (it was {status})."
            if status == "running" else f"Job #{job.id} already ended ({status}).")
    return Outcome(Reply(text=text, blocks=[section(text)]))
