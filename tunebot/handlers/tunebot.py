"""/tunebot help · jobs · whoami · ping · cancel."""

from __future__ import annotations

from pathlib import Path

from tunebot import jobs
from tunebot.commands import FAMILIES, SPECS, Command
from tunebot.core import Actor, Core, Outcome
from tunebot.handlers.common import Routes, cancel_job, jobs_table, submit_job
from tunebot.replies import Reply, code, fields, section

ROUTES = Routes()


@ROUTES("tunebot", "help")
def help_(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Usage of every command, or of one family."""
    topic = (cmd.args.get("topic") or "").strip().lstrip("/")
    fams = [topic] if topic in FAMILIES else list(FAMILIES)
    lines = [s.usage for (f, _), s in SPECS.items() if f in fams]
    intro = "tunebot — prompt catalog, prompt tests, fine-tunes and the comparison."
    return Outcome(Reply(text="\n".join([intro, *lines]),
                         blocks=[section(intro), code("\n".join(lines))], ephemeral=True))


@ROUTES("tunebot", "whoami")
def whoami(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """The caller's workspace, user id and role."""
    role = "admin" if actor.is_admin else "member"
    pairs = [("workspace", actor.team_id), ("user", actor.user_id), ("role", role)]
    return Outcome(Reply(text=f"{actor.user_id} in {actor.team_id} ({role})",
                         blocks=[fields(pairs)], ephemeral=True))


@ROUTES("tunebot", "jobs")
def jobs_(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """The workspace's recent jobs."""
    return Outcome(jobs_table(jobs.list_jobs(engine=app.engine, team_id=actor.team_id)))


@ROUTES("tunebot", "ping")
def ping(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """A round-trip job through the broker and a worker."""
    seconds = float(cmd.params.get("seconds", 0))
    return submit_job(cmd, actor, app, kind="noop", params={"seconds": seconds},
                      title="🏓 ping")


@ROUTES("tunebot", "cancel")
def cancel(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Cancel a job (its requester or an admin)."""
    return cancel_job(app, actor, cmd.args["job"], running="will stop at its next check.")
