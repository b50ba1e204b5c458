"""The prompt form never loses data: a version whose system message is longer than a Slack
input holds, edited only in its Tone, keeps both messages byte for byte (the long field is shown
read-only and carried over); a prompt with 20 examples (state longer than private_metadata
holds) saves through the form with every example. Driven through the HTTP bot and the local
Slack API; the prompts are created with the CLI (`tunebot run "/prompt new" --file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from devtools.slack_api.payloads import view_submission_body
from tests.bot.conftest import Stack, running_stack
from tests.bot.test_modals import open_form, values, versions
from tests.reliability.conftest import Report, size
from tunebot.cli import cli

SYSTEM_CHARS = 4629


def _system_message() -> str:
    """A long system message on one line (policy sentences), exactly SYSTEM_CHARS long."""
    sentences = [f"When the customer mentions topic {i} answer politely, cite policy section "
                 f"{i}.{i % 7} and never promise a refund on your own." for i in range(1, 200)]
    text = "You are the support assistant of Example Co. " + " ".join(sentences)
    return text[:SYSTEM_CHARS - 1] + "."


def _cli_new(stack: Stack, tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    env = {"TUNEBOT_DATABASE_URL": stack.settings.database_url,
           "TUNEBOT_VAR_DIR": str(stack.settings.var_dir),
           "TUNEBOT_BROKER_URL": stack.settings.broker_url,
           "TUNEBOT_CLI_TEAM": "T0TEAM", "TUNEBOT_CLI_USER": "U0ALICE"}
    result = CliRunner().invoke(cli, ["run", "/prompt new", "--file", str(path)], env=env)
    assert result.exit_code == 0 and "Saved" in result.output, result.output


def _submit(stack: Stack, view: dict[str, Any], fields: dict[str, str]) -> Any:
    """POST the view_submission; the bot's answer (its JSON, {} for an empty ack, or the
    HTTP status when it failed)."""
    resp = stack.post(view_submission_body(values(fields), callback_id=view["callback_id"],
                                           private_metadata=view["private_metadata"],
                                           view_id=view["id"], user_id="U0ALICE"))
    if resp.status_code != 200:
        return resp.status_code
    return resp.json() if resp.content else {}


def _as_a_client_would(view: dict[str, Any], **changed: str) -> dict[str, str]:
    """What Slack submits when the user changes only `changed`: every input's initial value."""
    out: dict[str, str] = {}
    for b in view["blocks"]:
        if b.get("type") != "input":
            continue
        el = b["element"]
        if el["type"] == "static_select":
            out[b["block_id"]] = el["initial_option"]["value"]
        else:
            out[b["block_id"]] = el.get("initial_value", "")
    out.update(changed)
    return out


def test_the_prompt_form_keeps_long_fields_and_large_state(tmp_path: Path, redis_url: str,
                                                          report: Report) -> None:
    n_examples = size(20, 40)
    system = _system_message()
    user = "Customer message: {{ text }}\nAnswer in the customer's language."
    examples = [{"input": {"text": f"Example {i}: my order #{1000 + i} arrived damaged, the "
                                    "box was open and two items are missing; what now?"},
                 "output": f"Sorry to hear that; policy {i}.{i % 7} covers it: a replacement "
                           "ships today."} for i in range(n_examples)]
    with running_stack(tmp_path, None, redis_url) as stack:
        _cli_new(stack, tmp_path, {
            "name": "support-long", "messages": [{"role": "system", "content": system},
                                                 {"role": "user", "content": user}],
            "variables": {"text": "the customer's message"}, "tone": "neutral",
            "message": "first version"})
        _cli_new(stack, tmp_path, {
            "name": "support-examples",
            "messages": [{"role": "user", "content": "Reply to: {{ text }}"}],
            "variables": {"text": "the customer's message"},
            "docs": {"context": "Replies to damaged-order complaints.", "examples": examples},
            "message": "first version"})

        # 1. Only the Tone changes; the 4,629-character system message is in the version.
        view = open_form(stack, "edit support-long")
        long_meta = len(view["private_metadata"])
        answer = _submit(stack, view, _as_a_client_would(view, tone="formal",
                                                         message="tone only"))
        saved = versions(stack, "support-long")
        before, after = saved[0].content, saved[-1].content
        kept_messages = json.dumps(after.get("messages")) == json.dumps(before["messages"])
        shown = json.dumps(view["blocks"])

        # 2. Twenty examples: the form's state does not fit private_metadata.
        view2 = open_form(stack, "edit support-examples")
        examples_meta = len(view2["private_metadata"])
        answer2 = _submit(stack, view2, _as_a_client_would(view2, message="reworded context",
                                                           context="Replies to complaints."))
        saved2 = versions(stack, "support-examples")
        got_examples = ((saved2[-1].content.get("docs") or {}).get("examples") or []
                        if len(saved2) == 2 else [])  # what the form's save kept
        stored = '"stored"' in view2["private_metadata"]
        refused = [r for r in stack.slack.rejected if r.method.startswith("views.")]

    system_after = next((m["content"] for m in after.get("messages") or []
                         if m["role"] == "system"), "")
    user_kept = any(m["role"] == "user" and m["content"] == user
                    for m in after.get("messages") or [])
    held = int(kept_messages and len(saved) == 2) + int(got_examples == examples)
    report.add("17.6 form data", f"prompt form: tone edit of a {SYSTEM_CHARS:,}-char system "
               f"message; save with {n_examples} examples", 2, held=held, lost=2 - held,
               note=f"system message {SYSTEM_CHARS:,} → {len(system_after):,} chars, user "
                    f"message {'kept' if user_kept else 'lost'}; examples {n_examples} → "
                    f"{len(got_examples)} saved; private_metadata {long_meta:,} / "
                    f"{examples_meta:,} chars" + (" (state kept server-side)" if stored else ""))
    assert answer == {}, answer
    assert [v.version for v in saved] == [1, 2] and after["tone"] == "formal"
    assert kept_messages and len(system_after) == SYSTEM_CHARS and user_kept, \
        (len(system_after), after.get("messages", [])[-1:])
    assert "edit the prompt in YAML" in shown  # the long field is shown read-only, with how
    assert answer2 == {}, answer2
    assert [v.version for v in saved2] == [1, 2] and got_examples == examples, len(got_examples)
    assert long_meta <= 3000 and examples_meta <= 3000 and refused == [], refused
