"""/watch REF on DATASET every=… · /watch list · /watch stop ID: regression watches."""

from __future__ import annotations

from pathlib import Path

from tunebot import datasets, jobs, watches
from tunebot.access import require_owner_or_admin
from tunebot.commands import Command
from tunebot.core import Actor, Core, Outcome
from tunebot.errors import NotFound, UserError
from tunebot.handlers.common import Routes, check_model, pin
from tunebot.models import Watch
from tunebot.replies import Reply, context, section, table

ROUTES = Routes()


def _channel(channel: str | None) -> str:
    return f"alerts to channel {channel}" if channel else \
        "no alert channel (runs and alerts show in `tunebot jobs`)"


@ROUTES("watch", "set")
def watch_set(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Watch a prompt reference on a dataset: a run at the next tick sets the baseline, then
    one every interval, compared with the last accepted run."""
    usage = cmd.spec.usage
    every = cmd.params.get("every")
    if every is None:
        raise UserError("every= is required: how often to re-test (hour, day, week, or a "
                        "number of seconds)", usage)
    least = app.settings.watch_min_seconds
    if every < least:
        raise UserError(f"every= must be at least {watches.every_text(least)} ({least} s, "
                        f"TUNEBOT_WATCH_MIN_SECONDS) (got {every} s)", usage)
    ref = cmd.args["ref"]
    # Resolved now, so a watch on a prompt, label or dataset that does not exist is refused
    # here rather than failing at its first run; each run resolves the reference again.
    pinned = pin(app, actor, ref)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=cmd.args["dataset"])
    if (ds.stats or {}).get("kind", "rows") != "rows":
        raise UserError(f"{ds.name} is training data, not an eval set (the prompt's variables "
                        "+ `expected`)", usage)
    model = cmd.params.get("model")
    if model is not None:
        model = check_model(app, actor, model, usage)
    channel = cmd.params.get("channel") or actor.channel
    made = watches.create_watch(
        engine=app.engine, team_id=actor.team_id, owner=actor.user_id, prompt_ref=str(ref),
        prompt_name=ref.name, dataset=ds.name, model=model, channel=channel,
        interval_seconds=every, max_watches=app.settings.max_watches)
    w = made.watch
    runs_on = model or f"{pinned['model']} (the version's model)"
    now = "" if ref.version is not None else f" (now {pinned['name']}@{pinned['version']})"
    what = (f"{w.prompt_ref}{now} on {ds.name} (v{ds.version}, {ds.row_count} cases) every "
            f"{watches.every_text(w.interval_seconds)} with {runs_on}, {_channel(w.channel)}")
    head = {"created": f"👁 Watch #{w.id}: {what}.",
            "updated": f"👁 Watch #{w.id} updated: {what}.",
            "resumed": f"👁 Watch #{w.id} resumed: {what}.",
            "unchanged": f"👁 Already watching as #{w.id}: {what}."}[made.status]
    rule = ("The first run sets the baseline; after that a run posts only when it is "
            "significantly worse than the last accepted run on the same cases (paired, "
            "p < 0.05), when it fails, or when the eval set changes. A quiet run becomes the "
            f"new baseline. /watch list · /watch stop {w.id}")
    return Outcome(Reply(text=f"{head}\n{rule}", blocks=[section(head), context(rule)]))


def _last_run(w: Watch, app: Core) -> str:
    if w.last_job_id is None:
        return "not yet"
    job = jobs.get(engine=app.engine, job_id=w.last_job_id)
    status = job.status if job is not None else "?"
    if status in ("queued", "running"):
        return f"#{w.last_job_id} {status}"
    acc = f" {w.last_accuracy:.1%}" if w.last_accuracy is not None else ""
    return f"#{w.last_job_id}{acc} {w.last_outcome or status}"


def _state(w: Watch) -> str:
    if w.state == "paused":
        return f"paused: {w.note}"[:120]
    if w.alert_job_id is not None:
        return f"regressed since #{w.alert_job_id}"
    if w.last_outcome == "failed":
        return f"failing: {w.note}"[:120]
    return "active"


@ROUTES("watch", "list")
def watch_list(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """The workspace's watches: what, how often, where, the last run and the state."""
    rows = watches.list_watches(engine=app.engine, team_id=actor.team_id)
    if not rows:
        text = "No watches yet. Start one: /watch REF on DATASET every=day [channel=#C]"
        return Outcome(Reply(text=text, blocks=[section(text)], ephemeral=True))
    body = [[f"#{w.id}", w.prompt_ref, w.dataset, w.model or "(version's)",
             watches.every_text(w.interval_seconds), w.channel or "-", _last_run(w, app),
             _state(w), w.owner] for w in rows]
    header = ["id", "ref", "dataset", "model", "every", "channel", "last run", "state", "owner"]
    return Outcome(Reply(text=f"{len(rows)} watches", blocks=[table(header, body)],
                         ephemeral=True))


@ROUTES("watch", "stop")
def watch_stop(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Stop a watch (its owner or an admin)."""
    watch_id = cmd.args["id"]
    w = watches.get_watch(engine=app.engine, watch_id=watch_id, team_id=actor.team_id)
    if w is None or w.state == "stopped":
        raise NotFound(f"there is no watch #{watch_id} in this workspace (see /watch list)")
    require_owner_or_admin(w.owner, actor, f"watch #{watch_id}")
    stopped = watches.stop_watch(engine=app.engine, watch_id=watch_id, by=actor.user_id)
    text = (f"Watch #{watch_id} ({w.prompt_ref} on {w.dataset}) stopped." if stopped
            else f"Watch #{watch_id} was already stopped.")
    return Outcome(Reply(text=text, blocks=[section(text)]))
