"""What the buttons on a job's messages do — each the command it stands for, same checks.

Transport-neutral: the bot maps Slack's block_actions to these; a button-created job carries
an active key (team, message, action, user), so a double click finds the job the first click
made, while a click after that job ended starts a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunebot import jobs
from tunebot.access import check_policy
from tunebot.commands import parse
from tunebot.core import Actor, Core, Outcome
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.handlers.common import find_job, submit_job
from tunebot.models import Job
from tunebot.replies import Reply, error, section

RERUN, CANCEL, PROMOTE, COMPARE_PRODUCTION = ("job_rerun", "job_cancel", "prompt_promote",
                                              "prompt_compare_production")
# How a transport fills in what a policy needs about the actor (Slack: their usergroups).
GroupResolver = Callable[[Actor, str, str], Actor]


def buttons_for(kind: str, status: str, params: dict[str, Any], job_id: int) -> list[
        dict[str, str]]:
    """The buttons under a job's final message."""
    value = str(job_id)
    out: list[dict[str, str]] = []
    if kind in ("prompt_test", "prompt_optimize") and status == "succeeded":
        out.append({"action_id": PROMOTE, "text": "Promote to production", "value": value})
        out.append({"action_id": COMPARE_PRODUCTION, "text": "Compare with production",
                    "value": value})
    if kind in jobs.KINDS:
        out.append({"action_id": RERUN, "text": "Re-run", "value": value})
    return out


def cancel_button(job_id: int) -> dict[str, str]:
    """The button on a queued or running job's status message."""
    return {"action_id": CANCEL, "text": "Cancel job", "value": str(job_id)}


def _job_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"`{value[:20]}` is not a job number") from None


def run_action(action_id: str, value: str, actor: Actor, app: Core,
               resolve_groups: GroupResolver | None = None) -> Outcome:
    """Do what the button says; errors become error replies, never exceptions."""
    try:
        job = find_job(app, actor, _job_id(value))
        if action_id == CANCEL:
            return execute(parse(f"/tunebot cancel {job.id}"), actor, app)
        if action_id == RERUN:
            return _rerun(job, actor, app, resolve_groups)
        if job.kind == "prompt_optimize":  # the buttons act on the version it saved
            cand = (job.result or {}).get("saved")
            if not cand:
                raise UserError(f"job #{job.id} saved no version: no candidate beat its start")
        elif job.kind == "prompt_test":
            cand = (job.params or {})["candidates"][0]
        else:
            raise UserError(f"job #{job.id} is not a prompt test")
        pinned = f"{cand['name']}@{cand['version']}"
        if action_id == PROMOTE:
            return execute(parse(f"/prompt label {pinned} production"), actor, app)
        if action_id == COMPARE_PRODUCTION:
            p = job.params
            return execute(parse(f"/prompt compare {cand['name']}:production {pinned} on "
                                 f"{p['dataset']} model={p['model']}"), actor, app)
        raise UserError(f"unknown button `{action_id[:40]}`")
    except UserError as exc:
        return Outcome(error(str(exc), exc.usage))
    except jobs.QuotaExceeded as exc:
        return Outcome(error(str(exc)))


def _rerun(job: Job, actor: Actor, app: Core, resolve_groups: GroupResolver | None) -> Outcome:
    kind = jobs.KINDS.get(job.kind)
    if kind is None:
        raise UserError(f"job #{job.id} ({job.kind}) cannot be re-run")
    # Re-running a job takes the policy of the command it stands for.
    family, action = kind.command
    if resolve_groups is not None:
        actor = resolve_groups(actor, family, action)
    check_policy(family, action, actor, app.settings)
    # A re-run measures again; it never replays the label move a gate queued behind the job.
    params = {k: v for k, v in (job.params or {}).items() if k != "promote"}
    out = submit_job(None, actor, app, kind=job.kind, params=params,
                     title=job.title or job.kind)
    new = out.job
    assert new is not None
    text = (f"Re-running job #{job.id} as job #{new.id} — I'll answer in its thread."
            if out.created else f"That click is already job #{new.id} ({new.status}).")
    return Outcome(Reply(text=text, blocks=[section(text)], ephemeral=True), new, out.created)
