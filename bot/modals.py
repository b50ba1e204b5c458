"""The prompt form: `/prompt new` and `/prompt edit NAME` as a modal, and its submission.

Pure functions: views built from a version's content, and a submission's state turned back
into content, with errors keyed by the input block they belong to (Slack shows them there).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tunebot import catalog
from tunebot.commands import parse_name
from tunebot.errors import UserError

CALLBACK = "prompt_save"
OUTPUT_FORMATS = ("text", "choice", "json")
INPUT_LIMIT = 3000  # Slack's plain_text_input max_length
NEW_MESSAGES = ('- role: system\n  content: "You are … Answer with …"\n'
                '- role: user\n  content: "{{ text }}"\n')


def _plain(text: str) -> dict[str, str]:
    return {"type": "plain_text", "text": text[:150]}


def loading_view(title: str) -> dict[str, Any]:
    """What opens at once, inside the 3-second trigger, while the form is built."""
    return {"type": "modal", "title": _plain(title[:24]),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Loading…"}}]}


def message_view(title: str, text: str) -> dict[str, Any]:
    """A modal that only says something (e.g. the prompt to edit does not exist)."""
    return {"type": "modal", "title": _plain(title[:24]), "close": _plain("Close"),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}]}


def _input(block_id: str, label: str, *, initial: str = "", multiline: bool = False,
           optional: bool = True, hint: str = "") -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "v",
                               "multiline": multiline, "max_length": INPUT_LIMIT}
    if initial:
        element["initial_value"] = initial[:INPUT_LIMIT]
    block: dict[str, Any] = {"type": "input", "block_id": block_id, "label": _plain(label),
                             "element": element, "optional": optional}
    if hint:
        block["hint"] = _plain(hint)
    return block


def _select(block_id: str, label: str, options: tuple[str, ...], initial: str) -> dict[str, Any]:
    opts = [{"text": _plain(o), "value": o} for o in options]
    return {"type": "input", "block_id": block_id, "label": _plain(label), "optional": False,
            "element": {"type": "static_select", "action_id": "v", "options": opts,
                        "initial_option": next(o for o in opts if o["value"] == initial)}}


def prompt_form(*, mode: str, name: str | None, content: dict[str, Any] | None,
                channel: str | None) -> dict[str, Any]:
    """The form for a new prompt, or for the next version of `name` (prefilled from `content`)."""
    c = content or {}
    params = c.get("params") or {}
    output = c.get("output") or {}
    docs = c.get("docs") or {}
    messages = c.get("messages")
    if messages is not None:
        msg_text = yaml.safe_dump(messages, sort_keys=False, allow_unicode=True, width=1000)
    elif c.get("template") is not None:
        msg_text = yaml.safe_dump([{"role": "user", "content": c["template"]}],
                                  sort_keys=False, allow_unicode=True, width=1000)
    else:
        msg_text = NEW_MESSAGES
    blocks: list[dict[str, Any]] = []
    if mode == "new":
        blocks.append(_input("name", "Name", optional=False,
                             hint="lower-case letters, digits, - _ . (e.g. ticket-triage)"))
    blocks += [
        _input("messages", "Messages", initial=msg_text, multiline=True, optional=False,
               hint="YAML list of {role: system|user|assistant, content}; "
                    "variables as {{ name }}"),
        _input("variables", "Variables", multiline=True, hint="one per line — name: description",
               initial="\n".join(f"{k}: {v}" for k, v in (c.get("variables") or {}).items())),
        _select("format", "Output format", OUTPUT_FORMATS, output.get("format", "text")),
        _input("choices", "Choices (for format choice)", initial=", ".join(
            output.get("choices") or []), hint="comma-separated labels, e.g. positive, negative"),
        _input("model", "Model", initial=str(c.get("model") or "smollm2"),
               hint="smollm2, a Hugging Face id, ft:NAME or openai:NAME"),
        _input("temperature", "Temperature", initial=_num(params.get("temperature")),
               hint="0 to 2; 0 is greedy"),
        _input("max_new_tokens", "Max new tokens", initial=_num(params.get("max_new_tokens")),
               hint="1 to 4096"),
        _input("tone", "Tone", initial=str(c.get("tone") or "")),
        _input("context", "Context (why this prompt exists)", multiline=True,
               initial=str(docs.get("context") or "")),
        _input("task", "Task specification", multiline=True, initial=str(docs.get("task") or "")),
        _input("limitations", "Known limitations", multiline=True,
               initial=str(docs.get("limitations") or "")),
        _input("message", "Change message", optional=mode == "new",
               hint="what changed and why (shown in /prompt history)"),
    ]
    title = "New prompt" if mode == "new" else f"Edit {name}"[:24]
    meta = {"mode": mode, "name": name, "channel": channel,
            # Fields the form does not show are carried over unchanged.
            "keep": {k: c[k] for k in ("scorers",) if k in c}
            | {"params": {k: v for k, v in params.items()
                          if k not in ("temperature", "max_new_tokens")},
               "output": {k: v for k, v in output.items() if k not in ("format", "choices")},
               "examples": docs.get("examples") or []}}
    return {"type": "modal", "callback_id": CALLBACK, "title": _plain(title),
            "submit": _plain("Save version"), "close": _plain("Cancel"),
            "private_metadata": json.dumps(meta)[:3000], "blocks": blocks}


def _num(value: Any) -> str:
    return "" if value is None else str(value)


def _value(state: dict[str, Any], block: str) -> str:
    entry = (state.get(block) or {}).get("v") or {}
    if entry.get("type") == "static_select":
        return str((entry.get("selected_option") or {}).get("value") or "")
    return str(entry.get("value") or "")


def submission(view: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                              dict[str, str]]:
    """(metadata, content, errors by block_id) from a view_submission's view."""
    meta = json.loads(view.get("private_metadata") or "{}")
    state = (view.get("state") or {}).get("values") or {}
    errors: dict[str, str] = {}
    if meta.get("mode") == "new":
        try:
            meta["name"] = parse_name(_value(state, "name").strip(), "/prompt new", "prompt name")
        except UserError as exc:
            errors["name"] = str(exc)[:150]
    content: dict[str, Any] = {}
    keep = meta.get("keep") or {}
    try:
        messages = yaml.safe_load(_value(state, "messages"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        errors["messages"] = f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"[:150]
        messages = None
    if messages is not None and not isinstance(messages, list):
        errors["messages"] = "give a YAML list of {role, content} messages"
    elif messages is not None:
        content["messages"] = messages
    variables: dict[str, str] = {}
    for n, line in enumerate(_value(state, "variables").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, desc = line.partition(":")
        if not sep or not key.strip():
            errors["variables"] = f"line {n}: write `name: description`"
            break
        variables[key.strip()] = desc.strip()
    content["variables"] = variables
    fmt = _value(state, "format") or "text"
    choices = [c.strip() for c in _value(state, "choices").split(",") if c.strip()]
    content["output"] = {**(keep.get("output") or {}), "format": fmt,
                         **({"choices": choices} if choices else {})}
    params: dict[str, Any] = dict(keep.get("params") or {})
    for block, kind, lo, hi in (("temperature", float, 0, 2), ("max_new_tokens", int, 1, 4096)):
        raw = _value(state, block).strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            errors[block] = f"{block} must be a {'number' if kind is float else 'whole number'}"
            continue
        if not lo <= value <= hi:
            errors[block] = f"{block} must be between {lo} and {hi} (got {raw[:20]})"
            continue
        params[block] = value
    content["params"] = params
    if _value(state, "model").strip():
        content["model"] = _value(state, "model").strip()
    if _value(state, "tone").strip():
        content["tone"] = _value(state, "tone").strip()
    docs = {k: _value(state, k).strip() for k in ("context", "task", "limitations")
            if _value(state, k).strip()}
    if keep.get("examples"):
        docs["examples"] = keep["examples"]
    if docs:
        content["docs"] = docs
    if keep.get("scorers"):
        content["scorers"] = keep["scorers"]
    if meta.get("mode") == "edit" and not _value(state, "message").strip():
        errors["message"] = "say what changed in this version"
    meta["message"] = _value(state, "message").strip()
    if not errors:
        errors.update(content_errors(content))
    return meta, content, errors


BLOCK_OF = {"messages": "messages", "template": "messages", "variables": "variables",
            "output": "format", "model": "model", "tone": "tone", "params.temperature":
            "temperature", "params.max_new_tokens": "max_new_tokens", "docs.context": "context",
            "docs.task": "task", "docs.limitations": "limitations"}


def content_errors(content: dict[str, Any]) -> dict[str, str]:
    """Schema, template syntax, declared variables and sandbox problems, by block."""
    try:
        parsed = catalog.parse_content(content)
    except UserError as exc:
        return _by_block(str(exc).splitlines())
    return _by_block(catalog.check_content(parsed))


def _by_block(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        field = line.split(":", 1)[0].split("[", 1)[0]
        block = next((b for prefix, b in BLOCK_OF.items()
                      if field == prefix or field.startswith(prefix + ".")), "messages")
        if field.startswith("output") and "choices" in line:
            block = "choices"
        out[block] = (out[block] + "; " + line if block in out else line)[:150]
    return out
