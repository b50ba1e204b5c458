"""A scripted session of every slash command, over HTTP and over Socket Mode.

One workspace with a catalog prompt, an eval set and a training set on the tiny model; each
command's answer (the ack) and each job's thread (root status message kept current, replies and
uploaded images in the thread) is checked as a user would read it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlmodel import Session

from devtools.seed import ROWS, seed_colours
from devtools.slack_api.payloads import app_home_opened_event
from tests.bot.conftest import Client, Stack, client_for, running_stack
from tunebot import datasets, jobs
from tunebot.models import Job, JobEvent

CHANNEL = "C0CHANNEL"
HP = "epochs=1 lr=5e-3 batch_size=8 max_seq_len=48 lora_r=4 eval_every=3 seed=1"


def strings(obj: object) -> list[str]:
    """Every "text" string inside a Block Kit structure."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "text" and isinstance(v, str)] + [
            s for k, v in obj.items() if not (k == "text" and isinstance(v, str))
            for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def said(answer: dict) -> str:
    """Everything an ack shows: its text and the text of its blocks."""
    return "\n".join([answer.get("text", ""), *strings(answer.get("blocks") or [])])


def seed(stack: Stack, tmp_path: Path) -> None:
    """The colours prompt (two versions), its eval set and a training set."""
    app, settings = stack.core, stack.settings
    seed_colours(app.engine, settings, tmp_path)
    shades = ("light", "dark", "bright", "pale", "deep")
    train = tmp_path / "colours-train.jsonl"
    train.write_text("".join(json.dumps({"colour": f"{sh} {r['colour']}",
                                         "expected": r["expected"]}) + "\n"
                             for sh in shades for r in ROWS[:8]))
    datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM",
                         name="colours-train", path=train, user="U0ALICE")


def job_id_of(answer: dict) -> int:
    """The job number an ack names ("Queued … as job #7 …")."""
    text = answer.get("text", "")
    assert "job #" in text, text
    return int(text.split("job #", 1)[1].split()[0].rstrip(").,"))


def thread_of(stack: Stack, job_id: int, timeout: float = 300) -> tuple[dict, list[dict]]:
    """Wait until the job is final and every event it wrote reached Slack; (root, replies)."""
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get(engine=stack.core.engine, job_id=job_id)
        with Session(stack.core.engine) as s:
            pending = s.execute(select(JobEvent.id).where(JobEvent.job_id == job_id,
                                                          JobEvent.delivered_at.is_(None))  # type: ignore[union-attr]
                                ).first()
        if job is not None and job.status in ("succeeded", "failed", "cancelled") \
                and pending is None and job.status_ts:
            break
        assert time.monotonic() < deadline, f"job {job_id} not delivered: {job}"
        time.sleep(0.3)
    root = stack.slack.message(CHANNEL, job.status_ts)
    assert root is not None
    return root, [m for m in stack.slack.thread(CHANNEL, job.status_ts) if m["ts"] != root["ts"]]


def texts(replies: list[dict]) -> str:
    """A thread's replies as one string."""
    return "\n".join(said(m) for m in replies)


