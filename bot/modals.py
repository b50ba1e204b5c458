"""The prompt form: `/prompt new` and `/prompt edit NAME` as a modal, and its submission.

Pure functions: views built from a version's content, and a submission's state turned back
into content, with errors keyed by the input block they belong to (Slack shows them there).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from bot import limits
from bot.blocks import escape
from tunebot import catalog
from tunebot.commands import parse_name
from tunebot.errors import UserError

CALLBACK = "prompt_save"
OUTPUT_FORMATS = ("text", "choice", "json")
INPUT_LIMIT = limits.INPUT_MAX_LENGTH  # Slack's plain_text_input max_length
NEW_MESSAGES = ('- role: system\n  content: "You are … Answer with …"\n'
                '- role: user\n  content: "{{ text }}"\n')
STORED = "stored"  # private_metadata {"stored": KEY}: the form's state is kept server-side
Stash = Callable[[dict[str, Any]], str]
Load = Callable[[str], dict[str, Any] | None]


def _plain(text: str, limit: int = limits.INPUT_LABEL) -> dict[str, Any]:
    return limits.plain(text, limit)


def loading_view(title: str) -> dict[str, Any]:
    """What opens at once, inside the 3-second trigger, while the form is built."""
    return {"type": "modal", "title": _plain(title, limits.VIEW_TITLE),
            "blocks": [limits.section("Loading…")]}


def message_view(title: str, text: str) -> dict[str, Any]:
    """A modal that only says something (e.g. the prompt to edit does not exist)."""
    return {"type": "modal", "title": _plain(title, limits.VIEW_TITLE),
            "close": _plain("Close", limits.VIEW_TITLE), "blocks": [limits.section(text)]}


def _input(block_id: str, label: str, *, initial: str = "", multiline: bool = False,
           optional: bool = True, hint: str = "") -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "v",
                               "multiline": multiline, "max_length": INPUT_LIMIT}
    if initial:
        if len(initial) > INPUT_LIMIT:  # never cut: _field shows such a value read-only
            raise ValueError(f"{block_id}: {len(initial)} characters do not fit an input")
        element["initial_value"] = initial
    block: dict[str, Any] = {"type": "input", "block_id": block_id, "label": _plain(label),
                             "element": element, "optional": optional}
    if hint:
        block["hint"] = _plain(hint, limits.INPUT_HINT)
    return block


def _read_only(block_id: str, label: str, text: str, name: str | None) -> list[dict[str, Any]]:
    """A value too long for a Slack input: shown, not editable, and kept as it is."""
    how = f'`tunebot run "/prompt edit {name or "NAME"}" --file {name or "prompt"}.yaml`'
    note = (f"*{label}* — {len(text):,} characters, more than a Slack form field holds "
            f"({INPUT_LIMIT:,}), so it is kept unchanged when you save. To change it, edit "
            f"the prompt in YAML and save the next version from the file: {escape(how)}.")
    return [{"type": "section", "block_id": f"{block_id}__kept", "text": limits.mrkdwn(note)},
            {"type": "context", "block_id": f"{block_id}__preview",
             "elements": [limits.mrkdwn(escape(text), limits.CONTEXT_TEXT)]}]


def _select(block_id: str, label: str, options: tuple[str, ...], initial: str) -> dict[str, Any]:
    opts = [limits.option(o, o) for o in options[:limits.SELECT_OPTIONS]]
    return {"type": "input", "block_id": block_id, "label": _plain(label), "optional": False,
            "element": {"type": "static_select", "action_id": "v", "options": opts,
                        "initial_option": next(o for o in opts if o["value"] == initial)}}


def prompt_form(*, mode: str, name: str | None, content: dict[str, Any] | None,
                channel: str | None, stash: Stash | None = None) -> dict[str, Any]:
    """The form for a new prompt, or for the next version of `name` (prefilled from `content`).

    Nothing is ever cut: a value longer than a Slack input holds is shown read-only and carried
    over unchanged; state longer than private_metadata holds goes to `stash` (which keeps it
    server-side and returns its key).
    """
    c = content or {}
    params = c.get("params") or {}
    output = c.get("output") or {}
    docs = c.get("docs") or {}
    messages = c.get("messages")
    # Each editable value: (block, its text in the form, where it lives in the content).
    if messages is not None:
        msg_text = yaml.safe_dump(messages, sort_keys=False, allow_unicode=True, width=1000)
        msg_at: tuple[str, Any] = ("messages", messages)
    elif c.get("template") is not None:
        msg_text = yaml.safe_dump([{"role": "user", "content": c["template"]}],
                                  sort_keys=False, allow_unicode=True, width=1000)
        msg_at = ("template", c["template"])
    else:
        msg_text, msg_at = NEW_MESSAGES, ("messages", None)
    kept: dict[str, dict[str, Any]] = {}

    def field(block_id: str, label: str, text: str, at: tuple[str, Any],
              **kw: Any) -> list[dict[str, Any]]:
        if len(text) <= INPUT_LIMIT:
            return [_input(block_id, label, initial=text, **kw)]
        kept[block_id] = {"path": at[0], "value": at[1]}
        return _read_only(block_id, label, text, name)

    variables = c.get("variables") or {}
    blocks: list[dict[str, Any]] = []
    if mode == "new":
        blocks.append(_input("name", "Name", optional=False,
                             hint="lower-case letters, digits, - _ . (e.g. ticket-triage)"))
    blocks += field("messages", "Messages", msg_text, msg_at, multiline=True, optional=False,
                    hint="YAML list of {role: system|user|assistant, content}; "
                         "variables as {{ name }}")
    blocks += field("variables", "Variables",
                    "\n".join(f"{k}: {v}" for k, v in variables.items()),
                    ("variables", variables), multiline=True,
                    hint="one per line — name: description")
    blocks.append(_select("format", "Output format", OUTPUT_FORMATS,
                          output.get("format", "text")))
    blocks += field("choices", "Choices (for format choice)",
                    ", ".join(output.get("choices") or []),
                    ("output.choices", output.get("choices") or []),
                    hint="comma-separated labels, e.g. positive, negative")
    blocks += field("model", "Model", str(c.get("model") or "smollm2"),
                    ("model", c.get("model")),
                    hint="smollm2, a Hugging Face id, ft:NAME or openai:NAME")
    blocks += [
        _input("temperature", "Temperature", initial=_num(params.get("temperature")),
               hint="0 to 2; 0 is greedy"),
        _input("max_new_tokens", "Max new tokens", initial=_num(params.get("max_new_tokens")),
               hint="1 to 4096"),
    ]
    blocks += field("tone", "Tone", str(c.get("tone") or ""), ("tone", c.get("tone")))
    for key, label in (("context", "Context (why this prompt exists)"),
                       ("task", "Task specification"), ("limitations", "Known limitations")):
        blocks += field(key, label, str(docs.get(key) or ""), (f"docs.{key}", docs.get(key)),
                        multiline=True)
    blocks.append(_input("message", "Change message", optional=mode == "new",
                         hint="what changed and why (shown in /prompt history)"))
    title = "New prompt" if mode == "new" else f"Edit {name}"
    meta = {"mode": mode, "name": name, "channel": channel,
            # Fields the form does not show (or shows read-only) are carried over unchanged.
            "keep": {k: c[k] for k in ("scorers",) if k in c}
            | {"params": {k: v for k, v in params.items()
                          if k not in ("temperature", "max_new_tokens")},
               "output": {k: v for k, v in output.items() if k not in ("format", "choices")},
               "examples": docs.get("examples") or [],
               "fixed": kept}}
    return {"type": "modal", "callback_id": CALLBACK, "title": _plain(title, limits.VIEW_TITLE),
            "submit": _plain("Save version", limits.VIEW_TITLE),
            "close": _plain("Cancel", limits.VIEW_TITLE),
            "private_metadata": private_metadata(meta, stash),
            "blocks": limits.fit(blocks, limits.VIEW_BLOCKS)}


def private_metadata(meta: dict[str, Any], stash: Stash | None) -> str:
    """The form's state as private_metadata: itself when it fits Slack's 3,000 characters,
    else the key `stash` keeps it under (never a cut JSON that no longer parses)."""
    text = json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limits.PRIVATE_METADATA:
        return text
    if stash is None:
        raise ValueError(f"the form's state ({len(text):,} characters) needs server-side "
                         "storage: pass stash")
    return json.dumps({STORED: stash(meta)})


def _num(value: Any) -> str:
    return "" if value is None else str(value)


def _value(state: dict[str, Any], block: str) -> str:
    entry = (state.get(block) or {}).get("v") or {}
    if entry.get("type") == "static_select":
        return str((entry.get("selected_option") or {}).get("value") or "")
    return str(entry.get("value") or "")


def submission(view: dict[str, Any], load: Load | None = None) -> tuple[
        dict[str, Any], dict[str, Any], dict[str, str]]:
    """(metadata, content, errors by block_id) from a view_submission's view; `load` reads
    state kept server-side by its key."""
    errors: dict[str, str] = {}
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError:
        meta = {}
    if STORED in meta:
        stored = load(str(meta[STORED])) if load is not None else None
        if stored is None:
            return meta, {}, {"message": "this form's saved state has expired or is gone; "
                                         "close the form and open it again"}
        meta = dict(stored, **{STORED: meta[STORED]})
    if meta.get("mode") not in ("new", "edit"):
        return meta, {}, {"message": "this form's state is unreadable; close the form and "
                                     "open it again"}
    state = (view.get("state") or {}).get("values") or {}
    if meta.get("mode") == "new":
        try:
            meta["name"] = parse_name(_value(state, "name").strip(), "/prompt new", "prompt name")
        except UserError as exc:
            errors["name"] = str(exc)[:150]
    content: dict[str, Any] = {}
    keep = meta.get("keep") or {}
    fixed: dict[str, dict[str, Any]] = keep.get("fixed") or {}
    if "messages" in fixed:  # shown read-only: exactly what the version had
        content[fixed["messages"]["path"]] = fixed["messages"]["value"]
    else:
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
    content["variables"] = (dict(fixed["variables"]["value"] or {}) if "variables" in fixed
                            else _variables(_value(state, "variables"), errors))
    fmt = _value(state, "format") or "text"
    choices = (list(fixed["choices"]["value"] or []) if "choices" in fixed else
               [c.strip() for c in _value(state, "choices").split(",") if c.strip()])
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
    for key in ("model", "tone"):
        if key in fixed:
            if fixed[key]["value"]:
                content[key] = fixed[key]["value"]
        elif _value(state, key).strip():
            content[key] = _value(state, key).strip()
    docs: dict[str, Any] = {}
    for k in ("context", "task", "limitations"):
        if k in fixed:
            if fixed[k]["value"]:
                docs[k] = fixed[k]["value"]
        elif _value(state, k).strip():
            docs[k] = _value(state, k).strip()
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
    # A problem in a value shown read-only has no input to sit under: the change message's.
    for block in [b for b in errors if b in fixed]:
        line = f"{block} (kept as it was; fix it in YAML): {errors.pop(block)}"
        errors["message"] = (errors["message"] + "; " + line if "message" in errors
                             else line)[:150]
    return meta, content, errors


def _variables(text: str, errors: dict[str, str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, desc = line.partition(":")
        if not sep or not key.strip():
            errors["variables"] = f"line {n}: write `name: description`"
            break
        variables[key.strip()] = desc.strip()
    return variables


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
