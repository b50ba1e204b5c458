"""Replies that exceed Block Kit's limits still reach Slack, whole or with a visible note: long
fields (over Slack's 2,000 characters), more than ten fields, more than 50 blocks. Driven
through the HTTP bot (an @mention of `prompt show`) and a real io worker (a job's thread message,
delivered by the notify task); the local Slack API refuses what Slack refuses, and every message
it accepted is checked here against Slack's documented limits as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from devtools.slack_api.payloads import app_mention_event, event_body
from tests.bot.conftest import Stack, running_stack
from tests.reliability.conftest import Report, size
from tests.reliability.stack import all_jobs
from tunebot import jobs
from tunebot.cli import cli
from tunebot.jobs.queue import Sender, make_celery
from tunebot.replies import Reply, fields, section

# Slack's documented limits (api.slack.com/reference/block-kit), checked here independently.
MESSAGE_BLOCKS, SECTION_TEXT, FIELDS, FIELD_TEXT, CONTEXT_ELEMENTS = 50, 3000, 10, 2000, 10


def over_limits(blocks: list[dict[str, Any]]) -> list[str]:
    """What in a posted message breaks one of Slack's Block Kit limits."""
    found = [f"{len(blocks)} blocks"] if len(blocks) > MESSAGE_BLOCKS else []
    for i, b in enumerate(blocks):
        text = (b.get("text") or {}).get("text", "")
        if len(text) > SECTION_TEXT:
            found.append(f"block {i}: text of {len(text)}")
        if len(b.get("fields") or []) > FIELDS:
            found.append(f"block {i}: {len(b['fields'])} fields")
        found += [f"block {i}: a field of {len(f['text'])}" for f in b.get("fields") or []
                  if len(f["text"]) > FIELD_TEXT]
        if len(b.get("elements") or []) > CONTEXT_ELEMENTS and b["type"] == "context":
            found.append(f"block {i}: {len(b['elements'])} context elements")
    return found


def _cli(stack: Stack, tmp_path: Path, text: str, doc: dict[str, Any] | None = None) -> str:
    args = ["run", text]
    if doc is not None:
        path = tmp_path / "prompt.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        args += ["--file", str(path)]
    env = {"TUNEBOT_DATABASE_URL": stack.settings.database_url,
           "TUNEBOT_VAR_DIR": str(stack.settings.var_dir),
           "TUNEBOT_BROKER_URL": stack.settings.broker_url,
           "TUNEBOT_CLI_TEAM": "T0TEAM", "TUNEBOT_CLI_USER": "U0ALICE"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_replies_beyond_block_kit_limits_are_accepted_and_say_what_they_left_out(
        tmp_path: Path, start_worker, redis_url: str, report: Report) -> None:
    n_blocks, n_pairs = size(60, 120), size(14, 30)
    roles = [f"role{k}" for k in range(8)]
    with running_stack(tmp_path, start_worker, redis_url, queues="io") as stack:
        slack = stack.slack
        # 1. `prompt show` of a prompt with 17 fields, one of them (the change message) long.
        _cli(stack, tmp_path, "/prompt new", {
            "name": "wide", "messages": [{"role": "user", "content": "{{ text }}"}],
            "variables": {"text": "input"}, "tone": "calm", "tags": ["a", "b"],
            "datasets": {r: f"set-{r}" for r in roles},
            "message": "Reworded the instruction. " * 100})
        before = len(slack.calls_for("chat.postMessage"))
        assert stack.post(event_body(app_mention_event("<@U0BOT> prompt show wide"))) \
            .status_code == 200
        shown = slack.wait_for(lambda: slack.calls_for("chat.postMessage")[before:], timeout=15)
        shown_blocks = shown[0].args.get("blocks") or []

        # 2. A job's thread message with long fields, many fields and many blocks, delivered
        #    by the notify task on the io worker.
        assert "Queued" in stack.slash("ping seconds=0", channel_id="C0CHANNEL").text
        job = all_jobs(stack.core.engine)[-1]
        pairs = [(f"key{k:02d}", f"value {k} " + "x" * 2500) for k in range(n_pairs)]
        big = Reply(text="a big result", blocks=[fields(pairs), *[section(f"line {i}")
                                                                  for i in range(n_blocks)]])
        jobs.emit(engine=stack.core.engine, job_id=job.id, reply=big,
                  waker=Sender(make_celery(stack.settings)))
        posted = slack.wait_for(
            lambda: [c for c in slack.calls_for("chat.postMessage")
                     if "a big result" in str(c.args.get("text"))], timeout=30)
        big_blocks = posted[0].args.get("blocks") or []
        refused = [(r.method, r.error) for r in slack.rejected if r.method.startswith("chat.")]

    big_text, shown_text = json.dumps(big_blocks), json.dumps(shown_blocks)
    problems = over_limits(shown_blocks) + over_limits(big_blocks)
    missing = [k for k, _ in pairs if f"*{k}*" not in big_text]
    missing += [r for r in [*roles, "tone", "tags", "change"] if r not in shown_text]
    noted = ("more characters not shown" in big_text and "not shown" in shown_text
             and "more block(s) not shown" in big_text)
    report.add("17.12 block kit limits",
               f"prompt show with 17 fields; a reply of {n_pairs} 2,500-char fields + "
               f"{n_blocks} blocks", 2, held=2 - bool(refused) - bool(problems),
               lost=len(missing),
               note=f"refused by the local Slack API: {len(refused)}; over Slack's limits: "
                    f"{len(problems)} ({'; '.join(problems[:3])}); fields left out: "
                    f"{len(missing)}; visible notes: {'yes' if noted else 'no'}")
    assert refused == [], refused
    assert problems == [], problems
    assert missing == [], missing
    assert noted, big_text[-400:]