def script(stack: Stack, client: Client, model: Path) -> None:
    """Every slash command, in the order a team would meet them."""
    def cmd(text: str, command: str = "/tunebot", user: str = "U0ALICE") -> str:
        return said(client.slash(text, command=command, user_id=user))

    def job(text: str, command: str, *, expect: str = "succeeded",
            user: str = "U0ALICE") -> tuple[int, dict, str]:
        answer = client.slash(text, command=command, user_id=user)
        assert "Queued" in answer.get("text", ""), said(answer)
        assert answer.get("response_type") == "ephemeral"
        jid = job_id_of(answer)
        root, replies = thread_of(stack, jid)
        title = jobs.get(engine=stack.core.engine, job_id=jid).title
        assert root["text"].split(" ", 1)[1].startswith(f"{title}"
                                                        f" · #{jid} · {expect}"), root["text"]
        return jid, root, texts(replies)

    # Help, identity, the catalog (read-only commands answer in the ack).
    assert "/prompt test REF on DATASET" in cmd("help")
    assert "/finetune start" in cmd("help finetune")
    assert "U0ALICE" in cmd("whoami") and "member" in cmd("whoami")
    assert "admin" in cmd("whoami", user="U0ADMIN")
    assert "colours" in cmd("list", "/prompt") and "colours" in cmd("prompt list")
    shown = cmd("show colours@1", "/prompt")
    assert "Classify the colour" in shown and "warm | cool" in shown, shown
    hist = cmd("history colours", "/prompt")
    assert "v1" in hist and "v2" in hist
    assert "Answer:" in cmd("diff colours@1 colours@2", "/prompt")
    assert "colour: red" in cmd("render colours@1 colour=red", "/prompt")
    assert "owner (U0ALICE) or an admin" in cmd("label colours@2 production", "/prompt",
                                                user="U0BOB")
    assert "production" in cmd("label colours@2 production", "/prompt")
    assert "colours@2" in cmd("show colours:production", "/prompt")
    # /prompt new and /prompt edit open the form (tests/bot/test_modals.py submits it).
    opened = len(stack.slack.calls_for("views.open"))
    assert cmd("edit colours", "/prompt").strip() == ""
    assert cmd("new", "/prompt").strip() == ""
    stack.slack.wait_for(lambda: len(stack.slack.calls_for("views.update")) >= 2 or None,
                         timeout=15)
    assert len(stack.slack.calls_for("views.open")) == opened + 2
    assert "colours-eval" in cmd("list", "/dataset")
    ds = cmd("show colours-eval", "/dataset")
    assert "24" in ds and "warm" in ds and "cool" in ds

    # Jobs: each answers in its own thread, the root message kept current.
    _, root, thread = job(f"test colours@1 on colours-eval model={model} samples=2", "/prompt")
    assert "accuracy" in thread and "95% CI" in thread
    _, _, thread = job(f"compare colours@1 colours@2 on colours-eval model={model}", "/prompt")
    assert "no significant difference" in thread or "beats" in thread
    _, _, thread = job(f"check colours-train model={model} prompt=colours", "/dataset")
    assert "colours-train" in thread
    _, _, thread = job(f"estimate {model} on colours-train prompt=colours {HP}", "/finetune")
    assert "estimate" in thread.lower()
    ft, root, thread = job(f"start {model} on colours-train prompt=colours {HP}", "/finetune")
    assert "Registered ft:colours@1" in thread
    # The loss curve is uploaded into the job's thread.
    files = stack.slack.files_in(CHANNEL, root["ts"])
    assert files and files[0].content.startswith(b"\x89PNG"), files
    status = cmd(f"status {ft}", "/finetune")
    assert f"#{ft}" in status and "succeeded" in status
    assert f"#{ft}" in cmd("list", "/finetune")
    assert "ft:colours@1" in cmd("list", "/model") or "colours" in cmd("list", "/model")
    assert "colours@2" in cmd("show colours", "/model")
    assert "admins" in cmd("label colours@1 production", "/model")  # members may not
    assert "production" in cmd("label colours@1 production", "/model", user="U0ADMIN")
    _, root, thread = job("colours vs ft:colours on colours-eval hybrid", "/compare")
    assert "Recommendation:" in thread
    assert stack.slack.files_in(CHANNEL, root["ts"])  # the score-vs-cost chart
    _, _, thread = job("colours on colours-eval traffic=1000/day", "/compare")
    assert "Recommendation:" in thread
    # App Home (opened over the same transport) shows the comparison and the tuned model.
    published = len(stack.slack.calls_for("views.publish"))
    client.event(app_home_opened_event("U0BOB"))
    stack.slack.wait_for(lambda: len(stack.slack.calls_for("views.publish")) > published
                         or None, timeout=15)
    home = "\n".join(strings(stack.slack.home_views["U0BOB"]["blocks"]))
    assert "*Comparisons*" in home and "Recommendation:" in home
    assert "ft:colours@1" in home and "best " in home

    # Cancelling: a long ping cancelled from /tunebot, another from /finetune cancel.
    answer = client.slash("ping seconds=30", command="/tunebot", user_id="U0ALICE")
    pid = job_id_of(answer)
    assert "will stop" in cmd(f"cancel {pid}")
    root, _ = thread_of(stack, pid, timeout=60)
    assert "cancelled" in root["text"]
    assert f"#{pid}" in cmd("jobs")
    # Errors answer ephemerally with the reason, never a stack trace.
    bad = client.slash("test colours on nope-eval", command="/prompt", user_id="U0ALICE")
    assert bad["response_type"] == "ephemeral" and "nope-eval" in said(bad)
    assert "Traceback" not in said(bad)
    assert "Usage: /dataset show NAME" in cmd("show", "/dataset")
    assert "no job #999" in cmd("status 999", "/finetune")
    # Deleting: a dataset, then the prompt (its owner may).
    assert "Deleted" in cmd("delete colours-train", "/dataset")
    assert "colours-train" not in cmd("list", "/dataset")
    assert "Deleted prompt colours" in cmd("delete colours", "/prompt")


@pytest.mark.parametrize("transport", ["http", "socket"])
def test_every_slash_command_in_one_session(transport: str, tmp_path: Path, start_worker,
                                            redis_url: str, tiny_model_dir: Path) -> None:
    # The production gate is off here: tests/workers/test_promotion_gate.py covers it.
    with running_stack(tmp_path, start_worker, redis_url, max_jobs_per_user=5,
                       protected_labels=[]) as stack:
        seed(stack, tmp_path)
        with client_for(stack, transport) as client:
            script(stack, client, tiny_model_dir)
        with Session(stack.core.engine) as s:
            statuses = [j.status for j in s.execute(select(Job)).scalars()]
        assert "queued" not in statuses and "running" not in statuses
