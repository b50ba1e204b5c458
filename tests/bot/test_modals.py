"""The prompt form: /prompt new and /prompt edit open a modal (loading view first, then
views.update); a submission with mistakes is answered inside the form; a good one saves a
version and announces it in the channel."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, select

from devtools.slack_api.payloads import view_submission_body
from tests.bot.conftest import Stack
from tunebot.models import Prompt, PromptVersion

GOOD = {
    "name": "tone-check",
    "messages": '- role: system\n  content: Classify the tone as polite or rude.\n'
                '- role: user\n  content: "{{ message }}"\n',
    "variables": "message: the message to classify",
    "format": "choice", "choices": "polite, rude", "model": "smollm2",
    "temperature": "0", "max_new_tokens": "4", "tone": "neutral",
    "context": "Flags rude replies before they are sent.", "task": "One word.",
    "limitations": "", "message": "first version",
}


def open_form(stack: Stack, text: str) -> dict[str, Any]:
    """Run the slash command; return the form view as the local Slack server holds it."""
    n_open = len(stack.slack.calls_for("views.open"))
    resp = stack.slash(text, command="/prompt")
    assert resp.status_code == 200 and not resp.content  # an empty ack: the modal answers
    stack.slack.wait_for(lambda: len(stack.slack.calls_for("views.open")) > n_open or None,
                         timeout=10)
    opened = stack.slack.calls_for("views.open")[-1]
    view = opened.args["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert "Loading" in json.dumps(view)  # the loading view came first…
    view_id = stack.slack.wait_for(
        lambda: next((c.args.get("view_id") for c in stack.slack.calls_for("views.update")
                      if c.args.get("view_id") and c.at >= opened.at), None), timeout=10)
    return stack.slack.views[view_id]  # …then views.update put the form in its place


def values(fields: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for block, value in fields.items():
        if block == "format":
            out[block] = {"v": {"type": "static_select", "selected_option": {"value": value}}}
        else:
            out[block] = {"v": value}
    return out


def submit(stack: Stack, view: dict[str, Any], fields: dict[str, str],
           user: str = "U0ALICE") -> dict[str, Any]:
    body = view_submission_body(values(fields), callback_id=view["callback_id"],
                                private_metadata=view["private_metadata"],
                                view_id=view["id"], user_id=user)
    resp = stack.post(body)
    assert resp.status_code == 200, resp.text
    return resp.json() if resp.content else {}


def versions(stack: Stack, name: str) -> list[PromptVersion]:
    with Session(stack.core.engine) as s:
        p = s.exec(select(Prompt).where(Prompt.name == name)).first()
        if p is None:
            return []
        return list(s.exec(select(PromptVersion).where(PromptVersion.prompt_id == p.id)))


def test_new_prompt_through_the_form(stack: Stack) -> None:
    view = open_form(stack, "new")
    assert view["callback_id"] == "prompt_save"
    block_ids = [b.get("block_id") for b in view["blocks"]]
    assert block_ids[:2] == ["name", "messages"] and "temperature" in block_ids

    # Mistakes are answered inside the form, each under its field.
    bad = dict(GOOD, name="Tone Check!", temperature="5",
               messages=GOOD["messages"].replace("{{ message }}", "{{ messag }}"))
    answer = submit(stack, view, bad)
    assert answer["response_action"] == "errors"
    assert "not a valid prompt name" in answer["errors"]["name"]
    assert "between 0 and 2" in answer["errors"]["temperature"]
    answer = submit(stack, view, dict(GOOD, messages=bad["messages"]))
    assert "messag" in answer["errors"]["messages"]  # the undeclared variable, by name
    answer = submit(stack, view, dict(GOOD, messages="- role: system\n  content: [unclosed"))
    assert "not valid YAML (line 2)" in answer["errors"]["messages"]
    answer = submit(stack, view, dict(GOOD, choices="polite"))
    assert "at least two distinct" in answer["errors"]["choices"]
    answer = submit(stack, view, dict(GOOD, messages=GOOD["messages"].replace(
        "{{ message }}", "{{ message.__class__ }}")))
    assert "messages" in answer["errors"]
    assert versions(stack, "tone-check") == []

    # Fixed: saved, the modal closes (empty ack) and the channel hears about it.
    assert submit(stack, view, GOOD) == {}
    saved = versions(stack, "tone-check")
    assert [v.version for v in saved] == [1]
    content = saved[0].content
    assert content["output"] == {"format": "choice", "choices": ["polite", "rude"]}
    assert content["params"] == {"temperature": 0.0, "max_new_tokens": 4}
    assert content["docs"]["context"].startswith("Flags rude")
    said = stack.slack.wait_for(lambda: [m for m in stack.slack.messages("C0CHANNEL")
                                         if "saved *tone-check@1*" in m.get("text", "")],
                                timeout=10)
    assert said[0]["text"].startswith("<@U0ALICE> saved")
    # The same name again through the form: refused in the name field.
    again = open_form(stack, "new")
    assert "already exists" in submit(stack, again, GOOD)["errors"]["name"]


def test_edit_prefills_the_latest_version_and_needs_a_change_message(stack: Stack) -> None:
    assert submit(stack, open_form(stack, "new"), GOOD) == {}
    view = open_form(stack, "edit tone-check")
    initial = {b["block_id"]: b["element"].get("initial_value") for b in view["blocks"]
               if b["type"] == "input" and b["element"]["type"] == "plain_text_input"}
    assert "Classify the tone" in initial["messages"] and initial["choices"] == "polite, rude"
    assert "name" not in initial  # the name is fixed when editing
    edited = {k: v for k, v in GOOD.items() if k != "name"}
    edited["temperature"] = "0.3"
    answer = submit(stack, view, dict(edited, message=""))
    assert "say what changed" in answer["errors"]["message"]
    assert submit(stack, view, dict(edited, message="warmer sampling")) == {}
    assert [v.version for v in versions(stack, "tone-check")] == [1, 2]
    # Editing a prompt that does not exist says so in the modal.
    missing = open_form(stack, "edit nope")
    assert "no prompt `nope`" in json.dumps(missing["blocks"])
